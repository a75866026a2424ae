"""layer_norm / layer_norm2d: parity with torch (outputs and gradients), gradcheck,
opcheck, torch.compile, bad input. CUDA cases carry "cuda" in their ids and skip
without a GPU (scripts/gpu_check.sh runs them with -k cuda)."""
import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import cnnops

ops = torch.ops.cnnops
HAS_CUDA = torch.cuda.is_available() and cnnops.build_info()["cuda"]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device or CPU-only build"))]
DTYPES = {"cpu": (torch.float32, torch.float64, torch.bfloat16),
          "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16)}
# Relative error (norm of the difference over norm of the float64 reference) allowed.
REL_TOL = {torch.float64: 1e-10, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}


def device_dtypes():
    for dev in DEVICES:
        name = dev if isinstance(dev, str) else dev.values[0]
        marks = () if isinstance(dev, str) else dev.marks
        for dt in DTYPES[name]:
            yield pytest.param(name, dt, marks=marks, id=f"{name}-{str(dt).replace('torch.', '')}")


def rel_err(a, ref):
    """Norm of the difference over the norm of the reference; references whose RMS is
    below 1e-3 (exact cancellation, e.g. the input gradient of rows of length 1 or 2)
    count as RMS 1e-3: every tensor in these tests is O(1)."""
    a, ref = a.detach().double().cpu(), ref.detach().double().cpu()
    den = max(ref.norm().item(), 1e-3 * max(ref.numel(), 1) ** 0.5)
    return (a - ref).norm().item() / den


def check(a, ref, dtype, what, torch_same=None):
    """a within REL_TOL of the float64 reference, or at most 4x as far from it as torch's
    own result in the same dtype (torch_same), where rounding dominates (rows of length 1,
    whose exact input gradient is 0)."""
    assert a.shape == ref.shape, f"{what}: shape {tuple(a.shape)} vs {tuple(ref.shape)}"
    err = rel_err(a, ref)
    tol = REL_TOL[dtype]
    if torch_same is not None:
        tol = max(tol, 4 * rel_err(torch_same, ref))
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"


class TVLayerNorm2d(torch.nn.LayerNorm):
    """A local copy of torchvision.models.convnext.LayerNorm2d (torchvision is not installed)."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def make(shape, dtype, device, requires_grad=True, scale=2.0, shift=0.5):
    t = (torch.randn(shape, dtype=torch.float64) * scale + shift).to(dtype).to(device)
    return t.requires_grad_(requires_grad)


def _grads(out, leaves, go):
    if out.numel() == 0:
        return [torch.zeros_like(t) for t in leaves]
    return list(torch.autograd.grad(out, leaves, go.to(out.dtype).to(out.device)))


def _run_three(fn, x, w, b, go):
    """fn(x, w, b) on the given tensors, on float64 CPU copies, and on same-dtype copies
    through torch (None where torch lacks the dtype): ((out, *grads), ref, torch_same)."""
    leaves = [t for t in (x, w, b) if t is not None]
    out = fn[0](x, w, b)
    got = (out, *_grads(out, leaves, go))

    def copy(t, **kw):
        return None if t is None else t.detach().to(**kw).requires_grad_()

    results = []
    for kw in (dict(dtype=torch.float64, device="cpu"), {}):
        cx, cw, cb = copy(x, **kw), copy(w, **kw), copy(b, **kw)
        try:
            o = fn[1](cx, cw, cb)
        except RuntimeError:
            results.append(None)
            continue
        results.append((o, *_grads(o, [t for t in (cx, cw, cb) if t is not None], go)))
    return got, results[0], results[1]


def layer_norm_case(x, normalized_shape, w, b, eps=1e-5, grad_seed=1234):
    """cnnops vs torch (float64 reference and same dtype): (got, ref, torch_same), each
    (out, grad_x, grad_w, grad_b) without the absent parameters."""
    go = torch.randn(x.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64)
    fns = (lambda x, w, b: cnnops.F.layer_norm(x, normalized_shape, w, b, eps),
           lambda x, w, b: F.layer_norm(x, normalized_shape, w, b, eps))
    return _run_three(fns, x, w, b, go)


def assert_case(got, ref, dtype, torch_same=None):
    names = ["out", "grad_input", "grad_param", "grad_param2"]
    for i, (g, r, name) in enumerate(zip(got, ref, names)):
        if g.numel() and r.abs().max() < 1e-6:
            # rows of length 1: the exact input and weight gradients are 0 and every
            # implementation returns rounding noise amplified by rstd = eps^-1/2 (torch too)
            diff = (g.detach().double().cpu() - r.detach().double().cpu()).abs().max().item()
            assert diff < (1e-9 if dtype == torch.float64 else 1e-3), name
            continue
        check(g, r, dtype, name, None if torch_same is None else torch_same[i])


# ---------------------------------------------------------------- layer_norm parity

AFFINE = {"wb": (True, True), "w": (True, False), "b": (False, True), "none": (False, False)}


@pytest.mark.parametrize("affine", list(AFFINE))
@pytest.mark.parametrize("n", [1, 3, 7, 768, 1000, 4097])
def test_layer_norm_row_lengths(n, affine):
    torch.manual_seed(n)
    hw, hb = AFFINE[affine]
    x = make((2, 3, n), torch.float32, "cpu")
    w = make((n,), torch.float32, "cpu") if hw else None
    b = make((n,), torch.float32, "cpu") if hb else None
    got, ref, same = layer_norm_case(x, (n,), w, b)
    assert_case(got, ref, torch.float32, same)
    assert got[0].is_contiguous() and got[0].dtype == x.dtype


@pytest.mark.parametrize("device,dtype", list(device_dtypes()))
@pytest.mark.parametrize("shape,normalized_shape", [
    ((4, 768), (768,)), ((2, 3, 4, 5), (4, 5)), ((2, 3, 4, 5), (3, 4, 5)), ((2, 3, 4, 5), (2, 3, 4, 5)),
    ((6,), (6,)), ((3, 65), (65,)), ((5, 1023), (1023,)),
])
def test_layer_norm_dtypes(device, dtype, shape, normalized_shape):
    torch.manual_seed(1)
    x = make(shape, dtype, device)
    w = make(normalized_shape, dtype, device)
    b = make(normalized_shape, dtype, device)
    got, ref, same = layer_norm_case(x, normalized_shape, w, b)
    assert_case(got, ref, dtype, same)
    assert got[0].dtype == dtype and got[2].dtype == dtype


@pytest.mark.parametrize("device,dtype", [p for p in device_dtypes() if p.values[1] in (torch.float16, torch.bfloat16)])
def test_layer_norm_float32_params(device, dtype):
    """Reduced-precision input with float32 weight and bias: output in the input dtype,
    parameter gradients in float32."""
    torch.manual_seed(2)
    x = make((16, 300), dtype, device)
    w = make((300,), torch.float32, device)
    b = make((300,), torch.float32, device)
    got, ref, same = layer_norm_case(x, (300,), w, b)
    assert_case(got, ref, dtype, same)
    assert got[0].dtype == dtype and got[2].dtype == torch.float32 and got[3].dtype == torch.float32
    # and the same rows through layer_norm2d, both memory formats
    for fmt in ("nchw", "channels_last"):
        x4 = as_format(make((2, 300, 2, 4), dtype, device, requires_grad=False), fmt).requires_grad_()
        got, ref, same = layer_norm2d_case(x4, w, b)
        assert_case(got, ref, dtype, same)
        assert got[2].dtype == torch.float32


@pytest.mark.parametrize("device", DEVICES)
def test_layer_norm_non_contiguous(device):
    torch.manual_seed(3)
    base = make((7, 40, 3), torch.float32, device, requires_grad=False)
    x = base.transpose(1, 2).requires_grad_()  # (7, 3, 40), stride 1 over dim 1
    assert not x.is_contiguous()
    w, b = make((40,), torch.float32, device), make((40,), torch.float32, device)
    got, ref, same = layer_norm_case(x, (40,), w, b)
    assert_case(got, ref, torch.float32, same)
    x2 = make((6, 90), torch.float32, device, requires_grad=False)[:, ::3].requires_grad_()
    got, ref, same = layer_norm_case(x2, (30,), None, make((30,), torch.float32, device))
    assert_case(got, ref, torch.float32, same)


@pytest.mark.parametrize("device", DEVICES)
def test_layer_norm_empty(device):
    w, b = make((5,), torch.float32, device), make((5,), torch.float32, device)
    x = make((0, 5), torch.float32, device)
    out = cnnops.F.layer_norm(x, (5,), w, b)
    assert out.shape == (0, 5)
    gx, gw, gb = torch.autograd.grad(out.sum(), (x, w, b))
    assert gx.shape == (0, 5) and torch.equal(gw, torch.zeros_like(w)) and torch.equal(gb, torch.zeros_like(b))
    x = make((3, 0), torch.float32, device)
    out, mean, rstd = ops.layer_norm(x, [0], None, None, 1e-5)
    assert out.shape == (3, 0) and mean.shape == (3, 1) and torch.isfinite(rstd).all()


@pytest.mark.parametrize("device", DEVICES)
def test_long_and_many_rows(device):
    """Rows past 65536 values, and more rows than one launch has blocks (grid-stride)."""
    torch.manual_seed(16)
    for shape in [(2, 70001), ((1 << 20) + 3, 3)]:
        x = make(shape, torch.float32, device)
        w, b = make(shape[1:], torch.float32, device), make(shape[1:], torch.float32, device)
        got, ref, same = layer_norm_case(x, shape[1:], w, b)
        assert_case(got, ref, torch.float32, same)


@pytest.mark.parametrize("device", DEVICES)
def test_backward_deterministic(device):
    """Same inputs, same gradients, bit for bit (no atomics anywhere)."""
    torch.manual_seed(17)
    x, go = make((300, 129), torch.float32, device, False), make((300, 129), torch.float32, device, False)
    x4 = make((4, 40, 9, 11), torch.float32, device, False)
    go4 = make((4, 40, 9, 11), torch.float32, device, False)
    w, w4 = make((129,), torch.float32, device, False), make((40,), torch.float32, device, False)
    runs = []
    for _ in range(2):
        _, mean, rstd = ops.layer_norm(x, [129], w, None, 1e-5)
        r = ops.layer_norm_backward(go, x, [129], mean, rstd, w, w, [True, True, True])
        for t4, g4 in ((x4, go4), (x4.contiguous(memory_format=torch.channels_last), go4.contiguous(memory_format=torch.channels_last))):
            _, mean4, rstd4 = ops.layer_norm2d(t4, w4, None, 1e-6)
            r = r + ops.layer_norm2d_backward(g4, t4, mean4, rstd4, w4, w4, [True, True, True])
        runs.append(r)
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@settings(max_examples=30, deadline=None)
@given(lead=st.lists(st.integers(0, 4), min_size=0, max_size=2),
       norm=st.lists(st.integers(1, 40), min_size=1, max_size=3),
       has_w=st.booleans(), has_b=st.booleans(), eps=st.sampled_from([1e-5, 1e-3, 0.1]),
       seed=st.integers(0, 2**16))
def test_layer_norm_hypothesis(lead, norm, has_w, has_b, eps, seed):
    torch.manual_seed(seed)
    x = make(tuple(lead) + tuple(norm), torch.float64, "cpu")
    w = make(tuple(norm), torch.float64, "cpu") if has_w else None
    b = make(tuple(norm), torch.float64, "cpu") if has_b else None
    got, ref, same = layer_norm_case(x, tuple(norm), w, b, eps)
    assert_case(got, ref, torch.float64, same)
    xf = x.detach().float().requires_grad_()
    got, ref, same = layer_norm_case(xf, tuple(norm), None if w is None else w.detach().float().requires_grad_(),
                               None if b is None else b.detach().float().requires_grad_(), eps)
    assert_case(got, ref, torch.float32, same)


def test_layer_norm_large_offset():
    """Values far from zero (mean 1e3, std 1e-2): one-pass Welford statistics are as good as
    torch's; a sum-of-squares variance would be noise."""
    torch.manual_seed(14)
    x = (torch.randn(4, 4096, dtype=torch.float64) * 1e-2 + 1e3).float()
    ref = F.layer_norm(x.double(), (4096,))
    assert rel_err(cnnops.F.layer_norm(x, (4096,)), ref) <= 2 * rel_err(F.layer_norm(x, (4096,)), ref) + 1e-4
    x4 = x.view(4, 64, 64, 1).transpose(1, 2).contiguous()  # layer_norm2d over 64 channels, both formats
    ref4 = tv_layer_norm2d(x4.double(), None, None, 1e-6)
    for t in (x4, x4.contiguous(memory_format=torch.channels_last)):
        assert rel_err(cnnops.F.layer_norm2d(t), ref4) <= 2 * rel_err(tv_layer_norm2d(t, None, None, 1e-6), ref4) + 1e-4


# ---------------------------------------------------------------- layer_norm2d parity

def tv_layer_norm2d(x, w, b, eps):
    """torchvision's LayerNorm2d.forward with the given parameters."""
    return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), w, b, eps).permute(0, 3, 1, 2)


