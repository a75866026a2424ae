"""pool2d family, Python side: argument normalisation, fake kernels (same checks and
messages as csrc/common/pool_checks.h), autograd for the forward ops and their backward
ops (double backward), and the autograd.Function classes for .apply users. Op schemas are
in csrc/pool2d.cpp."""
import torch
from torch._prims_common import suggest_memory_format

from cnnops.ops._common import (autograd_call, check_dtype, dtype_name, empty_like_shape, forward_below_autograd,
                               gradient_ops_below_autograd, layout_from_flag, linear_jvp, pair, register_autograd,
                               shape_str)

ops = torch.ops.cnnops


# ---------------------------------------------------------------- argument normalisation

def normalize_pool_args(op, kernel_size, stride, padding, dilation=1):
    """kernel_size, stride, padding, dilation as lists of two ints; stride None or [] means
    the kernel size, as in torch."""
    kernel_size = pair(kernel_size, "kernel_size", op)
    stride = kernel_size if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0) \
        else pair(stride, "stride", op)
    return kernel_size, stride, pair(padding, "padding", op), pair(dilation, "dilation", op)


def normalize_output_size(op, output_size, input_shape):
    """torch's rule: an int means (s, s); None entries keep the input's size."""
    if isinstance(output_size, (list, tuple)):
        if len(output_size) == 1:
            output_size = (output_size[0], output_size[0])
        if len(output_size) != 2:
            raise ValueError(f"{op}: expected output_size to be an int or a pair of ints or None, got {tuple(output_size)}")
        return [input_shape[-2] if output_size[0] is None else output_size[0],
                input_shape[-1] if output_size[1] is None else output_size[1]]
    if output_size is None:
        return [input_shape[-2], input_shape[-1]]
    return pair(output_size, "output_size", op)


# ---------------------------------------------------------------- checks (fake kernels)
# Line-for-line mirrors of csrc/common/pool_checks.h.

def _check_pool_input(op, input_size):
    check = torch._check_value
    check(len(input_size) == 4, lambda: f"{op}: expected input to be a 4-D tensor (N, C, H, W), got shape {shape_str(input_size)}")
    check(input_size[1] >= 1 and input_size[2] >= 1 and input_size[3] >= 1, lambda: (
        f"{op}: expected input to have non-zero channels, height and width, got shape {shape_str(input_size)}"))


def _check_pair(op, name, v, lo):
    torch._check_value(len(v) == 2 and v[0] >= lo and v[1] >= lo,
                       lambda: f"{op}: expected {name} to be two integers >= {lo}, got {shape_str(v)}")


def _floor_div(a, b):
    return a // b


def pool_output_size(size, kernel, stride, pad, dilation, ceil_mode):
    """Mirror of pool_output_size() in csrc/common/pool_index.h (torch's rule)."""
    out = _floor_div(size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0), stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def pool2d_geometry(op, input_size, kernel_size, stride, padding, dilation, ceil_mode):
    """Mirror of pool2d_geometry() in csrc/common/pool_checks.h; returns the output shape."""
    input_size = tuple(input_size)
    _check_pool_input(op, input_size)
    _check_pair(op, "kernel_size", kernel_size, 1)
    _check_pair(op, "stride", stride, 1)
    _check_pair(op, "padding", padding, 0)
    _check_pair(op, "dilation", dilation, 1)
    torch._check_value(padding[0] <= kernel_size[0] // 2 and padding[1] <= kernel_size[1] // 2, lambda: (
        f"{op}: expected padding to be at most half of kernel_size (padding <= kernel_size // 2), "
        f"got padding {shape_str(padding)} for kernel_size {shape_str(kernel_size)}"))
    n, c, h, w = input_size
    oh = pool_output_size(h, kernel_size[0], stride[0], padding[0], dilation[0], ceil_mode)
    ow = pool_output_size(w, kernel_size[1], stride[1], padding[1], dilation[1], ceil_mode)
    torch._check_value(oh >= 1 and ow >= 1, lambda: (
        f"{op}: expected the output size to be at least 1 x 1, got {oh} x {ow} for input size {h} x {w}, "
        f"kernel_size {shape_str(kernel_size)}, stride {shape_str(stride)}, padding {shape_str(padding)}, "
        f"dilation {shape_str(dilation)}, ceil_mode {bool(ceil_mode)}"))
    return (n, c, oh, ow)


