#pragma once
// Index math for 2-D convolution, one copy for both devices.
//
// Coordinates: a "virtual" coordinate v runs over the padded extent [-pad_before,
// size - 1 + pad_after]. Output position o with tap k reads virtual coordinate
//   v = o * stride - pad_before + k * dilation.
// source_index() maps v to the real input index (or -1 for zero padding); the padding
// is never materialised. padded_preimages() inverts that map for gather-style
// backward kernels, which need every virtual coordinate that reads a given input index.
#include <cstdint>

#include "common/macros.h"

namespace cnnops {

// Values match the order of kPaddingModeNames in conv_checks.h.
enum class PaddingMode : int64_t { Zeros = 0, Reflect = 1, Replicate = 2, Circular = 3 };

CNNOPS_HOST_DEVICE int64_t conv_output_size(int64_t in, int64_t kernel, int64_t stride,
                                            int64_t pad_before, int64_t pad_after,
                                            int64_t dilation) {
  // floor((in + pads - dilation*(kernel-1) - 1) / stride) + 1; callers check the
  // numerator is non-negative first (integer division truncates toward zero).
  return (in + pad_before + pad_after - dilation * (kernel - 1) - 1) / stride + 1;
}

// Real index read at virtual coordinate v, or -1 when it falls in zero padding.
// Assumes the padding was validated: reflect pad < size, circular pad <= size.
CNNOPS_HOST_DEVICE int64_t source_index(int64_t v, int64_t size, PaddingMode mode) {
  if (v >= 0 && v < size) return v;
  switch (mode) {
    case PaddingMode::Reflect:
      return v < 0 ? -v : 2 * (size - 1) - v;
    case PaddingMode::Replicate:
      return v < 0 ? 0 : size - 1;
    case PaddingMode::Circular:
      return v < 0 ? v + size : v - size;
    case PaddingMode::Zeros:
    default:
      return -1;
  }
}

// The virtual coordinates that read real index i, as three closed intervals [lo, hi]
// clipped to the padded extent; an unused slot is empty (lo > hi). Slots are written
// with constant indices so that, on the GPU, the arrays live in registers.
struct Preimages {
  int64_t lo[3];
  int64_t hi[3];
};

CNNOPS_HOST_DEVICE void set_interval(Preimages& p, int slot, int64_t lo, int64_t hi,
                                     int64_t vmin, int64_t vmax) {
  p.lo[slot] = lo < vmin ? vmin : lo;
  p.hi[slot] = hi > vmax ? vmax : hi;
}

CNNOPS_HOST_DEVICE Preimages padded_preimages(int64_t i, int64_t size, int64_t pad_before,
                                              int64_t pad_after, PaddingMode mode) {
  const int64_t vmin = -pad_before, vmax = size - 1 + pad_after;
  Preimages p;
  CNNOPS_UNROLL
  for (int slot = 0; slot < 3; ++slot) set_interval(p, slot, 1, 0, vmin, vmax);  // empty
  switch (mode) {
    case PaddingMode::Reflect:  // v = i, v = -i, v = 2(size-1) - i; distinct for size > 1
      set_interval(p, 0, i, i, vmin, vmax);
      if (i > 0) set_interval(p, 1, -i, -i, vmin, vmax);
      if (i < size - 1) set_interval(p, 2, 2 * (size - 1) - i, 2 * (size - 1) - i, vmin, vmax);
      break;
    case PaddingMode::Replicate:  // the edges own the whole padding beyond them
      set_interval(p, 0, i == 0 ? vmin : i, i == size - 1 ? vmax : i, vmin, vmax);
      break;
    case PaddingMode::Circular:  // pad <= size, so at most one wrap on each side
      set_interval(p, 0, i - size, i - size, vmin, vmax);
      set_interval(p, 1, i, i, vmin, vmax);
      set_interval(p, 2, i + size, i + size, vmin, vmax);
      break;
    case PaddingMode::Zeros:
    default:
      set_interval(p, 0, i, i, vmin, vmax);
      break;
  }
  return p;
}

// Output index o that reads virtual coordinate v through tap k, or -1 if none.
CNNOPS_HOST_DEVICE int64_t output_index_for_tap(int64_t v, int64_t k, int64_t stride,
                                                int64_t pad_before, int64_t dilation,
                                                int64_t out_size) {
  const int64_t num = v + pad_before - k * dilation;
  if (num < 0 || num % stride != 0) return -1;
  const int64_t o = num / stride;
  return o < out_size ? o : -1;
}

// The output positions [lo, hi) whose tap reads an in-range input coordinate, i.e.
// 0 <= o * stride + offset < size with offset = k * dilation - pad_before; outside it,
// source_index() applies the padding. Between lo and hi the input index is
// o * stride + offset, so row-wise kernels copy that run without per-element checks.
struct InteriorRange {
  int64_t lo, hi;
};

CNNOPS_HOST_DEVICE InteriorRange interior_range(int64_t out_size, int64_t size, int64_t stride,
                                                int64_t offset) {
  // smallest o with o * stride + offset >= 0; largest o with o * stride + offset <= size - 1
  int64_t lo = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
  int64_t hi = size - 1 - offset < 0 ? 0 : (size - 1 - offset) / stride + 1;
  if (hi > out_size) hi = out_size;
  if (lo > hi) lo = hi;
  return InteriorRange{lo, hi};
}

// Everything a conv2d kernel needs to know about the geometry of one call.
struct Conv2dGeometry {
  int64_t batch, in_channels, in_h, in_w;
  int64_t out_channels, out_h, out_w;
  int64_t kernel_h, kernel_w;
  int64_t stride_h, stride_w;
  int64_t pad_top, pad_bottom, pad_left, pad_right;
  int64_t dilation_h, dilation_w;
  int64_t groups;
  PaddingMode mode;

