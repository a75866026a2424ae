#pragma once
// Host-side argument checks of the transposed convolution ops, shared by the CPU and CUDA
// implementations. cnnops/ops/conv_transpose2d.py (the fake kernels) raises the same messages.
#include <ATen/ATen.h>

#include <array>

#include "common/conv_checks.h"
#include "common/conv_transpose_index.h"

namespace cnnops {

struct ConvTranspose2dGeometry {
  int64_t batch, in_channels, in_h, in_w;
  int64_t out_channels, kernel_h, kernel_w, groups;
  TransposedConvDim h, w;

  // The equivalent convolution reads at least one row and one column.
  bool reachable() const { return h.reach >= 1 && w.reach >= 1; }
  std::array<int64_t, 4> output_size() const { return {batch, out_channels, h.out, w.out}; }
  // Input size and (top, bottom, left, right) padding of the equivalent convolution.
  std::array<int64_t, 4> conv_input_size() const { return {batch, out_channels, h.reach, w.reach}; }
  std::array<int64_t, 4> conv_padding() const {
    return {h.pad_before, h.pad_after, w.pad_before, w.pad_after};
  }
};

inline bool is_pair(at::IntArrayRef v, int64_t min) {
  return v.size() == 2 && v[0] >= min && v[1] >= min;
}

// Validates a transposed convolution described by the input and weight shapes; weight is
// (in_channels, out_channels / groups, kH, kW).
inline ConvTranspose2dGeometry conv_transpose2d_geometry(
    const char* op, at::IntArrayRef input_size, at::IntArrayRef weight_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef output_padding, int64_t groups, at::IntArrayRef dilation) {
  TORCH_CHECK_VALUE(input_size.size() == 4, op,
                    ": expected input to be a 4-D tensor (N, C, H, W), got shape ", shape_str(input_size));
  TORCH_CHECK_VALUE(weight_size.size() == 4, op,
                    ": expected weight to be a 4-D tensor (in_channels, out_channels / groups, kH, kW), "
                    "got shape ", shape_str(weight_size));
  TORCH_CHECK_VALUE(is_pair(stride, 1), op, ": expected stride to be two integers >= 1, got ",
                    shape_str(stride));
  TORCH_CHECK_VALUE(is_pair(padding, 0), op, ": expected padding to be two integers >= 0, got ",
                    shape_str(padding));
  TORCH_CHECK_VALUE(is_pair(output_padding, 0), op,
                    ": expected output_padding to be two integers >= 0, got ", shape_str(output_padding));
  TORCH_CHECK_VALUE(is_pair(dilation, 1), op, ": expected dilation to be two integers >= 1, got ",
                    shape_str(dilation));
  TORCH_CHECK_VALUE(groups >= 1, op, ": expected groups >= 1, got ", groups);
  ConvTranspose2dGeometry g{};
  g.batch = input_size[0];
  g.in_channels = input_size[1];
  g.in_h = input_size[2];
  g.in_w = input_size[3];
  g.kernel_h = weight_size[2];
  g.kernel_w = weight_size[3];
  g.groups = groups;
  g.out_channels = weight_size[1] * groups;
  TORCH_CHECK_VALUE(g.in_channels >= 1 && g.in_h >= 1 && g.in_w >= 1, op,
                    ": expected input to have non-zero channels, height and width, got shape ",
                    shape_str(input_size));
  TORCH_CHECK_VALUE(weight_size[0] >= 1 && weight_size[1] >= 1 && g.kernel_h >= 1 && g.kernel_w >= 1,
                    op, ": expected weight to have non-zero sizes, got shape ", shape_str(weight_size));
  TORCH_CHECK_VALUE(weight_size[0] == g.in_channels, op,
                    ": expected input to have weight.size(0) = ", weight_size[0],
                    " channels (weight is (in_channels, out_channels / groups, kH, kW)), got ",
                    g.in_channels, " (input shape ", shape_str(input_size), ")");
  TORCH_CHECK_VALUE(g.in_channels % groups == 0, op, ": expected in_channels (weight.size(0) = ",
                    g.in_channels, ") to be divisible by groups = ", groups);
  // torch's rule: each output_padding below the stride or the dilation of its dimension.
  const bool op_ok = (output_padding[0] < stride[0] || output_padding[0] < dilation[0]) &&
                     (output_padding[1] < stride[1] || output_padding[1] < dilation[1]);
  TORCH_CHECK_VALUE(op_ok, op,
                    ": expected output_padding to be smaller than stride or dilation in each dimension, "
                    "got output_padding ", shape_str(output_padding), " with stride ", shape_str(stride),
                    " and dilation ", shape_str(dilation));
  g.h = transposed_conv_dim(g.in_h, g.kernel_h, stride[0], padding[0], output_padding[0], dilation[0]);
  g.w = transposed_conv_dim(g.in_w, g.kernel_w, stride[1], padding[1], output_padding[1], dilation[1]);
  TORCH_CHECK_VALUE(g.h.out >= 0 && g.w.out >= 0, op, ": expected a non-negative output size, got ",
                    g.h.out, " x ", g.w.out,
                    " = (input - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1"
                    " for input ", g.in_h, " x ", g.in_w);
  return g;
}

inline ConvTranspose2dGeometry check_conv_transpose2d_forward(
    const char* op, const at::Tensor& input, const at::Tensor& weight,
    const c10::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef output_padding, int64_t groups, at::IntArrayRef dilation, bool half_ok) {
  check_same_dtype_device(op, input, "input", weight, "weight");
  const ConvTranspose2dGeometry g = conv_transpose2d_geometry(
      op, input.sizes(), weight.sizes(), stride, padding, output_padding, groups, dilation);
  if (bias.has_value() && bias->defined()) {
    check_same_dtype_device(op, input, "input", *bias, "bias");
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == g.out_channels, op,
                      ": expected bias to have shape (", g.out_channels,
                      ",) (out_channels = weight.size(1) * groups), got shape ", shape_str(bias->sizes()));
  }
  check_dtype_supported(op, input, half_ok);
  return g;
}

