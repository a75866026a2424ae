#pragma once
// The switch for the CUDA paths that have not yet run on a GPU (DESIGN.md section 3):
// CNNOPS_EXPERIMENTAL=1 turns them on. Read per call, so tests can flip it.
#include <cstdlib>

namespace cnnops {
namespace cuda {

inline bool experimental_enabled() {
  const char* v = std::getenv("CNNOPS_EXPERIMENTAL");
  return v != nullptr && v[0] == '1';
}

}  // namespace cuda
}  // namespace cnnops
