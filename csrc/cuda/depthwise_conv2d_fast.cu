// Depthwise convolution on CUDA, the tiled kernels (the default path for every kernel but 3x3;
// first run on the H100 2026-11-27, again on the H200 2026-11-29: every CUDA test passed,
// compute-sanitizer clean). The simple kernels of
// depthwise_conv2d.cu take one output (or one tap of one channel, for grad_weight) per
// thread or block and recompute 64-bit tensor offsets for every weight they read; on the
// H100 they ran at 0.1-0.6x of torch, these at 0.3-1.4x (benchmarks/results). Here:
//  - NCHW forward: a block stages, in shared memory, the input window of one output tile
//    for one or several planes (several when planes are small: 8 threads across a 7-wide
//    plane), and that plane's weights; each thread computes kRowsPerThread outputs down a
//    column, so that each weight it reads feeds kRowsPerThread multiply-adds.
//  - channels_last forward: a thread computes kColsPerThread consecutive output pixels of
//    one (or, half2-style, two) channels; a warp covers consecutive channels, so every
//    load is coalesced; the weight is read from a (tap, channel) copy for the same reason.
//  - grad_input with zero padding and multiplier 1: the forward kernels above with the
//    kernel flipped, over grad_output spread out by the stride (zeros in between, made while
//    reading it; common/depthwise_index.h, shared with the CPU, which does stride 1).
//  - grad_weight, NCHW: a block takes one output channel and a slice of (image, band of
//    output rows); it stages the band of grad_output and the input rows it meets, then each
//    thread sums one tap over a share of the band's pixels. channels_last: a thread sums up
//    to 16 taps of one kernel row over a slice of pixels, a warp over consecutive channels.
//    Partial sums are combined in a fixed order (per block, then per slice in
//    depthwise_conv2d.cu): deterministic.
// Index math: common/conv_index.h (source_index), the same the CPU tests check.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <cstdint>

#include "common/conv_checks.h"
#include "common/depthwise_index.h"
#include "cuda/depthwise_conv2d_fast.cuh"
#include "cuda/experimental.h"

