"""The tiled CUDA depthwise kernels (csrc/cuda/depthwise_conv2d_fast.cu, the default CUDA
path but for 3x3) and the direct ones (csrc/cuda/depthwise_conv2d_direct.cu, the 3x3
default) run on the CPU through
tests/cuda_emulator.py, against torch in float64: forward (NCHW planes and channels_last),
grad_input as the flipped forward, and grad_weight's partial sums (NCHW bands and
channels_last runs; for the direct ones NCHW columns and channels_last vectors). This checks their index
math, tiling and shared-memory staging where no GPU is at hand; races and speed need the
GPU (tests/test_depthwise_conv2d.py runs them there)."""
import random

import pytest
import torch
import torch.nn.functional as TF

import cuda_emulator

# The harness, for either file: `entry` defines run_forward and run_partials, the file's two
# entry points; `extra` adds functions of that file and their bindings (EXTRA_BINDINGS).
HARNESS = r"""
namespace cnnops {
namespace emulated {
@ENTRY@
// Each returns None where the kernel declines (the default kernel would run), else the result.
// wide: the channels_last kernel's 16-byte channel vectors (the direct path's option).
c10::optional<at::Tensor> forward(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                                  std::vector<int64_t> stride, std::vector<int64_t> padding,
                                  std::vector<int64_t> dilation, std::string mode, bool wide) {
  const Conv2dGeometry g = check_depthwise_forward("emulated", input, weight, bias, stride, padding, dilation, mode, true);
  // NaN-filled, in the layout the op gives (at::full would drop the memory format)
  at::Tensor out = at::empty({g.batch, g.out_channels, g.out_h, g.out_w},
                             input.options().memory_format(conv_memory_format(input, weight)))
                       .fill_(std::nan(""));
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor bias_values = has_bias ? bias->contiguous() : at::Tensor();  // as depthwise_conv2d_cuda does
  if (!run_forward(input, weight, has_bias ? &bias_values : nullptr, out, g, false, 1, 1, wide)) return c10::nullopt;
  return out;
}
c10::optional<at::Tensor> grad_input(const at::Tensor& grad_output, const at::Tensor& weight, std::vector<int64_t> input_size,
                                     std::vector<int64_t> stride, std::vector<int64_t> padding,
                                     std::vector<int64_t> dilation, std::string mode, bool channels_last, bool wide) {
  const Conv2dGeometry g =
      check_depthwise_grad_input("emulated", grad_output, weight, input_size, stride, padding, dilation, mode, true);
  if (!grad_input_as_forward(g)) return c10::nullopt;
  at::Tensor out =
      at::empty(input_size, grad_output.options().memory_format(layout_from_flag(channels_last))).fill_(std::nan(""));
  if (!run_forward(grad_output, weight, nullptr, out, flipped_forward_geometry(g), true, g.stride_h, g.stride_w, wide))
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
  if (!run_partials(grad_output, input, g, partials, slices)) return c10::nullopt;
  return partials.view({g.out_channels, g.kernel_h * g.kernel_w, slices});
}
@EXTRA@
}  // namespace emulated
}  // namespace cnnops
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &cnnops::emulated::forward);
  m.def("grad_input", &cnnops::emulated::grad_input);
  m.def("grad_weight_partials", &cnnops::emulated::grad_weight_partials);
  @EXTRA_BINDINGS@
}
"""

TILED_ENTRY = r"""
bool run_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias, at::Tensor& out,
                 const Conv2dGeometry& g, bool flip, int64_t spread_h, int64_t spread_w, bool wide) {
  return cuda::depthwise_forward_fast(input, weight, bias, out, g, flip, spread_h, spread_w, wide);
}
bool run_partials(const at::Tensor& grad_output, const at::Tensor& input, const Conv2dGeometry& g,
                  at::Tensor& partials, int64_t& slices) {
  return cuda::depthwise_grad_weight_partials_fast(grad_output, input, g, partials, slices);
}
"""

