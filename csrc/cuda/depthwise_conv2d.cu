// Depthwise convolution on CUDA. By default (CNNOPS_DEPTHWISE_CUDA_PATH, below) the direct
// kernels of depthwise_conv2d_direct.cu run 3x3 kernels and the tiled kernels of
// depthwise_conv2d_fast.cu the rest, where they apply (both passed every CUDA test and the
// compute-sanitizer smoke run on the H200, 2026-11-29); this file's simple kernels, written
// to be obviously correct, run where they decline (shared memory over 48 KiB; grad_input
// other than zero padding at multiplier 1) and for every call with
// CNNOPS_DEPTHWISE_CUDA_PATH=simple, which the tests use to keep them checked. This
// file's index math is common/depthwise_index.h and common/conv_index.h, which the CPU tests
// exercise, in 64 bits. Accumulation in at::opmath_type (float for half/bfloat16); no float
// atomics anywhere (deterministic).
//  - forward, NCHW output: a block computes a 16 x 16 output tile of one plane from an
//    input tile + halo staged in shared memory (padding applied by source_index while
//    staging). Falls back to the per-output kernel when the tile would not fit.
//  - forward, other layouts (channels_last): one thread per output element, threads
//    ordered as the output's memory (channel fastest for channels_last): coalesced.
//  - grad_input: a gather, one thread per input element (conv2d_grad_input_at with groups = C:
//    padded_preimages lists every virtual coordinate that maps to the element).
//  - grad_weight: one block per (output channel, tap, pixel slice) reduces its slice with
//    a fixed-order shared-memory tree into a workspace; a second kernel adds the slices in
//    order. The slice count depends only on the shapes.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "common/depthwise_checks.h"
#include "common/depthwise_index.h"
#include "common/env_choice.h"
#include "cuda/depthwise_conv2d_fast.cuh"

