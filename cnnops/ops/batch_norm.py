"""batch_norm family, Python side: fake kernels (the checks and messages of
csrc/common/batch_norm_checks.h and batch_norm_ops.h, in the same order), autograd for
cnnops::batch_norm, BatchNormFunction for .apply users, and SyncBatchNormFunction, which
runs the SyncBatchNorm stages with the all-reduces through torch.distributed.
Op schemas are in csrc/batch_norm.cpp."""
import torch
from torch._prims_common import suggest_memory_format

from cnnops.ops._common import (check_dtype, dtype_name, forward_below_autograd, gradient_ops_below_autograd,
                               normalization_double_backward, shape_str)

ops = torch.ops.cnnops
_REDUCED = (torch.float16, torch.bfloat16)
ACTIVATIONS = (None, "relu", "relu6")
_EXACT_RECOMPUTE = (torch.float32, torch.float64)


# ---------------------------------------------------------------- checks (fake kernels)

def stat_dtype(dtype):
    """Statistics are float32, or float64 for float64 input."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_activation(op, activation):
    torch._check_value(activation in ACTIVATIONS, lambda: (
        f"{op}: expected activation to be None, 'relu' or 'relu6', got '{activation}'"))


def _check_input(op, input):
    torch._check_value(input.dim() >= 2, lambda: (
        f"{op}: expected input to have at least 2 dimensions (N, C, *), got shape {shape_str(input.shape)}"))
    check_dtype(op, input)
    return input.shape[1]


def _check_channel(op, input, t, name):
    if t is None:
        return
    c = input.shape[1]
    torch._check_value(t.dim() == 1 and t.shape[0] == c, lambda: (
        f"{op}: expected {name} to have shape ({c},) (one value per channel of input {shape_str(input.shape)}), "
        f"got shape {shape_str(t.shape)}"))
    reduced = input.dtype in _REDUCED
    torch._check_type(t.dtype == input.dtype or (reduced and t.dtype == torch.float32), lambda: (
        f"{op}: expected {name} to have the same dtype as input ({dtype_name(input.dtype)})"
        f"{' or float32' if reduced else ''}, got {dtype_name(t.dtype)}"))
    torch._check(t.device == input.device, lambda: (
        f"{op}: expected {name} to be on the same device as input ({input.device}), got {t.device}"))


def _check_like_input(op, input, t, name):
    torch._check_value(tuple(t.shape) == tuple(input.shape), lambda: (
        f"{op}: expected {name} to have the same shape as input {shape_str(input.shape)}, got {shape_str(t.shape)}"))
    torch._check_type(t.dtype == input.dtype, lambda: (
        f"{op}: expected {name} to have the same dtype as input ({dtype_name(input.dtype)}), got {dtype_name(t.dtype)}"))
    torch._check(t.device == input.device, lambda: (
        f"{op}: expected {name} to be on the same device as input ({input.device}), got {t.device}"))


def _check_stat(op, input, s, name):
    want = stat_dtype(input.dtype)
    torch._check_type(s.dtype == want, lambda: f"{op}: expected {name} to have dtype {dtype_name(want)}, got {dtype_name(s.dtype)}")
    torch._check(s.device == input.device, lambda: (
        f"{op}: expected {name} to be on the same device as input ({input.device}), got {s.device}"))
    c = input.shape[1]
    torch._check_value(s.dim() == 1 and s.shape[0] == c, lambda: (
        f"{op}: expected {name} to have shape ({c},), got shape {shape_str(s.shape)}"))


def _check_nbt(op, ref, nbt):
    if nbt is None:
        return
    torch._check(nbt.device == ref.device, lambda: (
        f"{op}: expected num_batches_tracked to be on the same device as input ({ref.device}), got {nbt.device}"))
    torch._check_value(nbt.numel() == 1, lambda: (
        f"{op}: expected num_batches_tracked to have one element, got shape {shape_str(nbt.shape)}"))
    torch._check_type(nbt.dtype == torch.int64, lambda: (
        f"{op}: expected num_batches_tracked to have dtype int64, got {dtype_name(nbt.dtype)}"))


def _check_running_pair(op, rm, rv):
    torch._check_value((rm is None) == (rv is None), lambda: (
        f"{op}: expected running_mean and running_var to be both tensors or both None, got "
        f"{'None' if rm is None else 'a tensor'} and {'None' if rv is None else 'a tensor'}"))


def _check_momentum(op, momentum, nbt, updates):
    torch._check_value(momentum is not None or not updates or nbt is not None, lambda: (
        f"{op}: momentum=None (cumulative average) needs num_batches_tracked"))


def _check_output_for_activation(op, input, output, activation):
    torch._check_value(activation is None or output is not None, lambda: (
        f"{op}: expected output (the forward's result) when activation is '{activation}', got None"))
    if activation is not None:
        _check_like_input(op, input, output, "output")


def memory_format(input):
    """Mirror of bn_memory_format(): channels_last (3d) when torch would suggest it, else contiguous."""
    if input.dim() in (4, 5):
        return suggest_memory_format(input)
    return torch.contiguous_format


def _empty_like_layout(input):
    return torch.empty(input.shape, dtype=input.dtype, device=input.device, memory_format=memory_format(input))


def _stat_empty(input, c):
    return input.new_empty((c,), dtype=stat_dtype(input.dtype))


def _param_grad_dtype(input, p, other):
    if p is not None:
        return p.dtype
    if other is not None:
        return other.dtype
    return input.dtype


@torch.library.register_fake("cnnops::batch_norm")
def _batch_norm_fake(input, weight, bias, running_mean, running_var, num_batches_tracked, residual, training,
                     momentum, eps, activation):
    op = "cnnops.batch_norm"
    c = _check_input(op, input)
    _check_activation(op, activation)
    _check_channel(op, input, weight, "weight")
    _check_channel(op, input, bias, "bias")
    _check_channel(op, input, running_mean, "running_mean")
    _check_channel(op, input, running_var, "running_var")
    _check_running_pair(op, running_mean, running_var)
    torch._check_value(training or running_mean is not None, lambda: (
        f"{op}: expected running_mean and running_var when training is False "
        "(evaluation normalizes with the running statistics), got None"))
    updates = training and running_mean is not None
    _check_nbt(op, input, num_batches_tracked)
    _check_momentum(op, momentum, num_batches_tracked, updates)
    if residual is not None:
        _check_like_input(op, input, residual, "residual")
    return _empty_like_layout(input), _stat_empty(input, c), _stat_empty(input, c)


@torch.library.register_fake("cnnops::batch_norm_backward")
def _batch_norm_backward_fake(grad_out, input, output, weight, bias, save_mean, save_invstd, training, activation,
                              output_mask):
    op = "cnnops.batch_norm_backward"
    c = _check_input(op, input)
    _check_activation(op, activation)
    _check_like_input(op, input, grad_out, "grad_out")
    if activation is not None and output is not None:  # else the mask is recomputed from input
        _check_like_input(op, input, output, "output")
    _check_channel(op, input, weight, "weight")
    _check_channel(op, input, bias, "bias")
    _check_stat(op, input, save_mean, "save_mean")
    _check_stat(op, input, save_invstd, "save_invstd")
    empty = input.new_empty((0,))
    gi = _empty_like_layout(input) if output_mask[0] else empty
    gw = input.new_empty((c,), dtype=_param_grad_dtype(input, weight, bias)) if output_mask[1] else input.new_empty((0,))
    gb = input.new_empty((c,), dtype=_param_grad_dtype(input, bias, weight)) if output_mask[2] else input.new_empty((0,))
    gr = _empty_like_layout(input) if output_mask[3] else input.new_empty((0,))
    return gi, gw, gb, gr


@torch.library.register_fake("cnnops::batch_norm_stats")
def _batch_norm_stats_fake(input):
    c = _check_input("cnnops.batch_norm_stats", input)
    return input.new_empty((3, c), dtype=stat_dtype(input.dtype))


def _check_gathered_running(op, stats, r, name):
    if r is None:
        return
    c = stats.shape[2]
    torch._check_value(r.dim() == 1 and r.shape[0] == c, lambda: (
        f"{op}: expected {name} to have shape ({c},) (one value per channel of stats {shape_str(stats.shape)}), "
        f"got shape {shape_str(r.shape)}"))
    if r.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise NotImplementedError(f"{op}: dtype {dtype_name(r.dtype)} on device {r.device} is not supported; "
                                  "supported: float32, float64, float16, bfloat16")
    torch._check(r.device == stats.device, lambda: (
        f"{op}: expected {name} to be on the same device as stats ({stats.device}), got {r.device}"))


@torch.library.register_fake("cnnops::batch_norm_gather_stats")
def _batch_norm_gather_stats_fake(stats, running_mean, running_var, num_batches_tracked, momentum, eps):
    op = "cnnops.batch_norm_gather_stats"
    torch._check_value(stats.dim() == 3 and stats.shape[1] == 3 and stats.shape[0] >= 1, lambda: (
        f"{op}: expected stats to have shape (world_size, 3, C) (count, mean, M2 of each rank), "
        f"got shape {shape_str(stats.shape)}"))
    torch._check_type(stats.dtype in (torch.float32, torch.float64), lambda: (
        f"{op}: expected stats to have dtype float32 or float64, got {dtype_name(stats.dtype)}"))
    _check_gathered_running(op, stats, running_mean, "running_mean")
    _check_gathered_running(op, stats, running_var, "running_var")
    _check_running_pair(op, running_mean, running_var)
    _check_nbt(op, stats, num_batches_tracked)
    _check_momentum(op, momentum, num_batches_tracked, running_mean is not None)
    c = stats.shape[2]
    return stats.new_empty((c,)), stats.new_empty((c,)), stats.new_empty((1,))


@torch.library.register_fake("cnnops::batch_norm_elemt")
def _batch_norm_elemt_fake(input, weight, bias, mean, invstd, residual, activation):
    op = "cnnops.batch_norm_elemt"
    _check_input(op, input)
    _check_activation(op, activation)
    _check_channel(op, input, weight, "weight")
    _check_channel(op, input, bias, "bias")
    _check_stat(op, input, mean, "mean")
    _check_stat(op, input, invstd, "invstd")
    if residual is not None:
        _check_like_input(op, input, residual, "residual")
    return _empty_like_layout(input)


@torch.library.register_fake("cnnops::batch_norm_backward_reduce")
def _batch_norm_backward_reduce_fake(grad_out, input, output, mean, invstd, weight, bias, activation, param_mask):
    op = "cnnops.batch_norm_backward_reduce"
    c = _check_input(op, input)
    _check_activation(op, activation)
    _check_like_input(op, input, grad_out, "grad_out")
    _check_output_for_activation(op, input, output, activation)
    _check_stat(op, input, mean, "mean")
    _check_stat(op, input, invstd, "invstd")
    _check_channel(op, input, weight, "weight")
    _check_channel(op, input, bias, "bias")
    gw = input.new_empty((c,), dtype=_param_grad_dtype(input, weight, bias)) if param_mask[0] else input.new_empty((0,))
    gb = input.new_empty((c,), dtype=_param_grad_dtype(input, bias, weight)) if param_mask[1] else input.new_empty((0,))
    return _stat_empty(input, c), _stat_empty(input, c), gw, gb


@torch.library.register_fake("cnnops::batch_norm_backward_elemt")
def _batch_norm_backward_elemt_fake(grad_out, input, output, weight, mean, invstd, sum_dy, sum_dy_xmu, count,
                                    activation, output_mask):
    op = "cnnops.batch_norm_backward_elemt"
    _check_input(op, input)
    _check_activation(op, activation)
    _check_like_input(op, input, grad_out, "grad_out")
    _check_output_for_activation(op, input, output, activation)
    _check_channel(op, input, weight, "weight")
    for t, name in ((mean, "mean"), (invstd, "invstd"), (sum_dy, "sum_dy"), (sum_dy_xmu, "sum_dy_xmu")):
        _check_stat(op, input, t, name)
    sd = stat_dtype(input.dtype)
    torch._check_type(count.dtype == sd, lambda: f"{op}: expected count to have dtype {dtype_name(sd)}, got {dtype_name(count.dtype)}")
    torch._check(count.device == input.device, lambda: (
        f"{op}: expected count to be on the same device as input ({input.device}), got {count.device}"))
    torch._check_value(count.numel() == 1, lambda: f"{op}: expected count to have one element, got shape {shape_str(count.shape)}")
    gi = _empty_like_layout(input) if output_mask[0] else input.new_empty((0,))
    gr = _empty_like_layout(input) if output_mask[1] else input.new_empty((0,))
    return gi, gr


# ---------------------------------------------------------------- autograd
# One setup and one backward, used by register_autograd on cnnops::batch_norm and by
# BatchNormFunction. save_mean / save_invstd are not differentiable (as torch's).

def batch_norm_setup(ctx, input, weight, bias, residual, training, activation, out, save_mean, save_invstd,
                     need_input, need_weight, need_bias, need_residual):
    ctx.mask = [bool(need_input), weight is not None and bool(need_weight), bias is not None and bool(need_bias),
                residual is not None and bool(need_residual)]
    ctx.training = bool(training)
    ctx.activation = activation
    if any(ctx.mask):
        # The activation's mask: from the output where a residual was added or the dtype
        # is reduced (the output's rounding decides there); otherwise recomputed in the
        # backward from input, weight, bias and the statistics (exact), so the backward
        # reads one tensor less and the output need not be kept.
        keep_out = activation is not None and (residual is not None or input.dtype not in _EXACT_RECOMPUTE)
        ctx.save_for_backward(input, out if keep_out else None, weight,
                              bias if (ctx.mask[2] or (activation is not None and not keep_out)) else None,
                              save_mean, save_invstd)


@gradient_ops_below_autograd
def batch_norm_backward(ctx, grad_out):
    """(grad_input, grad_weight, grad_bias, grad_residual), each None unless needed."""
    if not any(ctx.mask):
        return None, None, None, None
    input, out, weight, bias, save_mean, save_invstd = ctx.saved_tensors
    gi, gw, gb, gr = ops.batch_norm_backward(grad_out, input, out, weight, bias, save_mean, save_invstd,
                                             ctx.training, ctx.activation, ctx.mask)
    m = ctx.mask
    return (gi if m[0] else None, gw if m[1] else None, gb if m[2] else None, gr if m[3] else None)


class BatchNormEager(torch.autograd.Function):
    """The Autograd kernel of cnnops::batch_norm. register_autograd refuses ops that mutate
    an argument (the running statistics), so the op's autograd is this Function, registered
    for the Autograd dispatch key; it redispatches below autograd (and under torch.compile,
    functionalization turns the mutation into auto_functionalized). In plain eager mode the
    functional applies it directly, without the dispatcher's hop into Python."""

    @staticmethod
    def forward(ctx, input, weight, bias, running_mean, running_var, num_batches_tracked, residual, training,
                momentum, eps, activation):
        with torch._C._AutoDispatchBelowAutograd():
            out, mean, invstd = ops.batch_norm.default(input, weight, bias, running_mean, running_var,
                                                       num_batches_tracked, residual, training, momentum, eps,
                                                       activation)
        ctx.mark_non_differentiable(mean, invstd)
        need = ctx.needs_input_grad
        batch_norm_setup(ctx, input, weight, bias, residual, training, activation, out, mean, invstd,
                         need[0], need[1], need[2], need[6])
        return out, mean, invstd

    @staticmethod
    def backward(ctx, grad_out, grad_mean, grad_invstd):
        gi, gw, gb, gr = batch_norm_backward(ctx, grad_out)
        return gi, gw, gb, None, None, None, gr, None, None, None, None


