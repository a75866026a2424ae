"""Drop-in torch.nn modules: each subclasses the torch module it replaces (same
constructor, parameters, state_dict keys) and overrides only the computation."""
from cnnops.nn.conv import Conv2d
from cnnops.nn.pool import (AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, GlobalAvgPool2d, GlobalMaxPool2d,
                            MaxPool2d)
from cnnops.nn.norm import LayerNorm, LayerNorm2d
from cnnops.nn.batchnorm import BatchNorm2d, BatchNormAddReLU2d, BatchNormReLU2d, BatchNormReLU6_2d, SyncBatchNorm
from cnnops.nn.separable import DepthwiseSeparableConv2d, SpatiallySeparableConv2d

__all__ = ["Conv2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "GlobalAvgPool2d",
           "GlobalMaxPool2d", "LayerNorm", "LayerNorm2d",
           "BatchNorm2d", "BatchNormReLU2d", "BatchNormReLU6_2d", "BatchNormAddReLU2d", "SyncBatchNorm",
           "DepthwiseSeparableConv2d", "SpatiallySeparableConv2d"]

from cnnops.nn.conv import ConvTranspose2d  # noqa: E402

from cnnops.nn.parallel import DistributedDataParallel  # noqa: E402

__all__ += ["ConvTranspose2d", "DistributedDataParallel"]
