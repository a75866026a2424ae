// batch_norm on the CPU.
//
// Two layouts (BnShape): "planes" (NCHW and any other contiguous (N, C, *): N * C planes of
// L contiguous values) and "rows" (channels_last, and inputs with L == 1: N * L rows of C
// contiguous values). Every kernel reads each tensor once from memory:
//  - statistics (training forward): planes: parallel over channels, each plane cut into
//    L1 blocks of kBlock values, exact two-pass moments per block (the second pass reads
//    L1), blocks merged with Chan's formula in order. Rows: the rows are cut into a fixed
//    number of chunks (from the shape, never the thread count); each chunk runs Welford
//    over its rows, vectorized over the channels; the chunks are merged per channel in
//    chunk order (finalize). Deterministic for any number of threads.
//  - forward elementwise: y = act(x * scale + shift (+ residual)), parallel over planes
//    (scale/shift scalars) or rows (scale/shift arrays), vectorized.
//  - backward: one reduction pass (sum g, sum g * (x - mean), g = dy through the
//    activation's mask, from the forward output), planes over channels, rows over fixed
//    chunks merged in order; then one elementwise pass writing dx = g * A - x * B + D and
//    dresidual = g. No intermediate full-size tensors.
// float32 and float64 compute in their own type; bfloat16 is converted to float per L1
// block. Weight, bias and running statistics are read as float (double for double).

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
#include <vector>

#include "common/batch_norm_ops.h"


