// Depthwise convolution on CUDA, the direct kernels: the default for 3x3 kernels, and for
// 5x5 and 7x7 too with CNNOPS_DEPTHWISE_CUDA_PATH=direct (depthwise_conv2d.cu says why). First
// run on a GPU 2026-11-29 (H200: every CUDA test and the compute-sanitizer smoke run passed);
// tests/test_depthwise_cuda_emulated.py also runs them on the CPU.
//
// Why more kernels: on the H100 the tiled kernels ran the 3x3 forward at 0.3-0.7x of torch
// (whose kernel is a thread per output reading global memory), 540 GB/s where the copy limit
// is 3 TB/s, and forward+backward at 0.45-0.65x. They stage every window element through
// source_index, unspread and 64-bit offsets, for any kernel size and stride at run time.
// These take the common shapes only -- square kernels 3, 5, 7, stride 1 or 2 (dilation 2 at
// stride 1, for 3 and 5), zero padding, float / half / bfloat16; NCHW, and channels_last for
// grad_weight -- as template parameters, and read global memory directly (L1 serves the
// neighbouring threads' overlapping windows). NCHW:
//  - a thread takes kRows outputs down one column, so that each input value it loads feeds
//    every one of those outputs whose window holds it (a 3x3 at stride 1: 6 input rows for 4
//    outputs, 18 loads for 36 multiply-adds; walk_windows);
//  - threads are ordered column fastest, so that a warp's loads of one tap are consecutive
//    addresses;
//  - all of a thread's index math is a handful of 32-bit operations: its (plane, row group,
//    column) comes from multiply-high divisions by host-computed magic numbers, its offsets
//    are 32-bit within the plane, the taps are unrolled and its K x K weights (or, for
//    grad_weight, its K x K sums) sit in registers.
// grad_input as a forward (flip, with grad_output spread by the stride, common/depthwise_index.h)
// uses the forward kernel, at spread 1 or 2. grad_weight: a block per (channel, slice of its
// outputs), a fixed-order block sum, and depthwise_conv2d.cu's in-order sum over the slices.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "common/conv_checks.h"
#include "common/depthwise_index.h"
#include "cuda/depthwise_conv2d_fast.cuh"

