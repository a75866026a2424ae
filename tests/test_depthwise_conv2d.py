"""depthwise_conv2d: cnnops.functional.depthwise_conv2d, the torch.ops.cnnops.depthwise_conv2d*
ops, DepthwiseConv2dFunction, the routing of conv2d / cnnops.nn.Conv2d with groups == C, and
the separable modules, checked against torch (F.conv2d with groups = C, torch.nn.Conv2d
for the padding modes) on the same inputs: outputs, all gradients, strides; plus
gradcheck, opcheck, torch.compile and the error messages of bad input."""
import itertools
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given
from hypothesis import strategies as st
from torch.fx.experimental.proxy_tensor import make_fx

import cnnops
from conftest import (assert_close, assert_raises_eager_and_fake, device_dtype_params, significant_strides,
                      torch_rule_strides)

ops = torch.ops.cnnops
# One intra-op thread by default (many small calls on a busy 2-core machine); the threaded
# split is tested explicitly below.
pytestmark = [pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning"),
              pytest.mark.usefixtures("single_thread")]
MODES = ("zeros", "reflect", "replicate", "circular")
CL = torch.channels_last


def torch_depthwise(x, w, b, stride=1, padding=0, dilation=1, padding_mode="zeros"):
    """torch's own depthwise conv for every padding_mode (nn.Conv2d._conv_forward with groups = C)."""
    c = x.shape[-3]
    m = torch.nn.Conv2d(c, w.shape[0], tuple(w.shape[2:]), stride, padding, dilation, c,
                        bias=b is not None, padding_mode=padding_mode, device="meta")
    return m._conv_forward(x, w, b)


def leaf(t):
    return t.detach().requires_grad_()


def rand(*shape, dtype=torch.float64, device="cpu"):
    return torch.randn(*shape, dtype=torch.float64).to(device=device, dtype=dtype)


LAYOUTS = ("contiguous", "channels_last", "sliced", "channels_last_weight")


def make_input(shape, layout, dtype=torch.float64, device="cpu"):
    n, c, h, w = shape
    if layout == "channels_last":
        t = rand(n, c, h, w, dtype=dtype, device=device).contiguous(memory_format=CL)
    elif layout == "sliced":  # every other channel and column: no unit stride anywhere
        t = rand(n, 2 * c, h, 2 * w, dtype=dtype, device=device)[:, ::2, :, 1::2]
    else:
        t = rand(n, c, h, w, dtype=dtype, device=device)
    return leaf(t)


def make_weight(shape, layout, dtype=torch.float64, device="cpu"):
    t = rand(*shape, dtype=dtype, device=device)
    if layout == "channels_last_weight":
        t = t.contiguous(memory_format=CL)
    return leaf(t)


def compare(x, w, b, stride, padding, dilation, mode, fn=None, msg=""):
    """Forward and all gradients of cnnops against torch (computed in float64 on the CPU
    for reduced precision, the same values), and torch's output strides for zeros padding."""
    dtype, device = x.dtype, x.device
    fn = fn or (lambda x, w, b: cnnops.F.depthwise_conv2d(x, w, b, stride, padding, dilation, mode))
    out = fn(x, w, b)
    ref_inputs = [None if t is None else leaf(t.detach().cpu().double()) for t in (x, w, b)]
    ref = torch_depthwise(*ref_inputs, stride, padding, dilation, mode)
    assert out.dtype == dtype and out.device == x.device, msg
    assert_close(out, ref.to(dtype) if dtype != torch.float64 else ref, dtype, device, msg=f"{msg} forward")
    if out.numel() > 0 and mode == "zeros":
        expected = torch_rule_strides(lambda x, w: TF.conv2d(x, w, None, stride, padding, dilation, x.shape[1]), x, w)
        assert significant_strides(out) == expected, f"{msg}: {out.stride()} vs torch's rule {expected}"
    go = rand(*ref.shape)
    inputs = [t for t in (x, w, b) if t is not None]
    refs = [t for t in ref_inputs if t is not None]
    got = torch.autograd.grad(out, inputs, go.to(device=device, dtype=dtype))
    exp = torch.autograd.grad(ref, refs, go)
    for name, a, e, t in zip(("input", "weight", "bias"), got, exp, inputs):
        assert a.dtype == dtype and a.shape == t.shape, f"{msg} grad_{name}"
        assert_close(a, e.to(dtype), dtype, device, msg=f"{msg} grad_{name}")
    return out


# ---------------------------------------------------------------- 1. parametrized correctness

class Case:
    def __init__(self, name, n, c, mult, h, w, kernel, stride=1, padding=0, dilation=1, bias=True):
        self.name, self.n, self.c, self.mult, self.h, self.w = name, n, c, mult, h, w
        self.kernel, self.stride, self.padding, self.dilation, self.bias = kernel, stride, padding, dilation, bias

    def __repr__(self):
        return self.name


# Every case is legal for every padding mode. C >= 8 reaches the channels_last kernels (C = 20:
# a partial vector; C = 72: several register blocks); C < 8 and multipliers > 1 the plane kernels.
CASES = [
    Case("3x3_s1", 2, 20, 1, 13, 19, (3, 3), padding=1),
    Case("3x3_s2_odd", 2, 72, 1, 15, 17, (3, 3), stride=2, padding=1),
    Case("5x5_d2", 1, 9, 1, 14, 12, (5, 5), padding=4, dilation=2, bias=False),
    Case("7x7_mult2", 2, 3, 2, 12, 37, (7, 7), padding=3),
    Case("even_nonsquare_s3", 1, 4, 3, 11, 16, (2, 4), stride=(3, 2), padding=(1, 2), dilation=(2, 1)),
    Case("13x13", 1, 16, 1, 16, 18, (13, 13), padding=6),
    Case("batch0", 0, 8, 1, 6, 6, (3, 3), padding=1),
    Case("1x1_batch1", 1, 10, 1, 5, 4, (1, 1)),
    # channels_last row kernel (float32, 5x5 / 7x7, stride 1 or 2): at channels_last these
    # rotate to reflect, replicate and circular padding, where it takes the interior columns
    # only (blocks of 16 and the rest), with a partial channel vector
    Case("5x5_s2_wide", 2, 24, 1, 21, 40, (5, 5), stride=2, padding=2),
    Case("7x7_wide", 1, 17, 1, 10, 45, (7, 7), padding=3),
    Case("5x5_c48", 1, 48, 1, 9, 26, (5, 5), padding=(2, 1)),
    # multiplier 2 on 16 channels: at channels_last the NCHW kernels on NCHW copies, all
    # three directions (copies both ways, 16 x 16 transposes on AVX-512)
    Case("3x3_s2_mult2_c16", 2, 16, 2, 11, 18, (3, 3), stride=2, padding=1),
]


def _params():
    params = []
    for i, case in enumerate(CASES):
        for j, layout in enumerate(LAYOUTS):
            mode = MODES[(i + j) % len(MODES)]
            params.append(pytest.param(case, layout, mode, id=f"{case.name}-{layout}-{mode}"))
    return params


@pytest.mark.parametrize("case,layout,mode", _params())
@pytest.mark.parametrize("device,dtype", device_dtype_params())
def test_depthwise_matches_torch(device, dtype, case, layout, mode):
    c = case
    x = make_input((c.n, c.c, c.h, c.w), layout, dtype, device)
    w = make_weight((c.c * c.mult, 1, *c.kernel), layout, dtype, device)
    b = leaf(rand(c.c * c.mult, dtype=dtype, device=device)) if c.bias else None
    compare(x, w, b, c.stride, c.padding, c.dilation, mode, msg=f"{c} {layout} {mode}")


# CNNOPS_DEPTHWISE_CUDA_PATH's forced paths (the default, auto: direct for 3x3, else tiled, is
# test_depthwise_matches_torch's): simple, the kernels of depthwise_conv2d.cu that run where
# the others decline; direct, depthwise_conv2d_direct.cu's first at every size they take (zero
# padding, square 3/5/7: test_depthwise_cuda_direct_shapes below covers each of their
# kernels); tiled, depthwise_conv2d_fast.cu's first, 3x3 included.
@pytest.mark.parametrize("cuda_path", ["simple", "direct", "tiled"])
@pytest.mark.parametrize("case,layout,mode", _params())
@pytest.mark.parametrize("device,dtype", [p for p in device_dtype_params() if p.values[0] == "cuda"])
def test_depthwise_cuda_path_matches_torch(device, dtype, case, layout, mode, cuda_path, monkeypatch):
    """Each forced CUDA path on the same cases as the default;
    tests/test_depthwise_cuda_emulated.py runs the direct and tiled kernels on the CPU."""
    monkeypatch.setenv("CNNOPS_DEPTHWISE_CUDA_PATH", cuda_path)
    test_depthwise_matches_torch(device, dtype, case, layout, mode)


@pytest.mark.parametrize("case,mode", [pytest.param(c, m, id=f"{c.name}-{m}") for c, layout, m in
                                       (p.values for p in _params()) if layout == "channels_last"])
@pytest.mark.parametrize("device,dtype", [p for p in device_dtype_params() if p.values[0] == "cuda"])
def test_depthwise_cuda_weight_by_tap_kernel(device, dtype, case, mode, monkeypatch):
    """CNNOPS_EXPERIMENTAL=1: the channels_last forward (and grad_input) make their (tap,
    channel) weight copy with cnnops_depthwise_weight_by_tap_kernel, opt-in until this test has
    passed on a GPU (tests/test_depthwise_cuda_emulated.py runs it on the CPU)."""
    monkeypatch.setenv("CNNOPS_EXPERIMENTAL", "1")
    test_depthwise_matches_torch(device, dtype, case, "channels_last", mode)