namespace cnnops {
namespace cuda {
namespace {

constexpr int kBlock = 256;
constexpr int kRowsPerThread = 4;   // NCHW forward: outputs per thread, down a column
constexpr int kColsPerThread = 4;   // channels_last forward: outputs per thread, along a row
constexpr int64_t kSmemBytes = 48 * 1024;  // without opting in to more per block
constexpr int kMaxTapsPerThread = 4;  // grad_weight: kernels of up to 4 * kBlock taps (32 x 32)


// ---------------------------------------------------------------- NCHW forward

// Block shape and shared memory of the NCHW forward. A block is (cols, rows, planes)
// threads: `cols` output columns, rows * kRowsPerThread output rows, `planes` planes with
// their own windows. Tiles split a plane evenly: a 33 x 33 output takes 2 x 1 tiles of
// 17 columns and 36 rows, where fixed 32 x 32 tiles took 2 x 2 and staged a window for each
// (about a quarter of their threads had an output; the H100 ran that case at 0.33x of torch).
struct PlaneTiles {
  int cols, rows, planes;
  int out_rows;          // rows * kRowsPerThread
  int win_rows, win_cols;  // the input window one tile reads
  int64_t tiles_h, tiles_w, groups;  // tiles per plane down and across; groups of `planes` planes
  int64_t smem_bytes;
};

int64_t plane_window_bytes(const Conv2dGeometry& g, int cols, int rows, int64_t acc_size, int& win_rows,
                           int& win_cols) {
  win_rows = static_cast<int>((rows * kRowsPerThread - 1) * g.stride_h + (g.kernel_h - 1) * g.dilation_h + 1);
  win_cols = static_cast<int>((cols - 1) * g.stride_w + (g.kernel_w - 1) * g.dilation_w + 1);
  return (static_cast<int64_t>(win_rows) * win_cols + g.kernel_h * g.kernel_w) * acc_size;
}

// False where even one plane's window of one thread row does not fit in shared memory.
bool plan_plane_tiles(const Conv2dGeometry& g, int64_t acc_size, PlaneTiles& p) {
  // Guards the int arithmetic below (windows of at most a few thousand elements fit anyway).
  if (g.kernel_h * g.dilation_h > 4096 || g.kernel_w * g.dilation_w > 4096 || g.stride_h > 4096 ||
      g.stride_w > 4096)
    return false;
  // Columns: the fewest tiles of at most 32, split evenly; at least 8 (a narrow plane then
  // shares its warps with other planes rather than leaving lanes idle).
  p.tiles_w = ceil_div(g.out_w, 32);
  p.cols = static_cast<int>(std::max<int64_t>(8, ceil_div(g.out_w, p.tiles_w)));
  // Rows of threads (kRowsPerThread outputs each): the fewest tiles that fit the block and
  // shared memory, split evenly.
  const int64_t row_groups = ceil_div(g.out_h, kRowsPerThread);
  int64_t per_plane = 0;
  for (int max_rows = kBlock / p.cols;; max_rows /= 2) {
    p.tiles_h = ceil_div(row_groups, max_rows);
    p.rows = static_cast<int>(ceil_div(row_groups, p.tiles_h));
    per_plane = plane_window_bytes(g, p.cols, p.rows, acc_size, p.win_rows, p.win_cols);
    if (per_plane <= kSmemBytes || max_rows == 1) break;
  }
  if (per_plane > kSmemBytes) return false;
  const int64_t planes_total = g.batch * g.out_channels;
  p.planes = static_cast<int>(std::min<int64_t>({kBlock / (p.cols * p.rows), kSmemBytes / per_plane, planes_total}));
  p.out_rows = p.rows * kRowsPerThread;
  p.groups = ceil_div(planes_total, p.planes);
  p.smem_bytes = per_plane * p.planes;
  return p.groups * p.tiles_h * p.tiles_w <= INT32_MAX && p.groups * p.planes <= UINT32_MAX;  // 32-bit indices
}

// Tap (kh, kw) of the kernel as the forward uses it: flipped for grad_input.
__device__ __forceinline__ int64_t weight_tap_offset(const Strides4d& w_s, const Conv2dGeometry& g, int64_t oc,
                                                     int64_t kh, int64_t kw, bool flip) {
  return flip ? w_s.offset(oc, 0, g.kernel_h - 1 - kh, g.kernel_w - 1 - kw) : w_s.offset(oc, 0, kh, kw);
}

// Index i of a spread-out grad_output (spread - 1 zeros between neighbours; grad_input as a
// forward, common/depthwise_index.h) in the real one, or -1 for a zero (or for i = -1).
// 32-bit arithmetic (the host declines spread sizes past INT32_MAX): a 64-bit division is a
// call, and its registers spilled.
__device__ __forceinline__ int64_t unspread(int64_t i, int64_t spread) {
  if (spread == 1 || i < 0) return i;
  const uint32_t u = static_cast<uint32_t>(i), s = static_cast<uint32_t>(spread);
  return u % s != 0 ? -1 : static_cast<int64_t>(u / s);
}

// Threads lane, lane + lanes, ... stage rows x cols of plane (n, c) of the padded input,
// from virtual (padded) coordinates (vh0, vw0), into win in the accumulate type. Windows
// overhang the output: past the padded extent no real output reads (source_index is only
// defined inside it), and those elements are zeros. spread_h/w: see unspread (1 for a
// plain input). Staging is most of these kernels' work (at stride 2 about four elements per
// output), so a thread divides once and then steps its (row, column) by lanes, and reads
// from the plane's base pointer.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void stage_window(acc_t* win, int rows, int cols, const scalar_t* input,
                                             const Strides4d& in_s, const Conv2dGeometry& g, int64_t n, int64_t c,
                                             int64_t vh0, int64_t vw0, int lane, int lanes, int64_t spread_h = 1,
                                             int64_t spread_w = 1) {
  const scalar_t* plane = input + n * in_s.n + c * in_s.c;
  const int64_t last_h = g.in_h - 1 + g.pad_bottom, last_w = g.in_w - 1 + g.pad_right;
  const int row_step = lanes / cols, col_step = lanes - row_step * cols;
  for (int r = lane / cols, col = lane - r * cols; r < rows;) {
    const int64_t vh = vh0 + r, vw = vw0 + col;
    const int64_t ih = vh <= last_h ? unspread(source_index(vh, g.in_h, g.mode), spread_h) : -1;
    const int64_t iw = vw <= last_w ? unspread(source_index(vw, g.in_w, g.mode), spread_w) : -1;
    win[r * cols + col] = (ih < 0 || iw < 0) ? acc_t(0) : static_cast<acc_t>(plane[ih * in_s.h + iw * in_s.w]);
    r += row_step;
    col += col_step;
    if (col >= cols) {
      col -= cols;
      ++r;
    }
  }
}

// (kBlock, 6): 40 registers, no spills with nvcc 13 for sm_90; (kBlock) alone gave fp32 32 registers
// and a spill, (kBlock, 1) 79 registers.
template <typename scalar_t>
__global__ void __launch_bounds__(kBlock, 6)
    cnnops_depthwise_forward_planes_kernel(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                                           scalar_t* output, Strides4d in_s, Strides4d w_s, Strides4d out_s,
                                           Conv2dGeometry g, PlaneTiles p, bool flip, int64_t spread_h,
                                           int64_t spread_w) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int taps = static_cast<int>(g.kernel_h * g.kernel_w);
  const int window = p.win_rows * p.win_cols;
  acc_t* win = reinterpret_cast<acc_t*>(smem_raw) + threadIdx.z * (window + taps);
  acc_t* wts = win + window;

