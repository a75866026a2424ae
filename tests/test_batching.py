"""vmap rules (cnnops/ops/batching.py): torch.vmap over every convolution, pooling and
separable op, with each combination of vmapped operands (at various dimensions), equals
the op called once per element, and calls each op once (not B times): torch's per-element fallback
(which warns "There is a performance drop", once per op and process) would call it B times."""
import collections
import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import cnnops
from conftest import assert_close, rand

OPS = torch.ops.cnnops
B = 4
X = (2, 4, 7, 6)  # the input of every case


def _conv(name, *args):
    return lambda x, w, b: getattr(OPS, name)(x, w, b, *args)


def _grad(name, size, *args):
    return lambda g, t: getattr(OPS, name)(g, t, size, *args, False)


CONV2D = ([2, 2], [1, 1, 1, 1], [1, 1], 2, "reflect")
DEPTHWISE = ([1, 1], [2, 2, 2, 2], [2, 2], "circular")
TRANSPOSE = ([2, 2], [1, 1], [1, 1], 2, [1, 1])
MAX_POOL = ([3, 3], [2, 2], [1, 1], [1, 1], True)
AVG_POOL = ([3, 3], [2, 2], [1, 1], False, False, None)
PAIR = ([1, 1], [1, 1, 1, 1], [1, 1], "replicate")

# name: (function of the operands, operand shapes (None: an absent bias), vmapped dims to try
# (one entry per operand, None: not vmapped)). Gradient ops take operands of the forward's shapes.
CASES = {
    "conv2d": (_conv("conv2d", *CONV2D), [X, (6, 2, 3, 3), (6,)],
               [(0, None, None), (1, None, None), (None, 0, None), (None, None, 0), (0, 0, 0), (3, 2, None)]),
    "conv2d_grad_input": (_grad("conv2d_grad_input", list(X), *CONV2D), [(2, 6, 4, 3), (6, 2, 3, 3)],
                          [(0, None), (None, 0), (2, 1)]),
    "conv2d_grad_weight": (_grad("conv2d_grad_weight", [6, 2, 3, 3], *CONV2D), [(2, 6, 4, 3), X],
                           [(0, None), (None, 0), (0, 3)]),
    "conv2d_grad_bias": (lambda g: OPS.conv2d_grad_bias(g), [(2, 6, 4, 3)], [(0,), (2,)]),
    "depthwise_conv2d": (_conv("depthwise_conv2d", *DEPTHWISE), [X, (8, 1, 3, 3), (8,)],
                         [(0, None, None), (None, 0, None), (None, None, 0), (0, 0, 0), (4, None, 0)]),
    "depthwise_conv2d_grad_input": (_grad("depthwise_conv2d_grad_input", list(X), *DEPTHWISE),
                                    [(2, 8, 7, 6), (8, 1, 3, 3)], [(0, None), (None, 0), (1, 0)]),
    "depthwise_conv2d_grad_weight": (_grad("depthwise_conv2d_grad_weight", [8, 1, 3, 3], *DEPTHWISE),
                                     [(2, 8, 7, 6), X], [(0, None), (None, 0), (0, 0)]),
    "conv_transpose2d": (_conv("conv_transpose2d", *TRANSPOSE), [X, (4, 3, 3, 3), (6,)],
                         [(0, None, None), (None, 0, None), (0, 0, 0), (2, None, 0)]),
    "conv_transpose2d_grad_input": (_grad("conv_transpose2d_grad_input", list(X), *TRANSPOSE),
                                    [(2, 6, 14, 12), (4, 3, 3, 3)], [(0, None), (None, 0), (1, 1)]),
    "conv_transpose2d_grad_weight": (_grad("conv_transpose2d_grad_weight", [4, 3, 3, 3], *TRANSPOSE),
                                     [(2, 6, 14, 12), X], [(0, None), (None, 0), (0, 0)]),
    "max_pool2d": (lambda x: OPS.max_pool2d(x, *MAX_POOL, True), [X], [(0,), (2,)]),
    "max_pool2d_backward": (
        lambda g, x: OPS.max_pool2d_backward(g, OPS.max_pool2d(x, *MAX_POOL, True)[1], list(X), *MAX_POOL, False),
        [(2, 4, 4, 4), X], [(0, None), (None, 0), (1, 0)]),
    "avg_pool2d": (lambda x: OPS.avg_pool2d(x, *AVG_POOL), [X], [(0,), (3,)]),
    "avg_pool2d_backward": (lambda g: OPS.avg_pool2d_backward(g, list(X), *AVG_POOL, False), [(2, 4, 4, 3)],
                            [(0,), (2,)]),
    "adaptive_avg_pool2d": (lambda x: OPS.adaptive_avg_pool2d(x, [3, 2]), [X], [(1,)]),
    "adaptive_avg_pool2d_backward": (lambda g: OPS.adaptive_avg_pool2d_backward(g, list(X), False), [(2, 4, 3, 2)],
                                     [(0,)]),
    "adaptive_max_pool2d": (lambda x: OPS.adaptive_max_pool2d(x, [3, 2]), [X], [(0,)]),
    "adaptive_max_pool2d_backward": (
        lambda g, x: OPS.adaptive_max_pool2d_backward(g, OPS.adaptive_max_pool2d(x, [3, 2])[1], list(X), False),
        [(2, 4, 3, 2), X], [(0, None), (None, 0)]),
    "depthwise_separable_conv2d": (
        lambda x, w1, b1, w2, b2: OPS.depthwise_separable_conv2d(x, w1, b1, w2, b2, *PAIR),
        [X, (8, 1, 3, 3), (8,), (5, 8, 1, 1), (5,)],
        [(0, None, None, None, None), (None, 0, None, None, None), (0, None, None, 0, 0), (None, None, 0, None, None)]),
    "spatially_separable_conv2d": (
        lambda x, w1, b1, w2, b2: OPS.spatially_separable_conv2d(x, w1, b1, w2, b2, *PAIR),
        [X, (5, 4, 3, 1), None, (3, 5, 1, 3), None], [(0, None, None, None, None), (None, 0, None, 0, None)]),
}


