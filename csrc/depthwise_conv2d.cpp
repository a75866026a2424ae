// depthwise_conv2d family: schemas. Depthwise convolution is conv2d with groups = C and a
// weight of shape (C * multiplier, 1, kH, kW); output channel oc reads input channel
// oc / multiplier. padding is (top, bottom, left, right), as in conv2d. The bias gradient
// is conv2d_grad_bias (a channel sum, the same for every convolution).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(cnnops, m) {
  m.def(
      "depthwise_conv2d(Tensor input, Tensor weight, Tensor? bias, SymInt[2] stride, "
      "SymInt[4] padding, SymInt[2] dilation, str padding_mode) -> Tensor");
  m.def(
      "depthwise_conv2d_grad_input(Tensor grad_output, Tensor weight, SymInt[4] input_size, "
      "SymInt[2] stride, SymInt[4] padding, SymInt[2] dilation, str padding_mode, "
      "bool channels_last) -> Tensor");
  m.def(
      "depthwise_conv2d_grad_weight(Tensor grad_output, Tensor input, SymInt[4] weight_size, "
      "SymInt[2] stride, SymInt[4] padding, SymInt[2] dilation, str padding_mode, "
      "bool channels_last) -> Tensor");
}