inline void check_transposed_grad_output(const char* op, const at::Tensor& grad_output,
                                         const ConvTranspose2dGeometry& g) {
  const std::array<int64_t, 4> expected = g.output_size();
  TORCH_CHECK_VALUE(grad_output.sizes() == at::IntArrayRef(expected), op,
                    ": expected grad_output to have shape ", shape_str(expected), ", got ",
                    shape_str(grad_output.sizes()));
}

inline ConvTranspose2dGeometry check_conv_transpose2d_grad_input(
    const char* op, const at::Tensor& grad_output, const at::Tensor& weight, at::IntArrayRef input_size,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_padding, int64_t groups,
    at::IntArrayRef dilation, bool half_ok) {
  check_same_dtype_device(op, grad_output, "grad_output", weight, "weight");
  const ConvTranspose2dGeometry g = conv_transpose2d_geometry(
      op, input_size, weight.sizes(), stride, padding, output_padding, groups, dilation);
  check_transposed_grad_output(op, grad_output, g);
  check_dtype_supported(op, grad_output, half_ok);
  return g;
}

inline ConvTranspose2dGeometry check_conv_transpose2d_grad_weight(
    const char* op, const at::Tensor& grad_output, const at::Tensor& input, at::IntArrayRef weight_size,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_padding, int64_t groups,
    at::IntArrayRef dilation, bool half_ok) {
  check_same_dtype_device(op, grad_output, "grad_output", input, "input");
  const ConvTranspose2dGeometry g = conv_transpose2d_geometry(
      op, input.sizes(), weight_size, stride, padding, output_padding, groups, dilation);
  check_transposed_grad_output(op, grad_output, g);
  check_dtype_supported(op, grad_output, half_ok);
  return g;
}

}  // namespace cnnops
