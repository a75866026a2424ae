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

}  // namespace cnnops
