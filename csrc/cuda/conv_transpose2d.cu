// conv_transpose2d on CUDA: the conv2d CUDA kernels (common/conv_transpose2d_impl.h: the
// forward runs conv2d's gather-style grad_input kernel, the input-gradient the implicit-GEMM
// forward, the weight-gradient the split-K grad_weight; none uses atomics, so all are
// deterministic) plus `finish`, one thread per output element: bias, zero rows beyond reach,
// and memory-format changes, through strides.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/conv_index.h"
#include "common/conv_transpose2d_impl.h"
#include "common/conv_transpose_index.h"

namespace cnnops {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// Element idx walks dst in its own memory order (channels innermost for channels_last), so
// consecutive threads write consecutive addresses.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    cnnops_conv_transpose2d_finish_kernel(const scalar_t* src, Strides4d src_s, int64_t reach_h,
                                          int64_t reach_w, const scalar_t* bias, int64_t bias_stride,
                                          scalar_t* dst, Strides4d dst_s, int64_t C, int64_t H, int64_t W,
                                          bool channels_inner, int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  int64_t n, c, h, w;
  if (channels_inner) {
    c = idx % C;
    w = (idx / C) % W;
    h = (idx / (C * W)) % H;
    n = idx / (C * W * H);
  } else {
    w = idx % W;
    h = (idx / W) % H;
    c = (idx / (W * H)) % C;
    n = idx / (W * H * C);
  }
  acc_t v = (src != nullptr && within_reach(h, w, reach_h, reach_w))
                ? static_cast<acc_t>(src[src_s.offset(n, c, h, w)])
                : acc_t(0);
  if (bias != nullptr) v += static_cast<acc_t>(bias[c * bias_stride]);
  dst[dst_s.offset(n, c, h, w)] = static_cast<scalar_t>(v);
}

void finish_cuda(const at::Tensor& src, const at::Tensor& bias, const at::Tensor& dst) {
  const int64_t total = dst.numel();
  if (total == 0) return;
  const c10::cuda::CUDAGuard guard(dst.device());
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  TORCH_CHECK(blocks <= INT32_MAX, "cnnops.conv_transpose2d: output too large (", total, " elements)");
  const Strides4d src_s = src.defined() ? strides4d(src) : Strides4d{0, 0, 0, 0};
  const Strides4d dst_s = strides4d(dst);
  const int64_t reach_h = src.defined() ? src.size(2) : 0, reach_w = src.defined() ? src.size(3) : 0;
  const bool channels_inner = dst_s.c < dst_s.w;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dst.scalar_type(), "cnnops_conv_transpose2d_finish_cuda", [&] {
    cnnops_conv_transpose2d_finish_kernel<scalar_t>
        <<<static_cast<unsigned>(blocks), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            src.defined() ? src.const_data_ptr<scalar_t>() : nullptr, src_s, reach_h, reach_w,
            bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr, bias.defined() ? bias.stride(0) : 0,
            dst.mutable_data_ptr<scalar_t>(), dst_s, dst.size(1), dst.size(2), dst.size(3), channels_inner,
            total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

const ConvTransposeBackend& cuda_backend() {
  static const ConvTransposeBackend be{c10::DispatchKeySet(c10::DispatchKey::CUDA), /*half_ok=*/true,
                                       &finish_cuda, false};
  return be;
}

at::Tensor conv_transpose2d_cuda(const at::Tensor& input, const at::Tensor& weight,
                                 const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef output_padding, int64_t groups,
                                 at::IntArrayRef dilation) {
  // The device check first: a CPU tensor beside a CUDA one also dispatches here.
  check_same_dtype_device("cnnops.conv_transpose2d", input, "input", weight, "weight");
  const c10::cuda::CUDAGuard guard(input.device());
  return conv_transpose2d_forward_impl(cuda_backend(), "cnnops.conv_transpose2d", input, weight, bias, stride,
                                       padding, output_padding, groups, dilation);
}

at::Tensor conv_transpose2d_grad_input_cuda(const at::Tensor& grad_output, const at::Tensor& weight,
                                            at::IntArrayRef input_size, at::IntArrayRef stride,
                                            at::IntArrayRef padding, at::IntArrayRef output_padding,
                                            int64_t groups, at::IntArrayRef dilation, bool channels_last) {
  check_same_dtype_device("cnnops.conv_transpose2d_grad_input", grad_output, "grad_output", weight, "weight");
  const c10::cuda::CUDAGuard guard(grad_output.device());
  return conv_transpose2d_grad_input_impl(cuda_backend(), grad_output, weight, input_size, stride, padding,
                                          output_padding, groups, dilation, channels_last);
}

at::Tensor conv_transpose2d_grad_weight_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                             at::IntArrayRef weight_size, at::IntArrayRef stride,
                                             at::IntArrayRef padding, at::IntArrayRef output_padding,
                                             int64_t groups, at::IntArrayRef dilation, bool channels_last) {
  check_same_dtype_device("cnnops.conv_transpose2d_grad_weight", grad_output, "grad_output", input, "input");
  const c10::cuda::CUDAGuard guard(input.device());
  return conv_transpose2d_grad_weight_impl(cuda_backend(), grad_output, input, weight_size, stride, padding,
                                           output_padding, groups, dilation, channels_last);
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(cnnops, CUDA, m) {
  m.impl("conv_transpose2d", &cuda::conv_transpose2d_cuda);
  m.impl("conv_transpose2d_grad_input", &cuda::conv_transpose2d_grad_input_cuda);
  m.impl("conv_transpose2d_grad_weight", &cuda::conv_transpose2d_grad_weight_cuda);
}

}  // namespace cnnops
