"""conv2d CPU paths, each forced with CNNOPS_CONV2D_CPU_PATH (read on every call):
'im2col' (the foundation's per-element im2col + GEMM), 'panel' (run-wise panels, every
shape including 1x1) and 'auto' (panel with the 1x1 GEMM shortcut; im2col for bfloat16).

test_conv2d.py runs everything under 'auto'; here the same correctness matrix runs under
the other two, plus shapes at the edges of the panel path's tiling (row tiles with a
remainder, tiles of several whole images, a thread count that splits one image), at 1
and 2 threads."""
import pytest
import torch

import cnnops
from conftest import assert_close
from test_conv2d import (CL, MODES, _correctness_params, compare_with_torch, leaf, make_input,
                         make_weight, rand)

ops = torch.ops.cnnops
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")
PATHS = ("im2col", "panel", "auto")
ENV = "CNNOPS_CONV2D_CPU_PATH"


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    monkeypatch.setenv(ENV, request.param)
    return request.param


@pytest.fixture(params=[1, 2], ids=["threads1", "threads2"])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


# ---------------------------------------------------------------- 1. the foundation's matrix

@pytest.mark.parametrize("forced", ["im2col", "panel"])
@pytest.mark.parametrize("case,layout,mode", _correctness_params())
def test_matrix_each_path(forced, case, layout, mode, monkeypatch):
    monkeypatch.setenv(ENV, forced)
    c = case
    x = make_input((c.n, c.c, c.h, c.w), layout)
    w = make_weight((c.oc, c.c // c.groups, *c.kernel), layout)
    b = leaf(rand(c.oc)) if c.bias else None
    compare_with_torch(x, w, b, c.stride, c.padding, c.dilation, c.groups, mode,
                       msg=f"{forced} {c} {layout} {mode}")


# ---------------------------------------------------------------- 2. tiling boundaries

class Shape:
    def __init__(self, name, n, c, oc, h, w, kernel, stride=1, padding=0, dilation=1, groups=1, bias=True):
        self.name, self.n, self.c, self.oc, self.h, self.w = name, n, c, oc, h, w
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.dilation, self.groups, self.bias = dilation, groups, bias

    def __repr__(self):
        return self.name


# The panel budget is 768 KB: K = 64 * 9 float64 values per pixel gives tiles of a few
# rows (the last one shorter); images of < 256 pixels are batched several per tile.
BOUNDARY = [
    Shape("row_tiles_remainder", 2, 64, 5, 37, 41, (3, 3), padding=1),
    Shape("image_tiles_remainder_k3", 7, 5, 6, 5, 6, (3, 3), padding=1),
    Shape("image_tiles_groups3_k2x3", 5, 6, 9, 6, 5, (2, 3), padding=(1, 0), groups=3),
    Shape("stride2_odd", 3, 6, 7, 13, 11, (3, 3), stride=2, padding=1),
    Shape("stride2x3_dilated_odd", 2, 5, 3, 15, 17, (3, 2), stride=(2, 3), padding=2, dilation=(2, 3)),
    Shape("pointwise_groups2", 5, 6, 10, 7, 9, (1, 1), groups=2),
    Shape("pointwise_batch1", 1, 7, 5, 9, 11, (1, 1)),
    Shape("pointwise_stride2_odd", 3, 5, 4, 9, 7, (1, 1), stride=2),
    Shape("pointwise_padded", 2, 3, 4, 5, 6, (1, 1), padding=1),
    Shape("stem_7x7_s2", 2, 3, 8, 23, 21, (7, 7), stride=2, padding=3, bias=False),
    Shape("unet_2x2_s2", 3, 6, 4, 10, 12, (2, 2), stride=2, bias=False),
    Shape("dcgan_4x4_s2_p1", 3, 4, 6, 12, 10, (4, 4), stride=2, padding=1),
    Shape("width1", 3, 4, 3, 9, 1, (3, 1), padding=(1, 0)),
]


def _boundary_params():
    params = []
    for i, s in enumerate(BOUNDARY):
        for j, layout in enumerate(("contiguous", "channels_last_input", "sliced_input")):
            mode = MODES[(i + j) % len(MODES)]
            params.append(pytest.param(s, layout, mode, id=f"{s.name}-{layout}-{mode}"))
    return params


@pytest.mark.parametrize("shape,layout,mode", _boundary_params())
def test_tiling_boundaries(shape, layout, mode, path, threads):
    s = shape
    x = make_input((s.n, s.c, s.h, s.w), layout)
    w = make_weight((s.oc, s.c // s.groups, *s.kernel), layout)
    b = leaf(rand(s.oc)) if s.bias else None
    compare_with_torch(x, w, b, s.stride, s.padding, s.dilation, s.groups, mode,
                       msg=f"{path} threads={threads} {s} {layout} {mode}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dtypes_each_path(dtype, path):
    """float32 in the panel GEMMs; bfloat16 always takes the im2col path (float buffers)."""
    x = make_input((4, 12, 14, 13), "contiguous", dtype)
    w = make_weight((10, 6, 3, 3), "contiguous", dtype)
    b = leaf(rand(10, dtype=dtype))
    compare_with_torch(x, w, b, 1, 1, 1, 2, "reflect", msg=f"{path} {dtype}")


# ---------------------------------------------------------------- 3. the gradient ops directly

GO_LAYOUTS = ("contiguous", "channels_last", "sliced")


def _grad_output(shape, layout):
    if layout == "sliced":  # no unit stride anywhere
        n, c, h, w = shape
        return rand(n, 2 * c, h, 2 * w)[:, ::2, :, ::2]
    t = rand(*shape)
    return t.contiguous(memory_format=CL) if layout == "channels_last" else t


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw_result", "cl_result"])
@pytest.mark.parametrize("go_layout", GO_LAYOUTS)
@pytest.mark.parametrize("kernel,stride,padding", [((3, 3), (1, 1), (1, 1, 1, 1)),
                                                   ((1, 1), (1, 1), (0, 0, 0, 0)),
                                                   ((4, 4), (2, 2), (1, 1, 1, 1))],
                         ids=["3x3", "1x1", "4x4s2"])
def test_grad_ops_any_grad_output_layout(kernel, stride, padding, go_layout, channels_last, path):
    """conv2d_grad_input / conv2d_grad_weight called directly (as conv_transpose2d calls
    grad_input): any grad_output layout, result in the requested layout."""
    n, c, oc, h, w, groups = 3, 4, 6, 10, 9, 2
    x = rand(n, c, h, w).requires_grad_()
    wt = rand(oc, c // groups, *kernel).requires_grad_()
    pt, pb, pl, pr = padding
    out = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (pl, pr, pt, pb)), wt, None, stride, 0, 1, groups)
    go = _grad_output(tuple(out.shape), go_layout)
    gi_ref, gw_ref = torch.autograd.grad(out, (x, wt), go)
    args = (list(stride), list(padding), [1, 1], groups, "zeros", channels_last)
    gi = ops.conv2d_grad_input(go, wt.detach(), list(x.shape), *args)
    gw = ops.conv2d_grad_weight(go, x.detach(), list(wt.shape), *args)
    fmt = CL if channels_last else torch.contiguous_format
    assert gi.is_contiguous(memory_format=fmt) and gw.is_contiguous(memory_format=fmt)
    assert_close(gi, gi_ref, msg=f"{path} grad_input")
    assert_close(gw, gw_ref, msg=f"{path} grad_weight")


# ---------------------------------------------------------------- 4. determinism, paths agree

def test_grad_weight_bitwise_repeatable(path, threads):
    """Fixed partition of the pixel reduction: the same bits on every call at a fixed
    thread count (several partials at 2 threads)."""
    x = rand(6, 8, 21, 19, dtype=torch.float32)
    go = rand(6, 8, 21, 19, dtype=torch.float32)
    args = ([1, 1], [1, 1, 1, 1], [1, 1], 2, "reflect", False)
    first = ops.conv2d_grad_weight(go, x, [8, 4, 3, 3], *args)
    for _ in range(3):
        assert torch.equal(ops.conv2d_grad_weight(go, x, [8, 4, 3, 3], *args), first)


def test_paths_agree(monkeypatch):
    """The three paths give the same float64 results up to rounding."""
    x = make_input((5, 6, 11, 9), "contiguous")
    w = make_weight((4, 3, 3, 3), "contiguous")
    b = leaf(rand(4))
    results = {}
    for p in PATHS:
        monkeypatch.setenv(ENV, p)
        out = cnnops.F.conv2d(x, w, b, 2, 1, 1, 2, "circular")
        results[p] = (out, *torch.autograd.grad(out, (x, w, b), torch.ones_like(out)))
    for p in ("panel", "auto"):
        for a, e in zip(results[p], results["im2col"]):
            assert_close(a, e, msg=p)


def test_bad_path_value(monkeypatch):
    monkeypatch.setenv(ENV, "direct")
    x, w = rand(1, 2, 5, 5), rand(3, 2, 3, 3)
    with pytest.raises(ValueError, match=r"CNNOPS_CONV2D_CPU_PATH to be one of 'auto', 'panel', "
                                         r"'im2col', got 'direct'"):
        ops.conv2d(x, w, None, [1, 1], [0, 0, 0, 0], [1, 1], 1, "zeros")


# ---------------------------------------------------------------- 5. conv2d_grad_bias layouts

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced", "2d", "3d", "5d"])
def test_grad_bias_layouts(layout, dtype, threads):
    """The contiguous (interleaved accumulators, plane sizes around the 16 lanes), the
    channels_last (per-pixel channel rows) and the strided kernels of conv2d_grad_bias."""
    shapes = {"2d": (5, 7), "3d": (3, 6, 17), "5d": (2, 3, 4, 5, 3)}
    if layout in shapes:
        go = rand(*shapes[layout], dtype=dtype)
    elif layout == "sliced":
        go = rand(3, 10, 7, 9, dtype=dtype)[:, ::2, :, 1::2]
    else:
        go = rand(3, 37, 5, 7, dtype=dtype)
        if layout == "channels_last":
            go = go.contiguous(memory_format=CL)
    expected = go.double().sum(dim=[d for d in range(go.dim()) if d != 1]).to(dtype)
    assert_close(ops.conv2d_grad_bias(go), expected, msg=layout)