  CNNOPS_HOST_DEVICE int64_t in_channels_per_group() const { return in_channels / groups; }
  CNNOPS_HOST_DEVICE int64_t out_channels_per_group() const { return out_channels / groups; }
  // Reduction length of the implicit GEMM: (input channel, kernel row, kernel col).
  CNNOPS_HOST_DEVICE int64_t gemm_k() const { return in_channels_per_group() * kernel_h * kernel_w; }
  CNNOPS_HOST_DEVICE int64_t out_pixels() const { return out_h * out_w; }
};

// Strides of a 4-D tensor in logical (N, C, H, W) order, in elements. Kernels read and
// write through these, so NCHW, channels_last and arbitrary views need no copy.
struct Strides4d {
  int64_t n, c, h, w;
  CNNOPS_HOST_DEVICE int64_t offset(int64_t in, int64_t ic, int64_t ih, int64_t iw) const {
    return in * n + ic * c + ih * h + iw * w;
  }
};

// im2col element: the input value that GEMM row (n, oh, ow) and column
// (ic, kh, kw) of group g reads, with the padding applied through source_index().
// Returns the element offset, or -1 for zero padding.
CNNOPS_HOST_DEVICE int64_t im2col_offset(const Conv2dGeometry& g, const Strides4d& s,
                                         int64_t n, int64_t group, int64_t oh, int64_t ow,
                                         int64_t ic, int64_t kh, int64_t kw) {
  const int64_t vh = oh * g.stride_h - g.pad_top + kh * g.dilation_h;
  const int64_t vw = ow * g.stride_w - g.pad_left + kw * g.dilation_w;
  const int64_t ih = source_index(vh, g.in_h, g.mode);
  const int64_t iw = source_index(vw, g.in_w, g.mode);
  if (ih < 0 || iw < 0) return -1;
  return s.offset(n, group * g.in_channels_per_group() + ic, ih, iw);
}

// grad_input at one input element (n, c, ih, iw), as a gather over every (output pixel,
// tap) that read it: deterministic, no scatter. The CUDA grad_input kernel runs this per
// thread; the CPU op _conv2d_grad_input_gather runs it too, so CPU tests check it.
template <typename acc_t, typename scalar_t>
CNNOPS_HOST_DEVICE acc_t conv2d_grad_input_at(const scalar_t* grad_output, const scalar_t* weight,
                                              const Strides4d& go_s, const Strides4d& w_s,
                                              const Conv2dGeometry& g, int64_t n, int64_t c,
                                              int64_t ih, int64_t iw) {
  const int64_t icg = g.in_channels_per_group(), ocg = g.out_channels_per_group();
  const int64_t group = c / icg, ic = c % icg;
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
              for (int64_t oc = group * ocg; oc < (group + 1) * ocg; ++oc) {
                acc += static_cast<acc_t>(grad_output[go_s.offset(n, oc, oh, ow)]) *
                       static_cast<acc_t>(weight[w_s.offset(oc, ic, kh, kw)]);
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