def _check_divisor_override(op, divisor_override):
    if divisor_override is not None:
        torch._check_value(divisor_override != 0,
                           lambda: f"{op}: expected divisor_override to be non-zero or None, got 0")


def adaptive_pool2d_geometry(op, input_size, output_size):
    input_size = tuple(input_size)
    _check_pool_input(op, input_size)
    _check_pair(op, "output_size", output_size, 0)
    return (input_size[0], input_size[1], output_size[0], output_size[1])


def _check_grad_output(op, grad_output, expected):
    torch._check_value(tuple(grad_output.shape) == tuple(expected), lambda: (
        f"{op}: expected grad_output to have shape {shape_str(expected)}, got {shape_str(grad_output.shape)}"))


def _check_indices(op, grad_output, indices):
    torch._check_type(indices.dtype == torch.int64,
                      lambda: f"{op}: expected indices to have dtype int64, got {dtype_name(indices.dtype)}")
    torch._check_value(tuple(indices.shape) == tuple(grad_output.shape), lambda: (
        f"{op}: expected indices to have the shape of grad_output {shape_str(grad_output.shape)}, got {shape_str(indices.shape)}"))
    torch._check(indices.device == grad_output.device, lambda: (
        f"{op}: expected indices to be on the same device as grad_output ({grad_output.device}), got {indices.device}"))


def _pool_format(input):
    return torch.channels_last if suggest_memory_format(input) == torch.channels_last else torch.contiguous_format


_ONES = [1, 1]


@torch.library.register_fake("cnnops::max_pool2d")
def _max_pool2d_fake(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices=True):
    op = "cnnops.max_pool2d"
    shape = pool2d_geometry(op, input.shape, kernel_size, stride, padding, dilation, ceil_mode)
    check_dtype(op, input)
    fmt = _pool_format(input)
    indices = empty_like_shape(shape, input, fmt, torch.int64) if return_indices else input.new_empty((0,), dtype=torch.int64)
    return empty_like_shape(shape, input, fmt), indices


@torch.library.register_fake("cnnops::max_pool2d_backward")
def _max_pool2d_backward_fake(grad_output, indices, input_size, kernel_size, stride, padding, dilation,
                              ceil_mode, channels_last):
    op = "cnnops.max_pool2d_backward"
    shape = pool2d_geometry(op, input_size, kernel_size, stride, padding, dilation, ceil_mode)
    _check_grad_output(op, grad_output, shape)
    _check_indices(op, grad_output, indices)
    check_dtype(op, grad_output)
    return empty_like_shape(input_size, grad_output, layout_from_flag(channels_last))


