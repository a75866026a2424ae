#pragma once
// The conv2d kernels as C++ calls, for op families built on them (conv_transpose2d): typed
// handles of the cnnops::conv2d* ops, redispatched straight to one backend key (CPU or CUDA).
// The call lands in the registered kernel of csrc/cpu/conv2d.cpp or csrc/cuda/conv2d*.cu
// itself, without autograd, so those kernels are shared rather than copied, and whatever
// they become (faster paths included) serves both families.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ATen.h>

#include <array>

namespace cnnops {
namespace conv2d_kernels {

using Sizes4 = std::array<int64_t, 4>;

inline c10::SymIntArrayRef sym(at::IntArrayRef v) { return c10::fromIntArrayRefSlow(v); }

inline at::Tensor conv2d(c10::DispatchKeySet keys, const at::Tensor& input, const at::Tensor& weight,
                         at::IntArrayRef stride, const Sizes4& padding, at::IntArrayRef dilation,
                         int64_t groups) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("cnnops::conv2d", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                            c10::SymIntArrayRef, c10::SymIntArrayRef, c10::SymIntArrayRef, c10::SymInt,
                            c10::string_view)>();
  return op.redispatch(keys, input, weight, c10::nullopt, sym(stride), sym(padding), sym(dilation),
                       c10::SymInt(groups), "zeros");
}

// gather = true: the CPU-only _conv2d_grad_input_gather, the CUDA kernel's formulation.
inline at::Tensor conv2d_grad_input(c10::DispatchKeySet keys, const at::Tensor& grad_output,
                                    const at::Tensor& weight, const Sizes4& input_size,
                                    at::IntArrayRef stride, const Sizes4& padding,
                                    at::IntArrayRef dilation, int64_t groups, bool channels_last,
                                    bool gather = false) {
  using Sig = at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymIntArrayRef, c10::SymIntArrayRef,
                         c10::SymIntArrayRef, c10::SymIntArrayRef, c10::SymInt, c10::string_view, bool);
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("cnnops::conv2d_grad_input", "").typed<Sig>();
  static const auto gather_op =
      c10::Dispatcher::singleton().findSchemaOrThrow("cnnops::_conv2d_grad_input_gather", "").typed<Sig>();
  return (gather ? gather_op : op)
      .redispatch(keys, grad_output, weight, sym(input_size), sym(stride), sym(padding), sym(dilation),
                  c10::SymInt(groups), "zeros", channels_last);
}

inline at::Tensor conv2d_grad_weight(c10::DispatchKeySet keys, const at::Tensor& grad_output,
                                     const at::Tensor& input, at::IntArrayRef weight_size,
                                     at::IntArrayRef stride, const Sizes4& padding,
                                     at::IntArrayRef dilation, int64_t groups, bool channels_last) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("cnnops::conv2d_grad_weight", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymIntArrayRef, c10::SymIntArrayRef,
                            c10::SymIntArrayRef, c10::SymIntArrayRef, c10::SymInt, c10::string_view, bool)>();
  return op.redispatch(keys, grad_output, input, sym(weight_size), sym(stride), sym(padding), sym(dilation),
                       c10::SymInt(groups), "zeros", channels_last);
}

}  // namespace conv2d_kernels
}  // namespace cnnops
