#pragma once
// The tiled depthwise kernels of depthwise_conv2d_fast.cu, opt-in with CNNOPS_EXPERIMENTAL=1
// until a GPU run has tested them (DESIGN.md section 3). Each returns false, having
// launched nothing, where it does not apply; the caller then runs the default kernel.
#include <ATen/ATen.h>

#include "common/conv_index.h"

namespace cnnops {
namespace cuda {

// output = depthwise conv of input (geometry g), with the kernel flipped in both axes when
// `flip` (grad_input as a forward: common/depthwise_index.h). bias may be null.
bool depthwise_forward_fast(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias,
                            at::Tensor& output, const Conv2dGeometry& g, bool flip);

// grad_weight partial sums, [output channel][tap][slice] in the accumulate type, for the
// default path's in-order reduction over slices; `slices` is set to their count.
bool depthwise_grad_weight_partials_fast(const at::Tensor& grad_output, const at::Tensor& input,
                                         const Conv2dGeometry& g, at::Tensor& partials, int64_t& slices);

}  // namespace cuda
}  // namespace cnnops