# (kernel, stride, dilation, multiplier): every (K, S, D) the direct kernels instantiate, a
# multiplier of 3 (forward and grad_weight; grad_input then gathers), odd sizes
DIRECT_SHAPES = [(3, 1, 1, 1), (3, 2, 1, 1), (3, 1, 2, 1), (5, 1, 1, 1), (5, 2, 1, 1), (5, 1, 2, 1),
                 (7, 1, 1, 1), (7, 2, 1, 1), (3, 1, 1, 3)]


@pytest.mark.parametrize("kernel,stride,dilation,multiplier", DIRECT_SHAPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("device,dtype", [p for p in device_dtype_params() if p.values[0] == "cuda"])
def test_depthwise_cuda_direct_shapes(device, dtype, layout, kernel, stride, dilation, multiplier, monkeypatch):
    """The direct kernels on each of their instantiations (NCHW: forward, grad_input, grad_weight;
    channels_last: grad_weight and the 16-byte channel vectors of the forward), 16 channels so
    that every dtype's vector fits."""
    monkeypatch.setenv("CNNOPS_DEPTHWISE_CUDA_PATH", "direct")
    x = make_input((2, 16, 19, 18), layout, dtype, device)
    w = make_weight((16 * multiplier, 1, kernel, kernel), "contiguous", dtype, device)
    b = leaf(rand(16 * multiplier, dtype=dtype, device=device))
    compare(x, w, b, stride, dilation * (kernel // 2), dilation, "zeros",
            msg=f"{dtype} {layout} k={kernel} s={stride} d={dilation} m={multiplier}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")
def test_depthwise_cuda_path_rejects_unknown_names(monkeypatch):
    monkeypatch.setenv("CNNOPS_DEPTHWISE_CUDA_PATH", "fast")
    x = torch.randn(1, 2, 5, 5, device="cuda")
    with pytest.raises(ValueError,
                       match="CNNOPS_DEPTHWISE_CUDA_PATH to be one of 'auto', 'direct', 'tiled', 'simple', got 'fast'"):
        cnnops.F.depthwise_conv2d(x, torch.randn(2, 1, 3, 3, device="cuda"))


# ---------------------------------------------------------------- 1b. channel-blocked forward
# The forward is channel-blocked except for channels_last input with multiplier 1 (its own
# kernel under 'auto') and, in AVX-512 and AVX2 builds, zero-padded float32 rows: 3x3
# (direct), 5x5 to 13x13 at stride 1 (staged) and, AVX-512 only, 14-row "same" planes up to
# 16 wide (shifted) and 3x3 "same" planes of up to 64 pixels (flat);
# CNNOPS_DEPTHWISE_CPU_PATH=blocked forces the blocked one everywhere, =direct skips the
# channels_last kernel.
# The shapes below reach its staging variants: whole contiguous planes turned into pixel
# vectors in one run (narrow 7-wide rows included), row-by-row transposes (planes in strips
# of rows, or rows that are not contiguous), the scalar loops (no unit column stride,
# bfloat16), a partial last block of channels, and multipliers > 1.

def _blocked_layout(x, layout):
    if layout == "channels_last":
        return x.contiguous(memory_format=CL)
    if layout == "row_view":  # unit column stride, rows further apart than their width
        return torch.nn.functional.pad(x, (2, 3)).contiguous()[..., 2:-3]
    if layout == "sliced":
        return torch.repeat_interleave(x, 2, dim=-1)[..., ::2]
    return x


BLOCKED_SHAPES = [
    # name, (n, c, h, w), mult, kernel, stride, padding, dilation
    ("strips_3x3", (1, 17, 45, 200), 1, (3, 3), 1, 1, 1),  # three strips, the last one short
    ("strips_s2", (1, 16, 70, 150), 1, (3, 3), 2, 1, 1),
    ("strips_5x5_d2", (1, 18, 40, 190), 1, (5, 5), 1, 4, 2),
    ("narrow_7x7", (2, 33, 7, 7), 1, (7, 7), 1, 3, 1),  # whole planes, 49 pixels: 3 transposes + 1
    ("narrow_3x3_same", (1, 20, 7, 7), 1, (3, 3), 1, 1, 1),  # 7-wide "same" rows: trimmed taps
    ("narrow_mult2", (2, 9, 5, 6), 2, (3, 3), 1, 1, 1),
    ("wide_stride3", (1, 16, 23, 40), 1, (4, 2), (3, 2), (2, 1), 1),
    # direct 3x3 (zero padding, float32): pairs of vectors plus one, 4-row groups with a tail
    ("direct_wide", (2, 5, 13, 40), 1, (3, 3), 1, 1, 1),
    ("direct_narrow_mult2", (1, 6, 19, 14), 2, (3, 3), 1, (2, 0), 1),  # one vector: 8-row groups
    ("direct_pad2", (1, 3, 6, 32), 1, (3, 3), 1, (0, 2), 1),
    ("direct_3x3_d2", (1, 4, 11, 37), 1, (3, 3), 1, (2, 1), 2),
    ("blocked_5x5_s2", (1, 3, 17, 45), 1, (5, 5), 2, 2, 1),  # stride 2 above 3x3: channel-blocked
    ("direct_s2_narrow", (2, 5, 29, 27), 1, (3, 3), 2, 1, 1),
    # stride 2 with one padding column on the left (AVX-512): each row's columns split into
    # even and odd ones; 33 outputs: a pair of vectors, then one whose left tap starts at
    # column 63; rows unpadded; other padding takes a load per kernel column
    ("direct_s2_w65", (1, 3, 12, 65), 1, (3, 3), 2, 1, 1),
    ("direct_s2_rows_unpadded", (2, 3, 11, 36), 1, (3, 3), 2, (0, 1), 1),
    ("direct_s2_pad0", (1, 3, 10, 40), 1, (3, 3), 2, 0, 1),
    ("direct_s2_pad2", (1, 3, 9, 41), 1, (3, 3), 2, 2, 1),
    # AVX2 (8 lanes): a row of one vector (4-row groups), and stride 2 with inner vectors
    # that read no padding (plain loads)
    ("direct_w8", (1, 3, 10, 8), 1, (3, 3), 1, 1, 1),
    ("direct_s2_wide", (1, 3, 9, 70), 1, (3, 3), 2, 1, 1),
    ("stride3_dilation2", (1, 16, 20, 29), 1, (3, 3), 3, 2, 2),  # strided grad_input: 3 phases
    # staged K x K (5x5 and 7x7, stride 1, zero padding, float32, 12+ columns, AVX-512: rows
    # 80% of their vectors or more): 14-row tiles (AVX2: 15 - K rows), then a half tile
    # (rest <= half) or a whole one holding the rest
    ("staged_5x5_rest6", (2, 3, 20, 13), 1, (5, 5), 1, 2, 1),
    ("staged_7x7_rest11_mult2", (1, 2, 25, 81), 2, (7, 7), 1, 3, 1),  # last vector: 1 column
    ("staged_5x5_d2", (1, 3, 30, 46), 1, (5, 5), 1, (4, 1), 2),
    ("staged_7x7_d2", (1, 2, 19, 26), 1, (7, 7), 1, 6, 2),
    ("staged_pad17", (1, 2, 18, 24), 1, (5, 5), 1, 17, 1),  # scratch origin 32 columns in
    ("blocked_not_staged_w33", (1, 17, 9, 33), 1, (5, 5), 1, 2, 1),  # AVX-512: 33 of 48 lanes
    # DeepLab's atrous 5x5 (column dilation 2 fixed at compile time), whose 33-wide rows end
    # in groups of 4 and 5 pixels, not 8 and 1; a 10-wide row is two groups of 5
    ("blocked_5x5_d2_w33", (1, 17, 9, 33), 1, (5, 5), 1, 4, 2),
    ("blocked_w10", (1, 16, 6, 10), 1, (5, 5), 1, 2, 1),
    ("blocked_11x11_d2", (1, 17, 20, 27), 1, (11, 11), 1, 10, 2),  # dilation 2, run-time width
    ("staged_7x7_rest3", (1, 2, 19, 13), 1, (7, 7), 1, 3, 1),  # AVX2: 8-row tiles, then 3 rows
    # 9x9 and up: channel-blocked, the kernel width fixed at compile time for 9, 11 and 13
    # at column stride 1
    ("nonsquare_9x11_nopad", (1, 2, 30, 28), 1, (9, 11), 1, 0, 1),
    ("blocked_9x9", (1, 2, 16, 16), 1, (9, 9), 1, 4, 1),
    ("blocked_11x11_nopad", (1, 2, 30, 28), 1, (11, 11), 1, 0, 1),
    ("blocked_13x13", (1, 3, 28, 28), 1, (13, 13), 1, 6, 1),
    ("blocked_13x13_s2", (1, 17, 30, 29), 1, (13, 13), 2, 6, 1),  # column stride 2: the run-time width
    # run-time widths with zero padding: the blocks at a row's edges skip the kernel columns
    # that read only padding
    ("blocked_17x17", (1, 17, 20, 23), 1, (17, 17), 1, 8, 1),
    ("blocked_15x15_s2_d2", (1, 16, 40, 45), 1, (15, 15), 2, 14, 2),
    # shifted rows (14-row planes up to 16 columns, "same" zero padding, stride 1)
    ("shifted_5x5", (2, 5, 14, 14), 1, (5, 5), 1, 2, 1),
    ("shifted_7x7_w9_mult2", (1, 3, 14, 9), 2, (7, 7), 1, 3, 1),
    ("shifted_3x3_w16", (1, 4, 14, 16), 1, (3, 3), 1, 1, 1),
    # flat planes (AVX-512: 3x3 "same" at stride 1 on contiguous planes of up to 64 pixels,
    # two planes a call; narrow_3x3_same above too). Rows 4 to 8 wide at padding 1 and
    # dilation 1: taps shifted in registers; others: masked loads
    ("flat_8x8", (1, 7, 8, 8), 1, (3, 3), 1, 1, 1),  # four whole vectors; 7 planes: one left alone
    ("flat_3x5_d2_mult2", (2, 3, 3, 5), 2, (3, 3), 1, 2, 2),  # taps two rows and columns away
    ("flat_2x9", (1, 5, 2, 9), 1, (3, 3), 1, 1, 1),  # 18 pixels: a vector and 2 lanes
    ("flat_16x4", (1, 3, 16, 4), 1, (3, 3), 1, 1, 1),  # 4 wide: shifts by 3 to 5 lanes
    ("flat_5x6_mult2", (2, 3, 5, 6), 2, (3, 3), 1, 1, 1),  # 30 pixels: a vector and 14 lanes
    ("flat_2x7", (1, 5, 2, 7), 1, (3, 3), 1, 1, 1),  # one vector, zeros shifted in at both ends
    ("flat_5x5", (1, 2, 5, 5), 1, (3, 3), 1, 1, 1),
    # channels_last row kernel with zero padding: masked edge blocks of 16 (left and right)
    ("cl_rows_7x7", (1, 20, 9, 40), 1, (7, 7), 1, 3, 1),
    ("cl_rows_5x5_s2", (1, 18, 13, 50), 1, (5, 5), 2, 2, 1),
    ("same_5x5_on_7x7", (2, 20, 7, 7), 1, (5, 5), 1, 2, 1),  # trimmed taps, both layouts
    # AVX-512: a 14-wide "same" channels_last row is one block of 14, its padding columns
    # trimmed (a whole channel vector and a partial one; whole vectors only)
    ("cl_same14_7x7", (1, 20, 14, 14), 1, (7, 7), 1, 3, 1),
    ("cl_same14_5x5_c16", (2, 16, 14, 14), 1, (5, 5), 1, 2, 1),
    ("cl_rows_5x5", (1, 17, 10, 37), 1, (5, 5), 1, 2, 1),
    ("cl_rows_7x7_s2", (1, 16, 15, 44), 1, (7, 7), 2, 3, 1),
    ("cl_rows_3x3_w8_s2", (2, 17, 9, 8), 1, (3, 3), (2, 1), (1, 0), 1),  # 3x3: rows up to 8 wide
    ("cl_rows_3x3_w45", (1, 32, 6, 45), 1, (3, 3), 1, 1, 1),  # AVX-512: and from 40 wide, whole vectors
    ("cl_rows_3x3_same14", (2, 48, 14, 14), 1, (3, 3), 1, 1, 1),  # AVX-512: and 14-wide "same" rows
    ("cl_quads_3x3_same14_2kb", (1, 512, 5, 14), 1, (3, 3), 1, 1, 1),  # ... not with pixels 2 KB apart
    # channels_last 3x3 quads at dilation 2 and 4 (stride 1): quads of pixels a dilation apart,
    # each residue class in turn, its last 1-3 pixels alone; channel tails of 4 and 1
    ("cl_quads_3x3_d2", (2, 20, 17, 30), 1, (3, 3), 1, 2, 2),
    ("cl_quads_3x3_d4", (1, 33, 13, 41), 1, (3, 3), 1, 4, 4),
    # the row kernel at column dilation 2 (5x5, 7x7; stride 1), "same" and uneven padding
    ("cl_rows_5x5_d2", (1, 20, 11, 41), 1, (5, 5), 1, 4, 2),
    ("cl_rows_7x7_d2", (1, 17, 14, 30), 1, (7, 7), 1, (5, 6), 2),
    # ... but not on rows narrower than a dilated kernel's reach (the quads' listed taps)
    ("cl_d2_narrower_than_reach", (2, 32, 7, 7), 1, (5, 5), 1, 4, 2),
    # channels_last 9x9 and up at stride 1: NCHW kernels on NCHW copies; at stride 2 not
    ("cl_9x9_via_planes", (2, 18, 12, 13), 1, (9, 9), 1, 4, 1),
    ("cl_9x9_s2", (1, 16, 15, 17), 1, (9, 9), 2, 4, 1),
    # channels_last 3x3 grad_weight with a window of input pixels in registers (zero
    # padding, column stride 1 or 2, up to 32 columns): row stride 2 with no column padding
    # and a partial channel vector; a 31-wide row (its last input columns in the right
    # padding); column stride 2 with an even and an odd input width
    ("cl_gw_window_s2_nopad", (2, 20, 9, 13), 1, (3, 3), (2, 1), (1, 0), 1),
    ("cl_gw_window_w31", (1, 17, 6, 31), 1, (3, 3), 1, 1, 1),
    ("cl_gw_window_sw2", (2, 33, 8, 22), 1, (3, 3), (1, 2), 1, 1),
    ("cl_gw_window_sw2_odd", (1, 16, 9, 21), 1, (3, 3), 2, (0, 1), 1),
    ("cl_gw_window_wide", (2, 20, 5, 40), 1, (3, 3), 1, 1, 1),  # over 32 columns: all channels a task
    ("cl_gw_window_wide_sw2", (1, 18, 6, 75), 1, (3, 3), (1, 2), (1, 0), 1),
    # kernel width 4 at column stride 11: no row kernel (its key once read as 5x5, stride 1)
    ("kw4_stride11", (1, 16, 5, 60), 1, (3, 4), (1, 11), (1, 0), 1),
]


@pytest.mark.parametrize("path", ["auto", "blocked", "direct"])
@pytest.mark.parametrize("layout", ["contiguous", "row_view", "sliced", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", BLOCKED_SHAPES, ids=[s[0] for s in BLOCKED_SHAPES])
def test_blocked_forward_staging(shape, dtype, layout, path, monkeypatch):
    monkeypatch.setenv("CNNOPS_DEPTHWISE_CPU_PATH", path)
    name, size, mult, kernel, stride, padding, dilation = shape
    for i, mode in enumerate(MODES):
        if (i + len(layout)) % 2 and dtype == torch.bfloat16:
            continue  # half the modes in bfloat16 (the scalar staging is the same for all dtypes)
        x = leaf(_blocked_layout(rand(*size), layout).to(dtype))
        w = leaf(rand(size[1] * mult, 1, *kernel).to(dtype))
        b = leaf(rand(size[1] * mult).to(dtype))
        out = cnnops.F.depthwise_conv2d(x, w, b, stride, padding, dilation, mode)
        refs = [leaf(t.detach().double()) for t in (x, w, b)]
        ref = torch_depthwise(*refs, stride, padding, dilation, mode)
        msg = f"{name} {layout} {mode} {path}"
        assert_close(out, ref.to(dtype), dtype, "cpu", msg=msg)
        if path == "auto":  # the gradients (the blocked grad_weight works in the same strips)
            go = rand(*ref.shape)
            got = torch.autograd.grad(out, (x, w), go.to(dtype))
            exp = torch.autograd.grad(ref, refs[:2], go)
            for what, a, e in zip(("grad_input", "grad_weight"), got, exp):
                assert_close(a, e.to(dtype), dtype, "cpu", msg=f"{msg} {what}")


@pytest.mark.parametrize("stride", [1, 2])
def test_bfloat16_channels_last_in_float_chunks(stride):
    """The bfloat16 channels_last weight gradient outside the 3x3 window kernels (here:
    reflect padding) runs the float32 channels_last kernel on float32 copies of a few
    images at a time (about 4 MB: two of these 64x64x64 images):
    three chunks here, the last one short, summed chunk by chunk in order, so the same bits
    with one thread and with two. Forward and input gradient (in place, the test below)
    against float64 too."""
    x = leaf(rand(5, 64, 64, 64).to(torch.bfloat16).contiguous(memory_format=CL))
    w = leaf(rand(64, 1, 3, 3).to(torch.bfloat16))
    b = leaf(rand(64).to(torch.bfloat16))
    out = cnnops.F.depthwise_conv2d(x, w, b, stride, 1, 1, "reflect")
    assert out.is_contiguous(memory_format=CL)
    refs = [leaf(t.detach().double()) for t in (x, w, b)]
    ref = torch_depthwise(*refs, stride, 1, 1, "reflect")
    assert_close(out, ref.to(torch.bfloat16), torch.bfloat16, "cpu")
    go = rand(*ref.shape)
    got = torch.autograd.grad(out, (x, w, b), go.to(torch.bfloat16).contiguous(memory_format=CL))
    for what, a, e in zip(("input", "weight", "bias"), got, torch.autograd.grad(ref, refs, go)):
        assert_close(a, e.to(torch.bfloat16), torch.bfloat16, "cpu", msg=what)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.autograd.grad(cnnops.F.depthwise_conv2d(x, w, b, stride, 1, 1, "reflect"), w,
                                  go.to(torch.bfloat16).contiguous(memory_format=CL))[0]
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, got[1])


# (channels, height, width, kernel, stride, dilation, padding, padding mode): channel counts
# that leave the quads' blocks of two vectors, a whole vector, a partial one, or both; rows
# that are all border, interior rows of 4k + 1..3 columns; every mode.
IN_PLACE_CASES = [
    (144, 17, 19, 3, 1, 1, 1, "zeros"), (40, 23, 21, 3, 2, 1, 1, "zeros"), (17, 9, 30, 3, 1, 1, 1, "reflect"),
    (33, 12, 40, 3, 2, 2, 2, "circular"), (8, 11, 13, 3, 1, 1, 1, "replicate"), (20, 30, 31, 3, 3, 1, 0, "zeros"),
    (48, 30, 30, (4, 2), 1, 1, (1, 0), "zeros"), (64, 16, 16, 5, 1, 1, 2, "zeros"), (9, 20, 20, 5, 2, 1, 2, "replicate"),
    (32, 21, 22, 5, 1, 2, 4, "reflect"), (24, 5, 5, 3, 1, 1, 1, "zeros"), (16, 15, 15, 7, 2, 1, 3, "zeros"),
    (48, 14, 14, 3, 1, 1, 1, "zeros"), (40, 7, 7, 7, 1, 1, 3, "zeros"),  # AVX-512 row kernel: 14 and 7 wide
]


def four_sided(padding):
    """The ops' padding (top, bottom, left, right) of a functional's int or (rows, columns)."""
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    return [ph, ph, pw, pw]


def same_bits(a, b):
    """a and b hold the same bfloat16 bits (NaNs included)."""
    return torch.equal(a.view(torch.int16), b.view(torch.int16))


@pytest.mark.parametrize("case", IN_PLACE_CASES, ids=str)
def test_bfloat16_channels_last_in_place(case):
    """The channels_last forward, the input gradient and the 3x3 window kernels' weight
    gradient read and write bfloat16 in place (AVX-512), widening to float in registers:
    the float32 sums rounded once to nearest even. Against float64 (one bfloat16 rounding),
    NaN and Inf carried to the outputs that read them; where float32 takes the same loops
    (every forward case here: quads, listed taps and row kernel, whose tap order is the
    same; the input gradient's gather, the window kernels) the bits equal float32's
    rounded. A channel-sliced input and a grad_output without unit channel stride give the
    same bits."""
    c, h, w, k, stride, dilation, padding, mode = case
    op_geometry = ([stride] * 2, four_sided(padding), [dilation] * 2, mode)  # the ops' stride .. padding_mode
    torch.manual_seed(0)
    kh, kw = (k, k) if isinstance(k, int) else k
    x = rand(2, c, h, w).to(torch.bfloat16).contiguous(memory_format=CL)
    x[0, 0, 1, 1] = float("nan")
    x[1, c - 1, h // 2, w - 2] = float("inf")
    wt = rand(c, 1, kh, kw).to(torch.bfloat16)
    b = rand(c).to(torch.bfloat16)
    out = cnnops.F.depthwise_conv2d(x, wt, b, stride, padding, dilation, mode)
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=CL)
    ref = torch_depthwise(x.double(), wt.double(), b.double(), stride, padding, dilation, mode)
    assert torch.equal(out.isnan(), ref.isnan()) and torch.equal(out.isinf(), ref.isinf())
    finite = ref.isfinite()
    assert finite.sum() > ref.numel() // 2
    assert_close(out[finite], ref[finite].to(torch.bfloat16), torch.bfloat16, "cpu")
    as_float = cnnops.F.depthwise_conv2d(x.float(), wt.float(), b.float(), stride, padding, dilation, mode)
    assert same_bits(out, as_float.to(torch.bfloat16))
    # Channels 3..3+c of a wider channels_last tensor: pixels c + 5 values apart.
    wide = rand(2, c + 5, h, w).to(torch.bfloat16).contiguous(memory_format=CL)
    wide[:, 3:3 + c] = x
    sliced = cnnops.F.depthwise_conv2d(wide[:, 3:3 + c], wt, b, stride, padding, dilation, mode)
    assert same_bits(sliced, out)
    # The input gradient (stride 1 with zero padding: the forward of the flipped kernel;
    # otherwise the gather), in place too.
    go = rand(*out.shape).to(torch.bfloat16).contiguous(memory_format=CL)
    x64 = leaf(x.double().nan_to_num(0.0, 0.0, 0.0))
    expected, = torch.autograd.grad(torch_depthwise(x64, wt.double(), b.double(), stride, padding, dilation, mode),
                                    x64, go.double())
    got = ops.depthwise_conv2d_grad_input(go, wt, list(x.shape), *op_geometry, True)
    assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=CL)
    assert_close(got, expected.to(torch.bfloat16), torch.bfloat16, "cpu", msg="grad_input")
    # An NCHW grad_output (channel stride != 1) is copied to channels_last first.
    planar = ops.depthwise_conv2d_grad_input(go.contiguous(), wt, list(x.shape), *op_geometry, True)
    assert same_bits(planar, got)
    if stride > 1 or mode != "zeros":  # the gather, as float32 runs it: its sums rounded once
        as_float = ops.depthwise_conv2d_grad_input(go.float(), wt.float(), list(x.shape), *op_geometry, True)
        assert same_bits(got, as_float.to(torch.bfloat16))
    # The weight gradient: in place in the 3x3 window kernels (zero padding, dilation 1,
    # column stride 1 or 2), else on float32 copies.
    x_finite = x.nan_to_num(0.0, 0.0, 0.0)
    w64 = leaf(wt.double())
    expected, = torch.autograd.grad(torch_depthwise(x_finite.double(), w64, None, stride, padding, dilation, mode),
                                    w64, go.double())
    got = ops.depthwise_conv2d_grad_weight(go, x_finite, list(wt.shape), *op_geometry, False)
    assert_close(got, expected.to(torch.bfloat16), torch.bfloat16, "cpu", msg="grad_weight")
    window = (kh, kw) == (3, 3) and dilation == 1 and mode == "zeros" and four_sided(padding)[2] <= 1 and stride <= 2
    if window:  # the float32 window kernel's partial sums, rounded once
        as_float = ops.depthwise_conv2d_grad_weight(go.float(), x_finite.float(), list(wt.shape), *op_geometry, False)
        assert same_bits(got, as_float.to(torch.bfloat16))


# (channels, height, width, kernel, stride, dilation, padding, padding mode): the channels_last
# input gradient gathers, per residue class of (row, column) mod stride, through the quad
# kernel; classes without taps (kernel 2 at stride 3), dilation with stride, even and
# non-square kernels, stride 1 with the other modes, and each mode's border (its pixels,
# and the forward's, list their taps).
GATHER_CASES = [
    (24, 13, 22, (2, 2), (3, 3), 1, 0, "zeros"), (32, 20, 27, (3, 3), (2, 2), 2, 2, "reflect"),
    (16, 19, 30, (5, 3), (2, 3), (1, 2), (2, 1), "circular"), (40, 16, 33, (3, 3), (2, 2), 1, 1, "replicate"),
    (64, 12, 40, (4, 4), (2, 2), 1, (1, 2), "zeros"), (20, 11, 25, (3, 3), 1, 1, 1, "reflect"),
    # 61 channels: the pixels with listed taps end on a block of 4 vectors, the last partial
    (61, 10, 21, (3, 3), (2, 2), 1, 1, "zeros"), (61, 9, 14, (3, 3), 1, 1, 1, "circular"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", GATHER_CASES, ids=[f"{c[0]}ch_k{c[3]}_s{c[4]}_{c[7]}" for c in GATHER_CASES])
def test_channels_last_grad_input_residue_classes(case, dtype):
    c, h, w, k, stride, dilation, padding, mode = case
    torch.manual_seed(0)
    x = make_input((2, c, h, w), "channels_last", dtype)
    wt = make_weight((c, 1, *k), "contiguous", dtype)
    b = leaf(rand(c, dtype=dtype))
    compare(x, wt, b, stride, padding, dilation, mode, msg=str(case))


# (kernel, dilation, height, width): the forward's quads; its row kernel on wide rows, on
# 7-column planes (the trimmed block at stride 1), at dilation 2, and for 3x3 on rows of 8 or less
STREAM_CASES = [(3, 1, 21, 38), (5, 1, 21, 38), (7, 1, 9, 7), (5, 2, 21, 38), (3, 1, 21, 7)]


@pytest.mark.parametrize("channels", [64, 40])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("case", STREAM_CASES, ids=[f"k{c[0]}_d{c[1]}_w{c[3]}" for c in STREAM_CASES])
def test_channels_last_streamed_stores(channels, stride, case, monkeypatch):
    """Outputs larger than the threads' L2 caches are written with streaming stores
    (CNNOPS_DEPTHWISE_CPU_STREAM=always forces them, never turns them off): the forward's
    quads or row kernel (STREAM_CASES) and the input gradient's (stride 1: the forward of
    the flipped kernel; stride 2: the gather's classes). Only whole 64-byte aligned vectors
    stream: 64 channels; with 40 the forward's pixels, 160 bytes apart, take ordinary
    stores on AVX-512, and of the stride-2 gather's, 320 bytes apart, the even columns
    stream (AVX2's 32-byte vectors stream at 40 channels too). The sums are the same, so the
    bits are the same either way. (Builds without AVX2 have no streaming store: there this
    checks the ordinary stores only.)"""
    kernel, dilation, height, width = case
    torch.manual_seed(0)
    pad = dilation * (kernel // 2)
    x = rand(2, channels, height, width).float().contiguous(memory_format=CL)
    wt, b = rand(channels, 1, kernel, kernel).float(), rand(channels).float()
    go = None
    results = {}
    for choice in ("always", "never", "auto"):
        monkeypatch.setenv("CNNOPS_DEPTHWISE_CPU_STREAM", choice)
        out = cnnops.F.depthwise_conv2d(x, wt, b, stride, pad, dilation)
        go = rand(*out.shape).float().contiguous(memory_format=CL) if go is None else go
        grad_input = ops.depthwise_conv2d_grad_input(go, wt, list(x.shape), [stride] * 2, [pad] * 4, [dilation] * 2,
                                                     "zeros", True)
        results[choice] = (out, grad_input)
    x64 = leaf(x.double())
    ref = torch_depthwise(x64, wt.double(), b.double(), stride, pad, dilation)
    expected, = torch.autograd.grad(ref, x64, go.double())
    for i, (exp, what) in enumerate(zip((ref, expected), ("forward", "grad_input"))):
        got = results["always"][i]
        assert_close(got, exp.float(), torch.float32, "cpu", msg=what)
        for choice in ("never", "auto"):
            assert torch.equal(got, results[choice][i]), f"{what} {choice}"


# (kernel, stride, dilation, padding, height, width): channels_last forwards whose border
# pixels go through the listed-taps kernel in groups of 1 to 4 along a row (zero padding:
# a group's taps are the union of its pixels', the others read zeros), beside interior quads
LISTED_CASES = [(5, 1, 1, 2, 14, 14), (3, 1, 2, 2, 9, 11), (5, 1, 1, (1, 3), 10, 17), (3, 2, 1, 1, 13, 15),
                (4, 1, 1, (2, 1), 8, 9)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", LISTED_CASES, ids=[f"k{c[0]}_s{c[1]}_d{c[2]}_w{c[5]}" for c in LISTED_CASES])
def test_channels_last_listed_pixels(case, mode, dtype):
    """channels_last forward over channel counts that end in every kind of channel block
    (whole blocks, a whole vector, a partial one, both) for groups of 1 to 4 border pixels,
    every padding mode, against torch. (float64 takes these kernels on every CPU; float32 5x5
    goes to the row kernel on AVX-512.)"""
    kernel, stride, dilation, padding, height, width = case
    for channels in (3, 8, 13, 16, 21, 24, 29, 40):
        torch.manual_seed(channels)
        x = rand(2, channels, height, width, dtype=dtype).contiguous(memory_format=CL)
        wt, b = rand(channels, 1, kernel, kernel, dtype=dtype), rand(channels, dtype=dtype)
        got = cnnops.F.depthwise_conv2d(x, wt, b, stride, padding, dilation, mode)
        ref = torch_depthwise(x.double(), wt.double(), b.double(), stride, padding, dilation, mode)
        assert_close(got, ref.to(dtype), dtype, "cpu", msg=f"{channels} channels")


# (kernel, stride, dilation, height, width): channels_last forwards with interior quads
# (3x3 with stride equal to dilation: the quads share each input pixel between its taps)
ORDER_CASES = [(3, 1, 1, 9, 21), (3, 2, 1, 11, 23), (3, 1, 2, 10, 19), (3, 2, 2, 12, 25), (5, 1, 1, 9, 13),
               (2, 2, 1, 8, 17)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("case", ORDER_CASES, ids=[f"k{c[0]}_s{c[1]}_d{c[2]}" for c in ORDER_CASES])
def test_channels_last_interior_orders(case, dtype, monkeypatch):
    """The forward's interior pixels four at a time (CNNOPS_DEPTHWISE_CPU_ORDER=quads) or
    one at a time, every channel of one before the next (pixels; auto takes it for 3x3 on
    inputs over 16 MB), with and without streamed stores, over channel counts ending in
    every kind of block of up to four vectors: torch's values, and the same bits in every
    order (each output sums its taps in the same order; bfloat16 also in the 32-channel
    blocks that the shared 3x3 quads widen by unpacking and store, streamed, by packing: in
    AVX-512 builds, where bfloat16 runs in place)."""
    kernel, stride, dilation, height, width = case
    pad = dilation * (kernel // 2)
    for channels in (3, 13, 16, 21, 24, 40, 61, 64):
        torch.manual_seed(channels)
        x = rand(2, channels, height, width, dtype=dtype).contiguous(memory_format=CL)
        wt, b = rand(channels, 1, kernel, kernel, dtype=dtype), rand(channels, dtype=dtype)
        results = {}
        for order in ("quads", "pixels"):
            for stream in ("never", "always"):
                monkeypatch.setenv("CNNOPS_DEPTHWISE_CPU_ORDER", order)
                monkeypatch.setenv("CNNOPS_DEPTHWISE_CPU_STREAM", stream)
                results[order, stream] = cnnops.F.depthwise_conv2d(x, wt, b, stride, pad, dilation)
        ref = torch_depthwise(x.double(), wt.double(), b.double(), stride, pad, dilation)
        got = results["pixels", "always"]
        assert_close(got, ref.to(dtype), dtype, "cpu", msg=f"{channels} channels")
        for key, other in results.items():
            assert torch.equal(got, other), f"{channels} channels, {key}"


# (height, width, stride, dilation): float32 NCHW 3x3 planes (the direct kernel) whose rows
# are 128 bytes, so every output row is vector aligned and streams; and 20 columns (80-byte
# rows: on AVX2 the second row of a pair is not aligned, so no plane streams).
DIRECT_STREAM_CASES = [(13, 32, 1, 1), (13, 32, 1, 2), (14, 64, 2, 1), (9, 20, 1, 1)]


@pytest.mark.parametrize("case", DIRECT_STREAM_CASES,
                         ids=[f"{c[0]}x{c[1]}_s{c[2]}_d{c[3]}" for c in DIRECT_STREAM_CASES])
def test_direct_3x3_streamed_stores(case, monkeypatch):
    """The NCHW direct 3x3 forward streams its output rows where they are all vector
    aligned and the output outgrows the threads' L2 (forced here). Same bits either way,
    and torch's values."""
    height, width, stride, dilation = case
    torch.manual_seed(0)
    x = rand(2, 5, height, width).float()
    wt, b = rand(5, 1, 3, 3).float(), rand(5).float()
    results = {}
    for choice in ("always", "never"):
        monkeypatch.setenv("CNNOPS_DEPTHWISE_CPU_STREAM", choice)
        results[choice] = cnnops.F.depthwise_conv2d(x, wt, b, stride, dilation, dilation)
    ref = torch_depthwise(x.double(), wt.double(), b.double(), stride, dilation, dilation)
    assert_close(results["always"], ref.float(), torch.float32, "cpu")
    assert torch.equal(results["always"], results["never"])


@pytest.mark.parametrize("var,choices", [("CNNOPS_DEPTHWISE_CPU_STREAM", "'auto', 'always', 'never'"),
                                         ("CNNOPS_DEPTHWISE_CPU_ORDER", "'auto', 'pixels', 'quads'")])
def test_path_env_is_checked(var, choices, monkeypatch):
    monkeypatch.setenv(var, "sometimes")
    x = rand(1, 16, 8, 8).float().contiguous(memory_format=CL)
    with pytest.raises(ValueError, match=f"{var} to be one of {choices}, got 'sometimes'"):
        cnnops.F.depthwise_conv2d(x, rand(16, 1, 3, 3).float(), None, 1, 1)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("groups", [1, "depthwise"])
def test_taps_that_read_only_padding_are_dropped(groups, layout):
    """Zero padding: kernel rows and columns that read only padding are dropped before the
    kernels run (functional.py _without_dead_taps), the input narrowed to what the others
    read. Outputs and all gradients equal torch's, over dilations as large as the input,
    strides, uneven padding and kernels, and inputs 1 to 9 rows high."""
    torch.manual_seed(0)
    c = 4
    g = c if groups == "depthwise" else 1
    cases = 0
    for (h, w), (kh, kw), stride, dilation, padding in itertools.product(
            [(1, 5), (3, 8), (9, 8)], [(3, 3), (5, 2), (1, 4)], [1, 2, 3], [1, 4, 7], [3, 9, (2, 11)]):
        x = make_input((2, c, h, w), layout)
        wt = leaf(rand(c if g == c else 6, c // g, kh, kw))
        b = leaf(rand(wt.shape[0]))
        try:
            ref = torch.nn.functional.conv2d(x, wt, b, stride, padding, dilation, g)
        except RuntimeError:  # no output
            continue
        out = cnnops.F.conv2d(x, wt, b, stride, padding, dilation, g)
        go = rand(*ref.shape)
        msg = f"{h}x{w} k{kh}x{kw} s{stride} d{dilation} p{padding}"
        assert_close(out, ref, msg=msg)
        for a, e in zip(torch.autograd.grad(out, (x, wt, b), go), torch.autograd.grad(ref, (x, wt, b), go)):
            assert_close(a, e, msg=msg)
        cases += 1
    assert cases > 100


def test_dilation_far_beyond_the_input():
    """Dilation and padding 1e5 on an 8x8 input: only the centre tap reads the input. The
    padded frame used to be staged whole (std::bad_alloc: MemoryError)."""
    x, w = rand(1, 4, 8, 8), rand(4, 1, 3, 3)
    ref = torch.nn.functional.conv2d(x, w, None, 1, 100000, 100000, 4)
    assert_close(cnnops.F.depthwise_conv2d(x, w, None, 1, 100000, 100000), ref)
    assert_close(cnnops.F.conv2d(x, w, None, 1, 100000, 100000, 4), ref)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_stride_far_beyond_the_input(layout):
    """Strides of 1e5 on a 5x6 input: one output pixel. The channels_last gather keeps a
    table per residue class of stride: only as many as the input has rows and columns."""
    x = make_input((2, 8, 5, 6), layout)
    w, b = leaf(rand(8, 1, 1, 1)), leaf(rand(8))
    compare(x, w, b, 100000, 0, 1, "zeros", msg=layout)
    compare(x, w, b, (3, 100000), (1, 0), 1, "reflect", msg=layout)


def test_forward_path_env_is_checked(monkeypatch):
    monkeypatch.setenv("CNNOPS_DEPTHWISE_CPU_PATH", "fastest")
    with pytest.raises(ValueError, match="CNNOPS_DEPTHWISE_CPU_PATH to be one of 'auto', 'blocked', 'direct', "
                                         "got 'fastest'"):
        cnnops.F.depthwise_conv2d(rand(1, 4, 5, 5), rand(4, 1, 3, 3))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_large_kernel_31(mode, layout):
    """31 x 31 (RepLKNet), padding 15 on a 16 x 17 input: most taps fall in the padding."""
    x = make_input((1, 8, 16, 17), layout)
    w = make_weight((8, 1, 31, 31), "contiguous")
    compare(x, w, leaf(rand(8)), 1, 15, 1, mode, msg=f"31x31 {layout} {mode}")


@pytest.mark.parametrize("device,dtype", device_dtype_params())
def test_conv2d_routes_depthwise(device, dtype):
    """cnnops.F.conv2d and cnnops.nn.Conv2d with groups == in_channels run the depthwise op."""
    x = make_input((2, 6, 9, 8), "contiguous", dtype, device)
    w = make_weight((12, 1, 3, 3), "contiguous", dtype, device)
    b = leaf(rand(12, dtype=dtype, device=device))
    compare(x, w, b, 2, 1, 1, "reflect", fn=lambda x, w, b: cnnops.F.conv2d(x, w, b, 2, 1, 1, 6, "reflect"))
    graph = make_fx(lambda x, w: cnnops.F.conv2d(x, w, None, 1, 1, 1, 6))(x.detach(), w.detach())
    targets = {str(n.target) for n in graph.graph.nodes if n.op == "call_function"}
    assert "cnnops.depthwise_conv2d.default" in targets, targets
    graph = make_fx(lambda x, w: cnnops.F.conv2d(x, w, None, 1, 1, 1, 3))(x.detach(), rand(12, 2, 3, 3).to(x))
    assert "cnnops.conv2d.default" in {str(n.target) for n in graph.graph.nodes}
    m = cnnops.nn.Conv2d(6, 12, 3, padding=1, groups=6, padding_mode="circular", dtype=dtype, device=device)
    r = torch.nn.Conv2d(6, 12, 3, padding=1, groups=6, padding_mode="circular", dtype=torch.float64)
    r.load_state_dict({k: v.double().cpu() for k, v in m.state_dict().items()})
    assert_close(m(x), r(x.detach().double().cpu()).to(dtype), dtype, device)


# ---------------------------------------------------------------- 2. hypothesis configurations

@st.composite
def dw_configs(draw):
    big = draw(st.booleans())
    kh = draw(st.integers(1, 31 if big else 5))
    kw = draw(st.integers(1, 31 if big else 5))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    if big:  # keep large kernels cheap: no dilation
        dh = dw = 1
    mode = draw(st.sampled_from(MODES))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    if draw(st.booleans()):
        padding = (draw(st.integers(0, dh * (kh - 1))), draw(st.integers(0, dw * (kw - 1))))
    else:
        padding = "valid"
    pads = (0, 0) if padding == "valid" else padding

    def min_size(pad, dilated):
        need = max(1, dilated - 2 * pad)
        if mode == "reflect":
            need = max(need, pad + 1)
        elif mode == "circular":
            need = max(need, pad)
        return need

    h = draw(st.integers(min_size(pads[0], dh * (kh - 1) + 1), min_size(pads[0], dh * (kh - 1) + 1) + 6))
    w = draw(st.integers(min_size(pads[1], dw * (kw - 1) + 1), min_size(pads[1], dw * (kw - 1) + 1) + 8))
    c = draw(st.sampled_from([1, 3, 8, 19]))
    return dict(n=draw(st.integers(0, 2)), c=c, mult=draw(st.integers(1, 3)), h=h, w=w, kernel=(kh, kw),
                stride=stride, padding=padding, dilation=(dh, dw), mode=mode, bias=draw(st.booleans()),
                layout=draw(st.sampled_from(LAYOUTS)), dtype=draw(st.sampled_from([torch.float64, torch.float32])))


@given(cfg=dw_configs())
def test_depthwise_hypothesis(cfg):
    x = make_input((cfg["n"], cfg["c"], cfg["h"], cfg["w"]), cfg["layout"], cfg["dtype"])
    w = make_weight((cfg["c"] * cfg["mult"], 1, *cfg["kernel"]), cfg["layout"], cfg["dtype"])
    b = leaf(rand(cfg["c"] * cfg["mult"], dtype=cfg["dtype"])) if cfg["bias"] else None
    compare(x, w, b, cfg["stride"], cfg["padding"], cfg["dilation"], cfg["mode"], msg=str(cfg))


# ---------------------------------------------------------------- 3. padding forms, unbatched, grad strides

@pytest.mark.parametrize("padding", [0, 2, (1, 3), "valid", "same"])
@pytest.mark.parametrize("mode", MODES)
def test_padding_forms(padding, mode):
    x = make_input((2, 3, 8, 9), "contiguous")
    w = make_weight((6, 1, 3, 4), "contiguous")
    compare(x, w, leaf(rand(6)), 1, padding, (2, 1), mode, msg=f"{padding!r} {mode}")


def test_unbatched_input():
    x = leaf(rand(4, 7, 6))
    w = make_weight((8, 1, 3, 3), "contiguous")
    out = cnnops.F.depthwise_conv2d(x, w, None, 1, "same", 1, "reflect")
    ref = torch_depthwise(x, w, None, 1, "same", 1, "reflect")
    assert out.shape == ref.shape == (8, 7, 6)
    assert_close(out, ref)
    go = rand(*ref.shape)
    for a, e in zip(torch.autograd.grad(out, (x, w), go), torch.autograd.grad(ref, (x, w), go)):
        assert_close(a, e)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "channels_last_weight"])
@pytest.mark.parametrize("go_layout", ["contiguous", "channels_last", "expanded"])
def test_grad_strides_match_torch(layout, go_layout):
    x = make_input((2, 16, 7, 8), layout)
    w = make_weight((16, 1, 3, 3), layout)
    out, ref = cnnops.F.depthwise_conv2d(x, w, None, 1, 1), TF.conv2d(x, w, None, 1, 1, 1, 16)
    go = rand(*out.shape)
    if go_layout == "channels_last":
        go = go.contiguous(memory_format=CL)
    elif go_layout == "expanded":
        go = rand(1, 1, 1, 1).expand(out.shape)
    for a, e in zip(torch.autograd.grad(out, (x, w), go), torch.autograd.grad(ref, (x, w), go)):
        assert_close(a, e)
        assert significant_strides(a) == significant_strides(e), f"{a.stride()} vs torch {e.stride()}"


# NCHW <-> channels_last copies of float32 operands, made on the CPU by 16 x 16 in-register
# transposes masked at the edges (cpu/layout_copy.cpp): the eager backward's one copy of an
# NCHW grad_output for a channels_last forward, the kernels' own copies where one gradient is
# wanted, the NCHW detour of 9x9 channels_last kernels, conv2d's panels. Every path must give
# bitwise what it gives on operands converted beforehand, for channel and pixel counts that
# are and are not multiples of 16.
@pytest.mark.parametrize("need", ["both", "input", "weight"])
@pytest.mark.parametrize("kernel", [3, 9])
@pytest.mark.parametrize("channels,size", [(1, (5, 7)), (5, (3, 19)), (16, (4, 4)), (17, (1, 1)), (33, (6, 5))])
def test_layout_copies_float32(channels, size, kernel, need):
    x = leaf(torch.randn(2, channels, *size).contiguous(memory_format=CL))
    w = leaf(torch.randn(channels, 1, kernel, kernel))
    targets = {"both": (x, w), "input": (x,), "weight": (w,)}[need]
    out = cnnops.F.depthwise_conv2d(x, w, None, 1, kernel // 2)
    go = torch.randn(out.shape)  # NCHW, against a channels_last forward
    got = torch.autograd.grad(out, targets, go)
    want = torch.autograd.grad(cnnops.F.depthwise_conv2d(x, w, None, 1, kernel // 2), targets,
                               go.contiguous(memory_format=CL))
    for a, e in zip(got, want):
        assert torch.equal(a, e) and a.stride() == e.stride()
    ref = TF.conv2d(x, w, None, 1, kernel // 2, 1, channels)
    assert_close(out, ref)
    for a, e in zip(got, torch.autograd.grad(ref, targets, go)):
        assert_close(a, e)
    assert out.is_contiguous(memory_format=CL)  # (9x9: the NCHW result copied back)


@pytest.mark.parametrize("channels,size", [(1, (5, 7)), (17, (3, 19)), (32, (4, 4))])
def test_conv2d_layout_copies_float32(channels, size):
    x = leaf(torch.randn(2, channels, *size))
    w = leaf(torch.randn(6, channels, 3, 3).contiguous(memory_format=CL))  # a channels_last conv of NCHW input
    out = cnnops.F.conv2d(x, w, None, 1, 1)
    go = torch.randn(out.shape)
    got = torch.autograd.grad(out, (x, w), go)
    x_cl = leaf(x.detach().contiguous(memory_format=CL))
    out_cl = cnnops.F.conv2d(x_cl, w, None, 1, 1)
    want = torch.autograd.grad(out_cl, (x_cl, w), go.contiguous(memory_format=CL))
    assert torch.equal(out, out_cl)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    ref = TF.conv2d(x, w, None, 1, 1)
    assert_close(out, ref)
    for a, e in zip(got, torch.autograd.grad(ref, (x, w), go)):
        assert_close(a, e)


# A weight that is not contiguous (every other column of a wider tensor): the kernels' weight
# packing takes its element loops instead of the one-go copy and the transposes.
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("size,kernel", [((2, 20, 7, 7), 7), ((1, 5, 14, 14), 5), ((1, 18, 20, 30), 3)],
                         ids=["blocked_7x7", "shifted_5x5", "direct_3x3"])
def test_strided_weight(size, kernel, layout):
    x = make_input(size, layout, torch.float32)
    w = leaf(rand(size[1], 1, kernel, 2 * kernel, dtype=torch.float32)[..., ::2])
    assert not w.is_contiguous()
    compare(x, w, leaf(rand(size[1], dtype=torch.float32)), 1, kernel // 2, 1, "zeros", msg=f"{size} {layout}")


# Weight and bias views (an odd storage offset, every other element) on every device: the
# CUDA kernels index the bias as bias[oc] and read channel pairs of a weight copy.
@pytest.mark.parametrize("cuda_path", ["auto", "direct", "tiled", "simple"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("device,dtype", device_dtype_params())
def test_weight_and_bias_views(device, dtype, layout, cuda_path, monkeypatch):
    if device == "cpu" and cuda_path != "auto":
        pytest.skip("CNNOPS_DEPTHWISE_CUDA_PATH changes nothing on the CPU")
    monkeypatch.setenv("CNNOPS_DEPTHWISE_CUDA_PATH", cuda_path)
    x = make_input((2, 8, 9, 10), layout, dtype, device)
    for k in (1, 3):
        w = leaf(rand(8 * k * k + 1, dtype=dtype, device=device)[1:].view(8, 1, k, k))
        b = leaf(rand(16, dtype=dtype, device=device)[::2])
        assert w.storage_offset() == 1 and b.stride() == (2,)
        compare(x, w, b, 1, k // 2, 1, "zeros", msg=f"{device} {dtype} {layout} k={k} cuda_path={cuda_path}")


@pytest.mark.parametrize("shape,kernel", [((4, 32, 40, 41), 5), ((2, 48, 9, 9), 7), ((2, 16, 30, 30), 13)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_threaded_matches_torch(shape, kernel, layout):
    """Large enough for at::parallel_for to split the work over 2 threads (every kernel shape)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = make_input(shape, layout, torch.float32)
        w = make_weight((shape[1], 1, kernel, kernel), "contiguous", torch.float32)
        compare(x, w, leaf(rand(shape[1], dtype=torch.float32)), 1, kernel // 2, 1, "reflect", msg=f"{shape} {layout}")
    finally:
        torch.set_num_threads(previous)


def test_grad_weight_is_reproducible_across_thread_counts():
    x = make_input((4, 24, 20, 21), "contiguous", torch.float32)
    x_cl = leaf(x.detach().contiguous(memory_format=CL))
    w = make_weight((24, 1, 5, 5), "contiguous", torch.float32)
    results = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for inp in (x, x_cl):
                out = cnnops.F.depthwise_conv2d(inp, w, None, 1, 2)
                results.append(torch.autograd.grad(out, w, torch.ones_like(out))[0])
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(results[0], results[2]) and torch.equal(results[1], results[3])


# ---------------------------------------------------------------- 4. gradcheck / gradgradcheck

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("mult,layout", [(1, "contiguous"), (2, "contiguous"), (1, "channels_last"), (2, "channels_last")])
def test_gradcheck(mode, mult, layout, single_thread):
    c = 8 if layout == "channels_last" else 2
    x = make_input((2, c, 5, 6), layout)
    w = leaf(rand(c * mult, 1, 3, 2))
    b = leaf(rand(c * mult))

    def f(x, w, b):
        return cnnops.F.depthwise_conv2d(x, w, b, (2, 1), (2, 1), (1, 2), mode)

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


def test_gradcheck_function(single_thread):
    x, w, b = leaf(rand(1, 3, 5, 5)), leaf(rand(6, 1, 3, 3)), leaf(rand(6))

    def f(x, w, b):
        return cnnops.functional.DepthwiseConv2dFunction.apply(x, w, b, 1, "same", 1, "replicate")

    assert torch.autograd.gradcheck(f, (x, w, b))


# ---------------------------------------------------------------- 5. opcheck

OPCHECK = {
    "reflect_mult2": ((2, 3, 7, 6), False, (6, 1, 3, 2), [1, 2], [1, 0, 2, 1], [1, 1], "reflect"),
    "zeros_channels_last": ((2, 8, 6, 7), True, (8, 1, 3, 3), [2, 1], [1, 1, 1, 1], [2, 1], "zeros"),
    "circular_even": ((1, 4, 5, 5), False, (4, 1, 2, 3), [1, 1], [1, 0, 1, 1], [1, 1], "circular"),
}


@pytest.mark.parametrize("name", list(OPCHECK))
@pytest.mark.parametrize("op", ["forward", "grad_input", "grad_weight"])
def test_opcheck(op, name, single_thread):
    xs, xcl, ws, stride, padding, dilation, mode = OPCHECK[name]
    x = make_input(xs, "channels_last" if xcl else "contiguous")
    w, b = leaf(rand(*ws)), leaf(rand(ws[0]))
    args = (stride, padding, dilation, mode)
    out = ops.depthwise_conv2d(x.detach(), w.detach(), b.detach(), *args)
    go = leaf(rand(*out.shape))
    if op == "forward":
        call = (ops.depthwise_conv2d, (x, w, b, *args))
    elif op == "grad_input":
        call = (ops.depthwise_conv2d_grad_input, (go, w, list(xs), *args, xcl))
    else:
        call = (ops.depthwise_conv2d_grad_weight, (go, x, list(ws), *args, xcl))
    result = torch.library.opcheck(*call)
    assert result and all(v == "SUCCESS" for v in result.values()), result


# ---------------------------------------------------------------- 6. torch.compile

@pytest.mark.parametrize("module", ["conv2d_groups", "separable", "spatial"])
def test_compile_aot_eager(module, dynamo_reset):
    if module == "conv2d_groups":
        kwargs = dict(in_channels=8, out_channels=16, kernel_size=5, padding=2, groups=8, padding_mode="reflect")
        m, r = cnnops.nn.Conv2d(**kwargs, dtype=torch.float64), torch.nn.Conv2d(**kwargs, dtype=torch.float64)
    elif module == "separable":
        m = cnnops.nn.DepthwiseSeparableConv2d(8, 5, 3, padding=1, depth_multiplier=2, dtype=torch.float64)
        r = _torch_separable(8, 5, 3, padding=1, depth_multiplier=2)
    else:
        m = cnnops.nn.SpatiallySeparableConv2d(8, 5, 3, padding=1, padding_mode="circular", dtype=torch.float64)
        r = _torch_spatial(8, 5, 3, padding=1, padding_mode="circular")
    r.load_state_dict(m.state_dict())
    x = leaf(rand(2, 8, 9, 9).contiguous(memory_format=CL))
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    y, y_ref = compiled(x), r(x)
    assert_close(y, y_ref)
    go = rand(*y.shape)
    for a, e in zip(torch.autograd.grad(y, [x, *m.parameters()], go), torch.autograd.grad(y_ref, [x, *r.parameters()], go)):
        assert_close(a, e)


def test_compile_function_aot_eager(dynamo_reset):
    x, w, b = leaf(rand(2, 3, 6, 6)), leaf(rand(3, 1, 3, 3)), leaf(rand(3))

    def f(x, w, b):
        return cnnops.F.depthwise_conv2d(x, w, b, 1, "same", 1, "reflect")

    y = torch.compile(f, backend="aot_eager", fullgraph=True)(x, w, b)
    ref = torch_depthwise(x, w, b, 1, "same", 1, "reflect")
    assert_close(y, ref)
    go = rand(*y.shape)
    for a, e in zip(torch.autograd.grad(y, (x, w, b), go), torch.autograd.grad(ref, (x, w, b), go)):
        assert_close(a, e)


# ---------------------------------------------------------------- 7. separable modules

def _torch_separable(cin, cout, k, stride=1, padding=0, dilation=1, bias=True, padding_mode="zeros", depth_multiplier=1):
    return torch.nn.Sequential(OrderedDict(
        depthwise=torch.nn.Conv2d(cin, cin * depth_multiplier, k, stride, padding, dilation, groups=cin, bias=bias,
                                  padding_mode=padding_mode, dtype=torch.float64),
        pointwise=torch.nn.Conv2d(cin * depth_multiplier, cout, 1, bias=bias, dtype=torch.float64)))


def _torch_spatial(cin, cout, k, stride=1, padding=0, dilation=1, bias=True, padding_mode="zeros"):
    return torch.nn.Sequential(OrderedDict(
        vertical=torch.nn.Conv2d(cin, cout, (k, 1), (stride, 1), (padding, 0), (dilation, 1), bias=bias,
                                 padding_mode=padding_mode, dtype=torch.float64),
        horizontal=torch.nn.Conv2d(cout, cout, (1, k), (1, stride), (0, padding), (1, dilation), bias=bias,
                                   padding_mode=padding_mode, dtype=torch.float64)))


@pytest.mark.parametrize("kwargs", [
    dict(cin=3, cout=64, k=3, padding=1, bias=False),
    dict(cin=8, cout=5, k=5, stride=2, padding=2, dilation=1, padding_mode="reflect", depth_multiplier=2),
    dict(cin=16, cout=16, k=3, padding=2, dilation=2, padding_mode="replicate"),
], ids=["3to64", "mult2_reflect_s2", "dilated_replicate"])
def test_depthwise_separable_module(kwargs):
    kw = dict(kwargs)
    cin, cout, k = kw.pop("cin"), kw.pop("cout"), kw.pop("k")
    m = cnnops.nn.DepthwiseSeparableConv2d(cin, cout, k, **kw, dtype=torch.float64)
    r = _torch_separable(cin, cout, k, **kw)
    assert isinstance(m.depthwise, cnnops.nn.Conv2d) and isinstance(m.pointwise, cnnops.nn.Conv2d)
    assert m.depthwise.groups == cin and m.pointwise.kernel_size == (1, 1)
    assert list(m.state_dict()) == list(r.state_dict())
    r.load_state_dict(m.state_dict())
    mult, bias = kw.get("depth_multiplier", 1), kw.get("bias", True)
    expected = k * k * cin * mult + cin * mult * cout + ((cin * mult + cout) if bias else 0)
    assert sum(p.numel() for p in m.parameters()) == expected
    x = make_input((2, cin, 11, 10), "contiguous")
    y, y_ref = m(x), r(x)
    assert_close(y, y_ref)
    go = rand(*y.shape)
    for a, e in zip(torch.autograd.grad(y, [x, *m.parameters()], go), torch.autograd.grad(y_ref, [x, *r.parameters()], go)):
        assert_close(a, e)


def test_separable_parameter_counts_textbook():
    m = cnnops.nn.DepthwiseSeparableConv2d(3, 64, 3, bias=False)
    assert m.depthwise.weight.numel() == 27 and m.pointwise.weight.numel() == 192
    m = cnnops.nn.DepthwiseSeparableConv2d(32, 64, 3)
    assert sum(p.numel() for p in m.parameters()) == 9 * 32 + 32 + 32 * 64 + 64
    s = cnnops.nn.SpatiallySeparableConv2d(64, 64, 7, bias=False)
    assert sum(p.numel() for p in s.parameters()) == 7 * 64 * 64 * 2


@pytest.mark.parametrize("kwargs", [
    dict(cin=4, cout=6, k=3, padding=1),
    dict(cin=3, cout=5, k=5, stride=2, padding=2, dilation=1, bias=False, padding_mode="reflect"),
    dict(cin=2, cout=3, k=3, padding=2, dilation=2, padding_mode="circular"),
], ids=["basic", "s2_reflect_nobias", "dilated_circular"])
def test_spatially_separable_module(kwargs):
    kw = dict(kwargs)
    cin, cout, k = kw.pop("cin"), kw.pop("cout"), kw.pop("k")
    m = cnnops.nn.SpatiallySeparableConv2d(cin, cout, k, **kw, dtype=torch.float64)
    r = _torch_spatial(cin, cout, k, **kw)
    s, p, d = kw.get("stride", 1), kw.get("padding", 0), kw.get("dilation", 1)
    assert m.vertical.kernel_size == (k, 1) and m.vertical.stride == (s, 1) and m.vertical.padding == (p, 0)
    assert m.horizontal.kernel_size == (1, k) and m.horizontal.stride == (1, s) and m.horizontal.dilation == (1, d)
    r.load_state_dict(m.state_dict())
    bias = kw.get("bias", True)
    assert sum(q.numel() for q in m.parameters()) == k * cin * cout + k * cout * cout + (2 * cout if bias else 0)
    x = make_input((2, cin, 12, 11), "contiguous")
    y, y_ref = m(x), r(x)
    assert_close(y, y_ref)
    go = rand(*y.shape)
    for a, e in zip(torch.autograd.grad(y, [x, *m.parameters()], go), torch.autograd.grad(y_ref, [x, *r.parameters()], go)):
        assert_close(a, e)


def test_separable_bad_arguments():
    with pytest.raises(ValueError, match="depth_multiplier >= 1, got 0"):
        cnnops.nn.DepthwiseSeparableConv2d(3, 4, 3, depth_multiplier=0)
    with pytest.raises(TypeError, match="kernel_size to be an int"):
        cnnops.nn.SpatiallySeparableConv2d(3, 4, (3, 3))


# ---------------------------------------------------------------- 8. bad input

BAD = [
    # (description, input shape, weight shape, bias shape, kwargs, exception, message regex)
    ("weight dim1 not 1", (2, 4, 8, 8), (4, 2, 3, 3), None, {}, ValueError,
     r"cnnops.depthwise_conv2d: expected weight to have shape \(C \* multiplier, 1, kH, kW\), got shape \(4, 2, 3, 3\)"),
    ("multiplier not an integer", (2, 4, 8, 8), (6, 1, 3, 3), None, {}, ValueError,
     r"expected weight.size\(0\) to be a positive multiple of the input channels C = 4 .*got 6"),
    ("weight 3-D", (2, 4, 8, 8), (4, 3, 3), None, {}, ValueError, r"expected weight to be a 4-D tensor"),
    ("input 5-D", (1, 2, 4, 8, 8), (4, 1, 3, 3), None, {}, ValueError, r"expected input to be 3-D \(C, H, W\) or 4-D"),
    ("bias shape", (2, 4, 8, 8), (8, 1, 3, 3), (4,), {}, ValueError,
     r"expected bias to have shape \(8,\) \(C \* multiplier\), got shape \(4,\)"),
    ("kernel too large", (2, 4, 3, 3), (4, 1, 5, 5), None, {}, ValueError,
     r"expected the padded input \(3 x 3\) to be at least as large as the dilated kernel \(5 x 5\)"),
    ("reflect padding", (2, 4, 3, 3), (4, 1, 3, 3), None, dict(padding=3, padding_mode="reflect"), ValueError,
     r"reflect padding must be smaller than the input size"),
    ("bad stride", (2, 4, 8, 8), (4, 1, 3, 3), None, dict(stride=0), ValueError, r"expected stride to be two integers >= 1"),
    ("bad padding mode", (2, 4, 8, 8), (4, 1, 3, 3), None, dict(padding_mode="mirror"), ValueError,
     r"cnnops.depthwise_conv2d: expected padding_mode to be one of"),
    ("zero channels", (2, 0, 8, 8), (4, 1, 3, 3), None, {}, ValueError, r"non-zero channels"),
]


@pytest.mark.parametrize("fake", [False, True], ids=["eager", "fake"])
@pytest.mark.parametrize("desc,xs,ws,bs,kwargs,exc,pattern", BAD, ids=[b[0] for b in BAD])
def test_bad_input(desc, xs, ws, bs, kwargs, exc, pattern, fake):
    def run():
        x, w = torch.randn(xs), torch.randn(ws)
        b = torch.randn(bs) if bs else None
        return cnnops.F.depthwise_conv2d(x, w, b, **kwargs)

    assert_raises_eager_and_fake(run, exc, pattern, fake)


def test_bad_dtypes_and_devices():
    x, w = torch.randn(1, 4, 6, 6), torch.randn(4, 1, 3, 3)
    with pytest.raises(TypeError, match=r"expected weight to have the same dtype as input \(float32\), got float64"):
        cnnops.F.depthwise_conv2d(x, w.double())
    with pytest.raises(NotImplementedError, match=r"cnnops.depthwise_conv2d: dtype float16 on device cpu is not supported"):
        cnnops.F.depthwise_conv2d(x.half(), w.half())
    out = ops.depthwise_conv2d(x, w, None, [1, 1], [0, 0, 0, 0], [1, 1], "zeros")
    with pytest.raises(ValueError, match=r"depthwise_conv2d_grad_input: expected grad_output to have shape \(1, 4, 4, 4\)"):
        ops.depthwise_conv2d_grad_input(torch.randn(1, 4, 5, 4), w, [1, 4, 6, 6], [1, 1], [0, 0, 0, 0], [1, 1],
                                        "zeros", False)
    with pytest.raises(TypeError, match=r"grad_weight: expected input to have the same dtype as grad_output"):
        ops.depthwise_conv2d_grad_weight(out, x.double(), [4, 1, 3, 3], [1, 1], [0, 0, 0, 0], [1, 1], "zeros", False)


def test_meta_shapes_match_eager():
    x, w = torch.randn(2, 6, 9, 7).contiguous(memory_format=CL), torch.randn(12, 1, 3, 2)
    eager = cnnops.F.depthwise_conv2d(x, w, None, (2, 1), "valid", (1, 2), "reflect")
    meta = cnnops.F.depthwise_conv2d(x.to("meta"), w.to("meta"), None, (2, 1), "valid", (1, 2), "reflect")
    assert meta.shape == eager.shape and meta.stride() == eager.stride()


@pytest.mark.parametrize("call,pattern", [
    (lambda x, w: cnnops.F.depthwise_conv2d(x.tolist(), w), r"depthwise_conv2d: expected input to be a Tensor, got list"),
    (lambda x, w: cnnops.F.depthwise_conv2d(x, None), r"depthwise_conv2d: expected weight to be a Tensor, got NoneType"),
    (lambda x, w: cnnops.F.depthwise_conv2d(x, w, 3), r"expected bias to be a Tensor or None, got int"),
    (lambda x, w: cnnops.F.conv2d(x, w.tolist(), groups=4), r"conv2d: expected weight to be a Tensor, got list"),
    (lambda x, w: cnnops.F.depthwise_separable_conv2d(x, w, "w"), r"expected pointwise_weight to be a Tensor, got str"),
    (lambda x, w: cnnops.F.spatially_separable_conv2d(x, w, w, 1.0), r"expected vertical_bias to be a Tensor or None"),
])
def test_non_tensor_arguments(call, pattern):
    """A TypeError naming the argument, not an AttributeError from inside the functional."""
    with pytest.raises(TypeError, match=pattern):
        call(torch.randn(1, 4, 5, 5), torch.randn(4, 1, 3, 3))
