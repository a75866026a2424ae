// batch_norm on CUDA: the simple, obviously correct kernels (they have not yet run on a
// GPU; a faster path would come later behind CNNOPS_EXPERIMENTAL=1).
//
//  - statistics, planes layout (NCHW): one block per channel; each thread runs Welford over
//    its strided share of the channel's N * L values, the block merges the threads with
//    Chan's formula (warp shuffles, then the warps through shared memory, a fixed order).
//  - statistics, rows layout (channels_last): two stages. Block (channel tile, chunk): one
//    thread per channel runs Welford over the chunk's rows (consecutive threads read
//    consecutive channels: coalesced) and writes the chunk's (count, mean, M2); then the
//    finalize kernel, one thread per channel, merges the chunks in order, writes mean and
//    invstd and updates the running statistics (factor: momentum, or 1 / num_batches_tracked
//    read on the device).
//  - elementwise forward and backward: one thread per element (grid-stride), the channel
//    from the index; per-channel coefficients from common/batch_norm_math.h.
//  - backward sums: the same two shapes as the statistics (block per channel; chunk
//    partials + an in-order sum per channel).
// No atomics: results are deterministic, so the deterministic-algorithms flag needs no
// second path. Accumulation in at::opmath_type (float for half/bfloat16, double for double);
// parameters and statistics reach the kernels in that type.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "common/batch_norm_ops.h"

namespace cnnops {
namespace cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / kWarp;
constexpr int64_t kMaxChunks = 512;       // rows-layout chunks, at most
constexpr int64_t kChunkElems = 1 << 14;  // and at least this many values per chunk
constexpr int64_t kMaxGrid = 1 << 20;     // grid-stride loops beyond this many blocks

template <typename T>
__device__ __forceinline__ Welford<T> warp_merge(Welford<T> w) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    Welford<T> o;
    o.mean = __shfl_down_sync(0xffffffffu, w.mean, offset);
    o.m2 = __shfl_down_sync(0xffffffffu, w.m2, offset);
    o.count = __shfl_down_sync(0xffffffffu, w.count, offset);
    w = welford_merge(w, o);
  }
  return w;
}

