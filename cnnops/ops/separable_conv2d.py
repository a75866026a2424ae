"""separable_conv2d family, Python side: the fused separable forwards
depthwise_separable_conv2d (a depthwise conv, then a 1x1 conv) and spatially_separable_conv2d
(a (kH x 1) conv, then a (1 x kW) conv). Fake kernels (same checks and messages as
csrc/common/separable_checks.h), spatially_separable_conv2d's CUDA kernel (the two conv
kernels in sequence; depthwise_separable_conv2d's is csrc/cuda/separable_conv2d.cu),
autograd (the two convs' gradient ops; the intermediate tensor is recomputed for the second
weight's gradient, since the forward keeps none), and the torch.autograd.Functions.
Schemas: csrc/separable_conv2d.cpp; CPU kernels: csrc/cpu/separable_conv2d.cpp."""
from typing import NamedTuple

import torch

from cnnops.ops._common import (autograd_call, bilinear_tangent, check_dtype, conv_memory_format, empty_like_shape,
                               forward_below_autograd, gradient_ops_below_autograd, is_batched, pair, register_autograd,
                               shape_str, suggest_memory_format)
from cnnops.ops.conv2d import _check_same_dtype_device, conv2d_geometry, normalize_conv2d_args
from cnnops.ops.depthwise_conv2d import depthwise_geometry

ops = torch.ops.cnnops


class _Conv(NamedTuple):
    """One conv of a pair: its family's ops and the arguments after bias, in schema order."""
    family: str  # "conv2d" or "depthwise_conv2d"
    args: tuple

    def forward(self, x, weight, bias):
        return autograd_call(getattr(ops, self.family), x, weight, bias, *self.args)

    def grad_input(self, grad_output, weight, input_shape, channels_last):
        return autograd_call(getattr(ops, f"{self.family}_grad_input"), grad_output, weight, input_shape, *self.args,
                             channels_last)

    def grad_weight(self, grad_output, x, weight_shape, channels_last):
        return autograd_call(getattr(ops, f"{self.family}_grad_weight"), grad_output, x, weight_shape, *self.args,
                             channels_last)


def _check_bias(op, input, bias, name, size, what):
    if bias is not None:
        _check_same_dtype_device(op, input, "input", bias, name)
        torch._check_value(bias.dim() == 1 and bias.shape[0] == size, lambda: (
            f"{op}: expected {name} to have shape ({size},) ({what}), got shape {shape_str(bias.shape)}"))


# ---------------------------------------------------------------- the two pairs

def depthwise_separable_geometry(op, input, depthwise_weight, depthwise_bias, pointwise_weight, pointwise_bias,
                                 stride, padding, dilation, padding_mode):
    """Mirror of check_depthwise_separable_forward(); returns (intermediate size, output size)."""
    check = torch._check_value
    _check_same_dtype_device(op, input, "input", depthwise_weight, "depthwise_weight")
    check(input.dim() == 4, lambda: (
        f"{op}: expected input to be a 4-D tensor (N, C, H, W), got shape {shape_str(input.shape)}"))
    channels, dw = input.shape[1], tuple(depthwise_weight.shape)
    check(len(dw) == 4 and dw[1] == 1 and dw[2] >= 1 and dw[3] >= 1
          and (channels < 1 or (dw[0] >= 1 and dw[0] % channels == 0)), lambda: (
              f"{op}: expected depthwise_weight to have shape (C * multiplier, 1, kH, kW) with C = {channels}, an "
              f"integer multiplier and kH, kW >= 1, got shape {shape_str(dw)}"))
    mid = tuple(depthwise_geometry(op, input.shape, dw, stride, padding, dilation, padding_mode))
    _check_bias(op, input, depthwise_bias, "depthwise_bias", mid[1], "C * multiplier")
    check_dtype(op, input)
    _check_same_dtype_device(op, input, "input", pointwise_weight, "pointwise_weight")
    pw = tuple(pointwise_weight.shape)
    check(len(pw) == 4 and pw[0] >= 1 and pw[1] == mid[1] and pw[2] == 1 and pw[3] == 1, lambda: (
        f"{op}: expected pointwise_weight to have shape (C_out, {mid[1]}, 1, 1) (C * multiplier input "
        f"channels), got shape {shape_str(pw)}"))
    _check_bias(op, input, pointwise_bias, "pointwise_bias", pw[0], "C_out")
    return mid, (mid[0], pw[0], mid[2], mid[3])


