#pragma once
// Host-side argument checks for the pooling ops, shared by the CPU and CUDA
// implementations. cnnops/ops/pool2d.py raises the same messages in the fake kernels.
#include <ATen/ATen.h>

#include <string>

#include "common/conv_checks.h"  // shape_str, dtype_name, check_dtype_supported, layout_from_flag
#include "common/pool_index.h"

namespace cnnops {

inline void check_pool_input(const char* op, at::IntArrayRef input_size) {
  TORCH_CHECK_VALUE(input_size.size() == 4, op,
                    ": expected input to be a 4-D tensor (N, C, H, W), got shape ",
                    shape_str(input_size));
  TORCH_CHECK_VALUE(input_size[1] >= 1 && input_size[2] >= 1 && input_size[3] >= 1, op,
                    ": expected input to have non-zero channels, height and width, got shape ",
                    shape_str(input_size));
}

inline void check_pair(const char* op, const char* name, at::IntArrayRef v, int64_t min) {
  TORCH_CHECK_VALUE(v.size() == 2 && v[0] >= min && v[1] >= min, op, ": expected ", name,
                    " to be two integers >= ", min, ", got ", shape_str(v));
}

// Validates a max/avg pooling call (dilation is (1, 1) for average pooling) and returns
// its geometry. Mirrors torch's pool2d_shape_check: pad <= kernel_size // 2 for the
// undilated kernel, output at least 1 x 1.
inline Pool2dGeometry pool2d_geometry(const char* op, at::IntArrayRef input_size,
                                      at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                      at::IntArrayRef padding, at::IntArrayRef dilation,
                                      bool ceil_mode) {
  check_pool_input(op, input_size);
  check_pair(op, "kernel_size", kernel_size, 1);
  check_pair(op, "stride", stride, 1);
  check_pair(op, "padding", padding, 0);
  check_pair(op, "dilation", dilation, 1);
  TORCH_CHECK_VALUE(padding[0] <= kernel_size[0] / 2 && padding[1] <= kernel_size[1] / 2, op,
                    ": expected padding to be at most half of kernel_size (padding <= "
                    "kernel_size // 2), got padding ", shape_str(padding), " for kernel_size ",
                    shape_str(kernel_size));
  Pool2dGeometry g{};
  g.batch = input_size[0];
  g.channels = input_size[1];
  g.in_h = input_size[2];
  g.in_w = input_size[3];
  g.kernel_h = kernel_size[0];
  g.kernel_w = kernel_size[1];
  g.stride_h = stride[0];
  g.stride_w = stride[1];
  g.pad_h = padding[0];
  g.pad_w = padding[1];
  g.dilation_h = dilation[0];
  g.dilation_w = dilation[1];
  g.ceil_mode = ceil_mode;
  g.count_include_pad = true;
  g.divisor_override = 0;
  g.out_h = pool_output_size(g.in_h, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h, ceil_mode);
  g.out_w = pool_output_size(g.in_w, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w, ceil_mode);
  TORCH_CHECK_VALUE(g.out_h >= 1 && g.out_w >= 1, op,
                    ": expected the output size to be at least 1 x 1, got ", g.out_h, " x ",
                    g.out_w, " for input size ", g.in_h, " x ", g.in_w, ", kernel_size ",
                    shape_str(kernel_size), ", stride ", shape_str(stride), ", padding ",
                    shape_str(padding), ", dilation ", shape_str(dilation),
                    ", ceil_mode ", ceil_mode ? "True" : "False");
  return g;
}

inline int64_t check_divisor_override(const char* op, c10::optional<int64_t> divisor_override) {
  if (!divisor_override.has_value()) return 0;
  TORCH_CHECK_VALUE(*divisor_override != 0, op,
                    ": expected divisor_override to be non-zero or None, got 0");
  return *divisor_override;
}

inline Pool2dGeometry adaptive_pool2d_geometry(const char* op, at::IntArrayRef input_size,
                                               at::IntArrayRef output_size) {
  check_pool_input(op, input_size);
  check_pair(op, "output_size", output_size, 0);
  Pool2dGeometry g{};
  g.batch = input_size[0];
  g.channels = input_size[1];
  g.in_h = input_size[2];
  g.in_w = input_size[3];
  g.out_h = output_size[0];
  g.out_w = output_size[1];
  return g;
}

// The backward ops' geometry, from the input size and grad_output's spatial size (a
// grad_output that is not 4-D is reported by the backward's own shape check).
inline Pool2dGeometry adaptive_pool2d_backward_geometry(const char* op, const at::Tensor& grad_output,
                                                        at::IntArrayRef input_size) {
  const int64_t out[2] = {grad_output.dim() == 4 ? grad_output.size(2) : 0,
                          grad_output.dim() == 4 ? grad_output.size(3) : 0};
  return adaptive_pool2d_geometry(op, input_size, at::IntArrayRef(out, 2));
}

// Pooling keeps the input's memory format (torch's rule).
inline at::MemoryFormat pool_memory_format(const at::Tensor& input) {
  return input.suggest_memory_format() == at::MemoryFormat::ChannelsLast
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}


// grad_output (and indices) of a backward op must have the forward's output shape.
inline void check_pool_grad_output(const char* op, const at::Tensor& grad_output,
                                   const Pool2dGeometry& g) {
  const int64_t expected[4] = {g.batch, g.channels, g.out_h, g.out_w};
  TORCH_CHECK_VALUE(grad_output.sizes() == at::IntArrayRef(expected, 4), op,
                    ": expected grad_output to have shape ",
                    shape_str(at::IntArrayRef(expected, 4)), ", got ",
                    shape_str(grad_output.sizes()));
}

inline void check_pool_indices(const char* op, const at::Tensor& grad_output,
                               const at::Tensor& indices) {
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kLong, op,
                   ": expected indices to have dtype int64, got ",
                   dtype_name(indices.scalar_type()));
  TORCH_CHECK_VALUE(indices.sizes() == grad_output.sizes(), op,
                    ": expected indices to have the shape of grad_output ",
                    shape_str(grad_output.sizes()), ", got ", shape_str(indices.sizes()));
  TORCH_CHECK(indices.device() == grad_output.device(), op,
              ": expected indices to be on the same device as grad_output (",
              grad_output.device(), "), got ", indices.device());
}

}  // namespace cnnops
