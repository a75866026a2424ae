#pragma once
// The simple, correct CUDA convolution core: a shared-memory tiled implicit GEMM on
// FMA units, C[m, n] = sum_k A(m, k) * B(k, n), where A and B are never materialised: a
// "problem" struct computes each element's address (im2col through the padding map of
// common/conv_index.h). The forward pass and the weight gradient are two problems on the
// same kernel. Accumulation is in at::opmath_type (float for half/bfloat16). No atomics:
// split-K partial sums go to a workspace and are added in a fixed order, so every result
// is deterministic. Fast tensor-core paths come later and stay opt-in until run on a GPU.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "common/conv_checks.h"
#include "common/conv_index.h"

namespace cnnops {
namespace cuda {

constexpr int kTileM = 64;  // output rows (pixels for the forward) per block
constexpr int kTileN = 64;  // output columns (channels for the forward) per block
constexpr int kTileK = 16;  // reduction slice staged in shared memory
constexpr int kGemmThreads = 256;
constexpr int kMicro = 4;  // each thread owns a 4 x 4 sub-tile: rows tx + 16 i, cols ty + 16 j

// Maximum blocks in grid.z; the problem's batch (groups x split-K slices) must fit.
constexpr int64_t kMaxGridZ = 65535;

template <typename Problem>
__global__ void __launch_bounds__(kGemmThreads)
    cnnops_implicit_gemm_kernel(const Problem problem) {
  using acc_t = typename Problem::acc_t;
  __shared__ acc_t a_tile[kTileK][kTileM];
  __shared__ acc_t b_tile[kTileK][kTileN];

  const int64_t z = blockIdx.z;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTileM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kTileN;
  const int tid = threadIdx.x;
  const int tx = tid % 16, ty = tid / 16;
  const int64_t M = problem.rows(), N = problem.cols();
  const int64_t k_begin = problem.k_begin(z), k_end = problem.k_end(z);

  acc_t acc[kMicro][kMicro];
#pragma unroll
  for (int i = 0; i < kMicro; ++i)
#pragma unroll
    for (int j = 0; j < kMicro; ++j) acc[i][j] = acc_t(0);

  for (int64_t k0 = k_begin; k0 < k_end; k0 += kTileK) {
    // Consecutive threads take consecutive rows of A and columns of B, which are the
    // contiguous directions of NCHW activations.
#pragma unroll
    for (int r = 0; r < kTileM * kTileK / kGemmThreads; ++r) {
      const int e = tid + r * kGemmThreads;
      const int row = e % kTileM, kk = e / kTileM;
      const int64_t m = m0 + row, k = k0 + kk;
      a_tile[kk][row] = (m < M && k < k_end) ? problem.load_a(z, m, k) : acc_t(0);
    }
#pragma unroll
    for (int r = 0; r < kTileN * kTileK / kGemmThreads; ++r) {
      const int e = tid + r * kGemmThreads;
      const int col = e % kTileN, kk = e / kTileN;
      const int64_t n = n0 + col, k = k0 + kk;
      b_tile[kk][col] = (n < N && k < k_end) ? problem.load_b(z, k, n) : acc_t(0);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
      acc_t a[kMicro], b[kMicro];
#pragma unroll
      for (int i = 0; i < kMicro; ++i) a[i] = a_tile[kk][tx + 16 * i];
#pragma unroll
      for (int j = 0; j < kMicro; ++j) b[j] = b_tile[kk][ty + 16 * j];
#pragma unroll
      for (int i = 0; i < kMicro; ++i)
#pragma unroll
        for (int j = 0; j < kMicro; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < kMicro; ++i) {
    const int64_t m = m0 + tx + 16 * i;
    if (m >= M) continue;
#pragma unroll
    for (int j = 0; j < kMicro; ++j) {
      const int64_t n = n0 + ty + 16 * j;
      if (n < N) problem.store(z, m, n, acc[i][j]);
    }
  }
}

template <typename Problem>
void launch_implicit_gemm(const Problem& problem, int64_t batch) {
  if (problem.rows() == 0 || problem.cols() == 0 || batch == 0) return;
  const int64_t grid_x = (problem.rows() + kTileM - 1) / kTileM;
  const int64_t grid_y = (problem.cols() + kTileN - 1) / kTileN;
  TORCH_CHECK(grid_x <= INT32_MAX && grid_y <= 65535 && batch <= kMaxGridZ,
              "cnnops: convolution too large for one launch (grid ", grid_x, " x ", grid_y,
              " x ", batch, ")");
  const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y),
                  static_cast<unsigned>(batch));
  cnnops_implicit_gemm_kernel<Problem>
      <<<grid, kGemmThreads, 0, at::cuda::getCurrentCUDAStream()>>>(problem);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Splits an implicit-GEMM row index (n, oh, ow) or column index (ic, kh, kw).
struct PixelIndex {
  int64_t n, oh, ow;
};
__device__ __forceinline__ PixelIndex split_pixel(const Conv2dGeometry& g, int64_t m) {
  const int64_t ow = m % g.out_w;
  const int64_t t = m / g.out_w;
  return PixelIndex{t / g.out_h, t % g.out_h, ow};
}
struct TapIndex {
  int64_t ic, kh, kw;
};
__device__ __forceinline__ TapIndex split_tap(const Conv2dGeometry& g, int64_t k) {
  const int64_t kw = k % g.kernel_w;
  const int64_t t = k / g.kernel_w;
  return TapIndex{t / g.kernel_h, t % g.kernel_h, kw};
}

template <typename scalar_t>
__device__ __forceinline__ at::opmath_type<scalar_t> im2col_value(const scalar_t* input,
                                                                  const Strides4d& s,
                                                                  const Conv2dGeometry& g,
                                                                  int64_t group, int64_t m,
                                                                  int64_t k) {
  const PixelIndex p = split_pixel(g, m);
  const TapIndex t = split_tap(g, k);
  const int64_t off = im2col_offset(g, s, p.n, group, p.oh, p.ow, t.ic, t.kh, t.kw);
  return off < 0 ? at::opmath_type<scalar_t>(0) : static_cast<at::opmath_type<scalar_t>>(input[off]);
}

}  // namespace cuda
}  // namespace cnnops