def layer_norm2d_case(x, w, b, eps=1e-6):
    go = torch.randn(x.shape, generator=torch.Generator().manual_seed(1234), dtype=torch.float64)
    fns = (lambda x, w, b: cnnops.F.layer_norm2d(x, w, b, eps), lambda x, w, b: tv_layer_norm2d(x, w, b, eps))
    return _run_three(fns, x, w, b, go)


FORMATS = ["nchw", "channels_last", "strided"]


def as_format(x, fmt):
    if fmt == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if fmt == "strided":  # every other column of a wider tensor: neither format
        wide = torch.cat([x, x], dim=3).contiguous()
        return wide[:, :, :, ::2]
    return x.contiguous()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("device,dtype", list(device_dtypes()))
@pytest.mark.parametrize("shape", [(2, 5, 3, 7), (2, 96, 9, 11), (1, 33, 20, 41), (2, 1, 4, 4), (3, 7, 1, 1)])
def test_layer_norm2d(shape, device, dtype, fmt):
    torch.manual_seed(4)
    x = as_format(make(shape, dtype, device, requires_grad=False), fmt).requires_grad_()
    w, b = make((shape[1],), dtype, device), make((shape[1],), dtype, device)
    got, ref, same = layer_norm2d_case(x, w, b)
    assert_case(got, ref, dtype, same)
    want_cl = fmt == "channels_last" and not x.is_contiguous()
    fmt_out = torch.channels_last if want_cl else torch.contiguous_format
    assert got[0].is_contiguous(memory_format=fmt_out), "output keeps the input's memory format"
    assert got[1].is_contiguous(memory_format=fmt_out) or got[1].is_contiguous()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_layer_norm2d_many_tiles(dtype):
    """NCHW images wider than one CPU tile (the tile width shrinks as C grows): several
    tiles per image and a partial last tile, forward and backward."""
    torch.manual_seed(19)
    x = make((2, 512, 20, 23), dtype, "cpu")
    w, b = make((512,), dtype, "cpu"), make((512,), dtype, "cpu")
    got, ref, same = layer_norm2d_case(x, w, b)
    assert_case(got, ref, dtype, same)


