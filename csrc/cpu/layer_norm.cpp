// layer_norm and layer_norm2d on the CPU.
//
// Rows (layer_norm, and layer_norm2d in channels_last, where every (n, h, w) is a
// contiguous row of C values): at::parallel_for over rows; per row, one pass of
// vectorized Welford statistics (kAcc independent vector accumulators whose lanes hold
// equal counts, merged exactly; the tail merged with Chan's formula), then one pass that
// normalizes. Backward: per row, one pass for the two row sums and one pass for dx, both
// over a row that is in L1.
//
// Channels-first (layer_norm2d in NCHW): the C values of one (n, h, w) are HW apart, so
// the kernel works on tiles of L consecutive spatial positions of one image (C x L values,
// <= 512 KB, so the tile stays in L2 between the passes), vectorized over the positions.
// Forward: statistics for groups of 4 vectors of positions with the Welford state in
// registers, looping over the channels; then the output channel by channel, so that each
// channel's L values are written as one contiguous run (writing C short runs per group
// instead cost ~15% on the 2-core machine). Backward: per-lane sums in L1 scratch,
// channel by channel, then dx channel by channel.
//
// dgamma/dbeta: a fixed number of partial buffers, chosen from the shapes only (never
// from the thread count); each is filled by one thread over a fixed range of rows/tiles,
// then the partials are added in order: bitwise reproducible with any number of threads.
//
// float32 and float64 compute in their own type; bfloat16 is converted to float per row
// or tile (statistics, parameters and sums all in float).

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
#include <cmath>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common/layer_norm_checks.h"
#include "common/welford.h"


