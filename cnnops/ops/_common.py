"""Helpers shared by the op families' Python code."""
import functools
import operator

import torch
import torch.autograd.forward_ad as _fwad
from torch._prims_common import suggest_memory_format

_CUDA_BUILT = None

SUPPORTED_DTYPES = {
    "cpu": (torch.float32, torch.float64, torch.bfloat16),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}


def dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def cuda_built():
    global _CUDA_BUILT
    if _CUDA_BUILT is None:
        _CUDA_BUILT = bool(torch.ops.cnnops._build_has_cuda())
    return _CUDA_BUILT


def check_tensor(op, name, value, optional=False):
    """TypeError naming the argument where value is not a tensor (nor None, if optional)."""
    if isinstance(value, torch.Tensor) or (optional and value is None):
        return
    raise TypeError(f"{op}: expected {name} to be a Tensor{' or None' if optional else ''}, "
                    f"got {type(value).__name__}")


def check_device(op, t):
    """NotImplementedError for devices without a kernel (MPS, or CUDA in a CPU-only build).
    The meta device runs the fake kernels: shapes, dtypes and checks without data. t is
    the functional's input: a TypeError where it is not a tensor."""
    check_tensor(op, "input", t)
    # Eagerly the is_* attributes, cheaper than building t.device; a compiler would record them.
    if not torch.compiler.is_compiling():
        if t.is_cpu or t.is_meta or (t.is_cuda and cuda_built()):
            return
    elif t.device.type in ("cpu", "meta") or (t.device.type == "cuda" and cuda_built()):
        return
    supported = "cpu, cuda" if cuda_built() else "cpu (this build has no CUDA kernels; rebuild with CNNOPS_WITH_CUDA=1)"
    raise NotImplementedError(
        f"{op}: device {t.device} with dtype {dtype_name(t.dtype)} is not supported; supported devices: {supported}")


def check_dtype(op, t):
    """The fake-kernel twin of the C++ check_dtype_supported()."""
    supported = SUPPORTED_DTYPES.get(t.device.type, SUPPORTED_DTYPES["cuda"])
    if t.dtype not in supported:
        raise NotImplementedError(
            f"{op}: dtype {dtype_name(t.dtype)} on device {t.device} is not supported; supported: "
            + ", ".join(dtype_name(d) for d in supported))


def shape_str(sizes):
    return str(tuple(sizes))


def conv_memory_format(input, weight):
    """Convolutions produce channels_last when the input or the weight is channels_last."""
    if suggest_memory_format(input) == torch.channels_last or suggest_memory_format(weight) == torch.channels_last:
        return torch.channels_last
    return torch.contiguous_format


def layout_from_flag(channels_last):
    """The memory format a backward op's channels_last flag asks for."""
    return torch.channels_last if channels_last else torch.contiguous_format


def empty_like_shape(shape, like, memory_format, dtype=None):
    """An empty tensor of `shape` on like's device, in like's dtype unless given (fake kernels)."""
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device, memory_format=memory_format)


_any_autocast = getattr(torch._C, "_is_any_autocast_enabled", lambda: True)


def autocast_dtype(t):
    """The autocast dtype for tensor t's device, or None when autocast is off there."""
    if not _any_autocast():  # the common case, without building t.device
        return None
    device_type = t.device.type
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def autocast_cast(t, dtype):
    """Torch's autocast rule: floating tensors other than float64 go to the autocast dtype."""
    if t is not None and t.is_floating_point() and t.dtype != torch.float64 and t.dtype != dtype:
        return t.to(dtype)
    return t


def _int(v, name, op):
    if isinstance(v, (int, torch.SymInt)) and not isinstance(v, bool):
        return v
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"{op}: expected {name} to contain ints, got {v!r}") from None


def pair(value, name, op):
    """An int or a sequence of 1 or 2 ints as a list of two ints."""
    if isinstance(value, (list, tuple)):
        if len(value) in (1, 2):
            return [_int(v, name, op) for v in (value[0], value[-1])]
        raise ValueError(f"{op}: expected {name} to be an int or a pair of ints, got {tuple(value)}")
    if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
        try:  # numpy integers and integer 0-d tensors, which torch accepts too
            value = operator.index(value)
        except TypeError:
            raise TypeError(f"{op}: expected {name} to be an int or a pair of ints, got {value!r}") from None
    return [value, value]