@torch.library.register_fake("cnnops::avg_pool2d")
def _avg_pool2d_fake(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    op = "cnnops.avg_pool2d"
    shape = pool2d_geometry(op, input.shape, kernel_size, stride, padding, _ONES, ceil_mode)
    _check_divisor_override(op, divisor_override)
    check_dtype(op, input)
    return empty_like_shape(shape, input, _pool_format(input))


@torch.library.register_fake("cnnops::avg_pool2d_backward")
def _avg_pool2d_backward_fake(grad_output, input_size, kernel_size, stride, padding, ceil_mode,
                              count_include_pad, divisor_override, channels_last):
    op = "cnnops.avg_pool2d_backward"
    shape = pool2d_geometry(op, input_size, kernel_size, stride, padding, _ONES, ceil_mode)
    _check_divisor_override(op, divisor_override)
    _check_grad_output(op, grad_output, shape)
    check_dtype(op, grad_output)
    return empty_like_shape(input_size, grad_output, layout_from_flag(channels_last))


@torch.library.register_fake("cnnops::adaptive_avg_pool2d")
def _adaptive_avg_pool2d_fake(input, output_size):
    op = "cnnops.adaptive_avg_pool2d"
    shape = adaptive_pool2d_geometry(op, input.shape, output_size)
    check_dtype(op, input)
    return empty_like_shape(shape, input, _pool_format(input))


@torch.library.register_fake("cnnops::adaptive_max_pool2d")
def _adaptive_max_pool2d_fake(input, output_size):
    op = "cnnops.adaptive_max_pool2d"
    shape = adaptive_pool2d_geometry(op, input.shape, output_size)
    check_dtype(op, input)
    fmt = _pool_format(input)
    return empty_like_shape(shape, input, fmt), empty_like_shape(shape, input, fmt, torch.int64)


def _grad_output_hw(grad_output):
    return [grad_output.shape[2], grad_output.shape[3]] if grad_output.dim() == 4 else [0, 0]


@torch.library.register_fake("cnnops::adaptive_avg_pool2d_backward")
def _adaptive_avg_pool2d_backward_fake(grad_output, input_size, channels_last):
    op = "cnnops.adaptive_avg_pool2d_backward"
    shape = adaptive_pool2d_geometry(op, input_size, _grad_output_hw(grad_output))
    _check_grad_output(op, grad_output, shape)
    check_dtype(op, grad_output)
    return empty_like_shape(input_size, grad_output, layout_from_flag(channels_last))


@torch.library.register_fake("cnnops::adaptive_max_pool2d_backward")
def _adaptive_max_pool2d_backward_fake(grad_output, indices, input_size, channels_last):
    op = "cnnops.adaptive_max_pool2d_backward"
    shape = adaptive_pool2d_geometry(op, input_size, _grad_output_hw(grad_output))
    _check_grad_output(op, grad_output, shape)
    _check_indices(op, grad_output, indices)
    check_dtype(op, grad_output)
    return empty_like_shape(input_size, grad_output, layout_from_flag(channels_last))


# ---------------------------------------------------------------- autograd
# One setup and one backward per op, used by register_autograd on the op and by the
# family's autograd.Function classes.

def _is_channels_last(input):
    return suggest_memory_format(input) == torch.channels_last


def max_pool2d_setup(ctx, input, kernel_size, stride, padding, dilation, ceil_mode, indices):
    """indices may be None (the forward skipped them): backward then recomputes them."""
    ctx.pool_args = (kernel_size, stride, padding, dilation, ceil_mode)
    ctx.input_shape = tuple(input.shape)
    ctx.channels_last = _is_channels_last(input)
    if ctx.needs_input_grad[0]:
        ctx.save_for_backward(indices if indices is not None else input)
        ctx.has_indices = indices is not None


@gradient_ops_below_autograd
def max_pool2d_backward(ctx, grad_output):
    if not ctx.needs_input_grad[0]:
        return None
    (saved,) = ctx.saved_tensors
    indices = saved if ctx.has_indices else ops.max_pool2d(saved, *ctx.pool_args, True)[1]
    return autograd_call(ops.max_pool2d_backward, grad_output, indices, ctx.input_shape, *ctx.pool_args,
                         ctx.channels_last)


def _setup_max_pool2d(ctx, inputs, output):
    input, kernel_size, stride, padding, dilation, ceil_mode, *rest = inputs
    return_indices = rest[0] if rest else True
    ctx.mark_non_differentiable(output[1])
    max_pool2d_setup(ctx, input, kernel_size, stride, padding, dilation, ceil_mode,
                     output[1] if return_indices else None)


def _backward_max_pool2d(ctx, grad_output, grad_indices):
    return max_pool2d_backward(ctx, grad_output), None, None, None, None, None, None


def avg_pool2d_setup(ctx, input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    ctx.pool_args = (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    ctx.input_shape = tuple(input.shape)
    ctx.channels_last = _is_channels_last(input)


@gradient_ops_below_autograd
def avg_pool2d_backward(ctx, grad_output):
    if not ctx.needs_input_grad[0]:
        return None
    return autograd_call(ops.avg_pool2d_backward, grad_output, ctx.input_shape, *ctx.pool_args, ctx.channels_last)


def _setup_avg_pool2d(ctx, inputs, output):
    avg_pool2d_setup(ctx, *inputs)


def _backward_avg_pool2d(ctx, grad_output):
    return avg_pool2d_backward(ctx, grad_output), None, None, None, None, None, None


def adaptive_avg_pool2d_setup(ctx, input, output_size):
    ctx.input_shape = tuple(input.shape)
    ctx.channels_last = _is_channels_last(input)


@gradient_ops_below_autograd
def adaptive_avg_pool2d_backward(ctx, grad_output):
    if not ctx.needs_input_grad[0]:
        return None
    return autograd_call(ops.adaptive_avg_pool2d_backward, grad_output, ctx.input_shape, ctx.channels_last)


def _setup_adaptive_avg_pool2d(ctx, inputs, output):
    adaptive_avg_pool2d_setup(ctx, *inputs)


def _backward_adaptive_avg_pool2d(ctx, grad_output):
    return adaptive_avg_pool2d_backward(ctx, grad_output), None


def adaptive_max_pool2d_setup(ctx, input, output_size, indices):
    ctx.input_shape = tuple(input.shape)
    ctx.channels_last = _is_channels_last(input)
    if ctx.needs_input_grad[0]:
        ctx.save_for_backward(indices)


@gradient_ops_below_autograd
def adaptive_max_pool2d_backward(ctx, grad_output):
    if not ctx.needs_input_grad[0]:
        return None
    (indices,) = ctx.saved_tensors
    return autograd_call(ops.adaptive_max_pool2d_backward, grad_output, indices, ctx.input_shape, ctx.channels_last)


def _setup_adaptive_max_pool2d(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1])
    adaptive_max_pool2d_setup(ctx, inputs[0], inputs[1], output[1])


def _backward_adaptive_max_pool2d(ctx, grad_output, grad_indices):
    return adaptive_max_pool2d_backward(ctx, grad_output), None


# Double backward: each backward op is linear in grad_output; its derivative is the
# forward pooling of the incoming gradient (average) or a gather through the indices (max).

def gather_at_indices(grad, indices):
    """grad (N, C, H, W) read at the flat per-plane indices (N, C, OH, OW); -1 (a window of
    padding only) reads 0."""
    valid = indices >= 0
    flat = grad.reshape(grad.shape[0], grad.shape[1], -1)
    out = flat.gather(2, indices.clamp(min=0).reshape(indices.shape[0], indices.shape[1], -1))
    return out.reshape(indices.shape).where(valid, 0)


def _setup_max_pool2d_backward(ctx, inputs, output):
    grad_output, indices = inputs[0], inputs[1]
    if ctx.needs_input_grad[0]:
        ctx.save_for_backward(indices)


def _backward_max_pool2d_backward(ctx, gg):
    if not ctx.needs_input_grad[0]:
        return (None,) * 9
    (indices,) = ctx.saved_tensors
    return (gather_at_indices(gg, indices),) + (None,) * 8


def _setup_avg_pool2d_backward(ctx, inputs, output):
    ctx.pool_args = inputs[2:8]


def _backward_avg_pool2d_backward(ctx, gg):
    d = autograd_call(ops.avg_pool2d, gg, *ctx.pool_args) if ctx.needs_input_grad[0] else None
    return (d,) + (None,) * 8


def _setup_adaptive_avg_pool2d_backward(ctx, inputs, output):
    ctx.output_size = _grad_output_hw(inputs[0])


def _backward_adaptive_avg_pool2d_backward(ctx, gg):
    d = autograd_call(ops.adaptive_avg_pool2d, gg, ctx.output_size) if ctx.needs_input_grad[0] else None
    return d, None, None


def _setup_adaptive_max_pool2d_backward(ctx, inputs, output):
    if ctx.needs_input_grad[0]:
        ctx.save_for_backward(inputs[1])


def _backward_adaptive_max_pool2d_backward(ctx, gg):
    if not ctx.needs_input_grad[0]:
        return None, None, None, None
    (indices,) = ctx.saved_tensors
    return gather_at_indices(gg, indices), None, None, None


# Forward mode (torch.func's forward-over-reverse): average pooling and every backward op
# are linear in their first input; max pooling is a gather through its indices.

def _jvp_max_pooling(inputs, output, tangents):
    """max_pool2d's and adaptive_max_pool2d's: the input's tangent read at the indices."""
    values, indices = output
    if tangents[0] is None:
        return torch.zeros_like(values), None
    if len(inputs) > 6 and not inputs[6]:  # max_pool2d whose forward skipped the indices
        indices = ops.max_pool2d(inputs[0], *inputs[1:6], True)[1]
    return gather_at_indices(tangents[0], indices), None


MaxPool2dEager = register_autograd("cnnops::max_pool2d", _backward_max_pool2d, _setup_max_pool2d, _jvp_max_pooling)
AvgPool2dEager = register_autograd("cnnops::avg_pool2d", _backward_avg_pool2d, _setup_avg_pool2d,
                                   linear_jvp(ops.avg_pool2d))
AdaptiveAvgPool2dEager = register_autograd("cnnops::adaptive_avg_pool2d", _backward_adaptive_avg_pool2d,
                                           _setup_adaptive_avg_pool2d, linear_jvp(ops.adaptive_avg_pool2d))
AdaptiveMaxPool2dEager = register_autograd("cnnops::adaptive_max_pool2d", _backward_adaptive_max_pool2d,
                                           _setup_adaptive_max_pool2d, _jvp_max_pooling)
register_autograd("cnnops::max_pool2d_backward", _backward_max_pool2d_backward, _setup_max_pool2d_backward,
                  linear_jvp(ops.max_pool2d_backward))
register_autograd("cnnops::avg_pool2d_backward", _backward_avg_pool2d_backward, _setup_avg_pool2d_backward,
                  linear_jvp(ops.avg_pool2d_backward))
register_autograd("cnnops::adaptive_avg_pool2d_backward", _backward_adaptive_avg_pool2d_backward,
                  _setup_adaptive_avg_pool2d_backward, linear_jvp(ops.adaptive_avg_pool2d_backward))
register_autograd("cnnops::adaptive_max_pool2d_backward", _backward_adaptive_max_pool2d_backward,
                  _setup_adaptive_max_pool2d_backward, linear_jvp(ops.adaptive_max_pool2d_backward))


# ---------------------------------------------------------------- autograd.Function classes
# For .apply users: 4-D input, the same arguments as cnnops.functional (ints or pairs).

class MaxPool2dFunction(torch.autograd.Function):
    """max_pool2d as a torch.autograd.Function. Returns the output, or (output, indices)
    with return_indices=True."""

    @staticmethod
    def forward(ctx, input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
        args = normalize_pool_args("cnnops.max_pool2d", kernel_size, stride, padding, dilation)
        output, indices = forward_below_autograd(ops.max_pool2d, input, *args, ceil_mode, True)
        max_pool2d_setup(ctx, input, *args, ceil_mode, indices)
        if return_indices:
            ctx.mark_non_differentiable(indices)
            return output, indices
        return output

    @staticmethod
    def backward(ctx, grad_output, *grad_indices):
        return max_pool2d_backward(ctx, grad_output), None, None, None, None, None, None


class AvgPool2dFunction(torch.autograd.Function):
    """avg_pool2d as a torch.autograd.Function."""

    @staticmethod
    def forward(ctx, input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                divisor_override=None):
        kernel_size, stride, padding, _ = normalize_pool_args("cnnops.avg_pool2d", kernel_size, stride, padding)
        args = (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
        avg_pool2d_setup(ctx, input, *args)
        return forward_below_autograd(ops.avg_pool2d, input, *args)

    @staticmethod
    def backward(ctx, grad_output):
        return avg_pool2d_backward(ctx, grad_output), None, None, None, None, None, None


class AdaptiveAvgPool2dFunction(torch.autograd.Function):
    """adaptive_avg_pool2d as a torch.autograd.Function."""

    @staticmethod
    def forward(ctx, input, output_size):
        output_size = normalize_output_size("cnnops.adaptive_avg_pool2d", output_size, input.shape)
        adaptive_avg_pool2d_setup(ctx, input, output_size)
        return forward_below_autograd(ops.adaptive_avg_pool2d, input, output_size)

    @staticmethod
    def backward(ctx, grad_output):
        return adaptive_avg_pool2d_backward(ctx, grad_output), None


class AdaptiveMaxPool2dFunction(torch.autograd.Function):
    """adaptive_max_pool2d as a torch.autograd.Function. Returns the output, or
    (output, indices) with return_indices=True."""

    @staticmethod
    def forward(ctx, input, output_size, return_indices=False):
        output_size = normalize_output_size("cnnops.adaptive_max_pool2d", output_size, input.shape)
        output, indices = forward_below_autograd(ops.adaptive_max_pool2d, input, output_size)
        adaptive_max_pool2d_setup(ctx, input, output_size, indices)
        if return_indices:
            ctx.mark_non_differentiable(indices)
            return output, indices
        return output

    @staticmethod
    def backward(ctx, grad_output, *grad_indices):
        return adaptive_max_pool2d_backward(ctx, grad_output), None, None
