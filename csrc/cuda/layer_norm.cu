// layer_norm and layer_norm2d on CUDA: the simple, correct default kernels (a faster
// path with 16-byte loads and the row kept in registers would come later, opt-in behind
// CNNOPS_EXPERIMENTAL=1 until a GPU run has tested it).
//
//  - Rows (layer_norm; layer_norm2d in channels_last, where each (n, h, w) is a contiguous
//    row of C values): one block per row (grid-stride over rows). Each thread runs Welford
//    over its strided share of the row (values shifted by the row's first value), the
//    partials are merged with Chan's formula by warp shuffles and then across warps through
//    shared memory, in a fixed order. A second pass over the row writes the output.
//    Backward dx: the same block per row, one pass for the two row sums, one for dx.
//  - Channels-first (layer_norm2d in NCHW): one thread per (n, h, w), looping over C; the
//    threads of a warp read consecutive w, so every load is coalesced.
//  - dgamma/dbeta: per-block partial sums over fixed ranges of rows (or positions) written
//    to a workspace, then a second kernel adds the partials of each column in order. No
//    atomics: results are deterministic and the deterministic-algorithms flag needs no
//    second path.
// Statistics, sums and parameters are computed in at::opmath_type (float for half and
// bfloat16, double for double); weight and bias may be float32 for half/bfloat16 input.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "common/layer_norm_checks.h"
#include "common/welford.h"

namespace cnnops {
namespace cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kMaxThreads = 256;             // block size bound of every kernel here
constexpr int kMaxWarps = kMaxThreads / kWarp;
constexpr int64_t kMaxGridX = 1 << 20;       // grid-stride loops beyond this
constexpr int64_t kMaxGridY = 65535;
constexpr int64_t kMaxPartials = 256;        // dgamma/dbeta partial rows, at most
constexpr int64_t kPartialElems = 1 << 24;   // and at most this many values in all

// ------------------------------------------------------------------ block reductions

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
  return w;  // complete in lane 0
}

// Merges the Welford partials of the block (blockDim.x a multiple of 32, at most
// kMaxThreads); every thread receives the result.
template <typename T>
__device__ __forceinline__ Welford<T> block_merge(Welford<T> w, Welford<T>* shared) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int warps = blockDim.x / kWarp;
  w = warp_merge(w);
  if (lane == 0) shared[warp] = w;
  __syncthreads();
  if (warp == 0) {
    w = lane < warps ? shared[lane] : welford_init<T>();
    w = warp_merge(w);
    if (lane == 0) shared[kMaxWarps] = w;
  }
  __syncthreads();
  const Welford<T> r = shared[kMaxWarps];
  __syncthreads();  // shared is reused by the next row
  return r;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Sums two values over the block in a fixed order; every thread receives both sums.
// shared: 2 * (kMaxWarps + 1) values.
template <typename T>
__device__ __forceinline__ void block_sum2(T& a, T& b, T* shared) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int warps = blockDim.x / kWarp;
  a = warp_sum(a);
  b = warp_sum(b);
  if (lane == 0) {
    shared[warp] = a;
    shared[kMaxWarps + 1 + warp] = b;
  }
  __syncthreads();
  if (warp == 0) {
    T x = lane < warps ? shared[lane] : T(0);
    T y = lane < warps ? shared[kMaxWarps + 1 + lane] : T(0);
    x = warp_sum(x);
    y = warp_sum(y);
    if (lane == 0) {
      shared[kMaxWarps] = x;
      shared[2 * kMaxWarps + 1] = y;
    }
  }
  __syncthreads();
  a = shared[kMaxWarps];
  b = shared[2 * kMaxWarps + 1];
  __syncthreads();
}

template <typename T>
__device__ __forceinline__ T rstd_of(const Welford<T>& w, T eps) {
  const T var = welford_var(w);
  return T(1) / sqrt((var > T(0) ? var : T(0)) + eps);
}

template <typename param_t, typename acc_t>
__device__ __forceinline__ acc_t param_or(const param_t* p, int64_t i, acc_t fallback) {
  return p != nullptr ? static_cast<acc_t>(p[i]) : fallback;
}