  // 32-bit divisions (plan_plane_tiles keeps tiles and planes below 2^32): a 64-bit one is
  // a software routine of dozens of instructions, as many as a 3x3 thread's arithmetic.
  const uint32_t tiles = static_cast<uint32_t>(p.tiles_h * p.tiles_w), tiles_w = static_cast<uint32_t>(p.tiles_w);
  const uint32_t out_channels = static_cast<uint32_t>(g.out_channels);
  const uint32_t t = blockIdx.x % tiles;
  const uint32_t plane = (blockIdx.x / tiles) * static_cast<uint32_t>(p.planes) + threadIdx.z;
  const bool active = plane < static_cast<uint32_t>(g.batch * g.out_channels);  // no return before the barrier
  const uint32_t n = plane / out_channels, oc = plane % out_channels;
  const uint32_t c = oc / (out_channels / static_cast<uint32_t>(g.in_channels));
  const int64_t oh0 = static_cast<int64_t>(t / tiles_w) * p.out_rows, ow0 = static_cast<int64_t>(t % tiles_w) * p.cols;
  // Virtual (padded) coordinates of the window's first row and column.
  const int64_t vh0 = oh0 * g.stride_h - g.pad_top, vw0 = ow0 * g.stride_w - g.pad_left;
  const int lane = threadIdx.y * blockDim.x + threadIdx.x, lanes = blockDim.x * blockDim.y;
  if (active) {
    stage_window(win, p.win_rows, p.win_cols, input, in_s, g, n, c, vh0, vw0, lane, lanes, spread_h, spread_w);
    for (int i = lane; i < taps; i += lanes)
      wts[i] = static_cast<acc_t>(weight[weight_tap_offset(w_s, g, oc, i / g.kernel_w, i % g.kernel_w, flip)]);
  }
  __syncthreads();
  const int64_t ow = ow0 + threadIdx.x;
  if (!active || ow >= g.out_w) return;
  const int row0 = threadIdx.y * kRowsPerThread;
  const int sh = static_cast<int>(g.stride_h), sw = static_cast<int>(g.stride_w);
  const int dh = static_cast<int>(g.dilation_h), dw = static_cast<int>(g.dilation_w);
  const int kh_n = static_cast<int>(g.kernel_h), kw_n = static_cast<int>(g.kernel_w);
  const int row_step = sh * p.win_cols;  // window elements between consecutive output rows
  acc_t acc[kRowsPerThread];
  const acc_t b = bias != nullptr ? static_cast<acc_t>(bias[oc]) : acc_t(0);
#pragma unroll
  for (int r = 0; r < kRowsPerThread; ++r) acc[r] = b;
  for (int kh = 0; kh < kh_n; ++kh) {
    const acc_t* src = win + (row0 * sh + kh * dh) * p.win_cols + threadIdx.x * sw;
    const acc_t* wrow = wts + kh * kw_n;
    for (int kw = 0; kw < kw_n; ++kw) {
      const acc_t w = wrow[kw];
      const acc_t* x = src + kw * dw;
#pragma unroll
      for (int r = 0; r < kRowsPerThread; ++r) acc[r] += x[r * row_step] * w;
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerThread; ++r) {
    const int64_t oh = oh0 + row0 + r;
    if (oh < g.out_h) output[out_s.offset(n, oc, oh, ow)] = static_cast<scalar_t>(acc[r]);
  }
}

// ---------------------------------------------------------------- channels_last forward

// Thread (n, oh, column group, channel group), channel group fastest: a warp reads
// consecutive channels of the same pixel. wt: the weight as (tap, output channel),
// already flipped where needed. VEC > 1 needs multiplier 1, unit channel strides, and
// channel counts, strides and addresses that are multiples of VEC (checked by the caller):
// VEC 2, or 16 bytes (8 half or bfloat16, 4 float) where the direct kernels go first.
// (__launch_bounds__ with a minimum of 1 block per SM: with the bound alone, nvcc 13's
// ptxas kept it to 64 registers and spilled 16-32 bytes.)
template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kBlock, 1)
    cnnops_depthwise_forward_nhwc_kernel(const scalar_t* input, const scalar_t* wt, const scalar_t* bias,
                                         scalar_t* output, Strides4d in_s, Strides4d out_s, Conv2dGeometry g,
                                         int64_t col_groups, int64_t total, int64_t spread_h, int64_t spread_w) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  // 32-bit divisions (the host keeps total below 2^32; see the planes kernel).
  const uint32_t channel_groups = static_cast<uint32_t>(g.out_channels) / VEC;
  const uint32_t cols = static_cast<uint32_t>(col_groups), out_h = static_cast<uint32_t>(g.out_h);
  uint32_t rest = static_cast<uint32_t>(idx);
  const int64_t oc0 = static_cast<int64_t>(rest % channel_groups) * VEC;
  rest /= channel_groups;
  const int64_t ow0 = static_cast<int64_t>(rest % cols) * kColsPerThread;
  rest /= cols;
  const int64_t oh = rest % out_h, n = rest / out_h;
  const uint32_t multiplier = static_cast<uint32_t>(g.out_channels) / static_cast<uint32_t>(g.in_channels);
  const int64_t c0 = static_cast<uint32_t>(oc0) / multiplier;
  acc_t acc[kColsPerThread][VEC];
#pragma unroll
  for (int v = 0; v < VEC; ++v) {
    const acc_t b = bias != nullptr ? static_cast<acc_t>(bias[oc0 + v]) : acc_t(0);
#pragma unroll
    for (int j = 0; j < kColsPerThread; ++j) acc[j][v] = b;
  }
  for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
    const int64_t ih =
        unspread(source_index(oh * g.stride_h - g.pad_top + kh * g.dilation_h, g.in_h, g.mode), spread_h);
    if (ih < 0) continue;
    const scalar_t* in_row = input + n * in_s.n + ih * in_s.h;
    for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
      const Lanes<scalar_t, VEC> wv =
          *reinterpret_cast<const Lanes<scalar_t, VEC>*>(wt + (kh * g.kernel_w + kw) * g.out_channels + oc0);
#pragma unroll
      for (int j = 0; j < kColsPerThread; ++j) {
        const int64_t ow = ow0 + j;
        if (ow >= g.out_w) break;
        const int64_t iw =
            unspread(source_index(ow * g.stride_w - g.pad_left + kw * g.dilation_w, g.in_w, g.mode), spread_w);
        if (iw < 0) continue;
        if (VEC == 1) {
          acc[j][0] += static_cast<acc_t>(in_row[c0 * in_s.c + iw * in_s.w]) * static_cast<acc_t>(wv.v[0]);
        } else {
          const Lanes<scalar_t, VEC> xv = *reinterpret_cast<const Lanes<scalar_t, VEC>*>(in_row + c0 + iw * in_s.w);
#pragma unroll
          for (int v = 0; v < VEC; ++v) acc[j][v] += static_cast<acc_t>(xv.v[v]) * static_cast<acc_t>(wv.v[v]);
        }
      }
    }
  }
