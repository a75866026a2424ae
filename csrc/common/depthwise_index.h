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

// grad_input at (n, c, ih, iw): a gather over every (virtual coordinate, tap, output
// channel of c) that read it, i.e. a depthwise transposed convolution; no scatter.
template <typename acc_t, typename scalar_t>
CNNOPS_HOST_DEVICE acc_t depthwise_grad_input_at(const scalar_t* grad_output, const scalar_t* weight,
                                                 const Strides4d& go_s, const Strides4d& w_s,
                                                 const Conv2dGeometry& g, int64_t n, int64_t c,
                                                 int64_t ih, int64_t iw) {
  const int64_t mult = g.out_channels / g.in_channels;
  const Preimages rows = padded_preimages(ih, g.in_h, g.pad_top, g.pad_bottom, g.mode);
  const Preimages cols = padded_preimages(iw, g.in_w, g.pad_left, g.pad_right, g.mode);
  acc_t acc = 0;
  CNNOPS_UNROLL
  for (int a = 0; a < 3; ++a) {
    for (int64_t vh = rows.lo[a]; vh <= rows.hi[a]; ++vh) {
      for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
        const int64_t oh = output_index_for_tap(vh, kh, g.stride_h, g.pad_top, g.dilation_h, g.out_h);
        if (oh < 0) continue;
        CNNOPS_UNROLL
        for (int b = 0; b < 3; ++b) {
          for (int64_t vw = cols.lo[b]; vw <= cols.hi[b]; ++vw) {
            for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
              const int64_t ow =
                  output_index_for_tap(vw, kw, g.stride_w, g.pad_left, g.dilation_w, g.out_w);
              if (ow < 0) continue;
              for (int64_t j = 0; j < mult; ++j) {
                const int64_t oc = c * mult + j;
                acc += static_cast<acc_t>(grad_output[go_s.offset(n, oc, oh, ow)]) *
                       static_cast<acc_t>(weight[w_s.offset(oc, 0, kh, kw)]);
              }
            }
          }
        }
      }
    }
  }
  return acc;
}

}  // namespace cnnops