namespace cnnops {
namespace cuda {
namespace {

constexpr int kDirectBlock = 256;
constexpr int kRows = 4;  // outputs per thread, down a column

// n / d for any 32-bit n by a multiply-high, an add and a shift (Granlund and Montgomery's
// round-up method): m = floor(2^32 * (2^s - d) / d) + 1 with 2^s >= d; the add is done in 64
// bits, so no n overflows it.
struct FastDivider {
  uint32_t d = 1, m = 1, s = 0;
  FastDivider() = default;
  explicit FastDivider(uint32_t divisor) : d(divisor) {
    while ((uint64_t(1) << s) < d) ++s;
    m = static_cast<uint32_t>(((uint64_t(1) << 32) * ((uint64_t(1) << s) - d)) / d + 1);
  }
  __device__ __forceinline__ uint32_t div(uint32_t n) const {
#if defined(__CUDA_ARCH__)
    const uint32_t hi = __umulhi(n, m);
#else
    const uint32_t hi = static_cast<uint32_t>((uint64_t(n) * m) >> 32);
#endif
    return static_cast<uint32_t>((uint64_t(hi) + n) >> s);
  }
};

struct DirectArgs {
  FastDivider out_w, row_groups, out_channels, multiplier;
  uint32_t total;                  // threads with work: planes * row_groups * out_w
  int in_h, in_w, out_h;           // in_h, in_w: the (spread) input the convolution sees
  int pad_top, pad_left;
  int in_sh, in_sw, out_sh;        // strides within a plane (32-bit: checked on the host)
  int64_t in_sn, in_sc, out_plane;  // strides of planes
  int64_t w_so, w_sh, w_sw;        // weight strides (out channel, row, column)
};

// Virtual index v of the (spread) input: its real index, or -1 where it reads zero (outside,
// or between two spread values).
template <int SP>
__device__ __forceinline__ int real_index(int v, int size) {
  if (v < 0 || v >= size) return -1;
  if (SP == 1) return v;
  return v % SP != 0 ? -1 : v / SP;
}

// Column offsets, within a row, of the K taps of output column ow (-1: a zero).
template <int K, int S, int D, int SP>
__device__ __forceinline__ void tap_columns(int ow, int pad_left, int in_w, int in_sw, int* col) {
  const int vw0 = ow * S - pad_left;
#pragma unroll
  for (int kw = 0; kw < K; ++kw) {
    const int iw = real_index<SP>(vw0 + kw * D, in_w);
    col[kw] = iw < 0 ? -1 : iw * in_sw;
  }
}

// The products of a thread's outputs (rows oh0 .. oh0 + kRows - 1, one column; only those
// above out_h, a last row group's missing ones, are left out) with their windows:
// visit(i, kh, kw, x) for output i, tap (kh, kw) and the input value x it reads there, each
// input value loaded once for all the outputs whose window holds it. Taps that read a zero
// (padding, between spread values) are skipped, as torch skips them: an Inf or NaN in the
// other operand then stays out of the sum, as does one in a row only missing outputs read.
template <typename scalar_t, int K, int S, int D, int SP, typename Visit>
__device__ __forceinline__ void walk_windows(const scalar_t* __restrict__ plane, int oh0, int out_h, int pad_top,
                                             int in_h, int in_sh, const int* col, Visit&& visit) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kWindowRows = (kRows - 1) * S + (K - 1) * D + 1;
  const int vh0 = oh0 * S - pad_top, real = out_h - oh0;  // real outputs: i < real
#pragma unroll
  for (int r = 0; r < kWindowRows; ++r) {
    const int ih = real_index<SP>(vh0 + r, in_h);
    if (ih < 0) continue;
    const scalar_t* row = plane + ih * in_sh;
#pragma unroll
    for (int kw = 0; kw < K; ++kw) {
      if (col[kw] < 0) continue;
      const acc_t x = static_cast<acc_t>(row[col[kw]]);
#pragma unroll
      for (int i = 0; i < kRows; ++i) {
        const int dh = r - i * S;  // == kh * D for the output i that reads this row with tap kh
        if (dh >= 0 && dh % D == 0 && dh / D < K && i < real) visit(i, dh / D, kw, x);
      }
    }
  }
}

// One thread: outputs (oh0 .. oh0 + kRows - 1, ow) of plane (n, oc). K: kernel size, S: stride,
// D: dilation, SP: spread of the input (grad_input at stride SP, with S = 1).
template <typename scalar_t, int K, int S, int D, int SP>
__global__ void __launch_bounds__(kDirectBlock)
    cnnops_depthwise_forward_direct_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ weight,
                                           const scalar_t* __restrict__ bias, scalar_t* __restrict__ output,
                                           DirectArgs a, bool flip) {
  using acc_t = at::opmath_type<scalar_t>;
  const uint32_t idx = blockIdx.x * kDirectBlock + threadIdx.x;
  if (idx >= a.total) return;
  const uint32_t plane_group = a.out_w.div(idx), ow = idx - plane_group * a.out_w.d;
  const uint32_t plane = a.row_groups.div(plane_group), group = plane_group - plane * a.row_groups.d;
  const uint32_t n = a.out_channels.div(plane), oc = plane - n * a.out_channels.d;
  const uint32_t c = a.multiplier.d == 1 ? oc : a.multiplier.div(oc);
  const int oh0 = static_cast<int>(group) * kRows;

  acc_t w[K * K];
  const scalar_t* wp = weight + oc * a.w_so;
#pragma unroll
  for (int kh = 0; kh < K; ++kh)
#pragma unroll
    for (int kw = 0; kw < K; ++kw) {
      const int fh = flip ? K - 1 - kh : kh, fw = flip ? K - 1 - kw : kw;
      w[kh * K + kw] = static_cast<acc_t>(wp[fh * a.w_sh + fw * a.w_sw]);
    }
  const acc_t b = bias != nullptr ? static_cast<acc_t>(bias[oc]) : acc_t(0);
  acc_t acc[kRows];
#pragma unroll
  for (int i = 0; i < kRows; ++i) acc[i] = b;
  int col[K];
  tap_columns<K, S, D, SP>(static_cast<int>(ow), a.pad_left, a.in_w, a.in_sw, col);
  walk_windows<scalar_t, K, S, D, SP>(input + n * a.in_sn + c * a.in_sc, oh0, a.out_h, a.pad_top, a.in_h, a.in_sh,
                                      col, [&](int i, int kh, int kw, acc_t x) { acc[i] += x * w[kh * K + kw]; });
  scalar_t* dst = output + plane * a.out_plane + ow;
#pragma unroll
  for (int i = 0; i < kRows; ++i)
    if (oh0 + i < a.out_h) dst[(oh0 + i) * a.out_sh] = static_cast<scalar_t>(acc[i]);
}

// grad_weight: block (oc, slice) sums, over the slice's (image, row group, column) items of
// channel oc, grad_output times the input at each tap; each thread keeps the K x K sums of
// its items in registers, then the block adds them up in a fixed order (deterministic):
// partials[(oc * K * K + tap) * slices + slice], for the in-order sum over slices in
// depthwise_conv2d.cu.
constexpr int kWeightBlock = 128;  // K x K x kWeightBlock sums in shared memory: 25 KB at 7 x 7

struct WeightArgs {
  FastDivider out_w, row_groups, multiplier;
  uint32_t items, per_slice, slices;  // items per channel: batch * row_groups * out_w
  int in_h, in_w, out_h, pad_top, pad_left;
  int in_sh, in_sw, go_sh, go_sw;  // strides within a plane (32-bit: checked on the host)
  int64_t in_sn, in_sc, go_sn, go_sc;
};

template <typename scalar_t, int K, int S, int D>
__global__ void __launch_bounds__(kWeightBlock)
    cnnops_depthwise_grad_weight_direct_kernel(const scalar_t* __restrict__ grad_output,
                                               const scalar_t* __restrict__ input,
                                               at::opmath_type<scalar_t>* __restrict__ partials, WeightArgs a) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* sums = reinterpret_cast<acc_t*>(smem_raw);  // K * K * kWeightBlock
  const uint32_t oc = blockIdx.x, slice = blockIdx.y;
  const uint32_t c = a.multiplier.d == 1 ? oc : a.multiplier.div(oc);
  acc_t gw[K * K];
#pragma unroll
  for (int t = 0; t < K * K; ++t) gw[t] = acc_t(0);
  const uint32_t begin = slice * a.per_slice, end = begin + a.per_slice < a.items ? begin + a.per_slice : a.items;
  for (uint32_t item = begin + threadIdx.x; item < end; item += kWeightBlock) {
    const uint32_t image_group = a.out_w.div(item), ow = item - image_group * a.out_w.d;
    const uint32_t n = a.row_groups.div(image_group), group = image_group - n * a.row_groups.d;
    const int oh0 = static_cast<int>(group) * kRows;
    const scalar_t* go = grad_output + n * a.go_sn + oc * a.go_sc + ow * a.go_sw;
    acc_t g[kRows];
#pragma unroll
    for (int i = 0; i < kRows; ++i) g[i] = oh0 + i < a.out_h ? static_cast<acc_t>(go[(oh0 + i) * a.go_sh]) : acc_t(0);
    int col[K];
    tap_columns<K, S, D, 1>(static_cast<int>(ow), a.pad_left, a.in_w, a.in_sw, col);
    walk_windows<scalar_t, K, S, D, 1>(input + n * a.in_sn + c * a.in_sc, oh0, a.out_h, a.pad_top, a.in_h, a.in_sh,
                                       col, [&](int i, int kh, int kw, acc_t x) { gw[kh * K + kw] += x * g[i]; });
  }
  // Block sum of each tap: 16 runs of 8 threads' sums, then the 16 run sums, in order.
  const int tid = threadIdx.x;
#pragma unroll
  for (int t = 0; t < K * K; ++t) sums[t * kWeightBlock + tid] = gw[t];
  __syncthreads();
  constexpr int kRun = 8, kRuns = kWeightBlock / kRun;
  for (int p = tid; p < K * K * kRuns; p += kWeightBlock) {
    acc_t* run = sums + (p / kRuns) * kWeightBlock + (p % kRuns) * kRun;
    acc_t s = run[0];
#pragma unroll
    for (int j = 1; j < kRun; ++j) s += run[j];
    run[0] = s;
  }
  __syncthreads();
  for (int t = tid; t < K * K; t += kWeightBlock) {
    acc_t s = sums[t * kWeightBlock];
    for (int r = 1; r < kRuns; ++r) s += sums[t * kWeightBlock + r * kRun];
    partials[(static_cast<int64_t>(oc) * (K * K) + t) * a.slices + slice] = s;
  }
}