// The block's merged Welford state, valid in thread 0 (blockDim.x == kThreads).
template <typename T>
__device__ __forceinline__ Welford<T> block_merge(Welford<T> w) {
  __shared__ Welford<T> shared[kWarps];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  w = warp_merge(w);
  if (lane == 0) shared[warp] = w;
  __syncthreads();
  if (warp == 0) {
    w = lane < kWarps ? shared[lane] : welford_init<T>();
    w = warp_merge(w);
  }
  return w;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Two block sums in a fixed order, valid in thread 0.
template <typename T>
__device__ __forceinline__ void block_sum2(T& a, T& b) {
  __shared__ T shared[2 * kWarps];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  a = warp_sum(a);
  b = warp_sum(b);
  if (lane == 0) {
    shared[warp] = a;
    shared[kWarps + warp] = b;
  }
  __syncthreads();
  if (warp == 0) {
    a = warp_sum(lane < kWarps ? shared[lane] : T(0));
    b = warp_sum(lane < kWarps ? shared[kWarps + lane] : T(0));
  }
}

template <typename T>
__device__ __forceinline__ T channel_or(const T* p, int64_t c, T fallback) {
  return p != nullptr ? p[c] : fallback;
}

// z = x * scale + shift as one fma: the forward and the backward's recomputed activation
// mask (when the output is not passed) must round identically.
template <typename T>
__device__ __forceinline__ T affine_at(T x, const BnAffine<T>& af) {
  return fma(x, af.scale, af.shift);
}

// Whether the gradient passes the activation at element idx: judged from the forward
// output y, or from z recomputed from x when y is null.
template <typename S, typename T>
__device__ __forceinline__ bool passes_at(const S* y, const S* x, int64_t idx, const BnAffine<T>& af,
                                          BnActivation act) {
  if (act == BnActivation::kNone) return true;
  const T ref = y != nullptr ? static_cast<T>(y[idx]) : affine_at(static_cast<T>(x[idx]), af);
  return bn_grad_passes(ref, act);
}

// The channel of element i: planes (N, C, L) or rows (N * L, C).
__device__ __forceinline__ int64_t channel_of(int64_t i, int64_t c, int64_t l, bool rows) {
  return rows ? i % c : (i / l) % c;
}

// ------------------------------------------------------------------ statistics

template <typename S, typename T>
__global__ void __launch_bounds__(kThreads)
    cnnops_bn_partials_planes_kernel(const S* __restrict__ x, T* __restrict__ out, int64_t n,
                                     int64_t c, int64_t l) {
  const int64_t ch = blockIdx.x;
  Welford<T> w = welford_init<T>();
  const int64_t total = n * l;
  for (int64_t i = threadIdx.x; i < total; i += blockDim.x) {
    const int64_t b = i / l, j = i % l;
    welford_update(w, static_cast<T>(x[(b * c + ch) * l + j]));
  }
  w = block_merge(w);
  if (threadIdx.x == 0) {
    out[ch] = w.count;
    out[c + ch] = w.mean;
    out[2 * c + ch] = w.m2;
  }
}

// Block (blockIdx.x: channel tile, blockIdx.y: chunk of `per` rows).
template <typename S, typename T>
__global__ void __launch_bounds__(kThreads)
    cnnops_bn_partials_rows_kernel(const S* __restrict__ x, T* __restrict__ out, int64_t rows,
                                   int64_t c, int64_t per) {
  const int64_t ch = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t p = blockIdx.y;
  if (ch >= c) return;
  const int64_t r0 = p * per, r1 = min(rows, r0 + per);
  Welford<T> w = welford_init<T>();
  for (int64_t r = r0; r < r1; ++r) welford_update(w, static_cast<T>(x[r * c + ch]));
  T* o = out + p * 3 * c;
  o[ch] = w.count;
  o[c + ch] = w.mean;
  o[2 * c + ch] = w.m2;
}

// One thread per channel: merge the chunks in order, then the outputs that are asked for.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    cnnops_bn_finalize_kernel(const T* __restrict__ partials, int64_t np, int64_t c,
                              T* __restrict__ merged, T* __restrict__ mean, T* __restrict__ invstd,
                              T* __restrict__ count, T* __restrict__ rm, T* __restrict__ rv,
                              const int64_t* __restrict__ nbt, bool has_momentum, T momentum, T eps) {
  const int64_t ch = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (ch >= c) return;
  Welford<T> w = welford_init<T>();
  for (int64_t p = 0; p < np; ++p) {
    const T* q = partials + p * 3 * c;
    w = welford_merge(w, Welford<T>{q[c + ch], q[2 * c + ch], q[ch]});
  }
  merged[ch] = w.count;
  merged[c + ch] = w.mean;
  merged[2 * c + ch] = w.m2;
  if (count != nullptr && ch == 0) count[0] = w.count;
  if (mean != nullptr) {
    mean[ch] = w.mean;
    invstd[ch] = bn_invstd(welford_var(w), eps);
  }
  if (rm != nullptr && w.count > T(0)) {
    const T factor = has_momentum ? momentum : T(1) / static_cast<T>(nbt[0]);
    rm[ch] = bn_running_update(rm[ch], w.mean, factor);
    rv[ch] = bn_running_update(rv[ch], bn_unbiased_var(w), factor);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    cnnops_bn_eval_stats_kernel(const T* __restrict__ rm, const T* __restrict__ rv, T* __restrict__ mean,
                                T* __restrict__ invstd, int64_t c, T eps) {
  const int64_t ch = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (ch >= c) return;
  mean[ch] = rm[ch];
  invstd[ch] = bn_invstd(rv[ch], eps);
}

// ------------------------------------------------------------------ elementwise

template <typename S, typename T>
__global__ void __launch_bounds__(kThreads)
    cnnops_bn_elemt_kernel(const S* __restrict__ x, const S* __restrict__ res, S* __restrict__ y,
                           const T* __restrict__ w, const T* __restrict__ b, const T* __restrict__ mean,
                           const T* __restrict__ invstd, int64_t numel, int64_t c, int64_t l, bool rows,
                           BnActivation act) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < numel; i += stride) {
    const int64_t ch = channel_of(i, c, l, rows);
    const BnAffine<T> af = bn_affine(mean[ch], invstd[ch], channel_or(w, ch, T(1)), channel_or(b, ch, T(0)));
    T z = affine_at(static_cast<T>(x[i]), af);
    if (res != nullptr) z += static_cast<T>(res[i]);
    y[i] = static_cast<S>(bn_activate(z, act));
  }
}

