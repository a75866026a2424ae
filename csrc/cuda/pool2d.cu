// Pooling on CUDA: max, average, adaptive and global, forward and backward.
//
// Default path, the simplest correct kernels:
//  - forward: one thread per output element, consecutive threads on consecutive output
//    addresses (w fastest for NCHW, c fastest for channels_last); every tensor is read
//    and written through its strides, so any layout works without a copy;
//  - backward: a gather, one thread per input element, visiting the outputs whose window
//    can contain it (pool_output_range / adaptive_output_range, the inverses of the
//    forward windows in common/pool_index.h) in a fixed order. No atomics, so results are
//    deterministic and the deterministic-algorithms flag needs no second path.
// Global pooling (adaptive to 1 x 1) runs the adaptive kernel (one thread per plane) by
// default; with CNNOPS_EXPERIMENTAL=1 an NCHW input with contiguous planes runs a
// one-warp-per-plane reduction (not yet run on a GPU, hence opt-in).
// Accumulation in at::opmath_type (float for half and bfloat16). Indices are 64-bit.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <cstdlib>
#include <type_traits>

#include "common/pool_checks.h"
#include "common/pool_index.h"
#include "cuda/experimental.h"

namespace cnnops {
namespace cuda {
namespace {

constexpr int kThreads = 256;

struct Coord {
  int64_t n, c, h, w;
};

// Linear element index -> (n, c, h, w), in the memory order of the format.
template <typename I>
__device__ __forceinline__ Coord decompose_as(I i, I C, I H, I W, bool channels_last) {
  Coord p;
  if (channels_last) {
    p.c = i % C;
    i /= C;
    p.w = i % W;
    i /= W;
    p.h = i % H;
    p.n = i / H;
  } else {
    p.w = i % W;
    i /= W;
    p.h = i % H;
    i /= H;
    p.c = i % C;
    p.n = i / C;
  }
  return p;
}

// I = int32_t: the host checked that the index fits; unsigned 32-bit division then.
template <typename I>
__device__ __forceinline__ Coord decompose(int64_t i, int64_t C, int64_t H, int64_t W, bool channels_last) {
  using U = std::conditional_t<sizeof(I) == 4, uint32_t, int64_t>;
  return decompose_as<U>(static_cast<U>(i), static_cast<U>(C), static_cast<U>(H), static_cast<U>(W),
                         channels_last);
}

__device__ __forceinline__ int64_t thread_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

// Whether a launch's index and window arithmetic fits 32-bit integers (then the kernels
// are instantiated with I = int32_t: 64-bit integer division is slow on GPUs).
bool fits_int32(const Pool2dGeometry& g, int64_t total) {
  const int64_t lim = INT32_MAX / 4;
  const int64_t span_h = g.in_h + 2 * (g.pad_h + g.dilation_h * g.kernel_h) + g.out_h * g.stride_h;
  const int64_t span_w = g.in_w + 2 * (g.pad_w + g.dilation_w * g.kernel_w) + g.out_w * g.stride_w;
  const int64_t adapt_h = (g.out_h + 1) * (g.in_h + 1), adapt_w = (g.out_w + 1) * (g.in_w + 1);
  return total <= INT32_MAX && span_h < lim && span_w < lim && adapt_h < lim && adapt_w < lim;
}

unsigned blocks_for(const char* op, int64_t total) {
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  TORCH_CHECK(blocks <= INT32_MAX, op, ": tensor too large (", total, " elements)");
  return static_cast<unsigned>(blocks);
}

// ---------------------------------------------------------------- forward kernels

template <typename scalar_t, typename I>
__global__ void __launch_bounds__(kThreads)
    cnnops_max_pool2d_kernel(const scalar_t* __restrict__ input, scalar_t* __restrict__ output,
                             int64_t* __restrict__ indices, Strides4d in_s, Strides4d out_s,
                             Pool2dGeometry g, int64_t total, bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t i = thread_index();
  if (i >= total) return;
  const Coord o = decompose<I>(i, g.channels, g.out_h, g.out_w, channels_last);
  const TapRange th = pool_tap_range<I>(o.h, g.in_h, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h);
  const TapRange tw = pool_tap_range<I>(o.w, g.in_w, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w);
  acc_t m = static_cast<acc_t>(-INFINITY);
  int64_t mi = -1;
  const int64_t off = out_s.offset(o.n, o.c, o.h, o.w);
  const scalar_t* plane = input + o.n * in_s.n + o.c * in_s.c;
  if (th.begin < th.end && tw.begin < tw.end) {
    const int64_t ih0 = o.h * g.stride_h - g.pad_h, iw0 = o.w * g.stride_w - g.pad_w;
    mi = (ih0 + th.begin * g.dilation_h) * g.in_w + iw0 + tw.begin * g.dilation_w;
    for (int64_t kh = th.begin; kh < th.end; ++kh) {
      const int64_t ih = ih0 + kh * g.dilation_h;
      const scalar_t* row = plane + ih * in_s.h;
      for (int64_t kw = tw.begin; kw < tw.end; ++kw) {
        const int64_t iw = iw0 + kw * g.dilation_w;
        const acc_t v = static_cast<acc_t>(row[iw * in_s.w]);
        if (max_pool_replaces(v, m)) {
          m = v;
          mi = ih * g.in_w + iw;
        }
      }
    }
  }
  output[off] = static_cast<scalar_t>(m);
  if (indices != nullptr) indices[off] = mi;
}

template <typename scalar_t, typename I>
__global__ void __launch_bounds__(kThreads)
    cnnops_avg_pool2d_kernel(const scalar_t* __restrict__ input, scalar_t* __restrict__ output,
                             Strides4d in_s, Strides4d out_s, Pool2dGeometry g, int64_t total,
                             bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t i = thread_index();
  if (i >= total) return;
  const Coord o = decompose<I>(i, g.channels, g.out_h, g.out_w, channels_last);
  const AvgWindow wh = avg_pool_window(o.h, g.in_h, g.kernel_h, g.stride_h, g.pad_h);
  const AvgWindow ww = avg_pool_window(o.w, g.in_w, g.kernel_w, g.stride_w, g.pad_w);
  const int64_t off = out_s.offset(o.n, o.c, o.h, o.w);
  const scalar_t* plane = input + o.n * in_s.n + o.c * in_s.c;
  acc_t sum = 0;
  for (int64_t ih = wh.begin; ih < wh.end; ++ih) {
    const scalar_t* row = plane + ih * in_s.h;
    for (int64_t iw = ww.begin; iw < ww.end; ++iw) sum += static_cast<acc_t>(row[iw * in_s.w]);
  }
  const int64_t div = avg_pool_divisor(wh, ww, g.count_include_pad, g.divisor_override);
  output[off] = static_cast<scalar_t>(sum / static_cast<acc_t>(div));
}

template <typename scalar_t, bool IsMax, typename I>
__global__ void __launch_bounds__(kThreads)
    cnnops_adaptive_pool2d_kernel(const scalar_t* __restrict__ input, scalar_t* __restrict__ output,
                                  int64_t* __restrict__ indices, Strides4d in_s, Strides4d out_s,
                                  Pool2dGeometry g, int64_t total, bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t i = thread_index();
  if (i >= total) return;
  const Coord o = decompose<I>(i, g.channels, g.out_h, g.out_w, channels_last);
  const int64_t h0 = adaptive_start<I>(o.h, g.in_h, g.out_h), h1 = adaptive_end<I>(o.h, g.in_h, g.out_h);
  const int64_t w0 = adaptive_start<I>(o.w, g.in_w, g.out_w), w1 = adaptive_end<I>(o.w, g.in_w, g.out_w);
  const int64_t off = out_s.offset(o.n, o.c, o.h, o.w);
  const scalar_t* plane = input + o.n * in_s.n + o.c * in_s.c;
  if (IsMax) {
    acc_t m = static_cast<acc_t>(-INFINITY);
    int64_t mi = h0 * g.in_w + w0;
    for (int64_t ih = h0; ih < h1; ++ih)
      for (int64_t iw = w0; iw < w1; ++iw) {
        const acc_t v = static_cast<acc_t>(plane[ih * in_s.h + iw * in_s.w]);
        if (max_pool_replaces(v, m)) {
          m = v;
          mi = ih * g.in_w + iw;
        }
      }
    output[off] = static_cast<scalar_t>(m);
    indices[off] = mi;
  } else {
    acc_t sum = 0;
    for (int64_t ih = h0; ih < h1; ++ih)
      for (int64_t iw = w0; iw < w1; ++iw) sum += static_cast<acc_t>(plane[ih * in_s.h + iw * in_s.w]);
    output[off] = static_cast<scalar_t>(sum / static_cast<acc_t>((h1 - h0) * (w1 - w0)));
  }
}

// Experimental (CNNOPS_EXPERIMENTAL=1): global pooling of NCHW input whose planes are
// contiguous (stride h == W, stride w == 1), one warp per plane. Lane j scans elements
// j, j + 32, ... in order; the lanes are then merged by shuffles in a fixed tree order
// (sums) or with max_pool_merge, which is order-independent (max).
constexpr int kWarp = 32;

template <typename scalar_t, bool IsMax>
__global__ void __launch_bounds__(kThreads)
    cnnops_global_pool2d_warp_kernel(const scalar_t* __restrict__ input, scalar_t* __restrict__ output,
                                     int64_t* __restrict__ indices, Strides4d in_s, Strides4d out_s,
                                     int64_t channels, int64_t hw, int64_t planes) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t plane = thread_index() / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (plane >= planes) return;  // whole warps leave together: planes are warp-uniform
  const int64_t n = plane / channels, c = plane % channels;
  const scalar_t* p = input + n * in_s.n + c * in_s.c;
  const int64_t off = out_s.offset(n, c, 0, 0);
  if (IsMax) {
    acc_t m = static_cast<acc_t>(-INFINITY);
    int64_t mi = lane < hw ? lane : 0;
    for (int64_t i = lane; i < hw; i += kWarp) {
      const acc_t v = static_cast<acc_t>(p[i]);
      if (max_pool_replaces(v, m)) {
        m = v;
        mi = i;
      }
    }
    for (int delta = kWarp / 2; delta > 0; delta /= 2) {
      const acc_t om = __shfl_down_sync(0xffffffffu, m, delta);
      const int64_t omi = __shfl_down_sync(0xffffffffu, mi, delta);
      if (lane + delta < kWarp) max_pool_merge(m, mi, om, omi);
    }
    if (lane == 0) {
      output[off] = static_cast<scalar_t>(m);
      indices[off] = mi;
    }
  } else {
    acc_t sum = 0;
    for (int64_t i = lane; i < hw; i += kWarp) sum += static_cast<acc_t>(p[i]);
    for (int delta = kWarp / 2; delta > 0; delta /= 2) sum += __shfl_down_sync(0xffffffffu, sum, delta);
    if (lane == 0) output[off] = static_cast<scalar_t>(sum / static_cast<acc_t>(hw));
  }
}

// ---------------------------------------------------------------- backward kernel

enum class Kind { Max, Avg, AdaptiveMax, AdaptiveAvg };

// grad_input(e) = sum over the outputs o whose window contains e of: grad_output(o) where
// indices(o) is e's flat index (max), grad_output(o) / divisor(o) (average).
// (minimum 1 block per SM: without it ptxas aimed at 64 registers and spilled)
template <typename scalar_t, Kind K, typename I>
__global__ void __launch_bounds__(kThreads, 1)
    cnnops_pool2d_backward_kernel(const scalar_t* __restrict__ grad_output,
                                  const int64_t* __restrict__ indices, scalar_t* __restrict__ grad_input,
                                  Strides4d go_s, Strides4d ind_s, Strides4d gi_s, Pool2dGeometry g,
                                  int64_t total, bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kMax = K == Kind::Max || K == Kind::AdaptiveMax;
  constexpr bool kAdaptive = K == Kind::AdaptiveMax || K == Kind::AdaptiveAvg;
  const int64_t i = thread_index();
  if (i >= total) return;
  const Coord e = decompose<I>(i, g.channels, g.in_h, g.in_w, channels_last);
  const OutputRange rh = kAdaptive ? adaptive_output_range<I>(e.h, g.in_h, g.out_h)
                                   : pool_output_range<I>(e.h, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h, g.out_h);
  const OutputRange rw = kAdaptive ? adaptive_output_range<I>(e.w, g.in_w, g.out_w)
                                   : pool_output_range<I>(e.w, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w, g.out_w);
  const int64_t target = e.h * g.in_w + e.w;
  const int64_t gi_off = gi_s.offset(e.n, e.c, e.h, e.w);
  const scalar_t* go_plane = grad_output + e.n * go_s.n + e.c * go_s.c;
  const int64_t* ind_plane = kMax ? indices + e.n * ind_s.n + e.c * ind_s.c : nullptr;
  acc_t acc = 0;
  for (int64_t oh = rh.begin; oh < rh.end; ++oh) {
    // per output row: the row factor of the divisor (average kinds)
    AvgWindow wh{0, 0, 0};
    int64_t kh = 1;
    if (K == Kind::Avg) wh = avg_pool_window(oh, g.in_h, g.kernel_h, g.stride_h, g.pad_h);
    if (K == Kind::AdaptiveAvg) kh = adaptive_end<I>(oh, g.in_h, g.out_h) - adaptive_start<I>(oh, g.in_h, g.out_h);
    for (int64_t ow = rw.begin; ow < rw.end; ++ow) {
      const acc_t go = static_cast<acc_t>(go_plane[oh * go_s.h + ow * go_s.w]);
      if (kMax) {
        if (ind_plane[oh * ind_s.h + ow * ind_s.w] == target) acc += go;
      } else if (K == Kind::Avg) {
        const AvgWindow ww = avg_pool_window(ow, g.in_w, g.kernel_w, g.stride_w, g.pad_w);
        acc += go / static_cast<acc_t>(avg_pool_divisor(wh, ww, g.count_include_pad, g.divisor_override));
      } else {
        const int64_t kw = adaptive_end<I>(ow, g.in_w, g.out_w) - adaptive_start<I>(ow, g.in_w, g.out_w);
        acc += go / static_cast<acc_t>(kh * kw);
      }
    }
  }
  grad_input[gi_off] = static_cast<scalar_t>(acc);
}

// ---------------------------------------------------------------- host wrappers

std::tuple<at::Tensor, at::Tensor> max_pool2d_cuda(const at::Tensor& input, at::IntArrayRef kernel_size,
                                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                                   at::IntArrayRef dilation, bool ceil_mode,
                                                   bool return_indices) {
  const char* op = "cnnops.max_pool2d";
  const Pool2dGeometry g = pool2d_geometry(op, input.sizes(), kernel_size, stride, padding, dilation, ceil_mode);
  check_dtype_supported(op, input, /*half_ok=*/true);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto fmt = pool_memory_format(input);
  const auto opts = input.options().memory_format(fmt);
  at::Tensor output = at::empty({g.batch, g.channels, g.out_h, g.out_w}, opts);
  at::Tensor indices = return_indices
                           ? at::empty({g.batch, g.channels, g.out_h, g.out_w}, opts.dtype(at::kLong))
                           : at::empty({0}, input.options().dtype(at::kLong));
  const int64_t total = output.numel();
  if (total == 0) return {output, indices};
  TORCH_INTERNAL_ASSERT(!return_indices || indices.strides() == output.strides());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "cnnops_max_pool2d_cuda", [&] {
    auto launch = [&](auto index_type) {
      using I = decltype(index_type);
      cnnops_max_pool2d_kernel<scalar_t, I><<<blocks_for(op, total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          input.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(),
          return_indices ? indices.mutable_data_ptr<int64_t>() : nullptr, strides4d(input), strides4d(output), g,
          total, fmt == at::MemoryFormat::ChannelsLast);
    };
    if (fits_int32(g, total)) launch(int32_t{}); else launch(int64_t{});
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {output, indices};
}

at::Tensor avg_pool2d_cuda(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                           at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                           c10::optional<int64_t> divisor_override) {
  const char* op = "cnnops.avg_pool2d";
  const int64_t ones[2] = {1, 1};
  Pool2dGeometry g = pool2d_geometry(op, input.sizes(), kernel_size, stride, padding, at::IntArrayRef(ones, 2),
                                     ceil_mode);
  g.count_include_pad = count_include_pad;
  g.divisor_override = check_divisor_override(op, divisor_override);
  check_dtype_supported(op, input, /*half_ok=*/true);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto fmt = pool_memory_format(input);
  at::Tensor output = at::empty({g.batch, g.channels, g.out_h, g.out_w}, input.options().memory_format(fmt));
  const int64_t total = output.numel();
  if (total == 0) return output;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "cnnops_avg_pool2d_cuda", [&] {
    auto launch = [&](auto index_type) {
      using I = decltype(index_type);
      cnnops_avg_pool2d_kernel<scalar_t, I><<<blocks_for(op, total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          input.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(), strides4d(input),
          strides4d(output), g, total, fmt == at::MemoryFormat::ChannelsLast);
    };
    if (fits_int32(g, total)) launch(int32_t{}); else launch(int64_t{});
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor> adaptive_pool2d_cuda(const char* op, bool is_max, const at::Tensor& input,
                                                        at::IntArrayRef output_size) {
  const Pool2dGeometry g = adaptive_pool2d_geometry(op, input.sizes(), output_size);
  check_dtype_supported(op, input, /*half_ok=*/true);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto fmt = pool_memory_format(input);
  const auto opts = input.options().memory_format(fmt);
  at::Tensor output = at::empty({g.batch, g.channels, g.out_h, g.out_w}, opts);
  at::Tensor indices = is_max ? at::empty({g.batch, g.channels, g.out_h, g.out_w}, opts.dtype(at::kLong))
                              : at::Tensor();
  const int64_t total = output.numel();
  if (total == 0) return {output, indices};
  const bool channels_last = fmt == at::MemoryFormat::ChannelsLast;
  const bool warp_global = g.out_h == 1 && g.out_w == 1 && !channels_last && input.stride(3) == 1 &&
                           input.stride(2) == g.in_w && experimental_enabled();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "cnnops_adaptive_pool2d_cuda", [&] {
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    scalar_t* out = output.mutable_data_ptr<scalar_t>();
    int64_t* idx = is_max ? indices.mutable_data_ptr<int64_t>() : nullptr;
    const auto stream = at::cuda::getCurrentCUDAStream();
    if (warp_global) {
      const int64_t planes = g.batch * g.channels;
      const unsigned blocks = blocks_for(op, planes * kWarp);
      if (is_max) {
        cnnops_global_pool2d_warp_kernel<scalar_t, true><<<blocks, kThreads, 0, stream>>>(
            in, out, idx, strides4d(input), strides4d(output), g.channels, g.in_h * g.in_w, planes);
      } else {
        cnnops_global_pool2d_warp_kernel<scalar_t, false><<<blocks, kThreads, 0, stream>>>(
            in, out, idx, strides4d(input), strides4d(output), g.channels, g.in_h * g.in_w, planes);
      }
    } else {
      auto launch = [&](auto index_type) {
        using I = decltype(index_type);
        if (is_max) {
          cnnops_adaptive_pool2d_kernel<scalar_t, true, I><<<blocks_for(op, total), kThreads, 0, stream>>>(
              in, out, idx, strides4d(input), strides4d(output), g, total, channels_last);
        } else {
          cnnops_adaptive_pool2d_kernel<scalar_t, false, I><<<blocks_for(op, total), kThreads, 0, stream>>>(
              in, out, idx, strides4d(input), strides4d(output), g, total, channels_last);
        }
      };
      if (fits_int32(g, total)) launch(int32_t{}); else launch(int64_t{});
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {output, indices};
}

at::Tensor adaptive_avg_pool2d_cuda(const at::Tensor& input, at::IntArrayRef output_size) {
  return std::get<0>(adaptive_pool2d_cuda("cnnops.adaptive_avg_pool2d", false, input, output_size));
}

std::tuple<at::Tensor, at::Tensor> adaptive_max_pool2d_cuda(const at::Tensor& input, at::IntArrayRef output_size) {
  return adaptive_pool2d_cuda("cnnops.adaptive_max_pool2d", true, input, output_size);
}

template <Kind K>
at::Tensor pool_backward_cuda(const char* op, const at::Tensor& grad_output, const at::Tensor& indices,
                              const Pool2dGeometry& g, at::IntArrayRef input_size, bool channels_last) {
  constexpr bool kMax = K == Kind::Max || K == Kind::AdaptiveMax;
  check_pool_grad_output(op, grad_output, g);
  if (kMax) check_pool_indices(op, grad_output, indices);
  check_dtype_supported(op, grad_output, /*half_ok=*/true);
  const c10::cuda::CUDAGuard guard(grad_output.device());
  at::Tensor grad_input = at::empty(input_size, grad_output.options().memory_format(layout_from_flag(channels_last)));
  const int64_t total = grad_input.numel();
  if (total == 0) return grad_input;
  // (an empty grad_output, adaptive pooling to size 0, gives empty ranges: zeros)
  const Strides4d ind_s = kMax ? strides4d(indices) : Strides4d{0, 0, 0, 0};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(), "cnnops_pool2d_backward_cuda", [&] {
    auto launch = [&](auto index_type) {
      using I = decltype(index_type);
      cnnops_pool2d_backward_kernel<scalar_t, K, I>
          <<<blocks_for(op, total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
              grad_output.const_data_ptr<scalar_t>(), kMax ? indices.const_data_ptr<int64_t>() : nullptr,
              grad_input.mutable_data_ptr<scalar_t>(), strides4d(grad_output), ind_s, strides4d(grad_input), g,
              total, channels_last);
    };
    if (fits_int32(g, total)) launch(int32_t{}); else launch(int64_t{});
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_input;
}

at::Tensor max_pool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& indices,
                                    at::IntArrayRef input_size, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                    at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode,
                                    bool channels_last) {
  const char* op = "cnnops.max_pool2d_backward";
  const Pool2dGeometry g = pool2d_geometry(op, input_size, kernel_size, stride, padding, dilation, ceil_mode);
  return pool_backward_cuda<Kind::Max>(op, grad_output, indices, g, input_size, channels_last);
}

at::Tensor avg_pool2d_backward_cuda(const at::Tensor& grad_output, at::IntArrayRef input_size,
                                    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                    bool ceil_mode, bool count_include_pad, c10::optional<int64_t> divisor_override,
                                    bool channels_last) {
  const char* op = "cnnops.avg_pool2d_backward";
  const int64_t ones[2] = {1, 1};
  Pool2dGeometry g = pool2d_geometry(op, input_size, kernel_size, stride, padding, at::IntArrayRef(ones, 2),
                                     ceil_mode);
  g.count_include_pad = count_include_pad;
  g.divisor_override = check_divisor_override(op, divisor_override);
  return pool_backward_cuda<Kind::Avg>(op, grad_output, at::Tensor(), g, input_size, channels_last);
}

at::Tensor adaptive_avg_pool2d_backward_cuda(const at::Tensor& grad_output, at::IntArrayRef input_size,
                                             bool channels_last) {
  const char* op = "cnnops.adaptive_avg_pool2d_backward";
  const Pool2dGeometry g = adaptive_pool2d_backward_geometry(op, grad_output, input_size);
  return pool_backward_cuda<Kind::AdaptiveAvg>(op, grad_output, at::Tensor(), g, input_size, channels_last);
}

at::Tensor adaptive_max_pool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& indices,
                                             at::IntArrayRef input_size, bool channels_last) {
  const char* op = "cnnops.adaptive_max_pool2d_backward";
  const Pool2dGeometry g = adaptive_pool2d_backward_geometry(op, grad_output, input_size);
  return pool_backward_cuda<Kind::AdaptiveMax>(op, grad_output, indices, g, input_size, channels_last);
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(cnnops, CUDA, m) {
  m.impl("max_pool2d", &cuda::max_pool2d_cuda);
  m.impl("max_pool2d_backward", &cuda::max_pool2d_backward_cuda);
  m.impl("avg_pool2d", &cuda::avg_pool2d_cuda);
  m.impl("avg_pool2d_backward", &cuda::avg_pool2d_backward_cuda);
  m.impl("adaptive_avg_pool2d", &cuda::adaptive_avg_pool2d_cuda);
  m.impl("adaptive_avg_pool2d_backward", &cuda::adaptive_avg_pool2d_backward_cuda);
  m.impl("adaptive_max_pool2d", &cuda::adaptive_max_pool2d_cuda);
  m.impl("adaptive_max_pool2d_backward", &cuda::adaptive_max_pool2d_backward_cuda);
}

}  // namespace cnnops
