// Depthwise convolution on the CPU: direct kernels on at::vec::Vectorized, no GEMM.
//
// Forward, AVX-512 and AVX2 builds, zero-padded float32 NCHW rows: direct 3x3 (vectors
// along W read straight from the input rows, masked at the padding), staged K x K for
// K = 5 and 7 at stride 1 (each plane copied into a zero-bordered scratch plane, tiles of
// output rows with a kernel column's weights in registers), both written once over Lanes
// (16 lanes and 32 registers, or 8 and 16); and, AVX-512 only, shifted rows for 14-row
// "same" planes of at most 16 columns (each row one register, its column shifts made in
// registers) and flat planes for 3x3 "same" on planes of at most 64 pixels (16 pixels a
// vector whatever their rows, each tap a shift of them in registers or a masked load).
// Sections "direct 3x3", "staged direct K x K", "shifted rows" and "flat planes".
//
// Channel-blocked kernels (every other forward but the channels_last case below, and
// grad_weight): V consecutive output channels of one image are one task. Their input
// rows are staged, padded by every mode through padded_map(), as [padded row][padded
// column][V lanes], so that each FMA updates V channels of one pixel with an aligned load
// and no bounds check; large planes go in strips of rows that stay in L2. NCHW float/double
// planes are staged, and results written back, with in-register transposes
// (lanes.h).
//   forward:     register-blocked over 8 output pixels of a row; kernel rows that fall in
//                zero padding are skipped (with run-time kernel widths, kernel columns too).
//   grad_weight: grad_output rows staged the same way, each of its vectors loaded once
//                for up to 16 taps; per-image partials summed over images in order (fixed
//                partition: bitwise reproducible with any thread count).
//   grad_input:  stride 1, zero padding, multiplier 1: the forward of grad_output with the
//                kernel flipped. Stride > 1 (zero padding, multiplier 1, NCHW): a
//                channel-blocked gather per column phase. Otherwise a gather (depthwise
//                transposed conv) of staged grad_output rows into the padded frame,
//                folded onto the input by the padding map, with the columns split into
//                `stride_w` phases so that every tap is a contiguous run (vectors along W);
//                or channel-blocked for small planes.
// channels_last (multiplier 1, channel stride 1): vectors along C, with the
// tap enumeration of common/depthwise_index.h (source_index / padded_preimages); interior
// pixels of the forward four at a time with fixed tap offsets (outputs larger than the
// threads' L2 caches written with streaming stores; 3x3 inputs over 16 MB one pixel at a
// time, every channel, so that the input is read in address order), or, for float32 5x5 and 7x7
// kernels at column stride 1 or 2, or stride 1 and dilation 2, and 3x3 on rows of up to 8
// (AVX-512; AVX2: 7x7, and 5x5 on rows of up to 8), a row kernel with a kernel row's
// weights in registers and each input vector loaded once for the outputs that read it.
// grad_input: a gather whose regular pixels go through the forward's quads, per residue
// class mod stride. The float32 3x3 grad_weight (zero padding, column stride 1 or 2,
// AVX-512) keeps a window of input pixels per kernel row in registers; on rows wider than
// 32 a task takes every channel of its rows (each input cache line read whole). Kernels
// of 9x9 and more at stride 1 run the NCHW kernels on NCHW copies.
// bfloat16 channels_last (AVX-512): the forward (quads, listed taps and row kernel), the
// input gradient and the 3x3 window kernels' weight gradient read and write bfloat16 in
// place, widened to float in registers; the other weight gradients run the float32
// kernels on float32 copies of a few images at a time. Section "bfloat16
// channels_last".
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#if __has_include(<unistd.h>)
#include <unistd.h>  // sysconf: the L2 cache size
#endif
#include <initializer_list>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/depthwise_checks.h"
#include "common/depthwise_index.h"
#include "common/env_choice.h"
#include "cpu/conv_forward.h"
#include "cpu/lanes.h"
#include "cpu/layout_copy.h"

namespace cnnops {
namespace {

// Work (multiply-adds) below this per task runs on the calling thread: waking the pool costs more.
constexpr int64_t kMinWorkPerTask = 1 << 15;

int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, kMinWorkPerTask / std::max<int64_t>(work_per_item, 1));
}

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Zero-filled scratch starting on a cache line: the channel-blocked kernels load whole
// 64-byte vectors from it, and a vector split across two lines costs two loads.
template <typename T>
class AlignedBuffer {
 public:
  explicit AlignedBuffer(int64_t size) : storage_(size + kLine / sizeof(T), T(0)) {
    const auto addr = reinterpret_cast<std::uintptr_t>(storage_.data());
    data_ = storage_.data() + (round_up(static_cast<int64_t>(addr), kLine) - static_cast<int64_t>(addr)) / sizeof(T);
  }
  // Moving keeps the vector's heap block, so data_ stays valid; a copy would not.
  AlignedBuffer(AlignedBuffer&&) = default;
  AlignedBuffer& operator=(AlignedBuffer&&) = default;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  T* data() { return data_; }
  const T* data() const { return data_; }

 private:
  static constexpr int64_t kLine = 64;
  std::vector<T> storage_;
  T* data_;
};

template <typename T>
struct Tap {
  const T* ptr;
  T w;
};

// out[x + i] = init + sum_t taps[t].w * taps[t].ptr[x + i], for B vectors from x.
template <typename T, int B>
inline void taps_chunk(const Tap<T>* taps, int64_t nt, int64_t x, T init, T* out) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  Vec acc[B];
  for (int b = 0; b < B; ++b) acc[b] = Vec(init);
  for (int64_t t = 0; t < nt; ++t) {
    const Vec wv(taps[t].w);
    const T* p = taps[t].ptr + x;
    for (int b = 0; b < B; ++b) acc[b] = at::vec::fmadd(wv, Vec::loadu(p + b * V), acc[b]);
  }
  for (int b = 0; b < B; ++b) acc[b].store(out + x + b * V);
}

// The same with the tap count fixed at compile time (3x3, 5x5, 7x7 rows: fully unrolled).
template <typename T, int B, int NT>
inline void taps_chunk_fixed(const Tap<T>* taps, int64_t x, T init, T* out) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  Vec acc[B];
  for (int b = 0; b < B; ++b) acc[b] = Vec(init);
#pragma GCC unroll 64
  for (int t = 0; t < NT; ++t) {
    const Vec wv(taps[t].w);
    const T* p = taps[t].ptr + x;
    for (int b = 0; b < B; ++b) acc[b] = at::vec::fmadd(wv, Vec::loadu(p + b * V), acc[b]);
  }
  for (int b = 0; b < B; ++b) acc[b].store(out + x + b * V);
}

// Chunks of 4 vectors while more than 3 remain (the last may end in padding: writers and
// readers have room up to round_up(len, V)), then 1 to 3 vectors.
template <typename T, int NT>
void taps_row_fixed(const Tap<T>* taps, int64_t len, T init, T* out) {
  constexpr int64_t V = at::vec::Vectorized<T>::size();
  int64_t x = 0;
  for (; x + 3 * V < len; x += 4 * V) taps_chunk_fixed<T, 4, NT>(taps, x, init, out);
  switch ((len - x + V - 1) / V) {
    case 3: taps_chunk_fixed<T, 3, NT>(taps, x, init, out); break;
    case 2: taps_chunk_fixed<T, 2, NT>(taps, x, init, out); break;
    case 1: taps_chunk_fixed<T, 1, NT>(taps, x, init, out); break;
    default: break;
  }
}

// out[0, len) = init + sum of the taps. Writes (and the taps read) up to round_up(len, V).
template <typename T>
void taps_row(const Tap<T>* taps, int64_t nt, int64_t len, T init, T* out) {
  switch (nt) {  // the common full rows of 3x3, 5x5 and 7x7 kernels
    case 9: return taps_row_fixed<T, 9>(taps, len, init, out);
    case 25: return taps_row_fixed<T, 25>(taps, len, init, out);
    case 49: return taps_row_fixed<T, 49>(taps, len, init, out);
    default: break;
  }
  constexpr int64_t V = at::vec::Vectorized<T>::size();
  int64_t x = 0;
  for (; x + 3 * V < len; x += 4 * V) taps_chunk<T, 4>(taps, nt, x, init, out);
  switch ((len - x + V - 1) / V) {
    case 3: taps_chunk<T, 3>(taps, nt, x, init, out); break;
    case 2: taps_chunk<T, 2>(taps, nt, x, init, out); break;
    case 1: taps_chunk<T, 1>(taps, nt, x, init, out); break;
    default: break;
  }
}

// The weight (OC, 1, kH, kW) as a contiguous (OC, kH * kW) buffer in T.
template <typename scalar_t, typename T>
std::vector<T> weight_taps(const at::Tensor& weight, const Conv2dGeometry& g) {
  const Strides4d s = strides4d(weight);
  const scalar_t* p = weight.const_data_ptr<scalar_t>();
  const int64_t kk = g.kernel_h * g.kernel_w;
  if (s.w == 1 && s.h == g.kernel_w && s.n == kk) return std::vector<T>(p, p + g.out_channels * kk);
  std::vector<T> w(g.out_channels * kk);
  T* d = w.data();
  for (int64_t oc = 0; oc < g.out_channels; ++oc)
    for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
      const scalar_t* row = p + oc * s.n + kh * s.h;
      for (int64_t kw = 0; kw < g.kernel_w; ++kw) *d++ = static_cast<T>(row[kw * s.w]);
    }
  return w;
}

// The weights of output channels [block * V, block * V + V) as one vector per tap, tap t's
// at dst + t * tap_step, lanes past the last channel zero, so that the channel-blocked
// kernels (tap_step V) and the channels_last ones (tap_step: the padded channel count) load
// a tap's weights for a vector of channels with one aligned load.
template <typename scalar_t, typename T>
void pack_block_weights(const scalar_t* w, const Strides4d& s, const Conv2dGeometry& g, int64_t block, T* dst,
                        int64_t tap_step) {
  constexpr int64_t V = at::vec::Vectorized<T>::size();
  const int64_t kk = g.kernel_h * g.kernel_w, oc0 = block * V, lanes = std::min(V, g.out_channels - oc0);
  if constexpr (std::is_same<scalar_t, T>::value) {
    if (s.w == 1 && s.h == g.kernel_w) {  // each channel's taps are one run: the transposes
      static const T zeros[V] = {};
      const T* src[V];
      T* dsts[V];
      for (int64_t l = 0; l < V; ++l) src[l] = l < lanes ? w + (oc0 + l) * s.n : zeros;
      for (int64_t t = 0; t < kk; t += V) {
        const int64_t count = std::min(V, kk - t);
        for (int64_t i = 0; i < count; ++i) dsts[i] = dst + (t + i) * tap_step;
        runs_to_pixels(src, count, dsts);
        for (int64_t l = 0; l < lanes; ++l) src[l] += count;
      }
      return;
    }
  }
  for (int64_t l = 0; l < V; ++l) {
    T* d = dst + l;
    if (l >= lanes) {
      for (int64_t t = 0; t < kk; ++t) d[t * tap_step] = T(0);
      continue;
    }
    for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
      const scalar_t* row = w + (oc0 + l) * s.n + kh * s.h;
      for (int64_t kw = 0; kw < g.kernel_w; ++kw, d += tap_step) *d = static_cast<T>(row[kw * s.w]);
    }
  }
}

// Every block's weights as above: [block][tap][lane].
template <typename scalar_t, typename T>
AlignedBuffer<T> weight_taps_by_block(const at::Tensor& weight, const Conv2dGeometry& g) {
  constexpr int64_t V = at::vec::Vectorized<T>::size();
  const int64_t kk = g.kernel_h * g.kernel_w, blocks = (g.out_channels + V - 1) / V;
  AlignedBuffer<T> packed(blocks * kk * V);
  const scalar_t* w = weight.const_data_ptr<scalar_t>();
  const Strides4d s = strides4d(weight);
  for (int64_t block = 0; block < blocks; ++block)
    pack_block_weights<scalar_t, T>(w, s, g, block, packed.data() + block * kk * V, V);
  return packed;
}

// The weight transposed to (kH * kW, OC) with OC padded to cpad, a whole number of cache
// lines: the channels_last kernels load one tap's weights for consecutive channels as one
// vector, aligned (with a std::vector's 16-byte alignment every such load could split two
// cache lines). In 16 x 16 transposes where the build has them: an element at a time, each
// to another cache line, this took a fifth of a channels_last 8x768x7x7 7x7 forward.
template <typename scalar_t, typename T>
AlignedBuffer<T> weight_taps_by_channel(const at::Tensor& weight, const Conv2dGeometry& g, int64_t cpad) {
  constexpr int64_t V = at::vec::Vectorized<T>::size();
  AlignedBuffer<T> taps(g.kernel_h * g.kernel_w * cpad);  // zero: the channels past OC stay so
  const scalar_t* w = weight.const_data_ptr<scalar_t>();
  const Strides4d s = strides4d(weight);
  for (int64_t block = 0; block * V < g.out_channels; ++block)
    pack_block_weights<scalar_t, T>(w, s, g, block, taps.data() + block * V, cpad);
  return taps;
}

// The bias of `channels` output channels in T, zero-padded to `size` values (zeros without one).
template <typename scalar_t, typename T>
std::vector<T> bias_values(const at::Tensor* bias, int64_t channels, int64_t size) {
  std::vector<T> b(size, T(0));
  if (bias != nullptr) {
    const at::Tensor bc = bias->contiguous();
    for (int64_t c = 0; c < channels; ++c) b[c] = static_cast<T>(bc.const_data_ptr<scalar_t>()[c]);
  }
  return b;
}

int64_t multiplier(const Conv2dGeometry& g) { return g.out_channels / g.in_channels; }

// channels_last kernels: multiplier 1, T == scalar_t, unit channel stride everywhere.
bool use_channels_last(const Conv2dGeometry& g, bool same_type, std::initializer_list<const at::Tensor*> ts) {
  if (multiplier(g) != 1 || !same_type || g.in_channels < 8) return false;
  for (const at::Tensor* t : ts)
    if (t->stride(1) != 1) return false;
  return true;
}

// ---------------------------------------------------------------- forward

// Output rows / columns whose every kernel tap reads inside the input (no padding map):
// interior_range() of the input shortened by the kernel's reach.
InteriorRange rows_with_taps_inside(const Conv2dGeometry& g) {
  return interior_range(g.out_h, g.in_h - (g.kernel_h - 1) * g.dilation_h, g.stride_h, -g.pad_top);
}

InteriorRange cols_with_taps_inside(const Conv2dGeometry& g) {
  return interior_range(g.out_w, g.in_w - (g.kernel_w - 1) * g.dilation_w, g.stride_w, -g.pad_left);
}

// Offset of tap t = kh * kW + kw from its pixel's first tap, in a tensor with strides s.
std::vector<int64_t> tap_offsets(const Conv2dGeometry& g, const Strides4d& s) {
  std::vector<int64_t> off(g.kernel_h * g.kernel_w);
  for (int64_t kh = 0; kh < g.kernel_h; ++kh)
    for (int64_t kw = 0; kw < g.kernel_w; ++kw)
      off[kh * g.kernel_w + kw] = kh * g.dilation_h * s.h + kw * g.dilation_w * s.w;
  return off;
}

// Vectors of T lanes from storage S: the channels_last forward also reads and writes
// bfloat16 in place (AVX-512), widening to float in registers.
template <typename T>
inline at::vec::Vectorized<T> load_lanes(const T* p) { return at::vec::Vectorized<T>::loadu(p); }
template <typename T>
inline at::vec::Vectorized<T> load_lanes(const T* p, int64_t n) { return at::vec::Vectorized<T>::loadu(p, n); }
template <typename T>
inline void store_lanes(T* p, const at::vec::Vectorized<T>& v) { v.store(p); }
template <typename T>
inline void store_lanes(T* p, const at::vec::Vectorized<T>& v, int64_t n) { v.store(p, n); }

#if defined(CPU_CAPABILITY_AVX512)
// GCC 12's AVX-512 shift, widening and narrowing intrinsics pass an undefined vector as
// the (unused) merge source, and -W(maybe-)uninitialized reports it once per inlined call.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
// bfloat16 is the high half of a float: widening is a shift. Narrowing rounds to nearest
// even, as c10::BFloat16 does (at::vec's cvtfp32_bf16).
inline __m512 widen_bf16(__m256i bits) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16)); }
// Lanes m of 16 from storage S as floats, the others zero (masked: no fault past them).
inline __m512 load_masked(__mmask16 m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
inline __m512 load_masked(__mmask16 m, const at::BFloat16* p) { return widen_bf16(_mm256_maskz_loadu_epi16(m, p)); }
inline at::vec::Vectorized<float> load_lanes(const at::BFloat16* p) {
  return widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline at::vec::Vectorized<float> load_lanes(const at::BFloat16* p, int64_t n) { return load_masked(first_lanes(n), p); }
inline void store_lanes(at::BFloat16* p, const at::vec::Vectorized<float>& v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), at::vec::cvtfp32_bf16(__m512(v)));
}
inline void store_lanes(at::BFloat16* p, const at::vec::Vectorized<float>& v, int64_t n) {
  _mm256_mask_storeu_epi16(p, first_lanes(n), at::vec::cvtfp32_bf16(__m512(v)));
}
// 32 bfloat16 channels (64 bytes) as two float vectors in lane order: unpacking against zero
// puts each value in the high half of a float, one instruction per 16 channels where
// widen_bf16 takes two. `lo` holds channels 0-3, 8-11, 16-19, 24-27, `hi` the others;
// to_lane_order arranges two float vectors of channels 0-15 and 16-31 the same way, and
// store_bf16_pair packs lo and hi back in channel order (packus works 128-bit lane by lane,
// undoing the unpacks), rounded as store_lanes rounds.
inline void load_bf16_pair(const at::BFloat16* p, __m512& lo, __m512& hi) {
  const __m512i x = _mm512_loadu_si512(p), zero = _mm512_setzero_si512();
  lo = _mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, x));
  hi = _mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, x));
}
inline void to_lane_order(__m512 first, __m512 second, __m512& lo, __m512& hi) {
  lo = _mm512_shuffle_f32x4(first, second, _MM_SHUFFLE(2, 0, 2, 0));
  hi = _mm512_shuffle_f32x4(first, second, _MM_SHUFFLE(3, 1, 3, 1));
}
// x rounded to bfloat16 (nearest even; NaN as 0xffff), in the low half of each 32-bit lane:
// at::vec's cvtfp32_bf16 before its narrowing.
inline __m512i bf16_bits(__m512 x) {
  const __m512i v = _mm512_castps_si512(x);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(v, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(v, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  return _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(x, x, _CMP_ORD_Q), _mm512_set1_epi32(0xffff), rounded);
}
// stream: p on a cache line; a non-temporal store, as stream_lanes.
inline void store_bf16_pair(at::BFloat16* p, __m512 lo, __m512 hi, bool stream) {
  const __m512i v = _mm512_packus_epi32(bf16_bits(lo), bf16_bits(hi));
  if (stream) _mm512_stream_si512(reinterpret_cast<__m512i*>(p), v);
  else _mm512_storeu_si512(p, v);
}
#pragma GCC diagnostic pop
#endif

// A whole vector written around the caches (a non-temporal store: no read for ownership of
// a line about to be overwritten; p aligned to the vector's size) where the build has one
// for S, else an ordinary store. streamed_stores_done() orders them before what the thread
// stores next: a parallel task calls it once, when its range of items is done (it waits
// for the streamed lines to drain; after every row of a channels_last grad_input, 2
// threads, 8x64x56x56 3x3 stride 2, the waits were 30-40% of its time).
template <typename S, typename T>
inline void stream_lanes(S* p, const at::vec::Vectorized<T>& v) { store_lanes(p, v); }
#if defined(CPU_CAPABILITY_AVX512)
inline void stream_lanes(float* p, const at::vec::Vectorized<float>& v) { _mm512_stream_ps(p, v); }
inline void streamed_stores_done() { _mm_sfence(); }
#elif defined(CPU_CAPABILITY_AVX2)
inline void stream_lanes(float* p, const at::vec::Vectorized<float>& v) { _mm256_stream_ps(p, v); }
inline void streamed_stores_done() { _mm_sfence(); }
#else
inline void streamed_stores_done() {}
#endif

// Whether a kernel streams its output (stream_lanes): where the output is larger than the
// L2 caches of the threads writing it, so that it would not stay in them for the next op
// anyway. The memory-bound channels_last 3x3 kernels then move a third fewer bytes (2
// threads, float32, medians in one process: 8x144x56x56 forward 0.89 -> 0.69 ms, torch
// 0.80; 8x96x112x112 stride 2 grad_input 3.96 -> 1.64 ms, torch 3.57). The row kernel too
// (5x5, 7x7, 3x3 on rows of up to 8; inputs rotated over 4 tensors: 8x240x28x28 5x5 0.84 ->
// 0.54 ms, torch 0.62; 4x320x33x33 5x5 d2 0.71 -> 0.59 ms, torch 0.69). And the NCHW
// direct 3x3 (AVX2 AMD EPYC, best of 4 alternating runs: 8x144x56x56 1.43 -> 0.98 ms,
// 8x32x112x112 1.32 -> 1.01 ms, torch 2.42 and 1.98).
// Not the channels_last forward at stride 2 (worth_it false): its output is a quarter of
// what it reads, and streaming it measured slower (AVX2 AMD EPYC, 2 threads, best of 5
// alternating in one process: 8x96x112x112 3.99 -> 3.27 ms unstreamed, 8x144x56x56 1.15 ->
// 0.74, torch 2.19 and 0.75; the NCHW direct 3x3 at stride 2 within noise either way).
// CNNOPS_DEPTHWISE_CPU_STREAM=always|never overrides that (read on every call of the
// channels_last forward and gather and the direct 3x3, for tests).
bool streams_output(const at::Tensor& output, bool worth_it = true) {
  const std::size_t choice =
      env_choice("cnnops.depthwise_conv2d", "CNNOPS_DEPTHWISE_CPU_STREAM", {"auto", "always", "never"});
  if (choice != 0) return choice == 1;
  if (!worth_it) return false;
  static const int64_t l2_bytes = [] {
#if defined(_SC_LEVEL2_CACHE_SIZE)
    const long bytes = sysconf(_SC_LEVEL2_CACHE_SIZE);
    if (bytes > 0) return static_cast<int64_t>(bytes);
#endif
    return int64_t(1) << 20;
  }();
  return static_cast<int64_t>(output.nbytes()) > l2_bytes * at::get_num_threads();
}

// Whether the channels_last forward's interior quads go pixel by pixel, every channel of
// one before the next (cl_interior_quads' by_pixel order): for kernels of up to 9 taps
// (5x5 measured slower: there the loads, not the memory, bound it) on inputs that come
// from memory, with pixels of more than two cache lines (at 32 float32 channels the quads
// kept up: 16x32x112x112 2.15 ms against 2.23). "From memory": over 16 MB, half the L3
// of the AMD EPYC measured on (32 MB per core complex; sysconf reports the whole chip's
// 256 MB). There 4x96x112x112 stride 2 (19 MB) went 1.04 -> 0.56 ms by pixel, while
// 2x96x112x112 (10 MB) was even and 8x144x56x56 stride 1 (14 MB) 0.82 -> 0.93.
// CNNOPS_DEPTHWISE_CPU_ORDER=auto|pixels|quads overrides that (read on every call, for
// tests).
constexpr int64_t kFromMemoryBytes = int64_t(16) << 20;

bool interior_by_pixel(const at::Tensor& input, const Conv2dGeometry& g) {
  const std::size_t choice =
      env_choice("cnnops.depthwise_conv2d", "CNNOPS_DEPTHWISE_CPU_ORDER", {"auto", "pixels", "quads"});
  if (choice != 0) return choice == 1;
  const int64_t pixel_bytes = g.in_channels * static_cast<int64_t>(input.element_size());
  return g.kernel_h * g.kernel_w <= 9 && pixel_bytes > 128 && static_cast<int64_t>(input.nbytes()) > kFromMemoryBytes;
}

// Whether stores at p plus any sum of multiples of `steps` (in elements) are all aligned
// as stream_lanes needs: to a float vector (64 bytes, a cache line, on AVX-512; 32 on AVX2).
template <typename S>
bool on_cache_lines(const S* p, std::initializer_list<int64_t> steps) {
  constexpr std::uintptr_t kAlign = sizeof(at::vec::Vectorized<float>);
  auto bits = reinterpret_cast<std::uintptr_t>(p);
  for (const int64_t step : steps) bits |= static_cast<std::uintptr_t>(step * static_cast<int64_t>(sizeof(S)));
  return bits % kAlign == 0;
}

// Every channel in blocks of KB whole vectors, then one block of what is left (1 to KB - 1
// whole vectors and/or a partial one): chunk(integral_constant<int, B>, Tail, c, tail) for
// B vectors from channel c, the last of them holding only `tail` channels where Tail.
template <int KB, int64_t V, typename Chunk>
C10_ALWAYS_INLINE void for_channel_blocks(int64_t channels, const Chunk& chunk) {
  static_assert(KB >= 1 && KB <= 4, "blocks of 1 to 4 vectors");
  using Whole = std::false_type;
  using Tail = std::true_type;
  int64_t c = 0;
  for (; c + KB * V <= channels; c += KB * V) chunk(std::integral_constant<int, KB>(), Whole(), c, int64_t(0));
  const int64_t tail = (channels - c) % V;
  switch ((channels - c) / V * 2 + (tail > 0)) {  // whole vectors left, and whether a partial one follows
    case 1: chunk(std::integral_constant<int, 1>(), Tail(), c, tail); break;
    case 2: if constexpr (KB > 1) chunk(std::integral_constant<int, 1>(), Whole(), c, int64_t(0)); break;
    case 3: if constexpr (KB > 1) chunk(std::integral_constant<int, 2>(), Tail(), c, tail); break;
    case 4: if constexpr (KB > 2) chunk(std::integral_constant<int, 2>(), Whole(), c, int64_t(0)); break;
    case 5: if constexpr (KB > 2) chunk(std::integral_constant<int, 3>(), Tail(), c, tail); break;
    case 6: if constexpr (KB > 3) chunk(std::integral_constant<int, 3>(), Whole(), c, int64_t(0)); break;
    case 7: if constexpr (KB > 3) chunk(std::integral_constant<int, 4>(), Tail(), c, tail); break;
    default: break;
  }
}

// channels_last forward: a task is a few output rows of one image. Interior pixels (every
// tap inside the input) go four at a time with fixed tap offsets (cl_interior_quads); the
// others list their taps through the padding map, up to four pixels of a row at a time
// (cl_listed_pixels). (Where pick_cl_row_kernel has one, mostly 5x5 and 7x7, float32 and,
// under AVX-512, bfloat16 go through the row kernel further down instead: whole rows with
// zero padding, the interior columns with the other modes.) Input and output are stored as
// S, the sums kept in T.
//
// P pixels from listed taps: tap t of pixel p reads srcs[p * src_step + t], with the
// weights of tap tap_ids[t], loaded once for the P pixels. A pixel whose tap lies in zero
// padding where another pixel of the group has it inside reads a zero vector there. B
// whole vectors of channels from c; Tail: the last of them holds only `tail` channels.
template <typename S, typename T, int P, int B, bool Tail>
C10_ALWAYS_INLINE void cl_listed_chunk(const S* const* srcs, int64_t src_step, const int64_t* tap_ids, int64_t nt,
                                       const T* wt, int64_t cpad, const T* bias, int64_t c, int64_t tail, S* dst,
                                       int64_t dst_pix) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  Vec acc[P][B];
  for (int b = 0; b < B; ++b) {
    const Vec init = Vec::loadu(bias + c + b * V);
    for (int p = 0; p < P; ++p) acc[p][b] = init;
  }
  for (int64_t t = 0; t < nt; ++t) {
    const T* wv = wt + tap_ids[t] * cpad + c;
    for (int b = 0; b < B; ++b) {
      const Vec w = Vec::loadu(wv + b * V);
      for (int p = 0; p < P; ++p) {
        const S* src = srcs[p * src_step + t] + c + b * V;
        acc[p][b] = at::vec::fmadd(w, (Tail && b == B - 1) ? load_lanes(src, tail) : load_lanes(src), acc[p][b]);
      }
    }
  }
  for (int p = 0; p < P; ++p)
    for (int b = 0; b < B; ++b) {
      S* d = dst + p * dst_pix + c + b * V;
      if (Tail && b == B - 1) store_lanes(d, acc[p][b], tail);
      else store_lanes(d, acc[p][b]);
    }
}

