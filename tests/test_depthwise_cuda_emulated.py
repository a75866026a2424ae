"""The tiled CUDA depthwise kernels (csrc/cuda/depthwise_conv2d_fast.cu, the default CUDA
path) run on the CPU through tests/cuda_emulator.py, against torch in
float64: forward (NCHW planes and channels_last), grad_input as the flipped forward, and
grad_weight's partial sums (NCHW bands and channels_last runs). This checks their index
math, tiling and shared-memory staging where no GPU is at hand; races and speed need the
GPU (tests/test_depthwise_conv2d.py runs them there)."""
import random

import pytest
import torch
import torch.nn.functional as TF

import cuda_emulator

HARNESS = r"""
namespace cnnops {
namespace emulated {
// Each returns None where the kernel declines (the default kernel would run), else the result.
c10::optional<at::Tensor> forward(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                                  std::vector<int64_t> stride, std::vector<int64_t> padding,
                                  std::vector<int64_t> dilation, std::string mode) {
  const Conv2dGeometry g = check_depthwise_forward("emulated", input, weight, bias, stride, padding, dilation, mode, true);
  at::Tensor out = at::full({g.batch, g.out_channels, g.out_h, g.out_w}, std::nan(""),
                            input.options().memory_format(conv_memory_format(input, weight)));
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor bias_values = has_bias ? bias->contiguous() : at::Tensor();  // as depthwise_conv2d_cuda does
  if (!cuda::depthwise_forward_fast(input, weight, has_bias ? &bias_values : nullptr, out, g, false)) return c10::nullopt;
  return out;
}
c10::optional<at::Tensor> grad_input(const at::Tensor& grad_output, const at::Tensor& weight, std::vector<int64_t> input_size,
                                     std::vector<int64_t> stride, std::vector<int64_t> padding,
                                     std::vector<int64_t> dilation, std::string mode, bool channels_last) {
  const Conv2dGeometry g =
      check_depthwise_grad_input("emulated", grad_output, weight, input_size, stride, padding, dilation, mode, true);
  if (!grad_input_as_forward(g)) return c10::nullopt;
  at::Tensor out = at::full(input_size, std::nan(""), grad_output.options().memory_format(layout_from_flag(channels_last)));
  if (!cuda::depthwise_forward_fast(grad_output, weight, nullptr, out, flipped_forward_geometry(g), true, g.stride_h,
                                    g.stride_w))
    return c10::nullopt;
  return out;
}
c10::optional<at::Tensor> grad_weight_partials(const at::Tensor& grad_output, const at::Tensor& input,
                                               std::vector<int64_t> weight_size, std::vector<int64_t> stride,
                                               std::vector<int64_t> padding, std::vector<int64_t> dilation,
                                               std::string mode) {
  const Conv2dGeometry g =
      check_depthwise_grad_weight("emulated", grad_output, input, weight_size, stride, padding, dilation, mode, true);
  at::Tensor partials;
  int64_t slices = 0;
  if (!cuda::depthwise_grad_weight_partials_fast(grad_output, input, g, partials, slices)) return c10::nullopt;
  return partials.view({g.out_channels, g.kernel_h * g.kernel_w, slices});
}
// The NCHW forward's block plan for a zero-padded input: (cols, rows, planes, out_rows,
// tiles_h, tiles_w, smem_bytes), or empty where the kernel declines.
std::vector<int64_t> forward_plan(const at::Tensor& input, const at::Tensor& weight, std::vector<int64_t> stride,
                                  std::vector<int64_t> padding, std::vector<int64_t> dilation, int64_t acc_size) {
  const Conv2dGeometry g = check_depthwise_forward("emulated", input, weight, c10::nullopt, stride, padding, dilation,
                                                   "zeros", true);
  cuda::PlaneTiles p;
  if (!cuda::plan_plane_tiles(g, acc_size, p)) return {};
  return {p.cols, p.rows, p.planes, p.out_rows, p.tiles_h, p.tiles_w, p.smem_bytes};
}
}  // namespace emulated
}  // namespace cnnops
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &cnnops::emulated::forward);
  m.def("grad_input", &cnnops::emulated::grad_input);
  m.def("grad_weight_partials", &cnnops::emulated::grad_weight_partials);
  m.def("forward_plan", &cnnops::emulated::forward_plan);
}
"""