@pytest.mark.parametrize("affine", list(AFFINE))
@pytest.mark.parametrize("fmt", ["nchw", "channels_last"])
def test_layer_norm2d_affine(affine, fmt):
    torch.manual_seed(5)
    hw, hb = AFFINE[affine]
    x = as_format(make((2, 24, 5, 6), torch.float32, "cpu", requires_grad=False), fmt).requires_grad_()
    w = make((24,), torch.float32, "cpu") if hw else None
    b = make((24,), torch.float32, "cpu") if hb else None
    got, ref, same = layer_norm2d_case(x, w, b)
    assert_case(got, ref, torch.float32, same)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(0, 3), c=st.integers(1, 70), h=st.integers(1, 9), w=st.integers(1, 40),
       channels_last=st.booleans(), seed=st.integers(0, 2**16))
def test_layer_norm2d_hypothesis(n, c, h, w, channels_last, seed):
    torch.manual_seed(seed)
    x = as_format(make((n, c, h, w), torch.float64, "cpu", requires_grad=False),
                  "channels_last" if channels_last else "nchw").requires_grad_()
    got, ref, same = layer_norm2d_case(x, make((c,), torch.float64, "cpu"), make((c,), torch.float64, "cpu"))
    if n == 0:
        assert got[0].shape == ref[0].shape
        return
    assert_case(got, ref, torch.float64, same)