TILED_EXTRA = r"""
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
// Whether the channels_last kernel takes `vec` channels per thread for this input and output.
bool channel_vectors(const at::Tensor& input, const at::Tensor& output, int64_t vec) {
  Conv2dGeometry g{};
  g.in_channels = input.size(1), g.out_channels = output.size(1);
  return cuda::channel_vectors_ok(input, output, g, vec);
}
"""

TILED_BINDINGS = """m.def("forward_plan", &cnnops::emulated::forward_plan);
  m.def("channel_vectors", &cnnops::emulated::channel_vectors);"""


def harness(entry, extra="", bindings=""):
    # depthwise_checks.h (the argument checks the harness calls) is not included by the .cu itself.
    return '#include "common/depthwise_checks.h"\n' + (
        HARNESS.replace("@ENTRY@", entry).replace("@EXTRA@", extra).replace("@EXTRA_BINDINGS@", bindings))


@pytest.fixture(scope="module")
def kernels():
    return cuda_emulator.build_or_skip("depthwise_conv2d_fast_emulated", "csrc/cuda/depthwise_conv2d_fast.cu",
                                       harness(TILED_ENTRY, TILED_EXTRA, TILED_BINDINGS))


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


def operands(n, c, m, h, w_, k, s, d, pad, mode, dtype, bias, place, place_go):
    """Random operands in `dtype`, in the layouts or views place(x, w, b) and place_go(go)
    give them, and the float64 reference on exactly those values:
    (x, w, b, go, ref, ref_gx, ref_gw)."""
    x64 = torch.randn(n, c, h, w_, dtype=torch.float64)
    w64 = torch.randn(c * m, 1, *k, dtype=torch.float64) / (k[0] * k[1]) ** 0.5
    b64 = torch.randn(c * m, dtype=torch.float64) if bias else None
    x, w, b = place(*(None if t is None else t.to(dtype) for t in (x64, w64, b64)))
    xr, wr = x.double().requires_grad_(), w.double().requires_grad_()
    ref = reference(xr, wr, None if b is None else b.double(), s, pad, d, mode)
    go = place_go(torch.randn(ref.shape, dtype=torch.float64).to(dtype))
    ref_gx, ref_gw = torch.autograd.grad(ref, (xr, wr), go.double())
    return x, w, b, go, ref, ref_gx, ref_gw


def closeness(dtype, label):
    """close(got, want, what): the relative error within the dtype's tolerance."""
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]

    def close(got, want, what):
        err = ((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-30)).item() if want.numel() else 0.0
        assert err < tol, f"{what} {label}: relative error {err:.2e}"
    return close


def w_major(t):
    """t with no unit stride along W."""
    return t.transpose(2, 3).contiguous().transpose(2, 3)


def check(kernels, cfg, weight_view="fresh", bias_view="fresh", go_layout=None, wide=False):
    n, c, m, h, w_, k, s, d, pad, mode, layout, dtype, bias = cfg

    def place(x, w, b):
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        elif layout == "w_major":
            x = w_major(x)
        return x, _view(w, weight_view), None if b is None else _view(b, bias_view)

    def place_go(go):
        return go.contiguous(memory_format=torch.channels_last) if (go_layout or layout) == "channels_last" else go

    x, w, b, go, ref, ref_gx, ref_gw = operands(n, c, m, h, w_, k, s, d, pad, mode, dtype, bias, place, place_go)
    close = closeness(dtype, cfg)
    ran = []
    y = kernels.forward(x, w, b, list(s), list(pad), list(d), mode, wide)
    if y is not None:
        # the layout decides the kernel (the channels_last one, or the NCHW planes)
        assert y.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last") or min(y.shape) == 1
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
    gx = kernels.grad_input(go, w, list(x.shape), list(s), list(pad), list(d), mode, layout == "channels_last", wide)
    assert (gx is not None) == as_forward, f"grad_input as a forward: expected {as_forward} {cfg}"
    if gx is not None:
        assert gx.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last") or min(gx.shape) == 1
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