template <typename S, typename T>
__global__ void __launch_bounds__(kThreads)
    cnnops_bn_grad_elemt_kernel(const S* __restrict__ dy, const S* __restrict__ x, const S* __restrict__ y,
                                S* __restrict__ dx, S* __restrict__ dres, const T* __restrict__ w,
                                const T* __restrict__ b, const T* __restrict__ mean, const T* __restrict__ invstd,
                                const T* __restrict__ sum_dy, const T* __restrict__ sum_dy_xmu,
                                const T* __restrict__ count_ptr, T count, bool training, int64_t numel,
                                int64_t c, int64_t l, bool rows, BnActivation act) {
  const T total = count_ptr != nullptr ? count_ptr[0] : count;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < numel; i += stride) {
    const int64_t ch = channel_of(i, c, l, rows);
    const BnAffine<T> af = bn_affine(mean[ch], invstd[ch], channel_or(w, ch, T(1)), channel_or(b, ch, T(0)));
    const T g = passes_at(y, x, i, af, act) ? static_cast<T>(dy[i]) : T(0);
    if (dx != nullptr) {
      const BnGradCoeffs<T> k = bn_grad_coeffs(mean[ch], invstd[ch], channel_or(w, ch, T(1)), sum_dy[ch],
                                               sum_dy_xmu[ch], total, training);
      dx[i] = static_cast<S>(g * k.a - static_cast<T>(x[i]) * k.b + k.d);
    }
    if (dres != nullptr) dres[i] = static_cast<S>(g);
  }
}

// ------------------------------------------------------------------ backward sums

template <typename S, typename T>
__global__ void __launch_bounds__(kThreads)
    cnnops_bn_reduce_planes_kernel(const S* __restrict__ dy, const S* __restrict__ x, const S* __restrict__ y,
                                   const T* __restrict__ w, const T* __restrict__ b,
                                   const T* __restrict__ mean, const T* __restrict__ invstd,
                                   T* __restrict__ sum_dy, T* __restrict__ sum_dy_xmu, T* __restrict__ gw,
                                   int64_t n, int64_t c, int64_t l, BnActivation act) {
  const int64_t ch = blockIdx.x;
  const T m = mean[ch];
  const BnAffine<T> af = bn_affine(m, invstd[ch], channel_or(w, ch, T(1)), channel_or(b, ch, T(0)));
  T sg = T(0), sgx = T(0);
  const int64_t total = n * l;
  for (int64_t i = threadIdx.x; i < total; i += blockDim.x) {
    const int64_t idx = (i / l * c + ch) * l + i % l;
    if (!passes_at(y, x, idx, af, act)) continue;
    const T g = static_cast<T>(dy[idx]);
    sg += g;
    sgx += g * (static_cast<T>(x[idx]) - m);
  }
  block_sum2(sg, sgx);
  if (threadIdx.x == 0) {
    sum_dy[ch] = sg;
    sum_dy_xmu[ch] = sgx;
    gw[ch] = sgx * invstd[ch];
  }
}

template <typename S, typename T>
__global__ void __launch_bounds__(kThreads)
    cnnops_bn_reduce_rows_kernel(const S* __restrict__ dy, const S* __restrict__ x, const S* __restrict__ y,
                                 const T* __restrict__ w, const T* __restrict__ b, const T* __restrict__ mean,
                                 const T* __restrict__ invstd, T* __restrict__ part, int64_t rows, int64_t c,
                                 int64_t per, BnActivation act) {
  const int64_t ch = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t p = blockIdx.y;
  if (ch >= c) return;
  const T m = mean[ch];
  const BnAffine<T> af = bn_affine(m, invstd[ch], channel_or(w, ch, T(1)), channel_or(b, ch, T(0)));
  T sg = T(0), sgx = T(0);
  const int64_t r0 = p * per, r1 = min(rows, r0 + per);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t idx = r * c + ch;
    if (!passes_at(y, x, idx, af, act)) continue;
    const T g = static_cast<T>(dy[idx]);
    sg += g;
    sgx += g * (static_cast<T>(x[idx]) - m);
  }
  part[p * 2 * c + ch] = sg;
  part[p * 2 * c + c + ch] = sgx;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    cnnops_bn_reduce_finish_kernel(const T* __restrict__ part, int64_t np, int64_t c,
                                   const T* __restrict__ invstd, T* __restrict__ sum_dy,
                                   T* __restrict__ sum_dy_xmu, T* __restrict__ gw) {
  const int64_t ch = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (ch >= c) return;
  T a = T(0), b = T(0);
  for (int64_t p = 0; p < np; ++p) {
    a += part[p * 2 * c + ch];
    b += part[p * 2 * c + c + ch];
  }
  sum_dy[ch] = a;
  sum_dy_xmu[ch] = b;
  gw[ch] = b * invstd[ch];
}

// ------------------------------------------------------------------ host side

unsigned int blocks_for(int64_t n) {
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxGrid)));
}