namespace cnnops {
namespace {

using at::vec::Vectorized;

constexpr int64_t kBlock = 2048;     // values per L1 block (conversions, block moments)
constexpr int64_t kMaxChunks = 32;   // row chunks of the rows layout, at most
constexpr int64_t kChunkElems = 1 << 16;  // and at least this many values per chunk
constexpr int64_t kElemGrain = 1 << 15;  // values per parallel task, elementwise passes

// ------------------------------------------------------------------ conversions
// Kernels compute on spans of the accumulation type: float and double spans are used in
// place, bfloat16 spans are converted through an L1 buffer.

inline const float* to_acc(const c10::BFloat16* src, float* buf, int64_t n) {
  at::vec::convert(src, buf, n);
  return buf;
}
template <typename T>
inline const T* to_acc(const T* src, T* /*buf*/, int64_t /*n*/) {
  return src;
}
inline float* out_acc(c10::BFloat16* /*dst*/, float* buf) { return buf; }
template <typename T>
inline T* out_acc(T* dst, T* /*buf*/) {
  return dst;
}
inline void from_acc(const float* buf, c10::BFloat16* dst, int64_t n) { at::vec::convert(buf, dst, n); }
template <typename T>
inline void from_acc(const T* /*buf*/, T* /*dst*/, int64_t /*n*/) {}

template <typename T>
T reduce_sum(const Vectorized<T>& v) {
  return at::vec::vec_reduce_all<T>([](Vectorized<T>& a, Vectorized<T>& b) { return a + b; }, v);
}

// Calls f(j, cnt) over [0, n) in whole vectors and one partial tail.
template <typename T, typename F>
inline void for_vectors(int64_t n, const F& f) {
  constexpr int64_t kV = Vectorized<T>::size();
  int64_t j = 0;
  for (; j + kV <= n; j += kV) f(j, kV);
  if (j < n) f(j, n - j);
}

// Exact moments of a span that sits in L1: the mean, then the squared deviations.
template <typename T>
Welford<T> block_moments(const T* x, int64_t n) {
  using Vec = Vectorized<T>;
  constexpr int64_t kV = Vec::size();
  Vec s0(T(0)), s1(T(0));
  int64_t i = 0;
  for (; i + 2 * kV <= n; i += 2 * kV) {
    s0 = s0 + Vec::loadu(x + i);
    s1 = s1 + Vec::loadu(x + i + kV);
  }
  T sum = reduce_sum(s0 + s1);
  for (; i < n; ++i) sum += x[i];
  const T mean = sum / static_cast<T>(n);
  const Vec vm(mean);
  Vec q0(T(0)), q1(T(0));
  i = 0;
  for (; i + 2 * kV <= n; i += 2 * kV) {
    const Vec d0 = Vec::loadu(x + i) - vm, d1 = Vec::loadu(x + i + kV) - vm;
    q0 = at::vec::fmadd(d0, d0, q0);
    q1 = at::vec::fmadd(d1, d1, q1);
  }
  T m2 = reduce_sum(q0 + q1);
  for (; i < n; ++i) m2 += (x[i] - mean) * (x[i] - mean);
  return Welford<T>{mean, m2, static_cast<T>(n)};
}

// The activation on a vector (NaN propagates through maximum/minimum, as torch's).
template <typename T>
inline Vectorized<T> activate(Vectorized<T> v, BnActivation act) {
  if (act == BnActivation::kNone) return v;
  v = at::vec::maximum(v, Vectorized<T>(T(0)));
  if (act == BnActivation::kRelu6) v = at::vec::minimum(v, Vectorized<T>(T(6)));
  return v;
}

// dy where the gradient passes the activation (bn_grad_passes on lanes), else 0. The
// activation's input is judged from the forward output y or, when y is null, from
// z = x * scale + shift recomputed with the forward's exact arithmetic (apply_span's fmadd):
// the backward then reads one tensor less.
template <typename T>
inline Vectorized<T> mask_grad(const Vectorized<T>& dy, const Vectorized<T>& yv, BnActivation act) {
  using Vec = Vectorized<T>;
  Vec pass = yv > Vec(T(0));
  if (act == BnActivation::kRelu6) pass = pass & (yv < Vec(T(6)));
  return Vec::blendv(Vec(T(0)), dy, pass);
}

// Per-channel values as a scalar (planes) or an array indexed like the span (rows).
template <typename T>
struct PerChannelScalar {
  T v;
  Vectorized<T> at(int64_t, int64_t) const { return Vectorized<T>(v); }
};
template <typename T>
struct PerChannelArray {
  const T* p;
  Vectorized<T> at(int64_t j, int64_t cnt) const { return Vectorized<T>::loadu(p + j, cnt); }
};

// g for lanes [j, j + cnt): dy through the activation's mask (see mask_grad).
template <typename T, typename P>
inline Vectorized<T> masked_grad(const T* dy, const T* x, const T* y, int64_t j, int64_t cnt, const P& scale,
                                 const P& shift, BnActivation act) {
  using Vec = Vectorized<T>;
  const Vec d = Vec::loadu(dy + j, cnt);
  if (act == BnActivation::kNone) return d;
  const Vec yv = y != nullptr ? Vec::loadu(y + j, cnt)
                              : at::vec::fmadd(Vec::loadu(x + j, cnt), scale.at(j, cnt), shift.at(j, cnt));
  return mask_grad(d, yv, act);
}

// y = act(x * scale + shift (+ r)) over a span.
template <typename T, typename P>
inline void apply_span(const T* x, const T* r, T* y, int64_t n, const P& scale, const P& shift,
                       BnActivation act) {
  using Vec = Vectorized<T>;
  for_vectors<T>(n, [&](int64_t j, int64_t cnt) {
    Vec v = at::vec::fmadd(Vec::loadu(x + j, cnt), scale.at(j, cnt), shift.at(j, cnt));
    if (r != nullptr) v = v + Vec::loadu(r + j, cnt);
    activate(v, act).store(y + j, cnt);
  });
}

// dx = g * a - x * b + d and dres = g over a span (either output may be null).
template <typename T, typename P>
inline void grad_span(const T* dy, const T* x, const T* y, T* dx, T* dr, int64_t n, const P& a,
                      const P& b, const P& d, const P& scale, const P& shift, BnActivation act) {
  using Vec = Vectorized<T>;
  for_vectors<T>(n, [&](int64_t j, int64_t cnt) {
    const Vec g = masked_grad(dy, x, y, j, cnt, scale, shift, act);
    if (dx != nullptr) {
      const Vec v = at::vec::fmadd(g, a.at(j, cnt), d.at(j, cnt) - Vec::loadu(x + j, cnt) * b.at(j, cnt));
      v.store(dx + j, cnt);
    }
    if (dr != nullptr) g.store(dr + j, cnt);
  });
}

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}
template <typename T>
T* mut_ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.mutable_data_ptr<T>() : nullptr;
}

