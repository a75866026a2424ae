"""depthwise_conv2d family, Python side: fake kernels (same checks and messages as
csrc/common/depthwise_checks.h), autograd for the three ops (bilinear, so double backward
works), and DepthwiseConv2dFunction for .apply users. Schemas: csrc/depthwise_conv2d.cpp.
The bias gradient is conv2d's channel sum (cnnops::conv2d_grad_bias)."""
import torch

from cnnops.ops._common import (check_dtype, conv_memory_format, empty_like_shape, layout_from_flag,
                               suggest_memory_format,
                               register_conv_gradient_autograd, shape_str)
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
# One setup and one backward, used by register_autograd on the op and by DepthwiseConv2dFunction.

def depthwise_setup(ctx, input, weight, bias, stride, padding, dilation, padding_mode):
    ctx.conv_args = (stride, padding, dilation, padding_mode)
    ctx.channels_last = conv_memory_format(input, weight) == torch.channels_last
    ctx.input_shape = tuple(input.shape)
    ctx.weight_shape = tuple(weight.shape)
    ctx.has_bias = bias is not None
    need_input, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    ctx.save_for_backward(input if need_weight else None, weight if need_input else None)


def depthwise_backward(ctx, grad_output):
    """(grad_input, grad_weight, grad_bias), each None unless needed."""
    input, weight = ctx.saved_tensors
    return depthwise_gradients(grad_output, input, weight, ctx.input_shape, ctx.weight_shape, ctx.conv_args,
                               ctx.channels_last, ctx.has_bias, ctx.needs_input_grad[:3])


def depthwise_gradients(grad_output, input, weight, input_shape, weight_shape, args, channels_last, has_bias, needs):
    """(grad_input, grad_weight, grad_bias) of a depthwise conv, each None unless needs[i]."""
    grad_input = grad_weight = grad_bias = None
    if (channels_last and grad_output.device.type == "cpu" and needs[0] and needs[1] and grad_output.dim() == 4
            and not grad_output.is_contiguous(memory_format=torch.channels_last)):
        # The CPU channels_last kernels need a unit channel stride and would each copy an
        # NCHW grad_output: one copy for both.
        grad_output = grad_output.contiguous(memory_format=torch.channels_last)
    if needs[0]:
        grad_input = ops.depthwise_conv2d_grad_input(grad_output, weight, input_shape, *args, channels_last)
    if needs[1]:
        grad_weight = ops.depthwise_conv2d_grad_weight(grad_output, input, weight_shape, *args, channels_last)
    if has_bias and needs[2]:
        grad_bias = ops.conv2d_grad_bias(grad_output)
    return grad_input, grad_weight, grad_bias


def _setup_forward(ctx, inputs, output):
    depthwise_setup(ctx, *inputs)


def _backward_forward(ctx, grad_output):
    return (*depthwise_backward(ctx, grad_output), None, None, None, None)


torch.library.register_autograd("cnnops::depthwise_conv2d", _backward_forward, setup_context=_setup_forward)
register_conv_gradient_autograd("depthwise_conv2d")  # double backward: bilinear gradient ops


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
        return ops.depthwise_conv2d(input, weight, bias, stride, padding, dilation, padding_mode)

    @staticmethod
    def backward(ctx, grad_output):
        return (*depthwise_backward(ctx, grad_output), None, None, None, None)


# ---------------------------------------------------------------- depthwise-separable (fused forward)
# pointwise(depthwise(input)) as one op: the CPU kernel (csrc/cpu/depthwise_separable_conv2d.cpp)
# keeps no intermediate tensor; on CUDA the two kernels run in sequence. The backward recomputes
# the depthwise output when the pointwise weight needs its gradient, then runs the two convs'
# gradient ops (differentiable, so double backward works).

_POINTWISE_ARGS = ([1, 1], [0, 0, 0, 0], [1, 1], 1, "zeros")  # stride, padding, dilation, groups, mode


