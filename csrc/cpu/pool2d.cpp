// Pooling on the CPU: max, average, adaptive and global, forward and backward.
//
// Forward, NCHW (any strides that are not channels_last): one work item is one output
// row of one plane. The input rows its windows touch are copied, converted to the
// accumulation type, into a per-thread row buffer padded on both sides (-inf for max,
// 0 for average) and wide enough for whole vectors, so every output of the row is
// computed with at::vec over W, with no border cases: stride 1 loads directly, stride 2
// deinterleaves two loads, other strides gather. Padding never wins a max (-inf is not
// greater than the running -inf, and is not NaN) and adds 0 to a sum, so the results are
// torch's; indices are tracked in integer lanes of the same width.
// Forward, channels_last: one work item is one output pixel; vectors run over C.
// Backward: a scatter in a fixed order with one writer per element (each item owns whole
// planes, or a block of channels of one image), so it is deterministic. With
// CNNOPS_POOL_SCALAR=1 it is the CUDA kernels' gather instead: each input element visits
// the outputs whose window can contain it (pool_output_range / adaptive_output_range in
// common/pool_index.h), so the CPU tests check the inverse window math the CUDA kernels
// use. Both sum each element's contributions in the same order: identical results.
// Global pooling (adaptive to 1 x 1) uses reduction kernels.
// Reduced precision (bfloat16) accumulates in float (at::opmath_type).

#if defined(CPU_CAPABILITY_AVX512) && defined(__GNUC__) && !defined(__clang__)
// GCC 12's AVX-512 intrinsics, inlined through at::vec's bfloat16 conversions (in this file
// and in at::vec::convert, hence before the includes), pass an undefined vector as an
// unused merge source, and -W(maybe-)uninitialized reports every such call.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/pool_checks.h"
#include "common/pool_index.h"


namespace cnnops {
namespace {

using at::vec::Vectorized;

// CNNOPS_POOL_SCALAR=1 forces the plain one-output-at-a-time kernels (the same loops the
// CUDA kernels run), so the tests can check them on the CPU. Read per call.
bool force_scalar() {
  const char* v = std::getenv("CNNOPS_POOL_SCALAR");
  return v != nullptr && v[0] == '1';
}

int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

template <typename T>
constexpr T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

// Reinterpret a comparison mask (all-ones lanes) as integer lanes of the same width.
template <typename I, typename F>
inline Vectorized<I> mask_as_int(const Vectorized<F>& m) {
  static_assert(sizeof(I) == sizeof(F));
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<F, float>) {
    return Vectorized<I>(_mm512_castps_si512(m));
  } else {
    return Vectorized<I>(_mm512_castpd_si512(m));
  }
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<F, float>) {
    return Vectorized<I>(_mm256_castps_si256(m));
  } else {
    return Vectorized<I>(_mm256_castpd_si256(m));
  }
#else
  return at::vec::cast<I>(m);
#endif
}

// Contiguous load of Vectorized<acc_t>::size() elements as acc_t.
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
inline Vectorized<acc_t> load_acc(const scalar_t* p) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return Vectorized<acc_t>::loadu(p);
  } else {
    Vectorized<float> v;
    at::vec::load_to_float(p, v);
    return v;
  }
}

template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
inline void store_acc(scalar_t* p, const Vectorized<acc_t>& v) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    v.store(p);
  } else {
    at::vec::convert_from_float<scalar_t>(v, v).store(p, Vectorized<float>::size());
  }
}

// Vectorized<T>::size() elements p[0], p[s], p[2s], ...; S is the stride when known at
// compile time (1 or 2), 0 for a runtime stride. S == 2 reads p[0 .. 2 * size - 1].
template <int S, typename T>
inline Vectorized<T> load_strided(const T* p, int64_t s) {
  using Vec = Vectorized<T>;
  if constexpr (S == 1) {
    return Vec::loadu(p);
  } else if constexpr (S == 2) {
    return at::vec::deinterleave2(Vec::loadu(p), Vec::loadu(p + Vec::size())).first;
  } else {
    alignas(64) T tmp[Vec::size()];
    for (int64_t j = 0; j < Vec::size(); ++j) tmp[j] = p[j * s];
    return Vec::loadu(tmp);
  }
}

// Copies n elements (source stride s) into dst, converting to acc_t.
template <typename scalar_t, typename acc_t>
inline void copy_row(const scalar_t* src, int64_t s, int64_t n, acc_t* dst) {
  if (s == 1) {
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      std::memcpy(dst, src, n * sizeof(acc_t));
    } else {
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<acc_t>(src[i]);
    }
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<acc_t>(src[i * s]);
  }
}

// The NCHW forward of one call: the row buffer layout and the per-column facts.
template <typename acc_t>
struct RowPlan {
  int64_t lanes;       // Vectorized<acc_t>::size()
  int64_t out_w_pad;   // out_w rounded up to whole vectors
  int64_t buf_w;       // row buffer width: virtual columns [-pad_w, buf_w - pad_w)
  int64_t copy_w;      // input columns copied per row
  std::vector<int64_t> first_col;  // first valid input column of each output column, -1 if none
};

template <typename acc_t>
RowPlan<acc_t> make_row_plan(const Pool2dGeometry& g) {
  RowPlan<acc_t> p;
  p.lanes = Vectorized<acc_t>::size();
  p.out_w_pad = round_up(g.out_w, p.lanes);
  // The last vector's last tap, plus one element for the stride-2 deinterleave.
  p.buf_w = (p.out_w_pad - 1) * g.stride_w + (g.kernel_w - 1) * g.dilation_w + 2;
  p.copy_w = std::max<int64_t>(0, std::min<int64_t>(g.in_w, p.buf_w - g.pad_w));
  p.first_col.assign(p.out_w_pad, 0);
  for (int64_t ow = 0; ow < g.out_w; ++ow) {
    const TapRange t = pool_tap_range(ow, g.in_w, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w);
    p.first_col[ow] = t.begin < t.end ? ow * g.stride_w - g.pad_w + t.begin * g.dilation_w : -1;
  }
  return p;
}

int64_t row_grain(const Pool2dGeometry& g) {
  const int64_t work = std::max<int64_t>(1, g.out_w * g.kernel_h * g.kernel_w);
  return std::max<int64_t>(1, 16384 / work);
}

// ---------------------------------------------------------------- max pool forward

// One output at a time through strides: the fallback (planes whose flat index does not
// fit the vector index lanes) and the CNNOPS_POOL_SCALAR=1 path.
template <typename scalar_t>
void max_pool_forward_scalar(const at::Tensor& input, at::Tensor& output, int64_t* indices,
                             const Pool2dGeometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  scalar_t* out = output.mutable_data_ptr<scalar_t>();
  const Strides4d is = strides4d(input), os = strides4d(output);
  at::parallel_for(0, g.batch * g.channels * g.out_h, row_grain(g), [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t oh = item % g.out_h, c = (item / g.out_h) % g.channels;
      const int64_t n = item / (g.out_h * g.channels);
      const TapRange th = pool_tap_range(oh, g.in_h, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h);
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        const TapRange tw = pool_tap_range(ow, g.in_w, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w);
        acc_t m = neg_inf<acc_t>();
        int64_t mi = -1;
        if (th.begin < th.end && tw.begin < tw.end) {
          const int64_t ih0 = oh * g.stride_h - g.pad_h, iw0 = ow * g.stride_w - g.pad_w;
          mi = (ih0 + th.begin * g.dilation_h) * g.in_w + iw0 + tw.begin * g.dilation_w;
          for (int64_t kh = th.begin; kh < th.end; ++kh) {
            const int64_t ih = ih0 + kh * g.dilation_h;
            for (int64_t kw = tw.begin; kw < tw.end; ++kw) {
              const int64_t iw = iw0 + kw * g.dilation_w;
              const acc_t v = static_cast<acc_t>(in[is.offset(n, c, ih, iw)]);
              if (max_pool_replaces(v, m)) {
                m = v;
                mi = ih * g.in_w + iw;
              }
            }
          }
        }
        out[os.offset(n, c, oh, ow)] = static_cast<scalar_t>(m);
        if (indices) indices[os.offset(n, c, oh, ow)] = mi;
      }
    }
  });
}