// ------------------------------------------------------------------ statistics

template <typename S>
at::Tensor partials_impl(const at::Tensor& x, const BnShape& s) {
  using T = at::opmath_type<S>;
  const int64_t c = s.c, rows = s.n * s.l;
  const S* xp = x.const_data_ptr<S>();
  if (!s.rows) {
    at::Tensor out = at::empty({1, 3, c}, x.options().dtype(bn_stat_dtype(x.scalar_type())));
    T* o = out.mutable_data_ptr<T>();
    const int64_t per_channel = std::max<int64_t>(s.count(), 1);
    // Short planes (ResNet's 7x7) are packed, several per L1 block, so that every block
    // holds about kBlock values: one Chan merge per block, not per plane.
    const int64_t planes_per_block = s.l >= kBlock ? 1 : kBlock / std::max<int64_t>(s.l, 1);
    at::parallel_for(0, c, std::max<int64_t>(1, kElemGrain / per_channel), [&](int64_t c0, int64_t c1) {
      std::vector<T> buf(static_cast<size_t>(kBlock));
      for (int64_t ch = c0; ch < c1; ++ch) {
        Welford<T> tot = welford_init<T>();
        if (planes_per_block == 1) {
          for (int64_t n = 0; n < s.n; ++n) {
            const S* p = xp + (n * c + ch) * s.l;
            for (int64_t j = 0; j < s.l; j += kBlock) {
              const int64_t cnt = std::min(kBlock, s.l - j);
              tot = welford_merge(tot, block_moments(to_acc(p + j, buf.data(), cnt), cnt));
            }
          }
        } else {
          for (int64_t n0 = 0; n0 < s.n; n0 += planes_per_block) {
            const int64_t n1 = std::min(s.n, n0 + planes_per_block);
            for (int64_t n = n0; n < n1; ++n) {
              const S* p = xp + (n * c + ch) * s.l;
              T* dst = buf.data() + (n - n0) * s.l;
              const T* src = to_acc(p, dst, s.l);  // bfloat16: converted into dst
              if (src != dst) std::copy(src, src + s.l, dst);
            }
            if (s.l > 0) tot = welford_merge(tot, block_moments(buf.data(), (n1 - n0) * s.l));
          }
        }
        o[ch] = tot.count;
        o[c + ch] = tot.mean;
        o[2 * c + ch] = tot.m2;
      }
    });
    return out;
  }
  const int64_t chunks = bn_row_chunks(rows, c, kMaxChunks, kChunkElems);
  const int64_t per = (rows + chunks - 1) / chunks;
  at::Tensor out = at::zeros({chunks, 3, c}, x.options().dtype(bn_stat_dtype(x.scalar_type())));
  T* o = out.mutable_data_ptr<T>();
  at::parallel_for(0, chunks, 1, [&](int64_t p0, int64_t p1) {
    std::vector<T> buf(static_cast<size_t>(std::min(kBlock, std::max<int64_t>(c, 1))));
    for (int64_t p = p0; p < p1; ++p) {
      T* cnt_out = o + p * 3 * c;
      T* mean = cnt_out + c;
      T* m2 = mean + c;
      const int64_t r0 = p * per, r1 = std::min(rows, r0 + per);
      // Welford over the chunk's rows, vectorized over the channels (all share one count).
      for (int64_t r = r0; r < r1; ++r) {
        const Vectorized<T> inv(T(1) / static_cast<T>(r - r0 + 1));
        for (int64_t j0 = 0; j0 < c; j0 += kBlock) {
          const int64_t cnt = std::min(kBlock, c - j0);
          const T* a = to_acc(xp + r * c + j0, buf.data(), cnt);
          T* mb = mean + j0;
          T* qb = m2 + j0;
          for_vectors<T>(cnt, [&](int64_t j, int64_t k) {
            const auto v = Vectorized<T>::loadu(a + j, k);
            auto m = Vectorized<T>::loadu(mb + j, k);
            const auto delta = v - m;
            m = at::vec::fmadd(delta, inv, m);
            at::vec::fmadd(delta, v - m, Vectorized<T>::loadu(qb + j, k)).store(qb + j, k);
            m.store(mb + j, k);
          });
        }
      }
      std::fill(cnt_out, cnt_out + c, static_cast<T>(std::max<int64_t>(r1 - r0, 0)));
    }
  });
  return out;
}