#pragma unroll
  for (int j = 0; j < kColsPerThread; ++j) {
    const int64_t ow = ow0 + j;
    if (ow >= g.out_w) break;
    scalar_t* dst = output + out_s.offset(n, oc0, oh, ow);
    if (VEC == 1) {
      *dst = static_cast<scalar_t>(acc[j][0]);
    } else {
      Lanes<scalar_t, VEC> ov;
#pragma unroll
      for (int v = 0; v < VEC; ++v) ov.v[v] = static_cast<scalar_t>(acc[j][v]);
      *reinterpret_cast<Lanes<scalar_t, VEC>*>(dst) = ov;
    }
  }
}

// wt[tap][oc] = weight[oc][0][kh][kw], or at (K_h - 1 - kh, K_w - 1 - kw) for grad_input
// (`flip`): the channels_last kernel's weight, read as channel vectors. One launch, where
// at::flip and copy_ take two allocations, two launches and their TensorIterator set-up on
// the host, in a forward that is host-bound at batch 8 (H200: about 0.045 ms a call at every
// 3x3 shape). Opt-in (CNNOPS_EXPERIMENTAL=1) until a GPU run has tested it.
template <typename scalar_t>
__global__ void __launch_bounds__(kBlock)
    cnnops_depthwise_weight_by_tap_kernel(const scalar_t* weight, scalar_t* wt, Strides4d w_s, Conv2dGeometry g,
                                          bool flip) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= g.kernel_h * g.kernel_w * g.out_channels) return;
  const int64_t tap = idx / g.out_channels, oc = idx % g.out_channels;
  int64_t kh = tap / g.kernel_w, kw = tap % g.kernel_w;
  if (flip) kh = g.kernel_h - 1 - kh, kw = g.kernel_w - 1 - kw;
  wt[idx] = weight[w_s.offset(oc, 0, kh, kw)];
}