// Every channel of P output pixels (1 to 4, dst_pix apart) from their nt listed taps:
// blocks of kB whole vectors, then one block of what is left (not inlined: inlined into
// the task loop, GCC kept the accumulators on the stack). Four pixels at a time load each
// weight vector once per four FMAs instead of once per FMA (AVX2 AMD EPYC, 2 threads,
// float32, best of 6 alternating runs: 8x672x14x14 5x5, where listed pixels are 59% of the
// output, 0.99 -> 0.66 ms, torch 0.95; 4x320x33x33 5x5 d2 1.28 -> 0.99 ms, torch 0.92).
template <typename S, typename T, int P>
C10_NOINLINE void cl_listed_pixels(const S* const* srcs, int64_t src_step, const int64_t* tap_ids, int64_t nt,
                                   const T* wt, int64_t cpad, const T* bias, int64_t channels, S* dst,
                                   int64_t dst_pix) {
  constexpr int64_t V = at::vec::Vectorized<T>::size();
  constexpr int kB = P == 1 ? 4 : 2;  // accumulators: P * kB <= 8
  for_channel_blocks<kB, V>(channels, [&](auto b_const, auto tail_const, int64_t c, int64_t tail) {
    cl_listed_chunk<S, T, P, decltype(b_const)::value, decltype(tail_const)::value>(srcs, src_step, tap_ids, nt, wt,
                                                                                     cpad, bias, c, tail, dst, dst_pix);
  });
}

// Stores P pixels' B vectors of sums from channel c (dst_pix apart); Tail: the last vector
// holds only `tail` channels. stream: whole vectors through stream_lanes.
template <typename S, int P, int B, bool Tail, typename Vec>
C10_ALWAYS_INLINE void store_chunk(const Vec (&acc)[P][B], S* dst, int64_t dst_pix, int64_t c, int64_t tail,
                                   bool stream) {
  constexpr int64_t V = Vec::size();
  for (int p = 0; p < P; ++p)
    for (int b = 0; b < B; ++b) {
      S* d = dst + p * dst_pix + c + b * V;
      if (Tail && b == B - 1) store_lanes(d, acc[p][b], tail);
      else if (stream) stream_lanes(d, acc[p][b]);
      else store_lanes(d, acc[p][b]);
    }
}

// P interior output pixels (every tap inside the input, no padding map): tap t of pixel p
// reads base + off[t] + p * pix. Each tap's weights are loaded once for the P pixels (the
// listed chunk with one pixel loads them per pixel: two loads per FMA). B whole vectors of
// channels from c; Tail: the last of them holds only `tail` channels (masked). KK > 0 fixes
// the tap count at compile time (3x3: 5-10% faster in a standalone copy of this loop).
template <typename S, typename T, int P, int B, bool Tail, int KK = 0>
C10_ALWAYS_INLINE void cl_interior_chunk(const S* base, const int64_t* off, int64_t kk, int64_t pix, const T* wt,
                                         int64_t cpad, const T* bias, int64_t c, int64_t tail, S* dst,
                                         int64_t dst_pix, bool stream) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  Vec acc[P][B];
  for (int b = 0; b < B; ++b) {
    const Vec init = Vec::loadu(bias + c + b * V);
    for (int p = 0; p < P; ++p) acc[p][b] = init;
  }
  const S* src = base + c;
  const T* wv = wt + c;
  const int64_t taps = KK > 0 ? KK : kk;
  // Unrolled: AVX2 AMD EPYC, 2 threads, best of 8 alternating runs, 8x96x112x112 3x3
  // stride 2 2.90 -> 2.14 ms, the other channels_last cases within noise. (Our guess: a
  // load instruction per tap then walks a fixed stride, which the prefetcher follows.)
#pragma GCC unroll 16
  for (int64_t t = 0; t < taps; ++t, wv += cpad) {
    const S* x = src + off[t];
    for (int b = 0; b < B; ++b) {
      const Vec w = Vec::loadu(wv + b * V);
      for (int p = 0; p < P; ++p) {
        const S* xp = x + p * pix + b * V;
        acc[p][b] = at::vec::fmadd(w, (Tail && b == B - 1) ? load_lanes(xp, tail) : load_lanes(xp), acc[p][b]);
      }
    }
  }
  store_chunk<S, P, B, Tail>(acc, dst, dst_pix, c, tail, stream);
}

// cl_interior_chunk for four pixels of a 3x3 kernel whose taps along a row are tap_step
// apart, with pixels STEP tap steps apart (STEP 1: stride equal to dilation along W; 2:
// stride twice the dilation, the usual stride 2): pixel p's tap kw reads the row's input
// pixel STEP * p + kw (in tap steps), so each of the kCols input pixels a kernel row reads is
// loaded once for the taps that read it (up to three at STEP 1, two at STEP 2), not once per
// tap. For bfloat16, where each load widens with two more vector instructions, those were the
// bound (AMD EPYC Zen 4, 2 threads, alternating in one process: 8x144x56x56 1.10 -> 0.85 ms,
// 2x64x80x80 0.27 -> 0.20; float32 0.89 -> 0.81 and 0.185 -> 0.170; stride 2: bfloat16
// 8x144x56x56 0.28 -> 0.23, 8x64x56x56 0.17 -> 0.14, 8x192x28x28 0.084 -> 0.072, float32
// 0.50-0.62 -> 0.48-0.54 and 8x192x28x28 0.110 -> 0.116). 32-channel bfloat16 blocks also widen
// by unpacking (load_bf16_pair) and stream their stores: 8x144x56x56 0.91-0.99 -> 0.73-0.93 ms
// in three alternations of builds.
template <typename S, typename T, int STEP, int B, bool Tail>
C10_ALWAYS_INLINE void cl_interior_chunk_3x3_shared(const S* base, const int64_t* off, int64_t tap_step, const T* wt,
                                                    int64_t cpad, const T* bias, int64_t c, int64_t tail, S* dst,
                                                    int64_t dst_pix, bool stream) {
  constexpr int kCols = 3 * STEP + 3;  // the input pixels a kernel row of four outputs reads
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  // bfloat16's whole 32-channel blocks (AVX-512) in lane order (load_bf16_pair): half the
  // widening instructions, and 64-byte stores that can stream.
#if defined(CPU_CAPABILITY_AVX512)
  constexpr bool kLaneOrder = std::is_same<S, at::BFloat16>::value && B == 2 && !Tail;
#endif
  auto load_floats = [&](const T* p, Vec (&v)[B]) {  // weights and bias, in the inputs' order
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (kLaneOrder) {
      __m512 lo, hi;
      to_lane_order(_mm512_loadu_ps(p), _mm512_loadu_ps(p + V), lo, hi);
      v[0] = lo, v[1] = hi;
      return;
    }
#endif
    for (int b = 0; b < B; ++b) v[b] = Vec::loadu(p + b * V);
  };
  auto load_inputs = [&](const S* p, Vec (&v)[B]) {
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (kLaneOrder) {
      __m512 lo, hi;
      load_bf16_pair(p, lo, hi);
      v[0] = lo, v[1] = hi;
      return;
    }
#endif
    for (int b = 0; b < B; ++b) v[b] = (Tail && b == B - 1) ? load_lanes(p + b * V, tail) : load_lanes(p + b * V);
  };
  Vec acc[4][B], init[B];
  load_floats(bias + c, init);
  for (int p = 0; p < 4; ++p)
    for (int b = 0; b < B; ++b) acc[p][b] = init[b];
  for (int kh = 0; kh < 3; ++kh) {
    const S* row = base + c + off[3 * kh];
    Vec w[3][B];
    for (int kw = 0; kw < 3; ++kw) load_floats(wt + (3 * kh + kw) * cpad + c, w[kw]);
#pragma GCC unroll 9
    for (int j = 0; j < kCols; ++j) {
      Vec x[B];
      load_inputs(row + j * tap_step, x);
#pragma GCC unroll 3
      for (int kw = 0; kw < 3; ++kw)
        if (j - kw >= 0 && (j - kw) % STEP == 0 && (j - kw) / STEP < 4)
          for (int b = 0; b < B; ++b)
            acc[(j - kw) / STEP][b] = at::vec::fmadd(w[kw][b], x[b], acc[(j - kw) / STEP][b]);
    }
  }
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (kLaneOrder) {
    for (int p = 0; p < 4; ++p) store_bf16_pair(dst + p * dst_pix + c, acc[p][0], acc[p][1], stream);
    return;
  }
#endif
  store_chunk<S, 4, B, Tail>(acc, dst, dst_pix, c, tail, stream);
}

// The interior quads of `rows` output rows and `quads` quads along them, then `rest` (< 4)
// single pixels after them, every channel. KK: 9 for a 3x3 kernel (tap count fixed at compile
// time; taps in three rows of three, for cl_interior_chunk_3x3_shared), else 0.
// `in`: the first row's first quad's input pixel at tap 0, rows in_row apart, output
// pixels in_pix apart; `out` its output pixel. The forward makes one call per task: a call
// per quad position cost about 10% of a 32-channel 112x112 forward. stream: whole vectors go
// through stream_lanes where every one of them is aligned (on_cache_lines); the caller's
// task calls streamed_stores_done().
// Two orders:
// - four pixels at a time, blocks of two vectors along the channels; quad column by quad
//   column, every row at each, so that the input rows they share are read from L1 (row by
//   row, each input row came from L2 once per output row that reads it).
// - by_pixel: row by row, one pixel at a time, its every channel (blocks of four vectors)
//   before the next pixel's. Twice the loads per FMA, but the input is read in address
//   order; where it comes from memory, not the caches, that is what counts (2 threads,
//   float32 3x3, AVX2 AMD EPYC, best of 3 in one process: 8x96x112x112 stride 2 2.85 ->
//   1.60 ms, torch 2.03; 16x64x112x112 stride 2 4.47 -> 2.34, torch 2.36; 32x144x56x56
//   stride 1 7.3 -> 5.3, torch 7.1; but 8x32x112x112 0.86 -> 1.09 and 8x192x28x28 stride 2
//   0.114 -> 0.127, from the caches).
template <typename S, typename T, int KK>
C10_NOINLINE void cl_interior_quads(const S* in, int64_t in_row, int64_t in_pix, const int64_t* off, int64_t kk,
                                    const T* wt, int64_t cpad, const T* bias, int64_t channels, int64_t rows,
                                    int64_t quads, int64_t rest, S* out, int64_t out_row, int64_t out_pix,
                                    bool stream, bool by_pixel) {
  constexpr int64_t V = at::vec::Vectorized<T>::size();
  // (bfloat16 streams 32 channels at a time, in cl_interior_chunk_3x3_shared only)
  stream = stream && on_cache_lines(out, {out_row, out_pix, std::is_same<S, at::BFloat16>::value ? 2 * V : V});
  // 3x3 taps evenly spaced along a row with pixels one (stride = dilation) or two (stride =
  // 2 x dilation) tap steps apart: cl_interior_chunk_3x3_shared at that STEP; 0: neither
  const int64_t tap_step = KK == 9 ? off[1] - off[0] : 0;
  const bool even_taps = KK == 9 && off[2] - off[1] == tap_step;
  const int shared_step = !even_taps ? 0 : in_pix == tap_step ? 1 : in_pix == 2 * tap_step ? 2 : 0;
  // Taps `spacing` pixels apart (a dilation along W at column stride 1): quads of pixels that
  // far apart share their taps' inputs as at STEP 1, the residue classes of the pixels mod
  // `spacing` in turn. AMD EPYC Zen 4, 2 threads, float32, channels_last 3x3 forward, one
  // load per FMA -> shared (torch in the same runs): 8x64x56x56 dilation 2 0.334 -> 0.285 ms
  // (0.28-0.29), 8x144x56x56 dilation 2 0.84 -> 0.72 (1.14), 8x128x28x28 dilation 3 0.180 ->
  // 0.169 (0.158).
  const int64_t spacing =
      even_taps && shared_step == 0 && in_pix > 0 && tap_step % in_pix == 0 ? tap_step / in_pix : 0;
  const bool spaced = spacing >= 2 && spacing <= 8;
  // Every channel of P pixels from base (input) to dst (output), output pixels dst_pix apart.
  auto pixels = [&](auto p_const, const S* base, S* dst, int64_t dst_pix) {
    constexpr int P = decltype(p_const)::value;
    for_channel_blocks<P == 1 ? 4 : 2, V>(channels, [&](auto b_const, auto tail_const, int64_t c, int64_t tail) {
      constexpr int B = decltype(b_const)::value;
      constexpr bool Tail = decltype(tail_const)::value;
      if constexpr (P == 4 && KK == 9) {
        if (shared_step == 1 || spaced) {
          cl_interior_chunk_3x3_shared<S, T, 1, B, Tail>(base, off, tap_step, wt, cpad, bias, c, tail, dst, dst_pix,
                                                         stream);
          return;
        }
        if (shared_step == 2) {
          cl_interior_chunk_3x3_shared<S, T, 2, B, Tail>(base, off, tap_step, wt, cpad, bias, c, tail, dst, dst_pix,
                                                         stream);
          return;
        }
      }
      cl_interior_chunk<S, T, P, B, Tail, KK>(base, off, kk, in_pix, wt, cpad, bias, c, tail, dst, dst_pix, stream);
    });
  };
  auto one = [&](int64_t r, int64_t j) {
    pixels(std::integral_constant<int, 1>(), in + r * in_row + j * in_pix, out + r * out_row + j * out_pix, out_pix);
  };
  if (spaced && !by_pixel) {
    const int64_t n = 4 * quads + rest;
    for (int64_t rho = 0; rho < spacing && rho < n; ++rho) {
      const int64_t count = (n - rho + spacing - 1) / spacing;  // pixels rho, rho + spacing, ...
      for (int64_t q = 0; q + 4 <= count; q += 4)
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t j = rho + q * spacing;
          pixels(std::integral_constant<int, 4>(), in + r * in_row + j * in_pix, out + r * out_row + j * out_pix,
                 spacing * out_pix);
        }
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t q = count / 4 * 4; q < count; ++q) one(r, rho + q * spacing);
    }
    return;
  }
  if (by_pixel) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < 4 * quads + rest; ++j) one(r, j);
  } else {
    for (int64_t q = 0; q < quads; ++q)
      for (int64_t r = 0; r < rows; ++r)
        pixels(std::integral_constant<int, 4>(), in + r * in_row + 4 * q * in_pix, out + r * out_row + 4 * q * out_pix,
               out_pix);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 4 * quads; j < 4 * quads + rest; ++j) one(r, j);
  }
}

// Kernel rows the channels_last row kernel below takes (a pointer per row).
constexpr int64_t kMaxRowsInterior = 16;