template <typename T>
void finalize_impl(const at::Tensor& partials, at::Tensor& merged, const at::Tensor& mean,
                   const at::Tensor& invstd, const at::Tensor& count, const at::Tensor& rm,
                   const at::Tensor& rv, const at::Tensor& nbt, c10::optional<double> momentum,
                   double eps) {
  const int64_t np = partials.size(0), c = partials.size(2);
  const T* in = partials.const_data_ptr<T>();
  T* mg = merged.mutable_data_ptr<T>();
  T* mo = mut_ptr_or_null<T>(mean);
  T* io = mut_ptr_or_null<T>(invstd);
  T* rmp = mut_ptr_or_null<T>(rm);
  T* rvp = mut_ptr_or_null<T>(rv);
  T factor = T(0);
  if (rmp != nullptr) {
    factor = momentum.has_value() ? static_cast<T>(*momentum)
                                  : T(1) / static_cast<T>(*nbt.const_data_ptr<int64_t>());
  }
  T total = T(0);
  for (int64_t ch = 0; ch < c; ++ch) {
    Welford<T> w = welford_init<T>();
    for (int64_t p = 0; p < np; ++p) {
      const T* q = in + p * 3 * c;
      w = welford_merge(w, Welford<T>{q[c + ch], q[2 * c + ch], q[ch]});
    }
    mg[ch] = w.count;
    mg[c + ch] = w.mean;
    mg[2 * c + ch] = w.m2;
    if (ch == 0) total = w.count;
    if (mo != nullptr) {
      mo[ch] = w.mean;
      io[ch] = bn_invstd(welford_var(w), static_cast<T>(eps));
    }
    if (rmp != nullptr && w.count > T(0)) {
      rmp[ch] = bn_running_update(rmp[ch], w.mean, factor);
      rvp[ch] = bn_running_update(rvp[ch], bn_unbiased_var(w), factor);
    }
  }
  if (count.defined()) count.mutable_data_ptr<T>()[0] = total;
}

// ------------------------------------------------------------------ elementwise forward

// Per-channel scale and shift of z = x * scale + shift (bn_affine), for the forward and
// for the backward's recomputed activation mask: the same values, so the same z.
template <typename T>
void affine_arrays(const at::Tensor& w, const at::Tensor& b, const at::Tensor& mean, const at::Tensor& invstd,
                   int64_t c, std::vector<T>& scale, std::vector<T>& shift) {
  scale.resize(c);
  shift.resize(c);
  const T* wp = ptr_or_null<T>(w);
  const T* bp = ptr_or_null<T>(b);
  const T* mp = mean.const_data_ptr<T>();
  const T* ip = invstd.const_data_ptr<T>();
  for (int64_t ch = 0; ch < c; ++ch) {
    const BnAffine<T> af = bn_affine(mp[ch], ip[ch], wp ? wp[ch] : T(1), bp ? bp[ch] : T(0));
    scale[ch] = af.scale;
    shift[ch] = af.shift;
  }
}