// NCHW output (contiguous), vectorised over W through the row buffer.
template <typename scalar_t, int S>
void max_pool_forward_nchw(const at::Tensor& input, at::Tensor& output, int64_t* indices,
                           const Pool2dGeometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  using idx_t = at::vec::int_same_size_t<acc_t>;
  using iVec = Vectorized<idx_t>;
  const RowPlan<acc_t> plan = make_row_plan<acc_t>(g);
  const int64_t L = plan.lanes;
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  scalar_t* out = output.mutable_data_ptr<scalar_t>();
  const Strides4d is = strides4d(input);
  std::vector<idx_t> first_col(plan.out_w_pad);
  bool any_empty_col = false;
  for (int64_t ow = 0; ow < plan.out_w_pad; ++ow) {
    first_col[ow] = static_cast<idx_t>(plan.first_col[ow]);
    any_empty_col |= plan.first_col[ow] < 0;
  }
  const iVec lane_step = iVec::arange(0, static_cast<idx_t>(g.stride_w));

  at::parallel_for(0, g.batch * g.channels * g.out_h, row_grain(g), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(g.kernel_h * plan.buf_w, neg_inf<acc_t>());
    std::vector<acc_t> orow(plan.out_w_pad);
    std::vector<idx_t> irow(plan.out_w_pad);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t oh = item % g.out_h, plane = item / g.out_h;
      const int64_t c = plane % g.channels, n = plane / g.channels;
      scalar_t* orow_out = out + item * g.out_w;
      int64_t* irow_out = indices ? indices + item * g.out_w : nullptr;
      const TapRange th = pool_tap_range(oh, g.in_h, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h);
      if (th.begin >= th.end) {  // the whole row of windows lies in padding
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          orow_out[ow] = static_cast<scalar_t>(neg_inf<acc_t>());
          if (irow_out) irow_out[ow] = -1;
        }
        continue;
      }
      const int64_t ih0 = oh * g.stride_h - g.pad_h;
      const int64_t rows = th.end - th.begin;
      const scalar_t* plane_in = in + n * is.n + c * is.c;
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t ih = ih0 + (th.begin + r) * g.dilation_h;
        copy_row(plane_in + ih * is.h, is.w, plan.copy_w, buf.data() + r * plan.buf_w + g.pad_w);
      }
      const idx_t first_row = static_cast<idx_t>((ih0 + th.begin * g.dilation_h) * g.in_w);
      for (int64_t ow0 = 0; ow0 < plan.out_w_pad; ow0 += L) {
        Vec m(neg_inf<acc_t>());
        iVec mi = iVec::loadu(first_col.data() + ow0) + iVec(first_row);
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t ih = ih0 + (th.begin + r) * g.dilation_h;
          const acc_t* row = buf.data() + r * plan.buf_w + ow0 * g.stride_w;
          // flat index of virtual column v of this row: ih * W + v - pad_w
          const idx_t row_base = static_cast<idx_t>(ih * g.in_w + ow0 * g.stride_w - g.pad_w);
          for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
            const Vec v = load_strided<S>(row + kw * g.dilation_w, g.stride_w);
            const Vec mask = (v > m) | v.isnan();
            m = Vec::blendv(m, v, mask);
            if (irow_out) {
              const iVec cand = iVec(row_base + static_cast<idx_t>(kw * g.dilation_w)) + lane_step;
              mi = iVec::blendv(mi, cand, mask_as_int<idx_t>(mask));
            }
          }
        }
        m.store(orow.data() + ow0);
        if (irow_out) mi.store(irow.data() + ow0);
      }
      at::vec::convert(orow.data(), orow_out, g.out_w);
      if (irow_out) {
        for (int64_t ow = 0; ow < g.out_w; ++ow) irow_out[ow] = static_cast<int64_t>(irow[ow]);
        if (any_empty_col) {
          for (int64_t ow = 0; ow < g.out_w; ++ow)
            if (first_col[ow] < 0) irow_out[ow] = -1;
        }
      }
    }
  });
}

// channels_last output (contiguous), input with unit channel stride; vectors over C.
template <typename scalar_t>
void max_pool_forward_cl(const at::Tensor& input, at::Tensor& output, int64_t* indices,
                         const Pool2dGeometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  using idx_t = at::vec::int_same_size_t<acc_t>;
  using iVec = Vectorized<idx_t>;
  constexpr int64_t L = Vec::size();
  constexpr int U = 4;  // vectors of channels held in registers across the window
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  scalar_t* out = output.mutable_data_ptr<scalar_t>();
  const Strides4d is = strides4d(input);
  const int64_t C = g.channels;
  const int64_t grain = std::max<int64_t>(1, 8192 / std::max<int64_t>(1, C * g.kernel_h * g.kernel_w));

  at::parallel_for(0, g.batch * g.out_h * g.out_w, grain, [&](int64_t begin, int64_t end) {
    alignas(64) idx_t itmp[L];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t ow = item % g.out_w, oh = (item / g.out_w) % g.out_h;
      const int64_t n = item / (g.out_w * g.out_h);
      scalar_t* o = out + item * C;
      int64_t* oi = indices ? indices + item * C : nullptr;
      const TapRange th = pool_tap_range(oh, g.in_h, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h);
      const TapRange tw = pool_tap_range(ow, g.in_w, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w);
      if (th.begin >= th.end || tw.begin >= tw.end) {
        for (int64_t c = 0; c < C; ++c) {
          o[c] = static_cast<scalar_t>(neg_inf<acc_t>());
          if (oi) oi[c] = -1;
        }
        continue;
      }
      const int64_t ih0 = oh * g.stride_h - g.pad_h, iw0 = ow * g.stride_w - g.pad_w;
      const int64_t first = (ih0 + th.begin * g.dilation_h) * g.in_w + iw0 + tw.begin * g.dilation_w;
      const scalar_t* img = in + n * is.n;
      int64_t c0 = 0;
      for (; c0 + U * L <= C; c0 += U * L) {
        Vec m[U];
        iVec mi[U];
        for (int u = 0; u < U; ++u) {
          m[u] = Vec(neg_inf<acc_t>());
          mi[u] = iVec(static_cast<idx_t>(first));
        }
        for (int64_t kh = th.begin; kh < th.end; ++kh) {
          const int64_t ih = ih0 + kh * g.dilation_h;
          for (int64_t kw = tw.begin; kw < tw.end; ++kw) {
            const int64_t iw = iw0 + kw * g.dilation_w;
            const scalar_t* p = img + ih * is.h + iw * is.w + c0;
            const iVec cand(static_cast<idx_t>(ih * g.in_w + iw));
            for (int u = 0; u < U; ++u) {
              const Vec v = load_acc(p + u * L);
              const Vec mask = (v > m[u]) | v.isnan();
              m[u] = Vec::blendv(m[u], v, mask);
              mi[u] = iVec::blendv(mi[u], cand, mask_as_int<idx_t>(mask));
            }
          }
        }
        for (int u = 0; u < U; ++u) {
          store_acc(o + c0 + u * L, m[u]);
          if (oi) {
            mi[u].store(itmp);
            for (int64_t j = 0; j < L; ++j) oi[c0 + u * L + j] = itmp[j];
          }
        }
      }
      for (int64_t c = c0; c < C; ++c) {  // channel tail
        acc_t m = neg_inf<acc_t>();
        int64_t mi = first;
        for (int64_t kh = th.begin; kh < th.end; ++kh) {
          const int64_t ih = ih0 + kh * g.dilation_h;
          for (int64_t kw = tw.begin; kw < tw.end; ++kw) {
            const int64_t iw = iw0 + kw * g.dilation_w;
            const acc_t v = static_cast<acc_t>(img[ih * is.h + iw * is.w + c]);
            if (max_pool_replaces(v, m)) {
              m = v;
              mi = ih * g.in_w + iw;
            }
          }
        }
        o[c] = static_cast<scalar_t>(m);
        if (oi) oi[c] = mi;
      }
    }
  });
}