namespace cnnops {
namespace {

using at::vec::Vectorized;

constexpr int64_t kMaxPartials = 32;            // dgamma/dbeta partial buffers, at most
constexpr int64_t kPartialElems = 1 << 22;      // and at most this many values in all
constexpr int64_t kForwardTileBytes = 512 * 1024;  // channels-first forward tile (stays in L2)
constexpr int64_t kBackwardTileBytes = 256 * 1024;  // backward: per tensor (x and grad_out)
constexpr int64_t kMaxTileLanes = 4096;             // channels-first tile width, at most

// ------------------------------------------------------------------ conversions

template <typename T>
void load_row(const T* src, T* dst, int64_t n) {
  std::copy(src, src + n, dst);
}

void load_row(const c10::BFloat16* src, float* dst, int64_t n) {
  using bVec = Vectorized<c10::BFloat16>;
  using fVec = Vectorized<float>;
  int64_t i = 0;
  for (; i + bVec::size() <= n; i += bVec::size()) {
    auto [a, b] = at::vec::convert_to_float<c10::BFloat16>(bVec::loadu(src + i));
    a.store(dst + i);
    b.store(dst + i + fVec::size());
  }
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

void store_row(const float* src, c10::BFloat16* dst, int64_t n) { at::vec::convert(src, dst, n); }

// ------------------------------------------------------------------ row kernels

template <typename T>
T reduce_sum(const Vectorized<T>& v) {
  return at::vec::vec_reduce_all<T>([](Vectorized<T>& a, Vectorized<T>& b) { return a + b; }, v);
}

// Mean and biased variance of x[0, n) in one pass, on values shifted by x[0] (exact for
// nearby floats), so that a large common offset does not cost the variance its precision.
template <typename T>
Welford<T> row_moments(const T* x, int64_t n) {
  using Vec = Vectorized<T>;
  constexpr int64_t kV = Vec::size();
  constexpr int64_t kAcc = 4;
  constexpr int64_t kBlock = kV * kAcc;
  const T shift = x[0];
  const Vec vshift(shift);
  const int64_t blocks = n / kBlock;
  Welford<T> total = welford_init<T>();
  if (blocks > 0) {
    Vec mean[kAcc], m2[kAcc];
    for (int64_t k = 0; k < kAcc; ++k) mean[k] = m2[k] = Vec(T(0));
    for (int64_t b = 0; b < blocks; ++b) {
      const Vec rc(T(1) / static_cast<T>(b + 1));
      const T* p = x + b * kBlock;
      for (int64_t k = 0; k < kAcc; ++k) {
        const Vec v = Vec::loadu(p + k * kV) - vshift;
        const Vec delta = v - mean[k];
        mean[k] = at::vec::fmadd(delta, rc, mean[k]);
        m2[k] = at::vec::fmadd(delta, v - mean[k], m2[k]);
      }
    }
    // Every lane of every accumulator holds `blocks` values: Chan's merge of equal counts
    // is mean = the average of the lane means and m2 = the sum of the lane m2s plus
    // blocks * the sum of squared deviations of the lane means from that average.
    Vec mean_sum = mean[0], m2_sum = m2[0];
    for (int64_t k = 1; k < kAcc; ++k) {
      mean_sum = mean_sum + mean[k];
      m2_sum = m2_sum + m2[k];
    }
    const T mu = reduce_sum(mean_sum) / static_cast<T>(kBlock);
    Vec dev(T(0));
    for (int64_t k = 0; k < kAcc; ++k) {
      const Vec d = mean[k] - Vec(mu);
      dev = at::vec::fmadd(d, d, dev);
    }
    total.mean = mu;
    total.m2 = reduce_sum(m2_sum) + static_cast<T>(blocks) * reduce_sum(dev);
    total.count = static_cast<T>(blocks * kBlock);
  }
  // The tail (fewer than kBlock values, in L1): exact two-pass moments, merged by Chan.
  const int64_t done = blocks * kBlock, rest = n - done;
  if (rest > 0) {
    const T* p = x + done;
    Vec acc(T(0));
    int64_t i = 0;
    for (; i + kV <= rest; i += kV) acc = acc + (Vec::loadu(p + i) - vshift);
    T sum = reduce_sum(acc);
    for (; i < rest; ++i) sum += p[i] - shift;
    const T m = sum / static_cast<T>(rest);
    Vec sq(T(0));
    i = 0;
    for (; i + kV <= rest; i += kV) {
      const Vec d = (Vec::loadu(p + i) - vshift) - Vec(m);
      sq = at::vec::fmadd(d, d, sq);
    }
    T m2 = reduce_sum(sq);
    for (; i < rest; ++i) m2 += (p[i] - shift - m) * (p[i] - shift - m);
    total = welford_merge(total, Welford<T>{m, m2, static_cast<T>(rest)});
  }
  total.mean += shift;
  return total;
}

template <typename T>
T rstd_from(const Welford<T>& w, T eps) {
  return T(1) / std::sqrt(std::max(welford_var(w), T(0)) + eps);
}

// y = (x - mean) * rstd * w + b, w and b optional (null).
template <typename T>
void normalize_row(const T* x, T* y, int64_t n, T mean, T rstd, const T* w, const T* b) {
  using Vec = Vectorized<T>;
  constexpr int64_t kV = Vec::size();
  const Vec vm(mean), vr(rstd);
  auto one = [&](int64_t j, int64_t cnt) {
    Vec v = (Vec::loadu(x + j, cnt) - vm) * vr;
    if (w != nullptr && b != nullptr) {
      v = at::vec::fmadd(v, Vec::loadu(w + j, cnt), Vec::loadu(b + j, cnt));
    } else if (w != nullptr) {
      v = v * Vec::loadu(w + j, cnt);
    } else if (b != nullptr) {
      v = v + Vec::loadu(b + j, cnt);
    }
    v.store(y + j, cnt);
  };
  int64_t j = 0;
  for (; j + kV <= n; j += kV) one(j, kV);
  if (j < n) one(j, n - j);
}

// Backward of one row. g = dy * w; dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
// When pw / pb are given, adds dy * xhat and dy into them (the dgamma/dbeta partials).
template <typename T>
void backward_row(const T* x, const T* dy, T* dx, int64_t n, T mean, T rstd, const T* w,
                  T* pw, T* pb) {
  using Vec = Vectorized<T>;
  constexpr int64_t kV = Vec::size();
  const Vec vm(mean), vr(rstd);
  Vec sg(T(0)), sgx(T(0));
  auto pass1 = [&](int64_t j, int64_t cnt) {
    const Vec d = Vec::loadu(dy + j, cnt);
    const Vec xh = (Vec::loadu(x + j, cnt) - vm) * vr;
    const Vec g = w != nullptr ? d * Vec::loadu(w + j, cnt) : d;
    sg = sg + g;  // lanes past cnt load as zero and add nothing
    sgx = at::vec::fmadd(g, xh, sgx);
    if (pw != nullptr) at::vec::fmadd(d, xh, Vec::loadu(pw + j, cnt)).store(pw + j, cnt);
    if (pb != nullptr) (Vec::loadu(pb + j, cnt) + d).store(pb + j, cnt);
  };
  int64_t j = 0;
  for (; j + kV <= n; j += kV) pass1(j, kV);
  if (j < n) pass1(j, n - j);
  if (dx == nullptr) return;
  const T inv_n = T(1) / static_cast<T>(n);
  const Vec a(reduce_sum(sg) * inv_n), c(reduce_sum(sgx) * inv_n);
  auto pass2 = [&](int64_t j, int64_t cnt) {
    const Vec d = Vec::loadu(dy + j, cnt);
    const Vec xh = (Vec::loadu(x + j, cnt) - vm) * vr;
    const Vec g = w != nullptr ? d * Vec::loadu(w + j, cnt) : d;
    (vr * (g - a - xh * c)).store(dx + j, cnt);
  };
  j = 0;
  for (; j + kV <= n; j += kV) pass2(j, kV);
  if (j < n) pass2(j, n - j);
}

// at::parallel_for grain for work items of `work` values each: calls of fewer than
// kSerialWork values stay on the calling thread (a parallel region costs more).
constexpr int64_t kSerialWork = 32768;
int64_t unit_grain(int64_t work) {
  return std::max<int64_t>(1, kSerialWork / std::max<int64_t>(work, 1));
}

// How many dgamma/dbeta partial buffers of `width` values for `units` work items:
// a function of the shapes only.
int64_t partial_count(int64_t units, int64_t width) {
  const int64_t by_memory = std::max<int64_t>(1, kPartialElems / std::max<int64_t>(width, 1));
  return std::max<int64_t>(1, std::min<int64_t>({units, kMaxPartials, by_memory}));
}

// out[j] = sum over p, in order, of partials[p * width + j]; out is a fresh tensor of
// opmath type, converted to `dtype` by the caller.
template <typename T>
void sum_partials(const T* partials, int64_t count, int64_t width, T* out) {
  using Vec = Vectorized<T>;
  at::parallel_for(0, width, 4096, [&](int64_t begin, int64_t end) {
    int64_t j = begin;
    for (; j < end; j += Vec::size()) {
      const int64_t cnt = std::min<int64_t>(Vec::size(), end - j);
      Vec acc(T(0));
      for (int64_t p = 0; p < count; ++p) acc = acc + Vec::loadu(partials + p * width + j, cnt);
      acc.store(out + j, cnt);
    }
  });
}

// Parameters as contiguous opmath tensors (a no-op for float weights of float input).
at::Tensor param_as(const c10::optional<at::Tensor>& p, at::ScalarType dtype) {
  if (!p.has_value() || !p->defined()) return at::Tensor();
  return p->to(dtype).contiguous();
}

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

// Forward over M contiguous rows of length N.
template <typename scalar_t>
void rows_forward(const scalar_t* X, scalar_t* Y, at::opmath_type<scalar_t>* mean_out,
                  at::opmath_type<scalar_t>* rstd_out, int64_t M, int64_t N,
                  const at::opmath_type<scalar_t>* w, const at::opmath_type<scalar_t>* b,
                  double eps) {
  using T = at::opmath_type<scalar_t>;
  constexpr bool kSame = std::is_same<scalar_t, T>::value;
  const T eps_t = static_cast<T>(eps);
  at::parallel_for(0, M, unit_grain(N), [&](int64_t begin, int64_t end) {
    std::vector<T> xbuf(kSame ? 0 : N), ybuf(kSame ? 0 : N);
    for (int64_t r = begin; r < end; ++r) {
      const T* x;
      T* y;
      if constexpr (kSame) {
        x = X + r * N;
        y = Y + r * N;
      } else {
        load_row(X + r * N, xbuf.data(), N);
        x = xbuf.data();
        y = ybuf.data();
      }
      const Welford<T> m = row_moments(x, N);
      const T rstd = rstd_from(m, eps_t);
      normalize_row(x, y, N, m.mean, rstd, w, b);
      if constexpr (!kSame) store_row(y, Y + r * N, N);
      mean_out[r] = m.mean;
      rstd_out[r] = rstd;
    }
  });
}

// Backward over M contiguous rows of length N. dX null: no input gradient. pw/pb (each
// (P, N), zero-filled) null: no weight/bias gradient; otherwise P partials, rows cut into
// P fixed ranges, each range done by one thread.
template <typename scalar_t>
void rows_backward(const scalar_t* dY, const scalar_t* X, const at::opmath_type<scalar_t>* mean,
                   const at::opmath_type<scalar_t>* rstd, const at::opmath_type<scalar_t>* w,
                   scalar_t* dX, at::opmath_type<scalar_t>* pw, at::opmath_type<scalar_t>* pb,
                   int64_t P, int64_t M, int64_t N) {
  using T = at::opmath_type<scalar_t>;
  constexpr bool kSame = std::is_same<scalar_t, T>::value;
  const bool partials = pw != nullptr || pb != nullptr;
  auto do_rows = [&](int64_t begin, int64_t end, T* pw_row, T* pb_row, std::vector<T>& xbuf,
                     std::vector<T>& dybuf, std::vector<T>& dxbuf) {
    for (int64_t r = begin; r < end; ++r) {
      const T *x, *dy;
      T* dx;
      if constexpr (kSame) {
        x = X + r * N;
        dy = dY + r * N;
        dx = dX != nullptr ? dX + r * N : nullptr;
      } else {
        load_row(X + r * N, xbuf.data(), N);
        load_row(dY + r * N, dybuf.data(), N);
        x = xbuf.data();
        dy = dybuf.data();
        dx = dX != nullptr ? dxbuf.data() : nullptr;
      }
      backward_row(x, dy, dx, N, mean[r], rstd[r], w, pw_row, pb_row);
      if constexpr (!kSame) {
        if (dX != nullptr) store_row(dx, dX + r * N, N);
      }
    }
  };
  const int64_t buf = kSame ? 0 : N;
  if (!partials) {
    at::parallel_for(0, M, unit_grain(N), [&](int64_t begin, int64_t end) {
      std::vector<T> xbuf(buf), dybuf(buf), dxbuf(buf);
      do_rows(begin, end, nullptr, nullptr, xbuf, dybuf, dxbuf);
    });
    return;
  }
  at::parallel_for(0, P, unit_grain(M * N / P), [&](int64_t begin, int64_t end) {
    std::vector<T> xbuf(buf), dybuf(buf), dxbuf(buf);
    for (int64_t p = begin; p < end; ++p) {
      do_rows(p * M / P, (p + 1) * M / P, pw != nullptr ? pw + p * N : nullptr,
              pb != nullptr ? pb + p * N : nullptr, xbuf, dybuf, dxbuf);
    }
  });
}

// ------------------------------------------------------------------ channels-first kernels
// An NCHW image is C planes of S = H * W values. A tile is L consecutive positions
// [s0, s0 + L) of one image; its channel c starts at x + c * xs.

struct TileGeometry {
  int64_t N, C, S, L, tiles_per_image;
  int64_t units() const { return N * tiles_per_image; }
};

TileGeometry tile_geometry(int64_t N, int64_t C, int64_t S, int64_t elem_bytes, int64_t vec,
                           int64_t budget) {
  TileGeometry t{N, C, S, 0, 0};
  int64_t lanes = budget / std::max<int64_t>(C * elem_bytes, 1);
  lanes = std::max<int64_t>(vec, std::min<int64_t>(lanes, kMaxTileLanes) / vec * vec);
  t.L = std::min<int64_t>(lanes, std::max<int64_t>(S, 1));
  t.tiles_per_image = S == 0 ? 0 : (S + t.L - 1) / t.L;
  return t;
}

// Statistics of kGroup vectors of lanes [j0, j0 + kGroup * kV) of a tile over all channels,
// with the per-lane Welford state in registers (kGroup independent dependency chains).
// Each lane's values are shifted by their channel-0 value, as in row_moments. Writes the
// mean and rstd of each lane to m and r (tile scratch) and to mean/rstd (the output).
// kFull: every lane exists; otherwise loads past len read zeros into lanes never stored.
constexpr int kGroup = 4;

template <typename T, bool kFull>
void cf_stats_group(const T* x, int64_t xs, int64_t C, int64_t j0, int64_t len, T eps, T* m_out,
                    T* r_out, T* mean, T* rstd) {
  using Vec = Vectorized<T>;
  constexpr int64_t kV = Vec::size();
  int64_t cnt[kGroup];
  for (int i = 0; i < kGroup; ++i) {
    cnt[i] = kFull ? kV : std::max<int64_t>(0, std::min<int64_t>(kV, len - j0 - i * kV));
  }
  auto load = [&](const T* p, int i) {
    return kFull ? Vec::loadu(p + i * kV) : Vec::loadu(p + i * kV, cnt[i]);
  };
  Vec k[kGroup], m[kGroup], m2[kGroup];
  for (int i = 0; i < kGroup; ++i) {
    k[i] = load(x + j0, i);  // channel 0: shifted value 0, so mean 0 and m2 0 after it
    m[i] = Vec(T(0));
    m2[i] = Vec(T(0));
  }
  for (int64_t c = 1; c < C; ++c) {
    const Vec rc(T(1) / static_cast<T>(c + 1));
    const T* xc = x + c * xs + j0;
    for (int i = 0; i < kGroup; ++i) {
      const Vec v = load(xc, i) - k[i];
      const Vec delta = v - m[i];
      m[i] = at::vec::fmadd(delta, rc, m[i]);
      m2[i] = at::vec::fmadd(delta, v - m[i], m2[i]);
    }
  }
  const Vec inv_c(T(1) / static_cast<T>(C)), veps(eps), zero(T(0));
  for (int i = 0; i < kGroup; ++i) {
    const Vec r = (at::vec::maximum(m2[i] * inv_c, zero) + veps).rsqrt();
    const Vec mu = m[i] + k[i];
    mu.store(m_out + j0 + i * kV);  // scratch is padded to whole groups
    r.store(r_out + j0 + i * kV);
    if (kFull) {
      mu.store(mean + j0 + i * kV);
      r.store(rstd + j0 + i * kV);
    } else if (cnt[i] > 0) {
      mu.store(mean + j0 + i * kV, cnt[i]);
      r.store(rstd + j0 + i * kV, cnt[i]);
    }
  }
}

// Statistics and output of one tile (len <= L lanes). mean/rstd: the tile's entries of the
// (N, S) statistics; state: 2 * (L + kGroup * kV) scratch values. The statistics go group by
// group (registers); the output channel by channel, so every channel's len values are
// written contiguously (few long write streams instead of C short ones).
template <typename T>
void cf_forward_tile(const T* x, int64_t xs, T* y, int64_t ys, int64_t C, int64_t len,
                     const T* w, const T* b, T eps, T* mean, T* rstd, T* state) {
  using Vec = Vectorized<T>;
  constexpr int64_t kV = Vec::size();
  constexpr int64_t kLanes = kGroup * kV;
  const int64_t lpad = (len + kLanes - 1) / kLanes * kLanes;
  T* m = state;
  T* r = state + lpad;
  int64_t j0 = 0;
  for (; j0 + kLanes <= len; j0 += kLanes) cf_stats_group<T, true>(x, xs, C, j0, len, eps, m, r, mean, rstd);
  if (j0 < len) cf_stats_group<T, false>(x, xs, C, j0, len, eps, m, r, mean, rstd);
  for (int64_t c = 0; c < C; ++c) {
    const Vec wc(w != nullptr ? w[c] : T(1)), bc(b != nullptr ? b[c] : T(0));
    const T* xc = x + c * xs;
    T* yc = y + c * ys;
    int64_t j = 0;
    for (; j + kV <= len; j += kV) {
      at::vec::fmadd((Vec::loadu(xc + j) - Vec::loadu(m + j)) * Vec::loadu(r + j), wc, bc).store(yc + j);
    }
    if (j < len) {
      const int64_t cnt = len - j;
      at::vec::fmadd((Vec::loadu(xc + j, cnt) - Vec::loadu(m + j)) * Vec::loadu(r + j), wc, bc).store(yc + j, cnt);
    }
  }
}

// Backward of one tile. dx null: no input gradient. pw/pb null or the C partial sums to
// add dy * xhat and dy into. state: 4 * Lpad scratch values.
template <typename T>
void cf_backward_tile(const T* x, const T* dy, int64_t s, T* dx, int64_t dxs, int64_t C,
                      int64_t len, const T* mean, const T* rstd, const T* w, T* pw, T* pb,
                      T* state) {
  using Vec = Vectorized<T>;
  constexpr int64_t kV = Vec::size();
  const int64_t lpad = ((len + kV - 1) / kV) * kV;
  T* m = state;
  T* r = state + lpad;
  T* sg = state + 2 * lpad;
  T* sgx = state + 3 * lpad;
  for (int64_t j = 0; j < len; j += kV) {
    const int64_t cnt = std::min<int64_t>(kV, len - j);
    Vec::loadu(mean + j, cnt).store(m + j);  // lanes past len: mean 0, rstd 0
    Vec::loadu(rstd + j, cnt).store(r + j);
    Vec(T(0)).store(sg + j);
    Vec(T(0)).store(sgx + j);
  }
  for (int64_t c = 0; c < C; ++c) {
    const T wc = w != nullptr ? w[c] : T(1);
    const Vec vw(wc);
    const T* xc = x + c * s;
    const T* dyc = dy + c * s;
    Vec acc_w(T(0)), acc_b(T(0));
    for (int64_t j = 0; j < len; j += kV) {
      const int64_t cnt = std::min<int64_t>(kV, len - j);
      const Vec d = Vec::loadu(dyc + j, cnt);
      const Vec xh = (Vec::loadu(xc + j, cnt) - Vec::loadu(m + j)) * Vec::loadu(r + j);
      const Vec g = d * vw;
      (Vec::loadu(sg + j) + g).store(sg + j);
      at::vec::fmadd(g, xh, Vec::loadu(sgx + j)).store(sgx + j);
      acc_w = at::vec::fmadd(d, xh, acc_w);
      acc_b = acc_b + d;
    }
    if (pw != nullptr) pw[c] += reduce_sum(acc_w);
    if (pb != nullptr) pb[c] += reduce_sum(acc_b);
  }
  if (dx == nullptr) return;
  const Vec inv_c(T(1) / static_cast<T>(C));
  for (int64_t j = 0; j < len; j += kV) {
    (Vec::loadu(sg + j) * inv_c).store(sg + j);
    (Vec::loadu(sgx + j) * inv_c).store(sgx + j);
  }
  for (int64_t c = 0; c < C; ++c) {
    const Vec vw(w != nullptr ? w[c] : T(1));
    const T* xc = x + c * s;
    const T* dyc = dy + c * s;
    T* dxc = dx + c * dxs;
    for (int64_t j = 0; j < len; j += kV) {
      const int64_t cnt = std::min<int64_t>(kV, len - j);
      const Vec rj = Vec::loadu(r + j);
      const Vec xh = (Vec::loadu(xc + j, cnt) - Vec::loadu(m + j)) * rj;
      const Vec g = Vec::loadu(dyc + j, cnt) * vw;
      (rj * (g - Vec::loadu(sg + j) - xh * Vec::loadu(sgx + j))).store(dxc + j, cnt);
    }
  }
}

// Copies channel planes of a tile into (or out of) a dense float buffer with stride L.
template <typename scalar_t, typename T>
void gather_tile(const scalar_t* src, int64_t S, int64_t C, int64_t len, T* dst, int64_t L) {
  for (int64_t c = 0; c < C; ++c) load_row(src + c * S, dst + c * L, len);
}

template <typename scalar_t>
void channels_first_forward(const scalar_t* X, scalar_t* Y, at::opmath_type<scalar_t>* mean_out,
                            at::opmath_type<scalar_t>* rstd_out, int64_t N, int64_t C,
                            int64_t S, const at::opmath_type<scalar_t>* w,
                            const at::opmath_type<scalar_t>* b, double eps) {
  using T = at::opmath_type<scalar_t>;
  constexpr bool kSame = std::is_same<scalar_t, T>::value;
  constexpr int64_t kV = Vectorized<T>::size();
  const TileGeometry t = tile_geometry(N, C, S, sizeof(T), kV, kForwardTileBytes);
  const T eps_t = static_cast<T>(eps);
  at::parallel_for(0, t.units(), unit_grain(C * t.L), [&](int64_t begin, int64_t end) {
    std::vector<T> state(2 * (t.L + kGroup * kV));
    std::vector<T> xbuf(kSame ? 0 : C * t.L), ybuf(kSame ? 0 : C * t.L);
    for (int64_t u = begin; u < end; ++u) {
      const int64_t n = u / t.tiles_per_image, s0 = (u % t.tiles_per_image) * t.L;
      const int64_t len = std::min<int64_t>(t.L, S - s0);
      const int64_t base = n * C * S + s0;
      T* mean = mean_out + n * S + s0;
      T* rstd = rstd_out + n * S + s0;
      if constexpr (kSame) {
        cf_forward_tile<T>(X + base, S, Y + base, S, C, len, w, b, eps_t, mean, rstd, state.data());
      } else {
        gather_tile(X + base, S, C, len, xbuf.data(), t.L);
        cf_forward_tile<T>(xbuf.data(), t.L, ybuf.data(), t.L, C, len, w, b, eps_t, mean, rstd,
                           state.data());
        for (int64_t c = 0; c < C; ++c) store_row(ybuf.data() + c * t.L, Y + base + c * S, len);
      }
    }
  });
}

template <typename scalar_t>
void channels_first_backward(const scalar_t* dY, const scalar_t* X,
                             const at::opmath_type<scalar_t>* mean,
                             const at::opmath_type<scalar_t>* rstd,
                             const at::opmath_type<scalar_t>* w, scalar_t* dX,
                             at::opmath_type<scalar_t>* pw, at::opmath_type<scalar_t>* pb,
                             const TileGeometry& t, int64_t P) {
  using T = at::opmath_type<scalar_t>;
  constexpr bool kSame = std::is_same<scalar_t, T>::value;
  constexpr int64_t kV = Vectorized<T>::size();
  const int64_t C = t.C, S = t.S, L = t.L;
  auto do_units = [&](int64_t begin, int64_t end, T* pw_p, T* pb_p, std::vector<T>& state,
                      std::vector<T>& xbuf, std::vector<T>& dybuf, std::vector<T>& dxbuf) {
    for (int64_t u = begin; u < end; ++u) {
      const int64_t n = u / t.tiles_per_image, s0 = (u % t.tiles_per_image) * L;
      const int64_t len = std::min<int64_t>(L, S - s0);
      const int64_t base = n * C * S + s0;
      const T* mu = mean + n * S + s0;
      const T* rs = rstd + n * S + s0;
      if constexpr (kSame) {
        cf_backward_tile<T>(X + base, dY + base, S, dX != nullptr ? dX + base : nullptr, S, C,
                            len, mu, rs, w, pw_p, pb_p, state.data());
      } else {
        gather_tile(X + base, S, C, len, xbuf.data(), L);
        gather_tile(dY + base, S, C, len, dybuf.data(), L);
        cf_backward_tile<T>(xbuf.data(), dybuf.data(), L, dX != nullptr ? dxbuf.data() : nullptr,
                            L, C, len, mu, rs, w, pw_p, pb_p, state.data());
        if (dX != nullptr) {
          for (int64_t c = 0; c < C; ++c) store_row(dxbuf.data() + c * L, dX + base + c * S, len);
        }
      }
    }
  };
  const int64_t buf = kSame ? 0 : C * L;
  const bool partials = pw != nullptr || pb != nullptr;
  const int64_t chunks = partials ? P : t.units();
  const int64_t grain = unit_grain(t.units() * C * L / std::max<int64_t>(chunks, 1));
  at::parallel_for(0, chunks, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> state(4 * (L + kV)), xbuf(buf), dybuf(buf), dxbuf(buf);
    for (int64_t p = begin; p < end; ++p) {
      if (partials) {
        do_units(p * t.units() / P, (p + 1) * t.units() / P, pw != nullptr ? pw + p * C : nullptr,
                 pb != nullptr ? pb + p * C : nullptr, state, xbuf, dybuf, dxbuf);
      } else {
        do_units(p, p + 1, nullptr, nullptr, state, xbuf, dybuf, dxbuf);
      }
    }
  });
}

// ------------------------------------------------------------------ op entry points

using Tensor3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_cpu(
    const at::Tensor& input, at::IntArrayRef normalized_shape,
    const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias, double eps) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const char* op = "cnnops.layer_norm";
  check_dtype_supported(op, input, /*half_ok=*/false);
  const auto [M, N] = check_layer_norm_shape(op, input, normalized_shape);
  check_layer_norm_params(op, input, weight, bias, normalized_shape, "normalized_shape");
  const auto stat_dtype = layer_norm_stat_dtype(input.scalar_type());
  const at::Tensor x = input.contiguous();
  LayerNormOutputs outputs = layer_norm_outputs(
      input, layer_norm_stat_shape(input, normalized_shape.size()), at::MemoryFormat::Contiguous);
  if (layer_norm_outputs_trivial(outputs, M, N, eps)) return outputs;
  at::Tensor& out = std::get<0>(outputs);
  at::Tensor& mean = std::get<1>(outputs);
  at::Tensor& rstd = std::get<2>(outputs);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, input.scalar_type(), "cnnops_layer_norm_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const at::Tensor w = param_as(weight, stat_dtype), b = param_as(bias, stat_dtype);
    rows_forward<scalar_t>(x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                           mean.mutable_data_ptr<T>(), rstd.mutable_data_ptr<T>(), M, N,
                           ptr_or_null<T>(w), ptr_or_null<T>(b), eps);
  });
  return outputs;
}