# CNNOPS_EXPERIMENTAL: "1" makes the channels_last kernel's (tap, channel) weight copy with
# cnnops_depthwise_weight_by_tap_kernel (opt-in until a GPU run), "0" with at::flip and copy_.
WEIGHT_COPIES = ["0", "1"]


@pytest.mark.parametrize("experimental", WEIGHT_COPIES)
@pytest.mark.parametrize("weight_view,bias_view", [("offset", "strided"), ("strided", "offset")])
@pytest.mark.parametrize("kernel", [(1, 1), (3, 3)])
def test_weight_and_bias_views(kernels, weight_view, bias_view, kernel, experimental, monkeypatch):
    """Weights and biases that are views (an odd start, every other element): channels_last
    with even C takes channel pairs, whose weight copy must be aligned whatever the view."""
    monkeypatch.setenv("CNNOPS_EXPERIMENTAL", experimental)
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


@pytest.mark.parametrize("cfg", [
    (2, 16, 1, 9, 10, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), "zeros", "channels_last", torch.float16, True),
    (1, 24, 1, 15, 16, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1), "zeros", "channels_last", torch.bfloat16, False),
    (2, 12, 1, 11, 13, (5, 5), (1, 1), (2, 1), (4, 3, 2, 2), "zeros", "channels_last", torch.float32, True),
    (1, 8, 1, 17, 14, (7, 7), (2, 1), (1, 1), (3, 3, 3, 3), "zeros", "channels_last", torch.float32, True),
    (1, 10, 1, 9, 9, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), "zeros", "channels_last", torch.float16, True),
    (2, 6, 1, 8, 9, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1), "zeros", "channels_last", torch.float64, True),
], ids=["f16_16ch", "bf16_s2", "f32_uneven", "f32_7x7_s2x1", "f16_10ch_pairs", "f64_pairs"])
@pytest.mark.parametrize("experimental", WEIGHT_COPIES)
def test_wide_channel_vectors(kernels, cfg, experimental, monkeypatch):
    """The channels_last kernel with 16-byte channel vectors (8 half or bfloat16, 4 float; where
    the direct kernels go first), grad_input at stride 2 included; channel counts that are no
    multiple of the vector (10 half) fall back to pairs, and double's pairs are its 16 bytes."""
    monkeypatch.setenv("CNNOPS_EXPERIMENTAL", experimental)
    torch.manual_seed(10)
    n, c, _, h, w = cfg[:5]
    x = torch.empty(n, c, h, w, dtype=cfg[11]).contiguous(memory_format=torch.channels_last)
    vec = 16 // x.element_size()
    assert kernels.channel_vectors(x, torch.empty_like(x), vec) == (c % vec == 0)
    assert check(kernels, cfg, wide=True) == ["forward", "grad_weight", "grad_input"]


def test_declines_what_does_not_fit(kernels):
    """Windows past 48 KiB of shared memory: the kernels decline, and the default ones run."""
    x = torch.randn(1, 1, 100, 100, dtype=torch.float64)
    w = torch.randn(1, 1, 31, 31, dtype=torch.float64)
    assert kernels.forward(x, w, None, [1, 1], [45, 45, 45, 45], [3, 3], "zeros", False) is None
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


# ---------------------------------------------------------------- the direct NCHW kernels
# csrc/cuda/depthwise_conv2d_direct.cu (the 3x3 default; CNNOPS_DEPTHWISE_CUDA_PATH=direct: 5x5, 7x7 too): square
# kernels 3, 5, 7 at stride 1 or 2, dilation 1 or 2 at stride 1, zero padding, NCHW output;
# grad_input as the flipped forward at spread 1 or 2.

DIRECT_ENTRY = r"""
bool run_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias, at::Tensor& out,
                 const Conv2dGeometry& g, bool flip, int64_t spread_h, int64_t spread_w, bool) {
  return cuda::depthwise_forward_direct(input, weight, bias, out, g, flip, spread_h, spread_w);
}
bool run_partials(const at::Tensor& grad_output, const at::Tensor& input, const Conv2dGeometry& g,
                  at::Tensor& partials, int64_t& slices) {
  return cuda::depthwise_grad_weight_partials_direct(grad_output, input, g, partials, slices);
}
"""


