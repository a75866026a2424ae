#pragma once
// Host-side argument checks for the convolution ops, shared by the CPU and CUDA
// implementations. The fake kernels in cnnops/ops/conv2d.py raise the same messages.
#include <ATen/ATen.h>
#include <c10/util/string_view.h>

#include <sstream>
#include <string>

#include "common/conv_index.h"

namespace cnnops {

inline const char* kPaddingModeNames[] = {"zeros", "reflect", "replicate", "circular"};

inline PaddingMode parse_padding_mode(const char* op, c10::string_view name) {
  for (int64_t i = 0; i < 4; ++i) {
    if (name == kPaddingModeNames[i]) return static_cast<PaddingMode>(i);
  }
  TORCH_CHECK_VALUE(false, op, ": expected padding_mode to be one of 'zeros', "
                    "'reflect', 'replicate', 'circular', got '", std::string(name), "'");
}

inline std::string shape_str(at::IntArrayRef sizes) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < sizes.size(); ++i) os << (i ? ", " : "") << sizes[i];
  if (sizes.size() == 1) os << ",";
  os << ")";
  return os.str();
}

// dtype names as Python prints them without the "torch." prefix, so the C++ and the
// fake-kernel messages read the same.
inline std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kLong: return "int64";
    case at::kInt: return "int32";
    case at::kShort: return "int16";
    case at::kChar: return "int8";
    case at::kByte: return "uint8";
    case at::kBool: return "bool";
    case at::kComplexFloat: return "complex64";
    case at::kComplexDouble: return "complex128";
    default: return c10::toString(t);
  }
}