#if defined(CNNOPS_HAVE_LANES)
// The row kernel's loads and stores for storage S: float, and (AVX-512) bfloat16 widened to
// float in registers and rounded back on the store, as the quads do.
inline Lanes::Reg row_load(const float* p) { return Lanes::load(p); }
inline Lanes::Reg row_load(Lanes::Mask m, const float* p) { return Lanes::load(m, p); }
inline void row_store(float* p, Lanes::Reg x) { Lanes::store(p, x); }
inline void row_store_first(float* p, int n, Lanes::Reg x) { Lanes::store_first(p, n, x); }
#if defined(CPU_CAPABILITY_AVX512)
inline Lanes::Reg row_load(const at::BFloat16* p) {
  return widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline Lanes::Reg row_load(Lanes::Mask m, const at::BFloat16* p) { return load_masked(m, p); }
inline void row_store(at::BFloat16* p, Lanes::Reg x) { store_lanes(p, at::vec::Vectorized<float>(x)); }
inline void row_store_first(at::BFloat16* p, int n, Lanes::Reg x) {
  store_lanes(p, at::vec::Vectorized<float>(x), n);
}
#endif

// channels_last float (AVX-512: or bfloat16; S): P output pixels of one row, one vector of
// channels (Lanes), column stride SW and dilation DW. Per kernel row, its KW weights sit in
// registers and each input pixel vector is loaded once (into a register: GCC would fold it
// into every FMA) for every output of the block that reads it, KW of them at stride 1: the
// quad kernel above loads one input vector per FMA. rows[r]: kernel row r's input row at the
// block's first tap column, channel c; wrows[r]: its weights for channel c, one tap every
// cpad floats.
// Masked: the loads take only the first `lanes` channels, and input pixel j only if bit j
// of `inside` is set (zero padding columns and a channel tail, without branches); the
// stores the first `lanes`. Trim: the block is a whole row of P pixels with KW / 2 zero
// columns each side ("same", stride 1); the pixels in those columns are not read at all (a
// quarter of a 7x7 on 7x7). stream: whole vectors are stored with stream_lanes; dst
// aligned to them.
template <typename S, int KW, int SW, int DW, int P, bool Masked, bool Trim = false>
inline void cl_row_block(const S* const* rows, const float* const* wrows, int64_t nrows, int64_t cpad,
                         const float* bias, int lanes, uint64_t inside, int64_t pix, S* dst, int64_t dst_pix,
                         bool stream) {
  constexpr int J = (P - 1) * SW + (KW - 1) * DW + 1;  // input pixels the block reads per kernel row
  static_assert(J <= 64 && (!Trim || DW == 1), "inside is a 64-bit mask; the trim is for dilation 1");
  const Lanes::Mask channels = Lanes::mask((1u << lanes) - 1u), none = Lanes::mask(0);
  Lanes::Reg acc[P];
  const Lanes::Reg b = Lanes::load(bias);  // bias and weights are padded to whole vectors
  for (int p = 0; p < P; ++p) acc[p] = b;
  for (int64_t r = 0; r < nrows; ++r) {
    const S* x = rows[r];
    Lanes::Reg w[KW];
    for (int kw = 0; kw < KW; ++kw) w[kw] = Lanes::load(wrows[r] + kw * cpad);
#pragma GCC unroll 64
    for (int j = 0; j < J; ++j, x += pix) {
      if (Trim && (j < KW / 2 || j >= KW / 2 + P)) continue;
      Lanes::Reg v = Masked ? row_load(((inside >> j) & 1) ? channels : none, x) : row_load(x);
      __asm__("" : "+v"(v));
#pragma GCC unroll 16
      for (int kw = 0; kw < KW; ++kw) {
        const int d = j - kw * DW;  // output p reads this pixel with tap kw when d == p * SW
        if (d >= 0 && d % SW == 0 && d / SW < P) acc[d / SW] = Lanes::fmadd(w[kw], v, acc[d / SW]);
      }
    }
  }
  for (int p = 0; p < P; ++p) {
    if (lanes < Lanes::kWidth) row_store_first(dst + p * dst_pix, lanes, acc[p]);
    else if (stream) stream_lanes(dst + p * dst_pix, at::vec::Vectorized<float>(acc[p]));
    else row_store(dst + p * dst_pix, acc[p]);
  }
}

// A 14-wide "same" row (the 14x14 stages of MobileNet, EfficientNet and ConvNeXt) is one
// block of the row kernel on AVX-512, its padding columns trimmed: in two blocks (8 and 6),
// both with masked edges, 8x672x14x14 5x5 took 0.32-0.45 ms against 0.27-0.37 (AMD EPYC
// Zen 4, 2 threads, alternating processes; 8x384x14x14 7x7 0.31-0.39 -> 0.29-0.33).
constexpr int kSameRow14 = 14;

// Output rows [0, nout) of a task, output columns [0, count) from the same first column,
// every channel. Row i's kernel rows are rows[i * kMaxRowsInterior + r] (r < nrows[i]),
// pointing at input column col0 (negative in the left padding), with weights wrows[...].
// Input columns outside [0, in_w) read as zeros. One channel vector at a time over all the
// task's rows, so that the input rows it reads stay in L1 from one output row to the next;
// along a row, blocks of 16 pixels (AVX2, 16 registers: 8), then at most one of 8 and one
// of the rest. stream: as in cl_interior_quads (whole vectors around the caches where all
// of them are aligned).
template <typename S, int KW, int SW, int DW>
void cl_rows(const S* const* rows, const float* const* wrows, const int64_t* nrows, int64_t nout, int64_t cpad,
             const float* bias, int64_t channels, int64_t pix, int64_t col0, int64_t in_w, int64_t count, S* dst,
             int64_t dst_row, int64_t dst_pix, bool stream) {
  constexpr int64_t V = Lanes::kWidth;
  constexpr int64_t kBlock = Lanes::kRegisters >= 32 ? 16 : 8;  // accumulators beside KW weights
  stream = stream && on_cache_lines(dst, {dst_row, dst_pix, V});
  // A whole "same" row at stride 1: 7 or 14 wide, one block with its padding columns trimmed.
  const bool same_row = SW == 1 && DW == 1 && count == in_w && col0 == -(KW / 2);
  auto block = [&](auto p_const, int64_t i, int64_t c, int64_t ow) {
    constexpr int P = decltype(p_const)::value;
    constexpr int J = (P - 1) * SW + (KW - 1) * DW + 1;
    const S* r[kMaxRowsInterior];
    const float* wr[kMaxRowsInterior];
    const int64_t nr = nrows[i];
    for (int64_t k = 0; k < nr; ++k) {
      r[k] = rows[i * kMaxRowsInterior + k] + ow * SW * pix + c;
      wr[k] = wrows[i * kMaxRowsInterior + k] + c;
    }
    S* d = dst + i * dst_row + ow * dst_pix + c;
    const int lanes = static_cast<int>(std::min(V, channels - c));
    const int64_t first = col0 + ow * SW;  // input column of the block's pixel j = 0
    const int64_t lo = std::clamp<int64_t>(-first, 0, J), hi = std::clamp<int64_t>(in_w - first, lo, J);
    const uint64_t inside = ((uint64_t(1) << hi) - 1) & ~((uint64_t(1) << lo) - 1);
    if constexpr ((P == 7 || P == kSameRow14) && SW == 1 && DW == 1) {
      if (same_row && count == P) {
        if (lanes == V)
          cl_row_block<S, KW, SW, DW, P, false, true>(r, wr, nr, cpad, bias + c, lanes, inside, pix, d, dst_pix,
                                                      stream);
        else
          cl_row_block<S, KW, SW, DW, P, true, true>(r, wr, nr, cpad, bias + c, lanes, inside, pix, d, dst_pix,
                                                     stream);
        return;
      }
    }
    if (lanes == V && lo == 0 && hi == J)
      cl_row_block<S, KW, SW, DW, P, false>(r, wr, nr, cpad, bias + c, lanes, inside, pix, d, dst_pix, stream);
    else
      cl_row_block<S, KW, SW, DW, P, true>(r, wr, nr, cpad, bias + c, lanes, inside, pix, d, dst_pix, stream);
  };
  auto any_block = [&](int64_t p, int64_t i, int64_t c, int64_t ow) {
    switch (p) {
      case 16:
        if constexpr (kBlock == 16) block(std::integral_constant<int, 16>(), i, c, ow);
        return;
      case kSameRow14:
        if constexpr (kBlock == 16 && SW == 1 && DW == 1) block(std::integral_constant<int, kSameRow14>(), i, c, ow);
        return;
      case 8: return block(std::integral_constant<int, 8>(), i, c, ow);
      case 7: return block(std::integral_constant<int, 7>(), i, c, ow);
      case 6: return block(std::integral_constant<int, 6>(), i, c, ow);
      case 5: return block(std::integral_constant<int, 5>(), i, c, ow);
      case 4: return block(std::integral_constant<int, 4>(), i, c, ow);
      case 3: return block(std::integral_constant<int, 3>(), i, c, ow);
      case 2: return block(std::integral_constant<int, 2>(), i, c, ow);
      case 1: return block(std::integral_constant<int, 1>(), i, c, ow);
      default: return;
    }
  };
  for (int64_t c = 0; c < channels; c += V)
    for (int64_t i = 0; i < nout; ++i)
      for (int64_t ow = 0, p = 0; ow < count; ow += p) {
        // Blocks of kBlock pixels, then at most one of 8 and one of the rest (a 7-wide row is
        // one); a 14-wide "same" row (AVX-512) is one block.
        const bool same14 = kBlock == 16 && same_row && count == kSameRow14;
        p = same14 ? count : count - ow >= kBlock ? kBlock : count - ow >= 8 ? 8 : count - ow;
        any_block(p, i, c, ow);
      }
}
#endif

template <typename S>
using ClRowKernel = void (*)(const S* const*, const float* const*, const int64_t*, int64_t, int64_t, const float*,
                             int64_t, int64_t, int64_t, int64_t, int64_t, S*, int64_t, int64_t, bool);

// The row kernel for g, or nullptr where it does not apply (the quad kernel runs then).
// 5x5 and 7x7, and 3x3 (stride 1) only on rows of at most 8 outputs: on wider ones it
// measured 5-30% slower than the quads (whose pixel-major order streams the input better),
// but on 7x7 planes, where the quads leave 29 of the 49 pixels to the listed-taps loop, it
// is faster (1 thread, float32: 8x960x7x7 0.24 -> 0.21 ms, 4x768x7x7 0.10 -> 0.07 ms;
// AVX-512, when that loop took one pixel at a time). AVX2 takes the 5x5 on such narrow
// rows too, below.
constexpr int64_t kClRowsNarrowWidth = 8;

// AVX-512 also takes 3x3 (stride 1) on some wider rows with whole channel vectors, where
// the input comes from the caches (the quads' by-pixel order is off, from_caches): there
// the row kernel's one load per 3 FMAs beat the quads' 5 loads per 4. AMD EPYC Zen 4, 2
// threads, float32, one process:
// - rows of 40 or more: 8x64x56x56 0.30 -> 0.27 ms, 8x144x56x56 0.75-0.82 -> 0.60-0.64,
//   4x64x80x80 0.31 -> 0.25, 8x64x40x40 0.16-0.17 -> 0.14-0.16, 4x16x112x112 0.17 -> 0.14;
// - 14-wide "same" rows, zero padding (one trimmed block, kSameRow14): 8x384x14x14 0.14-0.18
//   -> 0.11-0.15, 8x576x14x14 0.20-0.23 -> 0.14-0.17, 8x960x14x14 0.40 -> 0.30, 32x384x14x14
//   0.71-1.2 -> 0.40-0.84, 8x256x14x14 0.09 -> 0.07; but not where a pixel's channels take
//   a multiple of 2 KB (8x512x14x14 0.216 -> 0.233, 8x1024x14x14 0.52-0.56 -> 0.57-0.62): the
//   row kernel reads one channel vector of pixel after pixel, and those fall in one or two
//   of the L1's 64 sets, evicting the input rows that the next output row reads again.
// Not on 16- to 32-wide rows (blocks of 16, 8 and a rest; 8x128x28x28 0.159 -> 0.164,
// 8x64x32x32 0.127 -> 0.146, though at 1 thread they gained 15-30%), reflect-padded 14-wide
// rows (12 interior columns: even), with a channel tail (8x24x112x112 0.71 -> 0.89-0.99),
// from memory (16x144x56x56 2.6 -> 3.1) or at stride 2 (8x144x56x56 0.55 -> 1.0,
// 8x384x28x28 0.28 -> 0.39).
bool rows_beat_quads_3x3(const Conv2dGeometry& g, int64_t elem_bytes, bool from_caches) {
#if defined(CPU_CAPABILITY_AVX512)
  const bool same_row_14 = g.out_w == kSameRow14 && g.in_w == kSameRow14 && g.pad_left == 1 &&
                           g.mode == PaddingMode::Zeros;
  const int64_t pix_bytes = g.in_channels * elem_bytes;
  const bool wide = g.out_w >= 40 && elem_bytes == 4;  // bfloat16: 8x144x56x56 0.84 -> 1.54 ms
  return from_caches && g.in_channels % 16 == 0 && pix_bytes % 2048 != 0 && (wide || same_row_14);
#else
  (void)g, (void)elem_bytes, (void)from_caches;
  return false;
#endif
}

// S: the input and output storage, float (AVX-512: or bfloat16); other types have none.
template <typename S>
ClRowKernel<S> pick_cl_row_kernel(const Conv2dGeometry& g, bool from_caches = false) {
#if defined(CPU_CAPABILITY_AVX512)
  constexpr bool kRowStorage = std::is_same<S, float>::value || std::is_same<S, at::BFloat16>::value;
#else
  constexpr bool kRowStorage = std::is_same<S, float>::value;
#endif
#if defined(CNNOPS_HAVE_LANES)
  if constexpr (!kRowStorage) {
    (void)g, (void)from_caches;
    return nullptr;
  } else {
    if (g.kernel_h > kMaxRowsInterior) return nullptr;
    // AVX2 (blocks of 8 pixels, one vector of 8 channels): 7x7 and 5x5 on rows of at most 8
    // only. 2 threads, best of 3 alternating runs, quads -> row kernel: 8x768x7x7 7x7 0.64 ->
    // 0.41 ms, 8x96x56x56 7x7 3.84 -> 3.03 (stride 2 1.26 -> 1.09), 8x672x7x7 5x5 0.36 ->
    // 0.30; but 8x240x28x28 5x5 1.40 -> 1.61, 4x320x33x33 5x5 d2 1.37 -> 1.63, 8x960x7x7
    // 3x3 0.16 -> 0.34.
    const bool avx2_rows = g.kernel_w == 7 || (g.kernel_w == 5 && g.stride_w == 1 && g.dilation_w == 1 &&
                                               g.out_w <= kClRowsNarrowWidth);
    if (Lanes::kWidth == 8 && !avx2_rows) return nullptr;
    // (one digit each: kernel width 4 at stride 11 would read as 5x5 at stride 1)
    if (g.stride_w < 1 || g.stride_w > 2 || g.dilation_w < 1 || g.dilation_w > 2) return nullptr;
    switch (g.kernel_w * 100 + g.stride_w * 10 + g.dilation_w) {
      case 311: {
        const bool rows = g.out_w <= kClRowsNarrowWidth || rows_beat_quads_3x3(g, sizeof(S), from_caches);
        return rows ? cl_rows<S, 3, 1, 1> : nullptr;
      }
      case 511: return cl_rows<S, 5, 1, 1>;
      case 521: return cl_rows<S, 5, 2, 1>;
      case 711: return cl_rows<S, 7, 1, 1>;
      case 721: return cl_rows<S, 7, 2, 1>;
      // Dilated, on rows narrower than the kernel's reach ((k - 1) * 2 columns: most taps in
      // the padding): the quads' listed-taps loop skips the taps in padding, the row kernel
      // multiplies their zeros (2 threads: 8x512x7x7 5x5 d2 0.124-0.139 -> 0.102-0.107 ms,
      // 7x7 d2 0.158 -> 0.141; 8x128x12x12 7x7 d2, reach 12, stays: 0.137 against 0.178).
      case 512: return g.out_w < 4 * 2 ? nullptr : cl_rows<S, 5, 1, 2>;
      case 712: return g.out_w < 6 * 2 ? nullptr : cl_rows<S, 7, 1, 2>;
      default: return nullptr;
    }
  }
#else
  (void)g, (void)from_caches, (void)kRowStorage;
  return nullptr;
#endif
}

// S: the storage type of input and output (float, double, or bfloat16 under AVX-512).
// may_stream: false for a temporary output the caller reads back at once (streamed stores
// would send it around the caches).
template <typename S>
void forward_channels_last(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias,
                           at::Tensor& output, const Conv2dGeometry& g, bool may_stream = true) {
  using T = at::opmath_type<S>;
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const int64_t C = g.in_channels, cpad = round_up(C, 4 * V) , kk = g.kernel_h * g.kernel_w;
  const AlignedBuffer<T> wt = weight_taps_by_channel<S, T>(weight, g, cpad);
  const std::vector<T> b = bias_values<S, T>(bias, C, cpad);
  // Column map: input column read by (ow, kw), or -1 for zero padding.
  std::vector<int64_t> cols(g.out_w * g.kernel_w);
  for (int64_t ow = 0; ow < g.out_w; ++ow)
    for (int64_t kw = 0; kw < g.kernel_w; ++kw)
      cols[ow * g.kernel_w + kw] =
          source_index(ow * g.stride_w - g.pad_left + kw * g.dilation_w, g.in_w, g.mode);
  const Strides4d in_s = strides4d(input), out_s = strides4d(output);
  const S* in = input.const_data_ptr<S>();
  S* out = output.mutable_data_ptr<S>();
  // Interior pixels (rows and columns with every tap inside the input) have their taps at
  // fixed offsets (off) from the pixel, and go in groups of four pixels.
  const InteriorRange inside_h = rows_with_taps_inside(g), inside_w = cols_with_taps_inside(g);
  const int64_t ow_lo = inside_w.lo, ow_hi = inside_w.hi;
  const std::vector<int64_t> off = tap_offsets(g, in_s);
  // A task is kRowsPerTask output rows, whose interior quads share input rows in L1.
  constexpr int64_t kRowsPerTask = 8;
  const int64_t tasks_per_image = (g.out_h + kRowsPerTask - 1) / kRowsPerTask;
  const int64_t quads = (ow_hi - ow_lo) / 4, quad_end = ow_lo + 4 * quads;  // [ow_lo, quad_end) by quads
  const bool by_pixel = interior_by_pixel(input, g);
  const ClRowKernel<S> row_kernel = pick_cl_row_kernel<S>(g, /*from_caches=*/!by_pixel);
  const bool stream = may_stream && streams_output(output, g.stride_h == 1 && g.stride_w == 1);
  // The row kernel reads zero padding columns as zeros, so it takes whole rows; other
  // modes leave it the interior columns and the listed-taps loop the rest.
  const bool zero_cols = g.mode == PaddingMode::Zeros;
  const int64_t row_lo = zero_cols ? 0 : ow_lo, row_hi = zero_cols ? g.out_w : ow_hi;
  const std::vector<S> zeros(cpad, S(0));  // what listed pixels read for a tap in zero padding
  at::parallel_for(0, g.batch * tasks_per_image, grain_for(kRowsPerTask * g.out_w * C * kk),
                   [&](int64_t begin, int64_t end) {
    std::vector<const S*> srcs(4 * kk);
    std::vector<int64_t> ids(kk);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / tasks_per_image, oh0 = (item % tasks_per_image) * kRowsPerTask;
      const int64_t oh1 = std::min(oh0 + kRowsPerTask, g.out_h);
      auto row_inside = [&](int64_t oh) { return oh >= inside_h.lo && oh < inside_h.hi; };
      if constexpr (std::is_same<T, float>::value) {  // (the row kernel's weights are float)
        if (row_kernel != nullptr) {
          // Columns [row_lo, row_hi) of every row; its kernel rows through the padding map.
          const S* rows[kRowsPerTask * kMaxRowsInterior];
          const float* wrows[kRowsPerTask * kMaxRowsInterior];
          int64_t nrows[kRowsPerTask];
          for (int64_t oh = oh0; oh < oh1; ++oh) {
            const int64_t i = oh - oh0;
            nrows[i] = 0;
            for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
              const int64_t ih = source_index(oh * g.stride_h - g.pad_top + kh * g.dilation_h, g.in_h, g.mode);
              if (ih < 0) continue;
              const int64_t k = i * kMaxRowsInterior + nrows[i]++;
              rows[k] = in + n * in_s.n + ih * in_s.h + (row_lo * g.stride_w - g.pad_left) * in_s.w;
              wrows[k] = wt.data() + kh * g.kernel_w * cpad;
            }
          }
          row_kernel(rows, wrows, nrows, oh1 - oh0, cpad, b.data(), C, in_s.w, row_lo * g.stride_w - g.pad_left,
                     g.in_w, row_hi - row_lo, out + n * out_s.n + oh0 * out_s.h + row_lo * out_s.w, out_s.h, out_s.w,
                     stream);
        }
      }
      const int64_t inner0 = std::max(oh0, inside_h.lo), inner1 = std::min(oh1, inside_h.hi);
      if (row_kernel == nullptr && quads > 0 && inner1 > inner0) {
        const S* first = in + n * in_s.n + (inner0 * g.stride_h - g.pad_top) * in_s.h +
                         (ow_lo * g.stride_w - g.pad_left) * in_s.w;
        S* dst = out + n * out_s.n + inner0 * out_s.h + ow_lo * out_s.w;
        // (KK = 9: 3x3 only, whose taps cl_interior_quads takes as three rows of three)
        const auto quad_rows =
            g.kernel_h == 3 && g.kernel_w == 3 ? cl_interior_quads<S, T, 9> : cl_interior_quads<S, T, 0>;
        // (the 1-3 interior columns after the quads go with the listed pixels: four of those
        // at a time load a tap's weights once, a single interior pixel once per FMA)
        quad_rows(first, g.stride_h * in_s.h, g.stride_w * in_s.w, off.data(), kk, wt.data(), cpad, b.data(), C,
                  inner1 - inner0, quads, /*rest=*/0, dst, out_s.h, out_s.w, stream, by_pixel);
      }
      for (int64_t oh = oh0; oh < oh1; ++oh) {  // the other pixels: taps listed, four pixels at a time
        // [skip_lo, skip_hi): the columns the row kernel or the quads took
        int64_t skip_lo = 0, skip_hi = 0;
        if (row_kernel != nullptr) skip_lo = row_lo, skip_hi = row_hi;
        else if (quads > 0 && row_inside(oh)) skip_lo = ow_lo, skip_hi = quad_end;
        for (int64_t ow = 0, np = 0; ow < g.out_w; ow += np) {
          if (ow == skip_lo && skip_hi > skip_lo) {
            np = skip_hi - ow;
            continue;
          }
          np = std::min<int64_t>(4, (ow < skip_lo ? skip_lo : g.out_w) - ow);
          int64_t nt = 0;  // the taps any of the np pixels has inside
          for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
            const int64_t ih = source_index(oh * g.stride_h - g.pad_top + kh * g.dilation_h, g.in_h, g.mode);
            if (ih < 0) continue;
            const S* in_row = in + n * in_s.n + ih * in_s.h;
            for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
              bool any = false;
              for (int64_t p = 0; p < np; ++p) any = any || cols[(ow + p) * g.kernel_w + kw] >= 0;
              if (!any) continue;
              for (int64_t p = 0; p < np; ++p) {
                const int64_t iw = cols[(ow + p) * g.kernel_w + kw];
                srcs[p * kk + nt] = iw >= 0 ? in_row + iw * in_s.w : zeros.data();
              }
              ids[nt++] = kh * g.kernel_w + kw;
            }
          }
          S* dst = out + n * out_s.n + oh * out_s.h + ow * out_s.w;
          switch (np) {
            case 4: cl_listed_pixels<S, T, 4>(srcs.data(), kk, ids.data(), nt, wt.data(), cpad, b.data(), C, dst, out_s.w); break;
            case 3: cl_listed_pixels<S, T, 3>(srcs.data(), kk, ids.data(), nt, wt.data(), cpad, b.data(), C, dst, out_s.w); break;
            case 2: cl_listed_pixels<S, T, 2>(srcs.data(), kk, ids.data(), nt, wt.data(), cpad, b.data(), C, dst, out_s.w); break;
            default: cl_listed_pixels<S, T, 1>(srcs.data(), kk, ids.data(), nt, wt.data(), cpad, b.data(), C, dst, out_s.w); break;
          }
        }
      }
    }
    if (stream) streamed_stores_done();
  });
}

// ---------------------------------------------------------------- channel-blocked
// Vectors along W waste lanes on small planes (a 7-wide row fills 7 of 16) and make every
// tap an unaligned (cache-line splitting) load. These kernels instead take V consecutive
// output channels of one image: the input planes they read are staged,
// padded, as [padded row][padded column][V lanes] (aligned vectors, one per pixel), the
// weights as [tap][V], and each FMA updates V channels of one output pixel, register-
// blocked over 8 output pixels. Lanes past the last channel compute zeros and are dropped.

struct BlockedGeometry {
  int64_t padded_h, padded_w, plane;  // staged plane: padded_h * padded_w pixels of V lanes
  BlockedGeometry(const Conv2dGeometry& g)
      : padded_h(g.pad_top + g.in_h + g.pad_bottom), padded_w(g.pad_left + g.in_w + g.pad_right),
        plane(padded_h * padded_w) {}
};

// Stages the input planes read by output channels [oc0, oc0 + lanes) of image n.
template <typename scalar_t, typename T>
void stage_blocked(const scalar_t* in, const Strides4d& s, const Conv2dGeometry& g, const BlockedGeometry& bg,
                   const int64_t* row_src, const int64_t* col_src, int64_t n, int64_t oc0, int64_t lanes,
                   int64_t vec, T* dst, int64_t r0 = 0, int64_t r1 = -1) {
  if (r1 < 0) r1 = bg.padded_h;
  dst -= r0 * bg.padded_w * vec;  // dst holds padded rows [r0, r1)
  const int64_t mult = multiplier(g);
  if (mult == 1 && lanes == vec) {  // pixel by pixel: one contiguous vector per pixel
    const scalar_t* base = in + n * s.n + oc0 * s.c;
    for (int64_t r = r0; r < r1; ++r) {
      T* d = dst + r * bg.padded_w * vec;
      const int64_t ih = row_src[r];
      for (int64_t j = 0; j < bg.padded_w; ++j, d += vec) {
        const int64_t iw = col_src[j];
        if (ih < 0 || iw < 0) {
          for (int64_t l = 0; l < vec; ++l) d[l] = T(0);
          continue;
        }
        const scalar_t* src = base + ih * s.h + iw * s.w;
        for (int64_t l = 0; l < vec; ++l) d[l] = static_cast<T>(src[l * s.c]);
      }
    }
    return;
  }
  for (int64_t l = 0; l < vec; ++l) {
    if (l >= lanes) {  // lanes past the last channel: zeros (their products are dropped)
      for (int64_t i = r0 * bg.padded_w; i < r1 * bg.padded_w; ++i) dst[i * vec + l] = T(0);
      continue;
    }
    const scalar_t* plane = in + n * s.n + ((oc0 + l) / mult) * s.c;
    for (int64_t r = r0; r < r1; ++r) {
      T* d = dst + r * bg.padded_w * vec + l;
      const int64_t ih = row_src[r];
      if (ih < 0) {
        for (int64_t j = 0; j < bg.padded_w; ++j) d[j * vec] = T(0);
        continue;
      }
      const scalar_t* src = plane + ih * s.h;
      for (int64_t j = 0; j < bg.padded_w; ++j) {
        const int64_t iw = col_src[j];
        d[j * vec] = iw < 0 ? T(0) : static_cast<T>(src[iw * s.w]);
      }
    }
  }
}

// Padded-coordinate maps of one axis: real index read at padded position j, or -1.
std::vector<int64_t> padded_map(int64_t size, int64_t pad_before, int64_t pad_after, PaddingMode mode) {
  std::vector<int64_t> m(pad_before + size + pad_after);
  for (int64_t j = 0; j < static_cast<int64_t>(m.size()); ++j) m[j] = source_index(j - pad_before, size, mode);
  return m;
}

// P output pixels (ow..ow + P - 1 of row oh, counted from the first staged row) of a block:
// one accumulator per pixel, kernel rows [kh0, kh1). SW > 0 fixes the column stride (and
// the column dilation, DW) and KW > 0 the kernel width at compile time: the tap loop unrolls
// with every load at a constant offset, and the accumulators stay in registers (with
// run-time steps the address arithmetic took the FMA ports). Trim: the block is a whole
// row of P pixels with KW / 2 zero columns each side (a "same" convolution, stride 1): the
// taps that read those columns are left out at compile time (a quarter of a 7x7 on 7x7).
// With a run-time width (KW = 0), only kernel columns [kw0, kw1) are read: blocked_row_kw
// leaves out those in which every pixel of the block reads zero padding.
template <typename T, int P, int KW, int SW, int DW = 1, bool Trim = false>
inline void blocked_pixels(const T* staged, const T* wt, const Conv2dGeometry& g, const BlockedGeometry& bg,
                           int64_t oh, int64_t ow, int64_t kh0, int64_t kh1, const T* bias, T* out,
                           int64_t kw0 = 0, int64_t kw1 = 0) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const int64_t kw_count = KW > 0 ? KW : g.kernel_w, kw_begin = KW > 0 ? 0 : kw0, kw_end = KW > 0 ? KW : kw1;
  const int64_t step = (SW > 0 ? SW : g.stride_w) * V, tap_step = (SW > 0 ? DW : g.dilation_w) * V;
  Vec acc[P];
  const Vec b = Vec::loadu(bias);
  for (int p = 0; p < P; ++p) acc[p] = b;
  for (int64_t kh = kh0; kh < kh1; ++kh) {
    const T* row = staged + ((oh * g.stride_h + kh * g.dilation_h) * bg.padded_w + ow * g.stride_w) * V;
    const T* wk = wt + kh * kw_count * V;
#pragma GCC unroll 8
    for (int64_t kw = kw_begin; kw < kw_end; ++kw) {
      const Vec wv = Vec::loadu(wk + kw * V);
      const T* src = row + kw * tap_step;
      for (int p = 0; p < P; ++p) {
        if (Trim && (p + kw < KW / 2 || p + kw >= KW / 2 + P)) continue;
        acc[p] = at::vec::fmadd(wv, Vec::loadu(src + p * step), acc[p]);
      }
    }
  }
  for (int p = 0; p < P; ++p) acc[p].store(out + p * V);
}

// One output row of a block: 8 pixels at a time, then the rest of the row in one or two
// calls (as many independent accumulators as pixels: a 7-wide row one pixel at a time
// would wait on the FMA latency).
template <typename T, int KW, int SW, int DW = 1>
void blocked_row_kw(const T* staged, const T* wt, const Conv2dGeometry& g, const BlockedGeometry& bg, int64_t oh,
                    int64_t kh0, int64_t kh1, const T* bias, T* orow) {
  constexpr int64_t V = at::vec::Vectorized<T>::size();
  if constexpr (SW == 1 && DW == 1 && KW > 0) {  // 7-wide planes of ConvNeXt and MobileNet ("same", zeros)
    if (g.out_w == 7 && g.in_w == 7 && g.pad_left == KW / 2 && g.mode == PaddingMode::Zeros)
      return blocked_pixels<T, 7, KW, 1, 1, true>(staged, wt, g, bg, oh, 0, kh0, kh1, bias, orow);
  }
  // Run-time widths (the large kernels): the kernel columns [kw0, kw1) in which some pixel
  // of the P from ow reads the input; with zero padding the others add nothing (on 31x31
  // over 32 columns, blocks at the edges skip up to 8 of the 31).
  const int64_t sw = g.stride_w, dw = g.dilation_w;
  int64_t ow = 0;
  auto columns = [&](int64_t p) -> std::pair<int64_t, int64_t> {
    if (KW > 0 || g.mode != PaddingMode::Zeros) return {0, g.kernel_w};
    // input column of pixel ow + q, tap kw: (ow + q) * sw - pad_left + kw * dw, rising in q
    const int64_t need_last = g.pad_left - (ow + p - 1) * sw, room_first = g.in_w + g.pad_left - ow * sw;
    const int64_t lo = need_last <= 0 ? 0 : (need_last + dw - 1) / dw;
    const int64_t hi = room_first <= 0 ? 0 : (room_first + dw - 1) / dw;
    return {std::min(lo, g.kernel_w), std::max(std::min(hi, g.kernel_w), std::min(lo, g.kernel_w))};
  };
  auto pixels = [&](int64_t count) {  // `count` (1 to 8) pixels from ow
    T* o = orow + ow * V;
    const auto [kw0, kw1] = columns(count);
    switch (count) {
      case 8: blocked_pixels<T, 8, KW, SW, DW>(staged, wt, g, bg, oh, ow, kh0, kh1, bias, o, kw0, kw1); break;
      case 7: blocked_pixels<T, 7, KW, SW, DW>(staged, wt, g, bg, oh, ow, kh0, kh1, bias, o, kw0, kw1); break;
      case 6: blocked_pixels<T, 6, KW, SW, DW>(staged, wt, g, bg, oh, ow, kh0, kh1, bias, o, kw0, kw1); break;
      case 5: blocked_pixels<T, 5, KW, SW, DW>(staged, wt, g, bg, oh, ow, kh0, kh1, bias, o, kw0, kw1); break;
      case 4: blocked_pixels<T, 4, KW, SW, DW>(staged, wt, g, bg, oh, ow, kh0, kh1, bias, o, kw0, kw1); break;
      case 3: blocked_pixels<T, 3, KW, SW, DW>(staged, wt, g, bg, oh, ow, kh0, kh1, bias, o, kw0, kw1); break;
      case 2: blocked_pixels<T, 2, KW, SW, DW>(staged, wt, g, bg, oh, ow, kh0, kh1, bias, o, kw0, kw1); break;
      case 1: blocked_pixels<T, 1, KW, SW, DW>(staged, wt, g, bg, oh, ow, kh0, kh1, bias, o, kw0, kw1); break;
      default: break;
    }
    ow += count;
  };
  // A row's last 9 to 11 pixels go as two groups of 4 to 6: alone, a last group of 1 to 3
  // would wait on its FMAs' latency (a 33-wide row's last pixel took about a tenth of it).
  const int64_t rem = g.out_w % 8, split = g.out_w > 8 && rem > 0 && rem < 4 ? 8 + rem : 0;
  while (g.out_w - ow > (split > 0 ? split : 7)) pixels(8);
  if (split > 0) pixels(split / 2);
  if (ow < g.out_w) pixels(g.out_w - ow);
}

template <typename T, int SW, int DW = 1>
void blocked_row_sw(const T* staged, const T* wt, const Conv2dGeometry& g, const BlockedGeometry& bg, int64_t oh,
                    int64_t kh0, int64_t kh1, const T* bias, T* orow) {
  // The common widths with the tap loop unrolled (9 to 13: the large kernels at stride 1).
  constexpr bool large = SW == 1 && DW == 1;
  switch (g.kernel_w) {
    case 3: return blocked_row_kw<T, 3, SW, DW>(staged, wt, g, bg, oh, kh0, kh1, bias, orow);
    case 5: return blocked_row_kw<T, 5, SW, DW>(staged, wt, g, bg, oh, kh0, kh1, bias, orow);
    case 7: return blocked_row_kw<T, 7, SW, DW>(staged, wt, g, bg, oh, kh0, kh1, bias, orow);
    case 9: if constexpr (large) return blocked_row_kw<T, 9, SW, DW>(staged, wt, g, bg, oh, kh0, kh1, bias, orow);
      [[fallthrough]];
    case 11: if constexpr (large) return blocked_row_kw<T, 11, SW, DW>(staged, wt, g, bg, oh, kh0, kh1, bias, orow);
      [[fallthrough]];
    case 13: if constexpr (large) return blocked_row_kw<T, 13, SW, DW>(staged, wt, g, bg, oh, kh0, kh1, bias, orow);
      [[fallthrough]];
    default: return blocked_row_kw<T, 0, SW, DW>(staged, wt, g, bg, oh, kh0, kh1, bias, orow);
  }
}

template <typename T>
void blocked_row(const T* staged, const T* wt, const Conv2dGeometry& g, const BlockedGeometry& bg, int64_t oh,
                 int64_t kh0, int64_t kh1, const T* bias, T* orow) {
  if (g.dilation_w == 1 && g.stride_w == 1) return blocked_row_sw<T, 1>(staged, wt, g, bg, oh, kh0, kh1, bias, orow);
  if (g.dilation_w == 1 && g.stride_w == 2) return blocked_row_sw<T, 2>(staged, wt, g, bg, oh, kh0, kh1, bias, orow);
  // Atrous convolutions (DeepLab's 5x5 and 3x3 at dilation 2): with a run-time tap step the
  // address arithmetic competed with the FMAs.
  if (g.dilation_w == 2 && g.stride_w == 1) return blocked_row_sw<T, 1, 2>(staged, wt, g, bg, oh, kh0, kh1, bias, orow);
  blocked_row_kw<T, 0, 0>(staged, wt, g, bg, oh, kh0, kh1, bias, orow);
}

// Large planes go in strips of output rows, so that a strip's staged input rows and its
// results stay in L2 (the halo rows between strips are staged twice).
constexpr int64_t kBlockedStripBytes = 512 << 10;

int64_t blocked_strip_rows(const Conv2dGeometry& g, const BlockedGeometry& bg, int64_t vec, int64_t elem) {
  const int64_t in_row = bg.padded_w * vec * elem, out_row = g.out_w * vec * elem;
  const int64_t room = kBlockedStripBytes - ((g.kernel_h - 1) * g.dilation_h + 1) * in_row;
  const int64_t rows = room > 0 ? room / (g.stride_h * in_row + out_row) : 1;
  return std::min(std::max<int64_t>(rows, 1), g.out_h);
}

// Padded input rows [strip_first_row(a), strip_end_row(e)) are read by output rows [a, e).
int64_t strip_first_row(const Conv2dGeometry& g, int64_t a) { return a * g.stride_h; }
int64_t strip_end_row(const Conv2dGeometry& g, int64_t e) {
  return (e - 1) * g.stride_h + (g.kernel_h - 1) * g.dilation_h + 1;
}

// The padded columns of a staged row whose real columns are in place: copies of them
// (reflect, replicate, circular) or zeros.
template <typename T>
void fill_padded_columns(T* row, const Conv2dGeometry& g, const int64_t* col_src) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  auto fill = [&](int64_t j) {
    const int64_t iw = col_src[j];
    (iw < 0 ? Vec(T(0)) : Vec::loadu(row + (g.pad_left + iw) * V)).store(row + j * V);
  };
  for (int64_t j = 0; j < g.pad_left; ++j) fill(j);
  for (int64_t j = g.pad_left + g.in_w; j < g.pad_left + g.in_w + g.pad_right; ++j) fill(j);
}