namespace cnnops {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kTile = 16;  // forward tile: kTile x kTile outputs, one per thread
constexpr int64_t kMaxTileBytes = 32 * 1024;

// CNNOPS_DEPTHWISE_CUDA_PATH, read on every call so that tests can force each path: auto
// (default: the direct kernels of depthwise_conv2d_direct.cu for 3x3 kernels where they
// apply, else the tiled ones of depthwise_conv2d_fast.cu), direct (the direct kernels for
// every kernel size they take), tiled (the tiled ones only, the default before 2026-11-29)
// or simple (this file's kernels everywhere).
// Why 3x3 alone: on the H200 (2026-11-29, fp32 NCHW, batch 8, same run as torch) the direct
// path ran the seven 3x3 forwards 1.05-2.3x as fast as the tiled one (8x96x112x112 stride 2:
// 0.065 -> 0.028 ms) and their forward+backward 0.95-1.5x; 5x5: forward 1.0-1.2x but
// forward+backward 0.85-1.0x; 7x7: forward 0.76-1.1x (8x96x56x56 0.056 -> 0.074 ms).
// channels_last 3x3 follows on less: one fp32 bench case (8x144x56x56: forward 0.049 ->
// 0.036 ms, forward+backward 0.295 -> 0.285) and the fp16 breakdown, no fp16 bench.
enum class KernelPath { Auto, Direct, Tiled, Simple };

KernelPath kernel_path() {
  return static_cast<KernelPath>(env_choice("cnnops.depthwise_conv2d", "CNNOPS_DEPTHWISE_CUDA_PATH",
                                            {"auto", "direct", "tiled", "simple"}));
}

// Whether the direct kernels (and the channels_last forward's 16-byte channel vectors) go first.
bool direct_first(KernelPath path, const Conv2dGeometry& g) {
  return path == KernelPath::Direct || (path == KernelPath::Auto && g.kernel_h == 3 && g.kernel_w == 3);
}

// A forward (or grad_input as a forward) by the direct kernels where chosen, else the tiled
// ones (whose channels_last kernel takes 16-byte channel vectors where the direct go first).
bool forward_by_fast_kernels(KernelPath path, const at::Tensor& input, const at::Tensor& weight,
                             const at::Tensor* bias, at::Tensor& output, const Conv2dGeometry& g, bool flip = false,
                             int64_t spread_h = 1, int64_t spread_w = 1) {
  if (path == KernelPath::Simple) return false;
  const bool direct = direct_first(path, g);
  if (direct && depthwise_forward_direct(input, weight, bias, output, g, flip, spread_h, spread_w)) return true;
  return depthwise_forward_fast(input, weight, bias, output, g, flip, spread_h, spread_w, /*wide_vectors=*/direct);
}

// Thread idx -> (n, c, h, w) in the order of a tensor's memory: channels_last walks
// c fastest, everything else w fastest.
struct Index4 {
  int64_t n, c, h, w;
};

CNNOPS_HOST_DEVICE Index4 split_index(int64_t idx, int64_t C, int64_t H, int64_t W, bool channels_last) {
  Index4 r;
  if (channels_last) {
    r.c = idx % C;
    r.w = (idx / C) % W;
    r.h = (idx / (C * W)) % H;
    r.n = idx / (C * W * H);
  } else {
    r.w = idx % W;
    r.h = (idx / W) % H;
    r.c = (idx / (W * H)) % C;
    r.n = idx / (W * H * C);
  }
  return r;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    cnnops_depthwise_forward_kernel(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                                    scalar_t* output, Strides4d in_s, Strides4d w_s, Strides4d out_s,
                                    Conv2dGeometry g, int64_t total, bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const Index4 o = split_index(idx, g.out_channels, g.out_h, g.out_w, channels_last);
  acc_t acc = depthwise_output_at<acc_t>(input, weight, in_s, w_s, g, o.n, o.c, o.h, o.w);
  if (bias != nullptr) acc += static_cast<acc_t>(bias[o.c]);
  output[out_s.offset(o.n, o.c, o.h, o.w)] = static_cast<scalar_t>(acc);
}

// One block = one kTile x kTile output tile of plane (n, oc); the input rows and columns
// it reads (tile_h x tile_w, padding resolved) are staged in dynamic shared memory.
template <typename scalar_t>
__global__ void __launch_bounds__(kTile * kTile)
    cnnops_depthwise_forward_tiled_kernel(const scalar_t* input, const scalar_t* weight,
                                          const scalar_t* bias, scalar_t* output, Strides4d in_s,
                                          Strides4d w_s, Strides4d out_s, Conv2dGeometry g,
                                          int64_t tiles_h, int64_t tiles_w, int tile_h, int tile_w) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ unsigned char smem_raw[];
  acc_t* tile = reinterpret_cast<acc_t*>(smem_raw);
  const int64_t block = blockIdx.x;
  const int64_t plane = block / (tiles_h * tiles_w);
  const int64_t t = block % (tiles_h * tiles_w);
  const int64_t n = plane / g.out_channels, oc = plane % g.out_channels;
  const int64_t c = oc / (g.out_channels / g.in_channels);
  const int64_t oh0 = (t / tiles_w) * kTile, ow0 = (t % tiles_w) * kTile;
  // Virtual (padded) coordinates of the tile's first input row and column.
  const int64_t vh0 = oh0 * g.stride_h - g.pad_top, vw0 = ow0 * g.stride_w - g.pad_left;
  const int tid = threadIdx.y * kTile + threadIdx.x;
  for (int i = tid; i < tile_h * tile_w; i += kTile * kTile) {
    const int r = i / tile_w, col = i % tile_w;
    // The last tiles overhang the output; what lies past the padded extent is read by no
    // real output, and source_index is only defined inside it.
    const bool inside = vh0 + r <= g.in_h - 1 + g.pad_bottom && vw0 + col <= g.in_w - 1 + g.pad_right;
    const int64_t ih = inside ? source_index(vh0 + r, g.in_h, g.mode) : -1;
    const int64_t iw = inside ? source_index(vw0 + col, g.in_w, g.mode) : -1;
    tile[i] = (ih < 0 || iw < 0) ? acc_t(0) : static_cast<acc_t>(input[in_s.offset(n, c, ih, iw)]);
  }
  __syncthreads();
  const int64_t oh = oh0 + threadIdx.y, ow = ow0 + threadIdx.x;
  if (oh >= g.out_h || ow >= g.out_w) return;
  acc_t acc = bias != nullptr ? static_cast<acc_t>(bias[oc]) : acc_t(0);
  for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
    const acc_t* row = tile + (threadIdx.y * g.stride_h + kh * g.dilation_h) * tile_w + threadIdx.x * g.stride_w;
    for (int64_t kw = 0; kw < g.kernel_w; ++kw)
      acc += row[kw * g.dilation_w] * static_cast<acc_t>(weight[w_s.offset(oc, 0, kh, kw)]);
  }
  output[out_s.offset(n, oc, oh, ow)] = static_cast<scalar_t>(acc);
}

