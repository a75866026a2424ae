#pragma once
// Size math of the transposed convolution, one copy for both devices.
//
// A transposed convolution is the input-gradient of a convolution: per spatial dim, an input
// of size `in` with stride s, padding p, dilation d, kernel k and output_padding op gives
//   out = (in - 1) * s - 2 * p + d * (k - 1) + op + 1
// and equals conv2d_grad_input of the convolution that reads `out` values (padding p before)
// and makes `in` outputs. The padding after only decides how many outputs that convolution
// makes, so it is chosen to make exactly `in`. With op < s the symmetric padding p does; a
// larger op (torch allows op < d too) is absorbed by less padding after and, past that, by
// leaving the last rows out of the convolution: no tap reaches them, they are zero (+ bias).
// Conversely, the transposed convolution's input-gradient is that convolution's forward over
// the first `reach` rows of grad_output.
#include <cstdint>

#include "common/macros.h"

namespace cnnops {

CNNOPS_HOST_DEVICE int64_t conv_transpose_output_size(int64_t in, int64_t kernel, int64_t stride,
                                                      int64_t padding, int64_t output_padding,
                                                      int64_t dilation) {
  return (in - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1;
}

// One spatial dim of the equivalent convolution.
struct TransposedConvDim {
  int64_t out;         // the transposed convolution's output size
  int64_t reach;       // the leading `reach` outputs are computed by the convolution; the rest are zero
  int64_t pad_before;  // the convolution's padding
  int64_t pad_after;
};

CNNOPS_HOST_DEVICE TransposedConvDim transposed_conv_dim(int64_t in, int64_t kernel, int64_t stride,
                                                         int64_t padding, int64_t output_padding,
                                                         int64_t dilation) {
  TransposedConvDim r;
  r.out = conv_transpose_output_size(in, kernel, stride, padding, output_padding, dilation);
  r.pad_before = padding;
  // With pad_after = padding the convolution's padded extent is (in - 1) * s + op beyond the
  // dilated kernel: it makes `in` outputs while that excess is at most s - 1. Each padded
  // or read row removed from its end lowers the excess by one.
  const int64_t excess = output_padding - (stride - 1);
  if (excess <= 0) {
    r.pad_after = padding;
    r.reach = r.out;
  } else {
    const int64_t from_padding = excess < padding ? excess : padding;
    r.pad_after = padding - from_padding;
    r.reach = r.out - (excess - from_padding);  // rows the last tap never reaches
  }
  return r;
}

// Whether output element (h, w) lies in the part computed by the convolution.
CNNOPS_HOST_DEVICE bool within_reach(int64_t h, int64_t w, int64_t reach_h, int64_t reach_w) {
  return h < reach_h && w < reach_w;
}

}  // namespace cnnops
