#pragma once
// The fused depthwise-separable forward kernel of separable_conv2d_fused.cu, opt-in with
// CNNOPS_EXPERIMENTAL=1: its tests pass on the H100, but it is slower there than the two
// kernels it replaces.
#include <ATen/ATen.h>

#include "common/conv_index.h"

namespace cnnops {
namespace cuda {

// output = pointwise(depthwise(input)) for the depthwise geometry g, pointwise_weight
// (C_out, g.out_channels, 1, 1); biases may be null. Returns false, having launched nothing,
// where the grid would be too large (the caller then runs the two kernels).
bool depthwise_separable_forward_fused(const at::Tensor& input, const at::Tensor& depthwise_weight,
                                       const at::Tensor* depthwise_bias, const at::Tensor& pointwise_weight,
                                       const at::Tensor* pointwise_bias, at::Tensor& output,
                                       const Conv2dGeometry& g);

}  // namespace cuda
}  // namespace cnnops