template <typename T>
const T* cptr(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}
template <typename T>
T* mptr(const at::Tensor& t) {
  return t.defined() ? t.mutable_data_ptr<T>() : nullptr;
}

#define CNNOPS_BN_CUDA_DISPATCH(t, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), name, __VA_ARGS__)

struct CudaKernels {
  static constexpr bool kHalfOk = true;

  static at::Tensor partials(const at::Tensor& x, const BnShape& s) {
    const c10::cuda::CUDAGuard guard(x.device());
    const auto stream = at::cuda::getCurrentCUDAStream();
    const auto opts = x.options().dtype(bn_stat_dtype(x.scalar_type()));
    const int64_t rows = s.n * s.l;
    at::Tensor out;
    CNNOPS_BN_CUDA_DISPATCH(x, "cnnops_batch_norm_partials", [&] {
      using T = at::opmath_type<scalar_t>;
      if (!s.rows) {
        out = at::empty({1, 3, s.c}, opts);
        if (s.c == 0) return;
        cnnops_bn_partials_planes_kernel<scalar_t, T><<<static_cast<unsigned int>(s.c), kThreads, 0, stream>>>(
            x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<T>(), s.n, s.c, s.l);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        return;
      }
      const int64_t chunks = bn_row_chunks(rows, s.c, kMaxChunks, kChunkElems);
      const int64_t per = (rows + chunks - 1) / chunks;
      out = at::empty({chunks, 3, s.c}, opts);
      if (s.c == 0) return;
      const dim3 grid(static_cast<unsigned int>((s.c + kThreads - 1) / kThreads), static_cast<unsigned int>(chunks));
      cnnops_bn_partials_rows_kernel<scalar_t, T><<<grid, kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<T>(), rows, s.c, per);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return out;
  }

  static void finalize(const at::Tensor& partials, at::Tensor merged, const at::Tensor& mean,
                       const at::Tensor& invstd, const at::Tensor& count, const at::Tensor& rm,
                       const at::Tensor& rv, const at::Tensor& nbt, c10::optional<double> momentum,
                       double eps) {
    const c10::cuda::CUDAGuard guard(partials.device());
    const int64_t c = partials.size(2);
    if (c == 0) {
      if (count.defined()) count.zero_();
      return;
    }
    AT_DISPATCH_FLOATING_TYPES(partials.scalar_type(), "cnnops_batch_norm_finalize", [&] {
      cnnops_bn_finalize_kernel<scalar_t><<<blocks_for(c), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          partials.const_data_ptr<scalar_t>(), partials.size(0), c, merged.mutable_data_ptr<scalar_t>(),
          mptr<scalar_t>(mean), mptr<scalar_t>(invstd), mptr<scalar_t>(count), mptr<scalar_t>(rm),
          mptr<scalar_t>(rv), rm.defined() && !momentum.has_value() ? nbt.const_data_ptr<int64_t>() : nullptr,
          momentum.has_value(), static_cast<scalar_t>(momentum.value_or(0.0)), static_cast<scalar_t>(eps));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void eval_stats(const at::Tensor& rm, const at::Tensor& rv, at::Tensor& mean, at::Tensor& invstd,
                         double eps) {
    const c10::cuda::CUDAGuard guard(mean.device());
    const int64_t c = mean.numel();
    if (c == 0) return;
    AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "cnnops_batch_norm_eval_stats", [&] {
      cnnops_bn_eval_stats_kernel<scalar_t><<<blocks_for(c), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          rm.const_data_ptr<scalar_t>(), rv.const_data_ptr<scalar_t>(), mean.mutable_data_ptr<scalar_t>(),
          invstd.mutable_data_ptr<scalar_t>(), c, static_cast<scalar_t>(eps));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void elemt(const at::Tensor& x, const BnShape& s, const at::Tensor& w, const at::Tensor& b,
                    const at::Tensor& mean, const at::Tensor& invstd, const at::Tensor& res, BnActivation act,
                    at::Tensor& out) {
    const c10::cuda::CUDAGuard guard(x.device());
    const int64_t numel = x.numel();
    CNNOPS_BN_CUDA_DISPATCH(x, "cnnops_batch_norm_elemt", [&] {
      using T = at::opmath_type<scalar_t>;
      cnnops_bn_elemt_kernel<scalar_t, T><<<blocks_for(numel), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          x.const_data_ptr<scalar_t>(), cptr<scalar_t>(res), out.mutable_data_ptr<scalar_t>(), cptr<T>(w),
          cptr<T>(b), mean.const_data_ptr<T>(), invstd.const_data_ptr<T>(), numel, s.c, std::max<int64_t>(s.l, 1),
          s.rows, act);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void reduce(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& y, const BnShape& s,
                     const at::Tensor& w, const at::Tensor& b, const at::Tensor& mean, const at::Tensor& invstd,
                     BnActivation act, at::Tensor& sum_dy, at::Tensor& sum_dy_xmu, at::Tensor& grad_weight) {
    const c10::cuda::CUDAGuard guard(x.device());
    const auto stream = at::cuda::getCurrentCUDAStream();
    if (s.c == 0) return;
    const int64_t rows = s.n * s.l;
    CNNOPS_BN_CUDA_DISPATCH(x, "cnnops_batch_norm_reduce", [&] {
      using T = at::opmath_type<scalar_t>;
      if (!s.rows) {
        cnnops_bn_reduce_planes_kernel<scalar_t, T><<<static_cast<unsigned int>(s.c), kThreads, 0, stream>>>(
            dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), cptr<scalar_t>(y), cptr<T>(w), cptr<T>(b),
            mean.const_data_ptr<T>(), invstd.const_data_ptr<T>(), sum_dy.mutable_data_ptr<T>(),
            sum_dy_xmu.mutable_data_ptr<T>(),
            grad_weight.mutable_data_ptr<T>(), s.n, s.c, s.l, act);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        return;
      }
      const int64_t chunks = bn_row_chunks(rows, s.c, kMaxChunks, kChunkElems);
      const int64_t per = (rows + chunks - 1) / chunks;
      at::Tensor part = at::empty({chunks, 2, s.c}, mean.options());  // held until the finish kernel ran
      const dim3 grid(static_cast<unsigned int>((s.c + kThreads - 1) / kThreads), static_cast<unsigned int>(chunks));
      cnnops_bn_reduce_rows_kernel<scalar_t, T><<<grid, kThreads, 0, stream>>>(
          dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), cptr<scalar_t>(y), cptr<T>(w), cptr<T>(b),
          mean.const_data_ptr<T>(), invstd.const_data_ptr<T>(), part.mutable_data_ptr<T>(), rows, s.c, per, act);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      cnnops_bn_reduce_finish_kernel<T><<<blocks_for(s.c), kThreads, 0, stream>>>(
          part.const_data_ptr<T>(), chunks, s.c, invstd.const_data_ptr<T>(), sum_dy.mutable_data_ptr<T>(),
          sum_dy_xmu.mutable_data_ptr<T>(), grad_weight.mutable_data_ptr<T>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void grad_elemt(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& y, const BnShape& s,
                         const at::Tensor& w, const at::Tensor& b, const at::Tensor& mean, const at::Tensor& invstd,
                         const at::Tensor& sum_dy, const at::Tensor& sum_dy_xmu, const at::Tensor& count_t,
                         double count, bool training, BnActivation act, const at::Tensor& gi,
                         const at::Tensor& gr) {
    const c10::cuda::CUDAGuard guard(x.device());
    const int64_t numel = x.numel();
    CNNOPS_BN_CUDA_DISPATCH(x, "cnnops_batch_norm_grad_elemt", [&] {
      using T = at::opmath_type<scalar_t>;
      cnnops_bn_grad_elemt_kernel<scalar_t, T><<<blocks_for(numel), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), cptr<scalar_t>(y), mptr<scalar_t>(gi),
          mptr<scalar_t>(gr), cptr<T>(w), cptr<T>(b), mean.const_data_ptr<T>(), invstd.const_data_ptr<T>(),
          sum_dy.const_data_ptr<T>(), sum_dy_xmu.const_data_ptr<T>(), cptr<T>(count_t), static_cast<T>(count),
          training, numel, s.c, std::max<int64_t>(s.l, 1), s.rows, act);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
};

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(cnnops, CUDA, m) {
  m.impl("batch_norm", &bn_forward<cuda::CudaKernels>);
  m.impl("batch_norm_backward", &bn_backward<cuda::CudaKernels>);
  m.impl("batch_norm_stats", &bn_stats<cuda::CudaKernels>);
  m.impl("batch_norm_gather_stats", &bn_gather_stats<cuda::CudaKernels>);
  m.impl("batch_norm_elemt", &bn_elemt<cuda::CudaKernels>);
  m.impl("batch_norm_backward_reduce", &bn_backward_reduce<cuda::CudaKernels>);
  m.impl("batch_norm_backward_elemt", &bn_backward_elemt<cuda::CudaKernels>);
}

}  // namespace cnnops
