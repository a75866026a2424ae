"""conv_transpose2d family, Python side: argument normalisation and output_size resolution,
fake kernels (same checks and messages as csrc/common/conv_transpose_checks.h), autograd
for the forward and both gradient ops (so double backward works), and
ConvTranspose2dFunction for .apply users. Schemas are in csrc/conv_transpose2d.cpp; the
kernels are the conv2d family's (csrc/common/conv_transpose2d_impl.h)."""
import torch

from cnnops.ops._common import (check_dtype, conv_memory_format, empty_like_shape, forward_below_autograd,
                               layout_from_flag, pair, register_conv_autograd, shape_str)
from cnnops.ops.conv2d import _check_same_dtype_device

ops = torch.ops.cnnops


# ---------------------------------------------------------------- argument normalisation

def normalize_conv_transpose2d_args(op, stride, padding, output_padding, dilation):
    """stride, padding, output_padding, dilation as lists of two ints."""
    return (pair(stride, "stride", op), pair(padding, "padding", op), pair(output_padding, "output_padding", op),
            pair(dilation, "dilation", op))


def output_padding_for_size(op, input_shape, weight_shape, stride, padding, dilation, output_size):
    """torch's rule (nn.ConvTranspose2d._output_padding): output_size, of 2 elements or of
    input.dim() (the leading ones ignored), picks the output_padding that gives it; each
    size must lie between the smallest output (output_padding 0) and that + stride - 1."""
    sizes = list(output_size)
    if len(sizes) == len(input_shape):
        sizes = sizes[-2:]
    if len(sizes) != 2:
        raise ValueError(f"{op}: expected output_size to have 2 or {len(input_shape)} elements for a "
                         f"{len(input_shape)}-D input, got {shape_str(output_size)}")
    smallest = [(input_shape[-2 + d] - 1) * stride[d] - 2 * padding[d] + dilation[d] * (weight_shape[2 + d] - 1) + 1
                for d in range(2)]
    largest = [smallest[d] + stride[d] - 1 for d in range(2)]
    if not all(smallest[d] <= sizes[d] <= largest[d] for d in range(2)):
        raise ValueError(
            f"{op}: output_size {shape_str(sizes)} cannot be reached from an input of {input_shape[-2]} x "
            f"{input_shape[-1]} with stride {shape_str(stride)}, padding {shape_str(padding)}, dilation "
            f"{shape_str(dilation)} and kernel {shape_str(weight_shape[2:])}: reachable heights are "
            f"{smallest[0]} to {largest[0]}, widths {smallest[1]} to {largest[1]}")
    return [sizes[d] - smallest[d] for d in range(2)]


# ---------------------------------------------------------------- checks (fake kernels)

def conv_transpose2d_geometry(op, input_size, weight_size, stride, padding, output_padding, groups, dilation):
    """Mirror of conv_transpose2d_geometry() in csrc/common/conv_transpose_checks.h; returns
    the output size."""
    input_size, weight_size = tuple(input_size), tuple(weight_size)
    check = torch._check_value
    check(len(input_size) == 4, lambda: f"{op}: expected input to be a 4-D tensor (N, C, H, W), got shape {shape_str(input_size)}")
    check(len(weight_size) == 4, lambda: (
        f"{op}: expected weight to be a 4-D tensor (in_channels, out_channels / groups, kH, kW), got shape {shape_str(weight_size)}"))

    def is_pair(v, low):
        return len(v) == 2 and v[0] >= low and v[1] >= low

    check(is_pair(stride, 1), lambda: f"{op}: expected stride to be two integers >= 1, got {shape_str(stride)}")
    check(is_pair(padding, 0), lambda: f"{op}: expected padding to be two integers >= 0, got {shape_str(padding)}")
    check(is_pair(output_padding, 0), lambda: (
        f"{op}: expected output_padding to be two integers >= 0, got {shape_str(output_padding)}"))
    check(is_pair(dilation, 1), lambda: f"{op}: expected dilation to be two integers >= 1, got {shape_str(dilation)}")
    check(groups >= 1, lambda: f"{op}: expected groups >= 1, got {groups}")
    n, c, h, w = input_size
    ic, ocg, kh, kw = weight_size
    check(c >= 1 and h >= 1 and w >= 1, lambda: (
        f"{op}: expected input to have non-zero channels, height and width, got shape {shape_str(input_size)}"))
    check(ic >= 1 and ocg >= 1 and kh >= 1 and kw >= 1, lambda: (
        f"{op}: expected weight to have non-zero sizes, got shape {shape_str(weight_size)}"))
    check(ic == c, lambda: (
        f"{op}: expected input to have weight.size(0) = {ic} channels (weight is (in_channels, out_channels / groups, "
        f"kH, kW)), got {c} (input shape {shape_str(input_size)})"))
    check(c % groups == 0, lambda: f"{op}: expected in_channels (weight.size(0) = {c}) to be divisible by groups = {groups}")
    check(all(output_padding[d] < stride[d] or output_padding[d] < dilation[d] for d in range(2)), lambda: (
        f"{op}: expected output_padding to be smaller than stride or dilation in each dimension, got output_padding "
        f"{shape_str(output_padding)} with stride {shape_str(stride)} and dilation {shape_str(dilation)}"))
    out = [(size - 1) * stride[d] - 2 * padding[d] + dilation[d] * (k - 1) + output_padding[d] + 1
           for d, (size, k) in enumerate(((h, kh), (w, kw)))]
    check(out[0] >= 0 and out[1] >= 0, lambda: (
        f"{op}: expected a non-negative output size, got {out[0]} x {out[1]} = (input - 1) * stride - 2 * padding + "
        f"dilation * (kernel - 1) + output_padding + 1 for input {h} x {w}"))
    return (n, ocg * groups, out[0], out[1])