// Padded rows [r0, r1) of a block from NCHW planes with unit column stride (no conversion):
// V channel runs at a time become pixel vectors (lanes.h). lane_src[l] is lane l's
// input plane, nullptr past the last channel (read as zeros). A whole contiguous plane is
// one run of in_h * in_w pixels, so narrow rows (7 wide) still fill whole transposes; its
// padded rows are then copies of its real ones.
template <typename T>
void stage_planes(const T* const* lane_src, const Strides4d& s, const Conv2dGeometry& g, const BlockedGeometry& bg,
                  const int64_t* row_src, const int64_t* col_src, int64_t r0, int64_t r1, const T* zeros, T* dst) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const int64_t pw = bg.padded_w;
  const T* src[V];
  T* dsts[V];
  // Zero padding: the padded columns (and, for a whole plane, rows) of dst are only ever
  // written with zeros, so they keep the zeros of the buffer's allocation.
  const bool zero_borders = g.mode == PaddingMode::Zeros;
  if (r0 == 0 && r1 == bg.padded_h && s.h == g.in_w) {
    const int64_t total = g.in_h * g.in_w;
    int64_t ih = 0, iw = 0;
    for (int64_t f = 0; f < total; f += V) {
      const int64_t count = std::min(V, total - f);
      for (int64_t l = 0; l < V; ++l) src[l] = lane_src[l] != nullptr ? lane_src[l] + f : zeros;
      for (int64_t i = 0; i < count; ++i) {
        dsts[i] = dst + ((ih + g.pad_top) * pw + g.pad_left + iw) * V;
        if (++iw == g.in_w) iw = 0, ++ih;
      }
      runs_to_pixels(src, count, dsts);
    }
    if (zero_borders) return;  // never written: still zero from the buffer's allocation
    for (int64_t ih = 0; ih < g.in_h; ++ih) fill_padded_columns(dst + (ih + g.pad_top) * pw * V, g, col_src);
    for (int64_t r = 0; r < bg.padded_h; ++r) {
      const int64_t ih = row_src[r];
      if (ih >= 0 && ih + g.pad_top == r) continue;
      T* row = dst + r * pw * V;
      if (ih < 0) {
        std::fill(row, row + pw * V, T(0));
      } else {
        std::copy(dst + (ih + g.pad_top) * pw * V, dst + (ih + g.pad_top + 1) * pw * V, row);
      }
    }
    return;
  }
  for (int64_t r = r0; r < r1; ++r) {
    T* row = dst + (r - r0) * pw * V;
    const int64_t ih = row_src[r];
    if (ih < 0) {
      std::fill(row, row + pw * V, T(0));
      continue;
    }
    for (int64_t x = 0; x < g.in_w; x += V) {
      const int64_t count = std::min(V, g.in_w - x);
      for (int64_t l = 0; l < V; ++l) src[l] = lane_src[l] != nullptr ? lane_src[l] + ih * s.h + x : zeros;
      for (int64_t i = 0; i < count; ++i) dsts[i] = row + (g.pad_left + x + i) * V;
      runs_to_pixels(src, count, dsts);
    }
    if (!zero_borders) fill_padded_columns(row, g, col_src);
  }
}

// grad_output as stage_planes' "input": an unpadded plane of out_h x out_w pixels with
// `left` and `right` zero columns around its rows (the maps are the identity inside).
struct GradOutputPlanes {
  Conv2dGeometry g;
  BlockedGeometry bg;
  std::vector<int64_t> rows, cols;
  GradOutputPlanes(const Conv2dGeometry& conv, int64_t left, int64_t right)
      : g(unpadded(conv, left, right)), bg(g), rows(padded_map(conv.out_h, 0, 0, PaddingMode::Zeros)),
        cols(padded_map(conv.out_w, left, right, PaddingMode::Zeros)) {}

  static Conv2dGeometry unpadded(Conv2dGeometry conv, int64_t left, int64_t right) {
    conv.in_h = conv.out_h, conv.in_w = conv.out_w, conv.pad_top = conv.pad_bottom = 0;
    conv.pad_left = left, conv.pad_right = right, conv.mode = PaddingMode::Zeros;
    return conv;
  }
};

// The inverse of stage_planes for results: rows [a, e) of `width` pixel vectors in src
// ([pixel][V], from row a) go to the `lanes` planes at lane_dst (unit column stride, rows
// s.h apart) through the transposes, as one run of pixels when the rows are contiguous.
template <typename T>
void store_planes(const T* src, const Strides4d& s, int64_t width, int64_t a, int64_t e, int64_t lanes,
                  T* const* lane_dst) {
  constexpr int64_t V = at::vec::Vectorized<T>::size();
  const bool flat = s.h == width;
  T* dsts[V];
  for (int64_t row = a; row < e; row += flat ? e - a : 1) {
    const int64_t first = flat ? a * width : row * s.h, count = flat ? (e - a) * width : width;
    const T* run = src + (row - a) * width * V;
    for (int64_t x = 0; x < count; x += V) {
      for (int64_t l = 0; l < lanes; ++l) dsts[l] = lane_dst[l] + first + x;
      pixels_to_runs(run + x * V, std::min(V, count - x), lanes, dsts);
    }
  }
}

// What every channel-blocked forward needs, once per call: the bias padded to whole
// blocks, the padded-coordinate maps, and per output row the kernel rows that read real
// input (zero padding skips the others; they are contiguous, as padding is only before and
// after the real rows). The weights are packed per block by the task that uses them
// (pack_block_weights): packing all of them up front ran on one thread and, for 7x7
// planes, cost as much as a quarter of the convolution.
template <typename scalar_t>
struct BlockedForward {
  using T = at::opmath_type<scalar_t>;
  static constexpr int64_t V = at::vec::Vectorized<T>::size();
  const Conv2dGeometry& g;
  BlockedGeometry bg;
  int64_t kk, blocks;
  const scalar_t* weight;
  Strides4d weight_s;
  std::vector<T> bias;
  std::vector<int64_t> rows, cols, kh_range;

  BlockedForward(const at::Tensor& w, const at::Tensor* b, const Conv2dGeometry& geo)
      : g(geo), bg(geo), kk(geo.kernel_h * geo.kernel_w), blocks((geo.out_channels + V - 1) / V),
        weight(w.const_data_ptr<scalar_t>()), weight_s(strides4d(w)),
        bias(bias_values<scalar_t, T>(b, geo.out_channels, blocks * V)),
        rows(padded_map(g.in_h, g.pad_top, g.pad_bottom, g.mode)),
        cols(padded_map(g.in_w, g.pad_left, g.pad_right, g.mode)), kh_range(2 * g.out_h) {
    for (int64_t oh = 0; oh < g.out_h; ++oh) {
      int64_t lo = 0, hi = g.kernel_h;
      if (g.mode == PaddingMode::Zeros) {
        while (lo < hi && rows[oh * g.stride_h + lo * g.dilation_h] < 0) ++lo;
        while (hi > lo && rows[oh * g.stride_h + (hi - 1) * g.dilation_h] < 0) --hi;
      }
      kh_range[2 * oh] = lo;
      kh_range[2 * oh + 1] = hi;
    }
  }

  // Output rows [a, e) of block `block` (weights packed in wt) from its staged rows
  // (starting at padded row a * sh) into obuf ([pixel][V]).
  void compute(const T* staged, const T* wt, int64_t block, int64_t a, int64_t e, T* obuf) const {
    for (int64_t oh = a; oh < e; ++oh)
      blocked_row(staged, wt, g, bg, oh - a, kh_range[2 * oh], kh_range[2 * oh + 1], bias.data() + block * V,
                  obuf + (oh - a) * g.out_w * V);
  }
};

// Forward, channel-blocked, NCHW (and any layout that is not channels_last): per (image,
// block of V output channels), strips of output rows; each strip's input rows are staged,
// computed into obuf ([pixel][V]) and written back. Without a dtype conversion, planes with
// unit column stride go through the transposes; anything else through stage_blocked's
// scalar loops.
template <typename scalar_t>
void forward_blocked(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias,
                     at::Tensor& output, const Conv2dGeometry& g) {
  using T = at::opmath_type<scalar_t>;
  constexpr int64_t V = at::vec::Vectorized<T>::size();
  constexpr bool same = std::is_same<T, scalar_t>::value;
  const BlockedForward<scalar_t> f(weight, bias, g);
  const int64_t mult = multiplier(g);
  const Strides4d in_s = strides4d(input), out_s = strides4d(output);
  const bool planes_in = same && in_s.w == 1, planes_out = same && out_s.w == 1;
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  scalar_t* out = output.mutable_data_ptr<scalar_t>();
  const int64_t strip = blocked_strip_rows(g, f.bg, V, sizeof(T));
  const int64_t work = V * (g.out_h * g.out_w * f.kk + f.bg.plane);
  // Items are block-major, so that a task packs each block's weights once for its images.
  at::parallel_for(0, g.batch * f.blocks, grain_for(work), [&](int64_t begin, int64_t end) {
    AlignedBuffer<T> staged(strip_end_row(g, strip) * f.bg.padded_w * V), obuf(strip * g.out_w * V);
    AlignedBuffer<T> wt(f.kk * V);
    int64_t packed = -1;  // the block whose weights are in wt
    const std::vector<T> zeros(V, T(0));
    const scalar_t* lane_src[V];
    scalar_t* lane_dst[V];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item % g.batch, block = item / g.batch, oc0 = block * V;
      if (block != packed) pack_block_weights<scalar_t, T>(f.weight, f.weight_s, g, block, wt.data(), V), packed = block;
      const int64_t lanes = std::min<int64_t>(V, g.out_channels - oc0);
      for (int64_t l = 0; l < V; ++l) {
        lane_src[l] = l < lanes ? in + n * in_s.n + ((oc0 + l) / mult) * in_s.c : nullptr;
        lane_dst[l] = l < lanes ? out + n * out_s.n + (oc0 + l) * out_s.c : nullptr;
      }
      for (int64_t a = 0; a < g.out_h; a += strip) {
        const int64_t e = std::min(a + strip, g.out_h), r0 = strip_first_row(g, a), r1 = strip_end_row(g, e);
        if constexpr (same) {
          if (planes_in)
            stage_planes<T>(lane_src, in_s, g, f.bg, f.rows.data(), f.cols.data(), r0, r1, zeros.data(),
                            staged.data());
        }
        if (!planes_in)
          stage_blocked(in, in_s, g, f.bg, f.rows.data(), f.cols.data(), n, oc0, lanes, V, staged.data(), r0, r1);
        f.compute(staged.data(), wt.data(), block, a, e, obuf.data());
        if constexpr (same) {
          if (planes_out) {
            store_planes<T>(obuf.data(), out_s, g.out_w, a, e, lanes, lane_dst);
            continue;
          }
        }
        for (int64_t l = 0; l < lanes; ++l)
          for (int64_t oh = a; oh < e; ++oh) {
            scalar_t* drow = lane_dst[l] + oh * out_s.h;
            const T* src = obuf.data() + (oh - a) * g.out_w * V + l;
            for (int64_t ow = 0; ow < g.out_w; ++ow) drow[ow * out_s.w] = static_cast<scalar_t>(src[ow * V]);
          }
      }
    }
  });
}

// grad_weight, channel-blocked: part[tap] += sum over the strip's output pixels of
// grad_output(pixel) * staged input(pixel's tap), one vector of V channels per tap, for the
// R x KB taps kernel rows [kh0, kh0 + R) by columns [kw0, kw0 + KB): each grad_output
// vector is loaded once for all of them (one load per FMA for the taps' input, R * KB
// independent accumulators). Unit: column stride and dilation 1 at compile time. R is the
// group's exact row count: with a run-time count (a row loop that stopped at it) GCC kept
// the accumulators on the stack, every FMA waiting on a store and a load. AMD EPYC Zen 4, 2
// threads, float32 weight gradient, builds alternated twice: 8x240x28x28 5x5 1.16-1.51 ->
// 0.59-0.64 ms, 8x672x14x14 5x5 0.92-1.27 -> 0.57, 8x768x7x7 7x7 0.63-0.65 -> 0.36-0.42,
// 8x144x56x56 3x3 1.6-2.0 -> 0.95-1.29, 8x960x7x7 3x3 0.21-0.24 -> 0.16-0.18.
template <typename T, int R, int KB, bool Unit>
void grad_weight_taps(const T* staged, const T* gbuf, const Conv2dGeometry& g, const BlockedGeometry& bg,
                      int64_t strip_rows, int64_t kh0, int64_t kw0, T* part) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const int64_t step = (Unit ? 1 : g.stride_w) * V, tap_step = (Unit ? 1 : g.dilation_w) * V;
  Vec acc[R][KB];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < KB; ++j) acc[r][j] = Vec(T(0));
  for (int64_t oh = 0; oh < strip_rows; ++oh) {
    const T* grow = gbuf + oh * g.out_w * V;
    const T* srow[R];
    for (int r = 0; r < R; ++r)
      srow[r] = staged + ((oh * g.stride_h + (kh0 + r) * g.dilation_h) * bg.padded_w +
                          kw0 * (Unit ? 1 : g.dilation_w)) * V;
    for (int64_t ow = 0; ow < g.out_w; ++ow) {
      const Vec gv = Vec::loadu(grow + ow * V);
      for (int r = 0; r < R; ++r) {
        const T* src = srow[r] + ow * step;
        for (int j = 0; j < KB; ++j) acc[r][j] = at::vec::fmadd(gv, Vec::loadu(src + j * tap_step), acc[r][j]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < KB; ++j) {
      T* d = part + ((kh0 + r) * g.kernel_w + kw0 + j) * V;
      (Vec::loadu(d) + acc[r][j]).store(d);
    }
}

// The taps of R kernel rows from kh0 by kb (1 to 8; to 5 for R = 3) columns from kw0.
template <typename T, int R, bool Unit>
void grad_weight_row_group(const T* staged, const T* gbuf, const Conv2dGeometry& g, const BlockedGeometry& bg,
                           int64_t strip_rows, int64_t kh0, int64_t kw0, int64_t kb, T* part) {
  switch (kb) {
    case 1: return grad_weight_taps<T, R, 1, Unit>(staged, gbuf, g, bg, strip_rows, kh0, kw0, part);
    case 2: return grad_weight_taps<T, R, 2, Unit>(staged, gbuf, g, bg, strip_rows, kh0, kw0, part);
    case 3: return grad_weight_taps<T, R, 3, Unit>(staged, gbuf, g, bg, strip_rows, kh0, kw0, part);
    case 4: return grad_weight_taps<T, R, 4, Unit>(staged, gbuf, g, bg, strip_rows, kh0, kw0, part);
    case 5: return grad_weight_taps<T, R, 5, Unit>(staged, gbuf, g, bg, strip_rows, kh0, kw0, part);
    default: break;
  }
  if constexpr (R <= 2) {
    switch (kb) {
      case 6: return grad_weight_taps<T, R, 6, Unit>(staged, gbuf, g, bg, strip_rows, kh0, kw0, part);
      case 7: return grad_weight_taps<T, R, 7, Unit>(staged, gbuf, g, bg, strip_rows, kh0, kw0, part);
      default: return grad_weight_taps<T, R, 8, Unit>(staged, gbuf, g, bg, strip_rows, kh0, kw0, part);
    }
  }
}

// Every tap of a strip, in groups of kernel rows (up to 3, or 2 with more than 5 columns)
// by up to 8 kernel columns: up to 16 accumulators per group.
template <typename T, bool Unit>
void grad_weight_strip(const T* staged, const T* gbuf, const Conv2dGeometry& g, const BlockedGeometry& bg,
                       int64_t strip_rows, T* part) {
  for (int64_t kw0 = 0; kw0 < g.kernel_w; kw0 += 8) {
    const int64_t kb = std::min<int64_t>(8, g.kernel_w - kw0);
    const int64_t r_max = kb <= 5 ? 3 : 2;
    for (int64_t kh0 = 0; kh0 < g.kernel_h; kh0 += r_max) {
      switch (std::min(r_max, g.kernel_h - kh0)) {
        case 1: grad_weight_row_group<T, 1, Unit>(staged, gbuf, g, bg, strip_rows, kh0, kw0, kb, part); break;
        case 2: grad_weight_row_group<T, 2, Unit>(staged, gbuf, g, bg, strip_rows, kh0, kw0, kb, part); break;
        default: grad_weight_row_group<T, 3, Unit>(staged, gbuf, g, bg, strip_rows, kh0, kw0, kb, part); break;
      }
    }
  }
}

// grad_weight, channel-blocked: per (image, block of V output channels), strips of output
// rows as in forward_blocked; the strip's input rows are staged the same way and its
// grad_output rows become pixel vectors (transposed like an unpadded input), then every
// tap's V channel sums are accumulated in the item's partial. The per-image partials are
// added over images in order (reproducible with any thread count).
template <typename scalar_t>
void grad_weight_blocked(const at::Tensor& grad_output, const at::Tensor& input, at::Tensor& grad_weight,
                         const Conv2dGeometry& g) {
  using T = at::opmath_type<scalar_t>;
  constexpr int64_t V = at::vec::Vectorized<T>::size();
  constexpr bool same = std::is_same<T, scalar_t>::value;
  const BlockedGeometry bg(g);
  const int64_t kk = g.kernel_h * g.kernel_w, blocks = (g.out_channels + V - 1) / V, mult = multiplier(g);
  const std::vector<int64_t> rows = padded_map(g.in_h, g.pad_top, g.pad_bottom, g.mode);
  const std::vector<int64_t> cols = padded_map(g.in_w, g.pad_left, g.pad_right, g.mode);
  // grad_output rows as an unpadded "input" for stage_planes: identity maps.
  const GradOutputPlanes gop(g, 0, 0);
  const Strides4d in_s = strides4d(input), go_s = strides4d(grad_output);
  const bool planes_in = same && in_s.w == 1, planes_go = same && go_s.w == 1;
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
  const int64_t strip = blocked_strip_rows(g, bg, V, sizeof(T));
  std::vector<T> partial(g.batch * blocks * kk * V, T(0));
  const int64_t work = V * (g.out_h * g.out_w * kk + bg.plane);
  const bool unit = g.stride_w == 1 && g.dilation_w == 1;
  at::parallel_for(0, g.batch * blocks, grain_for(work), [&](int64_t begin, int64_t end) {
    AlignedBuffer<T> staged(strip_end_row(g, strip) * bg.padded_w * V), gbuf(strip * g.out_w * V);
    const std::vector<T> zeros(V, T(0));
    const scalar_t* lane_in[V];
    const scalar_t* lane_go[V];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / blocks, oc0 = (item % blocks) * V;
      const int64_t lanes = std::min<int64_t>(V, g.out_channels - oc0);
      for (int64_t l = 0; l < V; ++l) {
        lane_in[l] = l < lanes ? in + n * in_s.n + ((oc0 + l) / mult) * in_s.c : nullptr;
        lane_go[l] = l < lanes ? go + n * go_s.n + (oc0 + l) * go_s.c : nullptr;
      }
      T* part = partial.data() + item * kk * V;
      for (int64_t a = 0; a < g.out_h; a += strip) {
        const int64_t e = std::min(a + strip, g.out_h);
        const int64_t r0 = strip_first_row(g, a), r1 = strip_end_row(g, e);
        if constexpr (same) {
          if (planes_in)
            stage_planes<T>(lane_in, in_s, g, bg, rows.data(), cols.data(), r0, r1, zeros.data(), staged.data());
          if (planes_go)
            stage_planes<T>(lane_go, go_s, gop.g, gop.bg, gop.rows.data(), gop.cols.data(), a, e, zeros.data(),
                            gbuf.data());
        }
        if (!planes_in)
          stage_blocked(in, in_s, g, bg, rows.data(), cols.data(), n, oc0, lanes, V, staged.data(), r0, r1);
        if (!planes_go)
          for (int64_t l = 0; l < V; ++l)
            for (int64_t oh = a; oh < e; ++oh)
              for (int64_t ow = 0; ow < g.out_w; ++ow)
                gbuf.data()[((oh - a) * g.out_w + ow) * V + l] =
                    l < lanes ? static_cast<T>(lane_go[l][oh * go_s.h + ow * go_s.w]) : T(0);
        if (unit) grad_weight_strip<T, true>(staged.data(), gbuf.data(), g, bg, e - a, part);
        else grad_weight_strip<T, false>(staged.data(), gbuf.data(), g, bg, e - a, part);
      }
    }
  });
  const Strides4d gw_s = strides4d(grad_weight);
  scalar_t* gw = grad_weight.mutable_data_ptr<scalar_t>();
  for (int64_t oc = 0; oc < g.out_channels; ++oc)
    for (int64_t t = 0; t < kk; ++t) {
      T sum = 0;
      for (int64_t n = 0; n < g.batch; ++n) sum += partial[((n * blocks + oc / V) * kk + t) * V + oc % V];
      gw[gw_s.offset(oc, 0, t / g.kernel_w, t % g.kernel_w)] = static_cast<scalar_t>(sum);
    }
}

#if defined(CNNOPS_HAVE_LANES)
// One (image, output channel) plane's operands: the input plane the channel reads (channel
// oc / multiplier), its kH * kW weights, its bias and its output plane.
struct Plane {
  const float* in;
  const float* w;
  float bias;
  float* out;
};

// The float NCHW planes of one call by item = image * out_channels + output channel. The
// direct, staged, shifted and flat kernels each run over all the items in parallel, a task
// taking items [begin, end) from from(begin).
struct FloatPlanes {
  Strides4d in_s, out_s;
  const float* in;
  float* out;
  int64_t channels, mult, kk;
  std::vector<float> w, b;
  FloatPlanes(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias, at::Tensor& output,
              const Conv2dGeometry& g)
      : in_s(strides4d(input)), out_s(strides4d(output)), in(input.const_data_ptr<float>()),
        out(output.mutable_data_ptr<float>()), channels(g.out_channels), mult(multiplier(g)),
        kk(g.kernel_h * g.kernel_w), w(weight_taps<float, float>(weight, g)),
        b(bias_values<float, float>(bias, g.out_channels, g.out_channels)) {}
  // next() gives item, item + 1, ... in turn, their (image, channel) counted up from the
  // first: dividing them out of each item cost as much as a small plane's taps.
  class Cursor {
   public:
    Cursor(const FloatPlanes& p, int64_t item)
        : p_(p), n_(item / p.channels), oc_(item % p.channels), ic_(oc_ / p.mult), r_(oc_ % p.mult) {}
    Plane next() {
      const Plane plane{p_.in + n_ * p_.in_s.n + ic_ * p_.in_s.c, p_.w.data() + oc_ * p_.kk, p_.b[oc_],
                        p_.out + n_ * p_.out_s.n + oc_ * p_.out_s.c};
      if (++r_ == p_.mult) r_ = 0, ++ic_;  // r_ = oc_ % mult
      if (++oc_ == p_.channels) oc_ = ic_ = 0, ++n_;
      return plane;
    }

   private:
    const FloatPlanes& p_;
    int64_t n_, oc_, ic_, r_;
  };
  Cursor from(int64_t item) const { return Cursor(*this, item); }
};

// The operands the direct, staged, shifted and flat kernels read: float32, zero padding, and rows
// with unit column stride in the input and the output.
bool zero_padded_float_rows(const Conv2dGeometry& g, const at::Tensor& input, const at::Tensor& output) {
  return g.mode == PaddingMode::Zeros && input.scalar_type() == at::kFloat && input.stride(3) == 1 &&
         output.stride(3) == 1;
}

// ---------------------------------------------------------------- direct 3x3, NCHW float
// 3x3 (K = 3: stride 1 with dilation 1 or 2, or stride 2), zero padding, float planes with
// unit column stride: straight from the input with vectors along W, no staging and no
// transposes (which were two thirds of the channel-blocked kernel's time on a 3x3). R
// output rows at a time share the R + (K - 1) * D input rows they read: each input vector
// (one per kernel column) is loaded once and feeds up to min(R, K) of the rows; B vectors
// along W give R * B independent accumulators. Taps that reach into the padding are masked
// loads (masked lanes are not read, so addresses before a row or past its end are never
// touched); vectors whose taps are all inside the row use plain loads. Larger kernels at
// stride 1 take the staged kernel below; at stride 2 they go channel-blocked (this kernel's
// 5x5 at stride 2, one weight broadcast per FMA, was slower than torch on 14-column
// outputs). At stride 2 with one padding column on the left (AVX-512), direct_rows_s2
// loads each input row once and splits its columns in registers.
bool use_direct(const Conv2dGeometry& g, const at::Tensor& input, const at::Tensor& output) {
  const bool unit_stride = g.stride_h == 1 && g.stride_w == 1, unit_dilation = g.dilation_h == 1 && g.dilation_w == 1;
  const bool stride2 = g.stride_h == 2 && g.stride_w == 2 && unit_dilation;
  const bool dilation2 = unit_stride && g.dilation_h == 2 && g.dilation_w == 2;
  return g.kernel_h == 3 && g.kernel_w == 3 && ((unit_stride && unit_dilation) || stride2 || dilation2) &&
         zero_padded_float_rows(g, input, output);
}

// Weights: the nine broadcast once per plane (wv; they stay in registers, measured 1.3x
// faster than a broadcast per FMA).
// Stride S (1 or 2, with D = 1 for 2): a vector of W outputs reads W (S = 1) or 2W input
// columns (S = 2: two loads, their even lanes picked by Lanes::even_lanes, the sums put in
// column order at the store).
// tap_masks holds S masks per (vector, kernel column). Masked: the vectors' loads are
// masked; else (every column they read inside the row) plain loads, which AVX2 does
// faster. The last vector stores its first last_lanes lanes (all W: a whole vector).
// Stream: whole vectors are stored around the caches (stream_lanes, rows aligned).
template <int K, int D, int S, int R, int B, bool Masked, bool Stream>
inline void direct_rows(const float* in_plane, int64_t in_row_stride, int64_t ih0, int64_t in_h, int64_t x0,
                        const Lanes::Mask* tap_masks, const Lanes::Reg* wv, Lanes::Reg bv, int64_t rows,
                        int last_lanes, float* out_row0, int64_t out_row_stride) {
  static_assert(K == 3, "nine weights in registers");
  constexpr int W = Lanes::kWidth;
  Lanes::Reg acc[R][B];
  for (int j = 0; j < R; ++j)
    for (int b = 0; b < B; ++b) acc[j][b] = bv;
#pragma GCC unroll 16
  for (int r = 0; r < (R - 1) * S + (K - 1) * D + 1; ++r) {  // input row ih0 + r: output row j, kernel row (r - j * S) / D
    const int64_t ih = ih0 + r;
    if (ih < 0 || ih >= in_h) continue;
    const float* row = in_plane + ih * in_row_stride + x0 * S;
#pragma GCC unroll 7
    for (int kw = 0; kw < K; ++kw) {
      for (int b = 0; b < B; ++b) {
        const float* src = row + b * W * S + kw * D;
        const Lanes::Mask* m = tap_masks + (b * K + kw) * S;
        Lanes::Reg x;
        if constexpr (S == 1) {
          x = Masked ? Lanes::load(m[0], src) : Lanes::load(src);
        } else {
          x = Masked ? Lanes::even_lanes(Lanes::load(m[0], src), Lanes::load(m[1], src + W))
                     : Lanes::even_lanes(Lanes::load(src), Lanes::load(src + W));
        }
        for (int j = 0; j < R; ++j) {
          const int d = r - j * S;
          if (d < 0 || d % D != 0) continue;
          const int kh = d / D;
          if (kh >= K) continue;
          acc[j][b] = Lanes::fmadd(wv[kh * K + kw], x, acc[j][b]);
        }
      }
    }
  }
  for (int j = 0; j < R; ++j) {
    if (j >= rows) break;
    float* out = out_row0 + j * out_row_stride;
    for (int b = 0; b < B; ++b) {
      const Lanes::Reg y = S == 2 ? Lanes::in_order(acc[j][b]) : acc[j][b];
      if (b == B - 1 && last_lanes < W) Lanes::store_first(out + b * W, last_lanes, y);
      else if (Stream) stream_lanes(out + b * W, at::vec::Vectorized<float>(y));
      else Lanes::store(out + b * W, y);
    }
  }
}

#if defined(CPU_CAPABILITY_AVX512)
// x shifted by O lanes (-16 < O < 16): lane i holds lane i + O of the run before, x, after
// (one valignd). The direct stride-2, shifted-rows and flat-plane kernels make their taps'
// column shifts with it. (GCC 12's valignd intrinsic trips -W(maybe-)uninitialized as the
// bfloat16 helpers do.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
template <int O>
inline __m512 shifted_lanes(__m512 before, __m512 x, __m512 after) {
  static_assert(O > -16 && O < 16, "a shift reaches one neighbouring vector");
  const __m512i v = _mm512_castps_si512(x);
  if constexpr (O > 0) return _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(after), v, O));
  else if constexpr (O < 0) return _mm512_castsi512_ps(_mm512_alignr_epi32(v, _mm512_castps_si512(before), 16 + O));
  else return x;
}
#pragma GCC diagnostic pop