// grad_weight, channels_last: thread (channel vector, kernel row kh, slice of pixels) sums
// the K taps of row kh for VEC channels (16 bytes of them: one aligned load each) over the
// slice's output pixels, walked in memory order with no division per pixel;
// partials[(oc * K * K + tap) * slices + slice], as the NCHW kernel.
struct NhwcWeightArgs {
  FastDivider vectors, out_w, out_h;  // vectors: channel vectors per pixel
  uint32_t total, pixels, per_slice, slices;  // total: threads, vectors * K * slices
  int in_h, in_w, pad_top, pad_left;
  int in_sh, in_sw, go_sh, go_sw;  // strides within an image (32-bit: checked on the host)
  int64_t in_sn, go_sn;
};

template <typename scalar_t, int K, int S, int D>
__global__ void __launch_bounds__(kDirectBlock)
    cnnops_depthwise_grad_weight_nhwc_direct_kernel(const scalar_t* __restrict__ grad_output,
                                                    const scalar_t* __restrict__ input,
                                                    at::opmath_type<scalar_t>* __restrict__ partials,
                                                    NhwcWeightArgs a) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int VEC = 16 / sizeof(scalar_t);
  using Vec = Lanes<scalar_t, VEC>;  // 16 bytes
  const uint32_t idx = blockIdx.x * kDirectBlock + threadIdx.x;
  if (idx >= a.total) return;
  const uint32_t row_slice = a.vectors.div(idx), c0 = (idx - row_slice * a.vectors.d) * VEC;
  const uint32_t slice = row_slice / K, kh = row_slice - slice * K;
  acc_t sum[K][VEC];
