// conv_transpose2d on the CPU: the conv2d CPU kernels (common/conv_transpose2d_impl.h) plus
// `finish`, which adds the bias, fills the rows no tap reaches with zeros and changes the
// memory format where needed, through strides.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>

#include "common/conv_transpose2d_impl.h"
#include "common/conv_transpose_index.h"

namespace cnnops {
namespace {

constexpr int64_t kMinElementsPerTask = 1 << 15;

// In-place bias add on a tensor dense in NCHW or channels_last: vectorized contiguous runs.
template <typename scalar_t>
void add_bias_dense(const at::Tensor& dst, const at::Tensor& bias) {
  using Vec = at::vec::Vectorized<scalar_t>;
  const int64_t N = dst.size(0), C = dst.size(1), HW = dst.size(2) * dst.size(3);
  scalar_t* d = dst.mutable_data_ptr<scalar_t>();
  const at::Tensor bc = bias.contiguous();
  const scalar_t* b = bc.const_data_ptr<scalar_t>();
  if (dst.is_contiguous()) {  // planes of HW values, one bias each
    at::parallel_for(0, N * C, std::max<int64_t>(1, kMinElementsPerTask / std::max<int64_t>(HW, 1)),
                     [&](int64_t begin, int64_t end) {
                       for (int64_t p = begin; p < end; ++p) {
                         const Vec bv(b[p % C]);
                         scalar_t* plane = d + p * HW;
                         at::vec::map([bv](Vec x) { return x + bv; }, plane, plane, HW);
                       }
                     });
  } else {  // channels_last: pixels of C values, the bias vector each
    at::parallel_for(0, N * HW, std::max<int64_t>(1, kMinElementsPerTask / std::max<int64_t>(C, 1)),
                     [&](int64_t begin, int64_t end) {
                       for (int64_t p = begin; p < end; ++p) {
                         scalar_t* pixel = d + p * C;
                         at::vec::map2([](Vec x, Vec y) { return x + y; }, pixel, pixel, b, C);
                       }
                     });
  }
}

template <typename scalar_t>
void finish_strided(const at::Tensor& src, const at::Tensor& bias, const at::Tensor& dst) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t N = dst.size(0), C = dst.size(1), H = dst.size(2), W = dst.size(3);
  const scalar_t* s = src.defined() ? src.const_data_ptr<scalar_t>() : nullptr;
  const int64_t reach_h = src.defined() ? src.size(2) : 0, reach_w = src.defined() ? src.size(3) : 0;
  const Strides4d ss = src.defined() ? strides4d(src) : Strides4d{0, 0, 0, 0};
  const Strides4d ds = strides4d(dst);
  const scalar_t* b = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
  const int64_t bs = bias.defined() ? bias.stride(0) : 0;
  scalar_t* d = dst.mutable_data_ptr<scalar_t>();
  auto value = [&](int64_t n, int64_t c, int64_t h, int64_t w) {
    opmath_t v = (s != nullptr && within_reach(h, w, reach_h, reach_w))
                     ? static_cast<opmath_t>(s[ss.offset(n, c, h, w)])
                     : opmath_t(0);
    if (b != nullptr) v += static_cast<opmath_t>(b[c * bs]);
    d[ds.offset(n, c, h, w)] = static_cast<scalar_t>(v);
  };
  const bool channels_inner = ds.c < ds.w;  // the innermost loop walks the smallest stride
  at::parallel_for(0, N * H, std::max<int64_t>(1, kMinElementsPerTask / std::max<int64_t>(C * W, 1)),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t row = begin; row < end; ++row) {
                       const int64_t n = row / H, h = row % H;
                       if (channels_inner) {
                         for (int64_t w = 0; w < W; ++w)
                           for (int64_t c = 0; c < C; ++c) value(n, c, h, w);
                       } else {
                         for (int64_t c = 0; c < C; ++c)
                           for (int64_t w = 0; w < W; ++w) value(n, c, h, w);
                       }
                     }
                   });
}

void finish_cpu(const at::Tensor& src, const at::Tensor& bias, const at::Tensor& dst) {
  if (dst.numel() == 0) return;
  const bool in_place_bias = src.defined() && src.is_same(dst) && bias.defined() &&
                             (dst.is_contiguous() || dst.is_contiguous(at::MemoryFormat::ChannelsLast));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, dst.scalar_type(), "cnnops_conv_transpose2d_finish_cpu", [&] {
    if (in_place_bias && !std::is_same_v<scalar_t, at::BFloat16>) {
      add_bias_dense<scalar_t>(dst, bias);
    } else {
      finish_strided<scalar_t>(src, bias, dst);
    }
  });
}

const ConvTransposeBackend& cpu_backend(bool gather = false) {
  static const ConvTransposeBackend be{c10::DispatchKeySet(c10::DispatchKey::CPU), /*half_ok=*/false,
                                       &finish_cpu, false};
  static const ConvTransposeBackend gather_be{c10::DispatchKeySet(c10::DispatchKey::CPU), false,
                                              &finish_cpu, true};
  return gather ? gather_be : be;
}

at::Tensor conv_transpose2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                                const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef output_padding, int64_t groups,
                                at::IntArrayRef dilation) {
  return conv_transpose2d_forward_impl(cpu_backend(), "cnnops.conv_transpose2d", input, weight, bias, stride,
                                       padding, output_padding, groups, dilation);
}

at::Tensor conv_transpose2d_gather_cpu(const at::Tensor& input, const at::Tensor& weight,
                                       const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                       at::IntArrayRef padding, at::IntArrayRef output_padding, int64_t groups,
                                       at::IntArrayRef dilation) {
  return conv_transpose2d_forward_impl(cpu_backend(/*gather=*/true), "cnnops._conv_transpose2d_gather", input,
                                       weight, bias, stride, padding, output_padding, groups, dilation);
}

at::Tensor conv_transpose2d_grad_input_cpu(const at::Tensor& grad_output, const at::Tensor& weight,
                                           at::IntArrayRef input_size, at::IntArrayRef stride,
                                           at::IntArrayRef padding, at::IntArrayRef output_padding,
                                           int64_t groups, at::IntArrayRef dilation, bool channels_last) {
  return conv_transpose2d_grad_input_impl(cpu_backend(), grad_output, weight, input_size, stride, padding,
                                          output_padding, groups, dilation, channels_last);
}

at::Tensor conv_transpose2d_grad_weight_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                            at::IntArrayRef weight_size, at::IntArrayRef stride,
                                            at::IntArrayRef padding, at::IntArrayRef output_padding,
                                            int64_t groups, at::IntArrayRef dilation, bool channels_last) {
  return conv_transpose2d_grad_weight_impl(cpu_backend(), grad_output, input, weight_size, stride, padding,
                                           output_padding, groups, dilation, channels_last);
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnops, CPU, m) {
  m.impl("conv_transpose2d", &conv_transpose2d_cpu);
  m.impl("conv_transpose2d_grad_input", &conv_transpose2d_grad_input_cpu);
  m.impl("conv_transpose2d_grad_weight", &conv_transpose2d_grad_weight_cpu);
  m.impl("_conv_transpose2d_gather", &conv_transpose2d_gather_cpu);
}

}  // namespace cnnops