// direct_rows at stride 2 with one column of padding on the left (AVX-512): output column o
// reads input columns 2o - 1, 2o and 2o + 1. The 32 input columns under a vector of 16
// outputs are loaded once per input row (two vectors, masked past the row) and split into
// the even columns (tap 1) and the odd ones (tap 2); tap 0's are the odd ones a lane later,
// the first taken from the vector before (zero padding or, for the row's first vector in
// this call, input column 2 * x0 - 1). direct_rows loads each kernel column's 32 columns
// itself: six masked loads per input row and vector, most straddling two cache lines,
// against two here. AMD EPYC Zen 4, 2 threads, float32 forward: 8x144x56x56 0.44 -> 0.25
// ms, 8x144x28x28 0.109 -> 0.080; 8x96x112x112 (reading 38 MB from memory) 1.48 -> 1.43.
// (At stride 1 the same, one load per vector and its neighbours' lanes shifted in for the
// side taps, was within 2% of direct_rows: its three loads feed up to nine FMAs.)
template <int R, int B, bool Stream>
inline void direct_rows_s2(const float* in_plane, int64_t in_row_stride, int64_t ih0, int64_t in_h, int64_t in_w,
                           int64_t x0, const __m512* wv, __m512 bv, int64_t rows, int last_lanes, float* out_row0,
                           int64_t out_row_stride) {
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
  __mmask16 lo_mask[B], hi_mask[B];
  for (int b = 0; b < B; ++b) {
    const int64_t c = 2 * (x0 + 16 * b);
    lo_mask[b] = first_lanes(std::max<int64_t>(in_w - c, 0));
    hi_mask[b] = first_lanes(std::max<int64_t>(in_w - c - 16, 0));
  }
  __m512 acc[R][B];
  for (int j = 0; j < R; ++j)
    for (int b = 0; b < B; ++b) acc[j][b] = bv;
#pragma GCC unroll 16
  for (int r = 0; r < 2 * R + 1; ++r) {  // input row ih0 + r: output row j, kernel row r - 2j
    const int64_t ih = ih0 + r;
    if (ih < 0 || ih >= in_h) continue;
    const float* row = in_plane + ih * in_row_stride;
    __m512 before = x0 > 0 ? _mm512_set1_ps(row[2 * x0 - 1]) : _mm512_setzero_ps();  // lane 15: column 2 * x0 - 1
    for (int b = 0; b < B; ++b) {
      const float* src = row + 2 * (x0 + 16 * b);
      const __m512 lo = _mm512_maskz_loadu_ps(lo_mask[b], src), hi = _mm512_maskz_loadu_ps(hi_mask[b], src + 16);
      const __m512 centre = _mm512_permutex2var_ps(lo, even, hi), right = _mm512_permutex2var_ps(lo, odd, hi);
      const __m512 left = shifted_lanes<-1>(before, right, _mm512_setzero_ps());
      before = right;
      for (int j = 0; j < R; ++j) {
        const int kh = r - 2 * j;
        if (kh < 0 || kh >= 3) continue;
        acc[j][b] = _mm512_fmadd_ps(wv[kh * 3], left, acc[j][b]);
        acc[j][b] = _mm512_fmadd_ps(wv[kh * 3 + 1], centre, acc[j][b]);
        acc[j][b] = _mm512_fmadd_ps(wv[kh * 3 + 2], right, acc[j][b]);
      }
    }
  }
  for (int j = 0; j < R; ++j) {
    if (j >= rows) break;
    float* out = out_row0 + j * out_row_stride;
    for (int b = 0; b < B; ++b) {
      if (b == B - 1 && last_lanes < 16) _mm512_mask_storeu_ps(out + b * 16, first_lanes(last_lanes), acc[j][b]);
      else if (Stream) stream_lanes(out + b * 16, at::vec::Vectorized<float>(acc[j][b]));
      else _mm512_storeu_ps(out + b * 16, acc[j][b]);
    }
  }
}
#endif

// Rows and vectors of one direct_rows call: R * B accumulators, nine weights and the loaded
// vectors in the registers (AVX-512: 4 rows of 2 vectors, or 8 rows where a row is one
// vector; AVX2, 16 registers: 4 rows of 1).
constexpr int kDirectRows = 4, kDirectVecs = Lanes::kRegisters >= 32 ? 2 : 1;
constexpr int kDirectRowsOneVec = Lanes::kRegisters >= 32 ? 8 : 4;

template <int K, int D, int S, bool Stream>
void forward_direct_k(const FloatPlanes& planes, const Conv2dGeometry& g) {
  // Per output vector v (columns Wv..Wv+W-1), kernel column kw and load h < S: the lanes
  // whose input column S * Wv + Wh + l - pad_left + kw * D is inside the row. inside[v]:
  // all of v's loads and stores are whole vectors.
  constexpr int W = Lanes::kWidth, RB = kDirectRows, B = kDirectVecs;
  constexpr unsigned kAll = (1u << W) - 1u;
  const int64_t vecs = (g.out_w + W - 1) / W;
  const int tail_lanes = static_cast<int>(g.out_w - (vecs - 1) * W);  // the last vector's columns
  std::vector<Lanes::Mask> tap_masks(vecs * K * S);
  std::vector<char> inside(vecs, 1);
  inside[vecs - 1] = tail_lanes == W;
  for (int64_t v = 0; v < vecs; ++v)
    for (int kw = 0; kw < K; ++kw)
      for (int h = 0; h < S; ++h) {
        unsigned m = 0;
        for (int l = 0; l < W; ++l) {
          const int64_t col = S * v * W + W * h + l - g.pad_left + kw * D;
          if ((S * v * W + W * h + l) / S < g.out_w && col >= 0 && col < g.in_w) m |= 1u << l;
        }
        tap_masks[(v * K + kw) * S + h] = Lanes::mask(m);
        inside[v] = inside[v] && m == kAll;
      }
  const Strides4d &in_s = planes.in_s, &out_s = planes.out_s;
#if defined(CPU_CAPABILITY_AVX512)
  const bool split_columns = S == 2 && g.pad_left == 1;  // direct_rows_s2
#endif
  at::parallel_for(0, g.batch * g.out_channels, grain_for(g.out_h * g.out_w * K * K), [&](int64_t begin, int64_t end) {
    FloatPlanes::Cursor cursor = planes.from(begin);
    for (int64_t item = begin; item < end; ++item) {
      const Plane plane = cursor.next();
      const float* in_plane = plane.in - g.pad_left;  // column x reads x - pad_left
      float* out_plane = plane.out;
      const float* wk = plane.w;
      const Lanes::Reg bv = Lanes::broadcast(plane.bias);
      Lanes::Reg wv[9];
      for (int t = 0; t < 9; ++t) wv[t] = Lanes::broadcast(wk[t]);
#if defined(CPU_CAPABILITY_AVX512)
      if (split_columns) {
        for (int64_t oh = 0; oh < g.out_h; oh += RB) {
          const int64_t rows = std::min<int64_t>(RB, g.out_h - oh), ih0 = oh * S - g.pad_top;
          float* orow = out_plane + oh * out_s.h;
          int64_t v = 0;
          for (; v + B <= vecs; v += B)
            direct_rows_s2<RB, B, Stream>(plane.in, in_s.h, ih0, g.in_h, g.in_w, v * W, wv, bv, rows,
                                          v + B == vecs ? tail_lanes : W, orow + v * W, out_s.h);
          for (; v < vecs; ++v)
            direct_rows_s2<RB, 1, Stream>(plane.in, in_s.h, ih0, g.in_h, g.in_w, v * W, wv, bv, rows,
                                          v + 1 == vecs ? tail_lanes : W, orow + v * W, out_s.h);
        }
        continue;
      }
#endif
      if (vecs == 1) {  // one vector per row: more rows at once instead
        constexpr int R1 = kDirectRowsOneVec;
        for (int64_t oh = 0; oh < g.out_h; oh += R1)
          direct_rows<K, D, S, R1, 1, true, Stream>(in_plane, in_s.h, oh * S - g.pad_top, g.in_h, 0, tap_masks.data(),
                                                    wv, bv, std::min<int64_t>(R1, g.out_h - oh), tail_lanes,
                                                    out_plane + oh * out_s.h, out_s.h);
        continue;
      }
      for (int64_t oh = 0; oh < g.out_h; oh += RB) {
        const int64_t rows = std::min<int64_t>(RB, g.out_h - oh), ih0 = oh * S - g.pad_top;
        float* orow = out_plane + oh * out_s.h;
        int64_t v = 0;
        for (; v + B <= vecs; v += B) {
          const Lanes::Mask* m = tap_masks.data() + v * K * S;
          const int last = v + B == vecs ? tail_lanes : W;
          if (std::all_of(inside.begin() + v, inside.begin() + v + B, [](char f) { return f != 0; }))
            direct_rows<K, D, S, RB, B, false, Stream>(in_plane, in_s.h, ih0, g.in_h, v * W, m, wv, bv, rows, last,
                                                       orow + v * W, out_s.h);
          else
            direct_rows<K, D, S, RB, B, true, Stream>(in_plane, in_s.h, ih0, g.in_h, v * W, m, wv, bv, rows, last,
                                                      orow + v * W, out_s.h);
        }
        for (; v < vecs; ++v)  // the last vector of a row whose vectors are not a multiple of B
          direct_rows<K, D, S, RB, 1, true, Stream>(in_plane, in_s.h, ih0, g.in_h, v * W, tap_masks.data() + v * K * S,
                                                    wv, bv, rows, v + 1 == vecs ? tail_lanes : W, orow + v * W,
                                                    out_s.h);
      }
    }
    if (Stream) streamed_stores_done();
  });
}

void forward_direct(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias, at::Tensor& output,
                    const Conv2dGeometry& g) {
  const FloatPlanes planes(input, weight, bias, output, g);
  // Whole vectors stream where every output row starts aligned (all of them at 56 or 112
  // columns on AVX2; at 112 on AVX-512).
  const Strides4d& os = planes.out_s;
  auto run = [&](auto stream) {
    constexpr bool Stream = decltype(stream)::value;
    if (g.stride_h == 2) forward_direct_k<3, 1, 2, Stream>(planes, g);
    else if (g.dilation_h == 2) forward_direct_k<3, 2, 1, Stream>(planes, g);
    else forward_direct_k<3, 1, 1, Stream>(planes, g);
  };
  if (streams_output(output) && on_cache_lines(planes.out, {os.n, os.c, os.h})) run(std::true_type());
  else run(std::false_type());
}

// ---------------------------------------------------------------- staged direct K x K
// K x K for K = 5 and 7 (AVX2: and 3 on narrow rows, see use_staged), stride 1, dilation
// 1 or 2, zero padding, float planes with unit column stride, at least 12 columns
// (narrower rows waste most lanes; the channel-blocked kernel is faster there, on AVX2 too
// for 7x7 planes). Each plane is first copied into a zero-bordered scratch plane (its
// borders are written once per thread and never again), so that the kernel itself has no
// masks and no edge cases. A tile is R = 14 output rows (AVX2: fewer,
// staged_rows) of one vector: for each kernel column kw, its K weights are broadcast into
// registers once, and each of the R + (K - 1) * D input vectors of that column is loaded
// once and feeds every output row that reads it. Per tile and kernel column that is K
// broadcasts and R + (K - 1) * D loads for R * K FMAs, against a load per FMA for weights
// broadcast from memory (which kept the 5x5 at 35-45% of the FMA peak; this runs at
// 55-98%, from 5x5 to 13x13, measured on one core with planes in L2, Intel AVX-512). kw is a
// real loop: unrolled, GCC kept a pointer per input row and spilled them with the
// accumulators.
// AVX2 has half the registers: R + K + 1 of them (accumulators, a kernel column's weights,
// the loaded vector) caps R at 15 - K there.
constexpr int staged_rows(int64_t k) {
  return static_cast<int>(std::min<int64_t>(14, Lanes::kRegisters - 1 - k));
}

// The scratch plane: input row ih, column iw is at row ih + pad_top, column iw + origin
// (origin: pad_left rounded up to a vector, so that the copied rows start on a cache line).
struct StagedPlane {
  int64_t origin, row_stride, rows;
  StagedPlane(const Conv2dGeometry& g) {
    constexpr int W = Lanes::kWidth;
    const int64_t vecs = (g.out_w + W - 1) / W, reach = (g.kernel_h - 1) * g.dilation_h;
    origin = round_up(g.pad_left, W);
    row_stride = round_up(std::max(origin + g.in_w, origin - g.pad_left + vecs * W + reach), W);
    rows = g.out_h + staged_rows(g.kernel_h) - 1 + reach;  // the last tile's rows past out_h read zeros
  }
  int64_t bytes() const { return rows * row_stride * static_cast<int64_t>(sizeof(float)); }
};

// Half the L2: larger planes (over about 480 x 480) take the channel-blocked kernel, which
// works in strips of rows.
constexpr int64_t kStagedPlaneMaxBytes = 1 << 20;

// Up to 7x7: from 9x9 on, the channel-blocked kernel (with the kernel width fixed at
// compile time, every lane a channel, kernel rows in the padding skipped) was faster: the
// tiles compute the padding rows and the unused lanes of a row's last vector (of 28
// columns, 4 of 32). AMD EPYC Zen 4, 2 threads, float32, in one process, staged ->
// channel-blocked: AVX-512 4x256x28x28 13x13 1.59 -> 1.41 ms, 11x11 1.12 -> 0.99,
// 4x128x56x56 11x11 2.30 -> 2.01, 8x128x28x28 9x9 0.77 -> 0.71 (8x256x14x14 even); built
// for AVX2, 9x9 1.26 -> 1.03 (28x28), 4.48 -> 3.69 (56x56), 0.66 -> 0.49 (14x14). (On
// AVX2 the tiles were also too short from 11x11 on: 15 - K rows, FMAs waiting on each
// other's latency.)
// On AVX2 also 3x3 (dilation 1) on rows of at most 16 columns, the 14x14 stages that
// AVX-512 gives to the shifted rows: the direct kernel's two vectors a row are both at an
// edge, all masked loads (2 threads, 8x384x14x14: 0.42 ms, direct 0.53; at 28x28 even, at
// 56x56 the copy made it 2x slower).
// AVX-512 also needs 80% of a row's lanes used: the tiles compute whole vectors, and the
// channel-blocked kernel (every lane a channel) was faster wherever a row's vectors were
// under 80% full. AMD EPYC Zen 4, one thread, staged -> channel-blocked: 4x320x33x33 5x5 d2
// 1.71-2.07 -> 1.53-1.62 ms and 5x5 1.69 -> 1.36-1.42 (33 columns: 69%), 2x128x24x24 7x7
// 0.237 -> 0.193 (75%), 2x128x20x20 5x5 0.108 -> 0.095 (63%); while at 80% and over the
// tiles stayed ahead: 2x128x40x40 5x5 0.336 against 0.364 (83%), 2x128x28x28 0.142
// against 0.168 (88%).
bool use_staged(const Conv2dGeometry& g, const at::Tensor& input, const at::Tensor& output) {
  const int64_t k = g.kernel_h;
  const bool narrow_3x3 = k == 3 && Lanes::kRegisters == 16 && g.out_w <= 16 && g.dilation_h == 1;
  const int64_t lanes = round_up(g.out_w, Lanes::kWidth);
  const bool full_enough = Lanes::kWidth == 8 || g.out_w * 5 >= lanes * 4;
  return (k == 5 || k == 7 || narrow_3x3) && g.kernel_w == k && g.stride_h == 1 && g.stride_w == 1 &&
         (g.dilation_h == 1 || g.dilation_h == 2) && g.dilation_w == g.dilation_h && g.out_w >= 12 && full_enough &&
         zero_padded_float_rows(g, input, output) && StagedPlane(g).bytes() <= kStagedPlaneMaxBytes;
}

// Output rows oh..oh+R-1 (the first `rows` are stored) of one vector: src is the scratch
// plane at the tile's first input row and column.
template <int K, int D, int R, bool Tail>
inline void staged_tile(const float* src, int64_t row_stride, const float* w, Lanes::Reg bias, int64_t rows,
                        int tail_lanes, float* out, int64_t out_row_stride) {
  Lanes::Reg acc[R];
  for (int j = 0; j < R; ++j) acc[j] = bias;
#pragma GCC unroll 1
  for (int kw = 0; kw < K; ++kw) {
    Lanes::Reg column[K];
    for (int kh = 0; kh < K; ++kh) column[kh] = Lanes::broadcast(w[kh * K + kw]);
    const float* p = src + kw * D;
    __asm__("" : "+r"(p));  // opaque: GCC otherwise keeps a pointer per input row and spills them
#pragma GCC unroll 64
    for (int r = 0; r < R + (K - 1) * D; ++r) {  // input row r feeds output row j through kernel row (r - j) / D
      const Lanes::Reg x = Lanes::load(p + r * row_stride);
      for (int j = 0; j < R; ++j) {
        const int d = r - j;
        if (d < 0 || d % D != 0 || d / D >= K) continue;
        acc[j] = Lanes::fmadd(column[d / D], x, acc[j]);
      }
    }
  }
  for (int j = 0; j < R; ++j) {
    if (j >= rows) break;
    if (Tail) Lanes::store_first(out + j * out_row_stride, tail_lanes, acc[j]);
    else Lanes::store(out + j * out_row_stride, acc[j]);
  }
}

// One vector of output columns, all its rows: tiles of R rows, then the rest. Tail: only
// the vector's first tail_lanes columns are inside the row.
template <int K, int D, bool Tail>
void staged_column(const float* src, int64_t row_stride, const float* w, Lanes::Reg bias, int64_t out_h,
                   int tail_lanes, float* dst, int64_t out_row_stride) {
  constexpr int R = staged_rows(K);
  int64_t oh = 0;
  for (; oh + R <= out_h; oh += R)
    staged_tile<K, D, R, Tail>(src + oh * row_stride, row_stride, w, bias, R, tail_lanes, dst + oh * out_row_stride,
                               out_row_stride);
  const int64_t rest = out_h - oh;  // a half tile where it covers them, for fewer wasted rows
  if (rest > R / 2)
    staged_tile<K, D, R, Tail>(src + oh * row_stride, row_stride, w, bias, rest, tail_lanes,
                               dst + oh * out_row_stride, out_row_stride);
  else if (rest > 0)
    staged_tile<K, D, (R + 1) / 2, Tail>(src + oh * row_stride, row_stride, w, bias, rest, tail_lanes,
                                         dst + oh * out_row_stride, out_row_stride);
}

template <int K, int D>
void forward_staged_k(const FloatPlanes& planes, const Conv2dGeometry& g) {
  constexpr int W = Lanes::kWidth;
  constexpr unsigned kAll = (1u << W) - 1u;
  const StagedPlane sp(g);
  const int64_t vecs = (g.out_w + W - 1) / W, in_vecs = (g.in_w + W - 1) / W;
  const int tail_lanes = static_cast<int>(g.out_w - (vecs - 1) * W);
  const Lanes::Mask in_tail = Lanes::mask(kAll >> (in_vecs * W - g.in_w));
  const Strides4d &in_s = planes.in_s, &out_s = planes.out_s;
  at::parallel_for(0, g.batch * g.out_channels, grain_for(g.out_h * g.out_w * K * K), [&](int64_t begin, int64_t end) {
    AlignedBuffer<float> scratch(sp.rows * sp.row_stride);  // zero: the borders are never written
    float* plane = scratch.data();
    FloatPlanes::Cursor cursor = planes.from(begin);
    for (int64_t item = begin; item < end; ++item) {
      const Plane operands = cursor.next();
      const float* in_plane = operands.in;
      for (int64_t ih = 0; ih < g.in_h; ++ih) {
        const float* from = in_plane + ih * in_s.h;
        float* to = plane + (ih + g.pad_top) * sp.row_stride + sp.origin;
        for (int64_t v = 0; v + 1 < in_vecs; ++v) Lanes::store(to + v * W, Lanes::load(from + v * W));
        const int64_t last = (in_vecs - 1) * W;  // its lanes past the row are zeros: the right padding
        Lanes::store(to + last, Lanes::load(in_tail, from + last));
      }
      const float* wk = operands.w;
      const Lanes::Reg bias = Lanes::broadcast(operands.bias);
      float* out_plane = operands.out;
      for (int64_t v = 0; v < vecs; ++v) {
        const float* src = plane + sp.origin - g.pad_left + v * W;
        float* dst = out_plane + v * W;
        if (v + 1 == vecs && tail_lanes < W)
          staged_column<K, D, true>(src, sp.row_stride, wk, bias, g.out_h, tail_lanes, dst, out_s.h);
        else
          staged_column<K, D, false>(src, sp.row_stride, wk, bias, g.out_h, tail_lanes, dst, out_s.h);
      }
    }
  });
}

void forward_staged(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias, at::Tensor& output,
                    const Conv2dGeometry& g) {
  const FloatPlanes planes(input, weight, bias, output, g);
  const bool d2 = g.dilation_h == 2;
  switch (g.kernel_h) {
    case 3: forward_staged_k<3, 1>(planes, g); break;  // AVX2 only
    case 5: d2 ? forward_staged_k<5, 2>(planes, g) : forward_staged_k<5, 1>(planes, g); break;
    default: d2 ? forward_staged_k<7, 2>(planes, g) : forward_staged_k<7, 1>(planes, g); break;
  }
}

#endif  // CNNOPS_HAVE_LANES

#if defined(CPU_CAPABILITY_AVX512)
// ---------------------------------------------------------------- shifted rows
// 14-row planes whose rows fit one vector (at most 16 columns) with "same" zero padding at
// stride 1 (the 14x14 stages of MobileNet, EfficientNet and ConvNeXt): each input row is
// loaded into a register (once per half plane of 7 output rows; the K - 1 rows around the
// middle twice), masked so that the lanes past the row are zero, and its K
// column shifts are made in registers (valignd against zeros, so the padding columns shift
// in as zeros); each shift feeds the up to K output rows that read it. No scratch plane and
// no copy: the staged kernel spent about a third of a 14x14 5x5 plane copying it there.
constexpr int kShiftedRows = 14;

// Output rows [OH0, OH0 + R) of an H-row plane. Two accumulators per row (even and odd
// kernel columns): one per row left the FMAs waiting on each other's latency, as an input
// row updates only K rows.
template <int K, int H, int OH0, int R>
inline void shifted_rows(const float* in, int64_t in_row, const float* w, __m512 bias, __mmask16 mask, float* out,
                         int64_t out_row) {
  constexpr int P = K / 2, IH0 = OH0 - P > 0 ? OH0 - P : 0, IH1 = OH0 + R + P < H ? OH0 + R + P : H;
  __m512 even[R], odd[R];
  const __m512 zero = _mm512_setzero_ps();
  for (int j = 0; j < R; ++j) even[j] = bias, odd[j] = zero;
#pragma GCC unroll 32
  for (int ih = IH0; ih < IH1; ++ih) {
    const __m512 x = _mm512_maskz_loadu_ps(mask, in + ih * in_row);
    [&]<int... KW>(std::integer_sequence<int, KW...>) {
      ([&] {
        const __m512 xs = shifted_lanes<KW - P>(zero, x, zero);  // padding columns shift in as zeros
        __m512* acc = KW % 2 == 0 ? even : odd;
        for (int kh = 0; kh < K; ++kh) {
          const int j = ih + P - kh - OH0;  // output row (from OH0) that reads input row ih with kernel row kh
          if (j >= 0 && j < R) acc[j] = _mm512_fmadd_ps(_mm512_set1_ps(w[kh * K + KW]), xs, acc[j]);
        }
      }(), ...);
    }(std::make_integer_sequence<int, K>{});
  }
  for (int j = 0; j < R; ++j) _mm512_mask_storeu_ps(out + (OH0 + j) * out_row, mask, _mm512_add_ps(even[j], odd[j]));
}

template <int K, int H>
inline void shifted_plane(const float* in, int64_t in_row, const float* w, float bias, __mmask16 mask, float* out,
                          int64_t out_row) {
  static_assert(H % 2 == 0, "two halves of H / 2 rows");
  const __m512 b = _mm512_set1_ps(bias);
  shifted_rows<K, H, 0, H / 2>(in, in_row, w, b, mask, out, out_row);
  shifted_rows<K, H, H / 2, H / 2>(in, in_row, w, b, mask, out, out_row);
}

bool use_shifted(const Conv2dGeometry& g, const at::Tensor& input, const at::Tensor& output) {
  const int64_t k = g.kernel_h, p = k / 2;
  return (k == 3 || k == 5 || k == 7) && g.kernel_w == k && g.stride_h == 1 && g.stride_w == 1 &&
         g.dilation_h == 1 && g.dilation_w == 1 && g.pad_top == p && g.pad_bottom == p && g.pad_left == p &&
         g.pad_right == p && g.in_h == kShiftedRows && g.in_w <= 16 && zero_padded_float_rows(g, input, output);
}

template <int K>
void forward_shifted_k(const FloatPlanes& planes, const Conv2dGeometry& g) {
  const __mmask16 mask = static_cast<__mmask16>((1u << g.in_w) - 1u);
  const Strides4d &in_s = planes.in_s, &out_s = planes.out_s;
  at::parallel_for(0, g.batch * g.out_channels, grain_for(g.out_h * g.out_w * K * K), [&](int64_t begin, int64_t end) {
    FloatPlanes::Cursor cursor = planes.from(begin);
    for (int64_t item = begin; item < end; ++item) {
      const Plane plane = cursor.next();
      shifted_plane<K, kShiftedRows>(plane.in, in_s.h, plane.w, plane.bias, mask, plane.out, out_s.h);
    }
  });
}

void forward_shifted(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias, at::Tensor& output,
                     const Conv2dGeometry& g) {
  const FloatPlanes planes(input, weight, bias, output, g);
  switch (g.kernel_h) {
    case 3: return forward_shifted_k<3>(planes, g);
    case 5: return forward_shifted_k<5>(planes, g);
    default: return forward_shifted_k<7>(planes, g);
  }
}