class _CountOps(TorchDispatchMode):
    """Counts the cnnops ops that reach the kernels (below vmap's dispatch key)."""

    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "cnnops":
            self.calls[func.name()] += 1
        return func(*args, **(kwargs or {}))


def _vmapped(t, dim):
    """B copies of t, perturbed, stacked at dim."""
    return torch.stack([t + 0.1 * i * torch.randn_like(t) for i in range(B)], dim=dim)


@pytest.mark.parametrize("name", list(CASES))
def test_vmap_equals_a_loop(name):
    fn, shapes, dims_list = CASES[name]
    torch.manual_seed(0)
    operands = [None if s is None else rand(*s) for s in shapes]
    for dims in dims_list:
        args = [t if d is None or t is None else _vmapped(t, d) for t, d in zip(operands, dims)]
        with _CountOps() as counted:
            got = torch.vmap(fn, in_dims=dims)(*args)
        # once (twice: a spatial pair with vmapped weights runs its two conv2d), never B times
        assert counted.calls and max(counted.calls.values()) <= 2, f"{name} {dims}: {dict(counted.calls)}"
        rows = [fn(*[t if d is None or t is None else t.select(d, i) for t, d in zip(args, dims)]) for i in range(B)]
        if isinstance(got, tuple):  # (values, indices)
            for j, part in enumerate(got):
                assert torch.equal(part, torch.stack([r[j] for r in rows])), f"{name} {dims}: output {j}"
        else:
            assert_close(got, torch.stack(rows), msg=f"{name} {dims}")


