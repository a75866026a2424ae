#pragma once
// Transposes between channel runs and V-lane pixel vectors, for the channel-blocked
// depthwise kernels: V planes of an NCHW tensor are staged as [pixel][V channels] and the
// results go back the same way. A scalar loop per element cost more than the FMAs of a 3x3
// kernel; the AVX-512 float version moves 16 x 16 values with 64 in-register shuffles, the
// AVX2 one 8 x 8 with 24 (AVX2 AMD EPYC, 2 threads, best of 5-6 alternating runs against the
// scalar loops: NCHW 8x768x7x7 7x7 forward 0.33 -> 0.27 ms, torch 0.35; forward+backward
// 8x144x56x56 3x3 stride 2 5.15 -> 4.00 ms, 8x960x7x7 3x3 1.09 -> 0.85, torch 6.26 and 1.25).
#include <ATen/cpu/vec/vec.h>

#include <cstdint>

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

#include <algorithm>

namespace cnnops {

#if defined(CPU_CAPABILITY_AVX512)
// GCC 12's unpack intrinsics pass an undefined vector as the (unused) merge source, and
// -Wmaybe-uninitialized reports it once per inlined call.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
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

// A maskload mask of the first n of 8 lanes (the loads do not touch the others).
inline __m256i first_of_8(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
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

#if defined(CPU_CAPABILITY_AVX512)
template <>
inline void runs_to_pixels<float>(const float* const* src, int64_t count, float* const* dst) {
  __m512 r[16];
  const __mmask16 m = static_cast<__mmask16>((1u << count) - 1u);
  for (int l = 0; l < 16; ++l) r[l] = count == 16 ? _mm512_loadu_ps(src[l]) : _mm512_maskz_loadu_ps(m, src[l]);
  transpose16x16(r);
  for (int64_t i = 0; i < count; ++i) _mm512_storeu_ps(dst[i], r[i]);
}

template <>
inline void pixels_to_runs<float>(const float* src, int64_t count, int64_t lanes, float* const* dst) {
  __m512 r[16];
  for (int64_t i = 0; i < 16; ++i) r[i] = i < count ? _mm512_loadu_ps(src + i * 16) : _mm512_setzero_ps();
  transpose16x16(r);
  const __mmask16 m = static_cast<__mmask16>((1u << count) - 1u);
  for (int64_t l = 0; l < lanes; ++l) {
    if (count == 16) _mm512_storeu_ps(dst[l], r[l]);
    else _mm512_mask_storeu_ps(dst[l], m, r[l]);
  }
}
#endif

#if defined(CPU_CAPABILITY_AVX2)
template <>
inline void runs_to_pixels<float>(const float* const* src, int64_t count, float* const* dst) {
  __m256 r[8];
  const __m256i m = first_of_8(count);
  for (int l = 0; l < 8; ++l) r[l] = count == 8 ? _mm256_loadu_ps(src[l]) : _mm256_maskload_ps(src[l], m);
  transpose8x8(r);
  for (int64_t i = 0; i < count; ++i) _mm256_storeu_ps(dst[i], r[i]);
}

template <>
inline void pixels_to_runs<float>(const float* src, int64_t count, int64_t lanes, float* const* dst) {
  __m256 r[8];
  for (int64_t i = 0; i < 8; ++i) r[i] = i < count ? _mm256_loadu_ps(src + i * 8) : _mm256_setzero_ps();
  transpose8x8(r);
  for (int64_t l = 0; l < lanes; ++l) {
    if (count == 8) {
      _mm256_storeu_ps(dst[l], r[l]);
    } else {  // plain stores: vmaskmovps stores are slow on AMD
      alignas(32) float run[8];
      _mm256_store_ps(run, r[l]);
      std::copy(run, run + count, dst[l]);
    }
  }
}
#endif

}  // namespace cnnops
