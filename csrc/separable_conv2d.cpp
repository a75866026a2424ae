// separable_conv2d family: schemas of the fused separable forwards, each one op for a pair
// of convolutions (the two layers of nn.DepthwiseSeparableConv2d / nn.SpatiallySeparableConv2d).
// On the CPU the pair runs band by band without the intermediate tensor; on CUDA the two
// kernels run in sequence (depthwise pair: csrc/cuda/separable_conv2d.cu, with an opt-in
// fused kernel; spatial pair: cnnops/ops/separable_conv2d.py). Their gradients are the two
// convs' gradient ops.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(cnnops, m) {
  // conv2d(depthwise_conv2d(input, ...), pointwise_weight (C_out, C * multiplier, 1, 1)); stride,
  // padding (top, bottom, left, right), dilation and padding_mode are the depthwise conv's.
  m.def(
      "depthwise_separable_conv2d(Tensor input, Tensor depthwise_weight, Tensor? depthwise_bias, "
      "Tensor pointwise_weight, Tensor? pointwise_bias, SymInt[2] stride, SymInt[4] padding, "
      "SymInt[2] dilation, str padding_mode) -> Tensor");
  // A (kH x 1) conv then a (1 x kW) conv: stride and dilation are (vertical conv's along H,
  // horizontal conv's along W); padding is (top, bottom) of the first, (left, right) of the
  // second.
  m.def(
      "spatially_separable_conv2d(Tensor input, Tensor vertical_weight, Tensor? vertical_bias, "
      "Tensor horizontal_weight, Tensor? horizontal_bias, SymInt[2] stride, SymInt[4] padding, "
      "SymInt[2] dilation, str padding_mode) -> Tensor");
}