def test_layer_norm2d_module_state_dict():
    """LayerNorm2d loads torchvision's ConvNeXt LayerNorm2d state_dict and vice versa."""
    torch.manual_seed(6)
    tv = TVLayerNorm2d(96, eps=1e-6)
    with torch.no_grad():
        tv.weight.normal_()
        tv.bias.normal_()
    mod = cnnops.nn.LayerNorm2d(96)
    assert isinstance(mod, torch.nn.LayerNorm)
    assert set(mod.state_dict()) == {"weight", "bias"} == set(tv.state_dict())
    assert mod.weight.shape == (96,) and mod.bias.shape == (96,) and mod.eps == 1e-6
    mod.load_state_dict(tv.state_dict())
    x = torch.randn(2, 96, 7, 5)
    torch.testing.assert_close(mod(x), tv(x), atol=2e-5, rtol=1e-5)
    xc = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(mod(xc), tv(xc), atol=2e-5, rtol=1e-5)
    tv2 = TVLayerNorm2d(96, eps=1e-6)
    tv2.load_state_dict(mod.state_dict())
    assert cnnops.nn.LayerNorm2d(8, elementwise_affine=False).weight is None
    assert "eps=1e-06" in repr(mod)


def test_layer_norm_module():
    torch.manual_seed(7)
    for kwargs in ({}, {"elementwise_affine": False}, {"bias": False}, {"eps": 1e-3}):
        ref = torch.nn.LayerNorm((4, 6), **kwargs)
        mod = cnnops.nn.LayerNorm((4, 6), **kwargs)
        assert list(mod.state_dict()) == list(ref.state_dict())
        mod.load_state_dict(ref.state_dict())
        if ref.weight is not None:
            with torch.no_grad():
                ref.weight.normal_()
            mod.load_state_dict(ref.state_dict())
        x = torch.randn(3, 4, 6)
        torch.testing.assert_close(mod(x), ref(x), atol=1e-5, rtol=1e-5)
        assert repr(mod).replace("cnnops.nn.", "") .startswith("LayerNorm(")


