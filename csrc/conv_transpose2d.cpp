// conv_transpose2d family: schemas. The kernels are the conv2d family's (see
// common/conv_transpose2d_impl.h): the forward is conv2d's input-gradient, the input-gradient
// is conv2d's forward, the weight-gradient is conv2d_grad_weight with input and grad_output
// swapped; the bias gradient is cnnops::conv2d_grad_bias itself. Arguments in torch's order;
// output_size is resolved into output_padding in Python, as torch does.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(cnnops, m) {
  m.def(
      "conv_transpose2d(Tensor input, Tensor weight, Tensor? bias, SymInt[2] stride, SymInt[2] padding, "
      "SymInt[2] output_padding, SymInt groups, SymInt[2] dilation) -> Tensor");
  // channels_last selects the layout of the result (the forward's, as torch's gradients).
  m.def(
      "conv_transpose2d_grad_input(Tensor grad_output, Tensor weight, SymInt[4] input_size, "
      "SymInt[2] stride, SymInt[2] padding, SymInt[2] output_padding, SymInt groups, SymInt[2] dilation, "
      "bool channels_last) -> Tensor");
  m.def(
      "conv_transpose2d_grad_weight(Tensor grad_output, Tensor input, SymInt[4] weight_size, "
      "SymInt[2] stride, SymInt[2] padding, SymInt[2] output_padding, SymInt groups, SymInt[2] dilation, "
      "bool channels_last) -> Tensor");
  // CPU only: the forward through the CUDA kernel's gather formulation of conv2d_grad_input,
  // so the CPU tests check the composition and index math the GPU runs.
  m.def(
      "_conv_transpose2d_gather(Tensor input, Tensor weight, Tensor? bias, SymInt[2] stride, "
      "SymInt[2] padding, SymInt[2] output_padding, SymInt groups, SymInt[2] dilation) -> Tensor");
}