template <typename S>
void elemt_impl(const at::Tensor& x, const BnShape& s, const at::Tensor& w, const at::Tensor& b,
                const at::Tensor& mean, const at::Tensor& invstd, const at::Tensor& res,
                BnActivation act, at::Tensor& out) {
  using T = at::opmath_type<S>;
  const int64_t c = s.c;
  std::vector<T> scale, shift;
  affine_arrays(w, b, mean, invstd, c, scale, shift);
  const S* xp = x.const_data_ptr<S>();
  const S* rp = ptr_or_null<S>(res);
  S* op = out.mutable_data_ptr<S>();
  // A span of one plane (len = L) or one row (len = C), converted per L1 block.
  auto span = [&](int64_t base, int64_t len, int64_t ch, T* xb, T* rb, T* ob) {
    for (int64_t j0 = 0; j0 < len; j0 += kBlock) {
      const int64_t cnt = std::min(kBlock, len - j0);
      const T* xa = to_acc(xp + base + j0, xb, cnt);
      const T* ra = rp != nullptr ? to_acc(rp + base + j0, rb, cnt) : nullptr;
      T* oa = out_acc(op + base + j0, ob);
      if (ch >= 0) {
        apply_span(xa, ra, oa, cnt, PerChannelScalar<T>{scale[ch]}, PerChannelScalar<T>{shift[ch]}, act);
      } else {
        apply_span(xa, ra, oa, cnt, PerChannelArray<T>{scale.data() + j0},
                   PerChannelArray<T>{shift.data() + j0}, act);
      }
      from_acc(oa, op + base + j0, cnt);
    }
  };
  const int64_t units = s.rows ? s.n * s.l : s.n * c;
  const int64_t len = s.rows ? c : s.l;
  at::parallel_for(0, units, std::max<int64_t>(1, kElemGrain / std::max<int64_t>(len, 1)),
                   [&](int64_t u0, int64_t u1) {
    const size_t bl = static_cast<size_t>(std::min(kBlock, len));
    std::vector<T> xb(bl), rb(bl), ob(bl);
    for (int64_t u = u0; u < u1; ++u) span(u * len, len, s.rows ? -1 : u % c, xb.data(), rb.data(), ob.data());
  });
}

// ------------------------------------------------------------------ backward

// Sums of g and g * (x - mean) over a span into the accumulators (vectors or arrays).
template <typename T>
inline void reduce_span_scalar(const T* dy, const T* x, const T* y, int64_t n, T mean, T scale, T shift,
                               BnActivation act, Vectorized<T>& sg, Vectorized<T>& sgx) {
  using Vec = Vectorized<T>;
  const Vec vm(mean);
  const PerChannelScalar<T> sc{scale}, sh{shift};
  for_vectors<T>(n, [&](int64_t j, int64_t cnt) {
    const Vec g = masked_grad(dy, x, y, j, cnt, sc, sh, act);
    sg = sg + g;  // lanes past cnt load as zero and add nothing
    sgx = at::vec::fmadd(g, Vec::loadu(x + j, cnt) - vm, sgx);
  });
}

template <typename T>
inline void reduce_span_array(const T* dy, const T* x, const T* y, int64_t n, const T* mean, const T* scale,
                              const T* shift, BnActivation act, T* sg, T* sgx) {
  using Vec = Vectorized<T>;
  const PerChannelArray<T> sc{scale}, sh{shift};
  for_vectors<T>(n, [&](int64_t j, int64_t cnt) {
    const Vec g = masked_grad(dy, x, y, j, cnt, sc, sh, act);
    (Vec::loadu(sg + j, cnt) + g).store(sg + j, cnt);
    at::vec::fmadd(g, Vec::loadu(x + j, cnt) - Vec::loadu(mean + j, cnt), Vec::loadu(sgx + j, cnt))
        .store(sgx + j, cnt);
  });
}

