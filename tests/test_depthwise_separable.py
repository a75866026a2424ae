"""depthwise_separable_conv2d: the fused pointwise(depthwise(x)) op, its functional, its
autograd (backward through the two convs' gradient ops), DepthwiseSeparableConv2dFunction and
the fused forward of cnnops.nn.DepthwiseSeparableConv2d, against torch's depthwise conv then
1x1 conv in float64 (outputs, all five gradients, output strides); plus gradcheck, opcheck,
torch.compile, the band splits of the CPU kernel, and the error messages of bad input."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import cnnops
from conftest import assert_close, device_dtype_params, leaf, rand, significant_strides, torch_rule_strides

ops = torch.ops.cnnops
CL = torch.channels_last
pytestmark = pytest.mark.usefixtures("single_thread")


def torch_separable(x, dw, db, pw, pb, stride, padding, dilation, mode):
    c = x.shape[1]
    depthwise = torch.nn.Conv2d(c, dw.shape[0], tuple(dw.shape[2:]), stride, padding, dilation, c,
                                bias=db is not None, padding_mode=mode, device="meta")
    return torch.nn.functional.conv2d(depthwise._conv_forward(x, dw, db), pw, pb)


def operands(shape, mult, cout, kernel, layout, biases, dtype=torch.float64, device="cpu"):
    n, c, h, w = shape
    if layout == "sliced":  # no unit stride anywhere
        x = rand(n, 2 * c, h, 2 * w, dtype=dtype, device=device)[:, ::2, :, 1::2]
    else:
        x = rand(n, c, h, w, dtype=dtype, device=device)
        if layout == "channels_last":
            x = x.contiguous(memory_format=CL)
    dw = rand(c * mult, 1, *kernel, dtype=dtype, device=device)
    pw = rand(cout, c * mult, 1, 1, dtype=dtype, device=device)
    if layout == "channels_last_weight":
        dw = dw.contiguous(memory_format=CL)
    db = rand(c * mult, dtype=dtype, device=device) if biases[0] else None
    pb = rand(cout, dtype=dtype, device=device) if biases[1] else None
    return [None if t is None else leaf(t) for t in (x, dw, db, pw, pb)]


def compare(tensors, stride, padding, dilation, mode, fn=None, msg=""):
    """Forward, strides and every gradient against torch, computed in float64 on the CPU."""
    x = tensors[0]
    fn = fn or (lambda x, dw, db, pw, pb: cnnops.F.depthwise_separable_conv2d(
        x, dw, pw, db, pb, stride, padding, dilation, mode))
    out = fn(*tensors)
    refs = [None if t is None else leaf(t.detach().cpu().double()) for t in tensors]
    ref = torch_separable(*refs, stride, padding, dilation, mode)
    assert out.dtype == x.dtype and out.device == x.device, msg
    assert_close(out, ref.to(x.dtype), x.dtype, x.device, msg=f"{msg} forward")
    if out.numel() > 0 and mode == "zeros":  # the layout torch gives the pair
        expected = torch_rule_strides(lambda x, dw, pw: torch_separable(x, dw, None, pw, None, stride, padding,
                                                                        dilation, mode), x, tensors[1], tensors[3])
        assert significant_strides(out) == expected, f"{msg}: {out.stride()} vs torch's rule {expected}"
    go = rand(*ref.shape)
    inputs = [t for t in tensors if t is not None]
    grads = torch.autograd.grad(out, inputs, go.to(device=x.device, dtype=x.dtype))
    grads_ref = torch.autograd.grad(ref, [t for t in refs if t is not None], go)
    for i, (a, e) in enumerate(zip(grads, grads_ref)):
        assert_close(a, e.to(x.dtype), x.dtype, x.device, msg=f"{msg} gradient {i}")


CASES = {
    # name: (shape, multiplier, C_out, kernel, stride, padding (t, b, l, r) or int, dilation)
    "3x3": ((2, 6, 9, 10), 1, 5, (3, 3), 1, 1, 1),
    "3x3_s2_mult2": ((2, 4, 11, 9), 2, 7, (3, 3), 2, 1, 1),
    "5x5_dilated": ((1, 5, 13, 12), 1, 3, (5, 5), 1, 4, 2),
    "even_nonsquare": ((2, 3, 8, 9), 3, 4, (2, 3), (2, 1), 1, (1, 2)),
    "7x7_wide": ((1, 17, 6, 21), 1, 16, (7, 7), 1, 3, 1),
    "1x1": ((2, 8, 5, 5), 1, 8, (1, 1), 1, 0, 1),
}
MODES = ("zeros", "reflect", "replicate", "circular")


@pytest.mark.parametrize("device,dtype", device_dtype_params())
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced", "channels_last_weight"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_torch(device, dtype, case, layout, mode):
    shape, mult, cout, kernel, stride, padding, dilation = CASES[case]
    biases = (case != "1x1", case not in ("3x3_s2_mult2",))
    tensors = operands(shape, mult, cout, kernel, layout, biases, dtype, device)
    compare(tensors, stride, padding, dilation, mode, msg=f"{case} {layout} {mode} {dtype}")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape,kernel,stride,dilation,layout,mode", [
    ((1, 8, 37, 30), (3, 3), 1, 1, "contiguous", "zeros"),      # 2 threads: two bands of one image
    ((1, 8, 37, 30), (5, 3), 2, 2, "contiguous", "reflect"),    # band edges in the padding rows
    ((1, 6, 23, 19), (7, 7), 1, 1, "channels_last", "circular"),
    ((5, 24, 7, 7), (3, 3), 1, 1, "channels_last", "zeros"),    # several images per task (3 + 2)
    ((5, 24, 7, 7), (3, 3), 2, 1, "channels_last", "replicate"),
    ((1, 40, 64, 60), (3, 3), 1, 1, "contiguous", "zeros"),     # over 1 MB of depthwise rows: several bands
    ((2, 40, 64, 60), (3, 3), 1, 1, "channels_last", "reflect"),
])
def test_bands_and_threads(shape, kernel, stride, dilation, layout, mode, threads):
    """The CPU kernel's splits: bands of rows (their input rows narrowed or gathered) and
    runs of whole images, at 1 and 2 threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        pad = ((kernel[0] - 1) * dilation // 2)
        tensors = operands(shape, 1, 9, kernel, layout, (True, True), torch.float64)
        compare(tensors, stride, (pad, (kernel[1] - 1) * dilation // 2), dilation, mode, msg=f"{shape} {mode}")
    finally:
        torch.set_num_threads(previous)


def test_bands_wholly_in_zero_padding():
    """Padding larger than the kernel's reach: whole bands read only padding (bias only)."""
    x, dw, db, pw, pb = operands((1, 3, 4, 4), 1, 2, (3, 3), "contiguous", (True, True))
    compare([x, dw, db, pw, pb], 1, 6, 1, "zeros")


def test_bfloat16_matches_float32():
    x, dw, db, pw, pb = operands((2, 16, 12, 12), 1, 8, (3, 3), "channels_last", (True, True), torch.float32)
    args = (x, dw, pw, db, pb, 1, 1)
    expected = cnnops.F.depthwise_separable_conv2d(*args)
    got = cnnops.F.depthwise_separable_conv2d(*(t.bfloat16() for t in args[:5]), 1, 1)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected, rtol=0.05, atol=0.1)


def test_batch_zero_and_unbatched():
    x, dw, db, pw, pb = operands((0, 4, 6, 6), 1, 3, (3, 3), "contiguous", (True, True))
    assert cnnops.F.depthwise_separable_conv2d(x, dw, pw, db, pb, padding=1).shape == (0, 3, 6, 6)
    x1 = leaf(rand(4, 6, 7))
    compare([x1.unsqueeze(0), dw, db, pw, pb], 1, "same", 1, "zeros",
            fn=lambda x, dw, db, pw, pb: cnnops.F.depthwise_separable_conv2d(x[0], dw, pw, db, pb, padding="same")
            .unsqueeze(0))


def test_nan_and_inf_propagate():
    x, dw, db, pw, pb = operands((1, 4, 6, 6), 1, 3, (3, 3), "contiguous", (True, True))
    x = x.detach().clone()
    x[0, 1, 2, 3] = float("nan")
    x[0, 2, 0, 0] = float("inf")
    got = cnnops.F.depthwise_separable_conv2d(x, dw.detach(), pw.detach(), db.detach(), pb.detach(), padding=1)
    ref = torch_separable(x, dw.detach(), db.detach(), pw.detach(), pb.detach(), 1, 1, 1, "zeros")
    torch.testing.assert_close(got, ref, equal_nan=True)


def test_backward_needs_only_what_it_uses():
    """Gradients of a subset: pointwise weight alone (recomputes the depthwise output), input alone."""
    x, dw, db, pw, pb = operands((2, 4, 7, 6), 2, 3, (3, 3), "contiguous", (True, True))
    for wanted in ([pw], [x], [dw, pb], [db]):
        for t in (x, dw, db, pw, pb):
            t.requires_grad_(any(t is w for w in wanted))
        out = cnnops.F.depthwise_separable_conv2d(x, dw, pw, db, pb, 2, 1)
        refs = [leaf(t.detach()) if any(t is w for w in wanted) else t.detach() for t in (x, dw, db, pw, pb)]
        ref = torch_separable(*refs, 2, 1, 1, "zeros")
        go = rand(*ref.shape)
        got = torch.autograd.grad(out, wanted, go)
        wanted_refs = [r for r, t in zip(refs, (x, dw, db, pw, pb)) if any(t is w for w in wanted)]
        exp = torch.autograd.grad(ref, wanted_refs, go)
        for a, e in zip(got, exp):
            assert_close(a, e)


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradcheck(mode, layout):
    x, dw, db, pw, pb = operands((2, 3, 6, 5), 2, 4, (3, 2), layout, (True, True))

    def f(x, dw, db, pw, pb):
        return cnnops.F.depthwise_separable_conv2d(x, dw, pw, db, pb, (2, 1), (1, 1), (1, 2), mode)

    assert torch.autograd.gradcheck(f, (x, dw, db, pw, pb))
    assert torch.autograd.gradgradcheck(f, (x, dw, db, pw, pb))


def test_gradcheck_function():
    x, dw, db, pw, pb = operands((1, 3, 5, 5), 1, 2, (3, 3), "contiguous", (True, False))

    def f(x, dw, db, pw):
        return cnnops.functional.DepthwiseSeparableConv2dFunction.apply(x, dw, db, pw, None, 1, "same", 1, "replicate")

    assert torch.autograd.gradcheck(f, (x, dw, db, pw))


@pytest.mark.parametrize("layout,mode", [("contiguous", "reflect"), ("channels_last", "zeros")])
def test_opcheck(layout, mode):
    x, dw, db, pw, pb = operands((2, 4, 6, 7), 1, 3, (3, 3), layout, (True, True))
    result = torch.library.opcheck(ops.depthwise_separable_conv2d,
                                   (x, dw, db, pw, pb, [1, 2], [1, 1, 1, 0], [1, 1], mode))
    assert result and all(v == "SUCCESS" for v in result.values()), result


@pytest.fixture
def dynamo_reset():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compile_module_aot_eager(dynamo_reset):
    m = cnnops.nn.DepthwiseSeparableConv2d(4, 6, 3, padding=1, dtype=torch.float64).eval()
    x = rand(2, 4, 9, 9)
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        assert_close(compiled(x), m.pointwise(m.depthwise(x)))
    y = compiled(leaf(x))  # with autograd: the unfused pair
    assert_close(y, m.pointwise(m.depthwise(x)))


def test_compile_functional_aot_eager(dynamo_reset):
    x, dw, db, pw, pb = operands((2, 4, 8, 8), 1, 3, (3, 3), "contiguous", (True, True))

    def f(x, dw, db, pw, pb):
        return cnnops.F.depthwise_separable_conv2d(x, dw, pw, db, pb, 1, 1, 1, "circular")

    compare([x, dw, db, pw, pb], 1, 1, 1, "circular", fn=torch.compile(f, backend="aot_eager", fullgraph=True))


# ---------------------------------------------------------------- the module's fused forward

def _count_fused(monkeypatch):
    calls = []
    real = cnnops.functional.depthwise_separable_conv2d

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(cnnops.functional, "depthwise_separable_conv2d", spy)
    return calls


@pytest.mark.parametrize("kwargs", [dict(padding=1), dict(stride=2, padding=2, padding_mode="reflect",
                                                          depth_multiplier=2, kernel_size=5), dict(bias=False)])
def test_module_fuses_without_autograd(kwargs, monkeypatch):
    kw = {"kernel_size": 3, **kwargs}
    m = cnnops.nn.DepthwiseSeparableConv2d(6, 10, dtype=torch.float64, **kw)
    x = rand(3, 6, 13, 12)
    expected = m.pointwise(m.depthwise(x)).detach()
    calls = _count_fused(monkeypatch)
    with torch.no_grad():
        y = m(x)
    assert calls and y.shape == expected.shape
    assert_close(y, expected)
    with torch.inference_mode():
        assert_close(m(x), expected)
    assert len(calls) == 2


def test_module_keeps_the_pair_when_observed(monkeypatch):
    m = cnnops.nn.DepthwiseSeparableConv2d(4, 5, 3, padding=1, dtype=torch.float64)
    x = rand(2, 4, 8, 8)
    calls = _count_fused(monkeypatch)
    y = m(x)  # parameters require grad: the pair, so the backward needs no recompute
    assert not calls and y.requires_grad
    seen = []
    handle = m.depthwise.register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    with torch.no_grad():
        m(x)
    handle.remove()
    assert seen == [(2, 4, 8, 8)] and not calls
    with torch.no_grad():
        m(x)
    assert len(calls) == 1


# ---------------------------------------------------------------- bad input

BAD = [
    # (description, input, depthwise weight, depthwise bias, pointwise weight, pointwise bias, exception, regex)
    ("depthwise weight dim1", (2, 4, 8, 8), (4, 2, 3, 3), None, (3, 4, 1, 1), None, ValueError,
     r"depthwise_separable_conv2d: expected depthwise_weight to have shape \(C \* multiplier, 1, kH, kW\) with C = 4"),
    ("multiplier not an integer", (2, 4, 8, 8), (6, 1, 3, 3), None, (3, 6, 1, 1), None, ValueError,
     r"expected depthwise_weight .* got shape \(6, 1, 3, 3\)"),
    ("depthwise bias", (2, 4, 8, 8), (8, 1, 3, 3), (4,), (3, 8, 1, 1), None, ValueError,
     r"expected depthwise_bias to have shape \(8,\) \(C \* multiplier\), got shape \(4,\)"),
    ("pointwise channels", (2, 4, 8, 8), (8, 1, 3, 3), None, (3, 4, 1, 1), None, ValueError,
     r"expected pointwise_weight to have shape \(C_out, 8, 1, 1\) .*got shape \(3, 4, 1, 1\)"),
    ("pointwise kernel", (2, 4, 8, 8), (4, 1, 3, 3), None, (3, 4, 3, 3), None, ValueError,
     r"expected pointwise_weight to have shape \(C_out, 4, 1, 1\)"),
    ("pointwise bias", (2, 4, 8, 8), (4, 1, 3, 3), None, (3, 4, 1, 1), (4,), ValueError,
     r"expected pointwise_bias to have shape \(3,\) \(C_out\), got shape \(4,\)"),
    ("input 2-D", (8, 8), (4, 1, 3, 3), None, (3, 4, 1, 1), None, ValueError, r"expected input to be 3-D"),
    ("kernel too large", (2, 4, 2, 2), (4, 1, 5, 5), None, (3, 4, 1, 1), None, ValueError,
     r"at least as large as the dilated kernel"),
]


@pytest.mark.parametrize("fake", [False, True], ids=["eager", "fake"])
@pytest.mark.parametrize("desc,xs,dws,dbs,pws,pbs,exc,pattern", BAD, ids=[b[0] for b in BAD])
def test_bad_input(desc, xs, dws, dbs, pws, pbs, exc, pattern, fake):
    def run():
        x, dw, pw = torch.randn(xs), torch.randn(dws), torch.randn(pws)
        db = torch.randn(dbs) if dbs else None
        pb = torch.randn(pbs) if pbs else None
        return cnnops.F.depthwise_separable_conv2d(x, dw, pw, db, pb, padding=1)

    if fake:
        with FakeTensorMode(), pytest.raises(exc, match=pattern):
            run()
    else:
        with pytest.raises(exc, match=pattern):
            run()


def test_bad_dtypes():
    x, dw, pw = torch.randn(1, 4, 6, 6), torch.randn(4, 1, 3, 3), torch.randn(2, 4, 1, 1)
    with pytest.raises(TypeError, match=r"expected pointwise_weight to have the same dtype as input \(float32\), got fl"):
        cnnops.F.depthwise_separable_conv2d(x, dw, pw.double())
    with pytest.raises(TypeError, match=r"expected depthwise_bias to have the same dtype as input"):
        cnnops.F.depthwise_separable_conv2d(x, dw, pw, torch.randn(4, dtype=torch.float64))
    with pytest.raises(NotImplementedError, match=r"separable_conv2d: dtype float16 on device cpu is not supported"):
        cnnops.F.depthwise_separable_conv2d(x.half(), dw.half(), pw.half())


def test_meta_matches_eager():
    x, dw, pw = torch.randn(2, 6, 9, 7).contiguous(memory_format=CL), torch.randn(12, 1, 3, 2), torch.randn(5, 12, 1, 1)
    eager = cnnops.F.depthwise_separable_conv2d(x, dw, pw, None, None, (2, 1), "valid", (1, 2), "reflect")
    meta = cnnops.F.depthwise_separable_conv2d(x.to("meta"), dw.to("meta"), pw.to("meta"), None, None, (2, 1), "valid",
                                               (1, 2), "reflect")
    assert meta.shape == eager.shape and meta.stride() == eager.stride()
