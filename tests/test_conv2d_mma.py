"""Tensor-core conv2d kernels (csrc/cuda/conv2d_mma*.cu, opt-in with CNNOPS_EXPERIMENTAL=1).

Two parts:
- CPU: tests/mma_model.py replays every thread of the kernels (copy slots, swizzle, the
  3-stage ring, ldmatrix and mma.sync fragment layouts from the PTX ISA, epilogue, weight
  packing, split-K reduce) in numpy; here it is run against torch on shapes that cross
  every tile boundary. This checks the index reasoning, not the CUDA transcription.
- CUDA (ids carry "cuda"; they skip without a GPU): the real kernels, forced on with
  CNNOPS_EXPERIMENTAL=1 and CNNOPS_MMA_REQUIRE=1 (a call the tensor-core path declines
  then raises instead of silently running the default kernel), against float64 torch.
"""
import contextlib
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import cnnops  # noqa: F401
import mma_model as mm

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")
MODES = ("zeros", "reflect", "replicate", "circular")


@contextlib.contextmanager
def env(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update({k: str(v) for k, v in values.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def out_size(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def ref_conv(x, w, b, stride, pad, dil, groups, mode):
    if mode != "zeros":
        x = TF.pad(x, (pad, pad, pad, pad), mode=mode)
        pad = 0
    return TF.conv2d(x, w, b, stride, pad, dil, groups)


# ------------------------------------------------------------------ CPU: the numpy model

def dyadic(*shape, scale, gen):
    """Small multiples of 1/scale: exact in fp16, bf16 and TF32, and their products and sums
    exact in float64, so the model must match torch to rounding of float64 only."""
    return torch.randint(-4, 5, shape, generator=gen, dtype=torch.float64) / scale


def nhwc_flat(t):
    return t.permute(0, 2, 3, 1).contiguous().numpy().ravel()


def model_case(dtype, n, cin, h, w, cout, k, stride, pad, dil, groups, mode, seed):
    gen = torch.Generator().manual_seed(seed)
    x = dyadic(n, cin, h, w, scale=4, gen=gen)
    wt = dyadic(cout, cin // groups, k, k, scale=8, gen=gen)
    b = dyadic(cout, scale=2, gen=gen)
    return x, wt, b


MODEL_FWD = [  # dtype, n, cin, h, w, cout, k, stride, pad, dil, groups, mode
    ("float16", 2, 16, 9, 9, 24, 3, 1, 1, 1, 1, "zeros"),        # M tail, K tail (144 = 4.5 tiles), 64-col tile
    ("bfloat16", 2, 16, 11, 10, 12, 3, 2, 2, 2, 2, "reflect"),   # stride, dilation, groups
    ("float32", 1, 8, 7, 9, 5, 3, 1, 1, 1, 1, "circular"),       # TF32, odd cout
    ("float16", 1, 8, 6, 5, 136, 1, 1, 0, 1, 1, "zeros"),        # two column blocks (N > 128)
    ("bfloat16", 1, 24, 6, 7, 9, 3, 1, 1, 1, 3, "replicate"),    # cin/groups = 8, 3 groups
    ("float16", 1, 16, 5, 6, 72, 3, 1, 1, 1, 1, "reflect"),      # 128-column tile with a tail
    ("bfloat16", 1, 8, 4, 4, 64, 3, 2, 1, 1, 1, "zeros"),        # 64-column tile, exactly full
]


@pytest.mark.parametrize("case", MODEL_FWD, ids=lambda c: "-".join(map(str, c)))
def test_model_forward_matches_torch(case):
    dtype, n, cin, h, w, cout, k, stride, pad, dil, groups, mode = case
    x, wt, b = model_case(dtype, n, cin, h, w, cout, k, stride, pad, dil, groups, mode, seed=1)
    oh, ow = out_size(h, k, stride, pad, dil), out_size(w, k, stride, pad, dil)
    p = dict(M=n * oh * ow, N=cout // groups, C=cin // groups, K=k * k * (cin // groups), kernel_w=k,
             act_h=h, act_w=w, rows_h=oh, rows_w=ow, act_sn=h * w * cin, act_sh=w * cin, act_sw=cin,
             out_sn=oh * ow * cout, out_sh=ow * cout, out_sw=cout, stride_h=stride, stride_w=stride,
             pad_h=pad, pad_w=pad, dil_h=dil, dil_w=dil, mode=mode, groups=groups)
    act = mm.to_storage(nhwc_flat(x), dtype)
    wpack = mm.to_storage(mm.pack_weight(wt.numpy(), groups, dgrad=False), dtype)
    out = np.full(n * oh * ow * cout, np.nan)
    written = mm.conv_gemm(p, act, wpack, b.numpy(), out, dtype, dgrad=False)
    assert np.all(written == 1)
    got = torch.from_numpy(out).view(n, oh, ow, cout).permute(0, 3, 1, 2)
    torch.testing.assert_close(got, ref_conv(x, wt, b, stride, pad, dil, groups, mode), rtol=1e-12, atol=1e-12)


MODEL_DGRAD = [  # dtype, n, cin, h, w, cout, k, stride, pad, dil, groups
    ("float16", 2, 16, 9, 8, 16, 3, 2, 1, 1, 2),
    ("float32", 1, 12, 7, 7, 8, 3, 1, 2, 2, 1),
    ("bfloat16", 2, 5, 10, 9, 8, 3, 2, 0, 1, 1),  # cin odd: N tail; stride 2, no padding
    ("float16", 1, 80, 5, 5, 8, 3, 1, 1, 1, 1),   # N = 80: the 128-column tile
]


@pytest.mark.parametrize("case", MODEL_DGRAD, ids=lambda c: "-".join(map(str, c)))
def test_model_grad_input_matches_torch(case):
    dtype, n, cin, h, w, cout, k, stride, pad, dil, groups = case
    x, wt, _ = model_case(dtype, n, cin, h, w, cout, k, stride, pad, dil, groups, "zeros", seed=2)
    oh, ow = out_size(h, k, stride, pad, dil), out_size(w, k, stride, pad, dil)
    gy = dyadic(n, cout, oh, ow, scale=4, gen=torch.Generator().manual_seed(3))
    cin_g, cout_g = cin // groups, cout // groups
    p = dict(M=n * h * w, N=cin_g, C=cout_g, K=k * k * cout_g, kernel_w=k,
             act_h=oh, act_w=ow, rows_h=h, rows_w=w, act_sn=oh * ow * cout, act_sh=ow * cout, act_sw=cout,
             out_sn=h * w * cin, out_sh=w * cin, out_sw=cin, stride_h=stride, stride_w=stride,
             pad_h=pad, pad_w=pad, dil_h=dil, dil_w=dil, mode="zeros", groups=groups)
    act = mm.to_storage(nhwc_flat(gy), dtype)
    wpack = mm.to_storage(mm.pack_weight(wt.numpy(), groups, dgrad=True), dtype)
    out = np.full(n * h * w * cin, np.nan)
    written = mm.conv_gemm(p, act, wpack, None, out, dtype, dgrad=True)
    assert np.all(written == 1)
    got = torch.from_numpy(out).view(n, h, w, cin).permute(0, 3, 1, 2)
    ref = torch.nn.grad.conv2d_input(x.shape, wt, gy, stride, pad, dil, groups)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


MODEL_WGRAD = [  # dtype, n, cin, h, w, cout, k, stride, pad, dil, groups, mode, slices
    ("float16", 2, 16, 9, 7, 16, 3, 2, 1, 1, 2, "reflect", 3),
    ("bfloat16", 1, 16, 8, 8, 8, 3, 1, 1, 1, 1, "zeros", 1),      # Kf = 144: two column blocks, 64-row tile
    ("float16", 1, 8, 11, 6, 136, 1, 1, 0, 1, 1, "circular", 2),  # Mo = 136: two 128-row blocks
    ("bfloat16", 2, 8, 7, 9, 8, 3, 1, 2, 2, 1, "replicate", 0),   # the host's slice choice
    ("float16", 1, 8, 6, 7, 72, 3, 1, 1, 1, 1, "zeros", 2),       # Mo = 72: the 128-row tile, tail
    ("bfloat16", 1, 8, 5, 5, 64, 1, 1, 0, 1, 1, "reflect", 1),    # Mo = 64: the 64-row tile, full
]


@pytest.mark.parametrize("case", MODEL_WGRAD, ids=lambda c: "-".join(map(str, c)))
def test_model_grad_weight_matches_torch(case):
    dtype, n, cin, h, w, cout, k, stride, pad, dil, groups, mode, slices = case
    x, wt, _ = model_case(dtype, n, cin, h, w, cout, k, stride, pad, dil, groups, mode, seed=4)
    oh, ow = out_size(h, k, stride, pad, dil), out_size(w, k, stride, pad, dil)
    gy = dyadic(n, cout, oh, ow, scale=4, gen=torch.Generator().manual_seed(5))
    P, cin_g, cout_g = n * oh * ow, cin // groups, cout // groups
    kf = k * k * cin_g
    if slices:
        slice_len = ((P + slices - 1) // slices + 31) // 32 * 32
        slices = (P + slice_len - 1) // slice_len
    else:
        slices, slice_len = mm.wgrad_slices(P, cout_g, kf, groups, cout)
    p = dict(P=P, Mo=cout_g, Cin=cin_g, Kf=kf, kernel_w=k, in_h=h, in_w=w, out_h=oh, out_w=ow,
             dy_sn=oh * ow * cout, dy_sh=ow * cout, dy_sw=cout, x_sn=h * w * cin, x_sh=w * cin, x_sw=cin,
             stride_h=stride, stride_w=stride, pad_h=pad, pad_w=pad, dil_h=dil, dil_w=dil, mode=mode,
             groups=groups, slices=slices, slice_len=slice_len)
    got = mm.wgrad(p, mm.to_storage(nhwc_flat(gy), dtype), mm.to_storage(nhwc_flat(x), dtype), dtype)
    got = torch.from_numpy(got).view(cout, k, k, cin_g).permute(0, 3, 1, 2)
    xp = TF.pad(x, (pad,) * 4, mode=mode) if mode != "zeros" else x
    ref = torch.nn.grad.conv2d_weight(xp, wt.shape, gy, stride, 0 if mode != "zeros" else pad, dil, groups)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_model_swizzles_are_bijections():
    rows64 = np.repeat(np.arange(128), 4)
    offs = mm.swz64(rows64, np.tile(np.arange(4), 128))
    assert sorted(offs.tolist()) == list(range(0, 8192, 16))
    rows256 = np.repeat(np.arange(32), 16)
    offs = mm.swz256(rows256, np.tile(np.arange(16), 32))
    assert sorted(offs.tolist()) == list(range(0, 8192, 16))


def test_model_tf32_rounding():
    x = np.array([1.0, 1 + 2 ** -11, 1 + 2 ** -10 + 2 ** -11, -(1 + 2 ** -11), 3.0], np.float32)
    assert mm.tf32_round(x).tolist() == [1.0, 1 + 2 ** -10, 1 + 2 ** -9, -(1 + 2 ** -10), 3.0]


# ------------------------------------------------------------------ CUDA: the real kernels

# n, cin, h, w, cout, k, stride, pad, dil, groups, mode
R50 = [
    (2, 64, 56, 56, 64, 3, 1, 1, 1, 1, "zeros"),
    (2, 128, 28, 28, 128, 3, 2, 1, 1, 1, "zeros"),
    (2, 256, 14, 14, 256, 3, 1, 1, 1, 1, "zeros"),
    (2, 512, 7, 7, 512, 3, 1, 1, 1, 1, "zeros"),
    (2, 256, 56, 56, 64, 1, 1, 0, 1, 1, "zeros"),
    (2, 64, 56, 56, 256, 1, 1, 0, 1, 1, "zeros"),
    (2, 1024, 14, 14, 256, 1, 1, 0, 1, 1, "zeros"),
    (2, 512, 28, 28, 1024, 1, 2, 0, 1, 1, "zeros"),
]
EDGES = [
    (3, 24, 13, 11, 21, 3, 1, 1, 1, 1, "zeros"),     # odd out channels, M tail
    (2, 16, 17, 15, 24, 3, 2, 1, 1, 1, "zeros"),     # stride 2, odd sizes
    (2, 32, 33, 33, 32, 3, 1, 2, 2, 1, "zeros"),     # dilation
    (2, 64, 14, 14, 64, 3, 1, 1, 1, 4, "zeros"),     # groups
    (2, 32, 9, 9, 48, 3, 2, 1, 1, 2, "zeros"),
    (1, 8, 5, 5, 200, 3, 1, 1, 1, 1, "zeros"),       # two column blocks
    (2, 32, 15, 17, 40, 3, 1, 1, 1, 1, "reflect"),
    (2, 32, 15, 17, 40, 3, 2, 2, 1, 2, "replicate"),
    (2, 32, 15, 17, 40, 5, 1, 2, 1, 1, "circular"),
    (2, 32, 16, 16, 32, 3, 1, 2, 2, 1, "reflect"),
]
TOL = {torch.float16: 3e-3, torch.bfloat16: 2e-2, torch.float32: 3e-3}  # relative Frobenius error


def _case_id(c):
    return "x".join(map(str, c[:5])) + f"-k{c[5]}s{c[6]}p{c[7]}d{c[8]}g{c[9]}-{c[10]}"


def _cuda_inputs(case, dtype, seed=0):
    n, cin, h, w, cout, k, stride, pad, dil, groups, mode = case
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(n, cin, h, w, device="cuda", generator=gen).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    wt = (torch.randn(cout, cin // groups, k, k, device="cuda", generator=gen) / (cin // groups * k * k) ** 0.5).to(dtype)
    b = torch.randn(cout, device="cuda", generator=gen).to(dtype)
    oh, ow = out_size(h, k, stride, pad, dil), out_size(w, k, stride, pad, dil)
    gy = torch.randn(n, cout, oh, ow, device="cuda", generator=gen).to(dtype)
    gy = gy.contiguous(memory_format=torch.channels_last)
    return x, wt, b, gy


def _rel(a, ref):
    return ((a.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def _reference(case, x, wt, b, gy):
    n, cin, h, w, cout, k, stride, pad, dil, groups, mode = case
    xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, wt, b))
    y = ref_conv(xd, wd, bd, stride, pad, dil, groups, mode)
    gx, gw = torch.autograd.grad(y, (xd, wd), gy.double())
    return y.detach(), gx, gw


def _args(case):
    n, cin, h, w, cout, k, stride, pad, dil, groups, mode = case
    return [stride, stride], [pad] * 4, [dil, dil], groups, mode


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("case", R50 + EDGES, ids=_case_id)
def test_mma_cuda_ops_match_torch(case, dtype):
    if dtype == torch.float32:
        torch.backends.cudnn.allow_tf32 = True
    x, wt, b, gy = _cuda_inputs(case, dtype)
    stride, padding, dilation, groups, mode = _args(case)
    ry, rgx, rgw = _reference(case, x, wt, b, gy)
    ops = torch.ops.cnnops
    # Which kernels must take the call (CNNOPS_MMA_REQUIRE=1); the others must fall back correctly.
    e = 4 if dtype == torch.float32 else 8
    cin_g, cout_g = x.shape[1] // groups, wt.shape[0] // groups
    fwd_ok = cin_g % e == 0
    dgrad_ok = mode == "zeros" and cout_g % e == 0
    wgrad_ok = dtype != torch.float32 and cin_g % 8 == 0 and cout_g % 8 == 0
    with env(CNNOPS_EXPERIMENTAL=1, CNNOPS_MMA_REQUIRE=int(fwd_ok)):
        y = ops.conv2d(x, wt, b, stride, padding, dilation, groups, mode)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert _rel(y, ry) < TOL[dtype], _rel(y, ry)
    with env(CNNOPS_EXPERIMENTAL=1, CNNOPS_MMA_REQUIRE=int(dgrad_ok)):
        gx = ops.conv2d_grad_input(gy, wt, list(x.shape), stride, padding, dilation, groups, mode, True)
    assert gx.is_contiguous(memory_format=torch.channels_last)
    assert _rel(gx, rgx) < TOL[dtype], _rel(gx, rgx)
    with env(CNNOPS_EXPERIMENTAL=1, CNNOPS_MMA_REQUIRE=int(wgrad_ok)):
        gw = ops.conv2d_grad_weight(gy, x, list(wt.shape), stride, padding, dilation, groups, mode, False)
        gw2 = ops.conv2d_grad_weight(gy, x, list(wt.shape), stride, padding, dilation, groups, mode, False)
    assert _rel(gw, rgw) < TOL[dtype], _rel(gw, rgw)
    assert torch.equal(gw, gw2)  # split-K with an ordered reduce: deterministic
    torch.cuda.synchronize()


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_mma_cuda_autograd_module(dtype, mode):
    """The whole layer (forward, every gradient) through cnnops.nn.Conv2d with the switch on;
    calls the tensor-core path declines (e.g. grad_input with reflect) fall back silently."""
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(32, 48, 3, 2, 1, padding_mode=mode).cuda().double()
    mod = cnnops.nn.Conv2d(32, 48, 3, 2, 1, padding_mode=mode).cuda().to(dtype)
    mod = mod.to(memory_format=torch.channels_last)
    with torch.no_grad():
        mod.weight.copy_(ref.weight), mod.bias.copy_(ref.bias)
    x = torch.randn(2, 32, 19, 18, device="cuda", dtype=torch.float64)
    xr = x.clone().requires_grad_()
    xm = x.to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    with env(CNNOPS_EXPERIMENTAL=1):
        y = mod(xm)
        y.backward(torch.ones_like(y))
    yr = ref(xr)
    yr.backward(torch.ones_like(yr))
    for a, r in ((y, yr), (xm.grad, xr.grad), (mod.weight.grad, ref.weight.grad), (mod.bias.grad, ref.bias.grad)):
        assert _rel(a, r) < TOL[dtype]


@cuda_only
def test_mma_cuda_declines_with_reason():
    x = torch.randn(2, 12, 9, 9, device="cuda", dtype=torch.float16)  # NCHW, and 12 % 8 != 0
    w = torch.randn(8, 12, 3, 3, device="cuda", dtype=torch.float16)
    args = ([1, 1], [1] * 4, [1, 1], 1, "zeros")
    with env(CNNOPS_EXPERIMENTAL=1, CNNOPS_MMA_REQUIRE=1):
        with pytest.raises(RuntimeError, match="CNNOPS_MMA_REQUIRE=1 .*multiple of 8"):
            torch.ops.cnnops.conv2d(x, w, None, *args)
        xc = torch.randn(2, 16, 9, 9, device="cuda", dtype=torch.float16)  # NCHW
        with pytest.raises(RuntimeError, match="not channels_last"):
            torch.ops.cnnops.conv2d(xc, torch.randn(8, 16, 3, 3, device="cuda", dtype=torch.float16), None, *args)
        torch.backends.cudnn.allow_tf32 = False
        try:
            xf = torch.randn(2, 16, 9, 9, device="cuda").contiguous(memory_format=torch.channels_last)
            with pytest.raises(RuntimeError, match="TF32 disabled"):
                torch.ops.cnnops.conv2d(xf, torch.randn(8, 16, 3, 3, device="cuda"), None, *args)
        finally:
            torch.backends.cudnn.allow_tf32 = True
    # without the requirement, the default kernel answers, correctly
    with env(CNNOPS_EXPERIMENTAL=1):
        y = torch.ops.cnnops.conv2d(x, w, None, *args)
    ref = TF.conv2d(x.double(), w.double(), None, 1, 1)
    assert _rel(y, ref) < TOL[torch.float16]


@cuda_only
def test_mma_cuda_unaligned_views_fall_back():
    """A channels_last view starting one element in is not 16-byte aligned: declined."""
    base = torch.randn(2, 17, 9, 9, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    x = base[:, 1:]
    w = torch.randn(8, 16, 3, 3, device="cuda", dtype=torch.float16)
    with env(CNNOPS_EXPERIMENTAL=1):
        y = torch.ops.cnnops.conv2d(x, w, None, [1, 1], [1] * 4, [1, 1], 1, "zeros")
    assert _rel(y, TF.conv2d(x.double(), w.double(), None, 1, 1)) < TOL[torch.float16]


def test_bench_nhwc_cases():
    """The bench's channels_last cases (--filter nhwc) really are channels_last, and the
    cnnops and torch sides agree on one of them (CPU, small batch)."""
    from cnnops.bench import conv2d as bench_conv2d
    cases = bench_conv2d._channels_last_cases(n=1)
    assert cases and all(c.name.startswith("nhwc ") and c.shape.endswith(" nhwc") for c in cases)
    assert all(c in [k.name for k in bench_conv2d.cases(False)] for c in [k.name for k in cases])
    for c in cases:
        x, w, _ = c.make_inputs("meta", torch.float32)
        assert x.is_contiguous(memory_format=torch.channels_last)
        assert w.is_contiguous(memory_format=torch.channels_last)
    case = next(c for c in cases if "3x3 256" in c.name)
    inputs = case.make_inputs("cpu", torch.float32)
    torch.testing.assert_close(case.cnnops_fn(*inputs), case.torch_fn(*inputs), rtol=1e-4, atol=1e-4)