template <typename S>
void reduce_impl(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& y, const BnShape& s,
                 const at::Tensor& w, const at::Tensor& b, const at::Tensor& mean, const at::Tensor& invstd,
                 BnActivation act, at::Tensor& sum_dy, at::Tensor& sum_dy_xmu, at::Tensor& grad_weight) {
  using T = at::opmath_type<S>;
  const int64_t c = s.c, rows = s.n * s.l;
  std::vector<T> scale, shift;
  affine_arrays(w, b, mean, invstd, c, scale, shift);
  const S* dyp = dy.const_data_ptr<S>();
  const S* xp = x.const_data_ptr<S>();
  const S* yp = ptr_or_null<S>(y);
  const T* mp = mean.const_data_ptr<T>();
  const T* ip = invstd.const_data_ptr<T>();
  T* sgo = sum_dy.mutable_data_ptr<T>();
  T* sxo = sum_dy_xmu.mutable_data_ptr<T>();
  T* gwo = grad_weight.mutable_data_ptr<T>();
  if (!s.rows) {
    const int64_t per_channel = std::max<int64_t>(s.count(), 1);
    at::parallel_for(0, c, std::max<int64_t>(1, kElemGrain / per_channel), [&](int64_t c0, int64_t c1) {
      const size_t bl = static_cast<size_t>(std::min(kBlock, std::max<int64_t>(s.l, 1)));
      std::vector<T> db(bl), xb(bl), yb(bl);
      for (int64_t ch = c0; ch < c1; ++ch) {
        Vectorized<T> sg(T(0)), sgx(T(0));
        for (int64_t n = 0; n < s.n; ++n) {
          const int64_t base = (n * c + ch) * s.l;
          for (int64_t j = 0; j < s.l; j += kBlock) {
            const int64_t cnt = std::min(kBlock, s.l - j);
            reduce_span_scalar(to_acc(dyp + base + j, db.data(), cnt), to_acc(xp + base + j, xb.data(), cnt),
                               yp != nullptr ? to_acc(yp + base + j, yb.data(), cnt) : nullptr, cnt, mp[ch],
                               scale[ch], shift[ch], act, sg, sgx);
          }
        }
        sgo[ch] = reduce_sum(sg);
        sxo[ch] = reduce_sum(sgx);
        gwo[ch] = sxo[ch] * ip[ch];
      }
    });
    return;
  }
  const int64_t chunks = bn_row_chunks(rows, c, kMaxChunks, kChunkElems);
  const int64_t per = (rows + chunks - 1) / chunks;
  std::vector<T> part(static_cast<size_t>(chunks * 2 * c), T(0));
  at::parallel_for(0, chunks, 1, [&](int64_t p0, int64_t p1) {
    const size_t bl = static_cast<size_t>(std::min(kBlock, std::max<int64_t>(c, 1)));
    std::vector<T> db(bl), xb(bl), yb(bl);
    for (int64_t p = p0; p < p1; ++p) {
      T* sg = part.data() + p * 2 * c;
      T* sgx = sg + c;
      for (int64_t r = p * per; r < std::min(rows, (p + 1) * per); ++r) {
        for (int64_t j0 = 0; j0 < c; j0 += kBlock) {
          const int64_t cnt = std::min(kBlock, c - j0), base = r * c + j0;
          reduce_span_array(to_acc(dyp + base, db.data(), cnt), to_acc(xp + base, xb.data(), cnt),
                            yp != nullptr ? to_acc(yp + base, yb.data(), cnt) : nullptr, cnt, mp + j0,
                            scale.data() + j0, shift.data() + j0, act, sg + j0, sgx + j0);
        }
      }
    }
  });
  for (int64_t ch = 0; ch < c; ++ch) {  // chunk order: reproducible
    T a = T(0), b = T(0);
    for (int64_t p = 0; p < chunks; ++p) {
      a += part[p * 2 * c + ch];
      b += part[p * 2 * c + c + ch];
    }
    sgo[ch] = a;
    sxo[ch] = b;
    gwo[ch] = b * ip[ch];
  }
}