def register_conv_autograd(family, one_channels_last_grad_output=False):
    """Autograd of the convolution op `family`(input, weight, bias, *args) (conv2d,
    depthwise_conv2d, conv_transpose2d): its setup_context and backward, registered on the
    op and returned as (setup, backward) for the family's public autograd.Function, with
    the double backward of its gradient ops (register_conv_gradient_autograd). The backward
    calls `family`_grad_input, `family`_grad_weight and conv2d_grad_bias (the channel sum
    every convolution shares); csrc/conv_eager_autograd.cpp is its C++ twin, which the
    functionals use eagerly.
    setup(ctx, input, weight, bias, *args); backward(ctx, grad_output) returns the
    gradients of (input, weight, bias) and a None for each of *args.
    one_channels_last_grad_output: on the CPU, when both gradients are wanted for a
    channels_last forward, copy a grad_output of another layout to channels_last once
    (the depthwise CPU kernels need a unit channel stride and would each copy it)."""
    ops = torch.ops.cnnops
    grad_input_op = getattr(ops, f"{family}_grad_input")
    grad_weight_op = getattr(ops, f"{family}_grad_weight")

    def setup(ctx, input, weight, bias, *args):
        ctx.conv_args = args
        # Gradients take the forward's layout, as torch's do (and AccumulateGrad then needs no copy).
        ctx.channels_last = conv_memory_format(input, weight) == torch.channels_last
        ctx.input_shape = tuple(input.shape)
        ctx.weight_shape = tuple(weight.shape)
        ctx.has_bias = bias is not None
        need_input, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ctx.save_for_backward(input if need_weight else None, weight if need_input else None)

    @gradient_ops_below_autograd
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        args = ctx.conv_args
        grad_input = grad_weight = grad_bias = None
        if (one_channels_last_grad_output and ctx.channels_last and grad_output.device.type == "cpu"
                and ctx.needs_input_grad[0] and ctx.needs_input_grad[1] and grad_output.dim() == 4
                and not is_batched(grad_output) and not grad_output.is_contiguous(memory_format=torch.channels_last)):
            grad_output = grad_output.contiguous(memory_format=torch.channels_last)
        if ctx.needs_input_grad[0]:
            grad_input = autograd_call(grad_input_op, grad_output, weight, ctx.input_shape, *args, ctx.channels_last)
        if ctx.needs_input_grad[1]:
            grad_weight = autograd_call(grad_weight_op, grad_output, input, ctx.weight_shape, *args,
                                        ctx.channels_last)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = autograd_call(ops.conv2d_grad_bias, grad_output)
        return (grad_input, grad_weight, grad_bias) + (None,) * len(args)

    register_autograd(f"cnnops::{family}", backward, lambda ctx, inputs, output: setup(ctx, *inputs),
                      bilinear_jvp(getattr(ops, family), with_bias=True))
    register_conv_gradient_autograd(family)  # double backward: the gradient ops are bilinear
    return setup, backward


def register_conv_gradient_autograd(family):
    """Autograd of `family`_grad_input(gO, w, input_size, *args, channels_last) and
    `family`_grad_weight(gO, x, weight_size, *args, channels_last), for the convolution
    families (conv2d, depthwise_conv2d, conv_transpose2d). Both are bilinear, so their
    derivatives are the family's forward and its other gradient op: double backward is exact
    for every padding mode. *args is the forward's arguments after bias, in schema order."""
    ops = torch.ops.cnnops
    forward = getattr(ops, family)
    grad_input = getattr(ops, f"{family}_grad_input")
    grad_weight = getattr(ops, f"{family}_grad_weight")

    def setup_grad_input(ctx, inputs, output):
        grad_output, weight, input_size, *args, channels_last = inputs
        ctx.args, ctx.channels_last, ctx.n_inputs = args, channels_last, len(inputs)
        ctx.weight_shape = tuple(weight.shape)
        ctx.save_for_backward(grad_output if ctx.needs_input_grad[1] else None,
                              weight if ctx.needs_input_grad[0] else None)

    def backward_grad_input(ctx, gg):
        grad_output, weight = ctx.saved_tensors
        d_grad_output = d_weight = None
        if ctx.needs_input_grad[0]:
            d_grad_output = autograd_call(forward, gg, weight, None, *ctx.args)
        if ctx.needs_input_grad[1]:
            d_weight = autograd_call(grad_weight, grad_output, gg, ctx.weight_shape, *ctx.args, ctx.channels_last)
        return (d_grad_output, d_weight) + (None,) * (ctx.n_inputs - 2)

    def setup_grad_weight(ctx, inputs, output):
        grad_output, input, weight_size, *args, channels_last = inputs
        ctx.args, ctx.channels_last, ctx.n_inputs = args, channels_last, len(inputs)
        ctx.input_shape = tuple(input.shape)
        ctx.save_for_backward(grad_output if ctx.needs_input_grad[1] else None,
                              input if ctx.needs_input_grad[0] else None)

    def backward_grad_weight(ctx, gg):
        grad_output, input = ctx.saved_tensors
        d_grad_output = d_input = None
        if ctx.needs_input_grad[0]:
            d_grad_output = autograd_call(forward, input, gg, None, *ctx.args)
        if ctx.needs_input_grad[1]:
            d_input = autograd_call(grad_input, grad_output, gg, ctx.input_shape, *ctx.args, ctx.channels_last)
        return (d_grad_output, d_input) + (None,) * (ctx.n_inputs - 2)

    register_autograd(f"cnnops::{family}_grad_input", backward_grad_input, setup_grad_input,
                      bilinear_jvp(grad_input))
    register_autograd(f"cnnops::{family}_grad_weight", backward_grad_weight, setup_grad_weight,
                      bilinear_jvp(grad_weight))


