// conv2d family: schemas. Forward, input-gradient and weight-gradient are separate ops so
// that the transposed convolution can reuse them (its forward is conv2d_grad_input).
// padding is (top, bottom, left, right): 'same' with an even kernel pads unevenly.
// channels_last on the gradient ops selects the layout of the result; the autograd
// formula passes the forward's layout (channels_last if the input or weight was).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(cnnops, m) {
  m.def(
      "conv2d(Tensor input, Tensor weight, Tensor? bias, SymInt[2] stride, SymInt[4] padding, "
      "SymInt[2] dilation, SymInt groups, str padding_mode) -> Tensor");
  m.def(
      "conv2d_grad_input(Tensor grad_output, Tensor weight, SymInt[4] input_size, "
      "SymInt[2] stride, SymInt[4] padding, SymInt[2] dilation, SymInt groups, "
      "str padding_mode, bool channels_last) -> Tensor");
  m.def(
      "conv2d_grad_weight(Tensor grad_output, Tensor input, SymInt[4] weight_size, "
      "SymInt[2] stride, SymInt[4] padding, SymInt[2] dilation, SymInt groups, "
      "str padding_mode, bool channels_last) -> Tensor");
  // Sum of grad_output over every dimension but 1: the bias gradient of any convolution.
  m.def("conv2d_grad_bias(Tensor grad_output) -> Tensor");
}
