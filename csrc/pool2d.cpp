// pool2d family: schemas. Inputs are 4-D (N, C, H, W) in any memory format; the
// functional wrappers handle unbatched input. Outputs keep the input's memory format.
//
// max_pool2d returns (output, indices); indices are int64 flat h * W + w within each
// plane, -1 for a window that holds padding only. With return_indices=False the indices
// are not computed and an empty int64 tensor is returned in their place (inference).
// Backward ops take the input's size and memory format instead of the input itself, so
// autograd keeps only the indices (max) or nothing (average) alive.
// Global pooling is adaptive pooling to 1 x 1, which the kernels route to a reduction.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(cnnops, m) {
  m.def(
      "max_pool2d(Tensor input, SymInt[2] kernel_size, SymInt[2] stride, SymInt[2] padding, "
      "SymInt[2] dilation, bool ceil_mode, bool return_indices=True) -> (Tensor, Tensor)");
  m.def(
      "max_pool2d_backward(Tensor grad_output, Tensor indices, SymInt[4] input_size, "
      "SymInt[2] kernel_size, SymInt[2] stride, SymInt[2] padding, SymInt[2] dilation, "
      "bool ceil_mode, bool channels_last) -> Tensor");
  m.def(
      "avg_pool2d(Tensor input, SymInt[2] kernel_size, SymInt[2] stride, SymInt[2] padding, "
      "bool ceil_mode, bool count_include_pad, SymInt? divisor_override) -> Tensor");
  m.def(
      "avg_pool2d_backward(Tensor grad_output, SymInt[4] input_size, SymInt[2] kernel_size, "
      "SymInt[2] stride, SymInt[2] padding, bool ceil_mode, bool count_include_pad, "
      "SymInt? divisor_override, bool channels_last) -> Tensor");
  m.def("adaptive_avg_pool2d(Tensor input, SymInt[2] output_size) -> Tensor");
  m.def(
      "adaptive_avg_pool2d_backward(Tensor grad_output, SymInt[4] input_size, "
      "bool channels_last) -> Tensor");
  m.def("adaptive_max_pool2d(Tensor input, SymInt[2] output_size) -> (Tensor, Tensor)");
  m.def(
      "adaptive_max_pool2d_backward(Tensor grad_output, Tensor indices, SymInt[4] input_size, "
      "bool channels_last) -> Tensor");
}