at::Tensor empty_grad(const at::Tensor& input) { return at::empty({0}, input.options()); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& input, at::IntArrayRef normalized_shape,
    const at::Tensor& mean, const at::Tensor& rstd, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, std::array<bool, 3> output_mask) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const char* op = "cnnops.layer_norm_backward";
  check_dtype_supported(op, input, /*half_ok=*/false);
  const auto [M, N] = check_layer_norm_shape(op, input, normalized_shape);
  check_layer_norm_grad_out(op, input, grad_out);
  check_layer_norm_stat(op, input, mean, "mean", M);
  check_layer_norm_stat(op, input, rstd, "rstd", M);
  check_layer_norm_params(op, input, weight, bias, normalized_shape, "normalized_shape");
  const auto stat_dtype = layer_norm_stat_dtype(input.scalar_type());

  at::Tensor grad_input = output_mask[0] ? at::empty(input.sizes(), input.options()) : empty_grad(input);
  at::Tensor grad_weight, grad_bias;
  at::Tensor pw, pb;  // partial sums, then their total, in the stat dtype
  const int64_t P = partial_count(M, N);
  if (output_mask[1]) pw = at::zeros({P, N}, input.options().dtype(stat_dtype));
  if (output_mask[2]) pb = at::zeros({P, N}, input.options().dtype(stat_dtype));
  if (M > 0 && N > 0) {
    const at::Tensor x = input.contiguous(), dy = grad_out.contiguous();
    const at::Tensor m = mean.contiguous(), r = rstd.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, input.scalar_type(), "cnnops_layer_norm_backward_cpu", [&] {
      using T = at::opmath_type<scalar_t>;
      const at::Tensor w = param_as(weight, stat_dtype);
      rows_backward<scalar_t>(dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                              m.const_data_ptr<T>(), r.const_data_ptr<T>(), ptr_or_null<T>(w),
                              output_mask[0] ? grad_input.mutable_data_ptr<scalar_t>() : nullptr,
                              pw.defined() ? pw.mutable_data_ptr<T>() : nullptr,
                              pb.defined() ? pb.mutable_data_ptr<T>() : nullptr, P, M, N);
    });
  }
  auto finish = [&](const at::Tensor& partials, const c10::optional<at::Tensor>& param) {
    at::Tensor total = at::empty({N}, partials.options());
    AT_DISPATCH_FLOATING_TYPES(partials.scalar_type(), "cnnops_layer_norm_sum_partials_cpu", [&] {
      sum_partials<scalar_t>(partials.const_data_ptr<scalar_t>(), P, N, total.mutable_data_ptr<scalar_t>());
    });
    return total.view(normalized_shape).to(layer_norm_param_dtype(input, param));
  };
  grad_weight = output_mask[1] ? finish(pw, weight) : empty_grad(input);
  grad_bias = output_mask[2] ? finish(pb, bias) : empty_grad(input);
  return {grad_input, grad_weight, grad_bias};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm2d_cpu(
    const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, double eps) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const char* op = "cnnops.layer_norm2d";
  check_dtype_supported(op, input, /*half_ok=*/false);
  check_layer_norm2d_shape(op, input);
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t channels[1] = {C};
  check_layer_norm_params(op, input, weight, bias, at::IntArrayRef(channels, 1), "num_channels");
  const auto stat_dtype = layer_norm_stat_dtype(input.scalar_type());
  const auto format = layer_norm2d_format(input);
  const at::Tensor x = input.contiguous(format);
  LayerNormOutputs outputs = layer_norm_outputs(input, {N, 1, H, W}, format);
  if (layer_norm_outputs_trivial(outputs, N * H * W, C, eps)) return outputs;
  at::Tensor& out = std::get<0>(outputs);
  at::Tensor& mean = std::get<1>(outputs);
  at::Tensor& rstd = std::get<2>(outputs);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, input.scalar_type(), "cnnops_layer_norm2d_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const at::Tensor w = param_as(weight, stat_dtype), b = param_as(bias, stat_dtype);
    if (format == at::MemoryFormat::ChannelsLast) {
      rows_forward<scalar_t>(x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                             mean.mutable_data_ptr<T>(), rstd.mutable_data_ptr<T>(), N * H * W,
                             C, ptr_or_null<T>(w), ptr_or_null<T>(b), eps);
    } else {
      channels_first_forward<scalar_t>(x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                                       mean.mutable_data_ptr<T>(), rstd.mutable_data_ptr<T>(), N,
                                       C, H * W, ptr_or_null<T>(w), ptr_or_null<T>(b), eps);
    }
  });
  return outputs;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm2d_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& mean,
    const at::Tensor& rstd, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, std::array<bool, 3> output_mask) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const char* op = "cnnops.layer_norm2d_backward";
  check_dtype_supported(op, input, /*half_ok=*/false);
  check_layer_norm2d_shape(op, input);
  check_layer_norm_grad_out(op, input, grad_out);
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t S = H * W;
  check_layer_norm_stat(op, input, mean, "mean", N * S);
  check_layer_norm_stat(op, input, rstd, "rstd", N * S);
  const int64_t channels[1] = {C};
  check_layer_norm_params(op, input, weight, bias, at::IntArrayRef(channels, 1), "num_channels");
  const auto stat_dtype = layer_norm_stat_dtype(input.scalar_type());
  const auto format = layer_norm2d_format(input);
  const bool channels_last = format == at::MemoryFormat::ChannelsLast;

  at::Tensor grad_input = output_mask[0]
                              ? at::empty(input.sizes(), input.options().memory_format(format))
                              : empty_grad(input);
  at::Tensor pw, pb;
  int64_t P = 1;
  TileGeometry tiles{};
  if (!channels_last) {
    tiles = tile_geometry(N, C, S, input.scalar_type() == at::kDouble ? 8 : 4,
                          input.scalar_type() == at::kDouble ? Vectorized<double>::size()
                                                             : Vectorized<float>::size(),
                          kBackwardTileBytes);
    P = partial_count(tiles.units(), C);
  } else {
    P = partial_count(N * S, C);
  }
  if (output_mask[1]) pw = at::zeros({P, C}, input.options().dtype(stat_dtype));
  if (output_mask[2]) pb = at::zeros({P, C}, input.options().dtype(stat_dtype));
  if (N * S > 0 && C > 0) {
    const at::Tensor x = input.contiguous(format), dy = grad_out.contiguous(format);
    const at::Tensor m = mean.contiguous(), r = rstd.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, input.scalar_type(), "cnnops_layer_norm2d_backward_cpu", [&] {
      using T = at::opmath_type<scalar_t>;
      const at::Tensor w = param_as(weight, stat_dtype);
      scalar_t* dx = output_mask[0] ? grad_input.mutable_data_ptr<scalar_t>() : nullptr;
      T* pw_ptr = pw.defined() ? pw.mutable_data_ptr<T>() : nullptr;
      T* pb_ptr = pb.defined() ? pb.mutable_data_ptr<T>() : nullptr;
      if (channels_last) {
        rows_backward<scalar_t>(dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                m.const_data_ptr<T>(), r.const_data_ptr<T>(), ptr_or_null<T>(w),
                                dx, pw_ptr, pb_ptr, P, N * S, C);
      } else {
        channels_first_backward<scalar_t>(dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                          m.const_data_ptr<T>(), r.const_data_ptr<T>(),
                                          ptr_or_null<T>(w), dx, pw_ptr, pb_ptr, tiles, P);
      }
    });
  }
  auto finish = [&](const at::Tensor& partials, const c10::optional<at::Tensor>& param) {
    at::Tensor total = at::empty({C}, partials.options());
    AT_DISPATCH_FLOATING_TYPES(partials.scalar_type(), "cnnops_layer_norm2d_sum_partials_cpu", [&] {
      sum_partials<scalar_t>(partials.const_data_ptr<scalar_t>(), P, C, total.mutable_data_ptr<scalar_t>());
    });
    return total.to(layer_norm_param_dtype(input, param));
  };
  at::Tensor grad_weight = output_mask[1] ? finish(pw, weight) : empty_grad(input);
  at::Tensor grad_bias = output_mask[2] ? finish(pb, bias) : empty_grad(input);
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnops, CPU, m) {
  m.impl("layer_norm", &layer_norm_cpu);
  m.impl("layer_norm_backward", &layer_norm_backward_cpu);
  m.impl("layer_norm2d", &layer_norm2d_cpu);
  m.impl("layer_norm2d_backward", &layer_norm2d_backward_cpu);
}

}  // namespace cnnops
