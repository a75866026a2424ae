#pragma once
// The depthwise forward of cpu/depthwise_conv2d.cpp for other CPU kernels: the fused
// depthwise-separable forward (cpu/depthwise_separable_conv2d.cpp) runs it on bands of rows.
#include <ATen/ATen.h>

#include "common/conv_index.h"

namespace cnnops {

// output = depthwise conv of input for geometry g (already checked), through the kernel
// cnnops.depthwise_conv2d would pick for these operands; any strides. Inside an
// at::parallel_for body it runs on the calling thread.
void depthwise_forward_cpu(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias,
                           at::Tensor& output, const Conv2dGeometry& g);

}  // namespace cnnops