// Whether the flat plane index (and the negative virtual columns) fit the vector index
// lanes of acc_t.
template <typename acc_t>
bool plane_index_fits(const Pool2dGeometry& g) {
  using idx_t = at::vec::int_same_size_t<acc_t>;
  const int64_t span_w = g.out_w * g.stride_w + g.kernel_w * g.dilation_w + 64;
  return (g.in_h + 1) * g.in_w + span_w < static_cast<int64_t>(std::numeric_limits<idx_t>::max());
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_cpu(const at::Tensor& input,
                                                  at::IntArrayRef kernel_size,
                                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                                  at::IntArrayRef dilation, bool ceil_mode,
                                                  bool return_indices) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const char* op = "cnnops.max_pool2d";
  const Pool2dGeometry g =
      pool2d_geometry(op, input.sizes(), kernel_size, stride, padding, dilation, ceil_mode);
  check_dtype_supported(op, input, /*half_ok=*/false);
  const auto fmt = pool_memory_format(input);
  const auto opts = input.options().memory_format(fmt);
  at::Tensor output = at::empty({g.batch, g.channels, g.out_h, g.out_w}, opts);
  at::Tensor indices = return_indices
                           ? at::empty({g.batch, g.channels, g.out_h, g.out_w}, opts.dtype(at::kLong))
                           : at::empty({0}, input.options().dtype(at::kLong));
  if (output.numel() == 0) return {output, indices};
  int64_t* idx = return_indices ? indices.mutable_data_ptr<int64_t>() : nullptr;

  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, input.scalar_type(), "cnnops_max_pool2d_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (force_scalar() || !plane_index_fits<acc_t>(g)) {
      max_pool_forward_scalar<scalar_t>(input, output, idx, g);
    } else if (fmt == at::MemoryFormat::ChannelsLast) {
      const at::Tensor in = input.stride(1) == 1 ? input : input.contiguous(fmt);
      max_pool_forward_cl<scalar_t>(in, output, idx, g);
    } else if (g.stride_w == 1) {
      max_pool_forward_nchw<scalar_t, 1>(input, output, idx, g);
    } else if (g.stride_w == 2) {
      max_pool_forward_nchw<scalar_t, 2>(input, output, idx, g);
    } else {
      max_pool_forward_nchw<scalar_t, 0>(input, output, idx, g);
    }
  });
  return {output, indices};
}

// ---------------------------------------------------------------- avg pool forward

// Divisors of one call, separable into per-row and per-column factors.
struct AvgDivisors {
  std::vector<AvgWindow> rows, cols;
  bool count_include_pad;
  int64_t divisor_override;
  int64_t at(int64_t oh, int64_t ow) const {
    return avg_pool_divisor(rows[oh], cols[ow], count_include_pad, divisor_override);
  }
};

AvgDivisors make_avg_divisors(const Pool2dGeometry& g) {
  AvgDivisors d;
  d.count_include_pad = g.count_include_pad;
  d.divisor_override = g.divisor_override;
  for (int64_t oh = 0; oh < g.out_h; ++oh)
    d.rows.push_back(avg_pool_window(oh, g.in_h, g.kernel_h, g.stride_h, g.pad_h));
  for (int64_t ow = 0; ow < g.out_w; ++ow)
    d.cols.push_back(avg_pool_window(ow, g.in_w, g.kernel_w, g.stride_w, g.pad_w));
  return d;
}

template <typename scalar_t>
void avg_pool_forward_scalar(const at::Tensor& input, at::Tensor& output, const Pool2dGeometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  scalar_t* out = output.mutable_data_ptr<scalar_t>();
  const Strides4d is = strides4d(input), os = strides4d(output);
  at::parallel_for(0, g.batch * g.channels * g.out_h, row_grain(g), [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t oh = item % g.out_h, c = (item / g.out_h) % g.channels;
      const int64_t n = item / (g.out_h * g.channels);
      const AvgWindow wh = avg_pool_window(oh, g.in_h, g.kernel_h, g.stride_h, g.pad_h);
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        const AvgWindow ww = avg_pool_window(ow, g.in_w, g.kernel_w, g.stride_w, g.pad_w);
        acc_t sum = 0;
        for (int64_t ih = wh.begin; ih < wh.end; ++ih)
          for (int64_t iw = ww.begin; iw < ww.end; ++iw)
            sum += static_cast<acc_t>(in[is.offset(n, c, ih, iw)]);
        const int64_t div = avg_pool_divisor(wh, ww, g.count_include_pad, g.divisor_override);
        out[os.offset(n, c, oh, ow)] = static_cast<scalar_t>(sum / static_cast<acc_t>(div));
      }
    }
  });
}

template <typename scalar_t, int S>
void avg_pool_forward_nchw(const at::Tensor& input, at::Tensor& output, const Pool2dGeometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  const RowPlan<acc_t> plan = make_row_plan<acc_t>(g);
  const int64_t L = plan.lanes;
  const AvgDivisors div = make_avg_divisors(g);
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  scalar_t* out = output.mutable_data_ptr<scalar_t>();
  const Strides4d is = strides4d(input);

  at::parallel_for(0, g.batch * g.channels * g.out_h, row_grain(g), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(g.kernel_h * plan.buf_w, acc_t(0));
    std::vector<acc_t> orow(plan.out_w_pad), drow(plan.out_w_pad, acc_t(1));
    int64_t drow_oh = -1;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t oh = item % g.out_h, plane = item / g.out_h;
      const int64_t c = plane % g.channels, n = plane / g.channels;
      const TapRange th = pool_tap_range(oh, g.in_h, g.kernel_h, g.stride_h, g.pad_h, 1);
      const int64_t ih0 = oh * g.stride_h - g.pad_h;
      const int64_t rows = th.end - th.begin;  // >= 1: average windows are never empty
      const scalar_t* plane_in = in + n * is.n + c * is.c;
      for (int64_t r = 0; r < rows; ++r) {
        copy_row(plane_in + (ih0 + th.begin + r) * is.h, is.w, plan.copy_w,
                 buf.data() + r * plan.buf_w + g.pad_w);
      }
      if (drow_oh != oh) {
        for (int64_t ow = 0; ow < g.out_w; ++ow) drow[ow] = static_cast<acc_t>(div.at(oh, ow));
        drow_oh = oh;
      }
      for (int64_t ow0 = 0; ow0 < plan.out_w_pad; ow0 += L) {
        Vec sum(acc_t(0));
        for (int64_t r = 0; r < rows; ++r) {
          const acc_t* row = buf.data() + r * plan.buf_w + ow0 * g.stride_w;
          for (int64_t kw = 0; kw < g.kernel_w; ++kw) sum = sum + load_strided<S>(row + kw, g.stride_w);
        }
        (sum / Vec::loadu(drow.data() + ow0)).store(orow.data() + ow0);
      }
      at::vec::convert(orow.data(), out + item * g.out_w, g.out_w);
    }
  });
}