// ------------------------------------------------------------------ row kernels

template <typename scalar_t, typename param_t>
__global__ void __launch_bounds__(kMaxThreads)
    cnnops_layer_norm_rows_forward_kernel(const scalar_t* __restrict__ X, scalar_t* __restrict__ Y,
                                          at::opmath_type<scalar_t>* __restrict__ mean_out,
                                          at::opmath_type<scalar_t>* __restrict__ rstd_out,
                                          const param_t* __restrict__ w, const param_t* __restrict__ b,
                                          int64_t M, int64_t N, at::opmath_type<scalar_t> eps) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ Welford<acc_t> shared[kMaxWarps + 1];
  for (int64_t row = blockIdx.x; row < M; row += gridDim.x) {
    const scalar_t* x = X + row * N;
    const acc_t shift = static_cast<acc_t>(x[0]);
    Welford<acc_t> part = welford_init<acc_t>();
    for (int64_t j = threadIdx.x; j < N; j += blockDim.x) {
      welford_update(part, static_cast<acc_t>(x[j]) - shift);
    }
    const Welford<acc_t> tot = block_merge(part, shared);
    const acc_t mu = tot.mean + shift;
    const acc_t r = rstd_of(tot, eps);
    if (threadIdx.x == 0) {
      mean_out[row] = mu;
      rstd_out[row] = r;
    }
    scalar_t* y = Y + row * N;
    for (int64_t j = threadIdx.x; j < N; j += blockDim.x) {
      const acc_t xh = (static_cast<acc_t>(x[j]) - mu) * r;
      y[j] = static_cast<scalar_t>(xh * param_or(w, j, acc_t(1)) + param_or(b, j, acc_t(0)));
    }
  }
}

template <typename scalar_t, typename param_t>
__global__ void __launch_bounds__(kMaxThreads)
    cnnops_layer_norm_rows_backward_kernel(const scalar_t* __restrict__ dY, const scalar_t* __restrict__ X,
                                           const at::opmath_type<scalar_t>* __restrict__ mean,
                                           const at::opmath_type<scalar_t>* __restrict__ rstd,
                                           const param_t* __restrict__ w, scalar_t* __restrict__ dX,
                                           int64_t M, int64_t N) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t shared[2 * (kMaxWarps + 1)];
  for (int64_t row = blockIdx.x; row < M; row += gridDim.x) {
    const scalar_t* x = X + row * N;
    const scalar_t* dy = dY + row * N;
    const acc_t mu = mean[row], r = rstd[row];
    acc_t sg = 0, sgx = 0;
    for (int64_t j = threadIdx.x; j < N; j += blockDim.x) {
      const acc_t g = static_cast<acc_t>(dy[j]) * param_or(w, j, acc_t(1));
      sg += g;
      sgx += g * (static_cast<acc_t>(x[j]) - mu) * r;
    }
    block_sum2(sg, sgx, shared);
    const acc_t a = sg / static_cast<acc_t>(N), c = sgx / static_cast<acc_t>(N);
    scalar_t* dx = dX + row * N;
    for (int64_t j = threadIdx.x; j < N; j += blockDim.x) {
      const acc_t g = static_cast<acc_t>(dy[j]) * param_or(w, j, acc_t(1));
      const acc_t xh = (static_cast<acc_t>(x[j]) - mu) * r;
      dx[j] = static_cast<scalar_t>(r * (g - a - xh * c));
    }
  }
}

// dgamma/dbeta partials of rows: block (blockIdx.x, p) owns columns [blockIdx.x * blockDim.x, ...)
// and rows [p * M / P, (p + 1) * M / P); one thread per column, coalesced over columns.
template <typename scalar_t>
__global__ void __launch_bounds__(kMaxThreads)
    cnnops_layer_norm_rows_param_partials_kernel(const scalar_t* __restrict__ dY, const scalar_t* __restrict__ X,
                                                 const at::opmath_type<scalar_t>* __restrict__ mean,
                                                 const at::opmath_type<scalar_t>* __restrict__ rstd,
                                                 at::opmath_type<scalar_t>* __restrict__ pw,
                                                 at::opmath_type<scalar_t>* __restrict__ pb,
                                                 int64_t M, int64_t N, int64_t P) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t p = blockIdx.y;
  const int64_t begin = p * M / P, end = (p + 1) * M / P;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < N;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc_t sw = 0, sb = 0;
    for (int64_t row = begin; row < end; ++row) {
      const acc_t d = static_cast<acc_t>(dY[row * N + j]);
      sw += d * (static_cast<acc_t>(X[row * N + j]) - mean[row]) * rstd[row];
      sb += d;
    }
    if (pw != nullptr) pw[p * N + j] = sw;
    if (pb != nullptr) pb[p * N + j] = sb;
  }
}