def test_autograd_functions():
    torch.manual_seed(8)
    x = torch.randn(3, 10, dtype=torch.float64, requires_grad=True)
    w = torch.randn(10, dtype=torch.float64, requires_grad=True)
    b = torch.randn(10, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: cnnops.F.LayerNormFunction.apply(x, 10, w, b, 1e-5), (x, w, b))
    x4 = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    w4 = torch.randn(4, dtype=torch.float64, requires_grad=True)
    b4 = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: cnnops.F.LayerNorm2dFunction.apply(x, w, b, 1e-6), (x4, w4, b4))
    out = cnnops.F.LayerNormFunction.apply(x, [10])
    torch.testing.assert_close(out, F.layer_norm(x, [10]))


def test_forward_ad_and_func_transforms():
    """Forward-mode AD and torch.func transforms run the torch composite (the
    register_autograd machinery supports neither): same results as torch, not a dropped
    tangent or an error."""
    import torch.autograd.forward_ad as fwAD
    torch.manual_seed(18)
    x = torch.randn(3, 4, 8, dtype=torch.float64)
    w, b = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    x4 = torch.randn(2, 8, 3, 5, dtype=torch.float64)
    tan = torch.randn_like(x)
    for fn, ref, inp in ((lambda t: cnnops.F.layer_norm(t, (8,), w, b), lambda t: F.layer_norm(t, (8,), w, b), x),
                         (lambda t: cnnops.F.layer_norm2d(t, w, b), lambda t: tv_layer_norm2d(t, w, b, 1e-6), x4)):
        tan = torch.randn_like(inp)
        with fwAD.dual_level():
            got = fwAD.unpack_dual(fn(fwAD.make_dual(inp, tan))).tangent
            want = fwAD.unpack_dual(ref(fwAD.make_dual(inp, tan))).tangent
        assert got is not None
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(torch.func.grad(lambda t: fn(t).square().sum())(inp),
                                   torch.func.grad(lambda t: ref(t).square().sum())(inp))
        torch.testing.assert_close(torch.vmap(fn)(inp.unsqueeze(1)).squeeze(1), ref(inp))
    with pytest.raises(ValueError, match="4-D"):
        torch.func.grad(lambda t: cnnops.F.layer_norm2d(t).sum())(x)


# ---------------------------------------------------------------- gradcheck, opcheck, compile

@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_layer_norm(device):
    torch.manual_seed(9)
    x = make((3, 2, 5), torch.float64, device)
    w, b = make((2, 5), torch.float64, device), make((2, 5), torch.float64, device)
    fn = lambda x, w, b: cnnops.F.layer_norm(x, (2, 5), w, b, 1e-3)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))
    fn1 = lambda x, b: cnnops.F.layer_norm(x, (2, 5), None, b, 1e-3)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn1, (x, b))


@pytest.mark.parametrize("fmt", ["nchw", "channels_last"])
@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_layer_norm2d(device, fmt):
    torch.manual_seed(10)
    x = as_format(make((2, 4, 3, 2), torch.float64, device, requires_grad=False), fmt).requires_grad_()
    w, b = make((4,), torch.float64, device), make((4,), torch.float64, device)
    fn = lambda x, w, b: cnnops.F.layer_norm2d(x, w, b, 1e-3)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    torch.manual_seed(11)
    x = make((3, 4, 6), torch.float32, device)
    w, b = make((6,), torch.float32, device), make((6,), torch.float32, device)
    torch.library.opcheck(ops.layer_norm, (x, [6], w, b, 1e-5))
    torch.library.opcheck(ops.layer_norm, (x, [4, 6], None, None, 1e-5))
    out, mean, rstd = ops.layer_norm(x.detach(), [6], w.detach(), b.detach(), 1e-5)
    go = make(out.shape, torch.float32, device)
    for mask in ([True, True, True], [True, False, False], [False, True, True]):
        torch.library.opcheck(ops.layer_norm_backward, (go, x, [6], mean, rstd, w, b, mask))
    torch.library.opcheck(ops.layer_norm_backward, (go, x, [6], mean, rstd, None, None, [True, False, False]))

    for fmt in ("nchw", "channels_last"):
        x4 = as_format(make((2, 5, 3, 4), torch.float32, device, requires_grad=False), fmt).requires_grad_()
        w4, b4 = make((5,), torch.float32, device), make((5,), torch.float32, device)
        torch.library.opcheck(ops.layer_norm2d, (x4, w4, b4, 1e-6))
        out4, mean4, rstd4 = ops.layer_norm2d(x4.detach(), w4.detach(), b4.detach(), 1e-6)
        go4 = make(out4.shape, torch.float32, device).detach().contiguous(memory_format=torch.channels_last if fmt != "nchw" else torch.contiguous_format).requires_grad_()
        for mask in ([True, True, True], [False, True, False]):
            torch.library.opcheck(ops.layer_norm2d_backward, (go4, x4, mean4, rstd4, w4, b4, mask))
    torch.library.opcheck(ops.layer_norm2d, (x4.detach(), None, None, 1e-6))


