#pragma once
// Host-side argument checks, layout rule and allocation helpers of the batch_norm family,
// shared by the CPU and CUDA implementations. The fake kernels in cnnops/ops/batch_norm.py
// raise the same messages in the same order.
#include <ATen/ATen.h>
#include <c10/util/string_view.h>

#include <string>
#include <tuple>

#include "common/batch_norm_math.h"
#include "common/conv_checks.h"  // shape_str, dtype_name, check_dtype_supported

namespace cnnops {

inline bool bn_defined(const c10::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// Statistics (save_mean, save_invstd, partial moments) are float32, or float64 for float64.
inline at::ScalarType bn_stat_dtype(at::ScalarType input_dtype) {
  return input_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

inline BnActivation bn_parse_activation(const char* op, const c10::optional<c10::string_view>& a) {
  if (!a.has_value()) return BnActivation::kNone;
  const std::string s(a->data(), a->size());
  if (s == "relu") return BnActivation::kRelu;
  if (s == "relu6") return BnActivation::kRelu6;
  TORCH_CHECK_VALUE(false, op, ": expected activation to be None, 'relu' or 'relu6', got '", s, "'");
}

// input (N, C, *): rank >= 2 and a supported floating dtype. Returns C.
inline int64_t bn_check_input(const char* op, const at::Tensor& input, bool half_ok) {
  TORCH_CHECK_VALUE(input.dim() >= 2, op,
                    ": expected input to have at least 2 dimensions (N, C, *), got shape ",
                    shape_str(input.sizes()));
  check_dtype_supported(op, input, half_ok);
  return input.size(1);
}

// A per-channel tensor (weight, bias, running stats): shape (C,), on the input's device,
// of the input's dtype or float32 (mixed precision) for float16/bfloat16 input.
inline void bn_check_channel_tensor(const char* op, const at::Tensor& input, const at::Tensor& t,
                                    const char* name) {
  const int64_t c = input.size(1);
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == c, op, ": expected ", name, " to have shape (",
                    c, ",) (one value per channel of input ", shape_str(input.sizes()),
                    "), got shape ", shape_str(t.sizes()));
  const auto it = input.scalar_type(), tt = t.scalar_type();
  const bool reduced = it == at::kHalf || it == at::kBFloat16;
  TORCH_CHECK_TYPE(tt == it || (reduced && tt == at::kFloat), op, ": expected ", name,
                   " to have the same dtype as input (", dtype_name(it), ")",
                   reduced ? " or float32" : "", ", got ", dtype_name(tt));
  TORCH_CHECK(t.device() == input.device(), op, ": expected ", name,
              " to be on the same device as input (", input.device(), "), got ", t.device());
}

inline void bn_check_optional_channel(const char* op, const at::Tensor& input,
                                      const c10::optional<at::Tensor>& t, const char* name) {
  if (bn_defined(t)) bn_check_channel_tensor(op, input, *t, name);
}

// A tensor of the input's shape, dtype and device (residual, grad_out, output).
inline void bn_check_like_input(const char* op, const at::Tensor& input, const at::Tensor& t,
                                const char* name) {
  TORCH_CHECK_VALUE(t.sizes() == input.sizes(), op, ": expected ", name,
                    " to have the same shape as input ", shape_str(input.sizes()), ", got ",
                    shape_str(t.sizes()));
  check_same_dtype_device(op, input, "input", t, name);
}

// A statistic (mean, invstd, sums): (C,), the stat dtype, the input's device.
inline void bn_check_stat(const char* op, const at::Tensor& input, const at::Tensor& s,
                          const char* name) {
  const auto want = bn_stat_dtype(input.scalar_type());
  TORCH_CHECK_TYPE(s.scalar_type() == want, op, ": expected ", name, " to have dtype ",
                   dtype_name(want), ", got ", dtype_name(s.scalar_type()));
  TORCH_CHECK(s.device() == input.device(), op, ": expected ", name,
              " to be on the same device as input (", input.device(), "), got ", s.device());
  TORCH_CHECK_VALUE(s.dim() == 1 && s.size(0) == input.size(1), op, ": expected ", name,
                    " to have shape (", input.size(1), ",), got shape ", shape_str(s.sizes()));
}

inline void bn_check_num_batches_tracked(const char* op, const at::Tensor& input,
                                         const c10::optional<at::Tensor>& nbt) {
  if (!bn_defined(nbt)) return;
  TORCH_CHECK(nbt->device() == input.device(), op,
              ": expected num_batches_tracked to be on the same device as input (",
              input.device(), "), got ", nbt->device());
  TORCH_CHECK_VALUE(nbt->numel() == 1, op,
                    ": expected num_batches_tracked to have one element, got shape ",
                    shape_str(nbt->sizes()));
  TORCH_CHECK_TYPE(nbt->scalar_type() == at::kLong, op,
                   ": expected num_batches_tracked to have dtype int64, got ",
                   dtype_name(nbt->scalar_type()));
}

// The running-statistics update factor: momentum, or (momentum None) 1 / num_batches_tracked,
// read where the statistics are finalized (on the device, so nothing syncs or breaks a graph).
inline void bn_check_momentum(const char* op, const c10::optional<double>& momentum,
                              const c10::optional<at::Tensor>& nbt, bool updates) {
  TORCH_CHECK_VALUE(momentum.has_value() || !updates || bn_defined(nbt), op,
                    ": momentum=None (cumulative average) needs num_batches_tracked");
}

// The memory the kernels work on, and the output's format: channels_last (3d) when torch
// would suggest it for the input, else contiguous. "Rows" layout: N * L rows of C values
// (channels_last, and any input with one value per (n, c)); "planes": N * C planes of L.
inline at::MemoryFormat bn_memory_format(const at::Tensor& input) {
  if (input.dim() == 4 || input.dim() == 5) return input.suggest_memory_format();
  return at::MemoryFormat::Contiguous;
}

struct BnShape {
  int64_t n;
  int64_t c;
  int64_t l;     // values per (n, c): the product of the spatial sizes
  bool rows;     // the (N * L, C) rows layout; else (N * C, L) planes
  at::MemoryFormat format;
  int64_t count() const { return n * l; }
};

inline BnShape bn_shape(const at::Tensor& input) {
  BnShape s{};
  s.n = input.size(0);
  s.c = input.size(1);
  s.l = 1;
  for (int64_t d = 2; d < input.dim(); ++d) s.l *= input.size(d);
  s.format = bn_memory_format(input);
  s.rows = s.format != at::MemoryFormat::Contiguous || s.l == 1;
  return s;
}

// The tensor in the layout worked on; a copy (held by the caller) when it is not already.
inline at::Tensor bn_in_layout(const at::Tensor& t, const BnShape& s) {
  return t.contiguous(s.format);
}

inline at::Tensor bn_empty_like_layout(const at::Tensor& input, const BnShape& s) {
  return at::empty(input.sizes(), input.options().memory_format(s.format));
}

// A per-channel tensor as a contiguous tensor of dtype `dt` (weights and running stats are
// read in the accumulation type; C values, so the conversion is negligible).
inline at::Tensor bn_channel_as(const c10::optional<at::Tensor>& t, at::ScalarType dt) {
  if (!bn_defined(t)) return at::Tensor();
  return t->to(dt).contiguous();
}

inline at::Tensor bn_optional(const c10::optional<at::Tensor>& t) {
  return bn_defined(t) ? *t : at::Tensor();
}

// Number of fixed row chunks of the rows layout (statistics and backward sums): from the
// shape only, never from the thread count, so results are bitwise reproducible.
// Each chunk holds at least min_elems values (except when there are fewer in all).
inline int64_t bn_row_chunks(int64_t rows, int64_t c, int64_t max_chunks, int64_t min_elems) {
  const int64_t min_rows = std::max<int64_t>(1, min_elems / std::max<int64_t>(c, 1));
  int64_t chunks = (rows + min_rows - 1) / min_rows;
  if (chunks > max_chunks) chunks = max_chunks;
  return std::max<int64_t>(chunks, 1);
}

}  // namespace cnnops
