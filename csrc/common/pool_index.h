#pragma once
// Index math for 2-D pooling, one copy for the CPU and CUDA kernels, forward and backward.
//
// Coordinates follow torch: output o of a pooling with kernel k, stride s, padding p and
// dilation d has taps at input coordinates start + t * d, t in [0, k), where
// start = o * s - p; taps outside [0, size) are padding and are never read.
//
// Rules kept exactly as torch has them (aten/src/ATen/native/Pool.h, the CPU kernels):
//  - output size: floor((size + 2p - d(k-1) - 1 [+ s-1 if ceil_mode]) / s) + 1, and with
//    ceil_mode the last window is dropped when it would start at or past size + p (i.e.
//    in the right padding);
//  - max: taps are scanned row by row, a value replaces the running maximum when it is
//    greater or NaN (so NaN wins, and the last NaN in scan order gives the index); ties
//    keep the first maximum; the running maximum starts at -inf with the index of the
//    first valid tap. A window with no valid tap (possible with dilation) gives -inf and
//    index -1 (torch gives an index outside the plane there).
//  - average: the window [start, start + k) is clipped to [-p, size + p) for the
//    count_include_pad divisor (the part of a ceil_mode window past the padded edge never
//    counts) and to [0, size) for the sum and the count_include_pad=False divisor;
//    divisor_override replaces both.
//  - adaptive: output o of size_out covers [floor(o * in / out), ceil((o + 1) * in / out)).
//
// Backward kernels are gathers: for input coordinate i they visit the outputs whose window
// can contain i, given by the *_output_range() functions below, which are the exact
// inverses of the forward windows.
#include <cstdint>

#include "common/macros.h"

