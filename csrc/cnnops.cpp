// The cnnops operator library: the namespace is defined once here; each op family adds
// its schemas with TORCH_LIBRARY_FRAGMENT in csrc/<family>.cpp and its kernels in
// csrc/cpu/<family>.cpp and csrc/cuda/<family>.cu.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(cnnops, m) {
  // Build facts for cnnops/__init__.py: whether CUDA kernels are compiled in, and which
  // CPU SIMD level the CPU kernels were built for.
  m.def("_build_has_cuda() -> bool", [] {
#ifdef CNNOPS_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
  m.def("_build_cpu_capability() -> str", [] { return std::string(CNNOPS_CPU_CAPABILITY_NAME); });
}

// A Python module with no functions: importing cnnops._C runs the registrations above.
static struct PyModuleDef cnnops_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

extern "C" __attribute__((visibility("default"))) PyObject* PyInit__C(void) {
  return PyModule_Create(&cnnops_module);
}
