// Tensor-core conv2d weight gradient (opt-in; kernel in conv2d_mma.cuh), fp16/bf16:
// grad_weight[oc, (kh, kw, ic)] = sum over pixels of grad_output * im2col(input), any
// padding mode, stride, dilation, groups. The pixel reduction is cut into slices (their
// number fixed by the shapes and the device's SM count) whose float partials go to a
// workspace; a second kernel adds them in slice order: no atomics, deterministic.
#include <algorithm>

#include "cuda/conv2d_mma.cuh"

namespace cnnops {
namespace cuda {
namespace tc {
namespace {

constexpr int64_t kPixTile = 32;  // pixels per pipeline stage (the kernel's kPix)

template <typename T>
void run_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                     const Conv2dGeometry& g, const at::Tensor& grad_weight) {
  const int64_t P = g.batch * g.out_pixels();
  const int64_t Mo = g.out_channels_per_group(), Cin = g.in_channels_per_group();
  const int64_t Kf = g.gemm_k();
  const int64_t bm = Mo <= 64 ? 64 : 128;  // the kernel's out-channel tile (kBM)
  const int64_t tiles = ((Mo + bm - 1) / bm) * ((Kf + kBlockN - 1) / kBlockN) * g.groups;
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  // About two waves of blocks, at least 16 pipeline stages (512 pixels) per slice, a
  // workspace of at most 64 MiB, and grid.z within its limit.
  int64_t slices = std::max<int64_t>(1, (2 * sms + tiles - 1) / tiles);
  slices = std::min<int64_t>(slices, std::max<int64_t>(1, P / (16 * kPixTile)));
  slices = std::min<int64_t>(slices, std::max<int64_t>(1, (16 << 20) / (g.out_channels * Kf)));
  slices = std::min<int64_t>(slices, 65535 / g.groups);
  const int64_t slice_len = ((P + slices - 1) / slices + kPixTile - 1) / kPixTile * kPixTile;
  slices = (P + slice_len - 1) / slice_len;  // no empty trailing slice

  at::Tensor ws = at::empty({slices, g.out_channels, Kf}, grad_output.options().dtype(at::kFloat));
  WgradParams p{};
  p.dy = grad_output.const_data_ptr();
  p.x = input.const_data_ptr();
  p.ws = ws.mutable_data_ptr<float>();
  p.dy_sn = grad_output.stride(0);
  p.dy_sh = grad_output.stride(2);
  p.dy_sw = grad_output.stride(3);
  p.x_sn = input.stride(0);
  p.x_sh = input.stride(2);
  p.x_sw = input.stride(3);
  p.in_h = static_cast<int>(g.in_h);
  p.in_w = static_cast<int>(g.in_w);
  p.out_h = static_cast<int>(g.out_h);
  p.out_w = static_cast<int>(g.out_w);
  p.P = static_cast<int>(P);
  p.Mo = static_cast<int>(Mo);
  p.Cin = static_cast<int>(Cin);
  p.Kf = static_cast<int>(Kf);
  p.kernel_w = static_cast<int>(g.kernel_w);
  p.stride_h = static_cast<int>(g.stride_h);
  p.stride_w = static_cast<int>(g.stride_w);
  p.pad_h = static_cast<int>(g.pad_top);
  p.pad_w = static_cast<int>(g.pad_left);
  p.dil_h = static_cast<int>(g.dilation_h);
  p.dil_w = static_cast<int>(g.dilation_w);
  p.mode = g.mode;
  p.groups = static_cast<int>(g.groups);
  p.slices = static_cast<int>(slices);
  p.slice_len = static_cast<int>(slice_len);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>((Mo + bm - 1) / bm),
                  static_cast<unsigned>((Kf + kBlockN - 1) / kBlockN),
                  static_cast<unsigned>(g.groups * slices));
  if (bm == 64) {
    cnnops_conv2d_mma_wgrad_kernel<T, 64><<<grid, kThreads, 0, stream>>>(p);
  } else {
    cnnops_conv2d_mma_wgrad_kernel<T, 128><<<grid, kThreads, 0, stream>>>(p);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const int64_t total = g.out_channels * Kf;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  cnnops_conv2d_mma_wgrad_reduce_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      ws.const_data_ptr<float>(), grad_weight.mutable_data_ptr<T>(), strides4d(grad_weight),
      g.out_channels, Kf, Cin, g.kernel_w, slices);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

const char* conv2d_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                               const Conv2dGeometry& g, const at::Tensor& grad_weight) {
  const at::ScalarType st = input.scalar_type();
  if (st != at::kHalf && st != at::kBFloat16) {
    return "dtype is not float16 or bfloat16 (no TF32 weight gradient: ldmatrix.trans is 16-bit only)";
  }
  if (g.in_channels_per_group() % 8 != 0 || g.out_channels_per_group() % 8 != 0) {
    return "in_channels / groups or out_channels / groups is not a multiple of 8";
  }
  if (!channels_inner(grad_output, 8)) return "grad_output is not channels_last (16-byte aligned)";
  if (!channels_inner(input, 8)) return "input is not channels_last (16-byte aligned)";
  if (g.batch * g.out_pixels() == 0) return "no output pixels";
  if (!geometry_fits_int32(g)) return "sizes exceed 32-bit indexing or 65535 groups";
  if ((g.gemm_k() + kBlockN - 1) / kBlockN > 65535) return "kernel too large";
  if (g.out_channels * g.gemm_k() > INT32_MAX) return "weight too large";
  if (st == at::kHalf) {
    run_grad_weight<at::Half>(grad_output, input, g, grad_weight);
  } else {
    run_grad_weight<at::BFloat16>(grad_output, input, g, grad_weight);
  }
  return nullptr;
}

}  // namespace tc
}  // namespace cuda
}  // namespace cnnops