def depthwise_separable_geometry(op, input, depthwise_weight, depthwise_bias, pointwise_weight, pointwise_bias,
                                 stride, padding, dilation, padding_mode):
    """Mirror of check_depthwise_separable_forward() in csrc/common/depthwise_checks.h;
    returns (depthwise output size, output size)."""
    check = torch._check_value
    _check_same_dtype_device(op, input, "input", depthwise_weight, "depthwise_weight")
    check(input.dim() == 4, lambda: (
        f"{op}: expected input to be a 4-D tensor (N, C, H, W), got shape {shape_str(input.shape)}"))
    channels, dw = input.shape[1], tuple(depthwise_weight.shape)
    check(len(dw) == 4 and dw[1] == 1 and (channels < 1 or (dw[0] >= 1 and dw[0] % channels == 0)), lambda: (
        f"{op}: expected depthwise_weight to have shape (C * multiplier, 1, kH, kW) with C = {channels} and an "
        f"integer multiplier, got shape {shape_str(dw)}"))
    mid_shape = depthwise_geometry(op, input.shape, dw, stride, padding, dilation, padding_mode)
    mid_channels = mid_shape[1]
    if depthwise_bias is not None:
        _check_same_dtype_device(op, input, "input", depthwise_bias, "depthwise_bias")
        check(depthwise_bias.dim() == 1 and depthwise_bias.shape[0] == mid_channels, lambda: (
            f"{op}: expected depthwise_bias to have shape ({mid_channels},) (C * multiplier), got shape "
            f"{shape_str(depthwise_bias.shape)}"))
    check_dtype(op, input)
    _check_same_dtype_device(op, input, "input", pointwise_weight, "pointwise_weight")
    pw = tuple(pointwise_weight.shape)
    check(len(pw) == 4 and pw[0] >= 1 and pw[1] == mid_channels and pw[2] == 1 and pw[3] == 1, lambda: (
        f"{op}: expected pointwise_weight to have shape (C_out, {mid_channels}, 1, 1) (C * multiplier input "
        f"channels), got shape {shape_str(pw)}"))
    if pointwise_bias is not None:
        _check_same_dtype_device(op, input, "input", pointwise_bias, "pointwise_bias")
        check(pointwise_bias.dim() == 1 and pointwise_bias.shape[0] == pw[0], lambda: (
            f"{op}: expected pointwise_bias to have shape ({pw[0]},) (C_out), got shape "
            f"{shape_str(pointwise_bias.shape)}"))
    return tuple(mid_shape), (mid_shape[0], pw[0], mid_shape[2], mid_shape[3])


def separable_layouts(input, depthwise_weight, pointwise_weight):
    """(depthwise output, output) memory formats, as the two convs in sequence give them."""
    mid = conv_memory_format(input, depthwise_weight)
    cl = mid == torch.channels_last or suggest_memory_format(pointwise_weight) == torch.channels_last
    return mid, torch.channels_last if cl else torch.contiguous_format


@torch.library.register_fake("cnnops::depthwise_separable_conv2d")
def _depthwise_separable_fake(input, depthwise_weight, depthwise_bias, pointwise_weight, pointwise_bias, stride,
                              padding, dilation, padding_mode):
    _, out_shape = depthwise_separable_geometry("cnnops.depthwise_separable_conv2d", input, depthwise_weight,
                                                depthwise_bias, pointwise_weight, pointwise_bias, stride, padding,
                                                dilation, padding_mode)
    return empty_like_shape(out_shape, input, separable_layouts(input, depthwise_weight, pointwise_weight)[1])


@torch.library.impl("cnnops::depthwise_separable_conv2d", "CUDA")
def _depthwise_separable_cuda(input, depthwise_weight, depthwise_bias, pointwise_weight, pointwise_bias, stride,
                              padding, dilation, padding_mode):
    # Not fused on CUDA yet: the depthwise kernel, then the 1x1 conv kernel.
    depthwise_separable_geometry("cnnops.depthwise_separable_conv2d", input, depthwise_weight, depthwise_bias,
                                 pointwise_weight, pointwise_bias, stride, padding, dilation, padding_mode)
    mid = ops.depthwise_conv2d(input, depthwise_weight, depthwise_bias, stride, padding, dilation, padding_mode)
    return ops.conv2d(mid, pointwise_weight, pointwise_bias, *_POINTWISE_ARGS)