@pytest.mark.parametrize("device", DEVICES)
def test_compile_modules(device):
    torch._dynamo.reset()
    torch.manual_seed(12)
    ln = cnnops.nn.LayerNorm(32).to(device)
    ln2d = cnnops.nn.LayerNorm2d(16).to(device)
    x = torch.randn(4, 7, 32, device=device, requires_grad=True)
    x4 = torch.randn(2, 16, 5, 6, device=device, requires_grad=True)
    for mod, inp, ref_fn in ((ln, x, lambda t: F.layer_norm(t, (32,), ln.weight, ln.bias, ln.eps)),
                             (ln2d, x4, lambda t: TVLayerNorm2d(16, eps=1e-6).to(device)(t))):
        compiled = torch.compile(mod, fullgraph=True, backend="aot_eager")
        out = compiled(inp)
        out.square().sum().backward()
        g_compiled = inp.grad.clone()
        inp.grad = None
        w_grad = mod.weight.grad.clone()
        mod.zero_grad()
        ref = mod(inp)
        ref.square().sum().backward()
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(g_compiled, inp.grad)
        torch.testing.assert_close(w_grad, mod.weight.grad)
        inp.grad = None
        mod.zero_grad()
    torch.testing.assert_close(ln2d(x4), TVLayerNorm2d(16, eps=1e-6).to(device)(x4), atol=1e-5, rtol=1e-5)


