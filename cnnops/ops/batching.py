"""vmap rules (torch.library.register_vmap) of the convolution, pooling and separable ops.
Without them torch.func's vmap (per-sample gradients, jacrev, jacfwd, hessian) runs an op
once per element of the vmapped dimension and warns "There is a performance drop". Each
rule here makes one call instead, with vmap's dimension (size B) folded into the problem:

- into N, where every one of the B problems has the same weights: activations
  (N, C, H, W) become (B * N, C, H, W). Pooling always folds this way.
- into groups otherwise: problem b becomes group b of one convolution with B times the
  channels and groups. Activations become (N, B * C, H, W) (channel b * C + c), weights,
  biases and weight sizes get B times their first dimension, and the groups argument is
  multiplied by B (depthwise has none: its groups are its channels). An operand without
  the vmap dimension is repeated B times. The bias gradient (a channel sum) folds into
  channels the same way.

Each rule receives the physical tensors and the position of their vmap dimension (None:
not batched) and returns the result with the position of its vmap dimension."""
import torch

from cnnops.ops.separable_conv2d import PAIRS

ops = torch.ops.cnnops


def _into_batch(t, dim, size):
    """(B at dim, N, ...) (dim None: repeated) -> (B * N, ...)."""
    if dim is None:
        return t.unsqueeze(0).expand(size, *t.shape).flatten(0, 1)
    return t.movedim(dim, 0).flatten(0, 1)


def _into_channels(t, dim, size):
    """An activation (N, C, H, W), vmapped at dim (None: repeated), -> (N, size * C, H, W)."""
    if dim is None:
        return t.unsqueeze(1).expand(t.shape[0], size, *t.shape[1:]).flatten(1, 2)
    return t.movedim(dim, 1).flatten(1, 2)


def _into_first(t, dim, size):
    """A weight or bias (K, ...), vmapped at dim (None: repeated), -> (size * K, ...)."""
    if t is None:
        return None
    if dim is None:
        return t.unsqueeze(0).expand(size, *t.shape).flatten(0, 1)
    return t.movedim(dim, 0).flatten(0, 1)


# family: batched_forward(B, in_dims, input, weight, bias, *args) -> (output, its vmap dim)
BATCHED_FORWARD = {}


def _unfold(t, dim, size):
    """The inverse of the folds: (..., B * K at dim, ...) -> (..., B, K, ...); K may be 0."""
    return t.unflatten(dim, (size, t.shape[dim] // size))


def register_conv_batching(family, groups_at):
    """Rules for `family`(input, weight, bias, *args), `family`_grad_input(grad_output,
    weight, input_size, *args, channels_last) and `family`_grad_weight(grad_output, input,
    weight_size, *args, channels_last), the three convolution families. groups_at: the
    position of the groups argument in every one of the three schemas (None: depthwise)."""
    forward = getattr(ops, family)
    grad_input = getattr(ops, f"{family}_grad_input")
    grad_weight = getattr(ops, f"{family}_grad_weight")

    def grouped(args, size):
        args = list(args)
        if groups_at is not None:
            args[groups_at] = args[groups_at] * size
        return args

    def batched_forward(size, in_dims, input, weight, bias, *args):
        input_dim, weight_dim, bias_dim = in_dims[:3]
        if weight_dim is None and bias_dim is None:
            return _unfold(forward(_into_batch(input, input_dim, size), weight, bias, *args), 0, size), 0
        args = grouped((input, weight, bias) + args, size)
        out = forward(_into_channels(input, input_dim, size), _into_first(weight, weight_dim, size),
                      _into_first(bias, bias_dim, size), *args[3:])
        return _unfold(out, 1, size), 1

    BATCHED_FORWARD[family] = batched_forward
    torch.library.register_vmap(forward.default)(lambda info, *args: batched_forward(info.batch_size, *args))

    @torch.library.register_vmap(grad_input.default)
    def _grad_input(info, in_dims, grad_output, weight, input_size, *args):
        size = info.batch_size
        grad_output_dim, weight_dim = in_dims[:2]
        n, c, h, w = input_size
        if weight_dim is None:
            out = grad_input(_into_batch(grad_output, grad_output_dim, size), weight, [size * n, c, h, w], *args)
            return _unfold(out, 0, size), 0
        args = grouped((grad_output, weight, input_size) + args, size)
        out = grad_input(_into_channels(grad_output, grad_output_dim, size), _into_first(weight, weight_dim, size),
                         [n, size * c, h, w], *args[3:])
        return _unfold(out, 1, size), 1

    @torch.library.register_vmap(grad_weight.default)
    def _grad_weight(info, in_dims, grad_output, input, weight_size, *args):
        # a sum over N: only groups keep the B problems apart
        size = info.batch_size
        args = grouped((grad_output, input, weight_size) + args, size)
        out = grad_weight(_into_channels(grad_output, in_dims[0], size), _into_channels(input, in_dims[1], size),
                          [size * weight_size[0], *weight_size[1:]], *args[3:])
        return _unfold(out, 0, size), 0


@torch.library.register_vmap(ops.conv2d_grad_bias.default)
def _conv2d_grad_bias(info, in_dims, grad_output):
    size = info.batch_size
    return _unfold(ops.conv2d_grad_bias(_into_channels(grad_output, in_dims[0], size)), 0, size), 0


def _register_pool(op, tensors, size_at=None):
    """A pooling op or its backward: `tensors` leading activations (input, or grad_output and
    indices) fold into N with the input size at size_at; every output unfolds from N."""
    @torch.library.register_vmap(op.default)
    def _rule(info, in_dims, *args):
        size = info.batch_size
        args = list(args)
        for i in range(tensors):
            args[i] = _into_batch(args[i], in_dims[i], size)
        if size_at is not None:
            args[size_at] = [size * args[size_at][0], *args[size_at][1:]]
        out = op(*args)
        if isinstance(out, tuple):
            return tuple(_unfold(o, 0, size) for o in out), (0,) * len(out)
        return _unfold(out, 0, size), 0


for _op, _tensors, _size_at in (
        (ops.max_pool2d, 1, None), (ops.max_pool2d_backward, 2, 2),
        (ops.avg_pool2d, 1, None), (ops.avg_pool2d_backward, 1, 1),
        (ops.adaptive_avg_pool2d, 1, None), (ops.adaptive_avg_pool2d_backward, 1, 1),
        (ops.adaptive_max_pool2d, 1, None), (ops.adaptive_max_pool2d_backward, 2, 2)):
    _register_pool(_op, _tensors, _size_at)

register_conv_batching("conv2d", groups_at=6)
register_conv_batching("conv_transpose2d", groups_at=6)
register_conv_batching("depthwise_conv2d", groups_at=None)


def _register_pair(name):
    """A separable pair: its input alone vmapped folds into N; batched weights or biases
    run the pair's two convolutions, each folded as above."""
    op = getattr(ops, name)
    make_convs = PAIRS[name][1]

    @torch.library.register_vmap(op.default)
    def _rule(info, in_dims, input, w1, b1, w2, b2, *args):
        size = info.batch_size
        if all(d is None for d in in_dims[1:5]):
            return _unfold(op(_into_batch(input, in_dims[0], size), w1, b1, w2, b2, *args), 0, size), 0
        first, second = make_convs(*args)
        mid, mid_dim = BATCHED_FORWARD[first.family](size, in_dims[:3], input, w1, b1, *first.args)
        return BATCHED_FORWARD[second.family](size, (mid_dim,) + tuple(in_dims[3:5]), mid, w2, b2, *second.args)


for _name in PAIRS:
    _register_pair(_name)