at::Tensor depthwise_conv2d_cuda(const at::Tensor& input, const at::Tensor& weight,
                                 const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation,
                                 c10::string_view padding_mode) {
  const char* op = "cnnops.depthwise_conv2d";
  const Conv2dGeometry g = check_depthwise_forward(op, input, weight, bias, stride, padding, dilation,
                                                   padding_mode, /*half_ok=*/true);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::MemoryFormat fmt = conv_memory_format(input, weight);
  at::Tensor output = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input.options().memory_format(fmt));
  const int64_t total = output.numel();
  if (total == 0) return output;
  const bool has_bias = bias.has_value() && bias->defined();
  // The kernels index the bias as bias[oc]: a strided (sliced, expanded) bias is copied.
  const at::Tensor bias_values = has_bias ? bias->contiguous() : at::Tensor();
  if (forward_by_fast_kernels(kernel_path(), input, weight, has_bias ? &bias_values : nullptr, output, g))
    return output;
  const bool channels_last = fmt == at::MemoryFormat::ChannelsLast;
  const int64_t tile_h = (kTile - 1) * g.stride_h + (g.kernel_h - 1) * g.dilation_h + 1;
  const int64_t tile_w = (kTile - 1) * g.stride_w + (g.kernel_w - 1) * g.dilation_w + 1;
  const int64_t tiles_h = (g.out_h + kTile - 1) / kTile, tiles_w = (g.out_w + kTile - 1) / kTile;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "cnnops_depthwise_conv2d_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* b = has_bias ? bias_values.const_data_ptr<scalar_t>() : nullptr;
    const int64_t tile_bytes = tile_h * tile_w * static_cast<int64_t>(sizeof(acc_t));
    const int64_t blocks = g.batch * g.out_channels * tiles_h * tiles_w;
    if (!channels_last && tile_bytes <= kMaxTileBytes && blocks <= INT32_MAX) {
      cnnops_depthwise_forward_tiled_kernel<scalar_t>
          <<<static_cast<unsigned>(blocks), dim3(kTile, kTile), static_cast<size_t>(tile_bytes),
             at::cuda::getCurrentCUDAStream()>>>(
              input.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(), b,
              output.mutable_data_ptr<scalar_t>(), strides4d(input), strides4d(weight), strides4d(output), g,
              tiles_h, tiles_w, static_cast<int>(tile_h), static_cast<int>(tile_w));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      const int64_t nblocks = (total + kThreads - 1) / kThreads;
      TORCH_CHECK(nblocks <= INT32_MAX, op, ": output too large (", total, " elements)");
      cnnops_depthwise_forward_kernel<scalar_t>
          <<<static_cast<unsigned>(nblocks), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
              input.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(), b,
              output.mutable_data_ptr<scalar_t>(), strides4d(input), strides4d(weight), strides4d(output), g,
              total, channels_last);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return output;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    cnnops_depthwise_grad_input_kernel(const scalar_t* grad_output, const scalar_t* weight,
                                       scalar_t* grad_input, Strides4d go_s, Strides4d w_s,
                                       Strides4d gi_s, Conv2dGeometry g, int64_t total, bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const Index4 i = split_index(idx, g.in_channels, g.in_h, g.in_w, channels_last);
  const acc_t acc = conv2d_grad_input_at<acc_t>(grad_output, weight, go_s, w_s, g, i.n, i.c, i.h, i.w);
  grad_input[gi_s.offset(i.n, i.c, i.h, i.w)] = static_cast<scalar_t>(acc);
}

