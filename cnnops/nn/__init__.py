"""Drop-in torch.nn modules: each subclasses the torch module it replaces (same
constructor, parameters, state_dict keys) and overrides only the computation."""
from cnnops.nn.conv import Conv2d
from cnnops.nn.pool import (AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, GlobalAvgPool2d, GlobalMaxPool2d,
                            MaxPool2d)
from cnnops.nn.norm import LayerNorm, LayerNorm2d
from cnnops.nn.separable import DepthwiseSeparableConv2d, SpatiallySeparableConv2d

__all__ = ["Conv2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "GlobalAvgPool2d",
           "GlobalMaxPool2d", "LayerNorm", "LayerNorm2d",
           "DepthwiseSeparableConv2d", "SpatiallySeparableConv2d"]