def test_per_sample_gradients_of_a_converted_model():
    """vmap(grad) over the samples (per-sample gradients, as in differentially private
    training) through a converted model equals torch's through the original, calling each
    op once per layer (no per-element fallback)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1, padding_mode="reflect"), torch.nn.ReLU(),
        torch.nn.Conv2d(6, 6, 3, padding=1, groups=6), torch.nn.MaxPool2d(2),
        torch.nn.ConvTranspose2d(6, 4, 2, stride=2), torch.nn.AvgPool2d(2),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2)).double()
    converted = cnnops.convert(copy.deepcopy(model))
    params = {k: v.detach() for k, v in model.named_parameters()}
    x, y = rand(5, 3, 8, 8), torch.tensor([0, 1, 1, 0, 1])

    def per_sample(m):
        def loss(p, xi, yi):
            out = torch.func.functional_call(m, p, (xi.unsqueeze(0),))
            return torch.nn.functional.cross_entropy(out, yi.unsqueeze(0))
        return torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, y)

    with _CountOps() as counted:
        got = per_sample(converted)
    expected = per_sample(model)
    # forward and backward of 3 convolutions and 2 poolings: no op more than 3 times (a
    # pooling forward, its indices again in max pooling's backward, ...), never once per sample
    assert counted.calls and max(counted.calls.values()) <= 3, dict(counted.calls)
    for k in params:
        assert_close(got[k], expected[k], msg=k)


# ops as the functionals call them, for the vmap-inside-autograd checks: (cnnops, torch, weight shape)
FUNCTIONALS = {
    "conv2d": (lambda x, w: cnnops.F.conv2d(x, w, None, 1, 1, 1, 2), lambda x, w: F.conv2d(x, w, None, 1, 1, 1, 2),
               (6, 2, 3, 3)),
    "depthwise": (lambda x, w: cnnops.F.conv2d(x, w, None, 2, 1, 1, 4), lambda x, w: F.conv2d(x, w, None, 2, 1, 1, 4),
                  (8, 1, 3, 3)),
    "max_pool2d": (lambda x, w: cnnops.F.max_pool2d(cnnops.F.conv2d(x, w, None, 1, 1), 2),
                   lambda x, w: F.max_pool2d(F.conv2d(x, w, None, 1, 1), 2), (3, 4, 3, 3)),
    "separable": (lambda x, w: cnnops.F.depthwise_separable_conv2d(x, w, w.new_ones(5, 4, 1, 1), None, None, 1, 1),
                  lambda x, w: F.conv2d(F.conv2d(x, w, None, 1, 1, 1, 4), w.new_ones(5, 4, 1, 1)), (4, 1, 3, 3)),
}


@pytest.mark.parametrize("name", list(FUNCTIONALS))
def test_vmap_inside_autograd(name):
    """vmap under reverse mode: plain eager training with .backward() after a vmap (the
    weight's gradient, and the vmapped input's, whose batched view says requires_grad=False:
    it used to get none), grad of a vmap, and jacrev of jacrev, all equal torch's. (A jvp
    saved apart from the backward's tensors once broke the generated vmap rule here.)"""
    ours, theirs, weight_shape = FUNCTIONALS[name]
    torch.manual_seed(0)
    xs, w = rand(3, 2, 4, 6, 5), rand(*weight_shape)
    grads = []
    for fn in (ours, theirs):
        x_leaf, w_leaf = xs.clone().requires_grad_(), w.clone().requires_grad_()
        torch.vmap(lambda x: fn(x, w_leaf))(x_leaf).sin().sum().backward()
        grads.append((x_leaf.grad, w_leaf.grad))
    for a, e in zip(*grads):
        assert a is not None
        assert_close(a, e)

    def vmapped_loss(fn):
        return lambda w: torch.vmap(lambda x: fn(x, w))(xs).sin().sum()

    assert_close(torch.func.grad(vmapped_loss(ours))(w), torch.func.grad(vmapped_loss(theirs))(w))
    x1 = xs[0, :1]

    def loss(fn):
        return lambda w: fn(x1, w).sin().sum()

    assert_close(torch.func.jacrev(torch.func.jacrev(loss(ours)))(w),
                 torch.func.jacrev(torch.func.jacrev(loss(theirs)))(w))