// `vec` channels per thread: multiplier 1, a channel count that is a multiple of vec, and
// input and output read as vectors (channel_vectors_fit; the weight copy is a fresh
// allocation, aligned).
bool channel_vectors_ok(const at::Tensor& input, const at::Tensor& output, const Conv2dGeometry& g, int64_t vec) {
  return g.out_channels == g.in_channels && g.out_channels % vec == 0 && channel_vectors_fit(input, vec) &&
         channel_vectors_fit(output, vec);
}

}  // namespace

bool depthwise_forward_fast(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias,
                            at::Tensor& output, const Conv2dGeometry& g, bool flip, int64_t spread_h,
                            int64_t spread_w, bool wide_vectors) {
  if (output.numel() == 0) return true;
  if ((spread_h > 1 || spread_w > 1) && (g.in_h > INT32_MAX || g.in_w > INT32_MAX)) return false;  // see unspread
  const bool channels_last = output.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  bool launched = false;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "cnnops_depthwise_forward_fast", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* b = bias != nullptr ? bias->const_data_ptr<scalar_t>() : nullptr;
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    if (!channels_last) {
      PlaneTiles p;
      if (!plan_plane_tiles(g, sizeof(acc_t), p)) return;
      const dim3 threads(p.cols, p.rows, p.planes);
      cnnops_depthwise_forward_planes_kernel<scalar_t>
          <<<static_cast<unsigned>(p.groups * p.tiles_h * p.tiles_w), threads, static_cast<size_t>(p.smem_bytes),
             stream>>>(input.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(), b,
                       output.mutable_data_ptr<scalar_t>(), strides4d(input), strides4d(weight), strides4d(output),
                       g, p, flip, spread_h, spread_w);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      launched = true;
      return;
    }
    const int64_t col_groups = ceil_div(g.out_w, kColsPerThread);
    // Channels per thread: 16 bytes of them where asked (wide_vectors) and possible, else
    // pairs, else one.
    constexpr int kWide = 16 / sizeof(scalar_t);
    const int vec = wide_vectors && channel_vectors_ok(input, output, g, kWide) ? kWide
                    : channel_vectors_ok(input, output, g, 2)                   ? 2
                                                                                : 1;
    const int64_t total = g.batch * g.out_h * col_groups * (g.out_channels / vec);
    if (total > UINT32_MAX) return;  // the kernel's 32-bit index math
    // (tap, output channel) copy of the weight, flipped for grad_input: coalesced reads. Always
    // a fresh tensor: for a 1 x 1 kernel the transpose is contiguous already, and a view of the
    // caller's weight could start at an odd element (misaligned channel pairs).
    at::Tensor wt = at::empty({g.kernel_h * g.kernel_w, g.out_channels}, weight.options());
    if (experimental_enabled()) {  // one launch (cnnops_depthwise_weight_by_tap_kernel: not yet run on a GPU)
      cnnops_depthwise_weight_by_tap_kernel<scalar_t>
          <<<static_cast<unsigned>(ceil_div(wt.numel(), kBlock)), kBlock, 0, stream>>>(
              weight.const_data_ptr<scalar_t>(), wt.mutable_data_ptr<scalar_t>(), strides4d(weight), g, flip);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      wt.copy_((flip ? at::flip(weight, {2, 3}) : weight).reshape({g.out_channels, g.kernel_h * g.kernel_w}).t());
    }
    const int64_t blocks = ceil_div(total, kBlock);
    auto launch = [&](auto kernel) {
      kernel<<<static_cast<unsigned>(blocks), kBlock, 0, stream>>>(
          input.const_data_ptr<scalar_t>(), wt.const_data_ptr<scalar_t>(), b, output.mutable_data_ptr<scalar_t>(),
          strides4d(input), strides4d(output), g, col_groups, total, spread_h, spread_w);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if constexpr (kWide > 2) {  // (double: 16 bytes are a pair)
      if (vec == kWide) launch(cnnops_depthwise_forward_nhwc_kernel<scalar_t, kWide>);
    }
    if (vec == 2) launch(cnnops_depthwise_forward_nhwc_kernel<scalar_t, 2>);
    else if (vec == 1) launch(cnnops_depthwise_forward_nhwc_kernel<scalar_t, 1>);
    launched = true;
  });
  return launched;
}

