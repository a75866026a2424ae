"""Shared test configuration: hypothesis profiles, the device list and dtype tolerances."""
import os

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from hypothesis import HealthCheck, settings

import cnnops  # noqa: F401  loads the extension and registers the ops

# ---------------------------------------------------------------- hypothesis profiles
# CI: derandomized (reproducible), no per-example deadline (2 slow cores), bounded examples.
settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "dev",
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

# ---------------------------------------------------------------- devices
CUDA_AVAILABLE = torch.cuda.is_available()

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[pytest.mark.cuda, pytest.mark.skipif(not CUDA_AVAILABLE, reason="no CUDA device visible")],
    ),
]

# The dtypes each device's kernels support (DESIGN.md section 1: CPU has no float16).
DEVICE_DTYPES = {
    "cpu": (torch.float64, torch.float32, torch.bfloat16),
    "cuda": (torch.float32, torch.float16, torch.bfloat16, torch.float64),
}


def device_dtype_params():
    """pytest params (device, dtype) for every supported pair; CUDA ones skip without a GPU."""
    params = []
    for device in ("cpu", "cuda"):
        for dtype in DEVICE_DTYPES[device]:
            name = f"{device}-{str(dtype).replace('torch.', '')}"
            if device == "cuda":
                params.append(pytest.param(device, dtype, id=name, marks=[
                    pytest.mark.cuda,
                    pytest.mark.skipif(not CUDA_AVAILABLE, reason="no CUDA device visible")]))
            else:
                params.append(pytest.param(device, dtype, id=name))
    return params


# ---------------------------------------------------------------- tolerances
# rtol, and atol relative to the magnitude of the reference (see assert_close).
_TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-4, 1e-5),
    torch.bfloat16: (2e-2, 1e-2),
    torch.float16: (2e-3, 1e-3),
}
# float32 convolutions on CUDA may use TF32 (torch's conv TF32 flag is on by default, and
# both torch and cnnops follow it): 10 mantissa bits.
_CUDA_FLOAT32 = (5e-3, 5e-3)


def tolerances(dtype, device="cpu"):
    """(rtol, atol_scale) for comparing results computed in dtype on device."""
    if dtype == torch.float32 and str(device).startswith("cuda"):
        return _CUDA_FLOAT32
    return _TOLERANCES[dtype]


def assert_close(actual, expected, dtype=None, device=None, equal_nan=False, msg=""):
    """torch.testing.assert_close with dtype-aware tolerances. atol scales with the largest
    finite magnitude of the reference, because reduced-precision rounding is relative to
    the size of the summands, not to the (possibly cancelled) result."""
    dtype = dtype or expected.dtype
    device = device or expected.device
    assert actual.shape == expected.shape, f"{msg}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{msg}: dtype {actual.dtype} != {expected.dtype}"
    rtol, atol_scale = tolerances(dtype, device)
    finite = expected.detach().double()
    finite = finite[torch.isfinite(finite)]
    scale = max(1.0, finite.abs().max().item()) if finite.numel() else 1.0
    torch.testing.assert_close(
        actual.detach().cpu().double(), expected.detach().cpu().double(),
        rtol=rtol, atol=atol_scale * scale, equal_nan=equal_nan,
        msg=lambda m: f"{msg}\n{m}" if msg else m)


def significant_strides(t):
    """Strides of the dims of size > 1 (those of size 0 or 1 are arbitrary)."""
    return tuple(s for s, d in zip(t.stride(), t.shape) if d > 1)


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same RNG state, so failures reproduce."""
    torch.manual_seed(0)
    yield


@pytest.fixture
def dynamo_reset():
    """A fresh torch.compile cache before and after the test (the torch.compile tests)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def assert_raises_eager_and_fake(run, exc, pattern, fake):
    """run() raises exc matching pattern: eagerly, or under FakeTensorMode (the fake kernels'
    checks, which mirror the C++ ones)."""
    if fake:
        with FakeTensorMode(), pytest.raises(exc, match=pattern):
            run()
    else:
        with pytest.raises(exc, match=pattern):
            run()


@pytest.fixture
def single_thread():
    """One intra-op thread, for tests that make thousands of tiny calls (gradcheck, opcheck):
    the threaded paths are covered elsewhere, and on a busy 2-core machine every tiny call
    through a 2-thread OpenMP region can wait milliseconds for the second core."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def torch_rule_strides(fn, *tensors):
    """Significant strides of fn(*tensors) run by torch on the CPU, on copies that keep each
    tensor's memory format. torch's CPU convolutions follow the memory-format rule (channels_last
    when the input or the weight is); on CUDA some of torch's backends (float64, its slow
    transposed kernel for output_padding >= stride) return NCHW whatever the inputs, and cnnops
    keeps the rule there. Reduced precision runs in float32 (the layout does not depend on it)."""
    def cpu(t):
        if t is None:
            return None
        t = t.detach()
        return t.to("cpu", torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype)
    with torch.no_grad():
        return significant_strides(fn(*[cpu(t) for t in tensors]))


# ---------------------------------------------------------------- convolution inputs
# Shared by the conv2d and conv_transpose2d tests: the layouts a 4-D input or weight comes in.

def leaf(t):
    return t.detach().requires_grad_()


def rand(*shape, dtype=torch.float64, device="cpu"):
    """Random values drawn in float64 on the CPU (the same numbers for every dtype/device)."""
    return torch.randn(*shape, dtype=torch.float64).to(device=device, dtype=dtype)


def make_input(shape, layout, dtype=torch.float64, device="cpu"):
    n, c, h, w = shape
    if layout == "channels_last_input":
        t = rand(n, c, h, w, dtype=dtype, device=device).contiguous(memory_format=torch.channels_last)
    elif layout == "sliced_input":  # every other channel and column: no dim has unit stride
        t = rand(n, 2 * c, h, 2 * w, dtype=dtype, device=device)[:, ::2, :, 1::2]
    elif layout == "transposed_input":  # an H/W-transposed view
        t = rand(n, c, w, h, dtype=dtype, device=device).transpose(2, 3)
    else:
        t = rand(n, c, h, w, dtype=dtype, device=device)
    assert t.shape == (n, c, h, w)
    return leaf(t)


def make_weight(shape, layout, dtype=torch.float64, device="cpu"):
    t = rand(*shape, dtype=dtype, device=device)
    if layout == "channels_last_weight":
        t = t.contiguous(memory_format=torch.channels_last)
    return leaf(t)
