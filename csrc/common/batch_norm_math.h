#pragma once
// batch_norm arithmetic shared by the CPU and CUDA kernels (CNNOPS_HOST_DEVICE), so the CPU
// tests check the per-channel formulas and the activation rule that the GPU runs.
//
// Forward, per channel c with batch mean m and inverse std r:
//   z = (x - m) * r * w + b (+ residual),  y = act(z)
// computed as z = x * scale + shift (+ residual), scale = r * w, shift = b - m * scale.
// Backward with g = dy masked by the activation (g = dy where act'(z) = 1, else 0) and the
// per-channel sums S = sum(g), T = sum(g * (x - m)) over the (possibly all-reduced) count M:
//   training: dx = w * r * (g - S / M - (x - m) * r^2 * T / M) = g * A - x * B + D
//   eval:     dx = g * w * r
//   dresidual = g,  dweight = T * r,  dbias = S.
#include <cmath>

#include "common/macros.h"
#include "common/welford.h"

namespace cnnops {

enum class BnActivation : int { kNone = 0, kRelu = 1, kRelu6 = 2 };

template <typename T>
CNNOPS_HOST_DEVICE T bn_activate(T z, BnActivation act) {
  if (act == BnActivation::kNone) return z;
  // NaN propagates (comparisons with NaN are false), as torch's relu and hardtanh.
  T y = z < T(0) ? T(0) : z;
  if (act == BnActivation::kRelu6 && y > T(6)) y = T(6);
  return y;
}

// Whether the gradient passes the activation, judged from its output y (torch's relu
// backward uses y > 0; relu6 = hardtanh(0, 6) passes strictly inside (0, 6)).
template <typename T>
CNNOPS_HOST_DEVICE bool bn_grad_passes(T y, BnActivation act) {
  if (act == BnActivation::kNone) return true;
  if (act == BnActivation::kRelu) return y > T(0);
  return y > T(0) && y < T(6);
}

// scale and shift of z = x * scale + shift; w, b are 1 and 0 when absent.
template <typename T>
struct BnAffine {
  T scale;
  T shift;
};

template <typename T>
CNNOPS_HOST_DEVICE BnAffine<T> bn_affine(T mean, T invstd, T w, T b) {
  const T scale = invstd * w;
  return BnAffine<T>{scale, b - mean * scale};
}

// 1 / sqrt(var + eps), var clamped at 0 against rounding.
template <typename T>
CNNOPS_HOST_DEVICE T bn_invstd(T var, T eps) {
  using std::sqrt;  // the host's; CUDA's float/double overloads on the device
  return T(1) / sqrt((var < T(0) ? T(0) : var) + eps);
}

// Coefficients of dx = g * A - x * B + D for one channel (see the top of this file).
template <typename T>
struct BnGradCoeffs {
  T a;
  T b;
  T d;
};

template <typename T>
CNNOPS_HOST_DEVICE BnGradCoeffs<T> bn_grad_coeffs(T mean, T invstd, T w, T sum_dy, T sum_dy_xmu,
                                                  T count, bool training) {
  const T a = w * invstd;
  if (!training) return BnGradCoeffs<T>{a, T(0), T(0)};
  const T inv_count = T(1) / count;
  const T b = a * invstd * invstd * sum_dy_xmu * inv_count;
  const T d = b * mean - a * sum_dy * inv_count;
  return BnGradCoeffs<T>{a, b, d};
}

// The running-statistics update (torch's): running = (1 - f) * running + f * batch, with
// the unbiased variance m2 / (count - 1) (NaN when count is 1, as torch; the functional
// wrappers refuse that case in training). factor: momentum, or 1 / num_batches_tracked for
// the cumulative average (momentum None).
template <typename T>
CNNOPS_HOST_DEVICE T bn_running_update(T running, T batch, T factor) {
  return (T(1) - factor) * running + factor * batch;
}

template <typename T>
CNNOPS_HOST_DEVICE T bn_unbiased_var(const Welford<T>& w) {
  return w.m2 / (w.count - T(1));
}

}  // namespace cnnops
