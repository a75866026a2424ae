#pragma once
// One float vector per SIMD build (Lanes: 16 lanes and 32 registers on AVX-512, 8 and 16
// on AVX2), its operations for the CPU depthwise kernels, and transposes between channel
// runs and V-lane pixel vectors: the channel-blocked depthwise kernels stage V planes of an
// NCHW tensor as [pixel][V channels] and write the results back the same way. A scalar
// loop per element cost more than the FMAs of a 3x3 kernel; the AVX-512 float version
// moves 16 x 16 values with 64 in-register shuffles, the AVX2 one 8 x 8 with 24 (AVX2 AMD
// EPYC, 2 threads, best of 5-6 alternating runs against the scalar loops: NCHW 8x768x7x7
// 7x7 forward 0.33 -> 0.27 ms, torch 0.35; forward+backward 8x144x56x56 3x3 stride 2 5.15
// -> 4.00 ms, 8x960x7x7 3x3 1.09 -> 0.85, torch 6.26 and 1.25).
#include <ATen/cpu/vec/vec.h>

#include <cstdint>

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#define CNNOPS_HAVE_LANES 1
#endif

namespace cnnops {

#if defined(CPU_CAPABILITY_AVX512)
// The first min(n, 16) lanes of a float vector: the channels of a vector from c are
// first_lanes(channels - c).
inline __mmask16 first_lanes(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1u); }

