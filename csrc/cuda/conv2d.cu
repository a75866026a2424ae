// conv2d forward on CUDA: the implicit-GEMM core (conv2d_gemm.cuh) with
// rows = output pixels (n, oh, ow), columns = output channels of one group,
// reduction = (input channel, kh, kw); grid.z runs over groups. Bias is fused into the store.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "cuda/conv2d_gemm.cuh"
#include "cuda/conv2d_mma.cuh"

namespace cnnops {
namespace cuda {
namespace {

template <typename scalar_t>
struct ForwardProblem {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* input;
  const scalar_t* weight;
  const scalar_t* bias;  // may be null
  scalar_t* output;
  Strides4d in_s, w_s, out_s;
  Conv2dGeometry g;

  __host__ __device__ int64_t rows() const { return g.batch * g.out_pixels(); }
  __host__ __device__ int64_t cols() const { return g.out_channels_per_group(); }
  __device__ int64_t k_begin(int64_t) const { return 0; }
  __device__ int64_t k_end(int64_t) const { return g.gemm_k(); }
  __device__ acc_t load_a(int64_t group, int64_t m, int64_t k) const {
    return im2col_value(input, in_s, g, group, m, k);
  }
  __device__ acc_t load_b(int64_t group, int64_t k, int64_t n) const {
    const TapIndex t = split_tap(g, k);
    return static_cast<acc_t>(
        weight[w_s.offset(group * g.out_channels_per_group() + n, t.ic, t.kh, t.kw)]);
  }
  __device__ void store(int64_t group, int64_t m, int64_t n, acc_t v) const {
    const PixelIndex p = split_pixel(g, m);
    const int64_t oc = group * g.out_channels_per_group() + n;
    if (bias != nullptr) v += static_cast<acc_t>(bias[oc]);
    output[out_s.offset(p.n, oc, p.oh, p.ow)] = static_cast<scalar_t>(v);
  }
};

at::Tensor conv2d_cuda(const at::Tensor& input, const at::Tensor& weight,
                       const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                       c10::string_view padding_mode) {
  const Conv2dGeometry g = check_conv2d_forward("cnnops.conv2d", input, weight, bias, stride,
                                                padding, dilation, groups, padding_mode);
  check_dtype_supported("cnnops.conv2d", input, /*half_ok=*/true);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor output = at::empty({g.batch, g.out_channels, g.out_h, g.out_w},
                                input.options().memory_format(conv_memory_format(input, weight)));
  if (output.numel() == 0) return output;
  if (experimental_enabled()) {  // tensor cores, opt-in until run on a GPU
    const char* why = tc::conv2d_forward(input, weight, bias, g, output);
    if (why == nullptr) return output;
    tc::declined("cnnops.conv2d", why);
  }
  const bool has_bias = bias.has_value() && bias->defined();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "cnnops_conv2d_cuda", [&] {
    ForwardProblem<scalar_t> p{};
    p.input = input.const_data_ptr<scalar_t>();
    p.weight = weight.const_data_ptr<scalar_t>();
    p.bias = has_bias ? bias->const_data_ptr<scalar_t>() : nullptr;
    p.output = output.mutable_data_ptr<scalar_t>();
    p.in_s = strides4d(input);
    p.w_s = strides4d(weight);
    p.out_s = strides4d(output);
    p.g = g;
    launch_implicit_gemm(p, g.groups);
  });
  return output;
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(cnnops, CUDA, m) { m.impl("conv2d", &cuda::conv2d_cuda); }

}  // namespace cnnops