// out[j] = sum over p, in order, of partials[p * width + j].
template <typename acc_t>
__global__ void __launch_bounds__(kMaxThreads)
    cnnops_layer_norm_sum_partials_kernel(const acc_t* __restrict__ partials, acc_t* __restrict__ out,
                                          int64_t P, int64_t width) {
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < width;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc_t s = 0;
    for (int64_t p = 0; p < P; ++p) s += partials[p * width + j];
    out[j] = s;
  }
}

// ------------------------------------------------------------------ channels-first kernels
// NCHW: element (n, c, s) at n * C * S + c * S + s, S = H * W; statistics at n * S + s.

template <typename scalar_t, typename param_t>
__global__ void __launch_bounds__(kMaxThreads)
    cnnops_layer_norm2d_nchw_forward_kernel(const scalar_t* __restrict__ X, scalar_t* __restrict__ Y,
                                            at::opmath_type<scalar_t>* __restrict__ mean_out,
                                            at::opmath_type<scalar_t>* __restrict__ rstd_out,
                                            const param_t* __restrict__ w, const param_t* __restrict__ b,
                                            int64_t N, int64_t C, int64_t S, at::opmath_type<scalar_t> eps) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < N * S;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = q / S, s = q % S;
    const scalar_t* x = X + n * C * S + s;
    const acc_t shift = static_cast<acc_t>(x[0]);
    Welford<acc_t> st = welford_init<acc_t>();
    for (int64_t c = 0; c < C; ++c) welford_update(st, static_cast<acc_t>(x[c * S]) - shift);
    const acc_t mu = st.mean + shift;
    const acc_t r = rstd_of(st, eps);
    mean_out[q] = mu;
    rstd_out[q] = r;
    scalar_t* y = Y + n * C * S + s;
    for (int64_t c = 0; c < C; ++c) {
      const acc_t xh = (static_cast<acc_t>(x[c * S]) - mu) * r;
      y[c * S] = static_cast<scalar_t>(xh * param_or(w, c, acc_t(1)) + param_or(b, c, acc_t(0)));
    }
  }
}

template <typename scalar_t, typename param_t>
__global__ void __launch_bounds__(kMaxThreads)
    cnnops_layer_norm2d_nchw_backward_kernel(const scalar_t* __restrict__ dY, const scalar_t* __restrict__ X,
                                             const at::opmath_type<scalar_t>* __restrict__ mean,
                                             const at::opmath_type<scalar_t>* __restrict__ rstd,
                                             const param_t* __restrict__ w, scalar_t* __restrict__ dX,
                                             int64_t N, int64_t C, int64_t S) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < N * S;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = q / S, s = q % S;
    const int64_t base = n * C * S + s;
    const acc_t mu = mean[q], r = rstd[q];
    acc_t sg = 0, sgx = 0;
    for (int64_t c = 0; c < C; ++c) {
      const acc_t g = static_cast<acc_t>(dY[base + c * S]) * param_or(w, c, acc_t(1));
      sg += g;
      sgx += g * (static_cast<acc_t>(X[base + c * S]) - mu) * r;
    }
    const acc_t a = sg / static_cast<acc_t>(C), k = sgx / static_cast<acc_t>(C);
    for (int64_t c = 0; c < C; ++c) {
      const acc_t g = static_cast<acc_t>(dY[base + c * S]) * param_or(w, c, acc_t(1));
      const acc_t xh = (static_cast<acc_t>(X[base + c * S]) - mu) * r;
      dX[base + c * S] = static_cast<scalar_t>(r * (g - a - xh * k));
    }
  }
}