@pytest.fixture(scope="module")
def direct_kernels():
    return cuda_emulator.build_or_skip("depthwise_conv2d_direct_emulated", "csrc/cuda/depthwise_conv2d_direct.cu",
                                       harness(DIRECT_ENTRY))


def check_direct(kernels, cfg, input_view="contiguous", go_view="contiguous", channels_last=False):
    """The direct forward and gradients against float64 torch; returns what ran."""
    n, c, m, h, w_, k, s, d, pad, dtype, bias = cfg
    layout = torch.channels_last if channels_last else torch.contiguous_format

    def place(x, w, b):
        if input_view == "w_major":
            x = w_major(x)
        elif input_view == "offset":
            x, w = _view(x, "offset"), _view(w, "strided")
        return x.contiguous(memory_format=layout) if channels_last else x, w, b

    def place_go(go):
        go = w_major(go) if go_view == "w_major" else go
        return go.contiguous(memory_format=layout) if channels_last else go

    x, w, b, go, ref, ref_gx, ref_gw = operands(n, c, m, h, w_, (k, k), (s, s), (d, d), pad, "zeros", dtype, bias,
                                                place, place_go)
    close = closeness(dtype, f"{cfg} {input_view}")
    ran = []
    y = kernels.forward(x, w, b, [s, s], list(pad), [d, d], "zeros", False)
    if y is not None:
        close(y, ref, "forward")
        ran.append("forward")
    gx = kernels.grad_input(go, w, list(x.shape), [s, s], list(pad), [d, d], "zeros", False, False)
    if gx is not None:
        close(gx, ref_gx, "grad_input")
        ran.append("grad_input")
    partials = kernels.grad_weight_partials(go, x, list(w.shape), [s, s], list(pad), [d, d], "zeros")
    if partials is not None:
        close(partials.sum(-1).view(w.shape), ref_gw, "grad_weight")
        ran.append("grad_weight")
    return ran


# (N, C, multiplier, H, W, kernel, stride, dilation, (top, bottom, left, right), dtype, bias)
DIRECT_CASES = [
    # the bench's kinds of shape, small: 3x3 at stride 1 and 2 (odd and even sizes, a partial
    # last row group), 5x5, 7x7 on a 7-wide plane, 5x5 at dilation 2
    (2, 3, 1, 13, 12, 3, 1, 1, (1, 1, 1, 1), torch.float32, True),
    (1, 4, 1, 15, 16, 3, 2, 1, (1, 1, 1, 1), torch.float32, False),
    (2, 2, 1, 14, 14, 3, 2, 1, (1, 1, 1, 1), torch.float16, True),
    (1, 3, 1, 11, 9, 5, 1, 1, (2, 2, 2, 2), torch.bfloat16, True),
    (1, 2, 1, 17, 18, 5, 2, 1, (2, 2, 2, 2), torch.float32, True),
    (2, 5, 1, 7, 7, 7, 1, 1, (3, 3, 3, 3), torch.float32, False),
    (1, 2, 1, 19, 15, 7, 2, 1, (3, 3, 3, 3), torch.float16, False),
    (1, 2, 1, 13, 13, 5, 1, 2, (4, 4, 4, 4), torch.float32, True),
    (1, 3, 1, 10, 11, 3, 1, 2, (2, 2, 2, 2), torch.bfloat16, False),
    # uneven and no padding, a channel multiplier (forward only: grad_input as a forward
    # needs multiplier 1), a single row and a single column
    (1, 2, 1, 12, 10, 3, 1, 1, (2, 0, 0, 1), torch.float32, True),
    (2, 3, 1, 9, 9, 5, 1, 1, (0, 0, 0, 0), torch.float32, False),
    (1, 3, 2, 8, 9, 3, 1, 1, (1, 1, 1, 1), torch.float32, True),
    (2, 2, 3, 9, 8, 5, 2, 1, (2, 2, 2, 2), torch.float16, True),
    (2, 2, 1, 3, 40, 3, 1, 1, (1, 1, 1, 1), torch.float32, True),
    (2, 2, 1, 40, 1, 3, 1, 1, (1, 1, 1, 1), torch.float32, False),
]


