#pragma once
// Shared by the CPU (.cpp) and CUDA (.cu) translation units: functions marked
// CNNOPS_HOST_DEVICE compile for both, so the CPU tests exercise the exact index math
// that the CUDA kernels run.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define CNNOPS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define CNNOPS_HOST_DEVICE inline
#endif

// Full unrolling of short fixed-trip loops, so small arrays indexed by the loop counter
// stay in registers on the GPU.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define CNNOPS_UNROLL _Pragma("unroll")
#else
#define CNNOPS_UNROLL _Pragma("GCC unroll 8")
#endif
