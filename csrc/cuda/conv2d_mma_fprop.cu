// Tensor-core conv2d forward (opt-in; kernel in conv2d_mma.cuh): channels_last input,
// in_channels per group a multiple of 8 (fp16/bf16) or 4 (TF32), any padding mode,
// stride, dilation and groups, bias fused into the store.
#include "cuda/conv2d_mma.cuh"

namespace cnnops {
namespace cuda {
namespace tc {
namespace {

template <typename T>
void run_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                 const Conv2dGeometry& g, const at::Tensor& output) {
  // A channels_last-contiguous weight already is [oc][kh][kw][ic]: no packing.
  const bool krsc = weight.is_contiguous(at::MemoryFormat::ChannelsLast) &&
                    reinterpret_cast<uintptr_t>(weight.const_data_ptr()) % 16 == 0;
  const at::Tensor wpack = krsc ? weight : pack_weight<T>(weight, g, /*dgrad=*/false);
  ConvGemmParams p{};
  p.act = input.const_data_ptr();
  p.wpack = wpack.const_data_ptr();
  p.bias = bias.defined() ? bias.const_data_ptr() : nullptr;
  p.out = output.mutable_data_ptr();
  p.act_sn = input.stride(0);
  p.act_sh = input.stride(2);
  p.act_sw = input.stride(3);
  p.out_sn = output.stride(0);
  p.out_sh = output.stride(2);
  p.out_sw = output.stride(3);
  p.act_h = static_cast<int>(g.in_h);
  p.act_w = static_cast<int>(g.in_w);
  p.rows_h = static_cast<int>(g.out_h);
  p.rows_w = static_cast<int>(g.out_w);
  p.M = static_cast<int>(g.batch * g.out_pixels());
  p.N = static_cast<int>(g.out_channels_per_group());
  p.C = static_cast<int>(g.in_channels_per_group());
  p.K = static_cast<int>(g.gemm_k());
  p.kernel_w = static_cast<int>(g.kernel_w);
  p.stride_h = static_cast<int>(g.stride_h);
  p.stride_w = static_cast<int>(g.stride_w);
  p.pad_h = static_cast<int>(g.pad_top);
  p.pad_w = static_cast<int>(g.pad_left);
  p.dil_h = static_cast<int>(g.dilation_h);
  p.dil_w = static_cast<int>(g.dilation_w);
  p.mode = g.mode;
  launch_conv_gemm<T, /*kDgrad=*/false>(p, g.groups);
}

}  // namespace

const char* conv2d_forward(const at::Tensor& input, const at::Tensor& weight,
                           const c10::optional<at::Tensor>& bias, const Conv2dGeometry& g,
                           const at::Tensor& output) {
  const at::ScalarType st = input.scalar_type();
  if (const char* why = dtype_declined(st)) return why;
  const int64_t elems = 16 / input.element_size();
  if (g.in_channels_per_group() % elems != 0) {
    return "in_channels / groups is not a multiple of 8 (float16, bfloat16) or 4 (float32)";
  }
  if (!channels_inner(input, elems)) return "input is not channels_last (16-byte aligned)";
  if (output.stride(1) != 1) return "output is not channels_last";
  if (!geometry_fits_int32(g)) return "sizes exceed 32-bit indexing or 65535 groups";
  if ((g.out_channels_per_group() + kBlockN - 1) / kBlockN > 65535) return "too many out channels";
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  switch (st) {
    case at::kHalf: run_forward<at::Half>(input, weight, b, g, output); break;
    case at::kBFloat16: run_forward<at::BFloat16>(input, weight, b, g, output); break;
    default: run_forward<float>(input, weight, b, g, output); break;
  }
  return nullptr;
}

}  // namespace tc
}  // namespace cuda
}  // namespace cnnops