@pytest.mark.parametrize("cfg", DIRECT_CASES, ids=[f"direct{i}" for i in range(len(DIRECT_CASES))])
def test_direct_kernels(direct_kernels, cfg):
    torch.manual_seed(7)
    multiplier = cfg[2]
    want = ["forward", "grad_input", "grad_weight"] if multiplier == 1 else ["forward", "grad_weight"]
    assert check_direct(direct_kernels, cfg) == want


@pytest.mark.parametrize("input_view,go_view", [("w_major", "contiguous"), ("offset", "w_major")])
def test_direct_kernels_input_views(direct_kernels, input_view, go_view):
    """Input and grad_output without unit column stride, and input and weight views (an odd
    start, every other element): offsets through the strides."""
    torch.manual_seed(8)
    cfg = (2, 3, 1, 9, 10, 3, 1, 1, (1, 1, 1, 1), torch.float32, True)
    assert check_direct(direct_kernels, cfg, input_view, go_view) == ["forward", "grad_input", "grad_weight"]


@pytest.mark.parametrize("shape,kernel,stride,slices", [((2, 2, 40, 40), 3, 1, 2), ((1, 1, 64, 130), 5, 1, 5),
                                                          ((1, 2, 61, 130), 7, 2, 2), ((1, 1, 64, 131), 5, 1, 5)])
def test_direct_grad_weight_slices(direct_kernels, shape, kernel, stride, slices):
    """Channels with more than 4 items (4 x 4 outputs) per thread of a block are split into
    slices, each block summing its own in a fixed order; their sum is the gradient (64 x 131:
    slices of 420 items and a last one of 416)."""
    torch.manual_seed(9)
    x = torch.randn(shape)
    w = torch.randn(shape[1], 1, kernel, kernel)
    pad = kernel // 2
    y = TF.conv2d(x, w, None, stride, pad, 1, shape[1])
    go = torch.randn_like(y)
    partials = direct_kernels.grad_weight_partials(go, x, list(w.shape), [stride] * 2, [pad] * 4, [1, 1], "zeros")
    assert partials.shape == (shape[1], kernel * kernel, slices)
    x64 = x.double().requires_grad_()
    w64 = w.double().requires_grad_()
    ref, = torch.autograd.grad(TF.conv2d(x64, w64, None, stride, pad, 1, shape[1]), w64, go.double())
    got = partials.sum(-1).view(w.shape).double()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("cfg", [
    (2, 16, 1, 9, 10, 3, 1, 1, (1, 1, 1, 1), torch.float16, False),
    (1, 8, 1, 15, 16, 3, 2, 1, (1, 1, 1, 1), torch.bfloat16, False),
    (2, 12, 1, 11, 9, 7, 1, 1, (3, 3, 3, 3), torch.float32, False),
    (1, 4, 1, 13, 13, 5, 1, 2, (4, 4, 4, 4), torch.float32, False),
    (3, 8, 1, 6, 7, 5, 2, 1, (2, 1, 0, 2), torch.float32, False),
], ids=["f16_3x3", "bf16_s2", "f32_7x7", "f32_5x5_d2", "f32_uneven"])
def test_direct_grad_weight_channels_last(direct_kernels, cfg):
    """grad_weight with channels_last input and grad_output: 16-byte channel vectors (8 half
    or bfloat16, 4 float), each thread one kernel row over a slice of pixels. (The direct
    forward declines channels_last output; grad_input, written NCHW by this harness, reads the
    channels_last grad_output through its strides.)"""
    torch.manual_seed(11)
    assert check_direct(direct_kernels, cfg, channels_last=True) == ["grad_input", "grad_weight"]


