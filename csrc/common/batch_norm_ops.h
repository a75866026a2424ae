#pragma once
// The batch_norm family's op entry points, written once for both devices: checks, layouts,
// allocation and the order of the kernel stages. K supplies the device kernels:
//
//   Tensor partials(x, shape)            (P, 3, C) (count, mean, M2) of fixed chunks
//   void finalize(partials, merged, mean, invstd, count, running_mean, running_var,
//                 num_batches_tracked, momentum, eps)
//                                        merge the P chunks in order (Chan); merged (3, C)
//                                        always written, the rest when defined; running
//                                        stats updated when defined
//   void eval_stats(running_mean, running_var, mean, invstd, eps)
//   void elemt(x, shape, w, b, mean, invstd, residual, act, out)
//   void reduce(dy, x, y, shape, w, b, mean, invstd, act, sum_dy, sum_dy_xmu, grad_weight)
//   void grad_elemt(dy, x, y, shape, w, b, mean, invstd, sum_dy, sum_dy_xmu, count_tensor,
//                   count, training, act, grad_input, grad_residual)
// y (the forward's output) gives the activation's mask; when y is undefined (and there is
// an activation) the mask is recomputed from z = x * scale + shift (w, b, mean, invstd),
// with the forward's arithmetic, which is exact when the forward had no residual.
//
// Per-channel tensors reach the kernels contiguous in the stat dtype (float32, float64 for
// float64 input); x, dy, y, residual and the outputs in the layout of BnShape.
#include <ATen/ATen.h>

#include <tuple>

#include "common/batch_norm_checks.h"

