// The separable_conv2d family on CUDA: depthwise_separable_conv2d runs the depthwise kernel
// then the 1x1 conv kernel (both GPU-verified), through the dispatcher; with
// CNNOPS_EXPERIMENTAL=1 the fused kernel of separable_conv2d_fused.cu runs instead (tested on
// the H100, but slower there than these two kernels). spatially_separable_conv2d's CUDA kernel is the two conv2d kernels in
// sequence, registered from Python (cnnops/ops/separable_conv2d.py).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>


#include "common/separable_checks.h"
#include "cuda/separable_conv2d_fused.cuh"
#include "cuda/experimental.h"

namespace cnnops {
namespace cuda {
namespace {

c10::SymIntArrayRef sym(at::IntArrayRef v) { return c10::fromIntArrayRefSlow(v); }

// The two ops' CUDA kernels. Called from a backend kernel (below autograd), so the calls
// land on them directly.
at::Tensor depthwise_conv2d(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                            at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                            c10::string_view padding_mode) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("cnnops::depthwise_conv2d", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                                               c10::SymIntArrayRef, c10::SymIntArrayRef, c10::SymIntArrayRef,
                                               c10::string_view)>();
  return op.call(input, weight, bias, sym(stride), sym(padding), sym(dilation), padding_mode);
}

at::Tensor pointwise_conv2d(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("cnnops::conv2d", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                                               c10::SymIntArrayRef, c10::SymIntArrayRef, c10::SymIntArrayRef,
                                               c10::SymInt, c10::string_view)>();
  const int64_t one[2] = {1, 1}, zero[4] = {0, 0, 0, 0};
  return op.call(input, weight, bias, sym(one), sym(zero), sym(one), c10::SymInt(1), "zeros");
}

at::Tensor depthwise_separable_conv2d_cuda(const at::Tensor& input, const at::Tensor& depthwise_weight,
                                           const c10::optional<at::Tensor>& depthwise_bias,
                                           const at::Tensor& pointwise_weight,
                                           const c10::optional<at::Tensor>& pointwise_bias, at::IntArrayRef stride,
                                           at::IntArrayRef padding, at::IntArrayRef dilation,
                                           c10::string_view padding_mode) {
  const char* op = "cnnops.depthwise_separable_conv2d";
  const Conv2dGeometry g =
      check_depthwise_separable_forward(op, input, depthwise_weight, depthwise_bias, pointwise_weight,
                                        pointwise_bias, stride, padding, dilation, padding_mode, /*half_ok=*/true);
  const c10::cuda::CUDAGuard guard(input.device());
  if (experimental_enabled()) {
    at::Tensor output = at::empty({g.batch, pointwise_weight.size(0), g.out_h, g.out_w},
                                  input.options().memory_format(
                                      separable_output_format(input, depthwise_weight, pointwise_weight)));
    if (output.numel() == 0) return output;
    if (depthwise_separable_forward_fused(input, depthwise_weight, defined_or_null(depthwise_bias), pointwise_weight,
                                          defined_or_null(pointwise_bias), output, g))
      return output;
  }
  const at::Tensor mid = depthwise_conv2d(input, depthwise_weight, depthwise_bias, stride, padding, dilation,
                                          padding_mode);
  return pointwise_conv2d(mid, pointwise_weight, pointwise_bias);
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnops, CUDA, m) {
  m.impl("depthwise_separable_conv2d", &depthwise_separable_conv2d_cuda);
}

}  // namespace cuda
}  // namespace cnnops