def gradient_ops_below_autograd(backward):
    """Decorator for a backward that calls gradient ops: unless grad mode is on (a graph for
    double backward is being recorded) or a compiler traces, they are called below the
    Autograd key, skipping the Python wrapper register_autograd gives each (about 10 us per
    call, which launch-bound CUDA shapes pay in full)."""
    @functools.wraps(backward)
    def wrapper(*args):
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return backward(*args)
        with torch._C._AutoDispatchBelowAutograd():
            return backward(*args)
    return wrapper


def forward_below_autograd(op, *args):
    """op(*args) for an autograd.Function's forward: below the Autograd key (grad mode is off
    there, and torch.library's autograd wrapper would only add its Python layers, about 10 us
    a call); the op itself when a compiler traces the Function."""
    if torch.compiler.is_compiling():
        return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op.default(*args)


# Every register_autograd op's autograd.Function for torch.func transforms, by qualified
# name, for autograd_call.
_TRANSFORMABLE = {}
_functorch = getattr(torch._C, "_functorch", None)
_peek_functorch = getattr(_functorch, "peek_interpreter_stack", lambda: None)
_is_batched = getattr(_functorch, "is_batchedtensor", lambda t: False)
_is_legacy_batched = getattr(_functorch, "is_legacy_batchedtensor", lambda t: False)


def is_batched(t):
    """t is a tensor of vmap: torch.func's, or the older one of is_grads_batched backwards.
    Its layout cannot be asked for (is_contiguous(memory_format=...) raises)."""
    return _is_batched(t) or _is_legacy_batched(t)


def register_autograd(qualname, backward, setup_context, jvp=None):
    """torch.library.register_autograd(qualname, backward, setup_context=setup_context), and
    returned, a torch.autograd.Function with the same setup_context and backward that calls
    the op below the Autograd key. It skips the Python layers of torch.library's autograd
    wrapper (about 25 us a call, which launch-bound CUDA shapes pay in full); the
    functionals use it in plain eager mode, and the op itself under a compiler
    (functional.py _with_autograd).
    A second Function with the same two, in the form torch.func's transforms accept (a
    forward without ctx, setup_context, a generated vmap rule), serves under those
    (autograd_call), and under forward AD: torch.library's wrapper refuses torch.func's grad
    transforms and has no jvp. The eager one keeps the old form, which costs about 30 us
    less a forward+backward.
    jvp(inputs, output, tangents) -> the output's tangent(s) gives the transformable one
    forward mode: forward AD, and forward mode over reverse mode (torch.func.hessian, jvp of
    grad, torch.autograd.functional's forward-mode Hessian), where the backward's gradient
    ops meet the tangents."""
    torch.library.register_autograd(qualname, backward, setup_context=setup_context)
    namespace, name = qualname.split("::")
    op = getattr(getattr(torch.ops, namespace), name)
    title = "".join(part.capitalize() for part in name.split("_"))

    def forward(ctx, *args):
        output = forward_below_autograd(op, *args)
        setup_context(ctx, args, output)
        return output

    def transformable_forward(*args):
        return forward_below_autograd(op, *_unwrap(args))

    def transformable_setup(ctx, inputs, output):
        setup_context(ctx, _unwrap(inputs), output)

    methods = {"forward": staticmethod(transformable_forward), "setup_context": staticmethod(transformable_setup),
               "backward": staticmethod(backward), "generate_vmap_rule": True,
               "__doc__": f"{qualname} under torch.func transforms."}
    if jvp is not None:
        methods.update(_forward_mode(setup_context, backward, jvp))
    _TRANSFORMABLE[qualname] = type(title + "Transformable", (torch.autograd.Function,), methods)
    return type(title + "Eager", (torch.autograd.Function,), {
        "forward": staticmethod(forward), "backward": staticmethod(backward), "__doc__": f"{qualname}, eagerly."})