// Convolutions produce channels_last when the input or the weight is channels_last.
inline at::MemoryFormat conv_memory_format(const at::Tensor& input, const at::Tensor& weight) {
  const bool channels_last = input.suggest_memory_format() == at::MemoryFormat::ChannelsLast ||
                             weight.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

inline Strides4d strides4d(const at::Tensor& t) {
  return Strides4d{t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// `other` (called `name`) must match the dtype and device of `ref` (called `ref_name`).
// An optional tensor (a bias) as a pointer: nullptr when absent or undefined.
inline const at::Tensor* defined_or_null(const c10::optional<at::Tensor>& t) {
  return (t.has_value() && t->defined()) ? &*t : nullptr;
}

inline void check_same_dtype_device(const char* op, const at::Tensor& ref, const char* ref_name,
                                    const at::Tensor& other, const char* name) {
  TORCH_CHECK_TYPE(other.scalar_type() == ref.scalar_type(), op, ": expected ", name,
                   " to have the same dtype as ", ref_name, " (", dtype_name(ref.scalar_type()),
                   "), got ", dtype_name(other.scalar_type()));
  TORCH_CHECK(other.device() == ref.device(), op, ": expected ", name,
              " to be on the same device as ", ref_name, " (", ref.device(), "), got ",
              other.device());
}

// Validates a conv2d call described by the input and weight shapes (the tensors
// themselves need not exist: the backward ops pass sizes) and returns its geometry.
// padding is (top, bottom, left, right).
inline Conv2dGeometry conv2d_geometry(const char* op, at::IntArrayRef input_size,
                                      at::IntArrayRef weight_size, at::IntArrayRef stride,
                                      at::IntArrayRef padding, at::IntArrayRef dilation,
                                      int64_t groups, c10::string_view padding_mode) {
  TORCH_CHECK_VALUE(input_size.size() == 4, op,
                    ": expected input to be a 4-D tensor (N, C, H, W), got shape ",
                    shape_str(input_size));
  TORCH_CHECK_VALUE(weight_size.size() == 4, op,
                    ": expected weight to be a 4-D tensor (out_channels, in_channels / groups, "
                    "kH, kW), got shape ", shape_str(weight_size));
  TORCH_CHECK_VALUE(stride.size() == 2 && stride[0] >= 1 && stride[1] >= 1, op,
                    ": expected stride to be two integers >= 1, got ", shape_str(stride));
  TORCH_CHECK_VALUE(dilation.size() == 2 && dilation[0] >= 1 && dilation[1] >= 1, op,
                    ": expected dilation to be two integers >= 1, got ", shape_str(dilation));
  TORCH_CHECK_VALUE(padding.size() == 4 && padding[0] >= 0 && padding[1] >= 0 &&
                        padding[2] >= 0 && padding[3] >= 0,
                    op, ": expected padding to be four integers >= 0 (top, bottom, left, right), got ",
                    shape_str(padding));
  TORCH_CHECK_VALUE(groups >= 1, op, ": expected groups >= 1, got ", groups);
  const PaddingMode mode = parse_padding_mode(op, padding_mode);

  Conv2dGeometry g{};
  g.batch = input_size[0];
  g.in_channels = input_size[1];
  g.in_h = input_size[2];
  g.in_w = input_size[3];
  g.out_channels = weight_size[0];
  g.kernel_h = weight_size[2];
  g.kernel_w = weight_size[3];
  g.stride_h = stride[0];
  g.stride_w = stride[1];
  g.pad_top = padding[0];
  g.pad_bottom = padding[1];
  g.pad_left = padding[2];
  g.pad_right = padding[3];
  g.dilation_h = dilation[0];
  g.dilation_w = dilation[1];
  g.groups = groups;
  g.mode = mode;

  TORCH_CHECK_VALUE(g.in_channels >= 1 && g.in_h >= 1 && g.in_w >= 1, op,
                    ": expected input to have non-zero channels, height and width, got shape ",
                    shape_str(input_size));
  TORCH_CHECK_VALUE(g.out_channels >= 1 && weight_size[1] >= 1 && g.kernel_h >= 1 &&
                        g.kernel_w >= 1,
                    op, ": expected weight to have non-zero sizes, got shape ",
                    shape_str(weight_size));
  TORCH_CHECK_VALUE(g.in_channels == weight_size[1] * groups, op,
                    ": expected input to have weight.size(1) * groups = ", weight_size[1],
                    " * ", groups, " = ", weight_size[1] * groups, " channels, got ",
                    g.in_channels, " (input shape ", shape_str(input_size), ")");
  TORCH_CHECK_VALUE(g.out_channels % groups == 0, op,
                    ": expected out_channels (weight.size(0) = ", g.out_channels,
                    ") to be divisible by groups = ", groups);
  if (mode == PaddingMode::Reflect) {
    TORCH_CHECK_VALUE(g.pad_top < g.in_h && g.pad_bottom < g.in_h && g.pad_left < g.in_w &&
                          g.pad_right < g.in_w,
                      op, ": reflect padding must be smaller than the input size, got padding ",
                      shape_str(padding), " for input height ", g.in_h, " and width ", g.in_w);
  }
  if (mode == PaddingMode::Circular) {
    TORCH_CHECK_VALUE(g.pad_top <= g.in_h && g.pad_bottom <= g.in_h && g.pad_left <= g.in_w &&
                          g.pad_right <= g.in_w,
                      op, ": circular padding must be at most the input size, got padding ",
                      shape_str(padding), " for input height ", g.in_h, " and width ", g.in_w);
  }
  const int64_t padded_h = g.in_h + g.pad_top + g.pad_bottom;
  const int64_t padded_w = g.in_w + g.pad_left + g.pad_right;
  const int64_t dilated_kh = g.dilation_h * (g.kernel_h - 1) + 1;
  const int64_t dilated_kw = g.dilation_w * (g.kernel_w - 1) + 1;
  TORCH_CHECK_VALUE(padded_h >= dilated_kh && padded_w >= dilated_kw, op,
                    ": expected the padded input (", padded_h, " x ", padded_w,
                    ") to be at least as large as the dilated kernel (", dilated_kh, " x ",
                    dilated_kw, ")");
  g.out_h = conv_output_size(g.in_h, g.kernel_h, g.stride_h, g.pad_top, g.pad_bottom, g.dilation_h);
  g.out_w = conv_output_size(g.in_w, g.kernel_w, g.stride_w, g.pad_left, g.pad_right, g.dilation_w);
  return g;
}

inline Conv2dGeometry check_conv2d_forward(const char* op, const at::Tensor& input,
                                           const at::Tensor& weight,
                                           const c10::optional<at::Tensor>& bias,
                                           at::IntArrayRef stride, at::IntArrayRef padding,
                                           at::IntArrayRef dilation, int64_t groups,
                                           c10::string_view padding_mode) {
  check_same_dtype_device(op, input, "input", weight, "weight");
  Conv2dGeometry g = conv2d_geometry(op, input.sizes(), weight.sizes(), stride, padding,
                                     dilation, groups, padding_mode);
  if (bias.has_value() && bias->defined()) {
    check_same_dtype_device(op, input, "input", *bias, "bias");
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == g.out_channels, op,
                      ": expected bias to have shape (", g.out_channels,
                      ",) (out_channels), got shape ", shape_str(bias->sizes()));
  }
  return g;
}

// grad_output of a conv2d backward op must have the forward's output shape.
inline void check_grad_output(const char* op, const at::Tensor& grad_output,
                              const Conv2dGeometry& g) {
  const int64_t expected[4] = {g.batch, g.out_channels, g.out_h, g.out_w};
  TORCH_CHECK_VALUE(grad_output.sizes() == at::IntArrayRef(expected, 4), op,
                    ": expected grad_output to have shape ", shape_str(at::IntArrayRef(expected, 4)),
                    ", got ", shape_str(grad_output.sizes()));
}

// (N, C, ...) viewed as (N, C, H, W) for the channel-sum kernels.
inline at::Tensor as_4d(const at::Tensor& t) {
  if (t.dim() == 2) return t.unsqueeze(2).unsqueeze(3);
  if (t.dim() == 3) return t.unsqueeze(3);
  if (t.dim() == 4) return t;
  return t.flatten(2).unsqueeze(3);
}

inline void check_dtype_supported(const char* op, const at::Tensor& t, bool half_ok) {
  const auto st = t.scalar_type();
  const bool ok = st == at::kFloat || st == at::kDouble || st == at::kBFloat16 ||
                  (half_ok && st == at::kHalf);
  TORCH_CHECK_NOT_IMPLEMENTED(ok, op, ": dtype ", dtype_name(st), " on device ", t.device(),
                              " is not supported; supported: ",
                              half_ok ? "float32, float64, float16, bfloat16"
                                      : "float32, float64, bfloat16");
}

// The two gradient ops' checks, shared by both devices. Gradients are allocated in the
// forward's layout (channels_last flag from the autograd formula), as torch does.
inline Conv2dGeometry check_conv2d_grad_input(const char* op, const at::Tensor& grad_output,
                                              const at::Tensor& weight, at::IntArrayRef input_size,
                                              at::IntArrayRef stride, at::IntArrayRef padding,
                                              at::IntArrayRef dilation, int64_t groups,
                                              c10::string_view padding_mode, bool half_ok) {
  check_same_dtype_device(op, grad_output, "grad_output", weight, "weight");
  const Conv2dGeometry g = conv2d_geometry(op, input_size, weight.sizes(), stride, padding,
                                           dilation, groups, padding_mode);
  check_grad_output(op, grad_output, g);
  check_dtype_supported(op, grad_output, half_ok);
  return g;
}

inline Conv2dGeometry check_conv2d_grad_weight(const char* op, const at::Tensor& grad_output,
                                               const at::Tensor& input, at::IntArrayRef weight_size,
                                               at::IntArrayRef stride, at::IntArrayRef padding,
                                               at::IntArrayRef dilation, int64_t groups,
                                               c10::string_view padding_mode, bool half_ok) {
  check_same_dtype_device(op, grad_output, "grad_output", input, "input");
  const Conv2dGeometry g = conv2d_geometry(op, input.sizes(), weight_size, stride, padding,
                                           dilation, groups, padding_mode);
  check_grad_output(op, grad_output, g);
  check_dtype_supported(op, grad_output, half_ok);
  return g;
}

// grad_output of any convolution, (N, C, ...), viewed as (N, C, H, W) for the channel sums.
inline at::Tensor check_conv2d_grad_bias(const char* op, const at::Tensor& grad_output, bool half_ok) {
  TORCH_CHECK_VALUE(grad_output.dim() >= 2, op,
                    ": expected grad_output with at least 2 dimensions (N, C, ...), got shape ",
                    shape_str(grad_output.sizes()));
  check_dtype_supported(op, grad_output, half_ok);
  return as_4d(grad_output);
}

inline at::MemoryFormat layout_from_flag(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

}  // namespace cnnops