def depthwise_separable_convs(stride, padding, dilation, padding_mode):
    return (_Conv("depthwise_conv2d", (stride, padding, dilation, padding_mode)),
            _Conv("conv2d", ([1, 1], [0, 0, 0, 0], [1, 1], 1, "zeros")))


def spatially_separable_geometry(op, input, vertical_weight, vertical_bias, horizontal_weight, horizontal_bias,
                                 stride, padding, dilation, padding_mode):
    """Mirror of check_spatially_separable_forward(); returns (intermediate size, output size)."""
    check = torch._check_value
    _check_same_dtype_device(op, input, "input", vertical_weight, "vertical_weight")
    check(input.dim() == 4, lambda: (
        f"{op}: expected input to be a 4-D tensor (N, C, H, W), got shape {shape_str(input.shape)}"))
    check(len(stride) == 2 and len(dilation) == 2 and len(padding) == 4, lambda: (
        f"{op}: expected stride and dilation as (vertical, horizontal) and padding as (top, bottom, left, right), "
        f"got {shape_str(stride)}, {shape_str(dilation)}, {shape_str(padding)}"))
    # checked here, as given: each conv below sees only its half of them
    check(stride[0] >= 1 and stride[1] >= 1, lambda: (
        f"{op}: expected stride to be two integers >= 1 (vertical, horizontal), got {shape_str(stride)}"))
    check(dilation[0] >= 1 and dilation[1] >= 1, lambda: (
        f"{op}: expected dilation to be two integers >= 1 (vertical, horizontal), got {shape_str(dilation)}"))
    check(all(p >= 0 for p in padding), lambda: (
        f"{op}: expected padding to be four integers >= 0 (top, bottom, left, right), got {shape_str(padding)}"))
    vw = tuple(vertical_weight.shape)
    check(len(vw) == 4 and vw[0] >= 1 and vw[1] == input.shape[1] and vw[2] >= 1 and vw[3] == 1, lambda: (
        f"{op}: expected vertical_weight to have shape (C_mid, {input.shape[1]}, kH, 1) with kH >= 1, got shape "
        f"{shape_str(vw)}"))
    first, second = spatially_separable_convs(stride, padding, dilation, padding_mode)
    mid = tuple(conv2d_geometry(op, input.shape, vw, *first.args))
    _check_bias(op, input, vertical_bias, "vertical_bias", vw[0], "C_mid")
    check_dtype(op, input)
    _check_same_dtype_device(op, input, "input", horizontal_weight, "horizontal_weight")
    hw = tuple(horizontal_weight.shape)
    check(len(hw) == 4 and hw[0] >= 1 and hw[1] == vw[0] and hw[2] == 1 and hw[3] >= 1, lambda: (
        f"{op}: expected horizontal_weight to have shape (C_out, {vw[0]}, 1, kW) with kW >= 1, got shape "
        f"{shape_str(hw)}"))
    out = tuple(conv2d_geometry(op, mid, hw, *second.args))
    _check_bias(op, input, horizontal_bias, "horizontal_bias", hw[0], "C_out")
    return mid, out


def spatially_separable_convs(stride, padding, dilation, padding_mode):
    return (_Conv("conv2d", ([stride[0], 1], [padding[0], padding[1], 0, 0], [dilation[0], 1], 1, padding_mode)),
            _Conv("conv2d", ([1, stride[1]], [0, 0, padding[2], padding[3]], [1, dilation[1]], 1, padding_mode)))


def normalize_spatially_separable_args(op, vertical_shape, horizontal_shape, stride, padding, dilation):
    """stride and dilation: an int or (vertical conv's along H, horizontal conv's along W);
    padding: an int p or a pair (p_rows, p_cols) (the vertical conv pads rows, the horizontal
    one columns), 'same' or 'valid'. Returns ([sv, sh], [top, bottom, left, right], [dv, dh])."""
    sv, sh = pair(stride, "stride", op)
    dv, dh = pair(dilation, "dilation", op)
    if isinstance(padding, str):
        rows = cols = padding
    else:
        p_rows, p_cols = pair(padding, "padding", op)
        rows, cols = (p_rows, 0), (0, p_cols)
    _, v_pad, _ = normalize_conv2d_args(op, vertical_shape, (sv, 1), rows, (dv, 1))
    _, h_pad, _ = normalize_conv2d_args(op, horizontal_shape, (1, sh), cols, (1, dh))
    return [sv, sh], [v_pad[0], v_pad[1], h_pad[2], h_pad[3]], [dv, dh]