#pragma unroll
  for (int kw = 0; kw < K; ++kw)
#pragma unroll
    for (int v = 0; v < VEC; ++v) sum[kw][v] = acc_t(0);
  const uint32_t first = slice * a.per_slice, last = first + a.per_slice < a.pixels ? first + a.per_slice : a.pixels;
  const uint32_t image_row = a.out_w.div(first);
  int ow = static_cast<int>(first - image_row * a.out_w.d);
  uint32_t n = a.out_h.div(image_row);
  int oh = static_cast<int>(image_row - n * a.out_h.d);
  for (uint32_t q = first; q < last; ++q) {
    const int ih = oh * S - a.pad_top + static_cast<int>(kh) * D;
    if (ih >= 0 && ih < a.in_h) {
      const Vec gv = *reinterpret_cast<const Vec*>(grad_output + n * a.go_sn + oh * a.go_sh + ow * a.go_sw + c0);
      const scalar_t* row = input + n * a.in_sn + ih * a.in_sh + c0;
      const int vw0 = ow * S - a.pad_left;
#pragma unroll
      for (int kw = 0; kw < K; ++kw) {
        const int iw = vw0 + kw * D;
        if (iw < 0 || iw >= a.in_w) continue;
        const Vec xv = *reinterpret_cast<const Vec*>(row + iw * a.in_sw);
#pragma unroll
        for (int v = 0; v < VEC; ++v) sum[kw][v] += static_cast<acc_t>(gv.v[v]) * static_cast<acc_t>(xv.v[v]);
      }
    }
    if (++ow == static_cast<int>(a.out_w.d)) {  // the next pixel in memory order
      ow = 0;
      if (++oh == static_cast<int>(a.out_h.d)) oh = 0, ++n;
    }
  }
#pragma unroll
  for (int v = 0; v < VEC; ++v)
#pragma unroll
    for (int kw = 0; kw < K; ++kw)
      partials[(static_cast<int64_t>(c0 + v) * (K * K) + kh * K + kw) * a.slices + slice] = sum[kw][v];
}

// The (K, S, D) every direct kernel is instantiated for (the forward also at spread 2 for
// S = D = 1, the input gradient of a stride-2 convolution): calls f(DirectShape<K, S, D>())
// and returns true, or returns false.
template <int K_, int S_, int D_>
struct DirectShape {
  static constexpr int K = K_, S = S_, D = D_;
};

