// layer_norm family: schemas.
//  - layer_norm normalizes each row over the trailing normalized_shape dimensions;
//  - layer_norm2d normalizes an (N, C, H, W) tensor over C for every (n, h, w), reading
//    NCHW or channels_last memory directly (no permute copies).
// The forward ops return (out, mean, rstd); mean and rstd are float32 (float64 for
// float64 input), of the input's shape with the normalized dimensions set to 1.
// The backward ops compute the gradients selected by output_mask (input, weight, bias);
// a gradient not selected is returned as an empty (0,) tensor. bias is passed to the
// backward only for its dtype (the dtype of its gradient).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(cnnops, m) {
  m.def(
      "layer_norm(Tensor input, SymInt[] normalized_shape, Tensor? weight, Tensor? bias, "
      "float eps) -> (Tensor out, Tensor mean, Tensor rstd)");
  m.def(
      "layer_norm_backward(Tensor grad_out, Tensor input, SymInt[] normalized_shape, "
      "Tensor mean, Tensor rstd, Tensor? weight, Tensor? bias, bool[3] output_mask) "
      "-> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");
  m.def(
      "layer_norm2d(Tensor input, Tensor? weight, Tensor? bias, float eps) "
      "-> (Tensor out, Tensor mean, Tensor rstd)");
  m.def(
      "layer_norm2d_backward(Tensor grad_out, Tensor input, Tensor mean, Tensor rstd, "
      "Tensor? weight, Tensor? bias, bool[3] output_mask) "
      "-> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");
}