def _check_grad_output(op, grad_output, expected):
    torch._check_value(tuple(grad_output.shape) == tuple(expected), lambda: (
        f"{op}: expected grad_output to have shape {shape_str(expected)}, got {shape_str(grad_output.shape)}"))


def _forward_fake(op, input, weight, bias, stride, padding, output_padding, groups, dilation):
    _check_same_dtype_device(op, input, "input", weight, "weight")
    out_shape = conv_transpose2d_geometry(op, input.shape, weight.shape, stride, padding, output_padding, groups,
                                          dilation)
    if bias is not None:
        _check_same_dtype_device(op, input, "input", bias, "bias")
        torch._check_value(bias.dim() == 1 and bias.shape[0] == out_shape[1], lambda: (
            f"{op}: expected bias to have shape ({out_shape[1]},) (out_channels = weight.size(1) * groups), "
            f"got shape {shape_str(bias.shape)}"))
    check_dtype(op, input)
    return empty_like_shape(out_shape, input, conv_memory_format(input, weight))


@torch.library.register_fake("cnnops::conv_transpose2d")
def _conv_transpose2d_fake(input, weight, bias, stride, padding, output_padding, groups, dilation):
    return _forward_fake("cnnops.conv_transpose2d", input, weight, bias, stride, padding, output_padding, groups,
                         dilation)


@torch.library.register_fake("cnnops::_conv_transpose2d_gather")
def _conv_transpose2d_gather_fake(input, weight, bias, stride, padding, output_padding, groups, dilation):
    return _forward_fake("cnnops._conv_transpose2d_gather", input, weight, bias, stride, padding, output_padding,
                         groups, dilation)


@torch.library.register_fake("cnnops::conv_transpose2d_grad_input")
def _grad_input_fake(grad_output, weight, input_size, stride, padding, output_padding, groups, dilation,
                     channels_last):
    op = "cnnops.conv_transpose2d_grad_input"
    _check_same_dtype_device(op, grad_output, "grad_output", weight, "weight")
    out_shape = conv_transpose2d_geometry(op, input_size, weight.shape, stride, padding, output_padding, groups,
                                          dilation)
    _check_grad_output(op, grad_output, out_shape)
    check_dtype(op, grad_output)
    return empty_like_shape(input_size, grad_output, layout_from_flag(channels_last))


@torch.library.register_fake("cnnops::conv_transpose2d_grad_weight")
def _grad_weight_fake(grad_output, input, weight_size, stride, padding, output_padding, groups, dilation,
                      channels_last):
    op = "cnnops.conv_transpose2d_grad_weight"
    _check_same_dtype_device(op, grad_output, "grad_output", input, "input")
    out_shape = conv_transpose2d_geometry(op, input.shape, weight_size, stride, padding, output_padding, groups,
                                          dilation)
    _check_grad_output(op, grad_output, out_shape)
    check_dtype(op, grad_output)
    return empty_like_shape(weight_size, input, layout_from_flag(channels_last))


# ---------------------------------------------------------------- autograd
# One setup and one backward (ops/_common.py), used by register_autograd on the op and by
# ConvTranspose2dFunction.
conv_transpose2d_setup, conv_transpose2d_backward = register_conv_autograd("conv_transpose2d")
# The functionals' plain-eager path: the same backward, in C++ (csrc/conv_eager_autograd.cpp).
conv_transpose2d_eager = ops._conv_transpose2d_eager.default


class ConvTranspose2dFunction(torch.autograd.Function):
    """conv_transpose2d as a torch.autograd.Function, for .apply users. Takes a 4-D input and
    the same arguments as cnnops.functional.conv_transpose2d (ints or pairs, output_size)."""

    @staticmethod
    def forward(ctx, input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1,
                output_size=None):
        op = "cnnops.conv_transpose2d"
        stride, padding, output_padding, dilation = normalize_conv_transpose2d_args(
            op, stride, padding, output_padding, dilation)
        if output_size is not None:
            output_padding = output_padding_for_size(op, input.shape, weight.shape, stride, padding, dilation,
                                                     output_size)
        conv_transpose2d_setup(ctx, input, weight, bias, stride, padding, output_padding, groups, dilation)
        return forward_below_autograd(ops.conv_transpose2d, input, weight, bias, stride, padding, output_padding,
                                      groups, dilation)

    @staticmethod
    def backward(ctx, grad_output):
        return (*conv_transpose2d_backward(ctx, grad_output), None)  # and output_size