template <typename S>
void grad_elemt_impl(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& y, const BnShape& s,
                     const at::Tensor& w, const at::Tensor& b, const at::Tensor& mean, const at::Tensor& invstd,
                     const at::Tensor& sum_dy, const at::Tensor& sum_dy_xmu, const at::Tensor& count_t,
                     double count, bool training, BnActivation act, const at::Tensor& gi,
                     const at::Tensor& gr) {
  using T = at::opmath_type<S>;
  const int64_t c = s.c;
  const T cnt_total = count_t.defined() ? count_t.const_data_ptr<T>()[0] : static_cast<T>(count);
  std::vector<T> ca(c), cb(c), cd(c), scale, shift;
  affine_arrays(w, b, mean, invstd, c, scale, shift);
  const T* wp = ptr_or_null<T>(w);
  const T* mp = mean.const_data_ptr<T>();
  const T* ip = invstd.const_data_ptr<T>();
  const T* sgp = sum_dy.const_data_ptr<T>();
  const T* sxp = sum_dy_xmu.const_data_ptr<T>();
  for (int64_t ch = 0; ch < c; ++ch) {
    const BnGradCoeffs<T> k =
        bn_grad_coeffs(mp[ch], ip[ch], wp ? wp[ch] : T(1), sgp[ch], sxp[ch], cnt_total, training);
    ca[ch] = k.a;
    cb[ch] = k.b;
    cd[ch] = k.d;
  }
  const S* dyp = dy.const_data_ptr<S>();
  const S* xp = x.const_data_ptr<S>();
  const S* yp = ptr_or_null<S>(y);
  S* dxp = mut_ptr_or_null<S>(gi);
  S* drp = mut_ptr_or_null<S>(gr);
  const int64_t units = s.rows ? s.n * s.l : s.n * c;
  const int64_t len = s.rows ? c : s.l;
  at::parallel_for(0, units, std::max<int64_t>(1, kElemGrain / std::max<int64_t>(len, 1)),
                   [&](int64_t u0, int64_t u1) {
    const size_t bl = static_cast<size_t>(std::min(kBlock, len));
    std::vector<T> db(bl), xb(bl), yb(bl), ob(bl), rb(bl);
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t base = u * len;
      for (int64_t j0 = 0; j0 < len; j0 += kBlock) {
        const int64_t cnt = std::min(kBlock, len - j0), at_ = base + j0;
        const T* da = to_acc(dyp + at_, db.data(), cnt);
        const T* xa = to_acc(xp + at_, xb.data(), cnt);
        const T* ya = yp != nullptr ? to_acc(yp + at_, yb.data(), cnt) : nullptr;
        T* oa = dxp != nullptr ? out_acc(dxp + at_, ob.data()) : nullptr;
        T* ra = drp != nullptr ? out_acc(drp + at_, rb.data()) : nullptr;
        if (!s.rows) {
          const int64_t ch = u % c;
          grad_span(da, xa, ya, oa, ra, cnt, PerChannelScalar<T>{ca[ch]}, PerChannelScalar<T>{cb[ch]},
                    PerChannelScalar<T>{cd[ch]}, PerChannelScalar<T>{scale[ch]}, PerChannelScalar<T>{shift[ch]}, act);
        } else {
          grad_span(da, xa, ya, oa, ra, cnt, PerChannelArray<T>{ca.data() + j0},
                    PerChannelArray<T>{cb.data() + j0}, PerChannelArray<T>{cd.data() + j0},
                    PerChannelArray<T>{scale.data() + j0}, PerChannelArray<T>{shift.data() + j0}, act);
        }
        if (oa != nullptr) from_acc(oa, dxp + at_, cnt);
        if (ra != nullptr) from_acc(ra, drp + at_, cnt);
      }
    }
  });
}

// ------------------------------------------------------------------ the kernel set

#define CNNOPS_BN_DISPATCH(t, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, t.scalar_type(), name, __VA_ARGS__)

struct CpuKernels {
  static constexpr bool kHalfOk = false;