template <typename scalar_t>
void avg_pool_forward_cl(const at::Tensor& input, at::Tensor& output, const Pool2dGeometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t L = Vec::size();
  constexpr int U = 4;
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  scalar_t* out = output.mutable_data_ptr<scalar_t>();
  const Strides4d is = strides4d(input);
  const int64_t C = g.channels;
  const AvgDivisors div = make_avg_divisors(g);
  const int64_t grain = std::max<int64_t>(1, 8192 / std::max<int64_t>(1, C * g.kernel_h * g.kernel_w));

  at::parallel_for(0, g.batch * g.out_h * g.out_w, grain, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t ow = item % g.out_w, oh = (item / g.out_w) % g.out_h;
      const int64_t n = item / (g.out_w * g.out_h);
      scalar_t* o = out + item * C;
      const AvgWindow wh = div.rows[oh], ww = div.cols[ow];
      const acc_t d = static_cast<acc_t>(div.at(oh, ow));
      const scalar_t* img = in + n * is.n;
      int64_t c0 = 0;
      for (; c0 + U * L <= C; c0 += U * L) {
        Vec s[U];
        for (int u = 0; u < U; ++u) s[u] = Vec(acc_t(0));
        for (int64_t ih = wh.begin; ih < wh.end; ++ih)
          for (int64_t iw = ww.begin; iw < ww.end; ++iw) {
            const scalar_t* p = img + ih * is.h + iw * is.w + c0;
            for (int u = 0; u < U; ++u) s[u] = s[u] + load_acc(p + u * L);
          }
        for (int u = 0; u < U; ++u) store_acc(o + c0 + u * L, s[u] / Vec(d));
      }
      for (int64_t c = c0; c < C; ++c) {
        acc_t s = 0;
        for (int64_t ih = wh.begin; ih < wh.end; ++ih)
          for (int64_t iw = ww.begin; iw < ww.end; ++iw)
            s += static_cast<acc_t>(img[ih * is.h + iw * is.w + c]);
        o[c] = static_cast<scalar_t>(s / d);
      }
    }
  });
}

at::Tensor avg_pool2d_cpu(const at::Tensor& input, at::IntArrayRef kernel_size,
                          at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode,
                          bool count_include_pad, c10::optional<int64_t> divisor_override) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const char* op = "cnnops.avg_pool2d";
  const int64_t ones[2] = {1, 1};
  Pool2dGeometry g = pool2d_geometry(op, input.sizes(), kernel_size, stride, padding,
                                     at::IntArrayRef(ones, 2), ceil_mode);
  g.count_include_pad = count_include_pad;
  g.divisor_override = check_divisor_override(op, divisor_override);
  check_dtype_supported(op, input, /*half_ok=*/false);
  const auto fmt = pool_memory_format(input);
  at::Tensor output = at::empty({g.batch, g.channels, g.out_h, g.out_w}, input.options().memory_format(fmt));
  if (output.numel() == 0) return output;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, input.scalar_type(), "cnnops_avg_pool2d_cpu", [&] {
    if (force_scalar()) {
      avg_pool_forward_scalar<scalar_t>(input, output, g);
    } else if (fmt == at::MemoryFormat::ChannelsLast) {
      const at::Tensor in = input.stride(1) == 1 ? input : input.contiguous(fmt);
      avg_pool_forward_cl<scalar_t>(in, output, g);
    } else if (g.stride_w == 1) {
      avg_pool_forward_nchw<scalar_t, 1>(input, output, g);
    } else if (g.stride_w == 2) {
      avg_pool_forward_nchw<scalar_t, 2>(input, output, g);
    } else {
      avg_pool_forward_nchw<scalar_t, 0>(input, output, g);
    }
  });
  return output;
}

// ---------------------------------------------------------------- adaptive forward

// Adaptive windows of every output row and column, computed once per call (integer
// divisions are too slow to repeat per output).
struct AdaptiveWindows {
  std::vector<int64_t> h0, h1, w0, w1;
};

AdaptiveWindows make_adaptive_windows(const Pool2dGeometry& g) {
  AdaptiveWindows a;
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    a.h0.push_back(adaptive_start(oh, g.in_h, g.out_h));
    a.h1.push_back(adaptive_end(oh, g.in_h, g.out_h));
  }
  for (int64_t ow = 0; ow < g.out_w; ++ow) {
    a.w0.push_back(adaptive_start(ow, g.in_w, g.out_w));
    a.w1.push_back(adaptive_end(ow, g.in_w, g.out_w));
  }
  return a;
}

// NCHW: one plane per item, one output at a time, the window walked row by row.
template <typename scalar_t, bool IsMax>
void adaptive_forward_nchw(const at::Tensor& input, at::Tensor& output, int64_t* indices,
                           const Pool2dGeometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  scalar_t* out = output.mutable_data_ptr<scalar_t>();
  const Strides4d is = strides4d(input), os = strides4d(output);
  const AdaptiveWindows a = make_adaptive_windows(g);
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, g.in_h * g.in_w));
  at::parallel_for(0, g.batch * g.channels, grain, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / g.channels, c = plane % g.channels;
      const scalar_t* p = in + n * is.n + c * is.c;
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        const int64_t h0 = a.h0[oh], h1 = a.h1[oh];
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          const int64_t w0 = a.w0[ow], w1 = a.w1[ow];
          const int64_t o = os.offset(n, c, oh, ow);
          if constexpr (IsMax) {
            acc_t m = neg_inf<acc_t>();
            int64_t mi = h0 * g.in_w + w0;
            for (int64_t ih = h0; ih < h1; ++ih)
              for (int64_t iw = w0; iw < w1; ++iw) {
                // branch-free (cmov): random data makes this branch unpredictable
                const acc_t v = static_cast<acc_t>(p[ih * is.h + iw * is.w]);
                const bool r = max_pool_replaces(v, m);
                m = r ? v : m;
                mi = r ? ih * g.in_w + iw : mi;
              }
            out[o] = static_cast<scalar_t>(m);
            indices[o] = mi;
          } else {
            acc_t s = 0;
            for (int64_t ih = h0; ih < h1; ++ih)
              for (int64_t iw = w0; iw < w1; ++iw) s += static_cast<acc_t>(p[ih * is.h + iw * is.w]);
            out[o] = static_cast<scalar_t>(s / static_cast<acc_t>((h1 - h0) * (w1 - w0)));
          }
        }
      }
    }
  });
}