// ---------------------------------------------------------------- grad_weight

namespace {

// A band: `band_rows` output rows of one image, all columns. Its grad_output values and the
// input window they meet (every tap, padding resolved) are staged in shared memory.
struct WeightBands {
  int band_rows, win_rows, win_cols;
  int64_t bands, items, slices, items_per_slice;  // items: (image, band) pairs
  int64_t smem_bytes;
};

bool plan_weight_bands(const Conv2dGeometry& g, int64_t acc_size, WeightBands& p) {
  const int64_t taps = g.kernel_h * g.kernel_w;
  if (taps > kMaxTapsPerThread * kBlock || g.out_w > 4096 || g.kernel_h * g.dilation_h > 4096 ||
      g.kernel_w * g.dilation_w > 4096 || g.stride_h > 4096 || g.stride_w > 4096)
    return false;
  const int64_t win_cols = (g.out_w - 1) * g.stride_w + (g.kernel_w - 1) * g.dilation_w + 1;
  int64_t bytes = 0;
  for (p.band_rows = static_cast<int>(std::min<int64_t>(8, g.out_h));; p.band_rows /= 2) {
    const int64_t win_rows = (p.band_rows - 1) * g.stride_h + (g.kernel_h - 1) * g.dilation_h + 1;
    bytes = (p.band_rows * g.out_w + win_rows * win_cols + kBlock) * acc_size;
    p.win_rows = static_cast<int>(win_rows);
    if (bytes <= kSmemBytes || p.band_rows == 1) break;
  }
  if (bytes > kSmemBytes) return false;
  p.win_cols = static_cast<int>(win_cols);
  p.smem_bytes = bytes;
  p.bands = ceil_div(g.out_h, p.band_rows);
  p.items = g.batch * p.bands;
  // Enough blocks to fill the GPU with a few hundred channels; fixed by the shapes (reproducible).
  p.slices = std::min<int64_t>(p.items, 64);
  p.items_per_slice = ceil_div(p.items, p.slices);
  p.slices = ceil_div(p.items, p.items_per_slice);
  return g.out_channels * p.slices <= INT32_MAX;
}

// Block (output channel oc, slice): partials[(oc * taps + tap) * slices + slice] = the sum
// over the slice's pixels of grad_output(n, oc, oh, ow) * input at tap (kh, kw).
// Threads: with taps <= kBlock, `groups` threads per tap share the pixels (thread t takes
// tap t % taps, group t / taps); otherwise each thread takes taps t, t + kBlock, ...
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kBlock)
    cnnops_depthwise_grad_weight_bands_kernel(const scalar_t* grad_output, const scalar_t* input, acc_t* partials,
                                              Strides4d go_s, Strides4d in_s, Conv2dGeometry g, WeightBands p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* go_band = reinterpret_cast<acc_t*>(smem_raw);
  acc_t* win = go_band + p.band_rows * g.out_w;
  acc_t* red = win + p.win_rows * p.win_cols;
  const int taps = static_cast<int>(g.kernel_h * g.kernel_w);
  const int out_w = static_cast<int>(g.out_w);
  const int groups = taps <= kBlock ? kBlock / taps : 1;
  const int tid = threadIdx.x;
  const bool shared_taps = taps <= kBlock;
  const int group = shared_taps ? tid / taps : 0;
  const int64_t oc = blockIdx.x / p.slices, slice = blockIdx.x % p.slices;
  const int64_t c = oc / (g.out_channels / g.in_channels);
  const int sh = static_cast<int>(g.stride_h), sw = static_cast<int>(g.stride_w);
  const int dh = static_cast<int>(g.dilation_h), dw = static_cast<int>(g.dilation_w);
  acc_t sum[kMaxTapsPerThread];
  int tap_off[kMaxTapsPerThread];  // window offset of each of the thread's taps
#pragma unroll
  for (int s = 0; s < kMaxTapsPerThread; ++s) {
    sum[s] = acc_t(0);
    const int tap = shared_taps ? tid % taps : tid + s * kBlock;
    tap_off[s] = (tap / static_cast<int>(g.kernel_w)) * dh * p.win_cols + (tap % static_cast<int>(g.kernel_w)) * dw;
  }
  const bool works = shared_taps ? group < groups : tid < taps;
  const int64_t first = slice * p.items_per_slice, last = std::min<int64_t>(first + p.items_per_slice, p.items);
  for (int64_t item = first; item < last; ++item) {
    const int64_t n = item / p.bands, oh0 = (item % p.bands) * p.band_rows;
    const int rows = static_cast<int>(std::min<int64_t>(p.band_rows, g.out_h - oh0));
    __syncthreads();  // the previous item's reads are done
    for (int i = tid; i < rows * out_w; i += kBlock)
      go_band[i] = static_cast<acc_t>(grad_output[go_s.offset(n, oc, oh0 + i / out_w, i % out_w)]);
    const int win_rows = (rows - 1) * sh + static_cast<int>(g.kernel_h - 1) * dh + 1;
    stage_window(win, win_rows, p.win_cols, input, in_s, g, n, c, oh0 * g.stride_h - g.pad_top, -g.pad_left, tid,
                 kBlock);
    __syncthreads();
    if (!works) continue;
    const int pixels = rows * out_w;
    // Pixel q = (row r, column col) of the band; r and col advance without a division.
    const int step = shared_taps ? groups : 1, step_r = step / out_w, step_c = step - step_r * out_w;
    int r = (shared_taps ? group : 0) / out_w, col = (shared_taps ? group : 0) - r * out_w;
    for (int q = shared_taps ? group : 0; q < pixels; q += step) {
      const acc_t gv = go_band[q];
      const acc_t* base = win + r * sh * p.win_cols + col * sw;
      if (shared_taps) {
        sum[0] += gv * base[tap_off[0]];
      } else {
#pragma unroll
        for (int s = 0; s < kMaxTapsPerThread; ++s)
          if (tid + s * kBlock < taps) sum[s] += gv * base[tap_off[s]];
      }
      r += step_r, col += step_c;
      if (col >= out_w) col -= out_w, ++r;
    }
  }
  const int64_t taps64 = taps;
  if (!shared_taps) {
#pragma unroll
    for (int s = 0; s < kMaxTapsPerThread; ++s)
      if (tid + s * kBlock < taps) partials[(oc * taps64 + tid + s * kBlock) * p.slices + slice] = sum[s];
    return;
  }
  // The groups' sums of each tap, added in group order.
  __syncthreads();
  red[tid] = works ? sum[0] : acc_t(0);
  __syncthreads();
  if (tid < taps) {
    acc_t total = 0;
    for (int k = 0; k < groups; ++k) total += red[k * taps + tid];
    partials[(oc * taps64 + tid) * p.slices + slice] = total;
  }
}