at::Tensor depthwise_conv2d_grad_input_cuda(const at::Tensor& grad_output, const at::Tensor& weight,
                                            at::IntArrayRef input_size, at::IntArrayRef stride,
                                            at::IntArrayRef padding, at::IntArrayRef dilation,
                                            c10::string_view padding_mode, bool channels_last) {
  const char* op = "cnnops.depthwise_conv2d_grad_input";
  const Conv2dGeometry g = check_depthwise_grad_input(op, grad_output, weight, input_size, stride, padding,
                                                      dilation, padding_mode, /*half_ok=*/true);
  const c10::cuda::CUDAGuard guard(grad_output.device());
  at::Tensor grad_input =
      at::empty(input_size, grad_output.options().memory_format(layout_from_flag(channels_last)));
  const int64_t total = grad_input.numel();
  if (total == 0) return grad_input;
  const KernelPath path = kernel_path();
  if (grad_input_as_forward(g) && forward_by_fast_kernels(path, grad_output, weight, nullptr, grad_input,
                                                          flipped_forward_geometry(g), /*flip=*/true, g.stride_h,
                                                          g.stride_w))
    return grad_input;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  TORCH_CHECK(blocks <= INT32_MAX, op, ": input too large (", total, " elements)");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(), "cnnops_depthwise_grad_input_cuda", [&] {
    cnnops_depthwise_grad_input_kernel<scalar_t>
        <<<static_cast<unsigned>(blocks), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            grad_output.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
            grad_input.mutable_data_ptr<scalar_t>(), strides4d(grad_output), strides4d(weight),
            strides4d(grad_input), g, total, channels_last);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_input;
}

// Block (oc, tap, slice): sum over the slice's pixels (n, oh, ow) of
// grad_output(n, oc, oh, ow) * input(n, c, ih, iw) at the tap, written to partials.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    cnnops_depthwise_grad_weight_kernel(const scalar_t* grad_output, const scalar_t* input, acc_t* partials,
                                        Strides4d go_s, Strides4d in_s, Conv2dGeometry g, int64_t slices,
                                        int64_t slice_len) {
  __shared__ acc_t partial[kThreads];
  const int64_t taps = g.kernel_h * g.kernel_w;
  const int64_t block = blockIdx.x;
  const int64_t slice = block % slices;
  const int64_t tap = (block / slices) % taps;
  const int64_t oc = block / (slices * taps);
  const int64_t c = oc / (g.out_channels / g.in_channels);
  const int64_t kh = tap / g.kernel_w, kw = tap % g.kernel_w;
  const int64_t pixels = g.batch * g.out_h * g.out_w;
  const int64_t begin = slice * slice_len;
  const int64_t end = begin + slice_len < pixels ? begin + slice_len : pixels;
  acc_t sum = 0;
  for (int64_t p = begin + threadIdx.x; p < end; p += kThreads) {
    const int64_t ow = p % g.out_w, oh = (p / g.out_w) % g.out_h, n = p / (g.out_w * g.out_h);
    const int64_t ih = source_index(oh * g.stride_h - g.pad_top + kh * g.dilation_h, g.in_h, g.mode);
    const int64_t iw = source_index(ow * g.stride_w - g.pad_left + kw * g.dilation_w, g.in_w, g.mode);
    if (ih < 0 || iw < 0) continue;
    sum += static_cast<acc_t>(grad_output[go_s.offset(n, oc, oh, ow)]) *
           static_cast<acc_t>(input[in_s.offset(n, c, ih, iw)]);
  }
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) partials[(oc * taps + tap) * slices + slice] = partial[0];
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    cnnops_depthwise_grad_weight_reduce_kernel(const acc_t* partials, scalar_t* grad_weight, Strides4d gw_s,
                                               Conv2dGeometry g, int64_t slices) {
  const int64_t taps = g.kernel_h * g.kernel_w;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= g.out_channels * taps) return;
  acc_t sum = 0;
  for (int64_t s = 0; s < slices; ++s) sum += partials[idx * slices + s];
  const int64_t oc = idx / taps, tap = idx % taps;
  grad_weight[gw_s.offset(oc, 0, tap / g.kernel_w, tap % g.kernel_w)] = static_cast<scalar_t>(sum);
}