class _BackwardsShare:
    """ctx as a transformable Function's setup_context and backward see it when the Function
    also has a jvp. torch's generated vmap rule keeps one list of saved tensors (and their
    vmap dims) for both backward and jvp, so both must save the same list: the setup's own
    save_for_backward is held back here, and the list saved is that followed by the primals
    the jvp reads; the backward sees only its own part (saved_tensors)."""
    __slots__ = ("_ctx", "held")

    def __init__(self, ctx):
        object.__setattr__(self, "_ctx", ctx)
        object.__setattr__(self, "held", ())

    def __getattr__(self, name):
        return getattr(self._ctx, name)

    def __setattr__(self, name, value):
        setattr(self._ctx, name, value)

    def save_for_backward(self, *tensors):
        object.__setattr__(self, "held", tensors)

    @property
    def saved_tensors(self):
        return self._ctx.saved_tensors[:self._ctx.backward_saved]


def _forward_mode(setup_context, backward, jvp):
    """setup_context, backward and jvp methods for a transformable Function with a jvp: the
    jvp gets the primal inputs and outputs (saved after the backward's tensors, in the one
    list both read: _BackwardsShare)."""
    def setup_with_primals(ctx, inputs, output):
        inputs = _unwrap(inputs)
        shared = _BackwardsShare(ctx)
        setup_context(shared, inputs, output)
        outputs = output if isinstance(output, tuple) else (output,)
        ctx.backward_saved = len(shared.held)
        ctx.jvp_inputs = tuple(None if isinstance(a, torch.Tensor) else a for a in inputs)
        ctx.jvp_tensor_at = tuple(i for i, a in enumerate(inputs) if isinstance(a, torch.Tensor))
        saved = (*shared.held, *(inputs[i] for i in ctx.jvp_tensor_at), *outputs)
        ctx.save_for_backward(*saved)
        ctx.save_for_forward(*saved)

    def shared_backward(ctx, *grads):
        return backward(_BackwardsShare(ctx), *grads)

    def function_jvp(ctx, *tangents):
        saved = ctx.saved_tensors[ctx.backward_saved:]
        inputs = list(ctx.jvp_inputs)
        for i, t in zip(ctx.jvp_tensor_at, saved):
            inputs[i] = t
        outputs = saved[len(ctx.jvp_tensor_at):]
        return jvp(tuple(inputs), outputs if len(outputs) > 1 else outputs[0], tangents)

    return {"setup_context": staticmethod(setup_with_primals), "backward": staticmethod(shared_backward),
            "jvp": staticmethod(function_jvp)}


def bilinear_tangent(fn, x, x_tangent, weight, weight_tangent, bias_tangent, like):
    """The forward-mode tangent of fn(x, weight) + a channel bias, fn bilinear (a convolution
    without its bias, or a convolution's gradient op): fn(x_tangent, weight) +
    fn(x, weight_tangent) + bias_tangent over (N, ., H, W). A None tangent drops its term;
    zeros like `like` (the primal output) remain where all are None."""
    total = torch.zeros_like(like)
    if bias_tangent is not None:
        total = total + bias_tangent.reshape(1, -1, 1, 1)
    if x_tangent is not None:
        total = total + fn(x_tangent, weight)
    if weight_tangent is not None:
        total = total + fn(x, weight_tangent)
    return total


def bilinear_jvp(op, with_bias=False):
    """The register_autograd jvp of op(a, b, *rest), bilinear in (a, b): a convolution
    (with_bias: rest[0] is its channel bias, whose tangent adds once) or one of its
    gradient ops."""
    def jvp(inputs, output, tangents):
        a, b, *rest = inputs
        bias_tangent = None
        if with_bias:
            rest[0], bias_tangent = None, tangents[2]
        return bilinear_tangent(lambda x, w: autograd_call(op, x, w, *rest), a, tangents[0], b, tangents[1],
                                bias_tangent, output)
    return jvp


def linear_jvp(op):
    """The register_autograd jvp of op(a, *rest), linear in a (average pooling, every
    pooling gradient, the bias gradient): op on a's tangent."""
    def jvp(inputs, output, tangents):
        if tangents[0] is None:
            return torch.zeros_like(output)
        return autograd_call(op, tangents[0], *inputs[1:])
    return jvp


