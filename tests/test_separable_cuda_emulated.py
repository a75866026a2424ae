"""The fused depthwise-separable CUDA kernel (csrc/cuda/separable_conv2d_fused.cu, opt-in with
CNNOPS_EXPERIMENTAL=1) run on the CPU through tests/cuda_emulator.py, against torch's depthwise
conv then 1x1 conv in float64: tiles of pixels and output channels (partial ones included),
chunks of depthwise channels, multipliers, every padding mode, strides, dilations, layouts and
dtypes. Index math, tiling and shared-memory staging only; races and speed need the GPU
(tests/test_separable_conv2d.py runs the op there)."""
import pytest
import torch
import torch.nn.functional as TF

import cuda_emulator

HARNESS = r"""
namespace cnnops {
namespace emulated {
// None where the kernel declines (the two kernels would run), else the result.
c10::optional<at::Tensor> forward(const at::Tensor& input, const at::Tensor& dw, const c10::optional<at::Tensor>& dw_bias,
                                  const at::Tensor& pw, const c10::optional<at::Tensor>& pw_bias,
                                  std::vector<int64_t> stride, std::vector<int64_t> padding,
                                  std::vector<int64_t> dilation, std::string mode) {
  const Conv2dGeometry g = check_depthwise_separable_forward("emulated", input, dw, dw_bias, pw, pw_bias, stride,
                                                             padding, dilation, mode, true);
  // NaN-filled in the layout the op gives (at::full would drop the memory format)
  at::Tensor out = at::empty({g.batch, pw.size(0), g.out_h, g.out_w},
                             input.options().memory_format(separable_output_format(input, dw, pw)))
                       .fill_(std::nan(""));
  const at::Tensor* db = dw_bias.has_value() ? &*dw_bias : nullptr;
  const at::Tensor* pb = pw_bias.has_value() ? &*pw_bias : nullptr;
  if (!cuda::depthwise_separable_forward_fused(input, dw, db, pw, pb, out, g)) return c10::nullopt;
  return out;
}
}  // namespace emulated
}  // namespace cnnops
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("forward", &cnnops::emulated::forward); }
"""


@pytest.fixture(scope="module")
def kernels():
    return cuda_emulator.build_or_skip("separable_conv2d_fused_emulated", "csrc/cuda/separable_conv2d_fused.cu",
                                       '#include "common/separable_checks.h"\n' + HARNESS)


CASES = [
    # (N, C, multiplier, H, W, C_out, kernel, stride, dilation, padding (t, b, l, r), mode, layout, biases)
    (2, 5, 1, 9, 10, 7, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), "zeros", "contiguous", (True, True)),
    (1, 20, 1, 8, 9, 70, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), "reflect", "contiguous", (False, True)),  # 2 output tiles, 2 chunks
    (1, 3, 2, 11, 9, 5, (5, 3), (2, 1), (1, 2), (2, 2, 2, 2), "replicate", "channels_last", (True, False)),
    (2, 4, 3, 7, 12, 6, (2, 3), (1, 2), (2, 1), (1, 0, 1, 1), "circular", "contiguous", (False, False)),
    (1, 6, 1, 13, 11, 4, (7, 7), (1, 1), (1, 1), (3, 3, 3, 3), "zeros", "channels_last", (True, True)),  # 143 px: 3 tiles
    (1, 17, 1, 5, 5, 3, (1, 1), (1, 1), (1, 1), (0, 0, 0, 0), "zeros", "w_major", (True, True)),
]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_fused_forward_matches_torch(kernels, case, dtype):
    n, c, m, h, w, cout, k, s, d, pad, mode, layout, biases = case
    torch.manual_seed(0)
    x64 = torch.randn(n, c, h, w, dtype=torch.float64)
    dw64 = torch.randn(c * m, 1, *k, dtype=torch.float64) / (k[0] * k[1]) ** 0.5
    pw64 = torch.randn(cout, c * m, 1, 1, dtype=torch.float64) / (c * m) ** 0.5
    db64 = torch.randn(c * m, dtype=torch.float64) if biases[0] else None
    pb64 = torch.randn(cout, dtype=torch.float64) if biases[1] else None
    x, dw, pw, db, pb = (None if t is None else t.to(dtype) for t in (x64, dw64, pw64, db64, pb64))
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "w_major":  # no unit stride along W
        x = x.transpose(2, 3).contiguous().transpose(2, 3)
    top, bottom, left, right = pad
    xp = TF.pad(x.double(), (left, right, top, bottom), mode="constant" if mode == "zeros" else mode)
    mid = TF.conv2d(xp, dw.double(), None if db is None else db.double(), s, 0, d, c)
    ref = TF.conv2d(mid, pw.double(), None if pb is None else pb.double())
    got = kernels.forward(x, dw, db, pw, pb, list(s), list(pad), list(d), mode)
    assert got is not None and got.shape == ref.shape
    assert got.is_contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
    err = ((got.double() - ref).abs().max() / ref.abs().max()).item()
    assert err < tol, f"{case} {dtype}: relative error {err:.2e}"