at::Tensor depthwise_conv2d_grad_weight_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                             at::IntArrayRef weight_size, at::IntArrayRef stride,
                                             at::IntArrayRef padding, at::IntArrayRef dilation,
                                             c10::string_view padding_mode, bool channels_last) {
  const char* op = "cnnops.depthwise_conv2d_grad_weight";
  const Conv2dGeometry g = check_depthwise_grad_weight(op, grad_output, input, weight_size, stride, padding,
                                                       dilation, padding_mode, /*half_ok=*/true);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor grad_weight = at::empty(weight_size, input.options().memory_format(layout_from_flag(channels_last)));
  const int64_t taps = g.kernel_h * g.kernel_w;
  const int64_t pixels = g.batch * g.out_h * g.out_w;
  if (pixels == 0) return grad_weight.zero_();
  // Slices of about 8 pixels per thread, at most 64; fixed by the shapes (reproducible).
  const int64_t slices = std::max<int64_t>(1, std::min<int64_t>(64, pixels / (8 * kThreads)));
  const int64_t slice_len = (pixels + slices - 1) / slices;
  const int64_t blocks = g.out_channels * taps * slices;
  TORCH_CHECK(blocks <= INT32_MAX, op, ": too many (channel, tap) pairs (", g.out_channels * taps, ")");
  at::Tensor partials;
  int64_t fast_slices = 0;
  const KernelPath path = kernel_path();
  const bool fast =
      (direct_first(path, g) && depthwise_grad_weight_partials_direct(grad_output, input, g, partials, fast_slices)) ||
      (path != KernelPath::Simple && depthwise_grad_weight_partials_fast(grad_output, input, g, partials, fast_slices));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "cnnops_depthwise_grad_weight_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (!fast) {
      partials = at::empty({g.out_channels * taps * slices},
                           input.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
      cnnops_depthwise_grad_weight_kernel<scalar_t, acc_t>
          <<<static_cast<unsigned>(blocks), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
              grad_output.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(),
              partials.mutable_data_ptr<acc_t>(), strides4d(grad_output), strides4d(input), g, slices, slice_len);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const int64_t total = g.out_channels * taps;
    cnnops_depthwise_grad_weight_reduce_kernel<scalar_t, acc_t>
        <<<static_cast<unsigned>((total + kThreads - 1) / kThreads), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            partials.const_data_ptr<acc_t>(), grad_weight.mutable_data_ptr<scalar_t>(), strides4d(grad_weight), g,
            fast ? fast_slices : slices);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_weight;
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(cnnops, CUDA, m) {
  m.impl("depthwise_conv2d", &cuda::depthwise_conv2d_cuda);
  m.impl("depthwise_conv2d_grad_input", &cuda::depthwise_conv2d_grad_input_cuda);
  m.impl("depthwise_conv2d_grad_weight", &cuda::depthwise_conv2d_grad_weight_cuda);
}

}  // namespace cnnops