def _batch_norm_autograd(input, weight, bias, running_mean, running_var, num_batches_tracked, residual, training,
                         momentum, eps, activation):
    return BatchNormEager.apply(input, weight, bias, running_mean, running_var, num_batches_tracked, residual,
                              training, momentum, eps, activation)


# Double backward (second-order methods such as MAML, gradient penalties): a composite of
# torch ops, so it is differentiable again. With the activation's mask M (the backward's
# own rule, bn_grad_passes in csrc/common/batch_norm_math.h) and g = dy * M, the backward is
# the plain normalization's backward of g, and dresidual = g; M is piecewise constant, so it
# passes cotangents through unchanged. Training: normalization_double_backward over the
# channel's values. Evaluation (running statistics, constants): dx = g * w * r,
# dw = sum(g * xh), db = sum(g) are bilinear in g and (w, x).

def _setup_batch_norm_backward(ctx, inputs, output):
    grad_out, input, out, weight, bias, save_mean, save_invstd, training, activation, output_mask = inputs
    ctx.training, ctx.activation, ctx.output_mask = bool(training), activation, list(output_mask)
    ctx.save_for_backward(grad_out, input, out, weight, bias, save_mean, save_invstd)


def _activation_mask(input, out, weight, bias, mean, invstd, activation, channel):
    """The 0/1 mask of the backward's activation rule (None without an activation), judged
    from the output where the forward kept it, else from z = x * scale + shift as the
    kernels compute it."""
    if activation is None:
        return None
    if out is None:
        scale = invstd if weight is None else invstd * channel(weight)
        shift = -mean * scale if bias is None else channel(bias) - mean * scale
        out = input * scale + shift
    y = out.detach()
    passes = y > 0 if activation == "relu" else (y > 0) & (y < 6)
    return passes.to(mean.dtype)


