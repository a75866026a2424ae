"""Build script for cnnops: one extension, ``cnnops._C``, from every file under csrc/.

Environment switches:
  CNNOPS_WITH_CUDA=1      build the CUDA kernels, fail loudly if that is impossible
  CNNOPS_WITH_CUDA=0      CPU-only build
  (unset)                 CUDA whenever torch is a CUDA build and a CUDA toolkit is found
  CNNOPS_CPU_CAPABILITY   default | avx2 | avx512 (default: what the build machine supports)
  CNNOPS_DEBUG=1          -O0 -g
  TORCH_CUDA_ARCH_LIST    respected; set to 9.0 when unset and no GPU is visible
  MAX_JOBS                respected by torch's ninja build
"""
import glob
import os
import re
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _say(msg):
    print(f"[cnnops setup] {msg}", file=sys.stderr)


def _find_cuda_home():
    """The real toolkit root. The nvcc on PATH may be a wrapper script, so torch's guess
    (the directory above `which nvcc`) can be wrong and linking then fails on -lcudart."""
    candidates = []
    if os.environ.get("CUDA_HOME"):
        candidates.append(os.environ["CUDA_HOME"])
    if os.environ.get("CUDA_PATH"):
        candidates.append(os.environ["CUDA_PATH"])
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = os.path.realpath(nvcc)
        candidates.append(os.path.dirname(os.path.dirname(real)))
        try:  # a wrapper script: look for the absolute nvcc path it executes
            with open(real, "rb") as f:
                head = f.read(4096)
            if head.startswith(b"#!"):
                for m in re.finditer(rb"(/[^\s'\"]+)/bin/nvcc", head):
                    candidates.append(m.group(1).decode())
        except OSError:
            pass
    candidates += sorted(glob.glob("/usr/local/cuda*"), reverse=True)
    for c in candidates:
        if os.path.isfile(os.path.join(c, "bin", "nvcc")) and os.path.isfile(
            os.path.join(c, "include", "cuda_runtime.h")
        ):
            return c
    return None


def _extra_cuda_includes():
    """torch's CUDA headers include cusparse.h etc.; some toolkits lack them, but the NVIDIA
    wheels that torch installs carry them under site-packages/nvidia/*/include."""
    dirs = []
    for p in sys.path:
        for inc in glob.glob(os.path.join(p, "nvidia", "*", "include")):
            if os.path.isfile(os.path.join(inc, "cusparse.h")) and inc not in dirs:
                dirs.append(inc)
    return dirs


WITH_CUDA_ENV = os.environ.get("CNNOPS_WITH_CUDA", "").strip()
CUDA_HOME = _find_cuda_home()
if CUDA_HOME and WITH_CUDA_ENV != "0":
    os.environ["CUDA_HOME"] = CUDA_HOME  # must be set before cpp_extension is imported

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _want_cuda():
    if WITH_CUDA_ENV == "0":
        return False
    possible = torch.version.cuda is not None and CUDA_HOME is not None
    if WITH_CUDA_ENV == "1" and not possible:
        raise RuntimeError(
            "CNNOPS_WITH_CUDA=1 but the CUDA kernels cannot be built: "
            f"torch.version.cuda={torch.version.cuda!r} (need a CUDA build of torch), "
            f"CUDA toolkit found at {CUDA_HOME!r} (need nvcc and include/cuda_runtime.h)"
        )
    return possible


def _cpu_capability():
    """Pick the SIMD level for at::vec at build time (DESIGN.md section 3)."""
    want = os.environ.get("CNNOPS_CPU_CAPABILITY", "").strip().lower()
    if not want:
        try:
            with open("/proc/cpuinfo") as f:
                flags = set(re.findall(r"\b(avx512f|avx512bw|avx512vl|avx512dq|avx2|fma)\b", f.read()))
        except OSError:
            flags = set()
        if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"} <= flags:
            want = "avx512"
        elif {"avx2", "fma"} <= flags:
            want = "avx2"
        else:
            want = "default"
    if want == "avx512":
        return want, ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma",
                      "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"]
    if want == "avx2":
        return want, ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    if want == "default":
        return want, ["-DCPU_CAPABILITY=DEFAULT", "-DCPU_CAPABILITY_DEFAULT"]
    raise RuntimeError(f"CNNOPS_CPU_CAPABILITY must be default, avx2 or avx512, got {want!r}")


def _runtime_libstdcxx():
    """The libstdc++ shared library this Python process (and torch) runs with.

    Linked explicitly, ahead of the compiler's own libraries: a compiler whose default is
    a static libstdc++ (seen on the GPU machines: /opt/gcc) otherwise puts a second copy of
    libstdc++ into the extension, and its iostreams then crash against the process's locale
    state (std::ostringstream << long segfaulted in every error message with a number)."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1]
                if "/libstdc++.so" in path and os.path.isfile(path):
                    return path
    except OSError:
        pass
    return None


def _write_build_info(with_cuda, capability, arch_list):
    path = os.path.join(ROOT, "cnnops", "_build_info.py")
    with open(path, "w") as f:
        f.write("# Written by setup.py; records what the extension was built against.\n")
        f.write(f"TORCH_VERSION = {torch.__version__!r}\n")
        f.write(f"WITH_CUDA = {with_cuda!r}\n")
        f.write(f"CUDA_VERSION = {(torch.version.cuda if with_cuda else None)!r}\n")
        f.write(f"CPU_CAPABILITY = {capability!r}\n")
        f.write(f"CUDA_ARCH_LIST = {arch_list!r}\n")


def build_extension():
    with_cuda = _want_cuda()
    debug = os.environ.get("CNNOPS_DEBUG", "0") == "1"
    capability, simd_flags = _cpu_capability()
    opt = ["-O0", "-g"] if debug else ["-O3"]

    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    define_macros = [("CNNOPS_CPU_CAPABILITY_NAME", f'"{capability}"')]
    # torch's vec headers use clang's '#pragma unroll', which GCC reports once per file.
    cxx = opt + ["-fopenmp", "-fvisibility=hidden", "-Wno-unknown-pragmas"] + simd_flags
    include_dirs = [os.path.join(ROOT, "csrc")]
    extra_link = ["-fopenmp"]
    libstdcxx = _runtime_libstdcxx()
    if libstdcxx:
        extra_link.append(libstdcxx)

    arch_list = None
    if with_cuda:
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"  # torch 2.14 raises IndexError otherwise
        arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST")
        include_dirs += _extra_cuda_includes()
        define_macros.append(("CNNOPS_WITH_CUDA", "1"))
        nvcc = opt + ["--expt-relaxed-constexpr", "-lineinfo"]
        if debug:
            nvcc += ["-G"]
        if os.environ.get("CNNOPS_PTXAS_VERBOSE") == "1":
            nvcc += ["-Xptxas", "-v"]
        ext = CUDAExtension(
            "cnnops._C", sources, include_dirs=include_dirs, define_macros=define_macros,
            extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=extra_link,
        )
    else:
        ext = CppExtension(
            "cnnops._C", sources, include_dirs=include_dirs, define_macros=define_macros,
            extra_compile_args={"cxx": cxx}, extra_link_args=extra_link,
        )
    _say(f"torch {torch.__version__}, CUDA kernels: {'yes (' + str(arch_list) + ', ' + str(CUDA_HOME) + ')' if with_cuda else 'no'}, "
         f"CPU capability: {capability}, {'debug' if debug else 'release'}")
    _write_build_info(with_cuda, capability, arch_list)
    return ext


os.makedirs(os.path.join(ROOT, "cnnops"), exist_ok=True)  # build_ext --inplace needs it

setup(
    ext_modules=[build_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
