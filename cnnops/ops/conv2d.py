"""conv2d family, Python side: argument normalisation, fake kernels (same checks and
messages as csrc/common/conv_checks.h), autograd for all four ops (so double backward
works), and Conv2dFunction for .apply users. Op schemas are in csrc/conv2d.cpp."""
import torch

from cnnops.ops._common import (check_dtype, conv_memory_format, dtype_name, empty_like_shape,
                               forward_below_autograd, layout_from_flag, linear_jvp, pair, register_autograd,
                               register_conv_autograd, shape_str)

ops = torch.ops.cnnops
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


# ---------------------------------------------------------------- argument normalisation

def normalize_conv2d_args(op, weight_shape, stride, padding, dilation):
    """stride, dilation as [sh, sw]; padding as [top, bottom, left, right], resolving
    'same' (extra padding at the bottom/right for even kernels, as torch) and 'valid'."""
    if type(stride) is int and type(padding) is int and type(dilation) is int:  # the common call, fast
        return [stride, stride], [padding] * 4, [dilation, dilation]
    stride = pair(stride, "stride", op)
    dilation = pair(dilation, "dilation", op)
    if isinstance(padding, str):
        if padding == "valid":
            return stride, [0, 0, 0, 0], dilation
        if padding != "same":
            raise ValueError(f"{op}: expected padding to be 'same', 'valid', an int or a pair of ints, got {padding!r}")
        if any(s != 1 for s in stride):
            raise ValueError(f"{op}: padding='same' is not supported for strided convolutions, got stride {tuple(stride)}")
        pads = []
        for d, k in zip(dilation, weight_shape[2:]):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return stride, pads, dilation
    ph, pw = pair(padding, "padding", op)
    return stride, [ph, ph, pw, pw], dilation


# ---------------------------------------------------------------- checks (fake kernels)

def _check_same_dtype_device(op, ref, ref_name, other, name):
    torch._check_type(other.dtype == ref.dtype, lambda: (
        f"{op}: expected {name} to have the same dtype as {ref_name} ({dtype_name(ref.dtype)}), got {dtype_name(other.dtype)}"))
    torch._check(other.device == ref.device, lambda: (
        f"{op}: expected {name} to be on the same device as {ref_name} ({ref.device}), got {other.device}"))