def _batch_norm_double_backward(ctx, ggi, ggw, ggb, ggr):
    grad_out, input, out, weight, bias, mean, invstd = ctx.saved_tensors
    ggi, ggw, ggb, ggr = (g if m else None for g, m in zip((ggi, ggw, ggb, ggr), ctx.output_mask))
    sd = mean.dtype
    shape = (1, -1) + (1,) * (input.dim() - 2)

    def channel(t):
        return None if t is None else t.to(sd).reshape(shape)

    x, m, r, w = input.to(sd), channel(mean), channel(invstd), channel(weight)
    mask = _activation_mask(x, None if out is None else out.to(sd), weight, bias, m, r, ctx.activation, channel)
    g = grad_out.to(sd) if mask is None else grad_out.to(sd) * mask
    red = (0,) + tuple(range(2, input.dim()))
    need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], weight is not None and ctx.needs_input_grad[3])
    if ctx.training:
        d_g, d_x, d_w = normalization_double_backward(g, x, m, r, w, ggi, channel(ggw), channel(ggb), red, red, need)
    else:
        xh = (x - m) * r
        wr = r if w is None else w * r
        terms = [t for t in (None if ggi is None else ggi.to(sd) * wr, None if ggw is None else channel(ggw) * xh,
                             None if ggb is None else channel(ggb).expand_as(x)) if t is not None]
        d_g = sum(terms[1:], terms[0]) if terms else torch.zeros_like(x)
        d_x = channel(ggw) * g * r if need[1] and ggw is not None else None
        d_w = (ggi.to(sd) * g * r).sum(red) if need[2] and ggi is not None else None
    if ggr is not None:
        d_g = ggr.to(sd) if d_g is None else d_g + ggr.to(sd)
    d_grad_out = None
    if need[0] and d_g is not None:
        d_grad_out = (d_g if mask is None else d_g * mask).to(grad_out.dtype)
    return (d_grad_out, None if d_x is None else d_x.to(input.dtype), None,
            None if d_w is None else d_w.to(weight.dtype), None, None, None, None, None, None)