// ---------------------------------------------------------------- flat planes
// 3x3 at stride 1 on contiguous planes of at most 64 pixels whose output is the input's
// size ("same": the 7x7 stages of MobileNet): the plane is read as one run of pixels, 16
// outputs a vector whatever their rows, and each tap is the run shifted by a fixed offset
// (its mask drops the lanes whose tap falls outside the plane or wraps into the row before
// or after). A 7-wide row per vector, as the direct kernel does, used 7 of 16 lanes; this
// uses 49 of 64. Two planes a call: 8 accumulators to cover the FMA latency.
// With padding 1 and dilation 1 on rows 4 to 8 wide the plane is loaded once and the
// shifted runs are made in registers (valignd over two neighbouring vectors); otherwise
// each tap is a masked load, all but the centre tap's straddling two cache lines. AMD EPYC
// Zen 4, 2 threads, 8x960x7x7 forward: 0.125 ms with loads, 0.090 in registers.
constexpr int64_t kFlatMaxVectors = 4;

bool use_flat(const Conv2dGeometry& g, const at::Tensor& input, const at::Tensor& output) {
  const int64_t pixels = g.in_h * g.in_w;
  return g.kernel_h == 3 && g.kernel_w == 3 && g.stride_h == 1 && g.stride_w == 1 && g.out_h == g.in_h &&
         g.out_w == g.in_w && pixels > 0 && pixels <= 16 * kFlatMaxVectors && input.stride(2) == g.in_w &&
         output.stride(2) == g.out_w && zero_padded_float_rows(g, input, output);
}

// The row width fixed at compile time for the in-register shifts, or 0 (masked loads).
int64_t flat_shift_width(const Conv2dGeometry& g) {
  const bool unit = g.pad_top == 1 && g.pad_left == 1 && g.dilation_h == 1 && g.dilation_w == 1;
  return unit && g.in_w >= 4 && g.in_w <= 8 ? g.in_w : 0;
}

// Vector v's pixels shifted by O (lane i: pixel v * 16 + i + O) from the plane's vectors
// x[0, NV), zeros past either end.
template <int NV, int O>
inline __m512 flat_shifted(const __m512* x, int v) {
  const __m512 zero = _mm512_setzero_ps();
  return shifted_lanes<O>(v > 0 ? x[v - 1] : zero, x[v], v + 1 < NV ? x[v + 1] : zero);
}

// Tap T (of 9) of P planes held in registers, rows W wide. The FMA's mask leaves the
// lanes whose tap reads padding as they were (a zero-masked shift measured 10% slower).
template <int NV, int W, int P, int T>
inline void flat_shifted_tap(__m512 (*acc)[NV], const __m512 (*x)[NV], const Plane* planes,
                             const __mmask16 (*masks)[NV]) {
  constexpr int O = (T / 3 - 1) * W + T % 3 - 1;
  for (int p = 0; p < P; ++p) {
    const __m512 wt = _mm512_set1_ps(planes[p].w[T]);
    for (int v = 0; v < NV; ++v)
      acc[p][v] = _mm512_mask3_fmadd_ps(wt, flat_shifted<NV, O>(x[p], v), acc[p][v], masks[T][v]);
  }
}

template <int NV, int W, int P, int... T>
inline void flat_shifted_taps(__m512 (*acc)[NV], const __m512 (*x)[NV], const Plane* planes,
                              const __mmask16 (*masks)[NV], std::integer_sequence<int, T...>) {
  (flat_shifted_tap<NV, W, P, T>(acc, x, planes, masks), ...);
}

// P planes; masks[t][v] and offsets[t] are tap t's for vector v. W: flat_shift_width().
template <int NV, int W, int P>
inline void flat_planes(const Plane* planes, const __mmask16 (*masks)[NV], const int64_t* offsets, __mmask16 last) {
  __m512 acc[P][NV];
  for (int p = 0; p < P; ++p)
    for (int v = 0; v < NV; ++v) acc[p][v] = _mm512_set1_ps(planes[p].bias);
  if constexpr (W > 0) {
    __m512 x[P][NV];
    for (int p = 0; p < P; ++p) {
      for (int v = 0; v + 1 < NV; ++v) x[p][v] = _mm512_loadu_ps(planes[p].in + v * 16);
      x[p][NV - 1] = _mm512_maskz_loadu_ps(last, planes[p].in + (NV - 1) * 16);
    }
    flat_shifted_taps<NV, W, P>(acc, x, planes, masks, std::make_integer_sequence<int, 9>());
  } else {
#pragma GCC unroll 9
    for (int t = 0; t < 9; ++t)
      for (int p = 0; p < P; ++p) {
        const __m512 wt = _mm512_set1_ps(planes[p].w[t]);
        for (int v = 0; v < NV; ++v) {
          const __m512 x = _mm512_maskz_loadu_ps(masks[t][v], planes[p].in + v * 16 + offsets[t]);
          acc[p][v] = _mm512_fmadd_ps(wt, x, acc[p][v]);
        }
      }
  }
  for (int p = 0; p < P; ++p) {
    for (int v = 0; v + 1 < NV; ++v) _mm512_storeu_ps(planes[p].out + v * 16, acc[p][v]);
    _mm512_mask_storeu_ps(planes[p].out + (NV - 1) * 16, last, acc[p][NV - 1]);
  }
}

template <int NV, int W>
void forward_flat_k(const FloatPlanes& planes, const Conv2dGeometry& g) {
  const int64_t h = g.in_h, w = g.in_w, pixels = h * w;
  __mmask16 masks[9][NV];
  int64_t offsets[9];
  for (int t = 0; t < 9; ++t) {
    const int64_t dh = t / 3 * g.dilation_h - g.pad_top, dw = t % 3 * g.dilation_w - g.pad_left;
    offsets[t] = dh * w + dw;
    for (int v = 0; v < NV; ++v) {
      unsigned bits = 0;
      for (int64_t l = 0, q = v * 16; l < 16 && q < pixels; ++l, ++q) {
        const int64_t ih = q / w + dh, iw = q % w + dw;
        if (ih >= 0 && ih < h && iw >= 0 && iw < w) bits |= 1u << l;
      }
      masks[t][v] = static_cast<__mmask16>(bits);
    }
  }
  const __mmask16 last = first_lanes(pixels - (NV - 1) * 16);
  at::parallel_for(0, g.batch * g.out_channels, grain_for(pixels * 9), [&](int64_t begin, int64_t end) {
    FloatPlanes::Cursor cursor = planes.from(begin);
    Plane two[2];
    int64_t item = begin;
    for (; item + 2 <= end; item += 2) {
      two[0] = cursor.next(), two[1] = cursor.next();
      flat_planes<NV, W, 2>(two, masks, offsets, last);
    }
    if (item < end) two[0] = cursor.next(), flat_planes<NV, W, 1>(two, masks, offsets, last);
  });
}

template <int NV>
void forward_flat_nv(const FloatPlanes& planes, const Conv2dGeometry& g) {
  switch (flat_shift_width(g)) {
    case 4: return forward_flat_k<NV, 4>(planes, g);
    case 5: return forward_flat_k<NV, 5>(planes, g);
    case 6: return forward_flat_k<NV, 6>(planes, g);
    case 7: return forward_flat_k<NV, 7>(planes, g);
    case 8: return forward_flat_k<NV, 8>(planes, g);
    default: return forward_flat_k<NV, 0>(planes, g);
  }
}

void forward_flat(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias, at::Tensor& output,
                  const Conv2dGeometry& g) {
  const FloatPlanes planes(input, weight, bias, output, g);
  switch ((g.in_h * g.in_w + 15) / 16) {
    case 1: return forward_flat_nv<1>(planes, g);
    case 2: return forward_flat_nv<2>(planes, g);
    case 3: return forward_flat_nv<3>(planes, g);
    default: return forward_flat_nv<4>(planes, g);
  }
}
#endif

// Which forward kernel runs, from CNNOPS_DEPTHWISE_CPU_PATH (read on every call, so that
// tests can force each one): auto (default: the channels_last kernel where it applies, else
// shifted rows, flat planes, staged K x K or direct 3x3 where they apply, else
// channel-blocked), blocked (channel-blocked everywhere) or direct (as auto without the
// channels_last kernel: channels_last operands, whose rows have no unit column stride, go
// channel-blocked).
enum class ForwardPath { Auto, Blocked, Direct };

ForwardPath forward_path() {
  return static_cast<ForwardPath>(
      env_choice("cnnops.depthwise_conv2d", "CNNOPS_DEPTHWISE_CPU_PATH", {"auto", "blocked", "direct"}));
}

// channels_last operands with a kernel of 9 x 9 or more at stride 1 go to the NCHW kernels
// on NCHW copies: the channels_last kernel lists most pixels' taps (a weight and an input
// load per FMA when this was measured, one pixel at a time) and its rows outgrow L1.
// Measured, copies included, 2 threads: forward 1.3x (9x9, 8x128x28x28) to 4.8x (31x31,
// 2x64x32x32) faster; at stride 2 the channels_last kernel stays faster (9x9 and 13x13:
// 0.66-0.69x), so it keeps those.
bool large_kernel_via_nchw(const Conv2dGeometry& g) {
  return g.kernel_h * g.kernel_w >= 81 && g.stride_h == 1 && g.stride_w == 1;
}

// channels_last operands with a channel multiplier over 1 (which the channels_last kernels
// do not take) go to the NCHW kernels on NCHW copies too, forward and both gradients: the
// plane kernels straight on them staged every value through scalar loops. AMD EPYC Zen 4,
// 2 threads, float32, forward, ms (torch 2.14.1 in the same process): 8x64x56x56 3x3 m2
// 8.1 -> 2.1 (4.3), 4x32x112x112 3x3 s2 3.9 -> 0.74 (1.3), 8x128x28x28 5x5 s2 1.8 -> 0.38
// (1.2), 8x512x7x7 3x3 1.36 -> 0.19 (1.0). Auto path only: CNNOPS_DEPTHWISE_CPU_PATH's
// blocked and direct run the plane kernels on the operands as given (tests reach them so).
bool multiplier_via_nchw(const Conv2dGeometry& g, bool channels_last) {
  return channels_last && multiplier(g) > 1 && g.in_channels > 1 && forward_path() == ForwardPath::Auto;
}

// The forward kernels for planes (any layout but the channels_last kernel's): shifted rows,
// flat planes, staged K x K, direct 3x3 or channel-blocked.
template <typename scalar_t>
void forward_planes(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias, at::Tensor& output,
                    const Conv2dGeometry& g, ForwardPath path) {
#if defined(CPU_CAPABILITY_AVX512)
  if (path != ForwardPath::Blocked && use_shifted(g, input, output)) {
    forward_shifted(input, weight, bias, output, g);
    return;
  }
  if (path != ForwardPath::Blocked && use_flat(g, input, output)) {
    forward_flat(input, weight, bias, output, g);
    return;
  }
#endif
#if defined(CNNOPS_HAVE_LANES)
  if (path != ForwardPath::Blocked && use_staged(g, input, output)) {
    forward_staged(input, weight, bias, output, g);
    return;
  }
  if (path != ForwardPath::Blocked && use_direct(g, input, output)) {
    forward_direct(input, weight, bias, output, g);
    return;
  }
#else
  (void)path;  // channel-blocked is the only plane kernel without AVX2
#endif
  forward_blocked<scalar_t>(input, weight, bias, output, g);
}

// ---------------------------------------------------------------- bfloat16 channels_last
// bfloat16 channels_last takes the channels_last kernels: in place where they widen
// bfloat16 in registers (AVX-512: the forward, the input gradient's gather,
// bfloat16_window_in_place), else on float32 copies of a few images at a time. (The plane
// kernels it took before ran at 0.18-0.50x of torch (oneDNN) on channels_last 3x3
// forwards; the copies made that 0.5-1.4x, in place 1.7-2.8x.) A chunk's copies (about
// 4 MB: this CPU's L2 per core) are still in cache when the kernel reads them: whole-tensor
// copies measured 20-60% slower, and with glibc's default malloc a copy above its mmap
// threshold page-faults on every call.
bool bfloat16_via_float(const Conv2dGeometry& g, at::ScalarType dtype, std::initializer_list<const at::Tensor*> ts) {
  return dtype == at::kBFloat16 && use_channels_last(g, /*same_type=*/true, ts) && !large_kernel_via_nchw(g);
}

// fn(first image, geometry of the chunk's images) for consecutive chunks of images, each
// holding float32 copies of about 4 MB (an image's input and output planes).
template <typename Fn>
void for_float_chunks(const Conv2dGeometry& g, const Fn& fn) {
  constexpr int64_t kChunkBytes = int64_t(4) << 20;
  const int64_t floats_per_image = g.in_channels * (g.in_h * g.in_w + g.out_h * g.out_w);
  const int64_t per_chunk = std::max<int64_t>(1, kChunkBytes / (std::max<int64_t>(floats_per_image, 1) * 4));
  for (int64_t n0 = 0; n0 < g.batch; n0 += per_chunk) {
    Conv2dGeometry chunk = g;
    chunk.batch = std::min(per_chunk, g.batch - n0);
    fn(n0, chunk);
  }
}

// Images [n0, n0 + n) of t as a float32 tensor in `layout`.
at::Tensor float_images(const at::Tensor& t, int64_t n0, int64_t n,
                        at::MemoryFormat layout = at::MemoryFormat::ChannelsLast) {
  return t.narrow(0, n0, n).to(at::kFloat, /*non_blocking=*/false, /*copy=*/false, layout);
}

// An empty float32 tensor in `layout` of n images of `like`'s other sizes.
at::Tensor float_empty(const at::Tensor& like, int64_t n, at::MemoryFormat layout = at::MemoryFormat::ChannelsLast) {
  return at::empty({n, like.size(1), like.size(2), like.size(3)},
                   like.options().dtype(at::kFloat).memory_format(layout));
}

// bfloat16 through float32 copies of a few images at a time (for_float_chunks), in `layout`:
// channels_last ones for the channels_last kernel (AVX2 builds, which do not widen bfloat16 in
// place), NCHW ones for the plane kernels. bfloat16 planes (NCHW, and channels_last with a
// multiplier over 1) take the NCHW ones: the plane kernels on bfloat16 staged it through scalar
// loops, and the direct, flat, shifted and staged kernels read float32 only. AMD EPYC Zen 4, 2
// threads, NCHW forward, ms (torch 2.14.1 in the same process): 8x128x28x28 3x3 0.70 -> 0.24
// (0.32), 8x256x14x14 3x3 0.47 -> 0.13 (0.26), 8x128x28x28 7x7 0.94 -> 0.57 (0.72), 8x240x28x28
// 5x5 1.45 -> 0.69 (0.96); the input gradient at stride 1 (this forward, flipped) 8x64x56x56
// 3x3 1.4 -> 0.6 (0.8). The weight gradient does the same (grad_weight_by_float_chunks).
// channels_last 9x9 and up stay on the bfloat16 channel-blocked kernel: converting and
// transposing in one copy (at::Tensor::to) made 8x128x28x28 9x9 1.27 -> 1.71 ms.
void forward_bfloat16_via_float(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias,
                                at::Tensor& output, const Conv2dGeometry& g, at::MemoryFormat layout) {
  const at::Tensor weight_f = weight.to(at::kFloat);
  const at::Tensor bias_f = bias != nullptr ? bias->to(at::kFloat) : at::Tensor();
  const at::Tensor* bias_ptr = bias != nullptr ? &bias_f : nullptr;
  for_float_chunks(g, [&](int64_t n0, const Conv2dGeometry& chunk) {
    at::Tensor out = float_empty(output, chunk.batch, layout);
    const at::Tensor in = float_images(input, n0, chunk.batch, layout);
    if (layout == at::MemoryFormat::ChannelsLast) {
      forward_channels_last<float>(in, weight_f, bias_ptr, out, chunk, /*may_stream=*/false);
    } else {
      forward_planes<float>(in, weight_f, bias_ptr, out, chunk, ForwardPath::Auto);
    }
    output.narrow(0, n0, chunk.batch).copy_(out);
  });
}

// The forward kernel for these operands: channels_last (or, for large kernels and
// multipliers over 1, the plane kernels on NCHW copies; bfloat16 through float32 copies),
// else forward_planes.
template <typename scalar_t>
void forward_any(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias, at::Tensor& output,
                 const Conv2dGeometry& g) {
  using T = at::opmath_type<scalar_t>;
  const ForwardPath path = forward_path();
  if (path == ForwardPath::Auto && bfloat16_via_float(g, input.scalar_type(), {&input, &output})) {
#if defined(CPU_CAPABILITY_AVX512)
    // In place: the quads, the listed-taps loop and the row kernel widen bfloat16 to float
    // in registers. 2 threads, ms, float32 copies -> in place (torch): 8x96x112x112 3x3 s2
    // 3.6 -> 0.78 (1.6), 8x144x56x56 3x3 2.4 -> 0.90 (2.3), 8x672x14x14 5x5 0.88 -> 0.66
    // (1.6). The row kernel on bfloat16 (AMD EPYC Zen 4, 2 threads, against the bfloat16
    // quads, or for 7-wide kernels float32 copies and the float32 row kernel; torch 2.14.1
    // in the same session): 8x240x28x28 5x5 0.77-0.81 -> 0.59-0.61 (0.53), 8x672x14x14 5x5
    // 0.50 -> 0.31 (0.31), 4x320x33x33 5x5 d2 0.71-0.74 -> 0.57-0.61 (0.50), 8x768x7x7 7x7
    // 0.39 -> 0.25 (0.19), 8x384x14x14 7x7 0.70 -> 0.33 (0.33), 8x96x56x56 7x7 2.1 -> 1.7
    // (1.2), 8x96x56x56 7x7 s2 0.71 -> 0.40, 8x384x14x14 3x3 0.13-0.14 -> 0.10-0.12 (0.12).
    forward_channels_last<at::BFloat16>(input, weight, bias, output, g);
#else
    forward_bfloat16_via_float(input, weight, bias, output, g, at::MemoryFormat::ChannelsLast);
#endif
    return;
  }
  if (path == ForwardPath::Auto && input.scalar_type() == at::kBFloat16 &&
      (input.suggest_memory_format() != at::MemoryFormat::ChannelsLast || multiplier(g) > 1)) {
    forward_bfloat16_via_float(input, weight, bias, output, g, at::MemoryFormat::Contiguous);
    return;
  }
  const bool auto_path = path == ForwardPath::Auto;
  const bool cl_kernel = auto_path && use_channels_last(g, std::is_same<T, scalar_t>::value, {&input, &output});
  const bool cl_input = input.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  if ((cl_kernel && large_kernel_via_nchw(g)) || multiplier_via_nchw(g, cl_input)) {
    const auto planar_format = at::MemoryFormat::Contiguous;
    at::Tensor planar = output.is_contiguous(planar_format)
                            ? output
                            : at::empty(output.sizes(), output.options().memory_format(planar_format));
    forward_planes<scalar_t>(contiguous_cpu(input, planar_format), weight, bias, planar, g, path);
    if (!planar.is_same(output)) copy_cpu(output, planar);
    return;
  }
  if (cl_kernel) {
    forward_channels_last<T>(input, weight, bias, output, g);
    return;
  }
  forward_planes<scalar_t>(input, weight, bias, output, g, path);
}

at::Tensor depthwise_conv2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                                const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation,
                                c10::string_view padding_mode) {
  const char* op = "cnnops.depthwise_conv2d";
  const Conv2dGeometry g = check_depthwise_forward(op, input, weight, bias, stride, padding,
                                                   dilation, padding_mode, /*half_ok=*/false);
  at::Tensor output = at::empty({g.batch, g.out_channels, g.out_h, g.out_w},
                                input.options().memory_format(conv_memory_format(input, weight)));
  if (output.numel() == 0) return output;
  depthwise_forward_cpu(input, weight, defined_or_null(bias), output, g);
  return output;
}

// ---------------------------------------------------------------- grad_input

template <typename scalar_t>
void grad_input_planes(const at::Tensor& grad_output, const at::Tensor& weight, at::Tensor& grad_input,
                       const Conv2dGeometry& g) {
  using T = at::opmath_type<scalar_t>;
  constexpr int64_t V = at::vec::Vectorized<T>::size();
  const std::vector<T> w = weight_taps<scalar_t, T>(weight, g);
  const int64_t kk = g.kernel_h * g.kernel_w, mult = multiplier(g);
  const int64_t sh = g.stride_h, sw = g.stride_w;
  const int64_t padded_h = g.pad_top + g.in_h + g.pad_bottom;
  const int64_t padded_w = g.pad_left + g.in_w + g.pad_right;
  // The padded frame's rows [r0, r1) and columns [c0, c1) that can hold a gradient: with
  // zero padding only the real input, otherwise all of it (folded back afterwards).
  const bool zeros = g.mode == PaddingMode::Zeros;
  const int64_t r0 = zeros ? g.pad_top : 0, r1 = zeros ? g.pad_top + g.in_h : padded_h;
  const int64_t c0 = zeros ? g.pad_left : 0, c1 = zeros ? g.pad_left + g.in_w : padded_w;
  const int64_t rows = r1 - r0, cols = c1 - c0;
  const int64_t gpitch = round_up(cols, V) + V;
  // Staged grad_output rows: `lead` zeros, the out_w values, zeros to the end, so that a tap
  // reaching left of column 0 or right of the last column reads zeros.
  const int64_t lead = (g.kernel_w - 1) * g.dilation_w / sw + 1;
  const int64_t go_pitch = round_up(lead + std::max(g.out_w, padded_w / sw + 2) + V, V);
  const int64_t go_plane = g.out_h * go_pitch;
  const Strides4d go_s = strides4d(grad_output), gi_s = strides4d(grad_input);
  const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
  scalar_t* gi = grad_input.mutable_data_ptr<scalar_t>();
  const int64_t work = mult * g.out_h * g.out_w * kk + rows * cols;
  // Index tables, once per call (integer divisions per tap would cost more than the FMAs):
  // the (kh, oh) pairs that reach padded row r, and the (kw, column shift) pairs of phase p.
  std::vector<int64_t> row_begin(rows + 1, 0), row_kh, row_oh;
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
      const int64_t d = r - kh * g.dilation_h;
      if (d < 0 || d % sh != 0 || d / sh >= g.out_h) continue;
      row_kh.push_back(kh);
      row_oh.push_back(d / sh);
    }
    row_begin[r - r0 + 1] = static_cast<int64_t>(row_kh.size());
  }
  std::vector<int64_t> phase_begin(sw + 1, 0), phase_kw, phase_shift;
  for (int64_t p = 0; p < sw; ++p) {
    for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
      const int64_t e = p - kw * g.dilation_w;
      if (e % sw != 0) continue;
      phase_kw.push_back(kw);
      phase_shift.push_back(e / sw);
    }
    phase_begin[p + 1] = static_cast<int64_t>(phase_kw.size());
  }
  at::parallel_for(0, g.batch * g.in_channels, grain_for(work), [&](int64_t begin, int64_t end) {
    std::vector<T> staged(mult * go_plane, T(0)), gpad(rows * gpitch, T(0));
    std::vector<T> phase_row(round_up(cols / sw + 2, V) + V), folded;
    if (!zeros) folded.resize(g.in_h * g.in_w);
    std::vector<Tap<T>> taps(mult * kk);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / g.in_channels, c = item % g.in_channels;
      for (int64_t j = 0; j < mult; ++j) {
        const scalar_t* src = go + n * go_s.n + (c * mult + j) * go_s.c;
        for (int64_t oh = 0; oh < g.out_h; ++oh) {
          T* dst = staged.data() + j * go_plane + oh * go_pitch + lead;
          const scalar_t* s = src + oh * go_s.h;
          for (int64_t x = 0; x < g.out_w; ++x) dst[x] = static_cast<T>(s[x * go_s.w]);
        }
      }
      // gpad(r, col) = sum over taps with oh * sh + kh * dh = r and ow * sw + kw * dw = col.
      // Columns are computed per phase p = col % sw, where the taps are contiguous runs.
      for (int64_t r = r0; r < r1; ++r) {
        T* grow = gpad.data() + (r - r0) * gpitch;
        for (int64_t p = 0; p < sw; ++p) {
          const int64_t x0 = c0 <= p ? 0 : (c0 - p + sw - 1) / sw;
          const int64_t x1 = c1 <= p ? 0 : (c1 - p + sw - 1) / sw;
          if (x1 <= x0) continue;
          int64_t nt = 0;
          for (int64_t j = 0; j < mult; ++j) {
            const T* wj = w.data() + (c * mult + j) * kk;
            for (int64_t i = row_begin[r - r0]; i < row_begin[r - r0 + 1]; ++i) {
              const T* go_row = staged.data() + j * go_plane + row_oh[i] * go_pitch + lead + x0;
              const T* wk = wj + row_kh[i] * g.kernel_w;
              for (int64_t q = phase_begin[p]; q < phase_begin[p + 1]; ++q)
                taps[nt++] = Tap<T>{go_row + phase_shift[q], wk[phase_kw[q]]};
            }
          }
          const int64_t len = x1 - x0;
          if (sw == 1) {
            taps_row(taps.data(), nt, len, T(0), grow);
          } else {
            taps_row(taps.data(), nt, len, T(0), phase_row.data());
            for (int64_t x = 0; x < len; ++x) grow[p + sw * (x0 + x) - c0] = phase_row[x];
          }
        }
      }
      scalar_t* gi_plane = gi + n * gi_s.n + c * gi_s.c;
      const T* result = gpad.data();
      int64_t result_pitch = gpitch;
      if (!zeros) {  // fold the padded frame onto the input, in a fixed order
        std::fill(folded.begin(), folded.end(), T(0));
        for (int64_t r = 0; r < padded_h; ++r) {
          T* frow = folded.data() + source_index(r - g.pad_top, g.in_h, g.mode) * g.in_w;
          const T* grow = gpad.data() + r * gpitch;
          for (int64_t col = 0; col < padded_w; ++col)
            frow[source_index(col - g.pad_left, g.in_w, g.mode)] += grow[col];
        }
        result = folded.data();
        result_pitch = g.in_w;
      }
      for (int64_t ih = 0; ih < g.in_h; ++ih) {
        const T* srow = result + ih * result_pitch;
        scalar_t* drow = gi_plane + ih * gi_s.h;
        if (gi_s.w == 1) {
          for (int64_t iw = 0; iw < g.in_w; ++iw) drow[iw] = static_cast<scalar_t>(srow[iw]);
        } else {
          for (int64_t iw = 0; iw < g.in_w; ++iw) drow[iw * gi_s.w] = static_cast<scalar_t>(srow[iw]);
        }
      }
    }
  });
}

// (output index, tap) pairs that read input index i along one axis, from padded_preimages
// / output_index_for_tap (the CUDA gather's math), and whether i is regular: read only as
// itself (not through the padding), by every tap k whose output index
// (i + pad_before - k * dilation) / stride is whole, each inside [0, out_size). Regular
// indices of one residue mod stride have the same taps, their outputs one apart.
struct AxisPair {
  int64_t o, k;
};
struct AxisPreimage {
  std::vector<AxisPair> pairs;
  bool regular;
};

