"""Tests for the pool2d family: max, average, adaptive and global pooling.

Reference: torch.nn.functional on the same values in float64 on the CPU (so CUDA and
low-precision results are checked against exact values, and ties and NaN follow the same
scan rule). CUDA cases carry "cuda" in their ids (scripts/gpu_check.sh selects -k cuda)
and skip without a GPU.
"""
import os
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st

import cnnops
from cnnops.ops.pool2d import pool_output_size

ops = torch.ops.cnnops
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=cuda_only)]
LAYOUTS = ["nchw", "channels_last", "noncontig"]


def dtypes_for(device):
    return [torch.float32, torch.float64, torch.bfloat16] + ([torch.float16] if device == "cuda" else [])


def cases():
    """(device, dtype) pairs with readable ids."""
    out = []
    for dev in ("cpu", "cuda"):
        for dt in dtypes_for(dev):
            marks = [cuda_only] if dev == "cuda" else []
            out.append(pytest.param(dev, dt, id=f"{dev}-{str(dt).replace('torch.', '')}", marks=marks))
    return out


TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 2e-2, torch.float16: 2e-3}


@contextmanager
def env(name, value):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def make_input(shape, dtype, device="cpu", layout="nchw", kind="randn", seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "ties":
        x = torch.randint(-2, 3, shape, generator=g).double()
    else:
        x = torch.randn(shape, generator=g, dtype=torch.float64)
    if kind == "nan":
        x[x > 1.2] = float("nan")
        x[x < -1.2] = float("-inf")
    x = x.to(dtype)
    if layout == "channels_last":
        return x.to(device).contiguous(memory_format=torch.channels_last)
    if layout == "noncontig":
        n, c, h, w = shape
        big = torch.zeros(n, 2 * c, h, 2 * w, dtype=dtype, device=device)
        v = big[:, ::2, :, ::2]
        v.copy_(x)
        return v
    return x.to(device)


def reference(fn, x, grad=None):
    """torch's result on the same values in float64 on the CPU, with the input gradient."""
    xr = x.detach().double().cpu().requires_grad_(True)
    out = fn(xr)
    y = out[0] if isinstance(out, tuple) else out
    if grad is not None:
        y.backward(grad.double().cpu())
    return out, xr.grad


def run(fn, x, grad=None):
    xc = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
    out = fn(xc)
    y = out[0] if isinstance(out, tuple) else out
    if grad is not None:
        y.backward(grad)
    return out, xc.grad


def assert_close(actual, expected, dtype, what=""):
    tol = TOL[dtype]
    torch.testing.assert_close(actual.double().cpu(), expected.double(), rtol=tol, atol=tol, equal_nan=True, msg=what)


def valid_windows(shape, k, s, p, d, ceil):
    """Windows holding some input (torch gives a meaningless index for windows of padding only)."""
    return TF.max_pool2d(torch.zeros(shape), k, s, p, d, ceil) == 0


# ---------------------------------------------------------------- max pooling

MAX_CONFIGS = [  # kernel, stride, padding, dilation, ceil_mode, (H, W)
    (3, 2, 1, 1, False, (112 // 8, 112 // 8)),     # ResNet stem shape, smaller
    (3, 2, 0, 1, True, (13, 13)),                  # GoogLeNet ceil_mode
    (3, 2, 0, 1, True, (14, 14)),
    (2, 2, 0, 1, False, (8, 9)),                   # VGG
    ((3, 2), (1, 3), (1, 0), (2, 1), True, (9, 11)),
    (5, 3, 2, 1, True, (11, 7)),
    (4, 1, 2, 2, False, (7, 10)),
    (1, 1, 0, 1, False, (3, 5)),
    ((2, 5), (3, 2), (1, 2), (1, 2), True, (10, 23)),
    (3, 3, 1, 1, True, (37, 40)),                  # wider than two vectors
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("config", MAX_CONFIGS, ids=[f"cfg{i}" for i in range(len(MAX_CONFIGS))])
@pytest.mark.parametrize("device,dtype", cases())
def test_max_pool2d_parity(device, dtype, config, layout):
    k, s, p, d, ceil, (h, w) = config
    x = make_input((2, 5, h, w), dtype, device, layout)
    f_ref = lambda t: TF.max_pool2d(t, k, s, p, d, ceil, return_indices=True)  # noqa: E731
    f = lambda t: cnnops.F.max_pool2d(t, k, s, p, d, ceil, return_indices=True)  # noqa: E731
    ref_shape = f_ref(x.detach().double().cpu())[0].shape
    grad = make_input(tuple(ref_shape), dtype, device, "nchw", seed=1)
    (ref, ref_idx), ref_grad = reference(f_ref, x, grad)
    (out, idx), g = run(f, x, grad)
    assert out.dtype == dtype and idx.dtype == torch.int64 and out.device.type == device
    assert out.stride() == TF.max_pool2d(x.detach(), k, s, p, d, ceil).stride()
    assert idx.stride() == out.stride()
    assert_close(out, ref, torch.float64)  # a max is exact in any dtype
    torch.testing.assert_close(idx.cpu(), ref_idx)
    assert_close(g, ref_grad, dtype)


@pytest.mark.parametrize("kind", ["ties", "nan"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("device,dtype", cases())
def test_max_pool2d_ties_nan_inf(device, dtype, layout, kind):
    """Ties keep the first maximum in scan order; NaN wins (the last NaN gives the index); -inf is a value."""
    x = make_input((2, 19, 11, 21), dtype, device, layout, kind=kind, seed=3)
    for k, s, p, ceil in [(3, 2, 1, False), (2, 1, 0, False), (3, 2, 0, True), (4, 3, 2, True)]:
        (ref, ref_idx), _ = reference(lambda t: TF.max_pool2d(t, k, s, p, 1, ceil, return_indices=True), x)
        out, idx = cnnops.F.max_pool2d(x, k, s, p, 1, ceil, return_indices=True)
        assert_close(out, ref, torch.float64)
        torch.testing.assert_close(idx.cpu(), ref_idx)


@pytest.mark.parametrize("device", DEVICES)
def test_max_pool2d_all_neg_inf_and_all_nan(device):
    x = torch.full((1, 3, 5, 6), float("-inf"), device=device)
    x[0, 1] = float("nan")
    out, idx = cnnops.F.max_pool2d(x, 3, 2, 1, return_indices=True)
    ref, ref_idx = TF.max_pool2d(x.cpu(), 3, 2, 1, return_indices=True)
    torch.testing.assert_close(out.cpu(), ref, equal_nan=True)
    torch.testing.assert_close(idx.cpu(), ref_idx)


@pytest.mark.parametrize("device", DEVICES)
def test_max_pool2d_window_of_padding_only(device):
    """Dilation can make a window hold padding only: -inf, index -1 (torch: an index
    outside the plane), and no gradient flows from it."""
    x = torch.randn(1, 2, 1, 2, device=device, requires_grad=True)
    out, idx = cnnops.F.max_pool2d(x, (1, 2), 1, (0, 1), (1, 3), return_indices=True)
    ref = TF.max_pool2d(x.detach().cpu(), (1, 2), 1, (0, 1), (1, 3))
    assert out.shape == ref.shape == (1, 2, 1, 1)
    assert torch.isneginf(out).all() and (idx == -1).all()
    out.sum().backward()
    assert (x.grad == 0).all()
    # double backward gathers through the -1 index as 0
    gg = ops.max_pool2d_backward(torch.ones_like(out, requires_grad=True), idx, list(x.shape), [1, 2], [1, 1],
                                 [0, 1], [1, 3], False, False)
    assert (gg == 0).all()


@pytest.mark.parametrize("device,dtype", cases())
def test_max_pool2d_no_indices_and_functions(device, dtype):
    """return_indices=False skips the indices; MaxPool2dFunction.apply matches."""
    x = make_input((2, 4, 9, 10), dtype, device, "channels_last")
    out = cnnops.F.max_pool2d(x, 3, 2, 1)
    out2, idx = ops.max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], False, False)
    assert idx.numel() == 0 and torch.equal(out, out2)
    grad = make_input(tuple(out.shape), dtype, device, seed=2)
    (ref, _), ref_grad = reference(lambda t: TF.max_pool2d(t, 3, 2, 1, return_indices=True), x, grad)
    (o, i), g = run(lambda t: cnnops.F.MaxPool2dFunction.apply(t, 3, 2, 1, 1, False, True), x, grad)
    assert_close(o, ref, torch.float64)
    assert_close(g, ref_grad, dtype)
    # the op called without indices but with a gradient recomputes them in backward
    xr = x.detach().requires_grad_(True)
    o3, _ = ops.max_pool2d(xr, [3, 3], [2, 2], [1, 1], [1, 1], False, False)
    o3.backward(grad)
    assert_close(xr.grad, ref_grad, dtype)


# ---------------------------------------------------------------- average pooling

AVG_CONFIGS = [  # kernel, stride, padding, ceil_mode, count_include_pad, divisor_override, (H, W)
    (2, 2, 0, False, True, None, (8, 8)),          # DenseNet transition
    (3, 2, 1, False, True, None, (9, 10)),
    (3, 2, 1, True, True, None, (10, 10)),          # ceil window past the padded edge
    (3, 2, 1, True, False, None, (10, 11)),
    ((3, 4), (2, 3), (1, 2), True, True, None, (8, 13)),
    (5, 3, 2, True, False, None, (11, 7)),
    (3, 1, 1, False, False, None, (6, 37)),
    (2, 3, 1, True, True, 3, (9, 9)),
    (3, 2, 0, False, True, -2, (7, 8)),
    (1, 1, 0, False, True, None, (3, 4)),
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("config", AVG_CONFIGS, ids=[f"cfg{i}" for i in range(len(AVG_CONFIGS))])
@pytest.mark.parametrize("device,dtype", cases())
def test_avg_pool2d_parity(device, dtype, config, layout):
    k, s, p, ceil, cip, dov, (h, w) = config
    x = make_input((2, 5, h, w), dtype, device, layout)
    f_ref = lambda t: TF.avg_pool2d(t, k, s, p, ceil, cip, dov)  # noqa: E731
    f = lambda t: cnnops.F.avg_pool2d(t, k, s, p, ceil, cip, dov)  # noqa: E731
    grad = make_input(tuple(f_ref(x.detach().double().cpu()).shape), dtype, device, seed=1)
    ref, ref_grad = reference(f_ref, x, grad)
    out, g = run(f, x, grad)
    assert out.dtype == dtype and out.stride() == f_ref(x.detach()).stride()
    assert_close(out, ref, dtype)
    assert_close(g, ref_grad, dtype)


def test_avg_pool2d_matches_torch_bitwise_float32():
    """The NCHW float32 path sums in torch's order: bitwise equal."""
    x = torch.randn(2, 3, 17, 19)
    for args in [(2, 2, 0), (3, 2, 1, True, False), (3, 1, 1, False, True)]:
        assert torch.equal(cnnops.F.avg_pool2d(x, *args), TF.avg_pool2d(x, *args))


# ---------------------------------------------------------------- adaptive and global

ADAPTIVE_SIZES = [((13, 13), (6, 6)), ((7, 9), (3, 4)), ((5, 5), (7, 8)), ((10, 12), (None, 5)),
                  ((9, 8), (1, 1)), ((6, 6), (6, 6)), ((11, 3), 2), ((4, 31), (2, 1))]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("sizes", ADAPTIVE_SIZES, ids=[f"s{i}" for i in range(len(ADAPTIVE_SIZES))])
@pytest.mark.parametrize("device,dtype", cases())
def test_adaptive_pool2d_parity(device, dtype, sizes, layout):
    (h, w), osz = sizes
    x = make_input((2, 20, h, w), dtype, device, layout, kind="ties" if dtype == torch.float32 else "randn")
    for is_max in (False, True):
        if is_max:
            f_ref = lambda t: TF.adaptive_max_pool2d(t, osz, True)  # noqa: E731
            f = lambda t: cnnops.F.adaptive_max_pool2d(t, osz, True)  # noqa: E731
        else:
            f_ref = lambda t: TF.adaptive_avg_pool2d(t, osz)  # noqa: E731
            f = lambda t: cnnops.F.adaptive_avg_pool2d(t, osz)  # noqa: E731
        ref_out = f_ref(x.detach().double().cpu())
        shape = (ref_out[0] if is_max else ref_out).shape
        grad = make_input(tuple(shape), dtype, device, seed=1)
        ref, ref_grad = reference(f_ref, x, grad)
        out, g = run(f, x, grad)
        if is_max:
            assert_close(out[0], ref[0], torch.float64)
            torch.testing.assert_close(out[1].cpu(), ref[1])
            assert out[0].stride() == out[1].stride() == f_ref(x.detach())[0].stride()
        else:
            assert_close(out, ref, dtype)
            assert out.stride() == f_ref(x.detach()).stride()
        assert_close(g, ref_grad, dtype)


@pytest.mark.parametrize("experimental", ["0", "1"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("device,dtype", cases())
def test_global_pool_modules(device, dtype, layout, experimental):
    """GlobalAvgPool2d / GlobalMaxPool2d (the reduction kernels; on CUDA the one-warp
    reduction with CNNOPS_EXPERIMENTAL=1)."""
    with env("CNNOPS_EXPERIMENTAL", experimental):
        for hw in [(7, 7), (1, 1), (3, 40), (17, 19)]:
            x = make_input((3, 33) + hw, dtype, device, layout, kind="ties", seed=hw[0])
            x[0, 0, 0, 0] = float("nan")
            grad = make_input((3, 33, 1, 1), dtype, device, seed=1)
            ref, ref_grad = reference(lambda t: TF.adaptive_avg_pool2d(t, 1), x, grad)
            out, g = run(cnnops.nn.GlobalAvgPool2d(), x, grad)
            assert out.shape == (3, 33, 1, 1) and out.stride() == TF.adaptive_avg_pool2d(x, 1).stride()
            assert_close(out, ref, dtype)
            assert_close(g, ref_grad, dtype)
            (ref, ref_idx), ref_grad = reference(lambda t: TF.adaptive_max_pool2d(t, 1, True), x, grad)
            out, g = run(cnnops.nn.GlobalMaxPool2d(), x, grad)
            _, idx = cnnops.F.adaptive_max_pool2d(x, 1, return_indices=True)
            assert_close(out, ref, torch.float64)
            torch.testing.assert_close(idx.cpu(), ref_idx)
            assert_close(g, ref_grad, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_adaptive_output_size_zero(device):
    x = torch.randn(2, 3, 5, 6, device=device, requires_grad=True)
    for fn in (cnnops.F.adaptive_avg_pool2d, cnnops.F.adaptive_max_pool2d):
        out = fn(x, (0, 2))
        assert out.shape == TF.adaptive_avg_pool2d(x.detach(), (0, 2)).shape == (2, 3, 0, 2)
        out.sum().backward()
        assert (x.grad == 0).all()
        x.grad = None


# ---------------------------------------------------------------- shapes: batch 0/1, unbatched

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0, 3, 8, 8), (1, 3, 8, 9), (3, 8, 9)], ids=["batch0", "batch1", "unbatched"])
def test_batch_sizes_and_unbatched(device, shape):
    x = torch.randn(shape, device=device)
    for f, f_ref in [
        (lambda t: cnnops.F.max_pool2d(t, 3, 2, 1, return_indices=True), lambda t: TF.max_pool2d(t, 3, 2, 1, return_indices=True)),
        (lambda t: cnnops.F.avg_pool2d(t, 3, 2, 1, True), lambda t: TF.avg_pool2d(t, 3, 2, 1, True)),
        (lambda t: cnnops.F.adaptive_avg_pool2d(t, (3, None)), lambda t: TF.adaptive_avg_pool2d(t, (3, None))),
        (lambda t: cnnops.F.adaptive_max_pool2d(t, 4, True), lambda t: TF.adaptive_max_pool2d(t, 4, True)),
    ]:
        xr = x.clone().requires_grad_(True)
        out, ref = f(xr), f_ref(x)
        out = out if isinstance(out, tuple) else (out,)
        ref = ref if isinstance(ref, tuple) else (ref,)
        for a, b in zip(out, ref):
            assert a.shape == b.shape and a.stride() == b.stride()
            torch.testing.assert_close(a, b)
        out[0].sum().backward()
        assert xr.grad.shape == x.shape
    g = cnnops.nn.GlobalAvgPool2d()(x)
    assert g.shape == x.shape[:-2] + (1, 1)


def test_unbatched_channels_last_like_input_gives_contiguous_output():
    x = torch.randn(9, 10, 4).permute(2, 0, 1)  # (C, H, W) with channels innermost
    out = cnnops.F.max_pool2d(x, 2)
    ref = TF.max_pool2d(x, 2)
    assert out.stride() == ref.stride()
    torch.testing.assert_close(out, ref)


# ---------------------------------------------------------------- hypothesis

@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_max_avg_pool2d_hypothesis(data):
    kh, kw = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    sh, sw = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    ph, pw = data.draw(st.integers(0, kh // 2)), data.draw(st.integers(0, kw // 2))
    dh, dw = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    ceil = data.draw(st.booleans())
    h, w = data.draw(st.integers(1, 13)), data.draw(st.integers(1, 35))
    n, c = data.draw(st.integers(0, 2)), data.draw(st.sampled_from([1, 3, 17]))
    layout = data.draw(st.sampled_from(LAYOUTS))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    kind = data.draw(st.sampled_from(["randn", "ties", "nan"]))
    scalar = data.draw(st.booleans())
    x = make_input((n, c, h, w), dtype, "cpu", layout, kind=kind, seed=data.draw(st.integers(0, 100)))
    k, s, p, d = (kh, kw), (sh, sw), (ph, pw), (dh, dw)
    oh, ow = (pool_output_size(h, k[0], s[0], p[0], d[0], ceil), pool_output_size(w, k[1], s[1], p[1], d[1], ceil))
    if oh < 1 or ow < 1:
        with pytest.raises(ValueError, match="expected the output size to be at least 1 x 1"):
            cnnops.F.max_pool2d(x, k, s, p, d, ceil)
        with pytest.raises(RuntimeError):
            TF.max_pool2d(x, k, s, p, d, ceil)
        return
    with env("CNNOPS_POOL_SCALAR", "1" if scalar else "0"):
        grad = make_input((n, c, oh, ow), dtype, seed=5)
        valid = valid_windows((n, c, h, w), k, s, p, d, ceil)
        # torch's backward writes outside the plane for a window of padding only: no reference gradient then
        (ref, ref_idx), ref_grad = reference(lambda t: TF.max_pool2d(t, k, s, p, d, ceil, return_indices=True), x,
                                             grad if valid.all() else None)
        (out, idx), g = run(lambda t: cnnops.F.max_pool2d(t, k, s, p, d, ceil, return_indices=True), x, grad)
        assert_close(out, ref, torch.float64)
        torch.testing.assert_close(idx[valid], ref_idx[valid])
        assert (idx[~valid] == -1).all()
        if valid.all():
            assert_close(g, ref_grad, dtype)
        if kind != "nan":
            cip, dov = data.draw(st.booleans()), data.draw(st.sampled_from([None, None, 1, 5, -3]))
            grad = make_input(tuple(TF.avg_pool2d(x, k, s, p, ceil, cip, dov).shape), dtype, seed=6)
            ref, ref_grad = reference(lambda t: TF.avg_pool2d(t, k, s, p, ceil, cip, dov), x, grad)
            out, g = run(lambda t: cnnops.F.avg_pool2d(t, k, s, p, ceil, cip, dov), x, grad)
            assert_close(out, ref, dtype)
            assert_close(g, ref_grad, dtype)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_adaptive_pool2d_hypothesis(data):
    h, w = data.draw(st.integers(1, 20)), data.draw(st.integers(1, 20))
    oh = data.draw(st.integers(0, h + 4))
    ow = data.draw(st.one_of(st.none(), st.integers(1, w + 4)))
    layout = data.draw(st.sampled_from(LAYOUTS))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
    scalar = data.draw(st.booleans())
    x = make_input((2, data.draw(st.sampled_from([1, 5, 40])), h, w), dtype, "cpu", layout,
                   kind=data.draw(st.sampled_from(["randn", "ties", "nan"])), seed=data.draw(st.integers(0, 50)))
    with env("CNNOPS_POOL_SCALAR", "1" if scalar else "0"):
        (ref, ref_idx), _ = reference(lambda t: TF.adaptive_max_pool2d(t, (oh, ow), True), x)
        out, idx = cnnops.F.adaptive_max_pool2d(x, (oh, ow), True)
        assert_close(out, ref, torch.float64)
        torch.testing.assert_close(idx, ref_idx)
        ref, _ = reference(lambda t: TF.adaptive_avg_pool2d(t, (oh, ow)), x)
        assert_close(cnnops.F.adaptive_avg_pool2d(x, (oh, ow)), ref, dtype)


# ---------------------------------------------------------------- the shared window math

def test_inverse_windows_are_exact():
    """pool_output_range / adaptive_output_range (used by every backward gather) invert the
    forward windows: checked through the backward of one-hot gradients."""
    for (h, k, s, p, d, ceil) in [(11, 3, 2, 1, 1, True), (10, 4, 3, 2, 2, False), (7, 2, 1, 1, 3, True)]:
        x = torch.arange(h * h, dtype=torch.float64).reshape(1, 1, h, h).requires_grad_(True)
        out, idx = cnnops.F.max_pool2d(x, k, s, p, d, ceil, return_indices=True)
        out.backward(torch.ones_like(out))
        counts = torch.zeros(h * h, dtype=torch.float64).index_add_(0, idx.flatten()[idx.flatten() >= 0],
                                                                    torch.ones(int((idx >= 0).sum()), dtype=torch.float64))
        torch.testing.assert_close(x.grad.flatten(), counts)


# ---------------------------------------------------------------- gradcheck, opcheck

@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_float64(device):
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64, device=device, requires_grad=True)
    xcl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    fns = [
        lambda t: cnnops.F.max_pool2d(t, 3, 2, 1, ceil_mode=True),
        lambda t: cnnops.F.max_pool2d(t, (2, 3), (1, 2), (1, 1), (2, 1)),
        lambda t: cnnops.F.avg_pool2d(t, 3, 2, 1, True, False),
        lambda t: cnnops.F.avg_pool2d(t, 3, 2, 1, True, True, 5),
        lambda t: cnnops.F.adaptive_avg_pool2d(t, (3, 5)),
        lambda t: cnnops.F.adaptive_max_pool2d(t, (3, 5)),
        lambda t: cnnops.nn.GlobalAvgPool2d()(t),
        lambda t: cnnops.nn.GlobalMaxPool2d()(t),
    ]
    for f in fns:
        for inp in (x, xcl):
            assert torch.autograd.gradcheck(f, (inp,))
            assert torch.autograd.gradgradcheck(f, (inp,))


def _opcheck_cases(device):
    x = torch.randn(2, 3, 9, 10, device=device, requires_grad=True)
    xcl = torch.randn(2, 3, 9, 10, device=device).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    out, idx = ops.max_pool2d(x.detach(), [3, 3], [2, 2], [1, 1], [1, 1], True, True)
    aout, aidx = ops.adaptive_max_pool2d(xcl.detach(), [4, 3])
    go = torch.randn_like(out).requires_grad_(True)
    ago = torch.randn_like(aout).requires_grad_(True)
    avg_go = torch.randn(2, 3, 5, 6, device=device, requires_grad=True)
    return [
        (ops.max_pool2d.default, (x, [3, 3], [2, 2], [1, 1], [1, 1], True, True)),
        (ops.max_pool2d.default, (xcl, [2, 3], [1, 2], [1, 1], [2, 1], False, True)),
        (ops.max_pool2d.default, (x, [3, 3], [2, 2], [1, 1], [1, 1], False, False)),
        (ops.max_pool2d_backward.default, (go, idx, [2, 3, 9, 10], [3, 3], [2, 2], [1, 1], [1, 1], True, False)),
        (ops.avg_pool2d.default, (x, [3, 3], [2, 2], [1, 1], True, False, None)),
        (ops.avg_pool2d.default, (xcl, [2, 2], [2, 2], [0, 0], False, True, 3)),
        (ops.avg_pool2d_backward.default, (avg_go, [2, 3, 9, 10], [3, 3], [2, 2], [1, 1], True, False, None, True)),
        (ops.adaptive_avg_pool2d.default, (x, [4, 3])),
        (ops.adaptive_avg_pool2d.default, (xcl, [1, 1])),
        (ops.adaptive_avg_pool2d_backward.default, (ago, [2, 3, 9, 10], True)),
        (ops.adaptive_max_pool2d.default, (xcl, [4, 3])),
        (ops.adaptive_max_pool2d.default, (x, [1, 1])),
        (ops.adaptive_max_pool2d_backward.default, (ago, aidx, [2, 3, 9, 10], True)),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for op, args in _opcheck_cases(device):
        torch.library.opcheck(op, args)


_LINEAR_PAIRS = [
    (lambda a: cnnops.F.max_pool2d(a, 3, 2, 1, 2, True), lambda a: TF.max_pool2d(a, 3, 2, 1, 2, True)),
    (lambda a: cnnops.F.avg_pool2d(a, 3, 2, 1, True, False), lambda a: TF.avg_pool2d(a, 3, 2, 1, True, False)),
    (lambda a: cnnops.F.adaptive_avg_pool2d(a, (4, None)), lambda a: TF.adaptive_avg_pool2d(a, (4, None))),
    (lambda a: cnnops.F.adaptive_max_pool2d(a, (4, 3)), lambda a: TF.adaptive_max_pool2d(a, (4, 3))),
    (lambda a: cnnops.nn.GlobalMaxPool2d()(a), lambda a: TF.adaptive_max_pool2d(a, 1)),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(2, 3, 9, 8), (3, 9, 8)], ids=["batched", "unbatched"])
def test_forward_mode_ad_and_vmap(device, shape):
    """Custom ops drop forward-mode tangents silently; the functional wrappers compute them."""
    import torch.autograd.forward_ad as fwAD
    x = torch.randn(shape, dtype=torch.float64, device=device)
    t = torch.randn_like(x)
    for ours, theirs in _LINEAR_PAIRS:
        results = []
        for fn in (ours, theirs):
            with fwAD.dual_level():
                y = fn(fwAD.make_dual(x, t))
                results.append(fwAD.unpack_dual(y))
        torch.testing.assert_close(results[0].primal, results[1].primal)
        torch.testing.assert_close(results[0].tangent, results[1].tangent)
        _, jo = torch.func.jvp(ours, (x,), (t,))
        torch.testing.assert_close(jo, results[1].tangent)
        xb = torch.stack([x, 2 * x])
        torch.testing.assert_close(torch.vmap(ours)(xb), torch.stack([theirs(x), theirs(2 * x)]))


# ---------------------------------------------------------------- modules and torch.compile

def _modules():
    return [
        (cnnops.nn.MaxPool2d(3, 2, 1), torch.nn.MaxPool2d(3, 2, 1)),
        (cnnops.nn.MaxPool2d(3, 2, ceil_mode=True, return_indices=True), torch.nn.MaxPool2d(3, 2, ceil_mode=True, return_indices=True)),
        (cnnops.nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
         torch.nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)),
        (cnnops.nn.AdaptiveAvgPool2d((5, None)), torch.nn.AdaptiveAvgPool2d((5, None))),
        (cnnops.nn.AdaptiveMaxPool2d(3), torch.nn.AdaptiveMaxPool2d(3)),
        (cnnops.nn.GlobalAvgPool2d(), torch.nn.AdaptiveAvgPool2d(1)),
        (cnnops.nn.GlobalMaxPool2d(), torch.nn.AdaptiveMaxPool2d(1)),
    ]


def test_modules_match_torch_modules():
    for ours, theirs in _modules():
        if not isinstance(ours, (cnnops.nn.GlobalAvgPool2d, cnnops.nn.GlobalMaxPool2d)):
            assert isinstance(ours, type(theirs))
            assert ours.extra_repr() == theirs.extra_repr()
            assert ours.state_dict().keys() == theirs.state_dict().keys()
        x = torch.randn(2, 4, 11, 12)
        a, b = ours(x), theirs(x)
        a, b = (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))
        for u, v in zip(a, b):
            torch.testing.assert_close(u, v)


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph_aot_eager(device):
    torch._dynamo.reset()
    for ours, _ in _modules():
        x = torch.randn(2, 4, 11, 12, device=device).contiguous(memory_format=torch.channels_last)
        compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
        xe, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ye, yc = ours(xe), compiled(xc)
        ye, yc = (ye if isinstance(ye, tuple) else (ye,)), (yc if isinstance(yc, tuple) else (yc,))
        for a, b in zip(ye, yc):
            torch.testing.assert_close(a, b)
            assert a.stride() == b.stride()
        g = torch.randn_like(ye[0])
        ye[0].backward(g)
        yc[0].backward(g)
        torch.testing.assert_close(xe.grad, xc.grad)


# ---------------------------------------------------------------- determinism

@pytest.mark.parametrize("device", DEVICES)
def test_backward_deterministic(device):
    """No atomics anywhere: deterministic mode needs nothing, and results are bitwise stable."""
    x = torch.randn(4, 16, 33, 35, device=device)
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        grads = []
        for _ in range(2):
            xr = x.clone().requires_grad_(True)
            y = (cnnops.F.max_pool2d(xr, 3, 1, 1).sum() + cnnops.F.avg_pool2d(xr, 3, 2, 1).pow(2).sum()
                 + cnnops.F.adaptive_avg_pool2d(xr, 5).sum() + cnnops.F.adaptive_max_pool2d(xr, 7).sum())
            y.backward()
            grads.append(xr.grad)
        assert torch.equal(grads[0], grads[1])
    finally:
        torch.use_deterministic_algorithms(old)


# ---------------------------------------------------------------- bad input

BAD = [  # function, args, kwargs, message fragment
    (cnnops.F.max_pool2d, (0,), {}, "expected kernel_size to be two integers >= 1, got (0, 0)"),
    (cnnops.F.max_pool2d, ((2, -1),), {}, "expected kernel_size to be two integers >= 1, got (2, -1)"),
    (cnnops.F.max_pool2d, (2,), {"stride": 0}, "expected stride to be two integers >= 1, got (0, 0)"),
    (cnnops.F.max_pool2d, (2,), {"stride": -1}, "expected stride to be two integers >= 1, got (-1, -1)"),
    (cnnops.F.max_pool2d, (2,), {"dilation": 0}, "expected dilation to be two integers >= 1, got (0, 0)"),
    (cnnops.F.max_pool2d, (3,), {"padding": -1}, "expected padding to be two integers >= 0, got (-1, -1)"),
    (cnnops.F.max_pool2d, (3,), {"padding": 2}, "expected padding to be at most half of kernel_size (padding <= "
                                               "kernel_size // 2), got padding (2, 2) for kernel_size (3, 3)"),
    (cnnops.F.max_pool2d, (2,), {"padding": 1, "dilation": 3}, None),  # fine: pad checks the undilated kernel
    (cnnops.F.max_pool2d, (9,), {}, "expected the output size to be at least 1 x 1, got 0 x 0 for input size 7 x 8"),
    (cnnops.F.avg_pool2d, (3,), {"padding": 2}, "expected padding to be at most half of kernel_size"),
    (cnnops.F.avg_pool2d, (2,), {"divisor_override": 0}, "expected divisor_override to be non-zero or None, got 0"),
    (cnnops.F.avg_pool2d, (2,), {"stride": 0}, "expected stride to be two integers >= 1"),
    (cnnops.F.avg_pool2d, (20,), {}, "expected the output size to be at least 1 x 1"),
    (cnnops.F.adaptive_avg_pool2d, ((-1, 2),), {}, "expected output_size to be two integers >= 0, got (-1, 2)"),
    (cnnops.F.adaptive_max_pool2d, (-3,), {}, "expected output_size to be two integers >= 0, got (-3, -3)"),
]


@pytest.mark.parametrize("device", ["cpu", "meta", pytest.param("cuda", marks=cuda_only)])
@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_arguments(device, case):
    """The C++ checks and the fake kernels (meta device) raise the same ValueError."""
    fn, args, kwargs, message = BAD[case]
    x = torch.randn(2, 3, 7, 8, device=device)
    if message is None:
        fn(x, *args, **kwargs)
        return
    with pytest.raises(ValueError) as info:
        fn(x, *args, **kwargs)
    text = str(info.value).split("\n")[0]
    assert message in text
    assert text.startswith("cnnops.")


def test_bad_arguments_same_message_cpu_and_meta():
    for fn, args, kwargs, message in BAD:
        if message is None:
            continue
        texts = []
        for device in ("cpu", "meta"):
            with pytest.raises(ValueError) as info:
                fn(torch.randn(2, 3, 7, 8, device=device), *args, **kwargs)
            texts.append(str(info.value).split("\n")[0])
        assert texts[0] == texts[1]


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_bad_input_rank_and_sizes(device):
    for fn in (lambda t: cnnops.F.max_pool2d(t, 2), lambda t: cnnops.F.avg_pool2d(t, 2),
               lambda t: cnnops.F.adaptive_avg_pool2d(t, 2), lambda t: cnnops.F.adaptive_max_pool2d(t, 2)):
        with pytest.raises(ValueError, match=r"expected input to be 3-D \(C, H, W\) or 4-D \(N, C, H, W\), got shape \(4, 4\)"):
            fn(torch.randn(4, 4, device=device))
        with pytest.raises(ValueError, match=r"expected input to be 3-D .* got shape \(1, 1, 1, 4, 4\)"):
            fn(torch.randn(1, 1, 1, 4, 4, device=device))
        with pytest.raises(ValueError, match=r"expected input to have non-zero channels, height and width, got shape \(2, 0, 4, 4\)"):
            fn(torch.randn(2, 0, 4, 4, device=device))
        with pytest.raises(ValueError, match=r"non-zero channels, height and width, got shape \(1, 0, 4, 4\)"):
            fn(torch.randn(0, 4, 4, device=device))


def test_bad_backward_arguments():
    go = torch.randn(2, 3, 4, 4)
    idx = torch.zeros(2, 3, 4, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"expected grad_output to have shape \(2, 3, 4, 4\), got \(2, 3, 4, 5\)"):
        ops.max_pool2d_backward(torch.randn(2, 3, 4, 5), idx, [2, 3, 8, 8], [2, 2], [2, 2], [0, 0], [1, 1], False, False)
    with pytest.raises(TypeError, match="expected indices to have dtype int64, got int32"):
        ops.max_pool2d_backward(go, idx.int(), [2, 3, 8, 8], [2, 2], [2, 2], [0, 0], [1, 1], False, False)
    with pytest.raises(ValueError, match="expected indices to have the shape of grad_output"):
        ops.adaptive_max_pool2d_backward(go, idx[:, :, :2], [2, 3, 8, 8], False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.int64])
def test_unsupported_dtype(dtype):
    x = torch.ones(1, 2, 4, 4, dtype=dtype)
    with pytest.raises(NotImplementedError, match=f"cnnops.max_pool2d: dtype {str(dtype)[6:]} on device cpu is not supported"):
        cnnops.F.max_pool2d(x, 2)
    with pytest.raises(NotImplementedError, match="cnnops.adaptive_avg_pool2d: dtype"):
        cnnops.F.adaptive_avg_pool2d(x, 2)


def test_output_size_rule_matches_torch():
    """pool_output_size (the Python mirror of the C++ rule) against torch's shapes."""
    for h in range(1, 12):
        for k in range(1, 6):
            for s in range(1, 4):
                for p in range(0, k // 2 + 1):
                    for d in (1, 2):
                        for ceil in (False, True):
                            expect = pool_output_size(h, k, s, p, d, ceil)
                            try:
                                got = TF.max_pool2d(torch.zeros(1, 1, h, 1), (k, 1), (s, 1), (p, 0), (d, 1), ceil).shape[2]
                            except RuntimeError:
                                assert expect < 1
                                continue
                            assert got == expect
                            if d == 1:
                                assert TF.avg_pool2d(torch.zeros(1, 1, h, 1), (k, 1), (s, 1), (p, 0), ceil).shape[2] == expect


# ---------------------------------------------------------------- benchmark cases

def test_bench_cases_run_and_are_correct(tmp_path):
    """The pool2d benchmark cases on tiny shapes: every row runs and matches torch."""
    import json

    from cnnops.bench import core
    from cnnops.bench import pool2d as bench_pool2d
    c = bench_pool2d.pool_case
    tiny = [c("max", "max", 1, 3, 12, 12, 3, 2, 1), c("max ceil", "max", 1, 3, 13, 13, 3, 2, 0, ceil_mode=True),
            c("avg", "avg", 1, 3, 8, 8, 2), c("global", "adaptive_avg", 2, 5, 7, 7, output_size=1),
            c("adaptive max", "adaptive_max", 1, 4, 13, 13, output_size=6)]
    assert len(bench_pool2d.cases(quick=False)) >= 12 and len(bench_pool2d.cases(quick=True)) >= 5
    path = tmp_path / "bench.json"
    rc = core.main(["--json", str(path), "--threads", "1", "--no-mallopt", "--busy-retries", "0", "--quick",
                    "--rounds", "1", "--no-roofline"], cases=tiny)
    data = json.loads(path.read_text())
    assert rc == 0 and data["complete"] and len(data["cases"]) == 2 * len(tiny)
    for row in data["cases"]:
        assert row["status"] == "ok" and row["correct"] is True, row
        assert row["bytes"] > 0 and row["cnnops_GBps"] > 0