torch.library.impl("cnnops::batch_norm", "Autograd", _batch_norm_autograd)
torch.library.register_autograd("cnnops::batch_norm_backward", _batch_norm_double_backward,
                                setup_context=_setup_batch_norm_backward)


class BatchNormFunction(torch.autograd.Function):
    """batch_norm as a torch.autograd.Function, for .apply users:
    BatchNormFunction.apply(input, running_mean, running_var, weight=None, bias=None, training=False,
    momentum=0.1, eps=1e-5, activation=None, residual=None, num_batches_tracked=None)."""

    @staticmethod
    def forward(ctx, input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                eps=1e-5, activation=None, residual=None, num_batches_tracked=None):
        out, mean, invstd = forward_below_autograd(ops.batch_norm, input, weight, bias, running_mean, running_var,
                                                   num_batches_tracked, residual, training, momentum, eps,
                                                   activation)
        need = ctx.needs_input_grad
        batch_norm_setup(ctx, input, weight, bias, residual, training, activation, out, mean, invstd,
                         need[0], need[3], need[4], need[9])
        return out

    @staticmethod
    def backward(ctx, grad_out):
        gi, gw, gb, gr = batch_norm_backward(ctx, grad_out)
        return gi, None, None, gw, gb, None, None, None, None, gr, None