std::vector<AxisPreimage> axis_preimages(int64_t size, int64_t kernel, int64_t stride, int64_t pad_before,
                                         int64_t pad_after, int64_t dilation, int64_t out_size, PaddingMode mode) {
  std::vector<AxisPreimage> axis(size);
  for (int64_t i = 0; i < size; ++i) {
    const Preimages pre = padded_preimages(i, size, pad_before, pad_after, mode);
    int64_t preimages = 0;
    for (int a = 0; a < 3; ++a)
      for (int64_t v = pre.lo[a]; v <= pre.hi[a]; ++v, ++preimages)
        for (int64_t k = 0; k < kernel; ++k) {
          const int64_t o = output_index_for_tap(v, k, stride, pad_before, dilation, out_size);
          if (o >= 0) axis[i].pairs.push_back(AxisPair{o, k});
        }
    bool regular = preimages == 1;  // then it is i itself
    for (int64_t k = 0; k < kernel && regular; ++k) {
      const int64_t num = i + pad_before - k * dilation;
      if (((num % stride) + stride) % stride == 0) regular = num >= 0 && num / stride < out_size;
    }
    axis[i].regular = regular;
  }
  return axis;
}

// channels_last grad_input (multiplier 1) as a gather: every input pixel sums grad_output
// over the (output pixel, tap) pairs that read it. Regular pixels (see above) of one
// residue class (ih mod stride_h, iw mod stride_w) have their taps at fixed offsets and
// one output pixel apart, so along a row they go four at a time through the forward's
// quad kernel, with that class's taps packed (a stride-1 convolution of grad_output with a
// sub-kernel). The others list their pairs one by one. (1 thread, float32, 2x240x28x28
// 5x5 stride 2: 0.32 -> 0.17-0.21 ms against every pixel's pairs listed.) S: the storage
// type of grad_output and grad_input (bfloat16 is read and written in place under
// AVX-512, as in the forward).
template <typename S>
void grad_input_channels_last(const at::Tensor& grad_output, const at::Tensor& weight,
                              at::Tensor& grad_input, const Conv2dGeometry& g) {
  using T = at::opmath_type<S>;
  constexpr int64_t V = at::vec::Vectorized<T>::size();
  const int64_t C = g.in_channels, cpad = round_up(C, 4 * V), kk = g.kernel_h * g.kernel_w;
  const int64_t sh = g.stride_h, sw = g.stride_w;
  const AlignedBuffer<T> wt = weight_taps_by_channel<S, T>(weight, g, cpad);
  const std::vector<T> zeros(cpad, T(0));  // the sums start from a zero "bias"
  const auto rows = axis_preimages(g.in_h, g.kernel_h, sh, g.pad_top, g.pad_bottom, g.dilation_h, g.out_h, g.mode);
  const auto cols = axis_preimages(g.in_w, g.kernel_w, sw, g.pad_left, g.pad_right, g.dilation_w, g.out_w, g.mode);
  const Strides4d go_s = strides4d(grad_output), gi_s = strides4d(grad_input);
  const S* go = grad_output.const_data_ptr<S>();
  S* gi = grad_input.mutable_data_ptr<S>();
  const bool stream = streams_output(grad_input);

  // Per residue class (rh, rw): the quads of a regular row start at column `first`, whose
  // first pair reads grad_output column go_col, and their taps (packed weights, offsets
  // from the first pair's output pixel) are the same. Classes of rows and columns the input
  // has: a stride may be far larger than it.
  struct ClassQuads {
    int64_t first = 0, go_col = 0, quads = 0, rest = 0;  // rest: single pixels after the quads
    std::vector<int64_t> off;
    AlignedBuffer<T> w{0};
  };
  const int64_t row_classes = std::min(sh, g.in_h), col_classes = std::min(sw, g.in_w);
  std::vector<ClassQuads> classes(row_classes * col_classes);
  // The output index the offsets count from (0 where a class has no taps: nothing is read).
  auto first_output = [](const std::vector<AxisPair>& pairs) { return pairs.empty() ? int64_t(0) : pairs[0].o; };
  std::vector<char> quad_col(g.in_w, 0);  // columns the quads (and their rest) write in a regular row
  for (int64_t rw = 0; rw < col_classes; ++rw) {
    int64_t first = rw;
    while (first < g.in_w && !cols[first].regular) first += sw;
    int64_t count = 0;
    while (first + count * sw < g.in_w && cols[first + count * sw].regular) ++count;
    for (int64_t q = 0; q < count; ++q) quad_col[first + q * sw] = 1;
    for (int64_t rh = 0; rh < row_classes && count > 0; ++rh) {
      int64_t ih = rh;
      while (ih < g.in_h && !rows[ih].regular) ih += sh;
      if (ih >= g.in_h) continue;
      ClassQuads& cq = classes[rh * col_classes + rw];
      const auto& rp = rows[ih].pairs;
      const auto& cp = cols[first].pairs;
      cq.first = first;
      cq.go_col = first_output(cp);
      cq.quads = count / 4;
      cq.rest = count % 4;
      cq.w = AlignedBuffer<T>(static_cast<int64_t>(rp.size() * cp.size()) * cpad);
      for (const AxisPair& r : rp)
        for (const AxisPair& c : cp) {
          const int64_t t = static_cast<int64_t>(cq.off.size());
          cq.off.push_back((r.o - first_output(rp)) * go_s.h + (c.o - first_output(cp)) * go_s.w);
          std::copy_n(wt.data() + (r.k * g.kernel_w + c.k) * cpad, cpad, cq.w.data() + t * cpad);
        }
    }
  }

  // The pixels whose pairs are listed: in a regular row the columns the quads leave, else all.
  std::vector<int64_t> listed_cols, all_cols(g.in_w);
  for (int64_t iw = 0; iw < g.in_w; ++iw) {
    all_cols[iw] = iw;
    if (!quad_col[iw]) listed_cols.push_back(iw);
  }

  at::parallel_for(0, g.batch * g.in_h, grain_for(g.in_w * C * kk), [&](int64_t begin, int64_t end) {
    std::vector<const S*> srcs;
    std::vector<int64_t> ids;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / g.in_h, ih = item % g.in_h;
      const auto& rp = rows[ih].pairs;
      S* gi_row = gi + n * gi_s.n + ih * gi_s.h;
      const bool quad_row = rows[ih].regular;
      if (quad_row)
        for (int64_t rw = 0; rw < col_classes; ++rw) {
          const ClassQuads& cq = classes[(ih % sh) * col_classes + rw];
          if (cq.quads == 0 && cq.rest == 0) continue;
          const S* base = go + n * go_s.n + first_output(rp) * go_s.h + cq.go_col * go_s.w;
          cl_interior_quads<S, T, 0>(base, go_s.h, go_s.w, cq.off.data(), static_cast<int64_t>(cq.off.size()),
                                     cq.w.data(), cpad, zeros.data(), C, 1, cq.quads, cq.rest,
                                     gi_row + cq.first * gi_s.w, gi_s.h, sw * gi_s.w, stream, /*by_pixel=*/false);
        }
      for (const int64_t iw : quad_row ? listed_cols : all_cols) {
        srcs.clear();
        ids.clear();
        for (const AxisPair& r : rp)
          for (const AxisPair& c : cols[iw].pairs) {
            srcs.push_back(go + n * go_s.n + r.o * go_s.h + c.o * go_s.w);
            ids.push_back(r.k * g.kernel_w + c.k);
          }
        cl_listed_pixels<S, T, 1>(srcs.data(), 0, ids.data(), static_cast<int64_t>(srcs.size()), wt.data(), cpad,
                                  zeros.data(), C, gi_row + iw * gi_s.w, 0);
      }
    }
    if (stream) streamed_stores_done();
  });
}

// grad_input, channel-blocked (stride 1, multiplier 1; small planes): V input channels of
// one image; grad_output staged as [row][column][V] with a zero border of the dilated kernel
// extent, so the gradient at every position of the padded frame is a gather of kH * kW
// aligned vectors (a depthwise conv with the flipped kernel). The padded frame is then
// folded onto the input planes by the padding map, in a fixed order.
template <typename T, int P>
inline void blocked_gather(const T* base, const int64_t* offs, const T* wt, int64_t nt, T* out) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  Vec acc[P];
  for (int p = 0; p < P; ++p) acc[p] = Vec(T(0));
  for (int64_t t = 0; t < nt; ++t) {
    const Vec wv = Vec::loadu(wt + t * V);
    const T* src = base + offs[t];
    for (int p = 0; p < P; ++p) acc[p] = at::vec::fmadd(wv, Vec::loadu(src + p * V), acc[p]);
  }
  for (int p = 0; p < P; ++p) acc[p].store(out + p * V);
}

// Measured (one thread, fp32): 2-4x faster than the W-vectorized gather for rows of at most
// 16 outputs, 1.3-2x for 5x5 and larger kernels on wider rows.
bool use_blocked_grad_input(const Conv2dGeometry& g, int64_t vec, int64_t elem) {
  if (multiplier(g) != 1 || g.stride_h != 1 || g.stride_w != 1) return false;
  if (g.out_w > vec && g.kernel_h * g.kernel_w < 25) return false;
  const int64_t gh = g.out_h + 2 * (g.kernel_h - 1) * g.dilation_h;
  const int64_t gw = g.out_w + 2 * (g.kernel_w - 1) * g.dilation_w;
  const BlockedGeometry bg(g);
  return (gh * gw + bg.plane) * vec * elem <= (1 << 20);
}

template <typename scalar_t>
void grad_input_blocked(const at::Tensor& grad_output, const at::Tensor& weight, at::Tensor& grad_input,
                        const Conv2dGeometry& g) {
  using T = at::opmath_type<scalar_t>;
  constexpr int64_t V = at::vec::Vectorized<T>::size();
  const BlockedGeometry bg(g);
  const int64_t kk = g.kernel_h * g.kernel_w, C = g.in_channels, blocks = (C + V - 1) / V;
  const int64_t eh = (g.kernel_h - 1) * g.dilation_h, ew = (g.kernel_w - 1) * g.dilation_w;
  const int64_t gh = g.out_h + 2 * eh, gw = g.out_w + 2 * ew;
  const bool zeros = g.mode == PaddingMode::Zeros;
  // Region of the padded frame computed: the real input for zero padding, else all of it.
  const int64_t r0 = zeros ? g.pad_top : 0, r1 = zeros ? g.pad_top + g.in_h : bg.padded_h;
  const int64_t c0 = zeros ? g.pad_left : 0, c1 = zeros ? g.pad_left + g.in_w : bg.padded_w;
  const int64_t cols = c1 - c0;
  // Padded-frame position (r, col) gets tap (kh, kw) from grad_output pixel
  // (r - kh * dh, col - kw * dw), which is staged at (r - kh * dh + eh, col - kw * dw + ew).
  std::vector<int64_t> offs(kk);
  for (int64_t kh = 0; kh < g.kernel_h; ++kh)
    for (int64_t kw = 0; kw < g.kernel_w; ++kw)
      offs[kh * g.kernel_w + kw] = -((kh * g.dilation_h) * gw + kw * g.dilation_w) * V;
  const std::vector<T> w = weight_taps<scalar_t, T>(weight, g);
  const Strides4d go_s = strides4d(grad_output), gi_s = strides4d(grad_input);
  const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
  scalar_t* gi = grad_input.mutable_data_ptr<scalar_t>();
  const int64_t work = V * ((r1 - r0) * cols * kk + gh * gw);
  at::parallel_for(0, g.batch * blocks, grain_for(work), [&](int64_t begin, int64_t end) {
    std::vector<T> staged(gh * gw * V, T(0)), res((r1 - r0) * cols * V), wt(kk * V), folded;
    if (!zeros) folded.resize(g.in_h * g.in_w);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / blocks, cb = (item % blocks) * V;
      const int64_t lanes = std::min<int64_t>(V, C - cb);
      for (int64_t oh = 0; oh < g.out_h; ++oh)
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          T* d = staged.data() + ((oh + eh) * gw + ow + ew) * V;
          const scalar_t* src = go + n * go_s.n + cb * go_s.c + oh * go_s.h + ow * go_s.w;
          for (int64_t l = 0; l < V; ++l) d[l] = l < lanes ? static_cast<T>(src[l * go_s.c]) : T(0);
        }
      for (int64_t t = 0; t < kk; ++t)
        for (int64_t l = 0; l < V; ++l) wt[t * V + l] = l < lanes ? w[(cb + l) * kk + t] : T(0);
      for (int64_t r = r0; r < r1; ++r) {
        const T* base = staged.data() + ((r + eh) * gw + c0 + ew) * V;
        T* out = res.data() + (r - r0) * cols * V;
        int64_t x = 0;
        for (; x + 8 <= cols; x += 8) blocked_gather<T, 8>(base + x * V, offs.data(), wt.data(), kk, out + x * V);
        switch (cols - x) {
          case 7: blocked_gather<T, 7>(base + x * V, offs.data(), wt.data(), kk, out + x * V); break;
          case 6: blocked_gather<T, 6>(base + x * V, offs.data(), wt.data(), kk, out + x * V); break;
          case 5: blocked_gather<T, 5>(base + x * V, offs.data(), wt.data(), kk, out + x * V); break;
          case 4: blocked_gather<T, 4>(base + x * V, offs.data(), wt.data(), kk, out + x * V); break;
          case 3: blocked_gather<T, 3>(base + x * V, offs.data(), wt.data(), kk, out + x * V); break;
          case 2: blocked_gather<T, 2>(base + x * V, offs.data(), wt.data(), kk, out + x * V); break;
          case 1: blocked_gather<T, 1>(base + x * V, offs.data(), wt.data(), kk, out + x * V); break;
          default: break;
        }
      }
      for (int64_t l = 0; l < lanes; ++l) {
        scalar_t* plane = gi + n * gi_s.n + (cb + l) * gi_s.c;
        if (zeros) {
          for (int64_t ih = 0; ih < g.in_h; ++ih)
            for (int64_t iw = 0; iw < g.in_w; ++iw)
              plane[ih * gi_s.h + iw * gi_s.w] = static_cast<scalar_t>(res[(ih * cols + iw) * V + l]);
          continue;
        }
        std::fill(folded.begin(), folded.end(), T(0));
        for (int64_t r = 0; r < bg.padded_h; ++r) {
          T* frow = folded.data() + source_index(r - g.pad_top, g.in_h, g.mode) * g.in_w;
          for (int64_t col = 0; col < bg.padded_w; ++col)
            frow[source_index(col - g.pad_left, g.in_w, g.mode)] += res[(r * cols + col) * V + l];
        }
        for (int64_t ih = 0; ih < g.in_h; ++ih)
          for (int64_t iw = 0; iw < g.in_w; ++iw)
            plane[ih * gi_s.h + iw * gi_s.w] = static_cast<scalar_t>(folded[ih * g.in_w + iw]);
      }
    }
  });
}

// Strided grad_input, channel-blocked (stride S > 1 in both axes, zero padding, multiplier 1,
// no dtype conversion, NCHW rows with unit column stride): input pixel (ih, iw) gathers tap
// (kh, kw) from grad_output (q, c) where ih + pad_top - kh * dh = S * q (same for columns).
// Per input row, the valid (kh, q) pairs are listed; per column phase p = (iw + pad_left)
// mod S, the taps kw with kw * dw = p (mod S), for which consecutive pixels of the phase read
// consecutive grad_output columns. grad_output is staged like a forward input (transposed,
// zero columns around it so that a column tap never needs a bounds check), each phase run
// is register-blocked over 8 pixels, and the results are transposed back.
bool use_strided_grad_input(const Conv2dGeometry& g, bool same_type, const at::Tensor& grad_output,
                            const at::Tensor& grad_input) {
  return same_type && g.stride_h == g.stride_w && g.stride_h > 1 && g.mode == PaddingMode::Zeros &&
         multiplier(g) == 1 && grad_output.stride(3) == 1 && grad_input.stride(3) == 1;
}

template <typename T, int P>
inline void strided_gather(const T* staged, int64_t pitch, const int64_t* row_taps, int64_t nrow,
                           const int64_t* col_taps, int64_t ncol, const T* wt, int64_t kernel_w, int64_t m,
                           T* out, int64_t out_step) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  Vec acc[P];
  for (int p = 0; p < P; ++p) acc[p] = Vec(T(0));
  for (int64_t i = 0; i < nrow; ++i) {
    const int64_t kh = row_taps[2 * i], q = row_taps[2 * i + 1];
    const T* row = staged + q * pitch * V;
    for (int64_t j = 0; j < ncol; ++j) {
      const int64_t kw = col_taps[2 * j], col = m - col_taps[2 * j + 1];  // staged column of pixel m
      const Vec wv = Vec::loadu(wt + (kh * kernel_w + kw) * V);
      const T* src = row + col * V;
      for (int p = 0; p < P; ++p) acc[p] = at::vec::fmadd(wv, Vec::loadu(src + p * V), acc[p]);
    }
  }
  for (int p = 0; p < P; ++p) acc[p].store(out + p * out_step);
}

template <typename T>
void grad_input_strided(const at::Tensor& grad_output, const at::Tensor& weight, at::Tensor& grad_input,
                        const Conv2dGeometry& g) {
  constexpr int64_t V = at::vec::Vectorized<T>::size();
  const int64_t S = g.stride_h, kk = g.kernel_h * g.kernel_w, C = g.in_channels, blocks = (C + V - 1) / V;
  // Staged grad_output columns: `left` zero columns, the out_w real ones, zeros up to `pitch`.
  const int64_t left = ((g.kernel_w - 1) * g.dilation_w + S - 1) / S;
  const int64_t pitch = left + std::max(g.out_w, (g.in_w - 1 + g.pad_left) / S + 1) + 1;
  const GradOutputPlanes gop(g, left, pitch - left - g.out_w);
  // (kh, q) per input row; (kw, shift) per column phase, pixel m of phase p reading staged
  // column m - shift (shift = (kw * dw - p) / S - left).
  std::vector<int64_t> row_begin(g.in_h + 1, 0), row_taps;
  for (int64_t ih = 0; ih < g.in_h; ++ih) {
    for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
      const int64_t d = ih + g.pad_top - kh * g.dilation_h;
      if (d < 0 || d % S != 0 || d / S >= g.out_h) continue;
      row_taps.push_back(kh);
      row_taps.push_back(d / S);
    }
    row_begin[ih + 1] = static_cast<int64_t>(row_taps.size()) / 2;
  }
  std::vector<int64_t> phase_begin(S + 1, 0), col_taps;
  for (int64_t p = 0; p < S; ++p) {
    for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
      const int64_t e = kw * g.dilation_w - p;
      if (((e % S) + S) % S != 0) continue;
      col_taps.push_back(kw);
      col_taps.push_back(e / S - left);  // e is a multiple of S here (exact division, any sign)
    }
    phase_begin[p + 1] = static_cast<int64_t>(col_taps.size()) / 2;
  }
  const AlignedBuffer<T> wpack = weight_taps_by_block<T, T>(weight, g);
  const Strides4d go_s = strides4d(grad_output), gi_s = strides4d(grad_input);
  const T* go = grad_output.const_data_ptr<T>();
  T* gi = grad_input.mutable_data_ptr<T>();
  const int64_t work = V * (g.in_h * g.in_w * kk / (S * S) + g.out_h * pitch);
  at::parallel_for(0, g.batch * blocks, grain_for(work), [&](int64_t begin, int64_t end) {
    AlignedBuffer<T> staged(g.out_h * pitch * V), obuf(g.in_h * g.in_w * V);
    const std::vector<T> zeros(V, T(0));
    const T* lane_src[V];
    T* lane_dst[V];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / blocks, block = item % blocks, c0 = block * V;
      const int64_t lanes = std::min<int64_t>(V, C - c0);
      for (int64_t l = 0; l < V; ++l) lane_src[l] = l < lanes ? go + n * go_s.n + (c0 + l) * go_s.c : nullptr;
      stage_planes<T>(lane_src, go_s, gop.g, gop.bg, gop.rows.data(), gop.cols.data(), 0, g.out_h, zeros.data(),
                      staged.data());
      const T* wt = wpack.data() + block * kk * V;
      for (int64_t ih = 0; ih < g.in_h; ++ih) {
        const int64_t* rt = row_taps.data() + 2 * row_begin[ih];
        const int64_t nrow = row_begin[ih + 1] - row_begin[ih];
        T* orow = obuf.data() + ih * g.in_w * V;
        for (int64_t p = 0; p < S; ++p) {
          // pixels iw = S * m + p - pad_left inside [0, in_w)
          const int64_t m0 = (g.pad_left - p + S - 1) / S;  // pad_left - p > -S
          const int64_t m1 = (g.in_w - 1 + g.pad_left - p) >= 0 ? (g.in_w - 1 + g.pad_left - p) / S + 1 : 0;
          const int64_t* ct = col_taps.data() + 2 * phase_begin[p];
          const int64_t ncol = phase_begin[p + 1] - phase_begin[p];
          int64_t m = m0;
          const int64_t step = S * V;
          for (; m + 8 <= m1; m += 8)
            strided_gather<T, 8>(staged.data(), pitch, rt, nrow, ct, ncol, wt, g.kernel_w, m,
                                 orow + (S * m + p - g.pad_left) * V, step);
          for (; m < m1; ++m)
            strided_gather<T, 1>(staged.data(), pitch, rt, nrow, ct, ncol, wt, g.kernel_w, m,
                                 orow + (S * m + p - g.pad_left) * V, step);
        }
      }
      for (int64_t l = 0; l < lanes; ++l) lane_dst[l] = gi + n * gi_s.n + (c0 + l) * gi_s.c;
      store_planes<T>(obuf.data(), gi_s, g.in_w, 0, g.in_h, lanes, lane_dst);
    }
  });
}

// t where its channel stride is 1, else a channels_last copy: the channels_last kernels'
// channel loops need unit channel stride.
at::Tensor with_unit_channel_stride(const at::Tensor& t) {
  return t.stride(1) == 1 ? t : contiguous_cpu(t, at::MemoryFormat::ChannelsLast);
}

at::Tensor depthwise_conv2d_grad_input_cpu(const at::Tensor& grad_output, const at::Tensor& weight,
                                           at::IntArrayRef input_size, at::IntArrayRef stride,
                                           at::IntArrayRef padding, at::IntArrayRef dilation,
                                           c10::string_view padding_mode, bool channels_last) {
  const char* op = "cnnops.depthwise_conv2d_grad_input";
  const Conv2dGeometry g = check_depthwise_grad_input(op, grad_output, weight, input_size, stride, padding,
                                                      dilation, padding_mode, /*half_ok=*/false);
  at::Tensor grad_input =
      at::empty(input_size, grad_output.options().memory_format(layout_from_flag(channels_last)));
  if (grad_input.numel() == 0) return grad_input;
  if (multiplier_via_nchw(g, channels_last)) {
    const auto planar_format = at::MemoryFormat::Contiguous;
    const at::Tensor planar = depthwise_conv2d_grad_input_cpu(contiguous_cpu(grad_output, planar_format), weight,
                                                              input_size, stride, padding, dilation, padding_mode,
                                                              /*channels_last=*/false);
    copy_cpu(grad_input, planar);
    return grad_input;
  }
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, grad_output.scalar_type(), "cnnops_depthwise_grad_input_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    if (g.stride_h == 1 && g.stride_w == 1 && grad_input_as_forward(g)) {
      const Conv2dGeometry f = flipped_forward_geometry(g);
      const at::Tensor flipped = at::flip(weight, {2, 3});
      // The channels_last kernel needs unit channel stride: a named copy when grad_output lacks it.
      const bool cl_copy = channels_last && grad_output.stride(1) != 1 &&
                           (use_channels_last(f, std::is_same<T, scalar_t>::value, {&grad_input}) ||
                            bfloat16_via_float(f, grad_output.scalar_type(), {&grad_input}));
      forward_any<scalar_t>(cl_copy ? contiguous_cpu(grad_output, at::MemoryFormat::ChannelsLast) : grad_output,
                            flipped, nullptr, grad_input, f);
    } else if (!channels_last && use_strided_grad_input(g, std::is_same<T, scalar_t>::value, grad_output, grad_input)) {
      if constexpr (std::is_same<T, scalar_t>::value) grad_input_strided<T>(grad_output, weight, grad_input, g);
    } else if (channels_last && use_channels_last(g, std::is_same<T, scalar_t>::value, {&grad_input})) {
      grad_input_channels_last<T>(with_unit_channel_stride(grad_output), weight, grad_input, g);
    } else if (channels_last && bfloat16_via_float(g, grad_output.scalar_type(), {&grad_input})) {
#if defined(CPU_CAPABILITY_AVX512)
      // In place (2 threads, 8x96x112x112 3x3 s2: 6.2 ms through float32 copies, 2.8 in
      // place; forward+backward 11-13 -> 6.8 ms, torch 6.1).
      grad_input_channels_last<at::BFloat16>(with_unit_channel_stride(grad_output), weight, grad_input, g);
#else
      const at::Tensor weight_f = weight.to(at::kFloat);
      for_float_chunks(g, [&](int64_t n0, const Conv2dGeometry& chunk) {
        at::Tensor part = float_empty(grad_input, chunk.batch);
        grad_input_channels_last<float>(float_images(grad_output, n0, chunk.batch), weight_f, part, chunk);
        grad_input.narrow(0, n0, chunk.batch).copy_(part);
      });
#endif
    } else if (use_blocked_grad_input(g, at::vec::Vectorized<T>::size(), sizeof(T))) {
      grad_input_blocked<scalar_t>(grad_output, weight, grad_input, g);
    } else {
      grad_input_planes<scalar_t>(grad_output, weight, grad_input, g);
    }
  });
  return grad_input;
}

// ---------------------------------------------------------------- grad_weight


