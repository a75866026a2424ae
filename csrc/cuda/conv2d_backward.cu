// conv2d gradients on CUDA, all deterministic (no float atomics):
//  - grad_input: a gather kernel, one thread per input element, running
//    conv2d_grad_input_at() (common/conv_index.h): padded_preimages() lists the virtual
//    coordinates that map to the element, so reflect/replicate/circular need no scatter.
//  - grad_weight: the implicit-GEMM core with rows = output channels, columns =
//    (ic, kh, kw), reduction = output pixels, split into slices whose partial sums go to
//    a float workspace and are added in slice order by a second kernel.
//  - grad_bias: one block per channel, a fixed-order tree reduction.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>

#include "cuda/conv2d_gemm.cuh"
#include "cuda/conv2d_mma.cuh"

namespace cnnops {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    cnnops_conv2d_grad_input_kernel(const scalar_t* grad_output, const scalar_t* weight,
                                    scalar_t* grad_input, Strides4d go_s, Strides4d w_s,
                                    Strides4d gi_s, Conv2dGeometry g, int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const int64_t iw = idx % g.in_w;
  const int64_t ih = (idx / g.in_w) % g.in_h;
  const int64_t c = (idx / (g.in_w * g.in_h)) % g.in_channels;
  const int64_t n = idx / (g.in_w * g.in_h * g.in_channels);
  const acc_t acc = conv2d_grad_input_at<acc_t>(grad_output, weight, go_s, w_s, g, n, c, ih, iw);
  grad_input[gi_s.offset(n, c, ih, iw)] = static_cast<scalar_t>(acc);
}

at::Tensor conv2d_grad_input_cuda(const at::Tensor& grad_output, const at::Tensor& weight,
                                  at::IntArrayRef input_size, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation,
                                  int64_t groups, c10::string_view padding_mode, bool channels_last) {
  const char* op = "cnnops.conv2d_grad_input";
  const Conv2dGeometry g = check_conv2d_grad_input(op, grad_output, weight, input_size, stride,
                                                   padding, dilation, groups, padding_mode,
                                                   /*half_ok=*/true);
  const c10::cuda::CUDAGuard guard(grad_output.device());
  at::Tensor grad_input =
      at::empty(input_size, grad_output.options().memory_format(layout_from_flag(channels_last)));
  const int64_t total = grad_input.numel();
  if (total == 0) return grad_input;
  if (experimental_enabled()) {  // tensor cores, opt-in until run on a GPU
    const char* why = tc::conv2d_grad_input(grad_output, weight, g, grad_input);
    if (why == nullptr) return grad_input;
    tc::declined(op, why);
  }
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  TORCH_CHECK(blocks <= INT32_MAX, op, ": input too large (", total, " elements)");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(), "cnnops_conv2d_grad_input_cuda", [&] {
    cnnops_conv2d_grad_input_kernel<scalar_t>
        <<<static_cast<unsigned>(blocks), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            grad_output.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
            grad_input.mutable_data_ptr<scalar_t>(), strides4d(grad_output), strides4d(weight),
            strides4d(grad_input), g, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_input;
}

// grad_weight[oc, k] = sum over pixels m of grad_output(m, oc) * im2col(input)(m, k), for
// the pixel slice [slice * slice_len, (slice + 1) * slice_len) of grid.z = group * slices + slice.
template <typename scalar_t>
struct GradWeightProblem {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* grad_output;
  const scalar_t* input;
  acc_t* partials;  // (slices, out_channels, K), contiguous
  Strides4d go_s, in_s;
  Conv2dGeometry g;
  int64_t slices, slice_len;

  __host__ __device__ int64_t rows() const { return g.out_channels_per_group(); }
  __host__ __device__ int64_t cols() const { return g.gemm_k(); }
  __device__ int64_t pixels() const { return g.batch * g.out_pixels(); }
  __device__ int64_t k_begin(int64_t z) const { return (z % slices) * slice_len; }
  __device__ int64_t k_end(int64_t z) const {
    const int64_t end = (z % slices + 1) * slice_len;
    return end < pixels() ? end : pixels();
  }
  __device__ acc_t load_a(int64_t z, int64_t oc, int64_t m) const {
    const PixelIndex p = split_pixel(g, m);
    const int64_t group = z / slices;
    return static_cast<acc_t>(
        grad_output[go_s.offset(p.n, group * g.out_channels_per_group() + oc, p.oh, p.ow)]);
  }
  __device__ acc_t load_b(int64_t z, int64_t m, int64_t k) const {
    return im2col_value(input, in_s, g, z / slices, m, k);
  }
  __device__ void store(int64_t z, int64_t oc, int64_t k, acc_t v) const {
    const int64_t group = z / slices, slice = z % slices;
    partials[(slice * g.out_channels + group * g.out_channels_per_group() + oc) * g.gemm_k() + k] = v;
  }
};

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    cnnops_conv2d_grad_weight_reduce_kernel(const acc_t* partials, scalar_t* grad_weight,
                                            Strides4d gw_s, Conv2dGeometry g, int64_t slices) {
  const int64_t K = g.gemm_k();
  const int64_t total = g.out_channels * K;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  acc_t sum = 0;
  for (int64_t s = 0; s < slices; ++s) sum += partials[s * total + idx];
  const int64_t oc = idx / K;
  const TapIndex t = split_tap(g, idx % K);
  grad_weight[gw_s.offset(oc, t.ic, t.kh, t.kw)] = static_cast<scalar_t>(sum);
}

at::Tensor conv2d_grad_weight_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                   at::IntArrayRef weight_size, at::IntArrayRef stride,
                                   at::IntArrayRef padding, at::IntArrayRef dilation,
                                   int64_t groups, c10::string_view padding_mode, bool channels_last) {
  const char* op = "cnnops.conv2d_grad_weight";
  const Conv2dGeometry g = check_conv2d_grad_weight(op, grad_output, input, weight_size, stride,
                                                    padding, dilation, groups, padding_mode,
                                                    /*half_ok=*/true);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor grad_weight =
      at::empty(weight_size, input.options().memory_format(layout_from_flag(channels_last)));

  if (grad_weight.numel() > 0 && experimental_enabled()) {  // opt-in until run on a GPU
    const char* why = tc::conv2d_grad_weight(grad_output, input, g, grad_weight);
    if (why == nullptr) return grad_weight;
    tc::declined(op, why);
  }

  // Enough slices of the pixel reduction to fill the GPU, within the workspace and grid.z
  // limits; the slice count depends only on the shapes, so results are reproducible.
  const int64_t pixels = g.batch * g.out_pixels();
  const int64_t tiles = ((g.out_channels_per_group() + kTileM - 1) / kTileM) *
                        ((g.gemm_k() + kTileN - 1) / kTileN) * g.groups;
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t workspace_per_slice = g.out_channels * g.gemm_k();
  int64_t slices = std::max<int64_t>(1, (4 * sms + tiles - 1) / tiles);
  slices = std::min<int64_t>(slices, std::max<int64_t>(1, pixels / 256));
  slices = std::min<int64_t>(slices, std::max<int64_t>(1, (64 << 20) / std::max<int64_t>(workspace_per_slice, 1)));
  slices = std::min<int64_t>(slices, kMaxGridZ / g.groups);
  TORCH_CHECK(slices >= 1, op, ": groups = ", g.groups, " exceeds the launch limit of ", kMaxGridZ);
  const int64_t slice_len = pixels == 0 ? 0 : ((pixels + slices - 1) / slices + kTileK - 1) / kTileK * kTileK;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "cnnops_conv2d_grad_weight_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor partials = at::zeros({slices, g.out_channels, g.gemm_k()},
                                    input.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    if (pixels > 0) {
      GradWeightProblem<scalar_t> p{};
      p.grad_output = grad_output.const_data_ptr<scalar_t>();
      p.input = input.const_data_ptr<scalar_t>();
      p.partials = partials.mutable_data_ptr<acc_t>();
      p.go_s = strides4d(grad_output);
      p.in_s = strides4d(input);
      p.g = g;
      p.slices = slices;
      p.slice_len = slice_len;
      launch_implicit_gemm(p, g.groups * slices);
    }
    const int64_t total = g.out_channels * g.gemm_k();
    const int64_t blocks = (total + kThreads - 1) / kThreads;
    cnnops_conv2d_grad_weight_reduce_kernel<scalar_t, acc_t>
        <<<static_cast<unsigned>(blocks), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            partials.const_data_ptr<acc_t>(), grad_weight.mutable_data_ptr<scalar_t>(),
            strides4d(grad_weight), g, slices);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_weight;
}