template <typename F>
bool with_direct_shape(int64_t k, int64_t s, int64_t d, F&& f) {
  switch (k * 100 + s * 10 + d) {  // each checked to be one digit first
    case 311: f(DirectShape<3, 1, 1>()); return true;
    case 321: f(DirectShape<3, 2, 1>()); return true;
    case 312: f(DirectShape<3, 1, 2>()); return true;
    case 511: f(DirectShape<5, 1, 1>()); return true;
    case 521: f(DirectShape<5, 2, 1>()); return true;
    case 512: f(DirectShape<5, 1, 2>()); return true;
    case 711: f(DirectShape<7, 1, 1>()); return true;
    case 721: f(DirectShape<7, 2, 1>()); return true;
    default: return false;
  }
}

bool fits_int32(int64_t v) { return v >= 0 && v <= INT32_MAX; }

// The shapes the direct kernels take: zero padding, a square kernel, equal strides and
// dilations (one digit each), not double, and every coordinate and window offset in 32 bits.
bool direct_geometry(const Conv2dGeometry& g, at::ScalarType dtype) {
  return g.mode == PaddingMode::Zeros && g.kernel_h == g.kernel_w && g.stride_h == g.stride_w &&
         g.dilation_h == g.dilation_w && g.kernel_h <= 9 && g.stride_h <= 9 && g.dilation_h <= 9 &&
         dtype != at::kDouble && fits_int32(g.in_h) && fits_int32(g.in_w) && fits_int32(g.out_h * g.out_w) &&
         fits_int32(g.pad_top) && fits_int32(g.pad_left) &&
         g.out_w * g.stride_w + g.kernel_w * g.dilation_w <= INT32_MAX &&
         (g.out_h + kRows) * g.stride_h + g.kernel_h * g.dilation_h <= INT32_MAX;  // a last group's extra rows
}

// Every offset within a plane of t (h x w of it) fits 32 bits.
bool plane_offsets_fit(const Strides4d& s, int64_t h, int64_t w) {
  return s.h >= 0 && s.w >= 0 && fits_int32((h - 1) * s.h + (w - 1) * s.w);
}

}  // namespace

bool depthwise_forward_direct(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias,
                              at::Tensor& output, const Conv2dGeometry& g, bool flip, int64_t spread_h,
                              int64_t spread_w) {
  if (output.numel() == 0) return true;
  if (!direct_geometry(g, input.scalar_type()) || spread_h != spread_w || spread_h > 9 ||
      !output.is_contiguous())  // NCHW output, planes one after another
    return false;
  const Strides4d in_s = strides4d(input), w_s = strides4d(weight);
  // The real (unspread) input's extent.
  const int64_t real_h = (g.in_h - 1) / spread_h + 1, real_w = (g.in_w - 1) / spread_w + 1;
  const int64_t row_groups = ceil_div(g.out_h, kRows);
  const int64_t planes = g.batch * g.out_channels, total = planes * row_groups * g.out_w;
  // (total below 2^31: blockIdx.x * kDirectBlock + threadIdx.x does not wrap)
  if (!plane_offsets_fit(in_s, real_h, real_w) || total > INT32_MAX) return false;
  DirectArgs a;
  a.out_w = FastDivider(static_cast<uint32_t>(g.out_w));
  a.row_groups = FastDivider(static_cast<uint32_t>(row_groups));
  a.out_channels = FastDivider(static_cast<uint32_t>(g.out_channels));
  a.multiplier = FastDivider(static_cast<uint32_t>(g.out_channels / g.in_channels));
  a.total = static_cast<uint32_t>(total);
  a.in_h = static_cast<int>(g.in_h), a.in_w = static_cast<int>(g.in_w), a.out_h = static_cast<int>(g.out_h);
  a.pad_top = static_cast<int>(g.pad_top), a.pad_left = static_cast<int>(g.pad_left);
  a.in_sh = static_cast<int>(in_s.h), a.in_sw = static_cast<int>(in_s.w), a.out_sh = static_cast<int>(g.out_w);
  a.in_sn = in_s.n, a.in_sc = in_s.c, a.out_plane = g.out_h * g.out_w;
  a.w_so = w_s.n, a.w_sh = w_s.h, a.w_sw = w_s.w;
  bool launched = false;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "depthwise_forward_direct", [&] {
    if constexpr (!std::is_same_v<scalar_t, double>) {  // declined above: no double instantiations
      const unsigned blocks = static_cast<unsigned>(ceil_div(total, kDirectBlock));
      auto launch = [&](auto kernel) {
        kernel<<<blocks, kDirectBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
            input.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
            bias != nullptr ? bias->const_data_ptr<scalar_t>() : nullptr, output.mutable_data_ptr<scalar_t>(), a,
            flip);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        launched = true;
      };
      with_direct_shape(g.kernel_h, g.stride_h, g.dilation_h, [&](auto shape) {
        using Shape = decltype(shape);
        if (spread_h == 1) {
          launch(cnnops_depthwise_forward_direct_kernel<scalar_t, Shape::K, Shape::S, Shape::D, 1>);
        } else if constexpr (Shape::S == 1 && Shape::D == 1) {
          if (spread_h == 2) launch(cnnops_depthwise_forward_direct_kernel<scalar_t, Shape::K, 1, 1, 2>);
        }
      });
    }
  });
  return launched;
}

