"""depthwise_conv2d family, Python side: fake kernels (same checks and messages as
csrc/common/depthwise_checks.h), autograd for the three ops (bilinear, so double backward
works), and DepthwiseConv2dFunction for .apply users. Schemas: csrc/depthwise_conv2d.cpp.
The bias gradient is conv2d's channel sum (cnnops::conv2d_grad_bias)."""
import torch

from cnnops.ops._common import (check_dtype, conv_memory_format, empty_like_shape, forward_below_autograd,
                               layout_from_flag, register_conv_autograd, shape_str)
from cnnops.ops.conv2d import _check_grad_output, _check_same_dtype_device, conv2d_geometry, normalize_conv2d_args

ops = torch.ops.cnnops


def depthwise_geometry(op, input_size, weight_size, stride, padding, dilation, padding_mode):
    """Mirror of depthwise_geometry() in csrc/common/depthwise_checks.h; returns the output size."""
    input_size, weight_size = tuple(input_size), tuple(weight_size)
    check = torch._check_value
    check(len(input_size) == 4, lambda: f"{op}: expected input to be a 4-D tensor (N, C, H, W), got shape {shape_str(input_size)}")
    check(len(weight_size) == 4, lambda: (
        f"{op}: expected weight to be a 4-D tensor (C * multiplier, 1, kH, kW), got shape {shape_str(weight_size)}"))
    channels = input_size[1]
    if channels >= 1:
        check(weight_size[1] == 1, lambda: (
            f"{op}: expected weight to have shape (C * multiplier, 1, kH, kW), got shape {shape_str(weight_size)} "
            "(weight.size(1) must be 1)"))
        check(weight_size[0] >= 1 and weight_size[0] % channels == 0, lambda: (
            f"{op}: expected weight.size(0) to be a positive multiple of the input channels C = {channels} "
            f"(an integer channel multiplier), got {weight_size[0]}"))
    return conv2d_geometry(op, input_size, weight_size, stride, padding, dilation, max(channels, 1), padding_mode)


@torch.library.register_fake("cnnops::depthwise_conv2d")
def _depthwise_fake(input, weight, bias, stride, padding, dilation, padding_mode):
    op = "cnnops.depthwise_conv2d"
    _check_same_dtype_device(op, input, "input", weight, "weight")
    out_shape = depthwise_geometry(op, input.shape, weight.shape, stride, padding, dilation, padding_mode)
    if bias is not None:
        _check_same_dtype_device(op, input, "input", bias, "bias")
        torch._check_value(bias.dim() == 1 and bias.shape[0] == out_shape[1], lambda: (
            f"{op}: expected bias to have shape ({out_shape[1]},) (C * multiplier), got shape {shape_str(bias.shape)}"))
    check_dtype(op, input)
    return empty_like_shape(out_shape, input, conv_memory_format(input, weight))


@torch.library.register_fake("cnnops::depthwise_conv2d_grad_input")
def _depthwise_grad_input_fake(grad_output, weight, input_size, stride, padding, dilation, padding_mode, channels_last):
    op = "cnnops.depthwise_conv2d_grad_input"
    _check_same_dtype_device(op, grad_output, "grad_output", weight, "weight")
    out_shape = depthwise_geometry(op, input_size, weight.shape, stride, padding, dilation, padding_mode)
    _check_grad_output(op, grad_output, out_shape)
    check_dtype(op, grad_output)
    return empty_like_shape(input_size, grad_output, layout_from_flag(channels_last))


@torch.library.register_fake("cnnops::depthwise_conv2d_grad_weight")
def _depthwise_grad_weight_fake(grad_output, input, weight_size, stride, padding, dilation, padding_mode,
                                channels_last):
    op = "cnnops.depthwise_conv2d_grad_weight"
    _check_same_dtype_device(op, grad_output, "grad_output", input, "input")
    out_shape = depthwise_geometry(op, input.shape, weight_size, stride, padding, dilation, padding_mode)
    _check_grad_output(op, grad_output, out_shape)
    check_dtype(op, grad_output)
    return empty_like_shape(weight_size, input, layout_from_flag(channels_last))


# ---------------------------------------------------------------- autograd
# One setup and one backward (ops/_common.py), used by register_autograd on the op and by
# DepthwiseConv2dFunction. The CPU channels_last kernels need a unit channel stride and
# would each copy an NCHW grad_output: the backward makes one copy for both.
depthwise_setup, depthwise_backward = register_conv_autograd("depthwise_conv2d", one_channels_last_grad_output=True)
# The functionals' plain-eager path: the same backward, in C++ (csrc/conv_eager_autograd.cpp).
depthwise_conv2d_eager = ops._depthwise_conv2d_eager.default


def normalize_depthwise_args(op, weight_shape, stride, padding, dilation):
    """stride, dilation as [sh, sw]; padding as [top, bottom, left, right] ('same'/'valid' resolved)."""
    return normalize_conv2d_args(op, weight_shape, stride, padding, dilation)


class DepthwiseConv2dFunction(torch.autograd.Function):
    """depthwise_conv2d as a torch.autograd.Function, for .apply users. Takes a 4-D input,
    weight (C * multiplier, 1, kH, kW) and the arguments of cnnops.functional.depthwise_conv2d."""

    @staticmethod
    def forward(ctx, input, weight, bias=None, stride=1, padding=0, dilation=1, padding_mode="zeros"):
        stride, padding, dilation = normalize_depthwise_args("cnnops.depthwise_conv2d", weight.shape, stride, padding,
                                                             dilation)
        depthwise_setup(ctx, input, weight, bias, stride, padding, dilation, padding_mode)
        return forward_below_autograd(ops.depthwise_conv2d, input, weight, bias, stride, padding, dilation,
                                      padding_mode)

    @staticmethod
    def backward(ctx, grad_output):
        return depthwise_backward(ctx, grad_output)
