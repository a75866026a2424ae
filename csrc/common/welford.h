#pragma once
// One-pass mean/variance (Welford) and the merge of two partial results (Chan et al.),
// one copy for both devices: the CPU kernels merge their vector lanes and tails with it,
// the CUDA kernels their threads, warps and blocks.
#include "common/macros.h"

namespace cnnops {

template <typename T>
struct Welford {
  T mean;
  T m2;     // sum of squared deviations from mean
  T count;  // a float count: exact up to 2^24 (float) / 2^53 (double) per partial
};

template <typename T>
CNNOPS_HOST_DEVICE Welford<T> welford_init() {
  return Welford<T>{T(0), T(0), T(0)};
}

template <typename T>
CNNOPS_HOST_DEVICE void welford_update(Welford<T>& w, T x) {
  w.count += T(1);
  const T delta = x - w.mean;
  w.mean += delta / w.count;
  w.m2 += delta * (x - w.mean);
}

// Chan's parallel combination; either side may be empty.
template <typename T>
CNNOPS_HOST_DEVICE Welford<T> welford_merge(const Welford<T>& a, const Welford<T>& b) {
  const T count = a.count + b.count;
  if (count == T(0)) return a;
  const T nb_over_n = b.count / count;
  const T delta = b.mean - a.mean;
  Welford<T> r;
  r.count = count;
  r.mean = a.mean + delta * nb_over_n;
  r.m2 = a.m2 + b.m2 + delta * delta * a.count * nb_over_n;
  return r;
}

// Biased variance (what layer norm divides by), 0 for an empty partial.
template <typename T>
CNNOPS_HOST_DEVICE T welford_var(const Welford<T>& w) {
  return w.count > T(0) ? w.m2 / w.count : T(0);
}

}  // namespace cnnops
