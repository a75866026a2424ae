// batch_norm family: schemas.
//
//  - batch_norm: torch.nn.functional.batch_norm on (N, C, *) input with a fused residual
//    (added after the affine transform) and activation (None, 'relu', 'relu6'). In training
//    it normalizes with the batch statistics and updates running_mean / running_var in
//    place (unbiased variance) with factor momentum, or 1 / num_batches_tracked when
//    momentum is None (the cumulative average, read on the device: no sync, no graph
//    break). Returns (out, save_mean, save_invstd): the statistics used, float32 (float64
//    for float64 input), not differentiable.
//  - batch_norm_backward: gradients selected by output_mask (input, weight, bias,
//    residual); an unselected one is an empty (0,) tensor. output (the forward's) gives the
//    activation's mask; when it is None the mask is recomputed from input, weight, bias and
//    the saved statistics with the forward's arithmetic (exact when the forward had no
//    residual; with a residual, pass output).
//  - SyncBatchNorm stages (the all-reduces happen in Python, through torch.distributed):
//    batch_norm_stats -> (3, C) local (count, mean, M2); batch_norm_gather_stats merges the
//    (world, 3, C) gathered triples in rank order (Chan), updates the running statistics
//    and returns (mean, invstd, count); batch_norm_elemt normalizes; batch_norm_backward_reduce
//    gives the local sums of g and g * (x - mean) (g: grad_out through the activation) and
//    the local weight / bias gradients; batch_norm_backward_elemt takes the all-reduced sums
//    and writes grad_input and grad_residual.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(cnnops, m) {
  m.def(
      "batch_norm(Tensor input, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
      "Tensor(b!)? running_var, Tensor? num_batches_tracked, Tensor? residual, bool training, "
      "float? momentum, float eps, str? activation) "
      "-> (Tensor out, Tensor save_mean, Tensor save_invstd)");
  m.def(
      "batch_norm_backward(Tensor grad_out, Tensor input, Tensor? output, Tensor? weight, "
      "Tensor? bias, Tensor save_mean, Tensor save_invstd, bool training, str? activation, "
      "bool[4] output_mask) "
      "-> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias, Tensor grad_residual)");
  m.def("batch_norm_stats(Tensor input) -> Tensor");
  m.def(
      "batch_norm_gather_stats(Tensor stats, Tensor(a!)? running_mean, Tensor(b!)? running_var, "
      "Tensor? num_batches_tracked, float? momentum, float eps) "
      "-> (Tensor mean, Tensor invstd, Tensor count)");
  m.def(
      "batch_norm_elemt(Tensor input, Tensor? weight, Tensor? bias, Tensor mean, Tensor invstd, "
      "Tensor? residual, str? activation) -> Tensor");
  m.def(
      "batch_norm_backward_reduce(Tensor grad_out, Tensor input, Tensor? output, Tensor mean, "
      "Tensor invstd, Tensor? weight, Tensor? bias, str? activation, bool[2] param_mask) "
      "-> (Tensor sum_dy, Tensor sum_dy_xmu, Tensor grad_weight, Tensor grad_bias)");
  m.def(
      "batch_norm_backward_elemt(Tensor grad_out, Tensor input, Tensor? output, Tensor? weight, "
      "Tensor mean, Tensor invstd, Tensor sum_dy, Tensor sum_dy_xmu, Tensor count, "
      "str? activation, bool[2] output_mask) -> (Tensor grad_input, Tensor grad_residual)");
}