@pytest.fixture(scope="module")
def kernels():
    # depthwise_checks.h (the argument checks the harness calls) is not included by the .cu itself.
    return cuda_emulator.build_or_skip("depthwise_conv2d_fast_emulated", "csrc/cuda/depthwise_conv2d_fast.cu",
                                       '#include "common/depthwise_checks.h"\n' + HARNESS)


def reference(x, w, b, stride, pad, dilation, mode):
    """torch's depthwise conv with explicit (top, bottom, left, right) padding, in float64."""
    top, bottom, left, right = pad
    xp = TF.pad(x, (left, right, top, bottom), mode="constant" if mode == "zeros" else mode)
    return TF.conv2d(xp, w, b, stride, 0, dilation, x.shape[1])


def _view(t, how):
    """t's values in other memory: 'offset' a view one element into a larger buffer (odd
    start), 'strided' every other element of a larger one; else t itself."""
    if how == "offset":
        return torch.cat([t.new_zeros(1), t.flatten()])[1:].view(t.shape)
    if how == "strided":
        return torch.stack([t, torch.zeros_like(t)], dim=-1)[..., 0]
    return t


def check(kernels, cfg, weight_view="fresh", bias_view="fresh", go_layout=None):
    n, c, m, h, w_, k, s, d, pad, mode, layout, dtype, bias = cfg
    x64 = torch.randn(n, c, h, w_, dtype=torch.float64)
    w64 = torch.randn(c * m, 1, *k, dtype=torch.float64) / (k[0] * k[1]) ** 0.5
    b64 = torch.randn(c * m, dtype=torch.float64) if bias else None
    # The values the kernels see, and the float64 reference on exactly those values.
    x, w, b = (None if t is None else t.to(dtype) for t in (x64, w64, b64))
    w = _view(w, weight_view)
    b = None if b is None else _view(b, bias_view)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "w_major":  # no unit stride along W
        x = x.transpose(2, 3).contiguous().transpose(2, 3)
    xr, wr = x.double().requires_grad_(), w.double().requires_grad_()
    br = None if b is None else b.double()
    ref = reference(xr, wr, br, s, pad, d, mode)
    go = torch.randn(ref.shape, dtype=torch.float64).to(dtype)
    if (go_layout or layout) == "channels_last":
        go = go.contiguous(memory_format=torch.channels_last)
    ref_gx, ref_gw = torch.autograd.grad(ref, (xr, wr), go.double())
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]

    def close(got, want, what):
        err = ((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-30)).item() if want.numel() else 0.0
        assert err < tol, f"{what} {cfg}: relative error {err:.2e}"

    ran = []
    y = kernels.forward(x, w, b, list(s), list(pad), list(d), mode)
    if y is not None:
        close(y, ref, "forward")
        ran.append("forward")
    partials = kernels.grad_weight_partials(go, x, list(w.shape), list(s), list(pad), list(d), mode)
    if partials is not None:
        close(partials.sum(-1).view(w.shape), ref_gw, "grad_weight")
        ran.append("grad_weight")
    # grad_input is the flipped forward over the spread grad_output where no padding of that
    # forward is negative: before, d * (k - 1) - p; after, what makes it the input's size.
    spread = [(size - 1) * st + 1 for size, st in zip(ref.shape[2:], s)]
    as_forward = m == 1 and mode == "zeros" and ref.numel() > 0 and all(
        (kk - 1) * dd >= before and size - sp + before >= 0
        for kk, dd, before, size, sp in zip(k, d, (pad[0], pad[2]), (h, w_), spread))
    gx = kernels.grad_input(go, w, list(x.shape), list(s), list(pad), list(d), mode, layout == "channels_last")
    assert (gx is not None) == as_forward, f"grad_input as a forward: expected {as_forward} {cfg}"
    if gx is not None:
        close(gx, ref_gx, "grad_input")
        ran.append("grad_input")
    return ran