def depthwise_separable_setup(ctx, input, depthwise_weight, depthwise_bias, pointwise_weight, pointwise_bias, stride,
                              padding, dilation, padding_mode):
    ctx.conv_args = (stride, padding, dilation, padding_mode)
    mid_format, out_format = separable_layouts(input, depthwise_weight, pointwise_weight)
    ctx.mid_cl, ctx.out_cl = mid_format == torch.channels_last, out_format == torch.channels_last
    ctx.input_shape = tuple(input.shape)
    ctx.depthwise_shape = tuple(depthwise_weight.shape)
    ctx.pointwise_shape = tuple(pointwise_weight.shape)
    ctx.has_bias = (depthwise_bias is not None, pointwise_bias is not None)
    need = ctx.needs_input_grad
    need_mid = need[3]  # the pointwise weight's gradient reads the depthwise output
    need_grad_mid = need[0] or need[1] or need[2]
    ctx.save_for_backward(input if need_mid or need[1] else None,
                          depthwise_weight if need_mid or need[0] else None,
                          depthwise_bias if need_mid else None,
                          pointwise_weight if need_grad_mid else None)


def depthwise_separable_backward(ctx, grad_output):
    """(grad_input, grad_depthwise_weight, grad_depthwise_bias, grad_pointwise_weight,
    grad_pointwise_bias), each None unless needed."""
    input, depthwise_weight, depthwise_bias, pointwise_weight = ctx.saved_tensors
    need = ctx.needs_input_grad
    grad_pw = grad_pw_bias = None
    if need[3]:  # the forward kept no depthwise output: recompute it
        mid = ops.depthwise_conv2d(input, depthwise_weight, depthwise_bias, *ctx.conv_args)
        grad_pw = ops.conv2d_grad_weight(grad_output, mid, ctx.pointwise_shape, *_POINTWISE_ARGS, ctx.out_cl)
    if ctx.has_bias[1] and need[4]:
        grad_pw_bias = ops.conv2d_grad_bias(grad_output)
    grads = (None, None, None)
    if need[0] or need[1] or need[2]:
        n, _, h, w = grad_output.shape
        mid_shape = (n, ctx.depthwise_shape[0], h, w)
        grad_mid = ops.conv2d_grad_input(grad_output, pointwise_weight, mid_shape, *_POINTWISE_ARGS, ctx.out_cl)
        grads = depthwise_gradients(grad_mid, input, depthwise_weight, ctx.input_shape, ctx.depthwise_shape,
                                    ctx.conv_args, ctx.mid_cl, ctx.has_bias[0], need[:3])
    return (*grads, grad_pw, grad_pw_bias)


def _setup_separable(ctx, inputs, output):
    depthwise_separable_setup(ctx, *inputs)


def _backward_separable(ctx, grad_output):
    return (*depthwise_separable_backward(ctx, grad_output), None, None, None, None)


torch.library.register_autograd("cnnops::depthwise_separable_conv2d", _backward_separable,
                                setup_context=_setup_separable)


class DepthwiseSeparableConv2dFunction(torch.autograd.Function):
    """depthwise_separable_conv2d as a torch.autograd.Function, for .apply users: a 4-D input,
    depthwise_weight (C * m, 1, kH, kW), depthwise_bias, pointwise_weight (C_out, C * m, 1, 1),
    pointwise_bias, then the depthwise conv's stride, padding, dilation and padding_mode."""

    @staticmethod
    def forward(ctx, input, depthwise_weight, depthwise_bias, pointwise_weight, pointwise_bias, stride=1, padding=0,
                dilation=1, padding_mode="zeros"):
        stride, padding, dilation = normalize_depthwise_args("cnnops.depthwise_separable_conv2d",
                                                             depthwise_weight.shape, stride, padding, dilation)
        depthwise_separable_setup(ctx, input, depthwise_weight, depthwise_bias, pointwise_weight, pointwise_bias,
                                  stride, padding, dilation, padding_mode)
        return ops.depthwise_separable_conv2d(input, depthwise_weight, depthwise_bias, pointwise_weight,
                                              pointwise_bias, stride, padding, dilation, padding_mode)

    @staticmethod
    def backward(ctx, grad_output):
        return (*depthwise_separable_backward(ctx, grad_output), None, None, None, None)