class _Leaf:
    """A list argument (stride, padding, a size) handed to a transformable Function as one
    pytree leaf: the vmap rule torch generates pairs its jvp's tangents (one per argument)
    with the arguments' flattened leaves, which a list would split."""
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


def _unwrap(args):
    return tuple(a.value if isinstance(a, _Leaf) else a for a in args)


def autograd_call(op, *args):
    """op(*args) where autograd may record it. Under a torch.func transform with grad mode on
    (torch.func.grad and the like, or a backward recording a graph inside one), and under
    forward AD (a backward whose tensors carry tangents: torch.autograd.functional's
    forward-mode strategies), through the op's transformable Function (register_autograd):
    torch.library's own autograd kernel refuses torch.func's grad transforms and has no jvp.
    Elsewhere the op itself."""
    if (_peek_functorch() is not None and torch.is_grad_enabled()) or _fwad._current_level >= 0:
        function = _TRANSFORMABLE.get(op._qualified_op_name)
        if function is not None:
            return function.apply(*(_Leaf(a) if isinstance(a, (list, tuple)) else a for a in args))
    return op(*args)


# The double backward of the normalizations (layer_norm, layer_norm2d, batch_norm in
# training), a composite of torch ops (so it is itself differentiable). Per normalized
# group of n values (a row for layer norm, a channel for batch norm), with xh = (x - mean) * rstd,
# g = dy * w and the self-adjoint projection P(u) = u - mean(u) - xh * mean(u * xh) (means
# over the group), with sums over param_dims (layer norm: over the rows; batch norm: over
# the channel's group):
#   dx = rstd * P(g),  dw = sum of dy * xh,  db = sum of dy.
# For cotangents (ggx, ggw, ggb) of (dx, dw, db):
#   d/d dy = w * rstd * P(ggx) + ggw * xh + ggb
#   d/d w  = sum of dy * rstd * P(ggx)
#   d/d x  = -(rstd^2 / n) * (xh * (A - S_ggx * S_g / n - B * C / n) + C * P(ggx) + B * P(g))
#            + rstd * P(dy * ggw)
# with group sums A = sum(ggx * g), S_u = sum(u), B = sum(ggx * xh), C = sum(g * xh);
# mean and rstd are functions of x, which the d/dx formula accounts for (they get no gradient).

def normalization_double_backward(grad_out, input, mean, rstd, weight_b, ggx, ggw_b, ggb_b, red_dims, param_dims,
                                  need):
    """need = (grad_out, input, weight). weight_b, ggw_b, ggb_b: None or broadcastable to
    input. red_dims: the normalized dims; param_dims: the dims weight's gradient sums
    over (layer norm: the other dims; batch norm: the same ones)."""
    sd = mean.dtype
    x, dy = input.to(sd), grad_out.to(sd)
    n = 1
    for d in red_dims:
        n = n * input.shape[d]
    xh = (x - mean) * rstd

    def rmean(t):
        return t.sum(red_dims, keepdim=True) / n

    def proj(u):
        return u - rmean(u) - xh * rmean(u * xh)

    g = dy * weight_b if weight_b is not None else dy
    d_dy = d_x = d_w = None
    p_ggx = proj(ggx.to(sd)) if ggx is not None else None
    if need[0]:
        terms = []
        if p_ggx is not None:
            terms.append(rstd * p_ggx * weight_b if weight_b is not None else rstd * p_ggx)
        if ggw_b is not None:
            terms.append(ggw_b.to(sd) * xh)
        if ggb_b is not None:
            terms.append(ggb_b.to(sd).expand_as(x))
        d_dy = sum(terms[1:], terms[0]) if terms else torch.zeros_like(x)
    if need[1]:
        d_x = torch.zeros_like(x)
        if ggx is not None:
            gx = ggx.to(sd)
            A = (gx * g).sum(red_dims, keepdim=True)
            s_ggx = gx.sum(red_dims, keepdim=True)
            s_g = g.sum(red_dims, keepdim=True)
            B = (gx * xh).sum(red_dims, keepdim=True)
            C = (g * xh).sum(red_dims, keepdim=True)
            d_x = d_x - (rstd * rstd / n) * (xh * (A - s_ggx * s_g / n - B * C / n) + C * p_ggx + B * proj(g))
        if ggw_b is not None:
            d_x = d_x + rstd * proj(dy * ggw_b.to(sd))
    if need[2] and p_ggx is not None:
        d_w = (dy * rstd * p_ggx).sum(param_dims) if param_dims else dy * rstd * p_ggx
    return d_dy, d_x, d_w
