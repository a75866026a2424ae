// Tensor-core conv2d input gradient (opt-in; kernel in conv2d_mma.cuh): a gather over the
// output pixels, grad_input(n, iy, ix, ic) = sum over taps (kh, kw) and out channels oc of
// grad_output(n, oy, ox, oc) W(oc, ic, kh, kw), where oy = (iy + pad - kh dilation) / stride
// when that divides (output_index_for_tap). Zeros padding only: the other modes map
// several virtual coordinates onto one input element (padded_preimages), which does not
// fit a fixed K; they take the default gather kernel.
#include "cuda/conv2d_mma.cuh"

namespace cnnops {
namespace cuda {
namespace tc {
namespace {

template <typename T>
void run_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                    const Conv2dGeometry& g, const at::Tensor& grad_input) {
  const at::Tensor wpack = pack_weight<T>(weight, g, /*dgrad=*/true);
  ConvGemmParams p{};
  p.act = grad_output.const_data_ptr();
  p.wpack = wpack.const_data_ptr();
  p.bias = nullptr;
  p.out = grad_input.mutable_data_ptr();
  p.act_sn = grad_output.stride(0);
  p.act_sh = grad_output.stride(2);
  p.act_sw = grad_output.stride(3);
  p.out_sn = grad_input.stride(0);
  p.out_sh = grad_input.stride(2);
  p.out_sw = grad_input.stride(3);
  p.act_h = static_cast<int>(g.out_h);
  p.act_w = static_cast<int>(g.out_w);
  p.rows_h = static_cast<int>(g.in_h);
  p.rows_w = static_cast<int>(g.in_w);
  p.M = static_cast<int>(g.batch * g.in_h * g.in_w);
  p.N = static_cast<int>(g.in_channels_per_group());
  p.C = static_cast<int>(g.out_channels_per_group());
  p.K = static_cast<int>(g.kernel_h * g.kernel_w * g.out_channels_per_group());
  p.kernel_w = static_cast<int>(g.kernel_w);
  p.stride_h = static_cast<int>(g.stride_h);
  p.stride_w = static_cast<int>(g.stride_w);
  p.pad_h = static_cast<int>(g.pad_top);
  p.pad_w = static_cast<int>(g.pad_left);
  p.dil_h = static_cast<int>(g.dilation_h);
  p.dil_w = static_cast<int>(g.dilation_w);
  p.mode = PaddingMode::Zeros;
  launch_conv_gemm<T, /*kDgrad=*/true>(p, g.groups);
}

}  // namespace

const char* conv2d_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                              const Conv2dGeometry& g, const at::Tensor& grad_input) {
  const at::ScalarType st = grad_output.scalar_type();
  if (const char* why = dtype_declined(st)) return why;
  if (g.mode != PaddingMode::Zeros) return "padding_mode is not 'zeros'";
  const int64_t elems = 16 / grad_output.element_size();
  if (g.out_channels_per_group() % elems != 0) {
    return "out_channels / groups is not a multiple of 8 (float16, bfloat16) or 4 (float32)";
  }
  if (!channels_inner(grad_output, elems)) return "grad_output is not channels_last (16-byte aligned)";
  if (grad_input.stride(1) != 1) return "grad_input is not channels_last";
  if (!geometry_fits_int32(g)) return "sizes exceed 32-bit indexing or 65535 groups";
  if ((g.in_channels_per_group() + kBlockN - 1) / kBlockN > 65535) return "too many in channels";
  switch (st) {
    case at::kHalf: run_grad_input<at::Half>(grad_output, weight, g, grad_input); break;
    case at::kBFloat16: run_grad_input<at::BFloat16>(grad_output, weight, g, grad_input); break;
    default: run_grad_input<float>(grad_output, weight, g, grad_input); break;
  }
  return nullptr;
}

}  // namespace tc
}  // namespace cuda
}  // namespace cnnops