// NCHW, vectorised over output columns: one item per (plane, output row). The window
// rows are copied (as acc_t) into a row buffer; each vector of outputs gathers tap kw of
// its own window (start w0[ow] + kw), lanes whose window is narrower than kw masked off
// (-inf for max, 0 for average).
template <typename scalar_t, bool IsMax>
void adaptive_forward_nchw_vec(const at::Tensor& input, at::Tensor& output, int64_t* indices,
                               const Pool2dGeometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  using idx_t = at::vec::int_same_size_t<acc_t>;
  using iVec = Vectorized<idx_t>;
  constexpr int64_t L = Vec::size();
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  scalar_t* out = output.mutable_data_ptr<scalar_t>();
  const Strides4d is = strides4d(input);
  const AdaptiveWindows a = make_adaptive_windows(g);
  const int64_t out_w_pad = round_up(g.out_w, L);
  std::vector<idx_t> w0(out_w_pad, 0);
  std::vector<acc_t> width(out_w_pad, acc_t(0)), wsize(out_w_pad, acc_t(1));
  int64_t kw_max = 0, kh_max = 0;
  for (int64_t ow = 0; ow < g.out_w; ++ow) {
    w0[ow] = static_cast<idx_t>(a.w0[ow]);
    width[ow] = static_cast<acc_t>(a.w1[ow] - a.w0[ow]);
    wsize[ow] = width[ow];
    kw_max = std::max(kw_max, a.w1[ow] - a.w0[ow]);
  }
  for (int64_t oh = 0; oh < g.out_h; ++oh) kh_max = std::max(kh_max, a.h1[oh] - a.h0[oh]);
  const int64_t buf_w = g.in_w + kw_max + 1;  // gathers of masked lanes may reach past W
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, g.out_w * kh_max * kw_max));
  at::parallel_for(0, g.batch * g.channels * g.out_h, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(kh_max * buf_w, acc_t(0)), orow(out_w_pad);
    std::vector<idx_t> irow(out_w_pad);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t oh = item % g.out_h, plane = item / g.out_h;
      const int64_t c = plane % g.channels, n = plane / g.channels;
      const int64_t h0 = a.h0[oh], rows = a.h1[oh] - h0;
      const scalar_t* plane_in = in + n * is.n + c * is.c;
      for (int64_t r = 0; r < rows; ++r)
        copy_row(plane_in + (h0 + r) * is.h, is.w, g.in_w, buf.data() + r * buf_w);
      for (int64_t ow0 = 0; ow0 < out_w_pad; ow0 += L) {
        const iVec start = iVec::loadu(w0.data() + ow0);
        const Vec wid = Vec::loadu(width.data() + ow0);
        Vec m(IsMax ? neg_inf<acc_t>() : acc_t(0));
        iVec mi = start + iVec(static_cast<idx_t>(h0 * g.in_w));
        for (int64_t r = 0; r < rows; ++r) {
          const acc_t* row = buf.data() + r * buf_w;
          const idx_t row_base = static_cast<idx_t>((h0 + r) * g.in_w);
          for (int64_t kw = 0; kw < kw_max; ++kw) {
            const iVec col = start + iVec(static_cast<idx_t>(kw));
            const Vec valid = Vec(static_cast<acc_t>(kw)) < wid;
            const Vec v = Vec::blendv(Vec(IsMax ? neg_inf<acc_t>() : acc_t(0)),
                                      at::vec::gather<sizeof(acc_t)>(row, col), valid);
            if constexpr (IsMax) {
              const Vec mask = (v > m) | v.isnan();
              m = Vec::blendv(m, v, mask);
              mi = iVec::blendv(mi, col + iVec(row_base), mask_as_int<idx_t>(mask));
            } else {
              m = m + v;
            }
          }
        }
        if constexpr (IsMax) {
          m.store(orow.data() + ow0);
          mi.store(irow.data() + ow0);
        } else {
          (m / (Vec::loadu(wsize.data() + ow0) * Vec(static_cast<acc_t>(rows)))).store(orow.data() + ow0);
        }
      }
      at::vec::convert(orow.data(), out + item * g.out_w, g.out_w);
      if constexpr (IsMax) {
        int64_t* oi = indices + item * g.out_w;
        for (int64_t ow = 0; ow < g.out_w; ++ow) oi[ow] = irow[ow];
      }
    }
  });
}

// channels_last (input with unit channel stride): one item per (output pixel, block of
// channels); each input pixel of the window updates a per-thread accumulator row over
// the block, so the input is read in contiguous runs. Global channels_last pooling runs
// here too: it is already a reduction over HW with vectors over C.
template <typename scalar_t, bool IsMax>
void adaptive_forward_cl(const at::Tensor& input, at::Tensor& output, int64_t* indices,
                         const Pool2dGeometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  using idx_t = at::vec::int_same_size_t<acc_t>;
  using iVec = Vectorized<idx_t>;
  constexpr int64_t L = Vec::size();
  constexpr int64_t kBlock = 256;  // channels per item: whole vectors
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  scalar_t* out = output.mutable_data_ptr<scalar_t>();
  const Strides4d is = strides4d(input);
  const int64_t C = g.channels;
  const int64_t blocks = (C + kBlock - 1) / kBlock;
  const AdaptiveWindows a = make_adaptive_windows(g);
  const bool vec_idx = g.in_h * g.in_w < static_cast<int64_t>(std::numeric_limits<idx_t>::max());
  const int64_t window = std::max<int64_t>(1, (g.in_h / std::max<int64_t>(g.out_h, 1) + 1) *
                                                  (g.in_w / std::max<int64_t>(g.out_w, 1) + 1));
  const int64_t grain = std::max<int64_t>(1, 16384 / (std::min(C, kBlock) * window));
  at::parallel_for(0, g.batch * g.out_h * g.out_w * blocks, grain, [&](int64_t begin, int64_t end) {
    alignas(64) acc_t acc[kBlock];
    alignas(64) idx_t acci[kBlock];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t blk = item % blocks, pix = item / blocks;
      const int64_t ow = pix % g.out_w, oh = (pix / g.out_w) % g.out_h;
      const int64_t n = pix / (g.out_w * g.out_h);
      const int64_t h0 = a.h0[oh], h1 = a.h1[oh], w0 = a.w0[ow], w1 = a.w1[ow];
      const int64_t c_begin = blk * kBlock, cb = std::min(kBlock, C - c_begin);
      const int64_t cv = (!IsMax || vec_idx) ? cb / L * L : 0;  // vectorised channels
      const scalar_t* img = in + n * is.n + c_begin;
      scalar_t* o = out + pix * C + c_begin;
      for (int64_t j = 0; j < cb; ++j) {
        acc[j] = IsMax ? neg_inf<acc_t>() : acc_t(0);
        if (IsMax) acci[j] = static_cast<idx_t>(h0 * g.in_w + w0);
      }
      for (int64_t ih = h0; ih < h1; ++ih) {
        for (int64_t iw = w0; iw < w1; ++iw) {
          const scalar_t* p = img + ih * is.h + iw * is.w;
          const idx_t flat = static_cast<idx_t>(ih * g.in_w + iw);
          if constexpr (IsMax) {
            const iVec cand(flat);
            for (int64_t j = 0; j < cv; j += L) {
              const Vec v = load_acc(p + j);
              const Vec m = Vec::loadu(acc + j);
              const Vec mask = (v > m) | v.isnan();
              Vec::blendv(m, v, mask).store(acc + j);
              iVec::blendv(iVec::loadu(acci + j), cand, mask_as_int<idx_t>(mask)).store(acci + j);
            }
            for (int64_t j = cv; j < cb; ++j) {
              const acc_t v = static_cast<acc_t>(p[j]);
              if (max_pool_replaces(v, acc[j])) {
                acc[j] = v;
                acci[j] = flat;
              }
            }
          } else {
            for (int64_t j = 0; j < cv; j += L) (Vec::loadu(acc + j) + load_acc(p + j)).store(acc + j);
            for (int64_t j = cv; j < cb; ++j) acc[j] += static_cast<acc_t>(p[j]);
          }
        }
      }
      if constexpr (IsMax) {
        at::vec::convert(acc, o, cb);
        int64_t* oi = indices + pix * C + c_begin;
        for (int64_t j = 0; j < cb; ++j) oi[j] = acci[j];
      } else {
        const acc_t d = static_cast<acc_t>((h1 - h0) * (w1 - w0));
        for (int64_t j = 0; j < cv; j += L) (Vec::loadu(acc + j) / Vec(d)).store(acc + j);
        for (int64_t j = cv; j < cb; ++j) acc[j] = acc[j] / d;
        at::vec::convert(acc, o, cb);
      }
    }
  });
}

