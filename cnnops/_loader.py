"""Loads the compiled extension with one clear sentence when it cannot be loaded."""
import importlib
import os
import re

import torch

REBUILD = "pip install --no-build-isolation -e .  (or: python setup.py build_ext --inplace)"


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return set(re.findall(r"\b(avx512f|avx512bw|avx512vl|avx512dq|avx2|fma)\b", f.read()))
    except OSError:
        return None  # not Linux: cannot tell, trust the build


_NEEDS = {"avx2": {"avx2", "fma"}, "avx512": {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"}}


def load_extension():
    try:
        info = importlib.import_module("cnnops._build_info")
    except ImportError:
        raise ImportError(
            "cnnops: the C++ extension cnnops._C has not been built in this checkout; build it with: "
            + REBUILD) from None
    if info.TORCH_VERSION != torch.__version__:
        raise ImportError(
            f"cnnops: the C++ extension was built against torch {info.TORCH_VERSION} but torch "
            f"{torch.__version__} is installed; rebuild it with: {REBUILD}")
    flags = _cpu_flags()
    need = _NEEDS.get(info.CPU_CAPABILITY, set())
    if flags is not None and not need <= flags:
        raise ImportError(
            f"cnnops: the C++ extension was built for {info.CPU_CAPABILITY} CPUs and this CPU lacks "
            f"{sorted(need - flags)}; rebuild it here with: {REBUILD} "
            "(CNNOPS_CPU_CAPABILITY=default builds a portable one)")
    try:
        importlib.import_module("cnnops._C")
    except ImportError as e:
        raise ImportError(
            f"cnnops: the C++ extension cnnops._C could not be loaded ({e}); it is missing or was "
            f"built against another torch; rebuild it with: {REBUILD}") from e


def build_info():
    """What the loaded extension was built with: torch version, CUDA, CPU SIMD level."""
    info = importlib.import_module("cnnops._build_info")
    return {
        "torch": info.TORCH_VERSION,
        "cuda": bool(torch.ops.cnnops._build_has_cuda()),
        "cuda_version": info.CUDA_VERSION,
        "cuda_arch_list": info.CUDA_ARCH_LIST,
        "cpu_capability": str(torch.ops.cnnops._build_cpu_capability()),
        "debug": os.environ.get("CNNOPS_DEBUG", "0") == "1",
    }