// dgamma/dbeta partials of NCHW: block (c, p) sums channel c over positions
// q in [p * Q / P, (p + 1) * Q / P), Q = N * S, then a fixed-order tree in shared memory.
template <typename scalar_t>
__global__ void __launch_bounds__(kMaxThreads)
    cnnops_layer_norm2d_nchw_param_partials_kernel(const scalar_t* __restrict__ dY, const scalar_t* __restrict__ X,
                                                   const at::opmath_type<scalar_t>* __restrict__ mean,
                                                   const at::opmath_type<scalar_t>* __restrict__ rstd,
                                                   at::opmath_type<scalar_t>* __restrict__ pw,
                                                   at::opmath_type<scalar_t>* __restrict__ pb,
                                                   int64_t N, int64_t C, int64_t S, int64_t P) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t shared[2 * (kMaxWarps + 1)];
  const int64_t Q = N * S;
  for (int64_t c = blockIdx.x; c < C; c += gridDim.x) {
    const int64_t p = blockIdx.y;
    const int64_t begin = p * Q / P, end = (p + 1) * Q / P;
    acc_t sw = 0, sb = 0;
    for (int64_t q = begin + threadIdx.x; q < end; q += blockDim.x) {
      const int64_t n = q / S, s = q % S;
      const int64_t i = (n * C + c) * S + s;
      const acc_t d = static_cast<acc_t>(dY[i]);
      sw += d * (static_cast<acc_t>(X[i]) - mean[q]) * rstd[q];
      sb += d;
    }
    block_sum2(sw, sb, shared);
    if (threadIdx.x == 0) {
      if (pw != nullptr) pw[p * C + c] = sw;
      if (pb != nullptr) pb[p * C + c] = sb;
    }
  }
}

// ------------------------------------------------------------------ launch helpers

int row_threads(int64_t n) {
  // one warp per 4 values at the low end, up to kMaxThreads; a multiple of 32
  int64_t t = kWarp;
  while (t < kMaxThreads && t * 4 < n) t *= 2;
  return static_cast<int>(t);
}

unsigned grid_for(int64_t items, int64_t per_block) {
  const int64_t blocks = (items + per_block - 1) / per_block;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(blocks, kMaxGridX)));
}

int64_t partial_count(int64_t units, int64_t width, int64_t units_per_partial) {
  int64_t p = (units + units_per_partial - 1) / units_per_partial;
  p = std::min<int64_t>({p, kMaxPartials, std::max<int64_t>(1, kPartialElems / std::max<int64_t>(width, 1))});
  return std::max<int64_t>(1, std::min(p, kMaxGridY));
}

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<param_t>{}) with param_t = float for half/bfloat16 input whose
// weight/bias are float32, and param_t = scalar_t otherwise.
template <typename scalar_t, typename F>
void with_param_type(bool params_float, const F& f) {
  if constexpr (std::is_same<scalar_t, c10::Half>::value || std::is_same<scalar_t, c10::BFloat16>::value) {
    if (params_float) {
      f(TypeTag<float>{});
      return;
    }
  }
  f(TypeTag<scalar_t>{});
}

bool params_are_float(const at::Tensor& input, const c10::optional<at::Tensor>& weight,
                      const c10::optional<at::Tensor>& bias) {
  if (!is_reduced_float(input.scalar_type())) return false;
  if (weight.has_value() && weight->defined()) return weight->scalar_type() == at::kFloat;
  if (bias.has_value() && bias->defined()) return bias->scalar_type() == at::kFloat;
  return false;
}

at::Tensor contiguous_or_undefined(const c10::optional<at::Tensor>& p) {
  return (p.has_value() && p->defined()) ? p->contiguous() : at::Tensor();
}

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

at::Tensor empty_grad(const at::Tensor& input) { return at::empty({0}, input.options()); }