// Loads count < size elements as acc_t, the other lanes 0.
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
inline Vectorized<acc_t> load_acc_partial(const scalar_t* p, int64_t count) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return Vectorized<acc_t>::loadu(p, count);
  } else {
    alignas(64) acc_t tmp[Vectorized<acc_t>::size()] = {};
    for (int64_t j = 0; j < count; ++j) tmp[j] = static_cast<acc_t>(p[j]);
    return Vectorized<acc_t>::loadu(tmp);
  }
}

// Global pooling (output 1 x 1), NCHW: one plane per item, a vector reduction over it.
// Max keeps one running (max, index) per lane, each scanning its lane's elements in
// order, then merges the lanes with max_pool_merge (common/pool_index.h).
template <typename scalar_t, bool IsMax>
void global_forward_nchw(const at::Tensor& input, at::Tensor& output, int64_t* indices,
                         const Pool2dGeometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  using idx_t = at::vec::int_same_size_t<acc_t>;
  using iVec = Vectorized<idx_t>;
  constexpr int64_t L = Vec::size();
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  scalar_t* out = output.mutable_data_ptr<scalar_t>();
  const int64_t HW = g.in_h * g.in_w;
  const Strides4d os = strides4d(output);
  const bool vec_ok = HW < static_cast<int64_t>(std::numeric_limits<idx_t>::max()) - L;
  const int64_t grain = std::max<int64_t>(1, 32768 / HW);
  at::parallel_for(0, g.batch * g.channels, grain, [&](int64_t begin, int64_t end) {
    alignas(64) acc_t vtmp[L];
    alignas(64) idx_t itmp[L];
    for (int64_t plane = begin; plane < end; ++plane) {
      const scalar_t* p = in + plane * HW;  // the caller made the input contiguous
      const int64_t n = plane / g.channels, c = plane % g.channels;
      int64_t i = 0;
      if constexpr (IsMax) {
        acc_t m = neg_inf<acc_t>();
        int64_t mi = 0;
        if (vec_ok && HW >= L) {
          Vec vm(neg_inf<acc_t>());
          const iVec lane = iVec::arange(0, 1);
          iVec vmi = lane;
          for (; i + L <= HW; i += L) {
            const Vec v = load_acc(p + i);
            const Vec mask = (v > vm) | v.isnan();
            vm = Vec::blendv(vm, v, mask);
            vmi = iVec::blendv(vmi, lane + iVec(static_cast<idx_t>(i)), mask_as_int<idx_t>(mask));
          }
          vm.store(vtmp);
          vmi.store(itmp);
          m = vtmp[0];
          mi = itmp[0];
          for (int64_t j = 1; j < L; ++j) max_pool_merge<acc_t>(m, mi, vtmp[j], itmp[j]);
        }
        for (; i < HW; ++i) max_pool_merge<acc_t>(m, mi, static_cast<acc_t>(p[i]), i);
        out[os.offset(n, c, 0, 0)] = static_cast<scalar_t>(m);
        indices[os.offset(n, c, 0, 0)] = mi;
      } else {
        Vec s0(acc_t(0)), s1(acc_t(0));
        for (; i + 2 * L <= HW; i += 2 * L) {
          s0 = s0 + load_acc(p + i);
          s1 = s1 + load_acc(p + i + L);
        }
        if (i + L <= HW) {
          s0 = s0 + load_acc(p + i);
          i += L;
        }
        if (i < HW) s1 = s1 + load_acc_partial(p + i, HW - i);
        const acc_t s = at::vec::vec_reduce_all<acc_t>([](const Vec& x, const Vec& y) { return x + y; }, s0 + s1);
        out[os.offset(n, c, 0, 0)] = static_cast<scalar_t>(s / static_cast<acc_t>(HW));
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> adaptive_pool2d_cpu(const char* op, bool is_max,
                                                       const at::Tensor& input,
                                                       at::IntArrayRef output_size) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Pool2dGeometry g = adaptive_pool2d_geometry(op, input.sizes(), output_size);
  check_dtype_supported(op, input, /*half_ok=*/false);
  const auto fmt = pool_memory_format(input);
  const auto opts = input.options().memory_format(fmt);
  at::Tensor output = at::empty({g.batch, g.channels, g.out_h, g.out_w}, opts);
  at::Tensor indices = is_max ? at::empty({g.batch, g.channels, g.out_h, g.out_w}, opts.dtype(at::kLong))
                              : at::Tensor();
  if (output.numel() == 0) return {output, indices};
  int64_t* idx = is_max ? indices.mutable_data_ptr<int64_t>() : nullptr;
  const bool global = g.out_h == 1 && g.out_w == 1 && !force_scalar();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, input.scalar_type(), "cnnops_adaptive_pool2d_cpu", [&] {
    if (global && fmt != at::MemoryFormat::ChannelsLast) {
      const at::Tensor in = input.contiguous();
      if (is_max) global_forward_nchw<scalar_t, true>(in, output, idx, g);
      else global_forward_nchw<scalar_t, false>(in, output, idx, g);
    } else if (fmt == at::MemoryFormat::ChannelsLast && !force_scalar()) {
      // (global channels_last: the adaptive kernel is already a reduction over HW per C vector)
      const at::Tensor in = input.stride(1) == 1 ? input : input.contiguous(fmt);
      if (is_max) adaptive_forward_cl<scalar_t, true>(in, output, idx, g);
      else adaptive_forward_cl<scalar_t, false>(in, output, idx, g);
    } else if (!force_scalar() && plane_index_fits<at::opmath_type<scalar_t>>(g)) {
      if (is_max) adaptive_forward_nchw_vec<scalar_t, true>(input, output, idx, g);
      else adaptive_forward_nchw_vec<scalar_t, false>(input, output, idx, g);
    } else {
      if (is_max) adaptive_forward_nchw<scalar_t, true>(input, output, idx, g);
      else adaptive_forward_nchw<scalar_t, false>(input, output, idx, g);
    }
  });
  return {output, indices};
}

at::Tensor adaptive_avg_pool2d_cpu(const at::Tensor& input, at::IntArrayRef output_size) {
  return std::get<0>(adaptive_pool2d_cpu("cnnops.adaptive_avg_pool2d", false, input, output_size));
}

std::tuple<at::Tensor, at::Tensor> adaptive_max_pool2d_cpu(const at::Tensor& input,
                                                           at::IntArrayRef output_size) {
  return adaptive_pool2d_cpu("cnnops.adaptive_max_pool2d", true, input, output_size);
}

// ---------------------------------------------------------------- backward (gathers)

// What a backward gather needs per output: the grad_output value it contributes to an
// input element of its window. Kind selects the rule.
enum class Kind { Max, Avg, AdaptiveMax, AdaptiveAvg };

// The gather backward (CNNOPS_POOL_SCALAR=1; the CUDA kernels' algorithm):
// grad_input = sum over the outputs o whose window contains the element of
// contribution(o), where max contributes grad_output only where indices[o] is the
// element's flat index and average contributes grad_output / divisor.
// grad_output and indices are contiguous in the grad_input's memory format.
template <typename scalar_t, Kind K>
void pool_backward_cpu_impl(const at::Tensor& grad_output, const at::Tensor& indices,
                            at::Tensor& grad_input, const Pool2dGeometry& g, bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kMax = K == Kind::Max || K == Kind::AdaptiveMax;
  constexpr bool kAdaptive = K == Kind::AdaptiveMax || K == Kind::AdaptiveAvg;
  const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
  const int64_t* idx = kMax ? indices.const_data_ptr<int64_t>() : nullptr;
  scalar_t* gi = grad_input.mutable_data_ptr<scalar_t>();
  const Strides4d os = strides4d(grad_output), is = strides4d(grad_input);

  // Output ranges of every input row and column, and the average divisors, once per call.
  std::vector<OutputRange> rrows(g.in_h), rcols(g.in_w);
  for (int64_t ih = 0; ih < g.in_h; ++ih)
    rrows[ih] = kAdaptive ? adaptive_output_range(ih, g.in_h, g.out_h)
                          : pool_output_range(ih, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h, g.out_h);
  for (int64_t iw = 0; iw < g.in_w; ++iw)
    rcols[iw] = kAdaptive ? adaptive_output_range(iw, g.in_w, g.out_w)
                          : pool_output_range(iw, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w, g.out_w);
  std::vector<acc_t> inv_h, inv_w;  // adaptive: window sizes per output row / column
  AvgDivisors div;
  if constexpr (K == Kind::Avg) div = make_avg_divisors(g);
  if constexpr (K == Kind::AdaptiveAvg) {
    for (int64_t oh = 0; oh < g.out_h; ++oh)
      inv_h.push_back(static_cast<acc_t>(adaptive_end(oh, g.in_h, g.out_h) - adaptive_start(oh, g.in_h, g.out_h)));
    for (int64_t ow = 0; ow < g.out_w; ++ow)
      inv_w.push_back(static_cast<acc_t>(adaptive_end(ow, g.in_w, g.out_w) - adaptive_start(ow, g.in_w, g.out_w)));
  }
  auto divisor = [&](int64_t oh, int64_t ow) -> acc_t {
    if constexpr (K == Kind::Avg) return static_cast<acc_t>(div.at(oh, ow));
    else return inv_h[oh] * inv_w[ow];
  };

  if (!channels_last) {
    // One item per (plane, input row).
    const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, g.in_w));
    at::parallel_for(0, g.batch * g.channels * g.in_h, grain, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t ih = item % g.in_h, plane = item / g.in_h;
        const int64_t n = plane / g.channels, c = plane % g.channels;
        const OutputRange rh = rrows[ih];
        const scalar_t* gop = go + n * os.n + c * os.c;
        const int64_t* ip = kMax ? idx + n * os.n + c * os.c : nullptr;
        for (int64_t iw = 0; iw < g.in_w; ++iw) {
          const OutputRange rw = rcols[iw];
          const int64_t target = ih * g.in_w + iw;
          acc_t acc = 0;
          for (int64_t oh = rh.begin; oh < rh.end; ++oh)
            for (int64_t ow = rw.begin; ow < rw.end; ++ow) {
              const int64_t o = oh * os.h + ow * os.w;
              if constexpr (kMax) {
                if (ip[o] == target) acc += static_cast<acc_t>(gop[o]);
              } else {
                acc += static_cast<acc_t>(gop[o]) / divisor(oh, ow);
              }
            }
          gi[is.offset(n, c, ih, iw)] = static_cast<scalar_t>(acc);
        }
      }
    });
  } else {
    // One item per input pixel; the channel loop is innermost and contiguous.
    const int64_t C = g.channels;
    const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, C));
    at::parallel_for(0, g.batch * g.in_h * g.in_w, grain, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(C);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t iw = item % g.in_w, ih = (item / g.in_w) % g.in_h;
        const int64_t n = item / (g.in_w * g.in_h);
        const OutputRange rh = rrows[ih], rw = rcols[iw];
        const int64_t target = ih * g.in_w + iw;
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t oh = rh.begin; oh < rh.end; ++oh)
          for (int64_t ow = rw.begin; ow < rw.end; ++ow) {
            const int64_t o = n * os.n + oh * os.h + ow * os.w;
            const scalar_t* gop = go + o;
            if constexpr (kMax) {
              const int64_t* ip = idx + o;
              for (int64_t c = 0; c < C; ++c)
                acc[c] += ip[c] == target ? static_cast<acc_t>(gop[c]) : acc_t(0);
            } else {
              const acc_t d = divisor(oh, ow);
              for (int64_t c = 0; c < C; ++c) acc[c] += static_cast<acc_t>(gop[c]) / d;
            }
          }
        scalar_t* gip = gi + n * is.n + ih * is.h + iw * is.w;
        for (int64_t c = 0; c < C; ++c) gip[c] = static_cast<scalar_t>(acc[c]);
      }
    });
  }
}