  static at::Tensor partials(const at::Tensor& x, const BnShape& s) {
    at::Tensor out;
    CNNOPS_BN_DISPATCH(x, "cnnops_batch_norm_partials", [&] { out = partials_impl<scalar_t>(x, s); });
    return out;
  }

  static void finalize(const at::Tensor& partials, at::Tensor merged, const at::Tensor& mean,
                       const at::Tensor& invstd, const at::Tensor& count, const at::Tensor& rm,
                       const at::Tensor& rv, const at::Tensor& nbt, c10::optional<double> momentum,
                       double eps) {
    if (partials.scalar_type() == at::kDouble) {
      finalize_impl<double>(partials, merged, mean, invstd, count, rm, rv, nbt, momentum, eps);
    } else {
      finalize_impl<float>(partials, merged, mean, invstd, count, rm, rv, nbt, momentum, eps);
    }
  }

  static void eval_stats(const at::Tensor& rm, const at::Tensor& rv, at::Tensor& mean,
                         at::Tensor& invstd, double eps) {
    AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "cnnops_batch_norm_eval_stats", [&] {
      const scalar_t* m = rm.const_data_ptr<scalar_t>();
      const scalar_t* v = rv.const_data_ptr<scalar_t>();
      scalar_t* mo = mean.mutable_data_ptr<scalar_t>();
      scalar_t* io = invstd.mutable_data_ptr<scalar_t>();
      for (int64_t ch = 0; ch < mean.numel(); ++ch) {
        mo[ch] = m[ch];
        io[ch] = bn_invstd(v[ch], static_cast<scalar_t>(eps));
      }
    });
  }

  static void elemt(const at::Tensor& x, const BnShape& s, const at::Tensor& w, const at::Tensor& b,
                    const at::Tensor& mean, const at::Tensor& invstd, const at::Tensor& res,
                    BnActivation act, at::Tensor& out) {
    CNNOPS_BN_DISPATCH(x, "cnnops_batch_norm_elemt",
                       [&] { elemt_impl<scalar_t>(x, s, w, b, mean, invstd, res, act, out); });
  }

  static void reduce(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& y, const BnShape& s,
                     const at::Tensor& w, const at::Tensor& b, const at::Tensor& mean, const at::Tensor& invstd,
                     BnActivation act, at::Tensor& sum_dy, at::Tensor& sum_dy_xmu, at::Tensor& grad_weight) {
    CNNOPS_BN_DISPATCH(x, "cnnops_batch_norm_reduce", [&] {
      reduce_impl<scalar_t>(dy, x, y, s, w, b, mean, invstd, act, sum_dy, sum_dy_xmu, grad_weight);
    });
  }

  static void grad_elemt(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& y, const BnShape& s,
                         const at::Tensor& w, const at::Tensor& b, const at::Tensor& mean, const at::Tensor& invstd,
                         const at::Tensor& sum_dy, const at::Tensor& sum_dy_xmu, const at::Tensor& count_t,
                         double count, bool training, BnActivation act, const at::Tensor& gi,
                         const at::Tensor& gr) {
    CNNOPS_BN_DISPATCH(x, "cnnops_batch_norm_grad_elemt", [&] {
      grad_elemt_impl<scalar_t>(dy, x, y, s, w, b, mean, invstd, sum_dy, sum_dy_xmu, count_t, count, training,
                                act, gi, gr);
    });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(cnnops, CPU, m) {
  m.impl("batch_norm", &bn_forward<CpuKernels>);
  m.impl("batch_norm_backward", &bn_backward<CpuKernels>);
  m.impl("batch_norm_stats", &bn_stats<CpuKernels>);
  m.impl("batch_norm_gather_stats", &bn_gather_stats<CpuKernels>);
  m.impl("batch_norm_elemt", &bn_elemt<CpuKernels>);
  m.impl("batch_norm_backward_reduce", &bn_backward_reduce<CpuKernels>);
  m.impl("batch_norm_backward_elemt", &bn_backward_elemt<CpuKernels>);
}

}  // namespace cnnops