// channels_last: thread (output channel oc, kernel row kh, run of up to kTapsPerRun taps
// of that row, slice of pixels), output channel fastest, so that a warp's loads of
// grad_output and input are consecutive channels of one pixel (the band kernel above would
// stage them one channel per 32-byte sector). Each thread keeps its taps' sums in
// registers; partials[(oc * taps + tap) * slices + slice] as above.
constexpr int kTapsPerRun = 16;

struct WeightRuns {
  int64_t runs_per_row, slices, slice_len, total;  // total threads
};

bool plan_weight_runs(const Conv2dGeometry& g, WeightRuns& p) {
  const int64_t pixels = g.batch * g.out_h * g.out_w;
  p.runs_per_row = ceil_div(g.kernel_w, kTapsPerRun);
  const int64_t per_slice = g.out_channels * g.kernel_h * p.runs_per_row;
  // About 270K threads (132 SMs x 2048) when the pixels allow; fixed by the shapes (reproducible).
  p.slices = std::max<int64_t>(1, std::min<int64_t>({ceil_div(132 * 2048, per_slice), 1024, pixels}));
  p.slice_len = ceil_div(pixels, p.slices);
  p.slices = ceil_div(pixels, p.slice_len);
  p.total = per_slice * p.slices;
  return ceil_div(p.total, kBlock) <= INT32_MAX;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kBlock)
    cnnops_depthwise_grad_weight_nhwc_kernel(const scalar_t* grad_output, const scalar_t* input, acc_t* partials,
                                             Strides4d go_s, Strides4d in_s, Conv2dGeometry g, WeightRuns p) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= p.total) return;
  const int64_t oc = idx % g.out_channels;
  int64_t rest = idx / g.out_channels;
  const int64_t run = rest % (g.kernel_h * p.runs_per_row), slice = rest / (g.kernel_h * p.runs_per_row);
  const int64_t kh = run / p.runs_per_row, kw0 = (run % p.runs_per_row) * kTapsPerRun;
  const int nkw = static_cast<int>(std::min<int64_t>(kTapsPerRun, g.kernel_w - kw0));
  const int64_t c = oc / (g.out_channels / g.in_channels);
  acc_t sum[kTapsPerRun];