// The fast backward: a scatter, in a fixed order, with one writer per element. Each item
// owns whole planes (NCHW) or a block of channels of one image (channels_last), zeroes
// them, then walks its outputs in (oh, ow) order adding each output's contribution to
// its window (max: to the saved index only). Every element therefore receives its
// contributions in the same order as the gather above sums them: the results are the
// same bit for bit, and deterministic. bfloat16 accumulates in a float buffer.
template <typename scalar_t, Kind K>
void pool_backward_scatter_impl(const at::Tensor& grad_output, const at::Tensor& indices,
                                at::Tensor& grad_input, const Pool2dGeometry& g, bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kMax = K == Kind::Max || K == Kind::AdaptiveMax;
  constexpr bool kDirect = std::is_same_v<scalar_t, acc_t>;  // accumulate in grad_input itself
  const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
  const int64_t* idx = kMax ? indices.const_data_ptr<int64_t>() : nullptr;
  scalar_t* gi = grad_input.mutable_data_ptr<scalar_t>();
  const int64_t HW = g.in_h * g.in_w, OHW = g.out_h * g.out_w, C = g.channels;

  // Windows of every output row and column (average kinds), with the divisor factors.
  std::vector<int64_t> h0(g.out_h), h1(g.out_h), w0(g.out_w), w1(g.out_w);
  AvgDivisors div;
  if constexpr (K == Kind::Avg) {
    div = make_avg_divisors(g);
    for (int64_t oh = 0; oh < g.out_h; ++oh) h0[oh] = div.rows[oh].begin, h1[oh] = div.rows[oh].end;
    for (int64_t ow = 0; ow < g.out_w; ++ow) w0[ow] = div.cols[ow].begin, w1[ow] = div.cols[ow].end;
  } else if constexpr (K == Kind::AdaptiveAvg) {
    const AdaptiveWindows a = make_adaptive_windows(g);
    h0 = a.h0, h1 = a.h1, w0 = a.w0, w1 = a.w1;
  }
  auto divisor = [&](int64_t oh, int64_t ow) -> acc_t {
    if constexpr (K == Kind::Avg) return static_cast<acc_t>(div.at(oh, ow));
    else return static_cast<acc_t>((h1[oh] - h0[oh]) * (w1[ow] - w0[ow]));
  };

  if (!channels_last) {
    const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, HW + OHW));
    at::parallel_for(0, g.batch * C, grain, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> buf(kDirect ? 0 : HW);
      for (int64_t plane = begin; plane < end; ++plane) {
        acc_t* acc = kDirect ? reinterpret_cast<acc_t*>(gi + plane * HW) : buf.data();
        const scalar_t* gop = go + plane * OHW;
        if (K == Kind::AdaptiveAvg && OHW == 1) {  // global average: one value per plane
          std::fill(acc, acc + HW, acc_t(0) + static_cast<acc_t>(gop[0]) / static_cast<acc_t>(HW));
          if constexpr (!kDirect) at::vec::convert(acc, gi + plane * HW, HW);
          continue;
        }
        std::fill(acc, acc + HW, acc_t(0));
        if constexpr (kMax) {
          const int64_t* ip = idx + plane * OHW;
          for (int64_t o = 0; o < OHW; ++o) {
            const int64_t i = ip[o];
            if (i >= 0 && i < HW) acc[i] += static_cast<acc_t>(gop[o]);
          }
        } else {
          for (int64_t oh = 0; oh < g.out_h; ++oh)
            for (int64_t ow = 0; ow < g.out_w; ++ow) {
              const acc_t d = static_cast<acc_t>(gop[oh * g.out_w + ow]) / divisor(oh, ow);
              for (int64_t ih = h0[oh]; ih < h1[oh]; ++ih)
                for (int64_t iw = w0[ow]; iw < w1[ow]; ++iw) acc[ih * g.in_w + iw] += d;
            }
        }
        if constexpr (!kDirect) at::vec::convert(acc, gi + plane * HW, HW);
      }
    });
    return;
  }
  // channels_last: items are (image, block of channels), enough of them for every thread.
  const int64_t threads = at::get_num_threads();
  int64_t cb = std::max<int64_t>(1, (C * std::max<int64_t>(g.batch, 1)) / (4 * threads));
  cb = std::min<int64_t>({C, 256, std::max<int64_t>(cb, 16)});
  if (!kDirect) cb = std::min<int64_t>(cb, std::max<int64_t>(16, (4 << 20) / (HW * int64_t(sizeof(acc_t)))));
  const int64_t blocks = (C + cb - 1) / cb;
  at::parallel_for(0, g.batch * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(kDirect ? 0 : HW * cb), gd(cb);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / blocks, c0 = (item % blocks) * cb, nc = std::min(cb, C - c0);
      // element (pixel p, channel c0 + j) lives at acc[p * astride + j]
      acc_t* acc = kDirect ? reinterpret_cast<acc_t*>(gi + n * HW * C + c0) : buf.data();
      const int64_t astride = kDirect ? C : nc;
      for (int64_t p = 0; p < HW; ++p) std::fill(acc + p * astride, acc + p * astride + nc, acc_t(0));
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          const int64_t o = (n * OHW + oh * g.out_w + ow) * C + c0;
          const scalar_t* gop = go + o;
          if constexpr (kMax) {
            const int64_t* ip = idx + o;
            for (int64_t j = 0; j < nc; ++j) {
              const int64_t i = ip[j];
              if (i >= 0 && i < HW) acc[i * astride + j] += static_cast<acc_t>(gop[j]);
            }
          } else {
            const acc_t d = divisor(oh, ow);
            for (int64_t j = 0; j < nc; ++j) gd[j] = static_cast<acc_t>(gop[j]) / d;
            for (int64_t ih = h0[oh]; ih < h1[oh]; ++ih)
              for (int64_t iw = w0[ow]; iw < w1[ow]; ++iw) {
                acc_t* a = acc + (ih * g.in_w + iw) * astride;
                for (int64_t j = 0; j < nc; ++j) a[j] += gd[j];
              }
          }
        }
      }
      if constexpr (!kDirect) {
        for (int64_t p = 0; p < HW; ++p) at::vec::convert(acc + p * nc, gi + (n * HW + p) * C + c0, nc);
      }
    }
  });
}