# ---------------------------------------------------------------- SyncBatchNorm

class SyncBatchNormFunction(torch.autograd.Function):
    """Batch statistics over all ranks of a process group: each rank's (count, mean, M2)
    is all-gathered (so ranks with different batch sizes weigh correctly) and merged in
    rank order by cnnops::batch_norm_gather_stats, which also updates the running statistics
    identically on every rank; backward all-reduces the two per-channel sums."""

    @staticmethod
    def forward(ctx, input, weight, bias, running_mean, running_var, num_batches_tracked, residual, momentum, eps,
                activation, process_group, world_size):
        import torch.distributed as dist

        stats = ops.batch_norm_stats(input)
        gathered = [torch.empty_like(stats) for _ in range(world_size)]
        dist.all_gather(gathered, stats, group=process_group)
        mean, invstd, count = ops.batch_norm_gather_stats(torch.stack(gathered), running_mean, running_var,
                                                          num_batches_tracked, momentum, eps)
        out = ops.batch_norm_elemt(input, weight, bias, mean, invstd, residual, activation)
        need = ctx.needs_input_grad
        ctx.mask = [bool(need[0]), weight is not None and bool(need[1]), bias is not None and bool(need[2]),
                    residual is not None and bool(need[6])]
        ctx.activation = activation
        ctx.process_group = process_group
        ctx.save_for_backward(input, out if activation is not None else None, weight, bias, mean, invstd, count)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        import torch.distributed as dist

        input, out, weight, bias, mean, invstd, count = ctx.saved_tensors
        m = ctx.mask
        grad_out = grad_out.contiguous(memory_format=memory_format(input))
        sum_dy, sum_dy_xmu, gw, gb = ops.batch_norm_backward_reduce(grad_out, input, out, mean, invstd, weight, bias,
                                                                    ctx.activation, [m[1], m[2]])
        gi = gr = None
        if m[0] or m[3]:
            # Every rank takes part in the all-reduce (all ranks run the same backward).
            sums = torch.cat([sum_dy, sum_dy_xmu])
            dist.all_reduce(sums, group=ctx.process_group)
            c = sum_dy.shape[0]
            gi, gr = ops.batch_norm_backward_elemt(grad_out, input, out, weight, mean, invstd, sums[:c], sums[c:],
                                                   count, ctx.activation, [m[0], m[3]])
        return (gi if m[0] else None, gw if m[1] else None, gb if m[2] else None, None, None, None,
                gr if m[3] else None, None, None, None, None, None)