namespace cnnops {

// a / b truncated, for b > 0, computed in the integer type I. The CUDA kernels are
// instantiated for I = int32_t when the host has checked that every operand fits 32 bits
// (64-bit integer division is a long instruction sequence on GPUs); everything else uses
// the default, int64_t.
template <typename I = int64_t>
CNNOPS_HOST_DEVICE int64_t pool_div(int64_t a, int64_t b) {
  return static_cast<I>(a) / static_cast<I>(b);
}

// Division rounding toward -inf / +inf, for b > 0.
template <typename I = int64_t>
CNNOPS_HOST_DEVICE int64_t pool_floor_div(int64_t a, int64_t b) {
  const int64_t q = pool_div<I>(a, b);
  return (q * b != a && a < 0) ? q - 1 : q;
}
template <typename I = int64_t>
CNNOPS_HOST_DEVICE int64_t pool_ceil_div(int64_t a, int64_t b) {
  const int64_t q = pool_div<I>(a, b);
  return (q * b != a && a > 0) ? q + 1 : q;
}

// Number of outputs along one dimension; may come out below 1 (callers reject that).
CNNOPS_HOST_DEVICE int64_t pool_output_size(int64_t size, int64_t kernel, int64_t stride,
                                            int64_t pad, int64_t dilation, bool ceil_mode) {
  int64_t out = pool_floor_div(size + 2 * pad - dilation * (kernel - 1) - 1 +
                                   (ceil_mode ? stride - 1 : 0),
                               stride) +
                1;
  if (ceil_mode && (out - 1) * stride >= size + pad) --out;
  return out;
}

// The taps t in [begin, end) of output o whose coordinate start + t * d lies in [0, size).
// begin >= end means the window holds padding only.
struct TapRange {
  int64_t begin, end;
};

template <typename I = int64_t>
CNNOPS_HOST_DEVICE TapRange pool_tap_range(int64_t o, int64_t size, int64_t kernel,
                                           int64_t stride, int64_t pad, int64_t dilation) {
  const int64_t start = o * stride - pad;
  TapRange r;
  // taps with start + t * d <= size - 1
  const int64_t last = size - 1 - start;
  if (dilation == 1) {  // no division
    r.begin = start < 0 ? -start : 0;
    r.end = last < 0 ? 0 : last + 1;
  } else {
    r.begin = start < 0 ? pool_ceil_div<I>(-start, dilation) : 0;
    r.end = last < 0 ? 0 : pool_div<I>(last, dilation) + 1;
  }
  if (r.end > kernel) r.end = kernel;
  return r;
}

// Average pooling window of output o: [begin, end) clipped to the input (what is summed)
// and padded_count, the window length clipped to the padded extent (count_include_pad).
struct AvgWindow {
  int64_t begin, end, padded_count;
};

CNNOPS_HOST_DEVICE AvgWindow avg_pool_window(int64_t o, int64_t size, int64_t kernel,
                                             int64_t stride, int64_t pad) {
  const int64_t start = o * stride - pad;
  int64_t padded_end = start + kernel;
  if (padded_end > size + pad) padded_end = size + pad;
  AvgWindow w;
  w.padded_count = padded_end - start;
  w.begin = start < 0 ? 0 : start;
  w.end = padded_end < size ? padded_end : size;
  return w;
}

// The divisor of one average-pooling output (torch's rule). divisor_override == 0 means
// none (the op rejects an override of 0).
CNNOPS_HOST_DEVICE int64_t avg_pool_divisor(const AvgWindow& h, const AvgWindow& w,
                                            bool count_include_pad, int64_t divisor_override) {
  if (divisor_override != 0) return divisor_override;
  if (count_include_pad) return h.padded_count * w.padded_count;
  return (h.end - h.begin) * (w.end - w.begin);
}

// Adaptive pooling: output o of out_size covers input [start, end).
template <typename I = int64_t>
CNNOPS_HOST_DEVICE int64_t adaptive_start(int64_t o, int64_t in_size, int64_t out_size) {
  return pool_div<I>(o * in_size, out_size);  // floor (non-negative)
}
template <typename I = int64_t>
CNNOPS_HOST_DEVICE int64_t adaptive_end(int64_t o, int64_t in_size, int64_t out_size) {
  return pool_div<I>((o + 1) * in_size + out_size - 1, out_size);  // ceil
}

// ---------------------------------------------------------------- inverses (backward)

// Outputs [begin, end) of a (dilated) pooling whose window span
// [o*s - p, o*s - p + d*(k-1)] contains input coordinate i. With dilation > 1 a window in
// this range may step over i; max-pool backward checks the saved index, so only
// completeness matters there. For d == 1 (average pooling) the range is exact.
struct OutputRange {
  int64_t begin, end;
};

template <typename I = int64_t>
CNNOPS_HOST_DEVICE OutputRange pool_output_range(int64_t i, int64_t kernel, int64_t stride,
                                                 int64_t pad, int64_t dilation,
                                                 int64_t out_size) {
  OutputRange r;
  r.begin = pool_ceil_div<I>(i + pad - dilation * (kernel - 1), stride);
  if (r.begin < 0) r.begin = 0;
  r.end = pool_floor_div<I>(i + pad, stride) + 1;
  if (r.end > out_size) r.end = out_size;
  return r;
}

// Outputs [begin, end) of an adaptive pooling whose window contains input coordinate i:
// floor(i * out / in) <= o < ceil((i + 1) * out / in).
template <typename I = int64_t>
CNNOPS_HOST_DEVICE OutputRange adaptive_output_range(int64_t i, int64_t in_size,
                                                     int64_t out_size) {
  OutputRange r;
  r.begin = adaptive_start<I>(i, out_size, in_size);
  r.end = adaptive_end<I>(i, out_size, in_size);
  if (r.end > out_size) r.end = out_size;
  return r;
}

// ---------------------------------------------------------------- max-pool scan rule

// True when value v replaces the running maximum m (torch: v > m or v is NaN).
template <typename T>
CNNOPS_HOST_DEVICE bool max_pool_replaces(T v, T m) {
  return v > m || v != v;
}

// Merges two partial maxima (value, flat index) so that the result is what one scan in
// index order would give: a NaN beats any number and the later NaN wins; among equal
// values the earlier index wins. Associative and commutative, so reductions may merge
// in any tree order (global pooling: per-lane scans, then the lanes merged).
template <typename T>
CNNOPS_HOST_DEVICE void max_pool_merge(T& m, int64_t& mi, T v, int64_t vi) {
  const bool m_nan = m != m, v_nan = v != v;
  if (m_nan || v_nan) {
    if (v_nan && (!m_nan || vi > mi)) {
      m = v;
      mi = vi;
    }
  } else if (v > m || (v == m && vi < mi)) {
    m = v;
    mi = vi;
  }
}

// ---------------------------------------------------------------- geometry

// Everything a pooling kernel needs to know about one call. For adaptive pooling only
// the sizes are used. divisor_override == 0 means none.
struct Pool2dGeometry {
  int64_t batch, channels, in_h, in_w, out_h, out_w;
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  bool ceil_mode, count_include_pad;
  int64_t divisor_override;
};

}  // namespace cnnops