template <Kind K>
at::Tensor pool_backward_cpu(const char* op, const at::Tensor& grad_output,
                             const at::Tensor& indices, const Pool2dGeometry& g,
                             at::IntArrayRef input_size, bool channels_last) {
  check_pool_grad_output(op, grad_output, g);
  if (K == Kind::Max || K == Kind::AdaptiveMax) check_pool_indices(op, grad_output, indices);
  check_dtype_supported(op, grad_output, /*half_ok=*/false);
  const auto fmt = layout_from_flag(channels_last);
  at::Tensor grad_input = at::empty(input_size, grad_output.options().memory_format(fmt));
  if (grad_input.numel() == 0) return grad_input;
  if (grad_output.numel() == 0) {  // adaptive pooling to an empty output
    grad_input.zero_();
    return grad_input;
  }
  // The gathers read grad_output and indices in grad_input's layout (named locals: they
  // outlive the kernel).
  const at::Tensor go = grad_output.contiguous(fmt);
  const at::Tensor ind = (K == Kind::Max || K == Kind::AdaptiveMax) ? indices.contiguous(fmt) : at::Tensor();
  const bool scalar = force_scalar();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, grad_output.scalar_type(), "cnnops_pool2d_backward_cpu", [&] {
    if (scalar) {
      pool_backward_cpu_impl<scalar_t, K>(go, ind, grad_input, g, channels_last);
    } else {
      pool_backward_scatter_impl<scalar_t, K>(go, ind, grad_input, g, channels_last);
    }
  });
  return grad_input;
}

at::Tensor max_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& indices,
                                   at::IntArrayRef input_size, at::IntArrayRef kernel_size,
                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                   at::IntArrayRef dilation, bool ceil_mode, bool channels_last) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const char* op = "cnnops.max_pool2d_backward";
  const Pool2dGeometry g = pool2d_geometry(op, input_size, kernel_size, stride, padding, dilation, ceil_mode);
  return pool_backward_cpu<Kind::Max>(op, grad_output, indices, g, input_size, channels_last);
}

at::Tensor avg_pool2d_backward_cpu(const at::Tensor& grad_output, at::IntArrayRef input_size,
                                   at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                   at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                                   c10::optional<int64_t> divisor_override, bool channels_last) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const char* op = "cnnops.avg_pool2d_backward";
  const int64_t ones[2] = {1, 1};
  Pool2dGeometry g = pool2d_geometry(op, input_size, kernel_size, stride, padding,
                                     at::IntArrayRef(ones, 2), ceil_mode);
  g.count_include_pad = count_include_pad;
  g.divisor_override = check_divisor_override(op, divisor_override);
  return pool_backward_cpu<Kind::Avg>(op, grad_output, at::Tensor(), g, input_size, channels_last);
}

at::Tensor adaptive_avg_pool2d_backward_cpu(const at::Tensor& grad_output,
                                            at::IntArrayRef input_size, bool channels_last) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const char* op = "cnnops.adaptive_avg_pool2d_backward";
  const Pool2dGeometry g = adaptive_pool2d_backward_geometry(op, grad_output, input_size);
  return pool_backward_cpu<Kind::AdaptiveAvg>(op, grad_output, at::Tensor(), g, input_size, channels_last);
}

at::Tensor adaptive_max_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& indices,
                                            at::IntArrayRef input_size, bool channels_last) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const char* op = "cnnops.adaptive_max_pool2d_backward";
  const Pool2dGeometry g = adaptive_pool2d_backward_geometry(op, grad_output, input_size);
  return pool_backward_cpu<Kind::AdaptiveMax>(op, grad_output, indices, g, input_size, channels_last);
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnops, CPU, m) {
  m.impl("max_pool2d", &max_pool2d_cpu);
  m.impl("max_pool2d_backward", &max_pool2d_backward_cpu);
  m.impl("avg_pool2d", &avg_pool2d_cpu);
  m.impl("avg_pool2d_backward", &avg_pool2d_backward_cpu);
  m.impl("adaptive_avg_pool2d", &adaptive_avg_pool2d_cpu);
  m.impl("adaptive_avg_pool2d_backward", &adaptive_avg_pool2d_backward_cpu);
  m.impl("adaptive_max_pool2d", &adaptive_max_pool2d_cpu);
  m.impl("adaptive_max_pool2d_backward", &adaptive_max_pool2d_backward_cpu);
}

}  // namespace cnnops