def normalize_pair_args(name, w1_shape, w2_shape, stride, padding, dilation):
    """The op's stride, padding and dilation lists from the functional's ints, pairs and strings."""
    op = f"cnnops.{name}"
    if name == "depthwise_separable_conv2d":
        return normalize_conv2d_args(op, w1_shape, stride, padding, dilation)
    return normalize_spatially_separable_args(op, w1_shape, w2_shape, stride, padding, dilation)


PAIRS = {  # op name: (geometry, convs, whether the CUDA kernel is registered here)
    "depthwise_separable_conv2d": (depthwise_separable_geometry, depthwise_separable_convs, False),
    "spatially_separable_conv2d": (spatially_separable_geometry, spatially_separable_convs, True),
}


def pair_layouts(input, first_weight, second_weight):
    """(intermediate, output) memory formats, as the two convs in sequence give them."""
    mid = conv_memory_format(input, first_weight)
    cl = mid == torch.channels_last or suggest_memory_format(second_weight) == torch.channels_last
    return mid, torch.channels_last if cl else torch.contiguous_format


# ---------------------------------------------------------------- fake, CUDA, autograd

EAGER = {}  # name: its eager autograd.Function (ops/_common.py register_autograd)


def _register(name):
    geometry, convs, python_cuda = PAIRS[name]
    op = f"cnnops.{name}"

    @torch.library.register_fake(f"cnnops::{name}")
    def _fake(input, w1, b1, w2, b2, stride, padding, dilation, padding_mode):
        _, out_shape = geometry(op, input, w1, b1, w2, b2, stride, padding, dilation, padding_mode)
        return empty_like_shape(out_shape, input, pair_layouts(input, w1, w2)[1])

    def _cuda(input, w1, b1, w2, b2, stride, padding, dilation, padding_mode):
        # Not fused on CUDA: the first conv's kernel, then the second's.
        geometry(op, input, w1, b1, w2, b2, stride, padding, dilation, padding_mode)
        first, second = convs(stride, padding, dilation, padding_mode)
        return second.forward(first.forward(input, w1, b1), w2, b2)

    if python_cuda:  # else csrc/cuda/separable_conv2d.cu registers it
        torch.library.impl(f"cnnops::{name}", "CUDA")(_cuda)

    def setup(ctx, inputs, output):
        pair_setup(ctx, name, *inputs)

    def backward(ctx, grad_output):
        return (*pair_backward(ctx, grad_output), None, None, None, None)

    def jvp(inputs, output, tangents):
        input, w1, b1, w2, b2, *args = inputs
        return pair_tangent(convs(*args), input, w1, b1, w2, b2, *tangents[:5], output)

    EAGER[name] = register_autograd(f"cnnops::{name}", backward, setup, jvp)


def pair_tangent(convs, input, w1, b1, w2, b2, t_input, t_w1, t_b1, t_w2, t_b2, output):
    """The forward-mode tangent of a pair's output, conv by conv through the recomputed
    intermediate (each conv is bilinear in its input and weight, plus a channel bias)."""
    first, second = convs
    mid = first.forward(input, w1, b1)
    t_mid = None
    if t_input is not None or t_w1 is not None or t_b1 is not None:
        t_mid = bilinear_tangent(lambda a, w: first.forward(a, w, None), input, t_input, w1, t_w1, t_b1, mid)
    return bilinear_tangent(lambda a, w: second.forward(a, w, None), mid, t_mid, w2, t_w2, t_b2, output)


