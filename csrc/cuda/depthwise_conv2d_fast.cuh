#pragma once
// The tiled depthwise kernels of depthwise_conv2d_fast.cu, the default CUDA path since
// their first GPU run (2026-11-27). Each returns false, having launched nothing, where it
// does not apply; the caller then runs a simple kernel of depthwise_conv2d.cu.
#include <ATen/ATen.h>

#include <cstdint>

#include "common/conv_checks.h"
#include "common/conv_index.h"

namespace cnnops {
namespace cuda {

// Helpers shared by depthwise_conv2d_fast.cu and depthwise_conv2d_direct.cu.
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// VEC consecutive channels as one load or store (two halves: one 32-bit access).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Lanes {
  T v[VEC];
};

// Whether t can be read as `vec` channels at a time: unit channel stride, every other
// stride and the base address multiples of vec (in elements), so each vector is one aligned
// access.
inline bool channel_vectors_fit(const at::Tensor& t, int64_t vec) {
  const Strides4d s = strides4d(t);
  return s.c == 1 && s.n % vec == 0 && s.h % vec == 0 && s.w % vec == 0 &&
         reinterpret_cast<std::uintptr_t>(t.const_data_ptr()) % (vec * t.element_size()) == 0;
}

// output = depthwise conv of input (geometry g), bias may be null. grad_input as a forward
// (common/depthwise_index.h): `flip` the kernel in both axes, and read input (grad_output)
// spread out by spread_h x spread_w, the convolution's stride, g being the spread geometry.
// wide_vectors (where the direct kernels go first: 3x3 by default, every size with
// CNNOPS_DEPTHWISE_CUDA_PATH=direct): the channels_last kernel takes 16 bytes of channels
// per thread where they align, not two.
bool depthwise_forward_fast(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias,
                            at::Tensor& output, const Conv2dGeometry& g, bool flip = false, int64_t spread_h = 1,
                            int64_t spread_w = 1, bool wide_vectors = false);

// The direct NCHW kernels of depthwise_conv2d_direct.cu (3x3 by default, see depthwise_conv2d.cu),
// with the same arguments as depthwise_forward_fast: square kernels 3, 5, 7 at stride 1 or 2
// (dilation 1 or 2 at stride 1; 7 x 7 at dilation 1), zero padding, spread 1 or 2 (at
// stride 1), float, half and bfloat16.
bool depthwise_forward_direct(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias,
                              at::Tensor& output, const Conv2dGeometry& g, bool flip = false, int64_t spread_h = 1,
                              int64_t spread_w = 1);

// grad_weight partial sums, [output channel][tap][slice] in the accumulate type, for the
// in-order reduction over slices in depthwise_conv2d.cu; `slices` is set to their count.
bool depthwise_grad_weight_partials_fast(const at::Tensor& grad_output, const at::Tensor& input,
                                         const Conv2dGeometry& g, at::Tensor& partials, int64_t& slices);

// The same partial sums by the direct kernels of depthwise_conv2d_direct.cu (chosen as
// depthwise_forward_direct): square kernels 3, 5, 7, stride 1 or 2, dilation 1 or 2 at stride 1;
// NCHW, or channels_last with 16-byte channel vectors (multiplier 1, aligned).
bool depthwise_grad_weight_partials_direct(const at::Tensor& grad_output, const at::Tensor& input,
                                           const Conv2dGeometry& g, at::Tensor& partials, int64_t& slices);

}  // namespace cuda
}  // namespace cnnops