def conv2d_geometry(op, input_size, weight_size, stride, padding, dilation, groups, padding_mode):
    """Mirror of conv2d_geometry() in csrc/common/conv_checks.h; returns the output size."""
    input_size, weight_size = tuple(input_size), tuple(weight_size)
    check = torch._check_value
    check(len(input_size) == 4, lambda: f"{op}: expected input to be a 4-D tensor (N, C, H, W), got shape {shape_str(input_size)}")
    check(len(weight_size) == 4, lambda: (
        f"{op}: expected weight to be a 4-D tensor (out_channels, in_channels / groups, kH, kW), got shape {shape_str(weight_size)}"))
    check(len(stride) == 2 and stride[0] >= 1 and stride[1] >= 1, lambda: f"{op}: expected stride to be two integers >= 1, got {shape_str(stride)}")
    check(len(dilation) == 2 and dilation[0] >= 1 and dilation[1] >= 1, lambda: f"{op}: expected dilation to be two integers >= 1, got {shape_str(dilation)}")
    check(len(padding) == 4 and all(p >= 0 for p in padding), lambda: (
        f"{op}: expected padding to be four integers >= 0 (top, bottom, left, right), got {shape_str(padding)}"))
    check(groups >= 1, lambda: f"{op}: expected groups >= 1, got {groups}")
    check(padding_mode in PADDING_MODES, lambda: (
        f"{op}: expected padding_mode to be one of 'zeros', 'reflect', 'replicate', 'circular', got '{padding_mode}'"))
    n, c, h, w = input_size
    oc, wc, kh, kw = weight_size
    pt, pb, pl, pr = padding
    check(c >= 1 and h >= 1 and w >= 1, lambda: f"{op}: expected input to have non-zero channels, height and width, got shape {shape_str(input_size)}")
    check(oc >= 1 and wc >= 1 and kh >= 1 and kw >= 1, lambda: f"{op}: expected weight to have non-zero sizes, got shape {shape_str(weight_size)}")
    check(c == wc * groups, lambda: (
        f"{op}: expected input to have weight.size(1) * groups = {wc} * {groups} = {wc * groups} channels, "
        f"got {c} (input shape {shape_str(input_size)})"))
    check(oc % groups == 0, lambda: f"{op}: expected out_channels (weight.size(0) = {oc}) to be divisible by groups = {groups}")
    if padding_mode == "reflect":
        check(pt < h and pb < h and pl < w and pr < w, lambda: (
            f"{op}: reflect padding must be smaller than the input size, got padding {shape_str(padding)} for input height {h} and width {w}"))
    if padding_mode == "circular":
        check(pt <= h and pb <= h and pl <= w and pr <= w, lambda: (
            f"{op}: circular padding must be at most the input size, got padding {shape_str(padding)} for input height {h} and width {w}"))
    padded_h, padded_w = h + pt + pb, w + pl + pr
    dkh, dkw = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    check(padded_h >= dkh and padded_w >= dkw, lambda: (
        f"{op}: expected the padded input ({padded_h} x {padded_w}) to be at least as large as the dilated kernel ({dkh} x {dkw})"))
    return (n, oc, (padded_h - dkh) // stride[0] + 1, (padded_w - dkw) // stride[1] + 1)


def _check_grad_output(op, grad_output, expected):
    torch._check_value(tuple(grad_output.shape) == tuple(expected), lambda: (
        f"{op}: expected grad_output to have shape {shape_str(expected)}, got {shape_str(grad_output.shape)}"))


@torch.library.register_fake("cnnops::conv2d")
def _conv2d_fake(input, weight, bias, stride, padding, dilation, groups, padding_mode):
    op = "cnnops.conv2d"
    _check_same_dtype_device(op, input, "input", weight, "weight")
    out_shape = conv2d_geometry(op, input.shape, weight.shape, stride, padding, dilation, groups, padding_mode)
    if bias is not None:
        _check_same_dtype_device(op, input, "input", bias, "bias")
        torch._check_value(bias.dim() == 1 and bias.shape[0] == out_shape[1], lambda: (
            f"{op}: expected bias to have shape ({out_shape[1]},) (out_channels), got shape {shape_str(bias.shape)}"))
    check_dtype(op, input)
    return empty_like_shape(out_shape, input, conv_memory_format(input, weight))


@torch.library.register_fake("cnnops::_conv2d_grad_input_gather")
@torch.library.register_fake("cnnops::conv2d_grad_input")
def _conv2d_grad_input_fake(grad_output, weight, input_size, stride, padding, dilation, groups, padding_mode,
                            channels_last):
    op = "cnnops.conv2d_grad_input"
    _check_same_dtype_device(op, grad_output, "grad_output", weight, "weight")
    out_shape = conv2d_geometry(op, input_size, weight.shape, stride, padding, dilation, groups, padding_mode)
    _check_grad_output(op, grad_output, out_shape)
    check_dtype(op, grad_output)
    return empty_like_shape(input_size, grad_output, layout_from_flag(channels_last))


@torch.library.register_fake("cnnops::conv2d_grad_weight")
def _conv2d_grad_weight_fake(grad_output, input, weight_size, stride, padding, dilation, groups, padding_mode,
                             channels_last):
    op = "cnnops.conv2d_grad_weight"
    _check_same_dtype_device(op, grad_output, "grad_output", input, "input")
    out_shape = conv2d_geometry(op, input.shape, weight_size, stride, padding, dilation, groups, padding_mode)
    _check_grad_output(op, grad_output, out_shape)
    check_dtype(op, grad_output)
    return empty_like_shape(weight_size, input, layout_from_flag(channels_last))


@torch.library.register_fake("cnnops::conv2d_grad_bias")
def _conv2d_grad_bias_fake(grad_output):
    op = "cnnops.conv2d_grad_bias"
    torch._check_value(grad_output.dim() >= 2, lambda: (
        f"{op}: expected grad_output with at least 2 dimensions (N, C, ...), got shape {shape_str(grad_output.shape)}"))
    check_dtype(op, grad_output)
    return grad_output.new_empty((grad_output.shape[1],))


# ---------------------------------------------------------------- autograd
# One setup and one backward (ops/_common.py), used by register_autograd on the op and by
# Conv2dFunction.
conv2d_setup, conv2d_backward = register_conv_autograd("conv2d")
# The functionals' plain-eager path: the same backward, in C++ (csrc/conv_eager_autograd.cpp).
conv2d_eager = ops._conv2d_eager.default


def _setup_grad_bias(ctx, inputs, output):
    ctx.grad_output_shape = tuple(inputs[0].shape)


def _backward_grad_bias(ctx, gg):
    shape = ctx.grad_output_shape
    return gg.reshape((1, shape[1]) + (1,) * (len(shape) - 2)).expand(shape)


register_autograd("cnnops::conv2d_grad_bias", _backward_grad_bias, _setup_grad_bias,
                  linear_jvp(ops.conv2d_grad_bias))


class Conv2dFunction(torch.autograd.Function):
    """conv2d as a torch.autograd.Function, for .apply users. Takes a 4-D input and the
    same arguments as cnnops.functional.conv2d (ints, pairs, 'same', 'valid')."""

    @staticmethod
    def forward(ctx, input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
        stride, padding, dilation = normalize_conv2d_args("cnnops.conv2d", weight.shape, stride, padding, dilation)
        conv2d_setup(ctx, input, weight, bias, stride, padding, dilation, groups, padding_mode)
        return forward_below_autograd(ops.conv2d, input, weight, bias, stride, padding, dilation, groups,
                                      padding_mode)

    @staticmethod
    def backward(ctx, grad_output):
        return conv2d_backward(ctx, grad_output)
