#pragma once
// Host-side argument checks for the fused separable convolutions (csrc/separable_conv2d.cpp),
// mirrored by the fake kernels in cnnops/ops/separable_conv2d.py with the same messages.
#include "common/depthwise_checks.h"

namespace cnnops {

// bias: undefined, or (size,) with the input's dtype and device; `what` names the size.
inline void check_separable_bias(const char* op, const at::Tensor& input, const c10::optional<at::Tensor>& bias,
                                 const char* name, int64_t size, const char* what) {
  if (!bias.has_value() || !bias->defined()) return;
  check_same_dtype_device(op, input, "input", *bias, name);
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == size, op, ": expected ", name, " to have shape (", size,
                    ",) (", what, "), got shape ", shape_str(bias->sizes()));
}

// The fused depthwise-separable forward: the depthwise operands as check_depthwise_forward
// checks them, under this op's argument names, then the pointwise weight
// (C_out, C * multiplier, 1, 1) and bias (C_out).
inline Conv2dGeometry check_depthwise_separable_forward(
    const char* op, const at::Tensor& input, const at::Tensor& depthwise_weight,
    const c10::optional<at::Tensor>& depthwise_bias, const at::Tensor& pointwise_weight,
    const c10::optional<at::Tensor>& pointwise_bias, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view padding_mode, bool half_ok) {
  check_same_dtype_device(op, input, "input", depthwise_weight, "depthwise_weight");
  TORCH_CHECK_VALUE(input.dim() == 4, op, ": expected input to be a 4-D tensor (N, C, H, W), got shape ",
                    shape_str(input.sizes()));
  const int64_t channels = input.size(1);
  const auto dw = depthwise_weight.sizes();
  TORCH_CHECK_VALUE(dw.size() == 4 && dw[1] == 1 && dw[2] >= 1 && dw[3] >= 1 &&
                        (channels < 1 || (dw[0] >= 1 && dw[0] % channels == 0)),
                    op, ": expected depthwise_weight to have shape (C * multiplier, 1, kH, kW) with C = ",
                    channels, ", an integer multiplier and kH, kW >= 1, got shape ", shape_str(dw));
  const Conv2dGeometry g =
      depthwise_geometry(op, input.sizes(), dw, stride, padding, dilation, padding_mode);
  check_separable_bias(op, input, depthwise_bias, "depthwise_bias", g.out_channels, "C * multiplier");
  check_dtype_supported(op, input, half_ok);
  check_same_dtype_device(op, input, "input", pointwise_weight, "pointwise_weight");
  const auto pw = pointwise_weight.sizes();
  TORCH_CHECK_VALUE(pw.size() == 4 && pw[0] >= 1 && pw[1] == g.out_channels && pw[2] == 1 && pw[3] == 1,
                    op, ": expected pointwise_weight to have shape (C_out, ", g.out_channels,
                    ", 1, 1) (C * multiplier input channels), got shape ", shape_str(pw));
  check_separable_bias(op, input, pointwise_bias, "pointwise_bias", pw[0], "C_out");
  return g;
}

// The output's memory format, as the two convs in sequence give it: channels_last when the
// input or either weight is.
inline at::MemoryFormat separable_output_format(const at::Tensor& input, const at::Tensor& first_weight,
                                                const at::Tensor& second_weight) {
  const bool cl = conv_memory_format(input, first_weight) == at::MemoryFormat::ChannelsLast ||
                  second_weight.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  return cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// The fused spatially separable forward: a (kH x 1) conv C_in -> C_mid with stride
// (stride[0], 1), padding (top, bottom, 0, 0) and dilation (dilation[0], 1), then a (1 x kW)
// conv C_mid -> C_out with stride (1, stride[1]), padding (0, 0, left, right) and dilation
// (1, dilation[1]), both with padding_mode. Returns the two convs' geometries.
struct SeparablePair {
  Conv2dGeometry vertical, horizontal;
};

inline SeparablePair check_spatially_separable_forward(
    const char* op, const at::Tensor& input, const at::Tensor& vertical_weight,
    const c10::optional<at::Tensor>& vertical_bias, const at::Tensor& horizontal_weight,
    const c10::optional<at::Tensor>& horizontal_bias, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view padding_mode) {
  check_same_dtype_device(op, input, "input", vertical_weight, "vertical_weight");
  TORCH_CHECK_VALUE(input.dim() == 4, op, ": expected input to be a 4-D tensor (N, C, H, W), got shape ",
                    shape_str(input.sizes()));
  TORCH_CHECK_VALUE(stride.size() == 2 && dilation.size() == 2 && padding.size() == 4, op,
                    ": expected stride and dilation as (vertical, horizontal) and padding as (top, bottom, "
                    "left, right), got ", shape_str(stride), ", ", shape_str(dilation), ", ", shape_str(padding));
  // checked here, as given: each conv below sees only its half of them
  TORCH_CHECK_VALUE(stride[0] >= 1 && stride[1] >= 1, op,
                    ": expected stride to be two integers >= 1 (vertical, horizontal), got ", shape_str(stride));
  TORCH_CHECK_VALUE(dilation[0] >= 1 && dilation[1] >= 1, op,
                    ": expected dilation to be two integers >= 1 (vertical, horizontal), got ", shape_str(dilation));
  TORCH_CHECK_VALUE(padding[0] >= 0 && padding[1] >= 0 && padding[2] >= 0 && padding[3] >= 0, op,
                    ": expected padding to be four integers >= 0 (top, bottom, left, right), got ",
                    shape_str(padding));
  const auto vw = vertical_weight.sizes();
  TORCH_CHECK_VALUE(vw.size() == 4 && vw[0] >= 1 && vw[1] == input.size(1) && vw[2] >= 1 && vw[3] == 1, op,
                    ": expected vertical_weight to have shape (C_mid, ", input.size(1),
                    ", kH, 1) with kH >= 1, got shape ", shape_str(vw));
  SeparablePair p;
  const int64_t v_stride[2] = {stride[0], 1}, v_padding[4] = {padding[0], padding[1], 0, 0};
  const int64_t v_dilation[2] = {dilation[0], 1};
  p.vertical = conv2d_geometry(op, input.sizes(), vw, v_stride, v_padding, v_dilation, 1, padding_mode);
  check_separable_bias(op, input, vertical_bias, "vertical_bias", vw[0], "C_mid");
  check_dtype_supported(op, input, /*half_ok=*/false);
  check_same_dtype_device(op, input, "input", horizontal_weight, "horizontal_weight");
  const auto hw = horizontal_weight.sizes();
  TORCH_CHECK_VALUE(hw.size() == 4 && hw[0] >= 1 && hw[1] == vw[0] && hw[2] == 1 && hw[3] >= 1, op,
                    ": expected horizontal_weight to have shape (C_out, ", vw[0], ", 1, kW) with kW >= 1, got shape ",
                    shape_str(hw));
  const int64_t mid_size[4] = {p.vertical.batch, p.vertical.out_channels, p.vertical.out_h, p.vertical.out_w};
  const int64_t h_stride[2] = {1, stride[1]}, h_padding[4] = {0, 0, padding[2], padding[3]};
  const int64_t h_dilation[2] = {1, dilation[1]};
  p.horizontal = conv2d_geometry(op, mid_size, hw, h_stride, h_padding, h_dilation, 1, padding_mode);
  check_separable_bias(op, input, horizontal_bias, "horizontal_bias", hw[0], "C_out");
  return p;
}

}  // namespace cnnops
