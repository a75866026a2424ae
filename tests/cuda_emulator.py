"""Runs the kernels of a .cu file on the CPU, to check their index math where no GPU is at hand.

The .cu source is compiled by the host C++ compiler as an extension module, with:
  - every CUDA thread an OS thread, `__syncthreads()` a `std::barrier` over the block's
    threads, the blocks of a launch one after another;
  - `extern __shared__ __align__(16) unsigned char smem_raw[];` the launch's bytes of dynamic
    shared memory and a guard zone after them, filled with 0xCD bytes before each block: a
    read of an element no thread staged shows up as garbage in the results, a write past the
    end fails the launch;
  - `kernel<<<grid, block, smem, stream>>>(args)` an emulated launch that checks the block
    size (at most 1024 threads, z at most 64) and the dynamic shared memory (at most 48 KiB);
  - the current stream a null stream and the launch check a no-op.
What it cannot see: races between threads (a missing barrier may go unnoticed), misaligned
vector accesses (x86 allows them), `__launch_bounds__` (erased: the block-size check is the
hardware's 1024), warp-level intrinsics and atomics (not provided: a file that uses them
does not compile here), and anything about speed. `harness` is C++ appended to the source: functions that set up
arguments and call the file's host entry points on CPU tensors, plus their PYBIND11_MODULE.
"""
import glob
import os
import re
import shutil
import sys

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PRELUDE = r"""
#include <barrier>
#include <cstring>
#include <thread>
#include <vector>
#include <torch/extension.h>
namespace emu {
struct Dim { unsigned x = 1, y = 1, z = 1; };
inline thread_local Dim thread_idx, block_idx;
inline Dim block_dim;
inline std::barrier<>* block_barrier = nullptr;
// Dynamic shared memory: exactly the bytes the launch asked for, then a guard zone; both
// filled with 0xCD before each block (a read of an element nobody staged gives garbage,
// a write past the end is reported after the block).
constexpr size_t kGuard = 4096;
alignas(16) inline unsigned char shared_bytes[48 * 1024 + kGuard];
inline unsigned char* shared_memory() { return shared_bytes; }
inline void sync_block() { block_barrier->arrive_and_wait(); }
struct Launch {
  Dim grid, block;
  size_t smem_bytes;
  Launch(dim3 g, dim3 b, size_t smem = 0, cudaStream_t = nullptr) : grid{g.x, g.y, g.z}, block{b.x, b.y, b.z} {
    TORCH_CHECK(smem <= 48 * 1024, "emulated launch: ", smem, " bytes of dynamic shared memory");
    smem_bytes = smem;
    TORCH_CHECK(b.x * b.y * b.z <= 1024 && b.z <= 64, "emulated launch: block ", b.x, "x", b.y, "x", b.z);
    TORCH_CHECK(g.x > 0 && g.y > 0 && g.z > 0, "emulated launch: empty grid");
  }
  template <typename Kernel, typename... Args>
  void operator()(Kernel kernel, Args... args) {
    block_dim = block;
    const unsigned threads = block.x * block.y * block.z;
    for (unsigned bz = 0; bz < grid.z; ++bz)
      for (unsigned by = 0; by < grid.y; ++by)
        for (unsigned bx = 0; bx < grid.x; ++bx) {
          std::memset(shared_bytes, 0xCD, smem_bytes + kGuard);
          std::barrier<> barrier(threads);
          block_barrier = &barrier;
          std::vector<std::thread> pool;
          for (unsigned t = 0; t < threads; ++t)
            pool.emplace_back([&, t] {
              thread_idx = Dim{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
              block_idx = Dim{bx, by, bz};
              kernel(args...);
              barrier.arrive_and_drop();  // a thread that returned no longer holds the others back
            });
          for (auto& th : pool) th.join();
          for (size_t i = smem_bytes; i < smem_bytes + kGuard; ++i)
            TORCH_CHECK(shared_bytes[i] == 0xCD, "emulated launch: a write past the ", smem_bytes,
                        " bytes of dynamic shared memory (byte ", i, ")");
        }
  }
};
}  // namespace emu
#define threadIdx emu::thread_idx
#define blockIdx emu::block_idx
#define blockDim emu::block_dim
#define __syncthreads() emu::sync_block()
#define __global__
#define __device__
#define __host__
#define __forceinline__
#define __launch_bounds__(...)
#undef C10_CUDA_KERNEL_LAUNCH_CHECK
#define C10_CUDA_KERNEL_LAUNCH_CHECK() \
  do {                                 \
  } while (0)
"""


def cuda_include_dirs():
    """The CUDA toolkit's headers (the kernels' host code includes the runtime API), then the
    NVIDIA wheels' (cusparse.h and the like, which some toolkits lack); None without a toolkit."""
    roots = [cpp_extension.CUDA_HOME, "/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda*"), reverse=True)
    nvcc = shutil.which("nvcc")
    if nvcc:
        roots.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    toolkit = [os.path.join(r, "include") for r in roots
               if r and os.path.isfile(os.path.join(r, "include", "crt", "host_defines.h"))]
    if not toolkit:
        return None
    wheels = [d for p in sys.path for d in glob.glob(os.path.join(p, "nvidia", "*", "include"))]
    return [toolkit[0]] + wheels


def translate(source):
    """The .cu text as host C++ (its #includes first, then the emulation layer, then the rest)."""
    source = source.replace("extern __shared__ __align__(16) unsigned char smem_raw[];",
                            "unsigned char* smem_raw = emu::shared_memory();")
    source = source.replace("at::cuda::getCurrentCUDAStream()", "(cudaStream_t) nullptr")
    # name<<<config>>>(args) -> emu::Launch(config)(name, args); name may be a template-id.
    source, launches = re.subn(r"([A-Za-z_][\w:]*(?:<[^<>;]*>)?)\s*<<<(.*?)>>>\(", r"emu::Launch(\2)(\1, ",
                               source, flags=re.S)
    assert launches > 0, "no kernel launch found"
    lines = source.split("\n")
    includes = [line for line in lines if line.startswith("#include")]
    body = [line for line in lines if not line.startswith("#include")]
    return "\n".join(includes) + _PRELUDE + "\n".join(body)


def build_or_skip(name, cu_path, harness):
    """build(), or skips the calling test where the CUDA runtime headers are missing."""
    if cuda_include_dirs() is None:
        import pytest
        pytest.skip("CUDA runtime headers not found: the emulated kernels cannot be compiled")
    return build(name, cu_path, harness)


def build(name, cu_path, harness):
    """Compiles cu_path (relative to the repository) with the harness; returns the module."""
    includes = cuda_include_dirs()
    if includes is None:
        raise RuntimeError("CUDA runtime headers not found (cuda_runtime_api.h)")
    build_dir = os.path.join(ROOT, "build", "cuda_emulator", name)
    os.makedirs(build_dir, exist_ok=True)
    with open(os.path.join(ROOT, cu_path)) as f:
        text = translate(f.read()) + "\n" + harness
    path = os.path.join(build_dir, f"{name}.cpp")
    # Rewrite only on change, so that a second build of the same source reuses the object.
    old = open(path).read() if os.path.exists(path) else None
    if old != text:
        with open(path, "w") as f:
            f.write(text)
    return cpp_extension.load(name, [path], extra_include_paths=[os.path.join(ROOT, "csrc")] + includes,
                              extra_cflags=["-std=c++20", "-O1", "-DCNNOPS_WITH_CUDA=1"], build_directory=build_dir,
                              verbose=False)