#pragma unroll
  for (int j = 0; j < kTapsPerRun; ++j) sum[j] = acc_t(0);
  const int64_t first = slice * p.slice_len;
  const int64_t last = std::min<int64_t>(first + p.slice_len, g.batch * g.out_h * g.out_w);
  for (int64_t q = first; q < last; ++q) {
    const int64_t ow = q % g.out_w, oh = (q / g.out_w) % g.out_h, n = q / (g.out_w * g.out_h);
    const int64_t ih = source_index(oh * g.stride_h - g.pad_top + kh * g.dilation_h, g.in_h, g.mode);
    if (ih < 0) continue;
    const acc_t gv = static_cast<acc_t>(grad_output[go_s.offset(n, oc, oh, ow)]);
    const scalar_t* row = input + n * in_s.n + c * in_s.c + ih * in_s.h;
    const int64_t vw0 = ow * g.stride_w - g.pad_left + kw0 * g.dilation_w;
#pragma unroll
    for (int j = 0; j < kTapsPerRun; ++j) {
      if (j >= nkw) break;
      const int64_t iw = source_index(vw0 + j * g.dilation_w, g.in_w, g.mode);
      if (iw >= 0) sum[j] += gv * static_cast<acc_t>(row[iw * in_s.w]);
    }
  }
  const int64_t taps = g.kernel_h * g.kernel_w;
#pragma unroll
  for (int j = 0; j < kTapsPerRun; ++j)
    if (j < nkw) partials[(oc * taps + kh * g.kernel_w + kw0 + j) * p.slices + slice] = sum[j];
}

}  // namespace

bool depthwise_grad_weight_partials_fast(const at::Tensor& grad_output, const at::Tensor& input,
                                         const Conv2dGeometry& g, at::Tensor& partials, int64_t& slices) {
  bool launched = false;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "cnnops_depthwise_grad_weight_fast", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (g.batch * g.out_h * g.out_w == 0) return;
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    auto partials_for = [&](int64_t count) {
      partials = at::empty({g.out_channels * g.kernel_h * g.kernel_w * count},
                           input.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
      return partials.mutable_data_ptr<acc_t>();
    };
    if (grad_output.stride(1) == 1 && input.stride(1) == 1 && g.out_channels > 1) {  // channels_last
      WeightRuns r;
      if (!plan_weight_runs(g, r)) return;
      acc_t* out = partials_for(r.slices);
      cnnops_depthwise_grad_weight_nhwc_kernel<scalar_t, acc_t>
          <<<static_cast<unsigned>(ceil_div(r.total, kBlock)), kBlock, 0, stream>>>(
              grad_output.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(), out, strides4d(grad_output),
              strides4d(input), g, r);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      slices = r.slices;
      launched = true;
      return;
    }
    WeightBands p;
    if (!plan_weight_bands(g, sizeof(acc_t), p)) return;
    acc_t* out = partials_for(p.slices);
    cnnops_depthwise_grad_weight_bands_kernel<scalar_t, acc_t>
        <<<static_cast<unsigned>(g.out_channels * p.slices), kBlock, static_cast<size_t>(p.smem_bytes), stream>>>(
            grad_output.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(), out, strides4d(grad_output),
            strides4d(input), g, p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    slices = p.slices;
    launched = true;
  });
  return launched;
}

}  // namespace cuda
}  // namespace cnnops