// part[t * cpad] += sum over `pixels` interior pixels p of go[p * go_step] * in[off[t] +
// p * in_step] for the nt (<= 9) taps from off: one grad_output load per pixel for all of
// them, nt independent accumulators. `count` channels (masked below a whole vector).
template <typename T, int NT>
inline void cl_grad_weight_taps(const T* go, int64_t go_step, const T* in, int64_t in_step, const int64_t* off,
                                int64_t pixels, int64_t count, T* part, int64_t cpad) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  Vec acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = Vec(T(0));
  if (count == V) {
    for (int64_t p = 0; p < pixels; ++p) {
      const Vec gv = Vec::loadu(go + p * go_step);
      const T* x = in + p * in_step;
      for (int t = 0; t < NT; ++t) acc[t] = at::vec::fmadd(gv, Vec::loadu(x + off[t]), acc[t]);
    }
  } else {
    for (int64_t p = 0; p < pixels; ++p) {
      const Vec gv = Vec::loadu(go + p * go_step, count);
      const T* x = in + p * in_step;
      for (int t = 0; t < NT; ++t) acc[t] = at::vec::fmadd(gv, Vec::loadu(x + off[t], count), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) (Vec::loadu(part + t * cpad) + acc[t]).store(part + t * cpad);
}

template <typename T>
void cl_grad_weight_group(const T* go, int64_t go_step, const T* in, int64_t in_step, const int64_t* off,
                          int64_t nt, int64_t pixels, int64_t count, T* part, int64_t cpad) {
  switch (nt) {
    case 1: return cl_grad_weight_taps<T, 1>(go, go_step, in, in_step, off, pixels, count, part, cpad);
    case 2: return cl_grad_weight_taps<T, 2>(go, go_step, in, in_step, off, pixels, count, part, cpad);
    case 3: return cl_grad_weight_taps<T, 3>(go, go_step, in, in_step, off, pixels, count, part, cpad);
    case 4: return cl_grad_weight_taps<T, 4>(go, go_step, in, in_step, off, pixels, count, part, cpad);
    case 5: return cl_grad_weight_taps<T, 5>(go, go_step, in, in_step, off, pixels, count, part, cpad);
    case 6: return cl_grad_weight_taps<T, 6>(go, go_step, in, in_step, off, pixels, count, part, cpad);
    case 7: return cl_grad_weight_taps<T, 7>(go, go_step, in, in_step, off, pixels, count, part, cpad);
    case 8: return cl_grad_weight_taps<T, 8>(go, go_step, in, in_step, off, pixels, count, part, cpad);
    default: return cl_grad_weight_taps<T, 9>(go, go_step, in, in_step, off, pixels, count, part, cpad);
  }
}

// channels_last grad_weight: rows of more outputs than this go in tasks of whole rows,
// every channel (see grad_weight_channels_last).
constexpr int64_t kClWideRows = 32;

// channels_last grad_weight of a KH x KW kernel (3x3, 5x5) on narrow planes (up to
// kClNarrowWidth columns): rows [row_begin, row_end) of one vector of channels, every tap's
// sum in a register over all the rows, added to the partial once. The general loop below adds each
// row's sums to the partial (two memory operations per tap and row) and takes the border
// pixels tap by tap: on 7- and 14-wide rows that was most of its time.
constexpr int64_t kClNarrowWidth = 16;

template <typename T, int KH, int KW>
void cl_grad_weight_narrow(const T* go, const Strides4d& go_s, const T* in, const Strides4d& in_s,
                           const Conv2dGeometry& g, const int64_t* cols, int64_t row_begin, int64_t row_end, int64_t c,
                           int64_t count, T* part, int64_t cpad) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  // Taps in the padding read zeros rather than skip their FMA: with no branch around them,
  // the sums stay in registers (GCC kept conditionally updated ones on the stack, a store
  // and a load per FMA; AVX2 AMD EPYC, 2 threads, float32, alternating processes:
  // 8x672x14x14 5x5 1.69 -> 1.31 ms, torch 4.06).
  alignas(64) static const T zeros[64 / sizeof(T) * 2] = {};
  static_assert(sizeof(zeros) / sizeof(T) >= V, "a vector of zeros");
  auto rows_of = [&](auto partial) {
    constexpr bool Partial = decltype(partial)::value;  // count < V: masked loads
    auto load = [&](const T* p) { return Partial ? Vec::loadu(p, count) : Vec::loadu(p); };
    Vec acc[KH * KW];
    for (int t = 0; t < KH * KW; ++t) acc[t] = Vec(T(0));
    for (int64_t row = row_begin; row < row_end; ++row) {
      const int64_t n = row / g.out_h, oh = row % g.out_h;
      const T* rows[KH];
      for (int kh = 0; kh < KH; ++kh) {
        const int64_t ih = source_index(oh * g.stride_h - g.pad_top + kh * g.dilation_h, g.in_h, g.mode);
        rows[kh] = ih < 0 ? nullptr : in + n * in_s.n + ih * in_s.h + c;
      }
      const T* go_row = go + n * go_s.n + oh * go_s.h + c;
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        const Vec gv = load(go_row + ow * go_s.w);
        const int64_t* col = cols + ow * KW;
        for (int kh = 0; kh < KH; ++kh)
          for (int kw = 0; kw < KW; ++kw) {
            const T* x = rows[kh] != nullptr && col[kw] >= 0 ? rows[kh] + col[kw] * in_s.w : zeros;
            acc[kh * KW + kw] = at::vec::fmadd(gv, load(x), acc[kh * KW + kw]);
          }
      }
    }
    for (int t = 0; t < KH * KW; ++t) (Vec::loadu(part + t * cpad) + acc[t]).store(part + t * cpad);
  };
  if (count == V) rows_of(std::false_type());
  else rows_of(std::true_type());
}

#if defined(CPU_CAPABILITY_AVX512)
// channels_last grad_weight of a 3x3 kernel at column stride SW (1 or 2), dilation 1
// and zero padding (MobileNet's blocks). Along an output row each kernel row keeps a window
// of three input pixels in registers, and each output pixel loads only the SW pixels it
// does not share with the previous one: 4 loads for 9 FMAs at stride 1 and 7 at stride 2,
// against 10 in the loops below. Input pixels in the padding are zero vectors (masked
// loads with no lanes), so the border pixels need no loop of their own. A task is one
// vector of channels on rows of up to kClWideRows outputs, all the channels on wider
// ones (cl_grad_weight_3x3_wide).

// The geometries the window kernels take.
bool uses_3x3_window(const Conv2dGeometry& g) {
  return g.kernel_h == 3 && g.kernel_w == 3 && g.dilation_h == 1 && g.dilation_w == 1 &&
         g.mode == PaddingMode::Zeros && g.pad_left <= 1 && (g.stride_w == 1 || g.stride_w == 2);
}

// One output row (n, oh) of the 16 channels from c (`lanes` of them), added to acc_out[9].
// S: the storage type of grad_output and input (float, or bfloat16 widened in registers).
template <int SW, typename S>
inline void cl_grad_weight_3x3_row(const S* go, const Strides4d& go_s, const S* in, const Strides4d& in_s,
                                   const Conv2dGeometry& g, int64_t n, int64_t oh, int64_t c, __mmask16 lanes,
                                   __m512* acc_out) {
  // The sums in locals, not through acc_out: __m512 may alias any float, so sums kept
  // through the pointer were stored after every pixel (9 stores per 9 FMAs) and every
  // geometry field reloaded (2 threads, float32: 8x32x112x112 0.82-1.03 -> 0.70-0.73 ms,
  // 8x144x56x56 1.01-1.15 -> 0.74-0.79 ms).
  __m512 acc[9];
  for (int t = 0; t < 9; ++t) acc[t] = acc_out[t];
  alignas(64) static const S zeros[16] = {};
  const S* rows[3];
  int64_t step[3];  // pixel step of each kernel row: 0 for a padding row (it reads the zeros)
  for (int kh = 0; kh < 3; ++kh) {
    const int64_t ih = oh * g.stride_h - g.pad_top + kh;
    const bool inside = ih >= 0 && ih < g.in_h;
    rows[kh] = inside ? in + n * in_s.n + ih * in_s.h + c : zeros;
    step[kh] = inside ? in_s.w : 0;
  }
  const S* go_row = go + n * go_s.n + oh * go_s.h + c;
  // The rows are taken in order: the next output row's grad_output row and its input rows
  // that this one does not read (the last min(stride_h, 3)) are prefetched into
  // L2, a row ahead, as the interior pixels go, where pixels are 512 bytes or more apart:
  // a pass over one vector of channels then touches too few lines per 4 KB page for the
  // hardware prefetchers (2 threads, float32, medians in one process: 8x144x56x56 1.06 ->
  // 0.97 ms, 8x384x28x28 0.84 -> 0.71 ms; 32 and 96 channels 2-6% slower with it).
  const int64_t bytes = static_cast<int64_t>(sizeof(S));
  const bool prefetch = in_s.w * bytes >= 512 && go_s.w * bytes >= 512;
  const S* next_go = prefetch && oh + 1 < g.out_h ? go_row + go_s.h : nullptr;
  const S* next_in[3];
  for (int r = 0; r < 3; ++r) {
    const int64_t ih = (oh + 1) * g.stride_h - g.pad_top + 2 - r;
    next_in[r] = next_go != nullptr && r < g.stride_h && ih >= 0 && ih < g.in_h ? in + n * in_s.n + ih * in_s.h + c
                                                                                  : nullptr;
  }
  auto pixel = [&](int kh, int64_t col) {  // input column col of kernel row kh, zeros outside the row
    const bool inside = col >= 0 && col < g.in_w;
    return load_masked(inside ? lanes : __mmask16(0), rows[kh] + (inside ? col : 0) * step[kh]);
  };
  // Tap kw of output ow reads column ow * SW - pad_left + kw, held in win[kh][(SW * ow + kw) % 3];
  // taps kw < 3 - SW read what the previous output's taps kw + SW read.
  __m512 win[3][3];
  for (int kh = 0; kh < 3; ++kh)
    for (int kw = 0; kw < 3 - SW; ++kw) win[kh][kw] = pixel(kh, kw - g.pad_left);
  // Outputs [0, inner) read only columns inside the row (loads without the bounds test).
  const int64_t last_inside = g.in_w - 3 + g.pad_left;  // ow * SW may reach this
  const int64_t inner = last_inside < 0 ? 0 : std::min<int64_t>(last_inside / SW + 1, g.out_w);
  auto output_pixel = [&](auto phase, auto edge, int64_t ow) {
    constexpr int P = decltype(phase)::value;  // ow % 3
    const __m512 gv = load_masked(lanes, go_row + ow * go_s.w);
    if (!decltype(edge)::value && next_go != nullptr) {
      _mm_prefetch(reinterpret_cast<const char*>(next_go + ow * go_s.w), _MM_HINT_T1);
      for (int r = 0; r < 3; ++r)
        if (next_in[r] != nullptr)
          for (int kw = 3 - SW; kw < 3; ++kw)
            _mm_prefetch(reinterpret_cast<const char*>(next_in[r] + (ow * SW - g.pad_left + kw) * in_s.w), _MM_HINT_T1);
    }
    for (int kh = 0; kh < 3; ++kh)
      for (int kw = 3 - SW; kw < 3; ++kw) {
        const int64_t col = ow * SW - g.pad_left + kw;
        win[kh][(SW * P + kw) % 3] = decltype(edge)::value ? pixel(kh, col) : load_masked(lanes, rows[kh] + col * step[kh]);
      }
    for (int kh = 0; kh < 3; ++kh)
      for (int kw = 0; kw < 3; ++kw)
        acc[kh * 3 + kw] = _mm512_fmadd_ps(gv, win[kh][(SW * P + kw) % 3], acc[kh * 3 + kw]);
  };
  using Inner = std::false_type;
  using Edge = std::true_type;
  using P0 = std::integral_constant<int, 0>;
  using P1 = std::integral_constant<int, 1>;
  using P2 = std::integral_constant<int, 2>;
  int64_t ow = 0;
  for (; ow + 3 <= inner; ow += 3) {
    output_pixel(P0(), Inner(), ow);
    output_pixel(P1(), Inner(), ow + 1);
    output_pixel(P2(), Inner(), ow + 2);
  }
  for (; ow + 3 <= g.out_w; ow += 3) {  // the phases go on: 0, 1, 2, 0, ...
    output_pixel(P0(), Edge(), ow);
    output_pixel(P1(), Edge(), ow + 1);
    output_pixel(P2(), Edge(), ow + 2);
  }
  if (ow < g.out_w) output_pixel(P0(), Edge(), ow);
  if (ow + 1 < g.out_w) output_pixel(P1(), Edge(), ow + 1);
  for (int t = 0; t < 9; ++t) acc_out[t] = acc[t];
}

// Rows [row_begin, row_end) of the 16 channels from c (fewer at the end), the sums in
// registers over all the rows and then added to part.
template <int SW, typename S>
void cl_grad_weight_3x3(const S* go, const Strides4d& go_s, const S* in, const Strides4d& in_s,
                        const Conv2dGeometry& g, const int64_t*, int64_t row_begin, int64_t row_end, int64_t c,
                        int64_t count, float* part, int64_t cpad) {
  const __mmask16 lanes = first_lanes(count);
  __m512 acc[9];
  for (int t = 0; t < 9; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t row = row_begin; row < row_end; ++row)
    cl_grad_weight_3x3_row<SW, S>(go, go_s, in, in_s, g, row / g.out_h, row % g.out_h, c, lanes, acc);
  for (int t = 0; t < 9; ++t)
    _mm512_storeu_ps(part + t * cpad, _mm512_add_ps(_mm512_loadu_ps(part + t * cpad), acc[t]));
}

// Rows wider than kClWideRows: one row of the 16 channels from c (fewer at the end), its
// sums through part (that vector's slice of a chunk's partial); the caller takes every
// vector of a row in turn, so that each input cache line is read whole (see
// grad_weight_channels_last).
template <int SW, typename S>
void cl_grad_weight_3x3_wide(const S* go, const Strides4d& go_s, const S* in, const Strides4d& in_s,
                             const Conv2dGeometry& g, int64_t row, int64_t c, float* part, int64_t cpad) {
  __m512 acc[9];
  for (int t = 0; t < 9; ++t) acc[t] = _mm512_loadu_ps(part + t * cpad);
  cl_grad_weight_3x3_row<SW, S>(go, go_s, in, in_s, g, row / g.out_h, row % g.out_h, c, first_lanes(g.in_channels - c),
                                acc);
  for (int t = 0; t < 9; ++t) _mm512_storeu_ps(part + t * cpad, acc[t]);
}
#endif

constexpr int64_t kClGradWeightTasks = 64;

// channels_last grad_weight (multiplier 1): the output rows (n, oh) are cut into a number
// of chunks that depends on the geometry only; a task is (chunk, vector of channels), or
// on wide rows a chunk, and owns its partial (kH * kW, channels) slice; the chunks are
// summed in order at the end. S: the storage type
// of the tensors; bfloat16 (in place, widened in registers) only where the float32 window
// kernels run (uses_3x3_window).
template <typename S>
void grad_weight_channels_last(const at::Tensor& grad_output, const at::Tensor& input,
                               at::Tensor& grad_weight, const Conv2dGeometry& g) {
  using T = at::opmath_type<S>;
  constexpr bool in_place = !std::is_same<S, T>::value;  // bfloat16, widened in registers
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const int64_t C = g.in_channels, cpad = round_up(C, V), kk = g.kernel_h * g.kernel_w;
  const int64_t rows = g.batch * g.out_h;
  const int64_t cvecs = cpad / V;
  [[maybe_unused]] bool window = false;  // the float32 3x3 window kernels run (AVX-512)
  // Rows wider than kClWideRows: a task is a chunk of rows, every vector of channels of a
  // row in turn, so that each input cache line is read whole (a task per vector of
  // channels read the lines it shares with the next vector again; AVX-512 window kernel,
  // 2 threads: 8x32x112x112 1.17 -> 0.93 ms, 8x96x112x112 stride 2 2.02 -> 1.49 ms; AVX2
  // AMD EPYC, the loop below, best of 3 in one process: 8x96x112x112 stride 2 3.65 -> 2.06
  // ms, 8x32x112x112 1.74 -> 1.17, 8x144x56x56 2.05 -> 1.80, 8x96x56x56 7x7 4.81 -> 4.05).
  const bool wide_rows = g.out_w > kClWideRows;
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same<T, float>::value) window = uses_3x3_window(g);
  const bool wide_window = window && wide_rows;  // the window kernel for wide rows
#else
  const bool wide_window = false;
#endif
  // Chunks of rows: a task is a chunk and a vector of channels (all of them for the wide
  // window kernel), about kClGradWeightTasks tasks to share among the threads (16 chunks at
  // most), and no more partial sums to zero and add up than that (16 chunks of a
  // 960-channel 7x7 plane were 0.5 MB: 2 threads, 8x960x7x7 0.168 -> 0.129 ms with 2, torch
  // 0.120). A function of the geometry only: the sums are the same with any number of threads.
  const int64_t chunks =
      std::min<int64_t>(rows, wide_rows ? 16 : std::clamp<int64_t>((kClGradWeightTasks + cvecs - 1) / cvecs, 1, 16));
  std::vector<T> partial(chunks * kk * cpad, T(0));
  std::vector<int64_t> cols(g.out_w * g.kernel_w);
  for (int64_t ow = 0; ow < g.out_w; ++ow)
    for (int64_t kw = 0; kw < g.kernel_w; ++kw)
      cols[ow * g.kernel_w + kw] =
          source_index(ow * g.stride_w - g.pad_left + kw * g.dilation_w, g.in_w, g.mode);
  const Strides4d go_s = strides4d(grad_output), in_s = strides4d(input);
  const S* go = grad_output.const_data_ptr<S>();
  const S* in = input.const_data_ptr<S>();
  // Interior output columns [ow_lo, ow_hi) of rows whose kernel rows are all inside: every
  // tap at a fixed offset (off) from the pixel, so each grad_output vector is loaded once
  // for a group of up to 9 taps (cl_grad_weight_taps); the other pixels tap by tap below.
  const InteriorRange inside_h = rows_with_taps_inside(g), inside_w = cols_with_taps_inside(g);
  const int64_t ow_lo = inside_w.lo, ow_hi = inside_w.hi;
  const std::vector<int64_t> off = tap_offsets(g, in_s);
  const int64_t work = (rows / chunks) * g.out_w * kk * V;
  using Narrow = void (*)(const S*, const Strides4d&, const S*, const Strides4d&, const Conv2dGeometry&,
                          const int64_t*, int64_t, int64_t, int64_t, int64_t, T*, int64_t);
  Narrow narrow = nullptr;
  // Measured (2 threads, float32, 8 images): 5x5 on 14x14 1.20 -> 1.08 ms (672 channels);
  // 3x3 on 7x7 planes 0.22 -> 0.185 ms (960), which the window kernel below takes in float32
  // (0.18 -> 0.14 ms; 14x14 0.24 -> 0.15, 28x28 0.45 -> 0.35; stride 2, 56x56 input 0.44 -> 0.39).
  // 3x3 up to 16 columns, not 8 (AVX2, 2 threads, best of 3 in one process, the general
  // loop -> this one): 8x384x14x14 0.73 -> 0.46 ms, 8x192x28x28 stride 2 0.34 -> 0.23.
  if constexpr (!in_place) {
    if (g.kernel_h == 3 && g.kernel_w == 3 && g.out_w <= kClNarrowWidth) narrow = cl_grad_weight_narrow<T, 3, 3>;
    if (g.kernel_h == 5 && g.kernel_w == 5 && g.out_w <= kClNarrowWidth) narrow = cl_grad_weight_narrow<T, 5, 5>;
  }
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same<T, float>::value) {
    if (window && !wide_window) {
      narrow = g.stride_w == 1 ? cl_grad_weight_3x3<1, S> : cl_grad_weight_3x3<2, S>;
    }
  }
#endif
  TORCH_INTERNAL_ASSERT(!in_place || wide_window || narrow != nullptr,
                        "cnnops: a bfloat16 channels_last weight gradient outside the window kernels");
  // One output row of the vector of channels from c, its sums added to part (that
  // vector's slice of a chunk's partial).
  auto general_row = [&](int64_t row, int64_t c, T* part) {
    if constexpr (!in_place) {  // (bfloat16 goes through the window kernels only)
      const int64_t count = std::min<int64_t>(V, C - c);
      const int64_t n = row / g.out_h, oh = row % g.out_h;
      const int64_t ih0 = oh * g.stride_h - g.pad_top;
      const bool inside = oh >= inside_h.lo && oh < inside_h.hi && ow_hi > ow_lo;
      const T* go_row = go + n * go_s.n + oh * go_s.h + c;
      if (inside) {
        const T* in_px = in + n * in_s.n + ih0 * in_s.h + (ow_lo * g.stride_w - g.pad_left) * in_s.w + c;
        for (int64_t t0 = 0; t0 < kk; t0 += 9)
          cl_grad_weight_group<T>(go_row + ow_lo * go_s.w, go_s.w, in_px, g.stride_w * in_s.w, off.data() + t0,
                                  std::min<int64_t>(9, kk - t0), ow_hi - ow_lo, count, part + t0 * cpad, cpad);
      }
      for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
        const int64_t ih = source_index(oh * g.stride_h - g.pad_top + kh * g.dilation_h, g.in_h, g.mode);
        if (ih < 0) continue;
        const T* in_row = in + n * in_s.n + ih * in_s.h + c;
        for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
          Vec acc(T(0));
          for (int64_t ow = 0; ow < g.out_w; ++ow) {
            if (inside && ow == ow_lo) ow = ow_hi;  // done above
            if (ow >= g.out_w) break;
            const int64_t iw = cols[ow * g.kernel_w + kw];
            if (iw >= 0)
              acc = at::vec::fmadd(Vec::loadu(go_row + ow * go_s.w, count), Vec::loadu(in_row + iw * in_s.w, count), acc);
          }
          T* dst = part + (kh * g.kernel_w + kw) * cpad;
          (Vec::loadu(dst) + acc).store(dst);
        }
      }
    }
  };
  // A row of wide rows: the window kernel where it runs, else the general loop.
  auto wide_row = [&](int64_t row, int64_t c, T* part) {
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same<T, float>::value) {
      if (wide_window) {
        const auto wide = g.stride_w == 1 ? cl_grad_weight_3x3_wide<1, S> : cl_grad_weight_3x3_wide<2, S>;
        return wide(go, go_s, in, in_s, g, row, c, part, cpad);
      }
    }
#endif
    general_row(row, c, part);
  };
  if (wide_rows) {
    at::parallel_for(0, chunks, grain_for(work * cvecs), [&](int64_t begin, int64_t end) {
      for (int64_t chunk = begin; chunk < end; ++chunk)
        for (int64_t row = chunk * rows / chunks; row < (chunk + 1) * rows / chunks; ++row)
          for (int64_t c = 0; c < C; c += V) wide_row(row, c, partial.data() + chunk * kk * cpad + c);
    });
  } else {
    at::parallel_for(0, chunks * cvecs, grain_for(work), [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t chunk = item / cvecs, c = (item % cvecs) * V;
        T* part = partial.data() + chunk * kk * cpad + c;
        const int64_t row_begin = chunk * rows / chunks, row_end = (chunk + 1) * rows / chunks;
        if (narrow != nullptr) {
          narrow(go, go_s, in, in_s, g, cols.data(), row_begin, row_end, c, std::min<int64_t>(V, C - c), part, cpad);
          continue;
        }
        if constexpr (!in_place)
          for (int64_t row = row_begin; row < row_end; ++row) general_row(row, c, part);
      }
    });
  }
  // The chunks' sums in order, a vector of channels at a time (the element loop over
  // chunks x taps x channels took a third of a 960-channel 7x7-plane call).
  const Strides4d gw_s = strides4d(grad_weight);
  S* gw = grad_weight.mutable_data_ptr<S>();
  T sum_lanes[V];
  for (int64_t t = 0; t < kk; ++t)
    for (int64_t c = 0; c < C; c += V) {
      Vec sum(T(0));
      for (int64_t chunk = 0; chunk < chunks; ++chunk)
        sum = sum + Vec::loadu(partial.data() + (chunk * kk + t) * cpad + c);
      sum.store(sum_lanes);
      for (int64_t l = 0; l < std::min<int64_t>(V, C - c); ++l)
        gw[gw_s.offset(c + l, 0, t / g.kernel_w, t % g.kernel_w)] = static_cast<S>(sum_lanes[l]);
    }
}

// The bfloat16 3x3 weight gradients that the window kernels take in place (widening in
// registers) rather than on float32 copies (2 threads, 8x96x112x112 3x3 stride 2: 3.1 ->
// 0.83 ms; forward+backward 6.8 -> 3.7 ms, torch 6.3).
bool bfloat16_window_in_place(const Conv2dGeometry& g) {
#if defined(CPU_CAPABILITY_AVX512)
  return uses_3x3_window(g);
#else
  (void)g;
  return false;
#endif
}

// bfloat16 weight gradients on float32 copies: fn(n0, chunk, part) writes the float32
// gradient of images [n0, n0 + chunk.batch) into part; the parts are added in chunk order
// (any thread count gives the same bits) and rounded to bfloat16 once.
template <typename Fn>
void grad_weight_by_float_chunks(at::Tensor& grad_weight, const Conv2dGeometry& g, const Fn& fn) {
  at::Tensor sum;
  for_float_chunks(g, [&](int64_t n0, const Conv2dGeometry& chunk) {
    at::Tensor part = at::empty(grad_weight.sizes(), grad_weight.options().dtype(at::kFloat));
    fn(n0, chunk, part);
    sum = sum.defined() ? sum.add_(part) : part;
  });
  grad_weight.copy_(sum);
}

at::Tensor depthwise_conv2d_grad_weight_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                            at::IntArrayRef weight_size, at::IntArrayRef stride,
                                            at::IntArrayRef padding, at::IntArrayRef dilation,
                                            c10::string_view padding_mode, bool channels_last) {
  const char* op = "cnnops.depthwise_conv2d_grad_weight";
  const Conv2dGeometry g = check_depthwise_grad_weight(op, grad_output, input, weight_size, stride, padding,
                                                       dilation, padding_mode, /*half_ok=*/false);
  at::Tensor grad_weight =
      at::empty(weight_size, input.options().memory_format(layout_from_flag(channels_last)));
  if (g.batch == 0) return grad_weight.zero_();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, input.scalar_type(), "cnnops_depthwise_grad_weight_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const bool cl = use_channels_last(g, std::is_same<T, scalar_t>::value, {&input}) &&
                    input.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
    // As the forward: large kernels (the backward, both gradients: 13x13 4x256x28x28 12.9 ->
    // 6.5 ms, 31x31 2x64x32x32 14.3 -> 3.9 ms) and multipliers over 1 on NCHW copies
    // (bfloat16 ones come back here as the float32 copies of the bfloat16 branch below).
    const bool cl_input = input.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
    const bool multiplier_copies = multiplier_via_nchw(g, cl_input) && input.scalar_type() != at::kBFloat16;
    if ((cl && large_kernel_via_nchw(g)) || multiplier_copies) {
      grad_weight_blocked<scalar_t>(contiguous_cpu(grad_output, at::MemoryFormat::Contiguous),
                                    contiguous_cpu(input, at::MemoryFormat::Contiguous), grad_weight, g);
    } else if (cl) {
      grad_weight_channels_last<T>(with_unit_channel_stride(grad_output), input, grad_weight, g);
    } else if (bfloat16_via_float(g, input.scalar_type(), {&input}) &&
               input.suggest_memory_format() == at::MemoryFormat::ChannelsLast) {
      if (bfloat16_window_in_place(g)) {
#if defined(CPU_CAPABILITY_AVX512)
        grad_weight_channels_last<at::BFloat16>(with_unit_channel_stride(grad_output), input, grad_weight, g);
#endif
      } else {
        grad_weight_by_float_chunks(grad_weight, g, [&](int64_t n0, const Conv2dGeometry& chunk, at::Tensor& part) {
          grad_weight_channels_last<float>(float_images(grad_output, n0, chunk.batch),
                                           float_images(input, n0, chunk.batch), part, chunk);
        });
      }
    } else if (input.scalar_type() == at::kBFloat16 && forward_path() == ForwardPath::Auto) {
      // as the bfloat16 plane forward: whatever float32 takes, on float32 copies
      grad_weight_by_float_chunks(grad_weight, g, [&](int64_t n0, const Conv2dGeometry& chunk, at::Tensor& part) {
        auto as_float = [&](const at::Tensor& t) {
          return float_images(t, n0, chunk.batch, t.suggest_memory_format());
        };
        part.copy_(depthwise_conv2d_grad_weight_cpu(as_float(grad_output), as_float(input), weight_size, stride,
                                                    padding, dilation, padding_mode, channels_last));
      });
    } else {
      grad_weight_blocked<scalar_t>(grad_output, input, grad_weight, g);
    }
  });
  return grad_weight;
}

}  // namespace

void depthwise_forward_cpu(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias,
                           at::Tensor& output, const Conv2dGeometry& g) {
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, input.scalar_type(), "cnnops_depthwise_forward_cpu", [&] {
    forward_any<scalar_t>(input, weight, bias, output, g);
  });
}

TORCH_LIBRARY_IMPL(cnnops, CPU, m) {
  m.impl("depthwise_conv2d", &depthwise_conv2d_cpu);
  m.impl("depthwise_conv2d_grad_input", &depthwise_conv2d_grad_input_cpu);
  m.impl("depthwise_conv2d_grad_weight", &depthwise_conv2d_grad_weight_cpu);
}

}  // namespace cnnops