def test_meta_shapes():
    x = torch.empty(2, 3, 8, device="meta")
    out, mean, rstd = ops.layer_norm(x, [3, 8], None, None, 1e-5)
    assert out.shape == (2, 3, 8) and mean.shape == (2, 1, 1) and mean.dtype == torch.float32
    x4 = torch.empty(2, 3, 4, 5, device="meta", dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    out, mean, rstd = ops.layer_norm2d(x4, None, None, 1e-6)
    assert out.is_contiguous(memory_format=torch.channels_last) and mean.shape == (2, 1, 4, 5) and rstd.dtype == torch.float64


# ---------------------------------------------------------------- determinism, threads, autocast

def test_param_grads_reproducible_across_threads():
    torch.manual_seed(13)
    x, go = torch.randn(333, 77), torch.randn(333, 77)
    x4, go4 = torch.randn(3, 40, 17, 19), torch.randn(3, 40, 17, 19)
    w, w4 = torch.randn(77), torch.randn(40)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            _, mean, rstd = ops.layer_norm(x, [77], w, None, 1e-5)
            r1 = ops.layer_norm_backward(go, x, [77], mean, rstd, w, w, [True, True, True])
            _, mean4, rstd4 = ops.layer_norm2d(x4, w4, None, 1e-6)
            r2 = ops.layer_norm2d_backward(go4, x4, mean4, rstd4, w4, w4, [True, True, True])
            results.append(r1 + r2)
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_autocast_cpu_matches_torch():
    x = torch.randn(4, 16, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cnnops.F.layer_norm(x, (16,)).dtype == F.layer_norm(x, (16,)).dtype
        xf = x.float()
        assert cnnops.F.layer_norm(xf, (16,)).dtype == F.layer_norm(xf, (16,)).dtype


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_autocast_cuda_matches_torch():
    x = torch.randn(4, 16, device="cuda", dtype=torch.float16)
    w = torch.randn(16, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        assert cnnops.F.layer_norm(x, (16,), w).dtype == F.layer_norm(x, (16,), w).dtype == torch.float32
        x4 = torch.randn(2, 16, 3, 3, device="cuda", dtype=torch.float16)
        assert cnnops.F.layer_norm2d(x4, w).dtype == torch.float32


# ---------------------------------------------------------------- bad input

def _bad_cases(d):
    f32 = dict(device=d)
    x = torch.randn(2, 3, 4, **f32) if d != "meta" else torch.empty(2, 3, 4, device=d)
    x4 = torch.empty(2, 3, 4, 5, device=d)
    mean = torch.empty(2, 3, 1, device=d)
    yield (lambda: ops.layer_norm(x, [5], None, None, 1e-5), ValueError,
           "cnnops.layer_norm: expected the trailing dimensions of input to equal normalized_shape (5,), got input shape (2, 3, 4)")
    yield (lambda: ops.layer_norm(x, [1, 2, 3, 4], None, None, 1e-5), ValueError,
           "cnnops.layer_norm: expected the trailing dimensions of input to equal normalized_shape (1, 2, 3, 4), got input shape (2, 3, 4)")
    yield (lambda: ops.layer_norm(x, [], None, None, 1e-5), ValueError,
           "cnnops.layer_norm: expected normalized_shape to have at least one dimension, got ()")
    yield (lambda: ops.layer_norm(x, [3, 4], torch.empty(4, 3, device=d), None, 1e-5), ValueError,
           "cnnops.layer_norm: expected weight to have shape (3, 4) (normalized_shape), got shape (4, 3)")
    yield (lambda: ops.layer_norm(x, [4], None, torch.empty(5, device=d), 1e-5), ValueError,
           "cnnops.layer_norm: expected bias to have shape (4,) (normalized_shape), got shape (5,)")
    yield (lambda: ops.layer_norm(x, [4], torch.empty(4, device=d, dtype=torch.float64), None, 1e-5), TypeError,
           "cnnops.layer_norm: expected weight to have the same dtype as input (float32), got float64")
    yield (lambda: ops.layer_norm(x.to(torch.bfloat16), [4], torch.empty(4, device=d), torch.empty(4, device=d, dtype=torch.bfloat16), 1e-5),
           TypeError, "cnnops.layer_norm: expected bias to have the same dtype as weight (float32), got bfloat16")
    yield (lambda: ops.layer_norm(x.to(torch.int64), [4], None, None, 1e-5), NotImplementedError,
           f"cnnops.layer_norm: dtype int64 on device {x.device} is not supported; supported: ")
    yield (lambda: ops.layer_norm2d(x, None, None, 1e-6), ValueError,
           "cnnops.layer_norm2d: expected input to be a 4-D tensor (N, C, H, W), got shape (2, 3, 4)")
    yield (lambda: ops.layer_norm2d(x4, torch.empty(4, device=d), None, 1e-6), ValueError,
           "cnnops.layer_norm2d: expected weight to have shape (3,) (num_channels), got shape (4,)")
    yield (lambda: ops.layer_norm_backward(torch.empty(2, 3, 5, device=d), x, [4], mean, mean, None, None, [True, False, False]),
           ValueError, "cnnops.layer_norm_backward: expected grad_out to have the same shape as input (2, 3, 4), got (2, 3, 5)")
    yield (lambda: ops.layer_norm_backward(x, x, [4], mean.double(), mean, None, None, [True, False, False]),
           TypeError, "cnnops.layer_norm_backward: expected mean to have dtype float32, got float64")
    yield (lambda: ops.layer_norm_backward(x, x, [4], mean, mean[:1], None, None, [True, False, False]),
           ValueError, "cnnops.layer_norm_backward: expected rstd to have 6 elements (one per normalized row), got shape (1, 3, 1)")
    yield (lambda: ops.layer_norm2d_backward(x4, x4, torch.empty(2, 1, 4, 5, device=d), torch.empty(2, 1, 4, 5, device=d),
                                             None, torch.empty(3, device=d, dtype=torch.float64), [True, True, True]),
           TypeError, "cnnops.layer_norm2d_backward: expected bias to have the same dtype as input (float32), got float64")


@pytest.mark.parametrize("index", range(len(list(_bad_cases("cpu")))))
@pytest.mark.parametrize("device", ["cpu", "meta"] + DEVICES[1:])
def test_bad_input(device, index):
    """The C++ kernels and the fake (meta) kernels raise the same error type and message."""
    fn, exc, msg = list(_bad_cases(device))[index]
    with pytest.raises(exc, match="^" + re.escape(msg)):
        fn()


def test_bad_input_functional():
    with pytest.raises(NotImplementedError, match=re.escape(
            "cnnops.layer_norm: dtype float16 on device cpu is not supported; supported: float32, float64, bfloat16")):
        cnnops.F.layer_norm(torch.randn(2, 4).half(), (4,))
    with pytest.raises(ValueError, match=re.escape("cnnops.layer_norm2d: expected input to be a 4-D tensor (N, C, H, W), got shape (3, 4, 5)")):
        cnnops.nn.LayerNorm2d(3)(torch.randn(3, 4, 5))
    with pytest.raises(ValueError, match=re.escape("cnnops.layer_norm2d: expected weight to have shape (4,) (num_channels), got shape (3,)")):
        cnnops.nn.LayerNorm2d(3)(torch.randn(1, 4, 5, 5))
    with pytest.raises(ValueError, match="normalized_shape"):
        cnnops.nn.LayerNorm(8)(torch.randn(2, 7))


def test_compile_inductor_layer_norm2d():
    """One inductor case for the family (the first inductor compile costs ~15 s here)."""
    torch._dynamo.reset()
    torch.manual_seed(15)
    mod = cnnops.nn.LayerNorm2d(8)
    x = torch.randn(2, 8, 4, 5, requires_grad=True)
    out = torch.compile(mod, fullgraph=True, backend="inductor")(x)
    out.square().sum().backward()
    ref = TVLayerNorm2d(8, eps=1e-6)
    ref.load_state_dict(mod.state_dict())
    xr = x.detach().requires_grad_()
    r = ref(xr)
    r.square().sum().backward()
    torch.testing.assert_close(out, r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad, xr.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mod.weight.grad, ref.weight.grad, atol=1e-4, rtol=1e-4)


def test_bench_cases(tmp_path):
    """The benchmark cases of the family run, and agree with torch, on tiny shapes."""
    import json

    from cnnops.bench import core
    from cnnops.bench import layer_norm as bench_ln
    cases = [bench_ln.layer_norm_case("tiny rows", 5, 33), bench_ln.layer_norm2d_case("tiny 2d", 2, 6, 5),
             bench_ln.layer_norm2d_case("tiny 2d CL", 2, 6, 5, channels_last=True)]
    path = tmp_path / "bench.json"
    rc = core.main(["--json", str(path), "--threads", "1", "--no-mallopt", "--busy-retries", "0", "--quick",
                    "--no-roofline", "--rounds", "1"], cases=cases)
    assert rc == 0
    rows = json.load(open(path))["cases"]
    assert len(rows) == 6
    for row in rows:
        assert row["status"] == "ok" and row["correct"] is True, row
        assert row["bytes"] > 0
    assert {c.name for c in bench_ln.cases(True)} and len(bench_ln.cases(False)) >= 8


def _thread_cpu_ticks():
    """{thread id: utime + stime in clock ticks} for every thread of this process (Linux)."""
    import os
    ticks = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        ticks[tid] = int(fields[11]) + int(fields[12])
    return ticks


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self/task") or (__import__("os").cpu_count() or 1) < 2,
                    reason="needs Linux /proc and 2 CPUs")
@pytest.mark.parametrize("case", ["rows_forward", "rows_backward", "nchw_forward", "nchw_backward"])
def test_large_cpu_call_uses_several_threads(case):
    """Not a timing test: per-thread CPU time from /proc shows at least two threads at work."""
    x, go = torch.randn(4096, 1024), torch.randn(4096, 1024)
    w = torch.randn(1024)
    x4, go4, w4 = torch.randn(8, 96, 56, 56), torch.randn(8, 96, 56, 56), torch.randn(96)
    _, m, r = ops.layer_norm(x, [1024], w, w, 1e-5)
    _, m4, r4 = ops.layer_norm2d(x4, w4, w4, 1e-6)
    call = {"rows_forward": lambda: ops.layer_norm(x, [1024], w, w, 1e-5),
            "rows_backward": lambda: ops.layer_norm_backward(go, x, [1024], m, r, w, w, [True, True, True]),
            "nchw_forward": lambda: ops.layer_norm2d(x4, w4, w4, 1e-6),
            "nchw_backward": lambda: ops.layer_norm2d_backward(go4, x4, m4, r4, w4, w4, [True, True, True])}[case]
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        call()
        before = after = _thread_cpu_ticks()
        for _ in range(60):
            call()
            after = _thread_cpu_ticks()
            if sum(after.values()) - sum(before.values()) >= 40:
                break
    finally:
        torch.set_num_threads(previous)
    delta = {tid: after[tid] - before.get(tid, 0) for tid in after}
    total = sum(delta.values())
    busy = [d for d in delta.values() if d >= max(2, 0.1 * total)]
    assert len(busy) >= 2, f"{case}: CPU ticks per thread {delta}"