namespace {

bool grad_weight_partials_nchw(const at::Tensor& grad_output, const at::Tensor& input, const Conv2dGeometry& g,
                               at::Tensor& partials, int64_t& slices) {
  const int64_t row_groups = ceil_div(g.out_h, kRows), items = g.batch * row_groups * g.out_w;
  const Strides4d in_s = strides4d(input), go_s = strides4d(grad_output);
  // (items below 2^31: a slice's end and a thread's last step do not wrap)
  if (items == 0 || items > INT32_MAX || g.out_channels > INT32_MAX || !plane_offsets_fit(in_s, g.in_h, g.in_w) ||
      !plane_offsets_fit(go_s, g.out_h, g.out_w))
    return false;
  // About 4 items (4 x kRows outputs) per thread, enough blocks to fill the GPU with a few
  // hundred channels, at most 64 slices; fixed by the shapes (reproducible).
  const int64_t want = std::min<int64_t>({ceil_div(items, 4 * kWeightBlock),
                                          std::max<int64_t>(1, 2048 / g.out_channels), 64});
  const int64_t per_slice = ceil_div(items, want);
  slices = ceil_div(items, per_slice);
  WeightArgs a;
  a.out_w = FastDivider(static_cast<uint32_t>(g.out_w));
  a.row_groups = FastDivider(static_cast<uint32_t>(row_groups));
  a.multiplier = FastDivider(static_cast<uint32_t>(g.out_channels / g.in_channels));
  a.items = static_cast<uint32_t>(items), a.per_slice = static_cast<uint32_t>(per_slice);
  a.slices = static_cast<uint32_t>(slices);
  a.in_h = static_cast<int>(g.in_h), a.in_w = static_cast<int>(g.in_w), a.out_h = static_cast<int>(g.out_h);
  a.pad_top = static_cast<int>(g.pad_top), a.pad_left = static_cast<int>(g.pad_left);
  a.in_sh = static_cast<int>(in_s.h), a.in_sw = static_cast<int>(in_s.w);
  a.go_sh = static_cast<int>(go_s.h), a.go_sw = static_cast<int>(go_s.w);
  a.in_sn = in_s.n, a.in_sc = in_s.c, a.go_sn = go_s.n, a.go_sc = go_s.c;
  bool launched = false;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "depthwise_grad_weight_direct", [&] {
    if constexpr (!std::is_same_v<scalar_t, double>) {  // declined above: no double instantiations
      using acc_t = at::opmath_type<scalar_t>;
      launched = with_direct_shape(g.kernel_h, g.stride_h, g.dilation_h, [&](auto shape) {
        using Shape = decltype(shape);
        partials = at::empty({g.out_channels * g.kernel_h * g.kernel_w * slices},
                             input.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
        const size_t smem = static_cast<size_t>(g.kernel_h * g.kernel_w * kWeightBlock) * sizeof(acc_t);
        cnnops_depthwise_grad_weight_direct_kernel<scalar_t, Shape::K, Shape::S, Shape::D>
            <<<dim3(static_cast<unsigned>(g.out_channels), static_cast<unsigned>(slices)), kWeightBlock, smem,
               at::cuda::getCurrentCUDAStream()>>>(grad_output.const_data_ptr<scalar_t>(),
                                                   input.const_data_ptr<scalar_t>(), partials.mutable_data_ptr<acc_t>(),
                                                   a);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
  });
  return launched;
}

bool grad_weight_partials_nhwc(const at::Tensor& grad_output, const at::Tensor& input, const Conv2dGeometry& g,
                               at::Tensor& partials, int64_t& slices) {
  const int64_t vec = 16 / input.element_size(), pixels = g.batch * g.out_h * g.out_w;
  const Strides4d in_s = strides4d(input), go_s = strides4d(grad_output);
  // Offsets within an image in 32 bits; pixels below 2^31 (no slice end wraps).
  auto image_fits = [](const Strides4d& s, int64_t h, int64_t w, int64_t c) {
    return s.h >= 0 && s.w >= 0 && fits_int32((h - 1) * s.h + (w - 1) * s.w + c);
  };
  if (pixels == 0 || pixels > INT32_MAX || g.out_channels != g.in_channels || g.out_channels % vec != 0 ||
      !channel_vectors_fit(input, vec) || !channel_vectors_fit(grad_output, vec) ||
      !image_fits(in_s, g.in_h, g.in_w, g.in_channels) || !image_fits(go_s, g.out_h, g.out_w, g.out_channels))
    return false;
  const int64_t vectors = g.out_channels / vec, per_pass = vectors * g.kernel_h;
  // About 64K threads when the pixels allow (at least 16 pixels each), at most 256 slices;
  // fixed by the shapes (reproducible).
  const int64_t want = std::max<int64_t>(1, std::min<int64_t>({ceil_div(65536, per_pass), pixels / 16, 256}));
  const int64_t per_slice = ceil_div(pixels, want);
  slices = ceil_div(pixels, per_slice);
  const int64_t total = per_pass * slices;
  if (total > INT32_MAX) return false;
  NhwcWeightArgs a;
  a.vectors = FastDivider(static_cast<uint32_t>(vectors));
  a.out_w = FastDivider(static_cast<uint32_t>(g.out_w)), a.out_h = FastDivider(static_cast<uint32_t>(g.out_h));
  a.total = static_cast<uint32_t>(total), a.pixels = static_cast<uint32_t>(pixels);
  a.per_slice = static_cast<uint32_t>(per_slice), a.slices = static_cast<uint32_t>(slices);
  a.in_h = static_cast<int>(g.in_h), a.in_w = static_cast<int>(g.in_w);
  a.pad_top = static_cast<int>(g.pad_top), a.pad_left = static_cast<int>(g.pad_left);
  a.in_sh = static_cast<int>(in_s.h), a.in_sw = static_cast<int>(in_s.w);
  a.go_sh = static_cast<int>(go_s.h), a.go_sw = static_cast<int>(go_s.w);
  a.in_sn = in_s.n, a.go_sn = go_s.n;
  bool launched = false;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "depthwise_grad_weight_direct", [&] {
    if constexpr (!std::is_same_v<scalar_t, double>) {  // declined by the caller: no double instantiations
      using acc_t = at::opmath_type<scalar_t>;
      launched = with_direct_shape(g.kernel_h, g.stride_h, g.dilation_h, [&](auto shape) {
        using Shape = decltype(shape);
        partials = at::empty({g.out_channels * g.kernel_h * g.kernel_w * slices},
                             input.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
        const unsigned blocks = static_cast<unsigned>(ceil_div(total, kDirectBlock));
        cnnops_depthwise_grad_weight_nhwc_direct_kernel<scalar_t, Shape::K, Shape::S, Shape::D>
            <<<blocks, kDirectBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
                grad_output.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(),
                partials.mutable_data_ptr<acc_t>(), a);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
  });
  return launched;
}

}  // namespace

// channels_last (both tensors) goes to the channel-vector kernel, NCHW to the column one.
bool depthwise_grad_weight_partials_direct(const at::Tensor& grad_output, const at::Tensor& input,
                                           const Conv2dGeometry& g, at::Tensor& partials, int64_t& slices) {
  if (!direct_geometry(g, input.scalar_type())) return false;
  const bool in_cl = input.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  const bool go_cl = grad_output.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  if (in_cl && go_cl) return grad_weight_partials_nhwc(grad_output, input, g, partials, slices);
  if (!in_cl && !go_cl) return grad_weight_partials_nchw(grad_output, input, g, partials, slices);
  return false;
}

}  // namespace cuda
}  // namespace cnnops