@pytest.mark.parametrize("c,multiplier,dtype", [(10, 1, torch.float16), (6, 1, torch.float32),
                                                (4, 2, torch.float32)])
def test_direct_grad_weight_channels_last_declines(direct_kernels, c, multiplier, dtype):
    """Channel counts that are no multiple of the 16-byte vector, and multipliers above 1."""
    x = torch.randn(1, c, 6, 6, dtype=dtype).contiguous(memory_format=torch.channels_last)
    go = torch.randn(1, c * multiplier, 6, 6, dtype=dtype).contiguous(memory_format=torch.channels_last)
    assert direct_kernels.grad_weight_partials(go, x, [c * multiplier, 1, 3, 3], [1, 1], [1] * 4, [1, 1],
                                               "zeros") is None


def test_direct_kernels_skip_what_no_output_reads(direct_kernels):
    """Inf in an input row that only the last row group's missing outputs would read (stride
    2, the bottom row unread), and NaN in a weight tap that reads only padding for the first
    output row: torch's results stay finite there, and so do these."""
    x = torch.randn(1, 2, 8, 9)
    x[:, :, 7] = float("inf")
    w = torch.randn(2, 1, 3, 3)
    y = TF.conv2d(x, w, None, 2, 0, 1, 2)
    go = torch.randn_like(y)
    partials = direct_kernels.grad_weight_partials(go, x, [2, 1, 3, 3], [2, 2], [0] * 4, [1, 1], "zeros")
    ref = torch.nn.grad.conv2d_weight(x.double(), w.shape, go.double(), 2, 0, 1, 2)
    assert torch.isfinite(ref).all() and torch.isfinite(partials).all()
    torch.testing.assert_close(partials.sum(-1).view(w.shape).double(), ref, rtol=1e-5, atol=1e-4)
    x = torch.randn(1, 2, 8, 9)
    w[:, :, 0, 1] = float("nan")  # tap (0, 1) reads the top padding row for output row 0
    y = direct_kernels.forward(x, w, None, [1, 1], [1] * 4, [1, 1], "zeros", False)
    # (torch's float32 CPU kernel skips the tap there too; its float64 one pads and gives NaN)
    ref = TF.conv2d(x.double(), w.nan_to_num(0.0).double(), None, 1, 1, 1, 2)
    torch.testing.assert_close(y[:, :, 0].double(), ref[:, :, 0], rtol=1e-5, atol=1e-5)
    assert torch.isnan(y[:, :, 1:]).all()


def test_direct_kernels_decline(direct_kernels):
    """What they do not take (the tiled kernels run then): double, a non-square or 9x9 kernel,
    stride 3, dilation at stride 2, channels_last output, mixed layouts for grad_weight."""
    def forward(x, w, stride, pad, dilation):
        return direct_kernels.forward(x, w, None, [stride] * 2, [pad] * 4, [dilation] * 2, "zeros", False)

    x = torch.randn(1, 2, 9, 9)
    assert forward(x.double(), torch.randn(2, 1, 3, 3).double(), 1, 1, 1) is None
    assert forward(x, torch.randn(2, 1, 3, 5), 1, 1, 1) is None
    assert forward(x, torch.randn(2, 1, 9, 9), 1, 4, 1) is None
    assert forward(x, torch.randn(2, 1, 3, 3), 3, 1, 1) is None
    assert forward(x, torch.randn(2, 1, 3, 3), 2, 1, 2) is None
    cl = x.contiguous(memory_format=torch.channels_last)
    assert forward(cl, torch.randn(2, 1, 3, 3), 1, 1, 1) is None
    assert direct_kernels.grad_weight_partials(cl, x, [2, 1, 3, 3], [1, 1], [1] * 4, [1, 1], "zeros") is None
    assert direct_kernels.grad_weight_partials(x, x, [2, 1, 3, 3], [1, 1], [1] * 4, [1, 1], "zeros") is not None