# (N, C, multiplier, H, W, kernel, stride, dilation, (top, bottom, left, right), mode, layout, dtype, bias)
TARGETED = [
    # NCHW planes: one 32-wide tile, several tiles, 7-wide planes many to a block (the last
    # block's plane slices partly idle), stride 2 with a partial last tile
    (2, 5, 1, 40, 37, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), "zeros", "contiguous", torch.float32, True),
    (2, 40, 1, 7, 7, (7, 7), (1, 1), (1, 1), (3, 3, 3, 3), "zeros", "contiguous", torch.float32, False),
    (1, 6, 2, 23, 45, (3, 5), (2, 2), (1, 1), (1, 0, 2, 1), "reflect", "w_major", torch.float64, True),
    # a window too large for 32 output rows in float64: the planes kernel halves its rows
    (1, 2, 1, 66, 66, (13, 13), (1, 1), (4, 4), (24, 24, 24, 24), "zeros", "contiguous", torch.float64, True),
    # large kernels: 31 x 31 (grad_weight with more taps than threads, and 16-tap runs)
    (2, 3, 1, 32, 32, (31, 31), (1, 1), (1, 1), (15, 15, 15, 15), "zeros", "contiguous", torch.float32, True),
    (1, 4, 1, 33, 34, (31, 31), (1, 1), (1, 1), (15, 15, 15, 15), "circular", "channels_last", torch.float32, True),
    # channels_last: channel pairs (even C, half and bfloat16), single channels (odd C, multiplier 2)
    (2, 16, 1, 9, 10, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), "zeros", "channels_last", torch.float16, True),
    (1, 12, 1, 11, 13, (5, 5), (2, 1), (2, 1), (4, 3, 2, 2), "replicate", "channels_last", torch.bfloat16, False),
    (2, 7, 1, 10, 9, (7, 7), (1, 1), (1, 1), (3, 3, 3, 3), "zeros", "channels_last", torch.float32, True),
    (1, 5, 2, 12, 8, (3, 3), (1, 2), (1, 1), (1, 1, 1, 1), "zeros", "channels_last", torch.float64, True),
    # grad_input as a flipped forward with uneven padding, and a batch of one row
    (2, 4, 1, 13, 17, (5, 3), (1, 1), (2, 1), (8, 0, 1, 2), "zeros", "contiguous", torch.float32, False),
    (3, 2, 1, 1, 20, (1, 4), (1, 1), (1, 1), (0, 0, 3, 0), "zeros", "contiguous", torch.float64, True),
    # planes split into even tiles of a width that is no power of two: 33 -> 2 x 17 columns
    # (DeepLab's 5x5 dilation 2), 29 at stride 2, 70 -> 3 x 24 with 3 tiles down
    (1, 3, 1, 33, 33, (5, 5), (1, 1), (2, 2), (4, 4, 4, 4), "zeros", "contiguous", torch.float32, True),
    (2, 2, 1, 57, 58, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1), "reflect", "contiguous", torch.float32, False),
    (1, 2, 1, 140, 70, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), "zeros", "contiguous", torch.float64, True),
    # a window wider than the threads staging it (their steps then only wrap columns): the
    # grad_weight band kernel's 256 threads on 302 columns (test_window_wider_than_its_threads:
    # the planes kernel)
    (1, 2, 1, 5, 300, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), "zeros", "contiguous", torch.float32, False),
]


def random_configs(count, seed):
    rng = random.Random(seed)
    configs = []
    while len(configs) < count:
        # A third of them where grad_input is the flipped forward (stride 1, zeros, multiplier 1).
        as_forward = rng.random() < 0.35
        mode = "zeros" if as_forward else rng.choice(["zeros", "zeros", "reflect", "replicate", "circular"])
        k = rng.choice([(3, 3), (5, 5), (7, 7), (1, 1), (2, 3), (4, 1), (3, 5)])
        s = (1, 1) if as_forward else (rng.choice([1, 1, 2, 3]), rng.choice([1, 1, 2]))
        d = (rng.choice([1, 1, 2]), rng.choice([1, 1, 3]))
        h, w = rng.randint(1, 30), rng.randint(1, 30)
        reach = ((k[0] - 1) * d[0], (k[1] - 1) * d[1])
        if mode == "zeros":
            extra = 0 if as_forward else 1  # past the reach: the gather grad_input
            pad = (rng.randint(0, reach[0] + extra), rng.randint(0, reach[0]), rng.randint(0, reach[1] + extra),
                   rng.randint(0, reach[1]))
        else:  # reflect needs pad < size; the others at most the size
            pad = tuple(rng.randint(0, min(size - 1, r)) for size, r in ((h, reach[0]), (h, reach[0]),
                                                                       (w, reach[1]), (w, reach[1])))
        if h + pad[0] + pad[1] <= reach[0] or w + pad[2] + pad[3] <= reach[1]:
            continue
        multiplier = 1 if as_forward else rng.choice([1, 1, 2])
        configs.append((rng.choice([1, 2]), rng.choice([1, 2, 3, 4, 6, 8]), multiplier, h, w, k, s, d, pad,
                        mode, rng.choice(["contiguous", "channels_last", "channels_last", "w_major"]),
                        rng.choice([torch.float64, torch.float32, torch.float16, torch.bfloat16]), rng.random() < 0.5))
    return configs