namespace cnnops {

using BnForwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using BnBackwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

inline at::ScalarType bn_param_grad_dtype(const at::Tensor& input, const c10::optional<at::Tensor>& p,
                                          const c10::optional<at::Tensor>& other) {
  if (bn_defined(p)) return p->scalar_type();
  if (bn_defined(other)) return other->scalar_type();
  return input.scalar_type();
}

inline at::Tensor bn_stat_empty(const at::Tensor& input, int64_t c) {
  return at::empty({c}, input.options().dtype(bn_stat_dtype(input.scalar_type())));
}

// Running statistics in the stat dtype for the kernels to update in place; written back
// afterwards (bn_write_back) when that was a converted copy.
inline at::Tensor bn_running_work(const c10::optional<at::Tensor>& r, at::ScalarType sd) {
  return bn_defined(r) ? r->to(sd).contiguous() : at::Tensor();
}

inline void bn_write_back(const c10::optional<at::Tensor>& r, const at::Tensor& work) {
  if (bn_defined(r) && !work.is_same(*r)) r->copy_(work);
}

inline void bn_check_running_pair(const char* op, const c10::optional<at::Tensor>& rm,
                                  const c10::optional<at::Tensor>& rv) {
  TORCH_CHECK_VALUE(bn_defined(rm) == bn_defined(rv), op,
                    ": expected running_mean and running_var to be both tensors or both None, got ",
                    bn_defined(rm) ? "a tensor" : "None", " and ", bn_defined(rv) ? "a tensor" : "None");
}

template <class K>
BnForwardResult bn_forward(const at::Tensor& input, const c10::optional<at::Tensor>& weight,
                           const c10::optional<at::Tensor>& bias,
                           const c10::optional<at::Tensor>& running_mean,
                           const c10::optional<at::Tensor>& running_var,
                           const c10::optional<at::Tensor>& num_batches_tracked,
                           const c10::optional<at::Tensor>& residual, bool training,
                           c10::optional<double> momentum, double eps,
                           c10::optional<c10::string_view> activation) {
  const char* op = "cnnops.batch_norm";
  const int64_t c = bn_check_input(op, input, K::kHalfOk);
  const BnActivation act = bn_parse_activation(op, activation);
  bn_check_optional_channel(op, input, weight, "weight");
  bn_check_optional_channel(op, input, bias, "bias");
  bn_check_optional_channel(op, input, running_mean, "running_mean");
  bn_check_optional_channel(op, input, running_var, "running_var");
  bn_check_running_pair(op, running_mean, running_var);
  TORCH_CHECK_VALUE(training || bn_defined(running_mean), op,
                    ": expected running_mean and running_var when training is False "
                    "(evaluation normalizes with the running statistics), got None");
  const bool updates = training && bn_defined(running_mean);
  bn_check_num_batches_tracked(op, input, num_batches_tracked);
  bn_check_momentum(op, momentum, num_batches_tracked, updates);
  if (bn_defined(residual)) bn_check_like_input(op, input, *residual, "residual");

  const BnShape s = bn_shape(input);
  const auto sd = bn_stat_dtype(input.scalar_type());
  const at::Tensor x = bn_in_layout(input, s);
  const at::Tensor res = bn_defined(residual) ? bn_in_layout(*residual, s) : at::Tensor();
  at::Tensor out = bn_empty_like_layout(input, s);
  at::Tensor mean = bn_stat_empty(input, c), invstd = bn_stat_empty(input, c);
  const at::Tensor w = bn_channel_as(weight, sd), b = bn_channel_as(bias, sd);
  if (training) {
    const at::Tensor partials = K::partials(x, s);
    at::Tensor merged = at::empty({3, c}, mean.options());
    at::Tensor count = at::empty({1}, mean.options());
    at::Tensor rm = updates ? bn_running_work(running_mean, sd) : at::Tensor();
    at::Tensor rv = updates ? bn_running_work(running_var, sd) : at::Tensor();
    const at::Tensor nbt = bn_optional(num_batches_tracked);
    K::finalize(partials, merged, mean, invstd, count, rm, rv, nbt, momentum, eps);
    if (updates) {
      bn_write_back(running_mean, rm);
      bn_write_back(running_var, rv);
    }
  } else {
    K::eval_stats(bn_channel_as(running_mean, sd), bn_channel_as(running_var, sd), mean, invstd,
                  eps);
  }
  if (out.numel() > 0) K::elemt(x, s, w, b, mean, invstd, res, act, out);
  return {out, mean, invstd};
}

template <class K>
BnBackwardResult bn_backward(const at::Tensor& grad_out, const at::Tensor& input,
                             const c10::optional<at::Tensor>& output,
                             const c10::optional<at::Tensor>& weight,
                             const c10::optional<at::Tensor>& bias, const at::Tensor& save_mean,
                             const at::Tensor& save_invstd, bool training,
                             c10::optional<c10::string_view> activation,
                             std::array<bool, 4> mask) {
  const char* op = "cnnops.batch_norm_backward";
  const int64_t c = bn_check_input(op, input, K::kHalfOk);
  const BnActivation act = bn_parse_activation(op, activation);
  bn_check_like_input(op, input, grad_out, "grad_out");
  // Without output, the mask is recomputed from input, weight, bias and the statistics.
  const bool has_y = act != BnActivation::kNone && bn_defined(output);
  if (has_y) bn_check_like_input(op, input, *output, "output");
  bn_check_optional_channel(op, input, weight, "weight");
  bn_check_optional_channel(op, input, bias, "bias");
  bn_check_stat(op, input, save_mean, "save_mean");
  bn_check_stat(op, input, save_invstd, "save_invstd");

  const BnShape s = bn_shape(input);
  const auto sd = bn_stat_dtype(input.scalar_type());
  const at::Tensor x = bn_in_layout(input, s), dy = bn_in_layout(grad_out, s);
  const at::Tensor y = has_y ? bn_in_layout(*output, s) : at::Tensor();
  const at::Tensor w = bn_channel_as(weight, sd), b = bn_channel_as(bias, sd);
  const at::Tensor mean = save_mean.contiguous(), invstd = save_invstd.contiguous();
  const bool need_sums = (training && mask[0]) || mask[1] || mask[2];
  at::Tensor sum_dy = bn_stat_empty(input, c), sum_dy_xmu = bn_stat_empty(input, c);
  at::Tensor gw_stat = bn_stat_empty(input, c);
  if (need_sums) K::reduce(dy, x, y, s, w, b, mean, invstd, act, sum_dy, sum_dy_xmu, gw_stat);
  at::Tensor gi = mask[0] ? bn_empty_like_layout(input, s) : input.new_empty({0});
  at::Tensor gr = mask[3] ? bn_empty_like_layout(input, s) : input.new_empty({0});
  if ((mask[0] || mask[3]) && input.numel() > 0) {
    K::grad_elemt(dy, x, y, s, w, b, mean, invstd, sum_dy, sum_dy_xmu, at::Tensor(),
                  static_cast<double>(s.count()), training, act, mask[0] ? gi : at::Tensor(),
                  mask[3] ? gr : at::Tensor());
  }
  at::Tensor gw = mask[1] ? gw_stat.to(bn_param_grad_dtype(input, weight, bias)) : input.new_empty({0});
  at::Tensor gb = mask[2] ? sum_dy.to(bn_param_grad_dtype(input, bias, weight)) : input.new_empty({0});
  return {gi, gw, gb, gr};
}

// ------------------------------------------------------------------ SyncBatchNorm stages

template <class K>
at::Tensor bn_stats(const at::Tensor& input) {
  const char* op = "cnnops.batch_norm_stats";
  const int64_t c = bn_check_input(op, input, K::kHalfOk);
  const BnShape s = bn_shape(input);
  const at::Tensor x = bn_in_layout(input, s);
  const at::Tensor partials = K::partials(x, s);
  at::Tensor merged = at::empty({3, c}, partials.options());
  K::finalize(partials, merged, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
              at::Tensor(), 0.0, 0.0);
  return merged;
}

inline void bn_check_gathered_running(const char* op, const at::Tensor& stats,
                                      const c10::optional<at::Tensor>& r, const char* name) {
  if (!bn_defined(r)) return;
  const int64_t c = stats.size(2);
  TORCH_CHECK_VALUE(r->dim() == 1 && r->size(0) == c, op, ": expected ", name, " to have shape (", c,
                    ",) (one value per channel of stats ", shape_str(stats.sizes()), "), got shape ",
                    shape_str(r->sizes()));
  check_dtype_supported(op, *r, true);
  TORCH_CHECK(r->device() == stats.device(), op, ": expected ", name,
              " to be on the same device as stats (", stats.device(), "), got ", r->device());
}

template <class K>
BnForwardResult bn_gather_stats(const at::Tensor& stats, const c10::optional<at::Tensor>& running_mean,
                                const c10::optional<at::Tensor>& running_var,
                                const c10::optional<at::Tensor>& num_batches_tracked,
                                c10::optional<double> momentum, double eps) {
  const char* op = "cnnops.batch_norm_gather_stats";
  TORCH_CHECK_VALUE(stats.dim() == 3 && stats.size(1) == 3 && stats.size(0) >= 1, op,
                    ": expected stats to have shape (world_size, 3, C) (count, mean, M2 of each "
                    "rank), got shape ", shape_str(stats.sizes()));
  const auto sd = stats.scalar_type();
  TORCH_CHECK_TYPE(sd == at::kFloat || sd == at::kDouble, op,
                   ": expected stats to have dtype float32 or float64, got ", dtype_name(sd));
  bn_check_gathered_running(op, stats, running_mean, "running_mean");
  bn_check_gathered_running(op, stats, running_var, "running_var");
  bn_check_running_pair(op, running_mean, running_var);
  const bool updates = bn_defined(running_mean);
  if (bn_defined(num_batches_tracked)) {
    TORCH_CHECK(num_batches_tracked->device() == stats.device(), op,
                ": expected num_batches_tracked to be on the same device as stats (", stats.device(),
                "), got ", num_batches_tracked->device());
    bn_check_num_batches_tracked(op, stats, num_batches_tracked);
  }
  bn_check_momentum(op, momentum, num_batches_tracked, updates);
  const int64_t c = stats.size(2);
  const at::Tensor partials = stats.contiguous();
  at::Tensor merged = at::empty({3, c}, stats.options());
  at::Tensor mean = at::empty({c}, stats.options()), invstd = at::empty({c}, stats.options());
  at::Tensor count = at::empty({1}, stats.options());
  at::Tensor rm = updates ? bn_running_work(running_mean, sd) : at::Tensor();
  at::Tensor rv = updates ? bn_running_work(running_var, sd) : at::Tensor();
  K::finalize(partials, merged, mean, invstd, count, rm, rv, bn_optional(num_batches_tracked), momentum,
              eps);
  if (updates) {
    bn_write_back(running_mean, rm);
    bn_write_back(running_var, rv);
  }
  return {mean, invstd, count};
}

template <class K>
at::Tensor bn_elemt(const at::Tensor& input, const c10::optional<at::Tensor>& weight,
                    const c10::optional<at::Tensor>& bias, const at::Tensor& mean,
                    const at::Tensor& invstd, const c10::optional<at::Tensor>& residual,
                    c10::optional<c10::string_view> activation) {
  const char* op = "cnnops.batch_norm_elemt";
  bn_check_input(op, input, K::kHalfOk);
  const BnActivation act = bn_parse_activation(op, activation);
  bn_check_optional_channel(op, input, weight, "weight");
  bn_check_optional_channel(op, input, bias, "bias");
  bn_check_stat(op, input, mean, "mean");
  bn_check_stat(op, input, invstd, "invstd");
  if (bn_defined(residual)) bn_check_like_input(op, input, *residual, "residual");
  const BnShape s = bn_shape(input);
  const auto sd = bn_stat_dtype(input.scalar_type());
  const at::Tensor x = bn_in_layout(input, s);
  const at::Tensor res = bn_defined(residual) ? bn_in_layout(*residual, s) : at::Tensor();
  at::Tensor out = bn_empty_like_layout(input, s);
  if (out.numel() > 0) {
    K::elemt(x, s, bn_channel_as(weight, sd), bn_channel_as(bias, sd), mean.contiguous(),
             invstd.contiguous(), res, act, out);
  }
  return out;
}

template <class K>
BnBackwardResult bn_backward_reduce(const at::Tensor& grad_out, const at::Tensor& input,
                                    const c10::optional<at::Tensor>& output, const at::Tensor& mean,
                                    const at::Tensor& invstd, const c10::optional<at::Tensor>& weight,
                                    const c10::optional<at::Tensor>& bias,
                                    c10::optional<c10::string_view> activation,
                                    std::array<bool, 2> param_mask) {
  const char* op = "cnnops.batch_norm_backward_reduce";
  const int64_t c = bn_check_input(op, input, K::kHalfOk);
  const BnActivation act = bn_parse_activation(op, activation);
  bn_check_like_input(op, input, grad_out, "grad_out");
  TORCH_CHECK_VALUE(act == BnActivation::kNone || bn_defined(output), op,
                    ": expected output (the forward's result) when activation is '",
                    act == BnActivation::kRelu ? "relu" : "relu6", "', got None");
  if (act != BnActivation::kNone) bn_check_like_input(op, input, *output, "output");
  bn_check_stat(op, input, mean, "mean");
  bn_check_stat(op, input, invstd, "invstd");
  bn_check_optional_channel(op, input, weight, "weight");
  bn_check_optional_channel(op, input, bias, "bias");
  const BnShape s = bn_shape(input);
  const at::Tensor x = bn_in_layout(input, s), dy = bn_in_layout(grad_out, s);
  const at::Tensor y = act != BnActivation::kNone ? bn_in_layout(*output, s) : at::Tensor();
  at::Tensor sum_dy = bn_stat_empty(input, c), sum_dy_xmu = bn_stat_empty(input, c);
  at::Tensor gw_stat = bn_stat_empty(input, c);
  K::reduce(dy, x, y, s, at::Tensor(), at::Tensor(), mean.contiguous(), invstd.contiguous(), act, sum_dy,
            sum_dy_xmu, gw_stat);
  at::Tensor gw = param_mask[0] ? gw_stat.to(bn_param_grad_dtype(input, weight, bias)) : input.new_empty({0});
  // A fresh tensor: an op's outputs must not alias each other.
  at::Tensor gb = param_mask[1] ? sum_dy.to(bn_param_grad_dtype(input, bias, weight), false, true)
                                : input.new_empty({0});
  return {sum_dy, sum_dy_xmu, gw, gb};
}

template <class K>
std::tuple<at::Tensor, at::Tensor> bn_backward_elemt(
    const at::Tensor& grad_out, const at::Tensor& input, const c10::optional<at::Tensor>& output,
    const c10::optional<at::Tensor>& weight, const at::Tensor& mean, const at::Tensor& invstd,
    const at::Tensor& sum_dy, const at::Tensor& sum_dy_xmu, const at::Tensor& count,
    c10::optional<c10::string_view> activation, std::array<bool, 2> mask) {
  const char* op = "cnnops.batch_norm_backward_elemt";
  bn_check_input(op, input, K::kHalfOk);
  const BnActivation act = bn_parse_activation(op, activation);
  bn_check_like_input(op, input, grad_out, "grad_out");
  TORCH_CHECK_VALUE(act == BnActivation::kNone || bn_defined(output), op,
                    ": expected output (the forward's result) when activation is '",
                    act == BnActivation::kRelu ? "relu" : "relu6", "', got None");
  if (act != BnActivation::kNone) bn_check_like_input(op, input, *output, "output");
  bn_check_optional_channel(op, input, weight, "weight");
  bn_check_stat(op, input, mean, "mean");
  bn_check_stat(op, input, invstd, "invstd");
  bn_check_stat(op, input, sum_dy, "sum_dy");
  bn_check_stat(op, input, sum_dy_xmu, "sum_dy_xmu");
  const auto sd = bn_stat_dtype(input.scalar_type());
  TORCH_CHECK_TYPE(count.scalar_type() == sd, op, ": expected count to have dtype ", dtype_name(sd),
                   ", got ", dtype_name(count.scalar_type()));
  TORCH_CHECK(count.device() == input.device(), op,
              ": expected count to be on the same device as input (", input.device(), "), got ",
              count.device());
  TORCH_CHECK_VALUE(count.numel() == 1, op, ": expected count to have one element, got shape ",
                    shape_str(count.sizes()));
  const BnShape s = bn_shape(input);
  const at::Tensor x = bn_in_layout(input, s), dy = bn_in_layout(grad_out, s);
  const at::Tensor y = act != BnActivation::kNone ? bn_in_layout(*output, s) : at::Tensor();
  at::Tensor gi = mask[0] ? bn_empty_like_layout(input, s) : input.new_empty({0});
  at::Tensor gr = mask[1] ? bn_empty_like_layout(input, s) : input.new_empty({0});
  if ((mask[0] || mask[1]) && input.numel() > 0) {
    K::grad_elemt(dy, x, y, s, bn_channel_as(weight, sd), at::Tensor(), mean.contiguous(), invstd.contiguous(),
                  sum_dy.contiguous(), sum_dy_xmu.contiguous(), count.contiguous(), 0.0, true, act,
                  mask[0] ? gi : at::Tensor(), mask[1] ? gr : at::Tensor());
  }
  return {gi, gr};
}

}  // namespace cnnops
