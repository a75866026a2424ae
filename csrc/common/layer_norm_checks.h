#pragma once
// Host-side argument checks and shape rules for the layer_norm family, shared by the CPU
// and CUDA implementations. The fake kernels in cnnops/ops/layer_norm.py raise the same
// messages, in the same order.
#include <ATen/ATen.h>

#include <array>
#include <cmath>
#include <tuple>
#include <vector>

#include "common/conv_checks.h"  // shape_str, dtype_name, check_same_dtype_device, check_dtype_supported

namespace cnnops {

// mean and rstd are saved in float32, or float64 for float64 input.
inline at::ScalarType layer_norm_stat_dtype(at::ScalarType input_dtype) {
  return input_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

inline bool is_reduced_float(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; }

// weight / bias: the input's dtype, or float32 for float16/bfloat16 input; on the input's
// device; of the given shape (what names the rule the shape comes from).
inline void check_layer_norm_param(const char* op, const at::Tensor& input, const at::Tensor& p,
                                   const char* name, at::IntArrayRef expected,
                                   const char* what) {
  const auto it = input.scalar_type(), pt = p.scalar_type();
  const bool reduced = is_reduced_float(it);
  TORCH_CHECK_TYPE(pt == it || (reduced && pt == at::kFloat), op, ": expected ", name,
                   " to have the same dtype as input (", dtype_name(it), ")",
                   reduced ? " or float32" : "", ", got ", dtype_name(pt));
  TORCH_CHECK(p.device() == input.device(), op, ": expected ", name,
              " to be on the same device as input (", input.device(), "), got ", p.device());
  TORCH_CHECK_VALUE(p.sizes() == expected, op, ": expected ", name, " to have shape ",
                    shape_str(expected), " (", what, "), got shape ", shape_str(p.sizes()));
}

inline void check_layer_norm_params(const char* op, const at::Tensor& input,
                                    const c10::optional<at::Tensor>& weight,
                                    const c10::optional<at::Tensor>& bias,
                                    at::IntArrayRef expected, const char* what) {
  const bool has_w = weight.has_value() && weight->defined();
  const bool has_b = bias.has_value() && bias->defined();
  if (has_w) check_layer_norm_param(op, input, *weight, "weight", expected, what);
  if (has_b) check_layer_norm_param(op, input, *bias, "bias", expected, what);
  if (has_w && has_b) {
    TORCH_CHECK_TYPE(bias->scalar_type() == weight->scalar_type(), op,
                     ": expected bias to have the same dtype as weight (",
                     dtype_name(weight->scalar_type()), "), got ", dtype_name(bias->scalar_type()));
  }
}

// layer_norm: normalized_shape non-empty and equal to the input's trailing dimensions.
// Returns (rows, row length).
inline std::pair<int64_t, int64_t> check_layer_norm_shape(const char* op, const at::Tensor& input,
                                                          at::IntArrayRef normalized_shape) {
  const int64_t nd = static_cast<int64_t>(normalized_shape.size());
  TORCH_CHECK_VALUE(nd >= 1, op,
                    ": expected normalized_shape to have at least one dimension, got ()");
  const int64_t dim = input.dim();
  TORCH_CHECK_VALUE(dim >= nd && input.sizes().slice(dim - nd) == normalized_shape, op,
                    ": expected the trailing dimensions of input to equal normalized_shape ",
                    shape_str(normalized_shape), ", got input shape ", shape_str(input.sizes()));
  int64_t rows = 1, cols = 1;
  for (int64_t i = 0; i < dim - nd; ++i) rows *= input.size(i);
  for (int64_t i = dim - nd; i < dim; ++i) cols *= input.size(i);
  return {rows, cols};
}

inline void check_layer_norm2d_shape(const char* op, const at::Tensor& input) {
  TORCH_CHECK_VALUE(input.dim() == 4, op,
                    ": expected input to be a 4-D tensor (N, C, H, W), got shape ",
                    shape_str(input.sizes()));
}

// Shape of mean / rstd: the input's shape with the normalized dimensions set to 1.
inline std::vector<int64_t> layer_norm_stat_shape(const at::Tensor& input, int64_t nd) {
  std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
  for (int64_t i = input.dim() - nd; i < input.dim(); ++i) shape[i] = 1;
  return shape;
}

inline void check_layer_norm_stat(const char* op, const at::Tensor& input, const at::Tensor& s,
                                  const char* name, int64_t rows) {
  const auto want = layer_norm_stat_dtype(input.scalar_type());
  TORCH_CHECK_TYPE(s.scalar_type() == want, op, ": expected ", name, " to have dtype ",
                   dtype_name(want), ", got ", dtype_name(s.scalar_type()));
  TORCH_CHECK(s.device() == input.device(), op, ": expected ", name,
              " to be on the same device as input (", input.device(), "), got ", s.device());
  TORCH_CHECK_VALUE(s.numel() == rows, op, ": expected ", name, " to have ", rows,
                    " elements (one per normalized row), got shape ", shape_str(s.sizes()));
}

inline void check_layer_norm_grad_out(const char* op, const at::Tensor& input,
                                      const at::Tensor& grad_out) {
  check_same_dtype_device(op, input, "input", grad_out, "grad_out");
  TORCH_CHECK_VALUE(grad_out.sizes() == input.sizes(), op,
                    ": expected grad_out to have the same shape as input ",
                    shape_str(input.sizes()), ", got ", shape_str(grad_out.sizes()));
}

// layer_norm2d works on NCHW-contiguous or channels_last-contiguous memory; any other
// strides are copied to NCHW first. The output has the layout that was worked on.
inline bool layer_norm2d_is_channels_last(const at::Tensor& input) {
  return input.is_contiguous(at::MemoryFormat::ChannelsLast) && !input.is_contiguous();
}

inline at::MemoryFormat layer_norm2d_format(const at::Tensor& input) {
  return layer_norm2d_is_channels_last(input) ? at::MemoryFormat::ChannelsLast
                                              : at::MemoryFormat::Contiguous;
}

// A requested gradient of weight or bias has the parameter's dtype, or the input's when
// the parameter is absent; a gradient not requested is an empty (0,) tensor.
inline at::ScalarType layer_norm_param_dtype(const at::Tensor& input,
                                             const c10::optional<at::Tensor>& p) {
  return (p.has_value() && p->defined()) ? p->scalar_type() : input.scalar_type();
}

// The forward's outputs: out (the input's shape, in `format`), then mean and rstd
// (stat_shape, in the stat dtype). Callers name them with std::get references, not a
// structured binding, which C++17 lambdas (torch 2.11 builds) cannot capture.
using LayerNormOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

inline LayerNormOutputs layer_norm_outputs(const at::Tensor& input, at::IntArrayRef stat_shape,
                                           at::MemoryFormat format) {
  const auto stat_options = input.options().dtype(layer_norm_stat_dtype(input.scalar_type()));
  return {at::empty(input.sizes(), input.options().memory_format(format)),
          at::empty(stat_shape, stat_options), at::empty(stat_shape, stat_options)};
}

// True when no kernel is needed: no rows, or rows of length 0 (mean 0, rstd 1/sqrt(eps)).
inline bool layer_norm_outputs_trivial(const LayerNormOutputs& outputs, int64_t rows,
                                       int64_t row_length, double eps) {
  if (rows == 0) return true;
  if (row_length != 0) return false;
  std::get<1>(outputs).zero_();
  std::get<2>(outputs).fill_(1.0 / std::sqrt(eps));
  return true;
}

}  // namespace cnnops