@pytest.mark.parametrize("cfg", TARGETED, ids=[f"targeted{i}" for i in range(len(TARGETED))])
def test_targeted(kernels, cfg):
    torch.manual_seed(0)
    ran = check(kernels, cfg)
    assert "forward" in ran and "grad_weight" in ran, f"a kernel declined {cfg}: ran {ran}"


@pytest.mark.parametrize("weight_view,bias_view", [("offset", "strided"), ("strided", "offset")])
@pytest.mark.parametrize("kernel", [(1, 1), (3, 3)])
def test_weight_and_bias_views(kernels, weight_view, bias_view, kernel):
    """Weights and biases that are views (an odd start, every other element): channels_last
    with even C takes channel pairs, whose weight copy must be aligned whatever the view."""
    torch.manual_seed(2)
    pad = (kernel[0] // 2,) * 4
    for layout, dtype in (("channels_last", torch.float16), ("contiguous", torch.float32)):
        cfg = (2, 8, 1, 9, 11, kernel, (1, 1), (1, 1), pad, "zeros", layout, dtype, True)
        assert check(kernels, cfg, weight_view=weight_view, bias_view=bias_view) == [
            "forward", "grad_weight", "grad_input"]


@pytest.mark.parametrize("x_layout,go_layout", [("channels_last", "contiguous"), ("contiguous", "channels_last"),
                                                ("w_major", "channels_last")])
def test_mixed_layouts(kernels, x_layout, go_layout):
    """grad_output in another layout than the input: grad_weight picks its kernel by both
    (channels_last runs only when both have unit channel stride), grad_input writes the
    input's layout from grad_output's."""
    torch.manual_seed(3)
    cfg = (2, 6, 1, 12, 10, (5, 5), (1, 1), (1, 1), (2, 2, 2, 2), "zeros", x_layout, torch.float32, True)
    assert check(kernels, cfg, go_layout=go_layout) == ["forward", "grad_weight", "grad_input"]


@pytest.mark.parametrize("cfg", [
    (2, 6, 1, 15, 16, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1), "zeros", "contiguous", torch.float32, True),
    (1, 8, 1, 17, 14, (5, 3), (3, 2), (2, 1), (4, 2, 1, 0), "zeros", "channels_last", torch.float16, False),
    (2, 3, 1, 9, 12, (7, 7), (2, 3), (1, 1), (3, 3, 3, 3), "zeros", "w_major", torch.float64, True),
], ids=["mnv2_s2", "s3x2_d2_nhwc", "7x7_s2x3"])
def test_strided_grad_input(kernels, cfg):
    """grad_input at stride > 1: the flipped forward over grad_output spread out by the stride."""
    torch.manual_seed(5)
    assert check(kernels, cfg) == ["forward", "grad_weight", "grad_input"]


def test_window_wider_than_its_threads(kernels):
    """The planes kernel with one row of 20 threads staging an 80-column window (float64 31x31
    at dilation 2: larger blocks pass 48 KiB); grad_weight's band would too, so it declines."""
    torch.manual_seed(6)
    cfg = (1, 1, 1, 40, 40, (31, 31), (1, 1), (2, 2), (30, 30, 30, 30), "zeros", "contiguous", torch.float64, True)
    x, w = torch.empty(1, 1, 40, 40, dtype=torch.float64), torch.empty(1, 1, 31, 31, dtype=torch.float64)
    cols, rows = kernels.forward_plan(x, w, [1, 1], [30] * 4, [2, 2], 8)[:2]
    assert cols * rows < (cols - 1) + 30 * 2 + 1  # fewer threads than window columns
    assert check(kernels, cfg) == ["forward", "grad_input"]


