#pragma once
// Forward kernels of the convolution families, for other CPU kernels to build on: the fused
// separable forwards (cpu/separable_conv2d.cpp) run them on bands of output rows. Inside an
// at::parallel_for body they run on the calling thread.
#include <ATen/ATen.h>

#include "common/conv_index.h"

namespace cnnops {

// output = depthwise conv of input for geometry g (already checked), through the kernel
// cnnops.depthwise_conv2d would pick for these operands; any strides (cpu/depthwise_conv2d.cpp).
void depthwise_forward_cpu(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias,
                           at::Tensor& output, const Conv2dGeometry& g);

// cnnops.conv2d on the CPU (checks included; padding is (top, bottom, left, right)), as
// registered for the op (cpu/conv2d.cpp).
at::Tensor conv2d_forward_cpu(const at::Tensor& input, const at::Tensor& weight,
                              const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                              c10::string_view padding_mode);

}  // namespace cnnops