// Sums (P, width) partials into a (width,) tensor of the parameter's dtype.
at::Tensor sum_partials(const at::Tensor& partials, int64_t P, int64_t width, at::ScalarType dtype) {
  at::Tensor total = at::empty({width}, partials.options());
  if (width > 0) {
    AT_DISPATCH_FLOATING_TYPES(partials.scalar_type(), "cnnops_layer_norm_sum_partials_cuda", [&] {
      cnnops_layer_norm_sum_partials_kernel<scalar_t>
          <<<grid_for(width, kMaxThreads), kMaxThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
              partials.const_data_ptr<scalar_t>(), total.mutable_data_ptr<scalar_t>(), P, width);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return total.to(dtype);
}

// Forward over M contiguous rows of length N (M, N > 0).
void rows_forward(const at::Tensor& x, at::Tensor& out, at::Tensor& mean, at::Tensor& rstd,
                  const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
                  int64_t M, int64_t N, double eps) {
  const at::Tensor w = contiguous_or_undefined(weight), b = contiguous_or_undefined(bias);
  const bool pf = params_are_float(x, weight, bias);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "cnnops_layer_norm_rows_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    with_param_type<scalar_t>(pf, [&](auto tag) {
      using param_t = typename decltype(tag)::type;
      const int threads = row_threads(N);
      cnnops_layer_norm_rows_forward_kernel<scalar_t, param_t>
          <<<grid_for(M, 1), threads, 0, at::cuda::getCurrentCUDAStream()>>>(
              x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
              mean.mutable_data_ptr<acc_t>(), rstd.mutable_data_ptr<acc_t>(), ptr_or_null<param_t>(w),
              ptr_or_null<param_t>(b), M, N, static_cast<acc_t>(eps));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

// Backward over M contiguous rows of length N (M, N > 0). grad_input / pw / pb undefined
// when not wanted.
void rows_backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean,
                   const at::Tensor& rstd, const c10::optional<at::Tensor>& weight,
                   const c10::optional<at::Tensor>& bias, at::Tensor& grad_input, at::Tensor& pw,
                   at::Tensor& pb, int64_t P, int64_t M, int64_t N) {
  const at::Tensor w = contiguous_or_undefined(weight);
  const bool pf = params_are_float(x, weight, bias);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "cnnops_layer_norm_rows_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto stream = at::cuda::getCurrentCUDAStream();
    if (grad_input.defined()) {
      with_param_type<scalar_t>(pf, [&](auto tag) {
      using param_t = typename decltype(tag)::type;
        cnnops_layer_norm_rows_backward_kernel<scalar_t, param_t>
            <<<grid_for(M, 1), row_threads(N), 0, stream>>>(
                dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), mean.const_data_ptr<acc_t>(),
                rstd.const_data_ptr<acc_t>(), ptr_or_null<param_t>(w), grad_input.mutable_data_ptr<scalar_t>(),
                M, N);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
    if (pw.defined() || pb.defined()) {
      const dim3 grid(grid_for(N, kMaxThreads), static_cast<unsigned>(P));
      cnnops_layer_norm_rows_param_partials_kernel<scalar_t><<<grid, kMaxThreads, 0, stream>>>(
          dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), mean.const_data_ptr<acc_t>(),
          rstd.const_data_ptr<acc_t>(), pw.defined() ? pw.mutable_data_ptr<acc_t>() : nullptr,
          pb.defined() ? pb.mutable_data_ptr<acc_t>() : nullptr, M, N, P);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

// ------------------------------------------------------------------ op entry points

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_cuda(
    const at::Tensor& input, at::IntArrayRef normalized_shape,
    const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias, double eps) {
  const char* op = "cnnops.layer_norm";
  check_dtype_supported(op, input, /*half_ok=*/true);
  const auto rows_cols = check_layer_norm_shape(op, input, normalized_shape);
  const int64_t M = rows_cols.first, N = rows_cols.second;
  check_layer_norm_params(op, input, weight, bias, normalized_shape, "normalized_shape");
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous();
  LayerNormOutputs outputs = layer_norm_outputs(
      input, layer_norm_stat_shape(input, normalized_shape.size()), at::MemoryFormat::Contiguous);
  if (layer_norm_outputs_trivial(outputs, M, N, eps)) return outputs;
  at::Tensor& out = std::get<0>(outputs);
  at::Tensor& mean = std::get<1>(outputs);
  at::Tensor& rstd = std::get<2>(outputs);
  rows_forward(x, out, mean, rstd, weight, bias, M, N, eps);
  return outputs;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& input, at::IntArrayRef normalized_shape,
    const at::Tensor& mean, const at::Tensor& rstd, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, std::array<bool, 3> output_mask) {
  const char* op = "cnnops.layer_norm_backward";
  check_dtype_supported(op, input, /*half_ok=*/true);
  const auto rows_cols = check_layer_norm_shape(op, input, normalized_shape);
  const int64_t M = rows_cols.first, N = rows_cols.second;
  check_layer_norm_grad_out(op, input, grad_out);
  check_layer_norm_stat(op, input, mean, "mean", M);
  check_layer_norm_stat(op, input, rstd, "rstd", M);
  check_layer_norm_params(op, input, weight, bias, normalized_shape, "normalized_shape");
  const c10::cuda::CUDAGuard guard(input.device());
  const auto stat_dtype = layer_norm_stat_dtype(input.scalar_type());
  at::Tensor grad_input = output_mask[0] ? at::empty(input.sizes(), input.options()) : at::Tensor();
  const int64_t P = partial_count(M, N, 32);
  at::Tensor pw, pb;
  // zeros: with M == 0 no kernel writes them, and the sum must be 0
  if (output_mask[1]) pw = at::zeros({P, N}, input.options().dtype(stat_dtype));
  if (output_mask[2]) pb = at::zeros({P, N}, input.options().dtype(stat_dtype));
  if (M > 0 && N > 0) {
    const at::Tensor x = input.contiguous(), dy = grad_out.contiguous();
    const at::Tensor m = mean.contiguous(), r = rstd.contiguous();
    rows_backward(dy, x, m, r, weight, bias, grad_input, pw, pb, P, M, N);
  }
  at::Tensor grad_weight = output_mask[1]
      ? sum_partials(pw, P, N, layer_norm_param_dtype(input, weight)).view(normalized_shape)
      : empty_grad(input);
  at::Tensor grad_bias = output_mask[2]
      ? sum_partials(pb, P, N, layer_norm_param_dtype(input, bias)).view(normalized_shape)
      : empty_grad(input);
  if (!output_mask[0]) grad_input = empty_grad(input);
  return {grad_input, grad_weight, grad_bias};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm2d_cuda(
    const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, double eps) {
  const char* op = "cnnops.layer_norm2d";
  check_dtype_supported(op, input, /*half_ok=*/true);
  check_layer_norm2d_shape(op, input);
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t channels[1] = {C};
  check_layer_norm_params(op, input, weight, bias, at::IntArrayRef(channels, 1), "num_channels");
  const c10::cuda::CUDAGuard guard(input.device());
  const auto format = layer_norm2d_format(input);
  const at::Tensor x = input.contiguous(format);
  const int64_t S = H * W;
  LayerNormOutputs outputs = layer_norm_outputs(input, {N, 1, H, W}, format);
  if (layer_norm_outputs_trivial(outputs, N * S, C, eps)) return outputs;
  at::Tensor& out = std::get<0>(outputs);
  at::Tensor& mean = std::get<1>(outputs);
  at::Tensor& rstd = std::get<2>(outputs);
  if (format == at::MemoryFormat::ChannelsLast) {
    rows_forward(x, out, mean, rstd, weight, bias, N * S, C, eps);
    return outputs;
  }
  const at::Tensor w = contiguous_or_undefined(weight), b = contiguous_or_undefined(bias);
  const bool pf = params_are_float(input, weight, bias);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "cnnops_layer_norm2d_nchw_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    with_param_type<scalar_t>(pf, [&](auto tag) {
      using param_t = typename decltype(tag)::type;
      cnnops_layer_norm2d_nchw_forward_kernel<scalar_t, param_t>
          <<<grid_for(N * S, kMaxThreads), kMaxThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
              x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), mean.mutable_data_ptr<acc_t>(),
              rstd.mutable_data_ptr<acc_t>(), ptr_or_null<param_t>(w), ptr_or_null<param_t>(b), N, C, S,
              static_cast<acc_t>(eps));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return outputs;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm2d_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& mean,
    const at::Tensor& rstd, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, std::array<bool, 3> output_mask) {
  const char* op = "cnnops.layer_norm2d_backward";
  check_dtype_supported(op, input, /*half_ok=*/true);
  check_layer_norm2d_shape(op, input);
  check_layer_norm_grad_out(op, input, grad_out);
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t S = H * W;
  check_layer_norm_stat(op, input, mean, "mean", N * S);
  check_layer_norm_stat(op, input, rstd, "rstd", N * S);
  const int64_t channels[1] = {C};
  check_layer_norm_params(op, input, weight, bias, at::IntArrayRef(channels, 1), "num_channels");
  const c10::cuda::CUDAGuard guard(input.device());
  const auto stat_dtype = layer_norm_stat_dtype(input.scalar_type());
  const auto format = layer_norm2d_format(input);
  const bool channels_last = format == at::MemoryFormat::ChannelsLast;
  at::Tensor grad_input = output_mask[0]
                              ? at::empty(input.sizes(), input.options().memory_format(format))
                              : at::Tensor();
  const int64_t P = channels_last ? partial_count(N * S, C, 32) : partial_count(N * S, C, 4096);
  at::Tensor pw, pb;
  if (output_mask[1]) pw = at::zeros({P, C}, input.options().dtype(stat_dtype));
  if (output_mask[2]) pb = at::zeros({P, C}, input.options().dtype(stat_dtype));
  if (N * S > 0 && C > 0) {
    const at::Tensor x = input.contiguous(format), dy = grad_out.contiguous(format);
    const at::Tensor m = mean.contiguous(), r = rstd.contiguous();
    if (channels_last) {
      rows_backward(dy, x, m, r, weight, bias, grad_input, pw, pb, P, N * S, C);
    } else {
      const at::Tensor w = contiguous_or_undefined(weight);
      const bool pf = params_are_float(input, weight, bias);
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "cnnops_layer_norm2d_nchw_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto stream = at::cuda::getCurrentCUDAStream();
        if (grad_input.defined()) {
          with_param_type<scalar_t>(pf, [&](auto tag) {
      using param_t = typename decltype(tag)::type;
            cnnops_layer_norm2d_nchw_backward_kernel<scalar_t, param_t>
                <<<grid_for(N * S, kMaxThreads), kMaxThreads, 0, stream>>>(
                    dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), m.const_data_ptr<acc_t>(),
                    r.const_data_ptr<acc_t>(), ptr_or_null<param_t>(w), grad_input.mutable_data_ptr<scalar_t>(),
                    N, C, S);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          });
        }
        if (pw.defined() || pb.defined()) {
          const dim3 grid(static_cast<unsigned>(std::min<int64_t>(C, kMaxGridX)), static_cast<unsigned>(P));
          cnnops_layer_norm2d_nchw_param_partials_kernel<scalar_t><<<grid, kMaxThreads, 0, stream>>>(
              dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), m.const_data_ptr<acc_t>(),
              r.const_data_ptr<acc_t>(), pw.defined() ? pw.mutable_data_ptr<acc_t>() : nullptr,
              pb.defined() ? pb.mutable_data_ptr<acc_t>() : nullptr, N, C, S, P);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      });
    }
  }
  at::Tensor grad_weight = output_mask[1] ? sum_partials(pw, P, C, layer_norm_param_dtype(input, weight))
                                          : empty_grad(input);
  at::Tensor grad_bias = output_mask[2] ? sum_partials(pb, P, C, layer_norm_param_dtype(input, bias))
                                        : empty_grad(input);
  if (!output_mask[0]) grad_input = empty_grad(input);
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(cnnops, CUDA, m) {
  m.impl("layer_norm", &cuda::layer_norm_cuda);
  m.impl("layer_norm_backward", &cuda::layer_norm_backward_cuda);
  m.impl("layer_norm2d", &cuda::layer_norm2d_cuda);
  m.impl("layer_norm2d_backward", &cuda::layer_norm2d_backward_cuda);
}

}  // namespace cnnops
