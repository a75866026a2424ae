// The fused depthwise-separable forward on CUDA (opt-in, CNNOPS_EXPERIMENTAL=1: its tests pass
// on the H100, but it ran at 0.04-0.24x of torch, 2026-11-27, slower than the two kernels it
// replaces): one kernel, no intermediate tensor in global memory. A block owns a tile of
// kTilePixels output pixels of one image and kTileOut output channels. For each chunk of
// kChunk depthwise channels it computes those channels' depthwise outputs at its pixels
// into shared memory (padding through source_index, as the CPU tests check), stages the
// matching slice of the 1x1 weight, and each thread accumulates a 4 x 4 block of (output
// channel, pixel) products in registers. Blocks that share a pixel tile recompute its
// depthwise values (kTileOut output channels per recompute: cheap next to the 1x1 conv's
// C_mid multiply-adds per output). Accumulation in at::opmath_type.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <cstdint>
#include <limits>

#include "common/conv_checks.h"
#include "cuda/separable_conv2d_fused.cuh"

namespace cnnops {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kTilePixels = 64;  // 16 thread columns x 4 pixels
constexpr int kTileOut = 64;     // 16 thread rows x 4 output channels
constexpr int kChunk = 16;       // depthwise channels staged at a time
constexpr int kPerThread = 4;
// The weight tile's rows are padded by one: its stores walk down a column (consecutive
// threads along C_mid, for coalesced global reads), which would hit one bank at 64 floats.
constexpr int kWeightPitch = kTileOut + 1;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    cnnops_depthwise_separable_fused_kernel(const scalar_t* input, const scalar_t* dw, const scalar_t* dw_bias,
                                     const scalar_t* pw, const scalar_t* pw_bias, scalar_t* output,
                                     Strides4d in_s, Strides4d dw_s, Strides4d pw_s, Strides4d out_s,
                                     Conv2dGeometry g, int64_t out_channels, int64_t pixel_tiles) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* mid = reinterpret_cast<acc_t*>(smem_raw);  // [kChunk][kTilePixels]
  acc_t* pw_tile = mid + kChunk * kTilePixels;      // [kChunk][kWeightPitch]
  const int t = threadIdx.x;
  const int64_t n = blockIdx.x / pixel_tiles;
  const int64_t p0 = (blockIdx.x % pixel_tiles) * kTilePixels, co0 = int64_t(blockIdx.y) * kTileOut;
  const int64_t pixels = g.out_h * g.out_w, mult = g.out_channels / g.in_channels;
  const int tp = t % 16, tc = t / 16;  // this thread's pixel and output channel groups
  acc_t acc[kPerThread][kPerThread];
  for (int i = 0; i < kPerThread; ++i)
    for (int j = 0; j < kPerThread; ++j) acc[i][j] = acc_t(0);

  for (int64_t c0 = 0; c0 < g.out_channels; c0 += kChunk) {
    for (int i = t; i < kChunk * kTilePixels; i += kThreads) {  // consecutive threads: consecutive pixels
      const int64_t c = c0 + i / kTilePixels, p = p0 + i % kTilePixels;
      acc_t v = acc_t(0);
      if (c < g.out_channels && p < pixels) {
        const int64_t oh = p / g.out_w, ow = p % g.out_w, ic = c / mult;
        v = dw_bias ? acc_t(dw_bias[c]) : acc_t(0);
        for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
          const int64_t ih = source_index(oh * g.stride_h - g.pad_top + kh * g.dilation_h, g.in_h, g.mode);
          if (ih < 0) continue;
          for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
            const int64_t iw = source_index(ow * g.stride_w - g.pad_left + kw * g.dilation_w, g.in_w, g.mode);
            if (iw < 0) continue;
            v += acc_t(dw[c * dw_s.n + kh * dw_s.h + kw * dw_s.w]) * acc_t(input[in_s.offset(n, ic, ih, iw)]);
          }
        }
      }
      mid[i] = v;
    }
    for (int i = t; i < kChunk * kTileOut; i += kThreads) {  // consecutive threads: along C_mid
      const int64_t c = c0 + i % kChunk, co = co0 + i / kChunk;
      pw_tile[(i % kChunk) * kWeightPitch + i / kChunk] =
          (c < g.out_channels && co < out_channels) ? acc_t(pw[co * pw_s.n + c * pw_s.c]) : acc_t(0);
    }
    __syncthreads();
    for (int cc = 0; cc < kChunk; ++cc) {
      acc_t a[kPerThread], b[kPerThread];
      for (int i = 0; i < kPerThread; ++i) {
        a[i] = pw_tile[cc * kWeightPitch + tc * kPerThread + i];
        b[i] = mid[cc * kTilePixels + tp * kPerThread + i];
      }
      for (int i = 0; i < kPerThread; ++i)
        for (int j = 0; j < kPerThread; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }
  for (int i = 0; i < kPerThread; ++i) {
    const int64_t co = co0 + tc * kPerThread + i;
    if (co >= out_channels) continue;
    const acc_t bias = pw_bias ? acc_t(pw_bias[co]) : acc_t(0);
    for (int j = 0; j < kPerThread; ++j) {
      const int64_t p = p0 + tp * kPerThread + j;
      if (p < pixels) output[out_s.offset(n, co, p / g.out_w, p % g.out_w)] = scalar_t(acc[i][j] + bias);
    }
  }
}

}  // namespace

bool depthwise_separable_forward_fused(const at::Tensor& input, const at::Tensor& depthwise_weight,
                                       const at::Tensor* depthwise_bias, const at::Tensor& pointwise_weight,
                                       const at::Tensor* pointwise_bias, at::Tensor& output,
                                       const Conv2dGeometry& g) {
  const int64_t out_channels = pointwise_weight.size(0);
  const int64_t pixel_tiles = ceil_div(g.out_h * g.out_w, kTilePixels);
  const int64_t blocks_x = pixel_tiles * g.batch, blocks_y = ceil_div(out_channels, kTileOut);
  if (blocks_x > std::numeric_limits<int32_t>::max() || blocks_y > 65535) return false;
  // Biases read by index: contiguous copies (they are small).
  const at::Tensor dw_bias = depthwise_bias ? depthwise_bias->contiguous() : at::Tensor();
  const at::Tensor pw_bias = pointwise_bias ? pointwise_bias->contiguous() : at::Tensor();
  const dim3 grid(static_cast<unsigned>(blocks_x), static_cast<unsigned>(blocks_y));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "cnnops_depthwise_separable_fused",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const size_t smem = kChunk * (kTilePixels + kWeightPitch) * sizeof(acc_t);
    cnnops_depthwise_separable_fused_kernel<scalar_t, acc_t><<<grid, kThreads, smem, at::cuda::getCurrentCUDAStream()>>>(
        input.const_data_ptr<scalar_t>(), depthwise_weight.const_data_ptr<scalar_t>(),
        dw_bias.defined() ? dw_bias.const_data_ptr<scalar_t>() : nullptr, pointwise_weight.const_data_ptr<scalar_t>(),
        pw_bias.defined() ? pw_bias.const_data_ptr<scalar_t>() : nullptr, output.mutable_data_ptr<scalar_t>(),
        strides4d(input), strides4d(depthwise_weight), strides4d(pointwise_weight), strides4d(output), g,
        out_channels, pixel_tiles);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return true;
}

}  // namespace cuda
}  // namespace cnnops