// One block per channel; each thread strides over (n, spatial), then a shared-memory tree.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    cnnops_conv2d_grad_bias_kernel(const scalar_t* grad_output, scalar_t* grad_bias,
                                   Strides4d s, int64_t batch, int64_t height, int64_t width) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t partial[kThreads];
  const int64_t c = blockIdx.x;
  const int64_t per_image = height * width, total = batch * per_image;
  acc_t sum = 0;
  for (int64_t i = threadIdx.x; i < total; i += kThreads) {
    const int64_t n = i / per_image, hw = i % per_image;
    sum += static_cast<acc_t>(grad_output[s.offset(n, c, hw / width, hw % width)]);
  }
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) grad_bias[c] = static_cast<scalar_t>(partial[0]);
}

at::Tensor conv2d_grad_bias_cuda(const at::Tensor& grad_output) {
  const char* op = "cnnops.conv2d_grad_bias";
  const c10::cuda::CUDAGuard guard(grad_output.device());
  const at::Tensor go = check_conv2d_grad_bias(op, grad_output, /*half_ok=*/true);
  const int64_t channels = go.size(1);
  at::Tensor grad_bias = at::empty({channels}, grad_output.options());
  if (channels == 0) return grad_bias;
  TORCH_CHECK(channels <= INT32_MAX, op, ": too many channels (", channels, ")");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, go.scalar_type(), "cnnops_conv2d_grad_bias_cuda", [&] {
    cnnops_conv2d_grad_bias_kernel<scalar_t>
        <<<static_cast<unsigned>(channels), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            go.const_data_ptr<scalar_t>(), grad_bias.mutable_data_ptr<scalar_t>(), strides4d(go),
            go.size(0), go.size(2), go.size(3));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_bias;
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(cnnops, CUDA, m) {
  m.impl("conv2d_grad_input", &cuda::conv2d_grad_input_cuda);
  m.impl("conv2d_grad_weight", &cuda::conv2d_grad_weight_cuda);
  m.impl("conv2d_grad_bias", &cuda::conv2d_grad_bias_cuda);
}

}  // namespace cnnops
