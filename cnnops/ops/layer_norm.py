"""layer_norm family, Python side: fake kernels (same checks and messages, in the same
order, as csrc/common/layer_norm_checks.h), autograd for the forward ops and for the
backward ops (double backward, as a composite of torch ops), and LayerNormFunction /
LayerNorm2dFunction for .apply users. Op schemas are in csrc/layer_norm.cpp."""
import torch

from cnnops.ops._common import (check_dtype, dtype_name, forward_below_autograd, gradient_ops_below_autograd,
                               normalization_double_backward, register_autograd, shape_str)

ops = torch.ops.cnnops
_REDUCED = (torch.float16, torch.bfloat16)


# ---------------------------------------------------------------- checks (fake kernels)

def stat_dtype(dtype):
    """mean and rstd are float32, or float64 for float64 input."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_param(op, input, p, name, expected, what):
    reduced = input.dtype in _REDUCED
    torch._check_type(p.dtype == input.dtype or (reduced and p.dtype == torch.float32), lambda: (
        f"{op}: expected {name} to have the same dtype as input ({dtype_name(input.dtype)})"
        f"{' or float32' if reduced else ''}, got {dtype_name(p.dtype)}"))
    torch._check(p.device == input.device, lambda: (
        f"{op}: expected {name} to be on the same device as input ({input.device}), got {p.device}"))
    torch._check_value(tuple(p.shape) == tuple(expected), lambda: (
        f"{op}: expected {name} to have shape {shape_str(expected)} ({what}), got shape {shape_str(p.shape)}"))


def _check_params(op, input, weight, bias, expected, what):
    if weight is not None:
        _check_param(op, input, weight, "weight", expected, what)
    if bias is not None:
        _check_param(op, input, bias, "bias", expected, what)
    if weight is not None and bias is not None:
        torch._check_type(bias.dtype == weight.dtype, lambda: (
            f"{op}: expected bias to have the same dtype as weight ({dtype_name(weight.dtype)}), got {dtype_name(bias.dtype)}"))


def _check_shape(op, input, normalized_shape):
    """Mirror of check_layer_norm_shape(); returns the number of rows."""
    nd = len(normalized_shape)
    torch._check_value(nd >= 1, lambda: f"{op}: expected normalized_shape to have at least one dimension, got ()")
    dim = input.dim()
    torch._check_value(dim >= nd and tuple(input.shape[dim - nd:]) == tuple(normalized_shape), lambda: (
        f"{op}: expected the trailing dimensions of input to equal normalized_shape {shape_str(normalized_shape)}, "
        f"got input shape {shape_str(input.shape)}"))
    rows = 1
    for s in input.shape[:dim - nd]:
        rows = rows * s
    return rows


def _check_shape2d(op, input):
    torch._check_value(input.dim() == 4, lambda: (
        f"{op}: expected input to be a 4-D tensor (N, C, H, W), got shape {shape_str(input.shape)}"))


def _check_stat(op, input, s, name, rows):
    want = stat_dtype(input.dtype)
    torch._check_type(s.dtype == want, lambda: f"{op}: expected {name} to have dtype {dtype_name(want)}, got {dtype_name(s.dtype)}")
    torch._check(s.device == input.device, lambda: (
        f"{op}: expected {name} to be on the same device as input ({input.device}), got {s.device}"))
    torch._check_value(s.numel() == rows, lambda: (
        f"{op}: expected {name} to have {rows} elements (one per normalized row), got shape {shape_str(s.shape)}"))


def _check_grad_out(op, input, grad_out):
    torch._check_type(grad_out.dtype == input.dtype, lambda: (
        f"{op}: expected grad_out to have the same dtype as input ({dtype_name(input.dtype)}), got {dtype_name(grad_out.dtype)}"))
    torch._check(grad_out.device == input.device, lambda: (
        f"{op}: expected grad_out to be on the same device as input ({input.device}), got {grad_out.device}"))
    torch._check_value(tuple(grad_out.shape) == tuple(input.shape), lambda: (
        f"{op}: expected grad_out to have the same shape as input {shape_str(input.shape)}, got {shape_str(grad_out.shape)}"))


def layer_norm2d_format(input):
    """Mirror of layer_norm2d_format(): channels_last memory is worked on (and produced)
    as is; anything else as NCHW."""
    if input.is_contiguous(memory_format=torch.channels_last) and not input.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _stat_shape(input, nd):
    return tuple(input.shape[:input.dim() - nd]) + (1,) * nd


def _param_grad(mask, input, param, shape):
    if not mask:
        return input.new_empty((0,))
    return input.new_empty(tuple(shape), dtype=param.dtype if param is not None else input.dtype)


@torch.library.register_fake("cnnops::layer_norm")
def _layer_norm_fake(input, normalized_shape, weight, bias, eps):
    op = "cnnops.layer_norm"
    check_dtype(op, input)
    _check_shape(op, input, normalized_shape)
    _check_params(op, input, weight, bias, normalized_shape, "normalized_shape")
    sd = stat_dtype(input.dtype)
    shape = _stat_shape(input, len(normalized_shape))
    return (input.new_empty(input.shape), input.new_empty(shape, dtype=sd), input.new_empty(shape, dtype=sd))


@torch.library.register_fake("cnnops::layer_norm_backward")
def _layer_norm_backward_fake(grad_out, input, normalized_shape, mean, rstd, weight, bias, output_mask):
    op = "cnnops.layer_norm_backward"
    check_dtype(op, input)
    rows = _check_shape(op, input, normalized_shape)
    _check_grad_out(op, input, grad_out)
    _check_stat(op, input, mean, "mean", rows)
    _check_stat(op, input, rstd, "rstd", rows)
    _check_params(op, input, weight, bias, normalized_shape, "normalized_shape")
    grad_input = input.new_empty(input.shape) if output_mask[0] else input.new_empty((0,))
    return (grad_input, _param_grad(output_mask[1], input, weight, normalized_shape),
            _param_grad(output_mask[2], input, bias, normalized_shape))


@torch.library.register_fake("cnnops::layer_norm2d")
def _layer_norm2d_fake(input, weight, bias, eps):
    op = "cnnops.layer_norm2d"
    check_dtype(op, input)
    _check_shape2d(op, input)
    n, c, h, w = input.shape
    _check_params(op, input, weight, bias, (c,), "num_channels")
    sd = stat_dtype(input.dtype)
    out = torch.empty(input.shape, dtype=input.dtype, device=input.device, memory_format=layer_norm2d_format(input))
    return out, input.new_empty((n, 1, h, w), dtype=sd), input.new_empty((n, 1, h, w), dtype=sd)


@torch.library.register_fake("cnnops::layer_norm2d_backward")
def _layer_norm2d_backward_fake(grad_out, input, mean, rstd, weight, bias, output_mask):
    op = "cnnops.layer_norm2d_backward"
    check_dtype(op, input)
    _check_shape2d(op, input)
    _check_grad_out(op, input, grad_out)
    n, c, h, w = input.shape
    _check_stat(op, input, mean, "mean", n * h * w)
    _check_stat(op, input, rstd, "rstd", n * h * w)
    _check_params(op, input, weight, bias, (c,), "num_channels")
    if output_mask[0]:
        grad_input = torch.empty(input.shape, dtype=input.dtype, device=input.device,
                                 memory_format=layer_norm2d_format(input))
    else:
        grad_input = input.new_empty((0,))
    return grad_input, _param_grad(output_mask[1], input, weight, (c,)), _param_grad(output_mask[2], input, bias, (c,))


# ---------------------------------------------------------------- autograd
# One setup and one backward per op, used by register_autograd on the op and by the
# family's autograd.Function. mean and rstd are not differentiable outputs (as in torch).

def layer_norm_setup(ctx, input, normalized_shape, weight, bias, mean, rstd):
    """needs_input_grad is indexed like the op: (input, normalized_shape, weight, bias, eps)."""
    need = ctx.needs_input_grad
    ctx.normalized_shape = list(normalized_shape)
    ctx.mask = [bool(need[0]), weight is not None and bool(need[2]), bias is not None and bool(need[3])]
    if any(ctx.mask):  # weight: for dx, and for the dtype of its gradient
        ctx.save_for_backward(input, mean, rstd, weight, bias if ctx.mask[2] else None)


@gradient_ops_below_autograd
def layer_norm_backward(ctx, grad_out):
    """(grad_input, grad_weight, grad_bias), each None unless needed."""
    if not any(ctx.mask):
        return None, None, None
    input, mean, rstd, weight, bias = ctx.saved_tensors
    gi, gw, gb = ops.layer_norm_backward(grad_out, input, ctx.normalized_shape, mean, rstd, weight, bias, ctx.mask)
    return (gi if ctx.mask[0] else None, gw if ctx.mask[1] else None, gb if ctx.mask[2] else None)


def layer_norm2d_setup(ctx, input, weight, bias, mean, rstd):
    """needs_input_grad is indexed like the op: (input, weight, bias, eps)."""
    need = ctx.needs_input_grad
    ctx.mask = [bool(need[0]), weight is not None and bool(need[1]), bias is not None and bool(need[2])]
    if any(ctx.mask):
        ctx.save_for_backward(input, mean, rstd, weight, bias if ctx.mask[2] else None)


@gradient_ops_below_autograd
def layer_norm2d_backward(ctx, grad_out):
    if not any(ctx.mask):
        return None, None, None
    input, mean, rstd, weight, bias = ctx.saved_tensors
    gi, gw, gb = ops.layer_norm2d_backward(grad_out, input, mean, rstd, weight, bias, ctx.mask)
    return (gi if ctx.mask[0] else None, gw if ctx.mask[1] else None, gb if ctx.mask[2] else None)


def _setup_layer_norm(ctx, inputs, output):
    input, normalized_shape, weight, bias, eps = inputs
    ctx.mark_non_differentiable(output[1], output[2])
    layer_norm_setup(ctx, input, normalized_shape, weight, bias, output[1], output[2])


def _backward_layer_norm(ctx, grad_out, grad_mean, grad_rstd):
    gi, gw, gb = layer_norm_backward(ctx, grad_out)
    return gi, None, gw, gb, None


def _setup_layer_norm2d(ctx, inputs, output):
    input, weight, bias, eps = inputs
    ctx.mark_non_differentiable(output[1], output[2])
    layer_norm2d_setup(ctx, input, weight, bias, output[1], output[2])


def _backward_layer_norm2d(ctx, grad_out, grad_mean, grad_rstd):
    return (*layer_norm2d_backward(ctx, grad_out), None)


# ---------------------------------------------------------------- double backward
# The backward ops are differentiated by normalization_double_backward (ops/_common.py), a
# composite of torch ops (so it is itself differentiable), over the normalized dims.

def _setup_ln_backward(ctx, inputs, output):
    grad_out, input, normalized_shape, mean, rstd, weight, bias, output_mask = inputs
    ctx.normalized_shape = list(normalized_shape)
    ctx.output_mask = list(output_mask)
    ctx.weight_dtype = weight.dtype if weight is not None else None
    ctx.save_for_backward(grad_out, input, mean, rstd, weight)


def _grads_used(ctx, ggx, ggw, ggb):
    mask = ctx.output_mask
    return (ggx if mask[0] else None, ggw if mask[1] else None, ggb if mask[2] else None)


def _backward_ln_backward(ctx, ggx, ggw, ggb):
    grad_out, input, mean, rstd, weight = ctx.saved_tensors
    ggx, ggw, ggb = _grads_used(ctx, ggx, ggw, ggb)
    nd = len(ctx.normalized_shape)
    red = tuple(range(input.dim() - nd, input.dim()))
    need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], weight is not None and ctx.needs_input_grad[5])
    d_dy, d_x, d_w = normalization_double_backward(grad_out, input, mean, rstd, weight, ggx, ggw, ggb, red,
                                      tuple(range(input.dim() - nd)), need)
    return (None if d_dy is None else d_dy.to(grad_out.dtype), None if d_x is None else d_x.to(input.dtype),
            None, None, None, None if d_w is None else d_w.to(weight.dtype), None, None)


def _setup_ln2d_backward(ctx, inputs, output):
    grad_out, input, mean, rstd, weight, bias, output_mask = inputs
    ctx.output_mask = list(output_mask)
    ctx.save_for_backward(grad_out, input, mean, rstd, weight)


def _backward_ln2d_backward(ctx, ggx, ggw, ggb):
    grad_out, input, mean, rstd, weight = ctx.saved_tensors
    ggx, ggw, ggb = _grads_used(ctx, ggx, ggw, ggb)

    def chan(t):
        return None if t is None else t.view(1, -1, 1, 1)

    need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], weight is not None and ctx.needs_input_grad[4])
    d_dy, d_x, d_w = normalization_double_backward(grad_out, input, mean, rstd, chan(weight), ggx, chan(ggw), chan(ggb),
                                      (1,), (0, 2, 3), need)
    return (None if d_dy is None else d_dy.to(grad_out.dtype), None if d_x is None else d_x.to(input.dtype),
            None, None, None if d_w is None else d_w.to(weight.dtype), None, None)


LayerNormEager = register_autograd("cnnops::layer_norm", _backward_layer_norm, _setup_layer_norm)
LayerNorm2dEager = register_autograd("cnnops::layer_norm2d", _backward_layer_norm2d, _setup_layer_norm2d)
torch.library.register_autograd("cnnops::layer_norm_backward", _backward_ln_backward, setup_context=_setup_ln_backward)
torch.library.register_autograd("cnnops::layer_norm2d_backward", _backward_ln2d_backward, setup_context=_setup_ln2d_backward)


def normalize_shape_arg(normalized_shape):
    """An int or a sequence of ints as a list."""
    if isinstance(normalized_shape, (int, torch.SymInt)) and not isinstance(normalized_shape, bool):
        return [normalized_shape]
    return list(normalized_shape)


class LayerNormFunction(torch.autograd.Function):
    """layer_norm as a torch.autograd.Function, for .apply users:
    LayerNormFunction.apply(input, normalized_shape, weight=None, bias=None, eps=1e-5)."""

    @staticmethod
    def forward(ctx, input, normalized_shape, weight=None, bias=None, eps=1e-5):
        normalized_shape = normalize_shape_arg(normalized_shape)
        out, mean, rstd = forward_below_autograd(ops.layer_norm, input, normalized_shape, weight, bias, eps)
        layer_norm_setup(ctx, input, normalized_shape, weight, bias, mean, rstd)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        gi, gw, gb = layer_norm_backward(ctx, grad_out)
        return gi, None, gw, gb, None


class LayerNorm2dFunction(torch.autograd.Function):
    """layer_norm2d as a torch.autograd.Function: LayerNorm2dFunction.apply(input, weight=None,
    bias=None, eps=1e-6), normalizing an (N, C, H, W) tensor over C."""

    @staticmethod
    def forward(ctx, input, weight=None, bias=None, eps=1e-6):
        out, mean, rstd = forward_below_autograd(ops.layer_norm2d, input, weight, bias, eps)
        layer_norm2d_setup(ctx, input, weight, bias, mean, rstd)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        return (*layer_norm2d_backward(ctx, grad_out), None)
