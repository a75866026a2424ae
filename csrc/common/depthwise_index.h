#pragma once
// Per-element depthwise convolution math, one copy for both devices: the CUDA kernels run
// these per thread; the CPU channels_last kernels use the same tap enumeration
// (padded_preimages / output_index_for_tap from conv_index.h), vectorized over channels.
#include "common/conv_index.h"

namespace cnnops {

// Output (n, oc, oh, ow) of a depthwise conv: input channel oc / multiplier.
template <typename acc_t, typename scalar_t>
CNNOPS_HOST_DEVICE acc_t depthwise_output_at(const scalar_t* input, const scalar_t* weight,
                                             const Strides4d& in_s, const Strides4d& w_s,
                                             const Conv2dGeometry& g, int64_t n, int64_t oc,
                                             int64_t oh, int64_t ow) {
  const int64_t c = oc / (g.out_channels / g.in_channels);
  acc_t acc = 0;
  for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
    const int64_t ih = source_index(oh * g.stride_h - g.pad_top + kh * g.dilation_h, g.in_h, g.mode);
    if (ih < 0) continue;
    for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
      const int64_t iw =
          source_index(ow * g.stride_w - g.pad_left + kw * g.dilation_w, g.in_w, g.mode);
      if (iw < 0) continue;
      acc += static_cast<acc_t>(input[in_s.offset(n, c, ih, iw)]) *
             static_cast<acc_t>(weight[w_s.offset(oc, 0, kh, kw)]);
    }
  }
  return acc;
}

// Stride 1, zero padding, multiplier 1 (and padding at most the kernel's reach): the input
// gradient is the forward convolution of grad_output with the kernel flipped, padded by
// d * (k - 1) - p on each side, so it runs on the (faster) forward kernels of each device.
CNNOPS_HOST_DEVICE bool grad_input_as_forward(const Conv2dGeometry& g) {
  const int64_t reach_h = (g.kernel_h - 1) * g.dilation_h, reach_w = (g.kernel_w - 1) * g.dilation_w;
  return g.out_channels == g.in_channels && g.mode == PaddingMode::Zeros && g.stride_h == 1 && g.stride_w == 1 &&
         g.pad_top <= reach_h && g.pad_bottom <= reach_h && g.pad_left <= reach_w && g.pad_right <= reach_w;
}

// The geometry of that forward: grad_output is its input, grad_input its output.
CNNOPS_HOST_DEVICE Conv2dGeometry flipped_forward_geometry(const Conv2dGeometry& g) {
  Conv2dGeometry f = g;
  const int64_t reach_h = (g.kernel_h - 1) * g.dilation_h, reach_w = (g.kernel_w - 1) * g.dilation_w;
  f.in_h = g.out_h, f.in_w = g.out_w, f.out_h = g.in_h, f.out_w = g.in_w;
  f.pad_top = reach_h - g.pad_top, f.pad_bottom = reach_h - g.pad_bottom;
  f.pad_left = reach_w - g.pad_left, f.pad_right = reach_w - g.pad_right;
  return f;
}

// grad_input needs no depthwise copy: with groups = C (depthwise_geometry) conv_index.h's
// conv2d_grad_input_at visits exactly the output channels c * multiplier .. + multiplier - 1.

}  // namespace cnnops
