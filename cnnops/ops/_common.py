"""Helpers shared by the op families' Python code."""
import operator

import torch
from torch._prims_common import suggest_memory_format

_CUDA_BUILT = None

SUPPORTED_DTYPES = {
    "cpu": (torch.float32, torch.float64, torch.bfloat16),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}


def dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def cuda_built():
    global _CUDA_BUILT
    if _CUDA_BUILT is None:
        _CUDA_BUILT = bool(torch.ops.cnnops._build_has_cuda())
    return _CUDA_BUILT


def check_device(op, t):
    """NotImplementedError for devices without a kernel (MPS, or CUDA in a CPU-only build).
    The meta device runs the fake kernels: shapes, dtypes and checks without data."""
    kind = t.device.type
    if kind == "cpu" or kind == "meta" or (kind == "cuda" and cuda_built()):
        return
    supported = "cpu, cuda" if cuda_built() else "cpu (this build has no CUDA kernels; rebuild with CNNOPS_WITH_CUDA=1)"
    raise NotImplementedError(
        f"{op}: device {t.device} with dtype {dtype_name(t.dtype)} is not supported; supported devices: {supported}")


def check_dtype(op, t):
    """The fake-kernel twin of the C++ check_dtype_supported()."""
    supported = SUPPORTED_DTYPES.get(t.device.type, SUPPORTED_DTYPES["cuda"])
    if t.dtype not in supported:
        raise NotImplementedError(
            f"{op}: dtype {dtype_name(t.dtype)} on device {t.device} is not supported; supported: "
            + ", ".join(dtype_name(d) for d in supported))


def shape_str(sizes):
    return str(tuple(sizes))


def conv_memory_format(input, weight):
    """Convolutions produce channels_last when the input or the weight is channels_last."""
    if suggest_memory_format(input) == torch.channels_last or suggest_memory_format(weight) == torch.channels_last:
        return torch.channels_last
    return torch.contiguous_format


def layout_from_flag(channels_last):
    """The memory format a backward op's channels_last flag asks for."""
    return torch.channels_last if channels_last else torch.contiguous_format


def empty_like_shape(shape, like, memory_format, dtype=None):
    """An empty tensor of `shape` on like's device, in like's dtype unless given (fake kernels)."""
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device, memory_format=memory_format)


def autocast_dtype(device_type):
    """The autocast dtype for device_type, or None when autocast is off there."""
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def autocast_cast(t, dtype):
    """Torch's autocast rule: floating tensors other than float64 go to the autocast dtype."""
    if t is not None and t.is_floating_point() and t.dtype != torch.float64 and t.dtype != dtype:
        return t.to(dtype)
    return t


def _int(v, name, op):
    if isinstance(v, (int, torch.SymInt)) and not isinstance(v, bool):
        return v
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"{op}: expected {name} to contain ints, got {v!r}") from None


def pair(value, name, op):
    """An int or a sequence of 1 or 2 ints as a list of two ints."""
    if isinstance(value, (list, tuple)):
        if len(value) in (1, 2):
            return [_int(v, name, op) for v in (value[0], value[-1])]
        raise ValueError(f"{op}: expected {name} to be an int or a pair of ints, got {tuple(value)}")
    if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
        try:  # numpy integers and integer 0-d tensors, which torch accepts too
            value = operator.index(value)
        except TypeError:
            raise TypeError(f"{op}: expected {name} to be an int or a pair of ints, got {value!r}") from None
    return [value, value]
