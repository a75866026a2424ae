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

// Zero padding, multiplier 1: the input gradient is a forward convolution, with the kernel
// flipped, over grad_output spread out by the stride (stride - 1 zeros between neighbours;
// none at stride 1), padded by d * (k - 1) - p before and by what makes the result the
// input's size after. This is its geometry: its input is the spread grad_output, of
// (out - 1) * stride + 1 rows and columns. The CPU runs it at stride 1 on its forward
// kernels; the CUDA tiled kernels spread grad_output while staging it (any stride).
CNNOPS_HOST_DEVICE Conv2dGeometry flipped_forward_geometry(const Conv2dGeometry& g) {
  Conv2dGeometry f = g;
  const int64_t reach_h = (g.kernel_h - 1) * g.dilation_h, reach_w = (g.kernel_w - 1) * g.dilation_w;
  f.in_h = (g.out_h - 1) * g.stride_h + 1, f.in_w = (g.out_w - 1) * g.stride_w + 1;
  f.out_h = g.in_h, f.out_w = g.in_w;
  f.stride_h = 1, f.stride_w = 1;
  f.pad_top = reach_h - g.pad_top, f.pad_bottom = g.in_h - f.in_h + g.pad_top;  // reach_h - pad_bottom at stride 1
  f.pad_left = reach_w - g.pad_left, f.pad_right = g.in_w - f.in_w + g.pad_left;
  return f;
}

// Where that forward exists: zero padding, multiplier 1 and no negative padding (padding at
// most the kernel's reach).
CNNOPS_HOST_DEVICE bool grad_input_as_forward(const Conv2dGeometry& g) {
  const Conv2dGeometry f = flipped_forward_geometry(g);
  return g.out_channels == g.in_channels && g.mode == PaddingMode::Zeros && f.pad_top >= 0 && f.pad_bottom >= 0 &&
         f.pad_left >= 0 && f.pad_right >= 0;
}

// grad_input needs no depthwise copy: with groups = C (depthwise_geometry) conv_index.h's
// conv2d_grad_input_at visits exactly the output channels c * multiplier .. + multiplier - 1.

}  // namespace cnnops