def pair_setup(ctx, name, input, w1, b1, w2, b2, stride, padding, dilation, padding_mode):
    geometry, convs, _ = PAIRS[name]
    ctx.convs = convs(stride, padding, dilation, padding_mode)
    ctx.mid_shape, _ = geometry(f"cnnops.{name}", input, w1, b1, w2, b2, stride, padding, dilation, padding_mode)
    mid_format, out_format = pair_layouts(input, w1, w2)
    ctx.mid_cl, ctx.out_cl = mid_format == torch.channels_last, out_format == torch.channels_last
    ctx.input_shape, ctx.weight_shapes = tuple(input.shape), (tuple(w1.shape), tuple(w2.shape))
    ctx.has_bias = (b1 is not None, b2 is not None)
    need = ctx.needs_input_grad
    need_mid = need[3]  # the second weight's gradient reads the intermediate tensor
    need_grad_mid = need[0] or need[1] or need[2]
    ctx.save_for_backward(input if need_mid or need[1] else None, w1 if need_mid or need[0] else None,
                          b1 if need_mid else None, w2 if need_grad_mid else None)


@gradient_ops_below_autograd
def pair_backward(ctx, grad_output):
    """(grad_input, grad_w1, grad_b1, grad_w2, grad_b2), each None unless needed."""
    input, w1, b1, w2 = ctx.saved_tensors
    first, second = ctx.convs
    need = ctx.needs_input_grad
    grads = [None] * 5
    if need[3]:  # the forward kept no intermediate tensor: recompute it
        mid = first.forward(input, w1, b1)
        grads[3] = second.grad_weight(grad_output, mid, ctx.weight_shapes[1], ctx.out_cl)
    if ctx.has_bias[1] and need[4]:
        grads[4] = autograd_call(ops.conv2d_grad_bias, grad_output)
    if need[0] or need[1] or need[2]:
        grad_mid = second.grad_input(grad_output, w2, ctx.mid_shape, ctx.out_cl)
        if ctx.mid_cl and grad_mid.device.type == "cpu" and not is_batched(grad_mid):
            # the CPU channels_last kernels want a unit channel stride: one copy for both gradients
            grad_mid = grad_mid.contiguous(memory_format=torch.channels_last)
        if need[0]:
            grads[0] = first.grad_input(grad_mid, w1, ctx.input_shape, ctx.mid_cl)
        if need[1]:
            grads[1] = first.grad_weight(grad_mid, input, ctx.weight_shapes[0], ctx.mid_cl)
        if ctx.has_bias[0] and need[2]:
            grads[2] = autograd_call(ops.conv2d_grad_bias, grad_mid)
    return tuple(grads)


for _name in PAIRS:
    _register(_name)


class _PairFunction(torch.autograd.Function):
    """Shared by the two Functions below: `name` picks the pair."""
    name = ""

    @classmethod
    def forward(cls, ctx, input, w1, b1, w2, b2, stride=1, padding=0, dilation=1, padding_mode="zeros"):
        stride, padding, dilation = normalize_pair_args(cls.name, w1.shape, w2.shape, stride, padding, dilation)
        pair_setup(ctx, cls.name, input, w1, b1, w2, b2, stride, padding, dilation, padding_mode)
        return forward_below_autograd(getattr(ops, cls.name), input, w1, b1, w2, b2, stride, padding, dilation,
                                      padding_mode)

    @staticmethod
    def backward(ctx, grad_output):
        return (*pair_backward(ctx, grad_output), None, None, None, None)


class DepthwiseSeparableConv2dFunction(_PairFunction):
    """depthwise_separable_conv2d as a torch.autograd.Function, for .apply users: a 4-D input,
    depthwise_weight (C * m, 1, kH, kW), depthwise_bias, pointwise_weight (C_out, C * m, 1, 1),
    pointwise_bias, then the depthwise conv's stride, padding, dilation and padding_mode (as
    cnnops.functional.depthwise_separable_conv2d takes them)."""
    name = "depthwise_separable_conv2d"


class SpatiallySeparableConv2dFunction(_PairFunction):
    """spatially_separable_conv2d as a torch.autograd.Function, for .apply users: a 4-D input,
    vertical_weight (C_mid, C, kH, 1), vertical_bias, horizontal_weight (C_out, C_mid, 1, kW),
    horizontal_bias, then stride, padding, dilation and padding_mode (as
    cnnops.functional.spatially_separable_conv2d takes them)."""
    name = "spatially_separable_conv2d"