def test_grad_weight_band_halving(kernels):
    """A float64 13 x 13 kernel over 210 columns: 8-row bands pass 48 KiB, so 4-row bands."""
    torch.manual_seed(4)
    cfg = (1, 2, 1, 11, 210, (13, 13), (1, 1), (1, 1), (6, 6, 6, 6), "zeros", "contiguous", torch.float64, False)
    assert check(kernels, cfg) == ["forward", "grad_weight", "grad_input"]


def test_random(kernels):
    torch.manual_seed(1)
    counts = {}
    for cfg in random_configs(60, seed=4):
        for what in check(kernels, cfg):
            counts[what] = counts.get(what, 0) + 1
    assert counts.get("forward") == 60 and counts.get("grad_weight") == 60 and counts.get("grad_input", 0) > 5, counts


def test_declines_what_does_not_fit(kernels):
    """Windows past 48 KiB of shared memory: the kernels decline, and the default ones run."""
    x = torch.randn(1, 1, 100, 100, dtype=torch.float64)
    w = torch.randn(1, 1, 31, 31, dtype=torch.float64)
    assert kernels.forward(x, w, None, [1, 1], [45, 45, 45, 45], [3, 3], "zeros") is None
    wide = torch.randn(1, 1, 2, 5000, dtype=torch.float64)
    go = torch.randn(1, 1, 2, 5000, dtype=torch.float64)
    assert kernels.grad_weight_partials(go, wide, [1, 1, 1, 1], [1, 1], [0, 0, 0, 0], [1, 1], "zeros") is None


# (N, C, H, W, kernel, stride, dilation): the NCHW shapes of cnnops.bench's depthwise cases
BENCH_SHAPES = [(8, 32, 112, 112, 3, 1, 1), (8, 144, 56, 56, 3, 1, 1), (8, 96, 112, 112, 3, 2, 1),
                (8, 144, 56, 56, 3, 2, 1), (8, 384, 14, 14, 3, 1, 1), (8, 960, 7, 7, 3, 1, 1),
                (8, 240, 28, 28, 5, 1, 1), (8, 672, 14, 14, 5, 1, 1), (8, 96, 56, 56, 7, 1, 1),
                (8, 384, 14, 14, 7, 1, 1), (8, 768, 7, 7, 7, 1, 1), (4, 256, 28, 28, 13, 1, 1),
                (2, 64, 32, 32, 31, 1, 1), (4, 320, 33, 33, 5, 1, 2)]


@pytest.mark.parametrize("shape", BENCH_SHAPES, ids=["x".join(map(str, s)) for s in BENCH_SHAPES])
def test_forward_plan(kernels, shape):
    """The NCHW forward's tiles cover each plane with whole tiles, fit a block of 256 threads
    and 48 KiB, and leave few threads without an output: at least three quarters of the
    outputs the tiles span are real on these shapes (fixed 32 x 32 tiles spanned 64 x 64 for
    a 33 x 33 plane, 27%)."""
    n, c, h, w, k, s, d = shape
    pad = d * (k - 1) // 2
    x, wt = torch.empty(n, c, h, w), torch.empty(c, 1, k, k)
    out_h, out_w = (h + 2 * pad - d * (k - 1) - 1) // s + 1, (w + 2 * pad - d * (k - 1) - 1) // s + 1
    cols, rows, planes, out_rows, tiles_h, tiles_w, smem = kernels.forward_plan(x, wt, [s, s], [pad] * 4, [d, d], 4)
    assert out_rows == rows * 4 and cols * rows * planes <= 256 and smem <= 48 * 1024
    assert (tiles_w - 1) * cols < out_w <= tiles_w * cols and (tiles_h - 1) * out_rows < out_h <= tiles_h * out_rows
    covered = out_h * out_w / (tiles_h * out_rows * tiles_w * cols)
    assert covered >= 0.75, (cols, rows, tiles_h, tiles_w, covered)
