#pragma once
// Host-side argument checks for the depthwise convolution ops, shared by the CPU and CUDA
// implementations; the fake kernels in cnnops/ops/depthwise_conv2d.py raise the same
// messages. A depthwise conv is conv2d with groups = C and weight (C * multiplier, 1, kH, kW),
// so after the depthwise-specific checks the geometry is conv2d's (common/conv_checks.h).
#include "common/conv_checks.h"

namespace cnnops {

inline Conv2dGeometry depthwise_geometry(const char* op, at::IntArrayRef input_size,
                                         at::IntArrayRef weight_size, at::IntArrayRef stride,
                                         at::IntArrayRef padding, at::IntArrayRef dilation,
                                         c10::string_view padding_mode) {
  TORCH_CHECK_VALUE(input_size.size() == 4, op,
                    ": expected input to be a 4-D tensor (N, C, H, W), got shape ",
                    shape_str(input_size));
  TORCH_CHECK_VALUE(weight_size.size() == 4, op,
                    ": expected weight to be a 4-D tensor (C * multiplier, 1, kH, kW), got shape ",
                    shape_str(weight_size));
  const int64_t channels = input_size[1];
  if (channels >= 1) {  // C = 0 is reported by conv2d_geometry
    TORCH_CHECK_VALUE(weight_size[1] == 1, op,
                      ": expected weight to have shape (C * multiplier, 1, kH, kW), got shape ",
                      shape_str(weight_size), " (weight.size(1) must be 1)");
    TORCH_CHECK_VALUE(weight_size[0] >= 1 && weight_size[0] % channels == 0, op,
                      ": expected weight.size(0) to be a positive multiple of the input channels C = ",
                      channels, " (an integer channel multiplier), got ", weight_size[0]);
  }
  return conv2d_geometry(op, input_size, weight_size, stride, padding, dilation,
                         std::max<int64_t>(channels, 1), padding_mode);
}

inline Conv2dGeometry check_depthwise_forward(const char* op, const at::Tensor& input,
                                              const at::Tensor& weight,
                                              const c10::optional<at::Tensor>& bias,
                                              at::IntArrayRef stride, at::IntArrayRef padding,
                                              at::IntArrayRef dilation,
                                              c10::string_view padding_mode, bool half_ok) {
  check_same_dtype_device(op, input, "input", weight, "weight");
  const Conv2dGeometry g = depthwise_geometry(op, input.sizes(), weight.sizes(), stride, padding,
                                              dilation, padding_mode);
  if (bias.has_value() && bias->defined()) {
    check_same_dtype_device(op, input, "input", *bias, "bias");
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == g.out_channels, op,
                      ": expected bias to have shape (", g.out_channels,
                      ",) (C * multiplier), got shape ", shape_str(bias->sizes()));
  }
  check_dtype_supported(op, input, half_ok);
  return g;
}

inline Conv2dGeometry check_depthwise_grad_input(const char* op, const at::Tensor& grad_output,
                                                 const at::Tensor& weight,
                                                 at::IntArrayRef input_size, at::IntArrayRef stride,
                                                 at::IntArrayRef padding, at::IntArrayRef dilation,
                                                 c10::string_view padding_mode, bool half_ok) {
  check_same_dtype_device(op, grad_output, "grad_output", weight, "weight");
  const Conv2dGeometry g =
      depthwise_geometry(op, input_size, weight.sizes(), stride, padding, dilation, padding_mode);
  check_grad_output(op, grad_output, g);
  check_dtype_supported(op, grad_output, half_ok);
  return g;
}

inline Conv2dGeometry check_depthwise_grad_weight(const char* op, const at::Tensor& grad_output,
                                                  const at::Tensor& input,
                                                  at::IntArrayRef weight_size,
                                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                                  at::IntArrayRef dilation,
                                                  c10::string_view padding_mode, bool half_ok) {
  check_same_dtype_device(op, grad_output, "grad_output", input, "input");
  const Conv2dGeometry g =
      depthwise_geometry(op, input.sizes(), weight_size, stride, padding, dilation, padding_mode);
  check_grad_output(op, grad_output, g);
  check_dtype_supported(op, grad_output, half_ok);
  return g;
}

// The fused depthwise-separable forward: the depthwise operands as check_depthwise_forward,
// then the pointwise weight (C_out, C * multiplier, 1, 1) and bias (C_out).
inline Conv2dGeometry check_depthwise_separable_forward(
    const char* op, const at::Tensor& input, const at::Tensor& depthwise_weight,
    const c10::optional<at::Tensor>& depthwise_bias, const at::Tensor& pointwise_weight,
    const c10::optional<at::Tensor>& pointwise_bias, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view padding_mode) {
  check_same_dtype_device(op, input, "input", depthwise_weight, "depthwise_weight");
  TORCH_CHECK_VALUE(input.dim() == 4, op, ": expected input to be a 4-D tensor (N, C, H, W), got shape ",
                    shape_str(input.sizes()));
  const int64_t channels = input.size(1);
  const auto dw = depthwise_weight.sizes();
  TORCH_CHECK_VALUE(dw.size() == 4 && dw[1] == 1 && (channels < 1 || (dw[0] >= 1 && dw[0] % channels == 0)),
                    op, ": expected depthwise_weight to have shape (C * multiplier, 1, kH, kW) with C = ",
                    channels, " and an integer multiplier, got shape ", shape_str(dw));
  const Conv2dGeometry g =
      depthwise_geometry(op, input.sizes(), dw, stride, padding, dilation, padding_mode);
  if (depthwise_bias.has_value() && depthwise_bias->defined()) {
    check_same_dtype_device(op, input, "input", *depthwise_bias, "depthwise_bias");
    TORCH_CHECK_VALUE(depthwise_bias->dim() == 1 && depthwise_bias->size(0) == g.out_channels, op,
                      ": expected depthwise_bias to have shape (", g.out_channels,
                      ",) (C * multiplier), got shape ", shape_str(depthwise_bias->sizes()));
  }
  check_dtype_supported(op, input, /*half_ok=*/false);
  check_same_dtype_device(op, input, "input", pointwise_weight, "pointwise_weight");
  const auto pw = pointwise_weight.sizes();
  TORCH_CHECK_VALUE(pw.size() == 4 && pw[0] >= 1 && pw[1] == g.out_channels && pw[2] == 1 && pw[3] == 1,
                    op, ": expected pointwise_weight to have shape (C_out, ", g.out_channels,
                    ", 1, 1) (C * multiplier input channels), got shape ", shape_str(pw));
  if (pointwise_bias.has_value() && pointwise_bias->defined()) {
    check_same_dtype_device(op, input, "input", *pointwise_bias, "pointwise_bias");
    TORCH_CHECK_VALUE(pointwise_bias->dim() == 1 && pointwise_bias->size(0) == pw[0], op,
                      ": expected pointwise_bias to have shape (", pw[0], ",) (C_out), got shape ",
                      shape_str(pointwise_bias->sizes()));
  }
  return g;
}

}  // namespace cnnops
