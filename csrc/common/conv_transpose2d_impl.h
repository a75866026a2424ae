#pragma once
// The transposed convolution ops, written once for both devices on top of the conv2d
// kernels (common/conv2d_kernels.h):
//   forward      = conv2d_grad_input of the equivalent convolution (common/conv_transpose_index.h)
//   grad_input   = conv2d forward of that convolution over grad_output
//   grad_weight  = conv2d_grad_weight with the roles of input and grad_output swapped
//   (grad_bias   = conv2d_grad_bias, called directly from Python)
// A device supplies only `finish`, which writes dst = (src where within reach, else 0) +
// bias[c] through strides: the bias of the forward (in place), the zero rows no tap reaches,
// and a change of memory format where conv2d's layout rule differs from the forward's.
#include <ATen/ATen.h>

#include "common/conv2d_kernels.h"
#include "common/conv_transpose_checks.h"

namespace cnnops {

// src may be undefined (all zero) or dst itself; bias may be undefined.
using FinishFn = void (*)(const at::Tensor& src, const at::Tensor& bias, const at::Tensor& dst);

struct ConvTransposeBackend {
  c10::DispatchKeySet keys;  // the backend key whose conv2d kernels run
  bool half_ok;              // float16 supported
  FinishFn finish;
  bool gather = false;       // forward through _conv2d_grad_input_gather (CPU test hook)
};

inline at::Tensor conv_transpose2d_forward_impl(const ConvTransposeBackend& be, const char* op,
                                                const at::Tensor& input, const at::Tensor& weight,
                                                const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                                at::IntArrayRef padding, at::IntArrayRef output_padding,
                                                int64_t groups, at::IntArrayRef dilation) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const ConvTranspose2dGeometry g = check_conv_transpose2d_forward(
      op, input, weight, bias, stride, padding, output_padding, groups, dilation, be.half_ok);
  const at::MemoryFormat layout = conv_memory_format(input, weight);
  const at::Tensor b = (bias.has_value() && bias->defined()) ? *bias : at::Tensor();
  if (!g.reachable()) {  // no tap reaches any output: bias only
    at::Tensor out = at::empty(g.output_size(), input.options().memory_format(layout));
    be.finish(at::Tensor(), b, out);
    return out;
  }
  at::Tensor out = conv2d_kernels::conv2d_grad_input(
      be.keys, input, weight, g.conv_input_size(), stride, g.conv_padding(), dilation, groups,
      layout == at::MemoryFormat::ChannelsLast, be.gather);
  if (g.h.reach == g.h.out && g.w.reach == g.w.out) {
    if (b.defined()) be.finish(out, b, out);
    return out;
  }
  at::Tensor full = at::empty(g.output_size(), input.options().memory_format(layout));
  be.finish(out, b, full);
  return full;
}

inline at::Tensor conv_transpose2d_grad_input_impl(const ConvTransposeBackend& be, const at::Tensor& grad_output,
                                                   const at::Tensor& weight, at::IntArrayRef input_size,
                                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                                   at::IntArrayRef output_padding, int64_t groups,
                                                   at::IntArrayRef dilation, bool channels_last) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const ConvTranspose2dGeometry g = check_conv_transpose2d_grad_input(
      "cnnops.conv_transpose2d_grad_input", grad_output, weight, input_size, stride, padding,
      output_padding, groups, dilation, be.half_ok);
  const at::MemoryFormat layout = layout_from_flag(channels_last);
  if (!g.reachable()) {  // the output never depended on the input
    at::Tensor grad_input = at::empty(input_size, grad_output.options().memory_format(layout));
    be.finish(at::Tensor(), at::Tensor(), grad_input);
    return grad_input;
  }
  // Rows beyond reach never depended on the input: a view leaves them out, no copy.
  const at::Tensor go = grad_output.narrow(2, 0, g.h.reach).narrow(3, 0, g.w.reach);
  at::Tensor grad_input =
      conv2d_kernels::conv2d(be.keys, go, weight, stride, g.conv_padding(), dilation, groups);
  // conv2d picks its layout from grad_output and weight; gradients take the forward's.
  if (grad_input.numel() == 0 || grad_input.is_contiguous(layout)) return grad_input;
  at::Tensor relaid = at::empty(input_size, grad_output.options().memory_format(layout));
  be.finish(grad_input, at::Tensor(), relaid);
  return relaid;
}

inline at::Tensor conv_transpose2d_grad_weight_impl(const ConvTransposeBackend& be, const at::Tensor& grad_output,
                                                    const at::Tensor& input, at::IntArrayRef weight_size,
                                                    at::IntArrayRef stride, at::IntArrayRef padding,
                                                    at::IntArrayRef output_padding, int64_t groups,
                                                    at::IntArrayRef dilation, bool channels_last) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const ConvTranspose2dGeometry g = check_conv_transpose2d_grad_weight(
      "cnnops.conv_transpose2d_grad_weight", grad_output, input, weight_size, stride, padding,
      output_padding, groups, dilation, be.half_ok);
  if (!g.reachable()) {  // the output never depended on the weight
    at::Tensor grad_weight =
        at::empty(weight_size, input.options().memory_format(layout_from_flag(channels_last)));
    be.finish(at::Tensor(), at::Tensor(), grad_weight);
    return grad_weight;
  }
  const at::Tensor go = grad_output.narrow(2, 0, g.h.reach).narrow(3, 0, g.w.reach);
  // The equivalent convolution reads grad_output and produces the input's shape, so the
  // input plays conv2d's grad_output and grad_output conv2d's input.
  return conv2d_kernels::conv2d_grad_weight(be.keys, /*grad_output=*/input, /*input=*/go, weight_size,
                                            stride, g.conv_padding(), dilation, groups, channels_last);
}

}  // namespace cnnops
