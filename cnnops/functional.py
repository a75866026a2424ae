"""torch.nn.functional-style API (also available as cnnops.F). Signatures mirror torch's,
plus the extras in DESIGN.md section 1 (padding_mode for conv2d, ...)."""
import torch

from cnnops.ops._common import autocast_cast, autocast_dtype, check_device
from cnnops.ops.conv2d import Conv2dFunction, normalize_conv2d_args

__all__ = ["conv2d", "Conv2dFunction"]

_ops = torch.ops.cnnops


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """torch.nn.functional.conv2d with padding done inside the kernel for every
    padding_mode ('zeros', 'reflect', 'replicate', 'circular'). Accepts unbatched (C, H, W) input."""
    op = "cnnops.conv2d"
    check_device(op, input)
    dim = input.dim()
    if dim not in (3, 4):
        raise ValueError(f"{op}: expected input to be 3-D (C, H, W) or 4-D (N, C, H, W), got shape {tuple(input.shape)}")
    if weight.dim() != 4:
        raise ValueError(
            f"{op}: expected weight to be a 4-D tensor (out_channels, in_channels / groups, kH, kW), got shape {tuple(weight.shape)}")
    stride, padding, dilation = normalize_conv2d_args(op, weight.shape, stride, padding, dilation)
    cast = autocast_dtype(input.device.type)
    if cast is not None:  # custom ops ignore autocast: apply torch's conv policy here
        input, weight, bias = autocast_cast(input, cast), autocast_cast(weight, cast), autocast_cast(bias, cast)
    if dim == 3:
        return _ops.conv2d(input.unsqueeze(0), weight, bias, stride, padding, dilation, groups, padding_mode).squeeze(0)
    return _ops.conv2d(input, weight, bias, stride, padding, dilation, groups, padding_mode)