// GCC 12's unpack intrinsics pass an undefined vector as the (unused) merge source, and
// -W(maybe-)uninitialized reports it once per inlined call.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
// r[l] = 16 values of row l on entry, r[j] = column j on exit. Unpacks within 128-bit lanes
// (pairs, then quads), then two rounds of 128-bit lane shuffles.
inline void transpose16x16(__m512 r[16]) {
  __m512 a[16];
  for (int i = 0; i < 8; ++i) {
    a[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    a[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  __m512 b[16];  // b[4i + m], 128-bit lane k: rows 4i..4i+3 of column 4k + m
  for (int i = 0; i < 4; ++i) {
    const __m512d x0 = _mm512_castps_pd(a[4 * i]), x1 = _mm512_castps_pd(a[4 * i + 1]);
    const __m512d x2 = _mm512_castps_pd(a[4 * i + 2]), x3 = _mm512_castps_pd(a[4 * i + 3]);
    b[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(x0, x2));
    b[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(x0, x2));
    b[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(x1, x3));
    b[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(x1, x3));
  }
  for (int m = 0; m < 4; ++m) {
    const __m512 d0 = _mm512_shuffle_f32x4(b[m], b[4 + m], 0x88), d1 = _mm512_shuffle_f32x4(b[m], b[4 + m], 0xDD);
    const __m512 e0 = _mm512_shuffle_f32x4(b[8 + m], b[12 + m], 0x88);
    const __m512 e1 = _mm512_shuffle_f32x4(b[8 + m], b[12 + m], 0xDD);
    r[m] = _mm512_shuffle_f32x4(d0, e0, 0x88);
    r[4 + m] = _mm512_shuffle_f32x4(d1, e1, 0x88);
    r[8 + m] = _mm512_shuffle_f32x4(d0, e0, 0xDD);
    r[12 + m] = _mm512_shuffle_f32x4(d1, e1, 0xDD);
  }
}
#pragma GCC diagnostic pop
#endif

#if defined(CPU_CAPABILITY_AVX2)
// r[l] = 8 values of row l on entry, r[j] = column j on exit. Unpacks within 128-bit lanes
// (pairs, then quads: column j of rows 0-3 beside column j + 4), then one 128-bit swap.
inline void transpose8x8(__m256 r[8]) {
  __m256 a[8], b[8];
  for (int i = 0; i < 4; ++i) {
    a[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    a[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int h = 0; h < 2; ++h) {  // b[4h + j], lane k: rows 4h..4h+3 of column j + 4k
    b[4 * h] = _mm256_shuffle_ps(a[4 * h], a[4 * h + 2], 0x44);
    b[4 * h + 1] = _mm256_shuffle_ps(a[4 * h], a[4 * h + 2], 0xEE);
    b[4 * h + 2] = _mm256_shuffle_ps(a[4 * h + 1], a[4 * h + 3], 0x44);
    b[4 * h + 3] = _mm256_shuffle_ps(a[4 * h + 1], a[4 * h + 3], 0xEE);
  }
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm256_permute2f128_ps(b[j], b[4 + j], 0x20);
    r[4 + j] = _mm256_permute2f128_ps(b[j], b[4 + j], 0x31);
  }
}
#endif

#if defined(CPU_CAPABILITY_AVX512)
// One float vector of the depthwise Lanes kernels (direct 3x3, staged K x K, channels_last rows),
// with lane masks for loads at the edges of a row or past the last channel (masked lanes
// are not read: no fault past them) and store_first for a last, partial vector.
struct Lanes {
  using Reg = __m512;
  using Mask = __mmask16;
  static constexpr int kWidth = 16, kRegisters = 32;
  static Mask mask(unsigned bits) { return static_cast<Mask>(bits); }
  static Reg broadcast(float x) { return _mm512_set1_ps(x); }
  static Reg load(const float* p) { return _mm512_loadu_ps(p); }
  static Reg load(Mask m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
  static void store(float* p, Reg x) { _mm512_storeu_ps(p, x); }
  static void store_first(float* p, int n, Reg x) { _mm512_mask_storeu_ps(p, first_lanes(n), x); }
  static Reg fmadd(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
  // Lanes 0, 2, .., 30 of lo:hi (the columns a stride-2 row reads), in order: one
  // two-source permute, so in_order has nothing left to do.
  static Reg even_lanes(Reg lo, Reg hi) {
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    return _mm512_permutex2var_ps(lo, even, hi);
  }
  static Reg in_order(Reg x) { return x; }
  // r[l] = row l on entry, r[j] = column j on exit.
  static void transpose(Reg r[kWidth]) { transpose16x16(r); }
};
#elif defined(CPU_CAPABILITY_AVX2)
// AVX2: 8 lanes, 16 registers; a mask is a vector whose lanes are all ones or all zeros
// (wrapped: std::vector would drop the vector type's attributes).
struct Lanes {
  using Reg = __m256;
  struct Mask {
    __m256i lanes;
  };
  static constexpr int kWidth = 8, kRegisters = 16;
  static Mask mask(unsigned bits) {
    const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    return {_mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(static_cast<int>(bits)), lane_bit), lane_bit)};
  }
  static Reg broadcast(float x) { return _mm256_set1_ps(x); }
  static Reg load(const float* p) { return _mm256_loadu_ps(p); }
  static Reg load(Mask m, const float* p) { return _mm256_maskload_ps(p, m.lanes); }
  static void store(float* p, Reg x) { _mm256_storeu_ps(p, x); }
  // Lanes 0..n-1 (n < 8) in at most three plain stores: vmaskmovps stores measured several
  // times slower than a whole vector's on this AMD EPYC.
  static void store_first(float* p, int n, Reg x) {
    __m128 part = _mm256_castps256_ps128(x);
    if (n >= 4) {
      _mm_storeu_ps(p, part);
      part = _mm256_extractf128_ps(x, 1);
      p += 4;
      n -= 4;
    }
    if (n >= 2) {
      _mm_storel_pi(reinterpret_cast<__m64*>(p), part);
      part = _mm_movehl_ps(part, part);
      p += 2;
      n -= 2;
    }
    if (n == 1) _mm_store_ss(p, part);
  }
  static Reg fmadd(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
  // Lanes 0, 2, .., 14 of lo:hi, as (0 2 8 10 | 4 6 12 14): one in-lane shuffle. Sums of
  // such vectors keep that order; in_order swaps their middle 64-bit halves, once a sum
  // (lane-crossing permutes were half the shuffles of a stride-2 3x3 done per load).
  static Reg even_lanes(Reg lo, Reg hi) { return _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0)); }
  static Reg in_order(Reg x) {
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(x), _MM_SHUFFLE(3, 1, 2, 0)));
  }
  static void transpose(Reg r[kWidth]) { transpose8x8(r); }
};
#endif

// Pixel vectors from channel runs: dst[i][l] = src[l][i] for i < count, l < V (count <= V).
template <typename T>
inline void runs_to_pixels(const T* const* src, int64_t count, T* const* dst) {
  constexpr int64_t V = at::vec::Vectorized<T>::size();
  for (int64_t i = 0; i < count; ++i)
    for (int64_t l = 0; l < V; ++l) dst[i][l] = src[l][i];
}

// Channel runs from contiguous pixel vectors: dst[l][i] = src[i * V + l] for i < count,
// l < lanes (count <= V; the other lanes are not written).
template <typename T>
inline void pixels_to_runs(const T* src, int64_t count, int64_t lanes, T* const* dst) {
  constexpr int64_t V = at::vec::Vectorized<T>::size();
  for (int64_t l = 0; l < lanes; ++l)
    for (int64_t i = 0; i < count; ++i) dst[l][i] = src[i * V + l];
}

#if defined(CNNOPS_HAVE_LANES)
template <>
inline void runs_to_pixels<float>(const float* const* src, int64_t count, float* const* dst) {
  Lanes::Reg r[Lanes::kWidth];
  const Lanes::Mask m = Lanes::mask((1u << count) - 1u);
  for (int l = 0; l < Lanes::kWidth; ++l) r[l] = count == Lanes::kWidth ? Lanes::load(src[l]) : Lanes::load(m, src[l]);
  Lanes::transpose(r);
  for (int64_t i = 0; i < count; ++i) Lanes::store(dst[i], r[i]);
}

template <>
inline void pixels_to_runs<float>(const float* src, int64_t count, int64_t lanes, float* const* dst) {
  Lanes::Reg r[Lanes::kWidth];
  for (int64_t i = 0; i < Lanes::kWidth; ++i) r[i] = i < count ? Lanes::load(src + i * Lanes::kWidth) : Lanes::broadcast(0.f);
  Lanes::transpose(r);
  for (int64_t l = 0; l < lanes; ++l) {
    if (count == Lanes::kWidth) Lanes::store(dst[l], r[l]);
    else Lanes::store_first(dst[l], static_cast<int>(count), r[l]);
  }
}
#endif

}  // namespace cnnops
