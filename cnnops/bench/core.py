"""Benchmark machinery shared by every op family (DESIGN.md section 5).

- cnnops and torch run side by side in one process, on the same input tensors, in
  interleaved rounds (cnnops, torch, cnnops, torch, ...); each side keeps its best round.
- CPU: torch.utils.benchmark.Timer.blocked_autorange per round (with the thread count set
  explicitly: Timer's own default is one thread).
- CUDA: torch.backends.cudnn.benchmark = True, warm-up, then CUDA events around a loop
  of calls; TF32 flags are recorded.
- glibc allocator: mallopt(M_MMAP_MAX, 0) and a high M_TRIM_THRESHOLD at start, so big
  outputs of either side do not pay fresh page faults on every call.
- Memory-bound cases on CUDA rotate among input sets totalling more than the L2 cache.
- Each case is checked against torch once before it is timed; rows record "correct".
- Roofline: a large tensor copy (GB/s, read + written) and a large matmul (GFLOP/s),
  measured in the same run, are the limits that "% of limit" refers to.

An op family is a module cnnops/bench/<family>.py with ``cases(quick) -> list[Case]``;
adding one is adding its name to FAMILIES.
"""
import argparse
import ctypes
import datetime
import importlib
import importlib.util
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

FAMILIES = (
    "conv2d",
    "pool2d",
    "layer_norm",
    "depthwise_conv2d",
    "separable_conv2d",
    "conv_transpose2d",
    "batch_norm",
    "models",  # end-to-end rows: whole converted networks
)

DIRECTIONS = ("forward", "forward+backward")
_DIRECTION_ALIASES = {"forward": "forward", "fwd": "forward", "forward+backward": "forward+backward",
                      "fwd+bwd": "forward+backward", "backward": "forward+backward"}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}

# glibc <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30

# Spec sheet peaks (DESIGN.md section 5). The H100 figures are the SXM part's; H200 is the
# same GH100 compute with faster memory. Dense tensor-core figures for TF32/FP16/BF16.
GPU_SPECS = {
    "H200": {"name": "H200 SXM", "memory_TBps": 4.8, "fp32_TFLOPs": 67.0, "tf32_TFLOPs": 495.0,
             "fp16_TFLOPs": 989.0, "bf16_TFLOPs": 989.0},
    "H100": {"name": "H100 SXM", "memory_TBps": 3.35, "fp32_TFLOPs": 67.0, "tf32_TFLOPs": 495.0,
             "fp16_TFLOPs": 989.0, "bf16_TFLOPs": 989.0},
}


# ---------------------------------------------------------------------------- cases

@dataclass
class Case:
    """One benchmark shape of one op.

    make_inputs(device, dtype) -> tuple of tensors (None allowed, e.g. no bias); the same
    tuple is passed to cnnops_fn and torch_fn, which return the output tensor.
    grad_inputs: indices of inputs that get gradients in the forward+backward direction.
    flops(direction) and nbytes(direction, dtype): the work and the necessary bytes (each
    input read once, each output written once). bound: "compute" (percent of the measured
    matmul rate) or "memory" (percent of the measured copy bandwidth).
    """
    family: str
    name: str
    shape: str
    make_inputs: Callable
    cnnops_fn: Callable
    torch_fn: Callable
    flops: Callable
    nbytes: Callable
    grad_inputs: tuple = (0,)
    bound: str = "compute"
    params: dict = field(default_factory=dict)
    rotate: Optional[bool] = None  # None: rotate input sets on CUDA when bound == "memory"
    torch_impl: str = ""  # what the torch side calls, for the JSON
    input_names: tuple = ()  # names of the inputs, for the gradient checks ("input", "weight", ...)
    # compare every gradient with an atol relative to the largest of them all (whole models:
    # some parameters' gradients nearly cancel, and fp32 rounding is relative to the rest)
    joint_scale: bool = False
    # float32 (rtol, atol_rel) in place of tolerance()'s, for whole networks: a training step
    # through BatchNorm in train mode amplifies float32 rounding (the models agree with torch
    # to ~1e-14 in float64, see tests/test_models.py), so two correct float32 implementations
    # differ by up to ~1e-3 of the largest gradient, depending on the random weights.
    fp32_tolerance: Optional[tuple] = None

    def input_name(self, i):
        return self.input_names[i] if i < len(self.input_names) else f"input{i}"

    def should_rotate(self):
        return self.bound == "memory" if self.rotate is None else self.rotate


def load_cases(families, quick):
    cases = []
    for fam in families:
        mod = importlib.import_module(f"cnnops.bench.{fam}")
        cases += mod.cases(quick)
    return cases


def as_channels_last(case):
    """The case with every 4-D tensor input in channels_last (--channels-last)."""
    if case.params.get("channels_last"):
        return case
    make = case.make_inputs

    def make_inputs(device, dtype):
        return tuple(t.contiguous(memory_format=torch.channels_last) if isinstance(t, torch.Tensor) and t.dim() == 4
                     else t for t in make(device, dtype))

    return dataclasses.replace(case, shape=case.shape + " NHWC", make_inputs=make_inputs,
                               params={**case.params, "channels_last": True})


@dataclass
class Options:
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    quick: bool = False
    directions: tuple = DIRECTIONS
    rounds: Optional[int] = None       # None: 2 (quick) or 5 (3 for calls slower than slow_call_s)
    min_run_time: Optional[float] = None  # CPU, per side per round; None: 0.04 quick, 0.3 full
    cuda_round_time: Optional[float] = None  # CUDA, per side per round; None: 0.02 quick, 0.1 full
    warmup_time: Optional[float] = None  # CUDA, per side; None: 0.05 quick, 0.2 full
    slow_call_s: float = 0.05
    busy_retries: int = 2  # run a case again when other processes disturbed it
    busy_wait_s: float = 30.0  # before such a rerun, wait up to this long for the CPUs to go quiet
    rotate_bytes: Optional[int] = None  # None: 2 x L2 on CUDA (>= 64 MiB), no rotation on CPU
    progress: Optional[object] = None  # a file, or None for silence

    def __post_init__(self):
        q = self.quick
        if self.min_run_time is None:
            self.min_run_time = 0.04 if q else 0.3
        if self.cuda_round_time is None:
            self.cuda_round_time = 0.02 if q else 0.1
        if self.warmup_time is None:
            self.warmup_time = 0.05 if q else 0.2
        if self.rotate_bytes is None:
            self.rotate_bytes = _default_rotate_bytes(self.device)

    def rounds_for(self, est_call_s):
        if self.rounds is not None:
            return self.rounds
        if self.quick:
            return 2
        return 3 if est_call_s > self.slow_call_s else 5


def _default_rotate_bytes(device):
    if device != "cuda" or not torch.cuda.is_available():
        return 0
    l2 = getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", 0) or 0
    return max(2 * l2, 64 << 20)


# ---------------------------------------------------------------------------- environment

def tune_allocator(enable=True):
    """mallopt(M_MMAP_MAX, 0) and M_TRIM_THRESHOLD = 1 GiB on glibc, so freed blocks stay in
    the heap and large outputs do not page-fault afresh on every call (for both sides).
    Returns a sentence saying what was done; never raises."""
    if not enable:
        return "glibc malloc defaults (mallopt not applied: --no-mallopt)"
    if not sys.platform.startswith("linux"):
        return f"system allocator defaults (mallopt not applied: platform {sys.platform})"
    try:
        libc = ctypes.CDLL(None)
        get_version = libc.gnu_get_libc_version
        get_version.restype = ctypes.c_char_p
        version = get_version().decode()
        mallopt = libc.mallopt
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
    except (OSError, AttributeError) as e:
        return f"allocator defaults (mallopt not applied: glibc not found: {e})"
    ok_mmap = mallopt(M_MMAP_MAX, 0)
    ok_trim = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    if ok_mmap != 1 or ok_trim != 1:
        return (f"glibc {version}: mallopt failed (M_MMAP_MAX -> {ok_mmap}, M_TRIM_THRESHOLD -> {ok_trim}); "
                "allocator defaults in effect")
    return (f"glibc {version} mallopt(M_MMAP_MAX=0, M_TRIM_THRESHOLD={TRIM_THRESHOLD}): "
            "freed memory stays in the heap, for both sides")


def _quiet(getter):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return getter()
    except Exception as e:  # the flag APIs moved between torch versions
        return f"unreadable ({type(e).__name__})"


def tf32_state():
    return {
        "cuda.matmul.allow_tf32": _quiet(lambda: torch.backends.cuda.matmul.allow_tf32),
        "cudnn.allow_tf32": _quiet(lambda: torch.backends.cudnn.allow_tf32),
        "cuda.matmul.fp32_precision": _quiet(lambda: torch.backends.cuda.matmul.fp32_precision),
        "cudnn.conv.fp32_precision": _quiet(lambda: torch.backends.cudnn.conv.fp32_precision),
        "float32_matmul_precision": _quiet(torch.get_float32_matmul_precision),
    }


def conv_uses_tf32(device, dtype, tf32):
    """Whether fp32 convolutions (cuDNN, and cnnops, which reads the same flag) may use TF32."""
    if device != "cuda" or dtype != torch.float32:
        return False
    prec = tf32.get("cudnn.conv.fp32_precision")
    if prec in ("tf32", "ieee"):
        return prec == "tf32"
    flag = tf32.get("cudnn.allow_tf32")
    return flag if isinstance(flag, bool) else False


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name(torch.cuda.current_device())
    return cpu_model()


def device_info(device):
    if device == "cuda":
        p = torch.cuda.get_device_properties(torch.cuda.current_device())
        return {"index": torch.cuda.current_device(), "sm_count": p.multi_processor_count,
                "memory_GiB": round(p.total_memory / 2**30, 1), "capability": f"{p.major}.{p.minor}",
                "L2_bytes": getattr(p, "L2_cache_size", None), "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version()}
    return {"logical_cpus": os.cpu_count(), "cpu_capability": _quiet(torch.backends.cpu.get_cpu_capability),
            "machine": platform.machine()}


def gpu_spec(name):
    for key, spec in GPU_SPECS.items():
        if key in name:
            spec = dict(spec)
            if "PCIe" in name or "NVL" in name:
                spec["note"] = f"spec figures are the SXM part's; this device is '{name}'"
            return spec
    return None


def spec_compute_peak(spec, dtype, tf32_on):
    """TFLOP/s from the spec sheet for this dtype, or None."""
    if spec is None:
        return None
    if dtype == torch.float32:
        return spec["tf32_TFLOPs"] if tf32_on else spec["fp32_TFLOPs"]
    return {torch.float16: spec.get("fp16_TFLOPs"), torch.bfloat16: spec.get("bf16_TFLOPs")}.get(dtype)


def loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


class CpuMonitor:
    """How much CPU other processes used while we ran: /proc/stat busy time (steal
    included) minus this process's own CPU time. Linux only; elsewhere reports None."""

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample():
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
            busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # minus idle, iowait
            busy_s = busy / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError, AttributeError):
            busy_s = None
        t = os.times()
        return busy_s, t.user + t.system, time.perf_counter()

    def result(self):
        busy1, own1, wall1 = self._sample()
        busy0, own0, wall0 = self.start
        wall = max(wall1 - wall0, 1e-9)
        out = {"wall_s": round(wall, 2), "process_cpu_s": round(own1 - own0, 2), "cpus": os.cpu_count()}
        if busy0 is not None and busy1 is not None:
            other = max(0.0, (busy1 - busy0) - (own1 - own0))
            out["other_cpu_s"] = round(other, 2)
            out["other_load"] = round(other / wall, 3)  # CPUs' worth used by other processes, on average
        else:
            out["other_load"] = None
        return out


def wait_for_quiet(max_s, window_s=1.0, quiet_windows=3):
    """Waits (at most max_s) until other processes used under BUSY_LOAD CPUs for
    quiet_windows consecutive windows; returns whether that happened."""
    deadline = time.perf_counter() + max_s
    quiet = 0
    while time.perf_counter() < deadline:
        mon = CpuMonitor()
        time.sleep(window_s)
        other = mon.result().get("other_load")
        if other is None:
            return False
        quiet = quiet + 1 if other <= BUSY_LOAD else 0
        if quiet >= quiet_windows:
            return True
    return False


def busy_warning(cpu):
    """A sentence when other processes used a noticeable share of the CPUs during the run."""
    load = cpu.get("other_load")
    if load is not None and load > 0.2:
        return (f"WARNING: other processes used {load:.2f} CPUs on average during this run ({cpu['cpus']} CPUs): "
                "timings are unreliable; rerun on a quiet machine")
    return None


def git_commit():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        sha = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None, None
        st = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                            capture_output=True, text=True, timeout=10)
        return sha.stdout.strip(), (bool(st.stdout.strip()) if st.returncode == 0 else None)
    except (OSError, subprocess.SubprocessError):
        return None, None


# ---------------------------------------------------------------------------- timing

def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def cycler(items):
    """A no-argument callable returning items in turn (the same object when only one)."""
    if len(items) == 1:
        only = items[0]
        return lambda: only
    return itertools.cycle(items).__next__


def rotation_count(bytes_per_set, rotate_bytes, max_sets=64):
    """How many input sets to rotate among so that together they exceed rotate_bytes."""
    if not rotate_bytes or bytes_per_set <= 0:
        return 1
    return max(1, min(max_sets, rotate_bytes // bytes_per_set + 1))


class Timing:
    """Times no-argument callables on one device; one call of measure() is one round."""

    def __init__(self, opts):
        self.opts = opts
        self._n = {}

    def warmup(self, key, step):
        """Warm-up (CUDA: autotuning, caches) and, on CUDA, choose calls per round."""
        opts = self.opts
        if opts.device != "cuda":
            step()
            return
        torch.cuda.synchronize()
        t0, calls = time.perf_counter(), 0
        while calls < 3 or time.perf_counter() - t0 < opts.warmup_time:
            step()
            torch.cuda.synchronize()
            calls += 1
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(3):
            step()
        end.record()
        end.synchronize()
        per_call = max(start.elapsed_time(end) / 3e3, 1e-7)
        self._n[key] = int(min(10000, max(1, opts.cuda_round_time / per_call)))

    def measure(self, key, step):
        """Seconds per call, the best of this round."""
        if self.opts.device == "cuda":
            n = self._n[key]
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(n):
                step()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / n
        from torch.utils.benchmark import Timer
        m = Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads()
                  ).blocked_autorange(min_run_time=self.opts.min_run_time)
        return min(m.times)


def best_of(step, opts, rounds):
    t = Timing(opts)
    t.warmup("x", step)
    return min(t.measure("x", step) for _ in range(rounds))


# ---------------------------------------------------------------------------- roofline

class _matmul_tf32:
    """TF32 for CUDA fp32 matmuls on (True) or off (False) inside the block, None: leave it.
    Through the legacy torch.backends.cuda.matmul.allow_tf32 flag, whose setter keeps the
    legacy and new (fp32_precision) states consistent; setting the new API instead makes
    torch's legacy getters raise in torch 2.14 ("mix of the legacy and new APIs")."""

    def __init__(self, tf32):
        self.tf32 = tf32
        self.prev = None

    def __enter__(self):
        if self.tf32 is not None:
            m = torch.backends.cuda.matmul
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.prev = m.allow_tf32
                m.allow_tf32 = self.tf32
        return self

    def __exit__(self, *exc):
        if self.prev is not None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    torch.backends.cuda.matmul.allow_tf32 = self.prev
            except Exception:
                pass
        return False


def set_tf32(mode):
    """--tf32 on/off: cuDNN convolutions and cuBLAS matmuls both, through the legacy flags
    (see _matmul_tf32 for why). Returns an error sentence or None."""
    if mode == "default":
        return None
    on = mode == "on"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.backends.cudnn.allow_tf32 = on
            torch.backends.cuda.matmul.allow_tf32 = on
    except Exception as e:
        return f"could not set TF32 {mode}: {type(e).__name__}: {e}"
    return None


def measure_roofline(opts, conv_tf32):
    """Copy bandwidth of a large float32 tensor (bytes read + written) and the GFLOP/s of a
    large matmul in the benchmark dtype; on CUDA fp32 the matmul follows the convolutions'
    TF32 setting, and with TF32 on the plain fp32 rate is recorded beside it (cnnops's
    conv kernels may not use TF32)."""
    cuda = opts.device == "cuda"
    out = {}
    rounds = 2 if opts.quick else 3
    buf_bytes = (1 << 30) if cuda else ((256 << 20) if opts.quick else (512 << 20))
    try:
        n = buf_bytes // 4
        src = torch.empty(n, dtype=torch.float32, device=opts.device).fill_(1.0)
        dst = torch.empty_like(src).fill_(0.0)
        t = best_of(lambda: dst.copy_(src), opts, rounds)
        out["copy_buffer_bytes"] = buf_bytes
        out["copy_GBps"] = 2 * buf_bytes / t / 1e9
        del src, dst
    except Exception as e:  # e.g. out of memory: report, don't fail the run
        out["copy_GBps"] = None
        out["copy_error"] = f"{type(e).__name__}: {e}"
    size = 8192 if cuda else 2048
    fp32_cuda = cuda and opts.dtype == torch.float32
    out["matmul_n"] = size
    out["matmul_dtype"] = str(opts.dtype).replace("torch.", "")
    out["matmul_tf32"] = bool(fp32_cuda and conv_tf32)
    variants = [("matmul_GFLOPs", out["matmul_tf32"])]
    if out["matmul_tf32"]:
        variants.append(("matmul_GFLOPs_no_tf32", False))
    for key, tf32 in variants:
        try:
            with _matmul_tf32(tf32 if fp32_cuda else None):
                a = torch.randn(size, size, device=opts.device).to(opts.dtype)
                b = torch.randn(size, size, device=opts.device).to(opts.dtype)
                c = torch.empty(size, size, device=opts.device, dtype=opts.dtype)
                t = best_of(lambda: torch.mm(a, b, out=c), opts, rounds)
                out[key] = 2 * size**3 / t / 1e9
                del a, b, c
        except Exception as e:
            out[key] = None
            out[key.replace("GFLOPs", "error")] = f"{type(e).__name__}: {e}"
    if cuda:
        torch.cuda.empty_cache()
    return out


# ---------------------------------------------------------------------------- correctness

def tolerance(dtype, device, tf32_on):
    """(rtol, atol_rel): allclose(rtol=rtol, atol=atol_rel * max|reference|)."""
    if dtype == torch.float64:
        return 1e-7, 1e-9
    if dtype == torch.float32:
        return (1e-2, 1e-2) if (device == "cuda" and tf32_on) else (1e-4, 1e-5)
    if dtype == torch.float16:
        return 1e-2, 1e-2
    return 4e-2, 4e-2  # bfloat16


def compare(got, ref, rtol, atol_rel, scale_floor=0.0):
    """(ok, max_abs_err, max_abs_ref). atol is atol_rel times the larger of max|ref| and
    scale_floor."""
    if got is None or ref is None:
        return got is None and ref is None, 0.0, 0.0
    if got.shape != ref.shape:
        return False, float("inf"), 0.0
    g, r = got.detach().double(), ref.detach().double()
    scale = r.abs().max().item() if r.numel() else 0.0
    err = (g - r).abs().max().item() if r.numel() else 0.0
    ok = bool(torch.allclose(g, r, rtol=rtol, atol=atol_rel * max(scale, scale_floor, 1e-30)))
    return ok and math.isfinite(err), err, scale


def _leaves(inputs, grad_idx):
    out = []
    for i, t in enumerate(inputs):
        if t is not None and i in grad_idx:
            out.append(t.detach().requires_grad_(True))
        else:
            out.append(None if t is None else t.detach())
    return tuple(out)


def _targets(inputs, grad_idx):
    return [inputs[i] for i in grad_idx if inputs[i] is not None]


def check_case(case, base, gy, opts, tf32_on):
    """Runs both sides once per direction on the same inputs and compares. Returns
    ({direction: check dict}, estimated seconds per cnnops call, per direction)."""
    rtol, atol = tolerance(opts.dtype, opts.device, tf32_on)
    if case.fp32_tolerance is not None and opts.dtype == torch.float32 and not (opts.device == "cuda" and tf32_on):
        rtol, atol = case.fp32_tolerance
    checks, est = {}, {}
    for direction in opts.directions:
        if direction == "forward":
            inp = tuple(None if t is None else t.detach() for t in base)
            with torch.no_grad():
                _sync(opts.device)
                t0 = time.perf_counter()
                got = case.cnnops_fn(*inp)
                _sync(opts.device)
                est[direction] = time.perf_counter() - t0
                ref = case.torch_fn(*inp)
            ok, err, scale = compare(got, ref, rtol, atol)
            checks[direction] = {"correct": ok, "max_abs_err": err, "max_abs_ref": scale,
                                 "compared": ["output"]}
            ours, theirs = (got,), (ref,)
        else:
            results = []
            for fn in (case.cnnops_fn, case.torch_fn):
                leaves = _leaves(base, case.grad_inputs)
                targets = _targets(leaves, case.grad_inputs)
                _sync(opts.device)
                t0 = time.perf_counter()
                y = fn(*leaves)
                grads = torch.autograd.grad(y, targets, gy)
                _sync(opts.device)
                results.append((time.perf_counter() - t0, y.detach(), grads))
            est[direction] = results[0][0]
            names = ["output"] + [f"grad_{case.input_name(i)}" for i in case.grad_inputs if base[i] is not None]
            oks, errs = [], {}
            refs = (results[1][1],) + tuple(results[1][2])
            floor = max(r.detach().abs().max().item() for r in refs if r.numel()) if case.joint_scale else 0.0
            for name, g, r in zip(names, (results[0][1],) + tuple(results[0][2]), refs):
                ok, err, scale = compare(g, r, rtol, atol, floor)
                oks.append(ok)
                errs[name] = {"max_abs_err": err, "max_abs_ref": scale, "correct": ok}
            checks[direction] = {"correct": all(oks), "max_abs_err": max(e["max_abs_err"] for e in errs.values()),
                                 "compared": names, "detail": errs}
            ours, theirs = (results[0][1],) + tuple(results[0][2]), refs
        if not checks[direction]["correct"] and opts.dtype in (torch.float16, torch.bfloat16):
            checks[direction].update(_float64_verdict(case, base, gy, direction, ours, theirs, rtol, atol))
    return checks, est


def _float64_verdict(case, base, gy, direction, ours, theirs, rtol, atol):
    """For float16/bfloat16 cases that missed torch's result: the verdict against torch in
    float64 on the same (rounded) inputs. torch's own half-precision kernels can be the ones
    off: its bfloat16 depthwise weight gradient on the CPU (channels_last, dilated 5x5)
    was 352 away from float64 where the largest value is 234; cnnops's, 0.5. Both errors
    are recorded; {} where the float64 run fails."""
    def wide(t):
        return t.detach().double() if t is not None and t.is_floating_point() else t
    try:
        if direction == "forward":
            with torch.no_grad():
                refs = (case.torch_fn(*(wide(t) for t in base)),)
        else:
            leaves = _leaves(tuple(wide(t) for t in base), case.grad_inputs)
            out = case.torch_fn(*leaves)
            refs = (out.detach(),) + tuple(torch.autograd.grad(out, _targets(leaves, case.grad_inputs), wide(gy)))
        floor = max(r.abs().max().item() for r in refs if r.numel()) if case.joint_scale else 0.0
        ours = [compare(g, r, rtol, atol, floor) for g, r in zip(ours, refs)]
        theirs = [compare(t, r, rtol, atol, floor)[1] for t, r in zip(theirs, refs)]
    except Exception:  # noqa: BLE001  a torch_fn that only runs in the bench dtype: keep the verdict
        return {}
    return {"correct": all(ok for ok, _, _ in ours), "reference": "torch in float64 (torch's own result missed it)",
            "max_abs_err_vs_float64": max(err for _, err, _ in ours),
            "torch_max_abs_err_vs_float64": max(theirs)}


# ---------------------------------------------------------------------------- running

def _nbytes(inputs):
    return sum(t.numel() * t.element_size() for t in inputs if t is not None)


def _status_of(exc):
    return "unsupported" if isinstance(exc, NotImplementedError) else "error"


def _empty_row(case, direction, opts, status, error):
    return {"op": case.family, "case": case.name, "shape": case.shape, "params": case.params,
            "dtype": str(opts.dtype).replace("torch.", ""), "direction": direction, "status": status,
            "error": error, "correct": False, "torch_impl": case.torch_impl,
            "cnnops_ms": None, "torch_ms": None, "speedup": None, "bound": case.bound}


def run_case(case, opts, roofline, tf32_on, spec=None):
    """Rows (one per direction) for one case."""
    device, dtype = opts.device, opts.dtype
    torch.manual_seed(0)
    try:
        base = case.make_inputs(device, dtype)
        with torch.no_grad():
            probe = case.torch_fn(*base)
        # grad_output channels_last in the channels_last cases, as a channels_last network's
        # backward hands it to each layer (an NCHW one made both sides transpose it first:
        # about a sixth of cnnops's 8x144x56x56 3x3 channels_last forward+backward), else
        # contiguous; the same values either way. (Not torch's output's layout: torch's
        # LayerNorm2d returns a permuted, channels_last-strided tensor for NCHW input.)
        gy = torch.randn(probe.shape, device=device, dtype=dtype)
        if case.params.get("channels_last") and gy.dim() == 4:
            gy = gy.contiguous(memory_format=torch.channels_last)
        del probe
        checks, est = check_case(case, base, gy, opts, tf32_on)
    except Exception as e:
        return [_empty_row(case, d, opts, _status_of(e), f"{type(e).__name__}: {e}") for d in opts.directions]

    nsets = rotation_count(_nbytes(base) + gy.numel() * gy.element_size(),
                           opts.rotate_bytes if case.should_rotate() else 0)
    sets = [(base, gy)] + [(case.make_inputs(device, dtype), torch.randn_like(gy)) for _ in range(nsets - 1)]

    rows = []
    for direction in opts.directions:
        row = _empty_row(case, direction, opts, "ok", None)
        row.update(checks[direction])
        row["input_sets"] = nsets
        try:
            if direction == "forward":
                fsets = [tuple(None if t is None else t.detach() for t in s) for s, _ in sets]
                grad_ctx = torch.no_grad
            else:
                bsets = []
                for s, g in sets:
                    leaves = _leaves(s, case.grad_inputs)
                    bsets.append((leaves, _targets(leaves, case.grad_inputs), g))
                grad_ctx = torch.enable_grad
            steps = {}
            for side, fn in (("cnnops", case.cnnops_fn), ("torch", case.torch_fn)):
                if direction == "forward":
                    get = cycler(fsets)
                    steps[side] = (lambda fn, get: lambda: fn(*get()))(fn, get)
                else:
                    get = cycler(bsets)

                    def step(fn=fn, get=get):
                        inp, targets, g = get()
                        return torch.autograd.grad(fn(*inp), targets, g)
                    steps[side] = step
            rounds = opts.rounds_for(est[direction])
            timing = Timing(opts)
            best = {"cnnops": [], "torch": []}
            with grad_ctx():
                for side in ("cnnops", "torch"):
                    timing.warmup(side, steps[side])
                for _ in range(rounds):
                    for side in ("cnnops", "torch"):
                        best[side].append(timing.measure(side, steps[side]))
        except Exception as e:
            row.update(status=_status_of(e), error=f"{type(e).__name__}: {e}")
            rows.append(row)
            continue
        c_s, t_s = min(best["cnnops"]), min(best["torch"])
        flops, nbytes = case.flops(direction), case.nbytes(direction, dtype)
        row.update({
            "rounds": rounds,
            "cnnops_ms": c_s * 1e3, "torch_ms": t_s * 1e3, "speedup": (t_s * 1e3) / (c_s * 1e3),
            "cnnops_rounds_ms": [x * 1e3 for x in best["cnnops"]],
            "torch_rounds_ms": [x * 1e3 for x in best["torch"]],
            "flops": flops, "bytes": nbytes,
            "cnnops_GFLOPs": flops / c_s / 1e9 if flops else None,
            "torch_GFLOPs": flops / t_s / 1e9 if flops else None,
            "cnnops_GBps": nbytes / c_s / 1e9, "torch_GBps": nbytes / t_s / 1e9,
        })
        apply_limits(row, roofline, spec, tf32_on)
        rows.append(row)
    del sets
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows


def apply_limits(row, roofline, spec=None, tf32_on=False):
    """(Re)computes a timed row's "% of limit" from the roofline (and "% of spec" on GPUs)."""
    if row.get("cnnops_ms") is None:
        return row
    compute = row["bound"] == "compute"
    limit = roofline.get("matmul_GFLOPs") if compute else roofline.get("copy_GBps")
    unit, key = ("GFLOP/s", "GFLOPs") if compute else ("GB/s", "GBps")
    row["limit"] = {"what": "matmul" if compute else "copy", "value": limit, "unit": unit}
    for side in ("cnnops", "torch"):
        rate = row.get(f"{side}_{key}")
        row[("" if side == "cnnops" else "torch_") + "pct_of_limit"] = 100 * rate / limit if (limit and rate) else None
    if spec is not None:
        if compute:
            peak = spec_compute_peak(spec, DTYPES.get(row["dtype"]), tf32_on)
            peak = peak * 1e3 if peak else None  # GFLOP/s
        else:
            peak = spec["memory_TBps"] * 1e3  # GB/s
        for side in ("cnnops", "torch"):
            rate = row.get(f"{side}_{key}")
            row[("" if side == "cnnops" else "torch_") + "pct_of_spec"] = 100 * rate / peak if (peak and rate) else None
    return row


def combine_rooflines(runs):
    """The best of several roofline measurements (each number is a capacity: keep the max)."""
    out = dict(runs[0]) if runs else {}
    for key in ("copy_GBps", "matmul_GFLOPs", "matmul_GFLOPs_no_tf32"):
        vals = [r.get(key) for r in runs if r.get(key)]
        if vals:
            out[key] = max(vals)
    return out


BUSY_LOAD = 0.2  # CPUs' worth of other processes' work above which a case counts as disturbed


def run_cases(cases, opts, roofline, tf32_on=False, spec=None, on_case=None):
    """Runs every case; a case during which other processes used more than BUSY_LOAD CPUs
    is run again (opts.busy_retries times at most) and the least disturbed attempt kept."""
    rows = []
    for i, case in enumerate(cases):
        kept = None
        for attempt in range(1 + max(0, opts.busy_retries)):
            t0 = time.perf_counter()
            mon = CpuMonitor()
            case_rows = run_case(case, opts, roofline, tf32_on, spec)
            other = mon.result().get("other_load")
            if kept is None or (other is not None and other < kept[1]):
                kept = (case_rows, other, attempt + 1, time.perf_counter() - t0)
            if other is None or other <= BUSY_LOAD or attempt == opts.busy_retries:
                break
            if opts.progress is not None:
                print(f"[{i + 1}/{len(cases)}] {case.family} {case.name}: other processes used {other:.2f} CPUs "
                      f"meanwhile; running it again ({attempt + 1}/{opts.busy_retries})", file=opts.progress, flush=True)
            wait_for_quiet(opts.busy_wait_s)
        case_rows, other, attempts, secs = kept
        for r in case_rows:
            r["other_cpu_load"] = other
            r["attempts"] = attempts
        rows += case_rows
        if opts.progress is not None:
            for r in case_rows:
                busy = f", other processes {other:.2f} CPUs" if other else ""
                print(f"[{i + 1}/{len(cases)}] {progress_line(r)}  ({secs:.1f} s{busy})", file=opts.progress, flush=True)
        if on_case is not None:
            on_case(rows)
    return rows


# ---------------------------------------------------------------------------- output

def _ms(x):
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 10 else (f"{x:.2f}" if x < 100 else f"{x:.1f}")


def _num(x, fmt="{:.1f}"):
    return "-" if x is None else fmt.format(x)


def _correct(r):
    if r["status"] == "unsupported":
        return "unsupported"
    if r["status"] == "error":
        return "ERROR"
    return "yes" if r["correct"] else "NO"


def progress_line(r):
    if r["status"] != "ok":
        return f"{r['op']} {r['case']} {r['direction']}: {r['status']}: {r['error']}"
    return (f"{r['op']} {r['case']} {r['shape']} {r['direction']}: cnnops {_ms(r['cnnops_ms'])} ms, "
            f"torch {_ms(r['torch_ms'])} ms, speedup {r['speedup']:.2f}x, correct: {_correct(r)}")


COLUMNS = ("op", "shape", "dtype", "direction", "cnnops ms", "torch ms", "speedup",
           "GFLOP/s", "GB/s", "% of limit", "correct")


def _note(r):
    other = r.get("other_cpu_load")
    if r.get("cnnops_ms") is None:
        return ""
    return f"busy: other processes {other:.2f} CPUs" if (other is not None and other > BUSY_LOAD) else ""


def table_rows(rows):
    out = []
    for r in rows:
        out.append((r["op"], f"{r['shape']} ({r['case']})", r["dtype"], r["direction"],
                    _ms(r["cnnops_ms"]), _ms(r["torch_ms"]),
                    "-" if r["speedup"] is None else f"{r['speedup']:.2f}x",
                    _num(r.get("cnnops_GFLOPs")), _num(r.get("cnnops_GBps")),
                    _num(r.get("pct_of_limit"), "{:.1f}%"), _correct(r), _note(r)))
    return out


def format_table(rows):
    """The table; a last "note" column appears only when some case was disturbed."""
    body = table_rows(rows)
    cols = COLUMNS + ("note",)
    if not any(b[-1] for b in body):
        body, cols = [b[:-1] for b in body], COLUMNS
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(cols)]
    left = {0, 1, 2, 3, 10, 11}

    def fmt(cells):
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    lines = [fmt(cols), "  ".join("-" * w for w in widths)]
    lines += [fmt(b) for b in body]
    return "\n".join(lines)


def summarize(rows, directions):
    out = {}
    for d in directions:
        sp = [r["speedup"] for r in rows if r["direction"] == d and r["status"] == "ok" and r["correct"]]
        out[d] = {"median_speedup": statistics.median(sp) if sp else None,
                  "geomean_speedup": math.exp(sum(map(math.log, sp)) / len(sp)) if sp else None,
                  "cases": len(sp)}
    return out


def summary_lines(rows, summary):
    parts = []
    for d, s in summary.items():
        if s["median_speedup"] is None:
            parts.append(f"{d}: -")
        else:
            parts.append(f"{d} {s['median_speedup']:.2f}x (geomean {s['geomean_speedup']:.2f}x, {s['cases']} cases)")
    lines = ["median speedup (torch ms / cnnops ms; > 1 means cnnops faster): " + "; ".join(parts)]
    bad = [r for r in rows if r["status"] == "error" or (r["status"] == "ok" and not r["correct"])]
    uns = [r for r in rows if r["status"] == "unsupported"]
    if bad:
        lines.append(f"WARNING: {len(bad)} row(s) incorrect or failed (left out of the medians): "
                     + ", ".join(f"{r['case']} {r['direction']}" for r in bad))
    if uns:
        lines.append(f"note: {len(uns)} row(s) unsupported by cnnops on this device/dtype: {uns[0]['error']}")
    return lines


def header_lines(meta):
    rl = meta["roofline"]
    lines = [
        f"device: {meta['device']} ({meta['device_type']})   torch {meta['torch']}   cnnops {meta['cnnops']}   "
        f"commit {(meta['commit'] or 'unknown')[:12]}{' (dirty)' if meta.get('dirty') else ''}",
        f"threads: {meta['threads']}   dtype: {meta['dtype']}   allocator: {meta['allocator']}",
    ]
    if meta["device_type"] == "cuda":
        lines.append(f"cudnn.benchmark: {meta['cudnn_benchmark']}   TF32: {meta['tf32']}   "
                     f"fp32 convolutions use TF32: {meta['conv_tf32']}")
    if rl:
        copy = _num(rl.get("copy_GBps"))
        mm = _num(rl.get("matmul_GFLOPs"))
        line = (f"roofline (measured): copy {copy} GB/s (read + written, {rl.get('copy_buffer_bytes', 0) >> 20} MiB buffers); "
                f"matmul {rl.get('matmul_n')}^2 {rl.get('matmul_dtype')}{' TF32' if rl.get('matmul_tf32') else ''} "
                f"{mm} GFLOP/s")
        if rl.get("matmul_GFLOPs_no_tf32"):
            line += f" (without TF32: {_num(rl['matmul_GFLOPs_no_tf32'])})"
        lines.append(line)
    if meta.get("spec"):
        s = meta["spec"]
        lines.append(f"spec ({s['name']}): memory {s['memory_TBps']} TB/s, FP32 {s['fp32_TFLOPs']}, TF32 {s['tf32_TFLOPs']}, "
                     f"FP16/BF16 {s['fp16_TFLOPs']} TFLOP/s dense" + (f"  [{s['note']}]" if s.get("note") else ""))
    lines.append("% of limit: compute-bound cases against the measured matmul, memory-bound ones against the "
                 "measured copy; GFLOP/s, GB/s and % are cnnops's")
    return lines


def write_json(path, payload):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, default=str)
        f.write("\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- CLI

def _csv(value):
    return [v.strip() for v in value.split(",") if v.strip()]


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m cnnops.bench",
        description="cnnops vs torch, side by side on the same inputs, in interleaved rounds (DESIGN.md section 5).")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--ops", default="all", help=f"comma-separated op families (default all: {','.join(FAMILIES)})")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    p.add_argument("--quick", action="store_true", help="a few small shapes, few rounds (real numbers, fast)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON (rewritten after every case)")
    p.add_argument("--directions", default=",".join(DIRECTIONS),
                   help="comma-separated: forward, forward+backward (default both)")
    p.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads); default torch's")
    p.add_argument("--rounds", type=int, help="interleaved rounds per case (default 5, 3 for slow cases; 2 with --quick)")
    p.add_argument("--filter", metavar="TEXT", help="only cases whose name or shape contains TEXT")
    p.add_argument("--channels-last", action="store_true",
                   help="every case with its 4-D inputs in channels_last (those already so are kept)")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--tf32", choices=("default", "on", "off"), default="default",
                   help="CUDA fp32: leave torch's TF32 flags as they are (default) or set cuDNN's and "
                        "cuBLAS's both on or off")
    p.add_argument("--busy-retries", type=int, metavar="N",
                   help="run a case again, up to N times, when other processes used the CPUs meanwhile "
                        "(default 2 on cpu, 0 on cuda and with --quick)")
    p.add_argument("--no-mallopt", action="store_true", help="leave glibc malloc at its defaults")
    p.add_argument("--no-roofline", action="store_true",
                   help="skip the copy and matmul measurements (no %% of limit)")
    p.add_argument("--markdown", action="store_true", help="also print the results as a markdown table")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of the speedups (needs matplotlib)")
    p.add_argument("--from-json", nargs="+", metavar="FILE",
                   help="render --markdown (the default) and/or --plot from result files; measures nothing")
    return p


def _parse(argv, have_cases):
    parser = build_parser()
    args = parser.parse_args(argv)
    ops = _csv(args.ops)
    if ops in (["all"], []):
        ops = list(FAMILIES)
    unknown = [o for o in ops if o not in FAMILIES]
    if unknown and not have_cases:
        parser.error(f"unknown op family {', '.join(unknown)}; known: {', '.join(FAMILIES)}")
    dirs = []
    for d in _csv(args.directions):
        if d in ("both", "all"):
            dirs += list(DIRECTIONS)
        elif d in _DIRECTION_ALIASES:
            dirs.append(_DIRECTION_ALIASES[d])
        else:
            parser.error(f"unknown direction {d!r}; expected forward, forward+backward")
    dirs = tuple(d for d in DIRECTIONS if d in dirs)
    if not dirs:
        parser.error("--directions: none given")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.rounds is not None and args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    if args.plot and importlib.util.find_spec("matplotlib") is None:  # say so before measuring
        parser.error("--plot needs matplotlib, which is not installed: pip install matplotlib")
    return args, ops, dirs


def main(argv=None, cases=None):
    """Entry point; `cases` replaces the registered families' cases (for tests).
    Returns 0, 1 when a case was incorrect or failed, 2 for a usage error. The global
    torch settings it changes (threads, cudnn.benchmark, TF32 flags) are restored on
    return, so calling it in-process leaves the caller's torch as it was; the glibc
    mallopt settings stay for the life of the process."""
    args, ops, directions = _parse(argv, cases is not None)
    if args.from_json:
        return _render_files(args)
    saved = _save_torch_state()
    try:
        return _main(args, ops, directions, cases)
    finally:
        _restore_torch_state(saved, args.tf32 != "default")


def _render_files(args):
    from cnnops.bench import report
    try:
        results = report.load_results(args.from_json)
        report.render(results, sys.stdout if (args.markdown or not args.plot) else None, args.plot)
    except ValueError as e:
        print(f"cnnops.bench: {e}", file=sys.stderr)
        return 2
    if args.plot:
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def _save_torch_state():
    return {"threads": torch.get_num_threads(), "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_tf32": _quiet(lambda: torch.backends.cudnn.allow_tf32),
            "matmul_tf32": _quiet(lambda: torch.backends.cuda.matmul.allow_tf32)}


def _restore_torch_state(saved, tf32_changed):
    if torch.get_num_threads() != saved["threads"]:
        torch.set_num_threads(saved["threads"])
    torch.backends.cudnn.benchmark = saved["cudnn_benchmark"]
    if not tf32_changed:  # setting the flags back when untouched would still rewrite torch's state
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for value, obj in ((saved["cudnn_tf32"], torch.backends.cudnn),
                           (saved["matmul_tf32"], torch.backends.cuda.matmul)):
            if isinstance(value, bool):
                try:
                    obj.allow_tf32 = value
                except Exception:
                    pass


def _main(args, ops, directions, cases):
    err = sys.stderr
    import cnnops

    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("cnnops.bench: --device cuda but torch sees no CUDA device", file=err)
            return 2
        if not cnnops.build_info()["cuda"]:
            print("cnnops.bench: --device cuda but this cnnops build has no CUDA kernels "
                  "(rebuild with CNNOPS_WITH_CUDA=1)", file=err)
            return 2
    if cases is None:
        cases = load_cases(ops, args.quick)
    else:
        cases = [c for c in cases if c.family in ops] if args.ops != "all" else list(cases)
    if args.channels_last:
        cases = [as_channels_last(c) for c in cases]
    if args.filter:
        cases = [c for c in cases if args.filter in c.name or args.filter in c.shape]
    if args.list:
        for c in cases:
            print(f"{c.family}\t{c.name}\t{c.shape}")
        return 0
    if not cases:
        print("cnnops.bench: no cases selected", file=err)
        return 2

    if args.busy_retries is None:
        args.busy_retries = 2 if (args.device == "cpu" and not args.quick) else 0
    allocator = tune_allocator(not args.no_mallopt)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    opts = Options(device=args.device, dtype=dtype, quick=args.quick, directions=directions,
                   rounds=args.rounds, progress=err, busy_retries=args.busy_retries)
    tf32_error = set_tf32(args.tf32)
    if tf32_error:
        print(f"cnnops.bench: {tf32_error}", file=err)
    tf32 = tf32_state()
    tf32["requested"] = args.tf32
    conv_tf32 = conv_uses_tf32(args.device, dtype, tf32)
    name = device_name(args.device)
    spec = gpu_spec(name) if args.device == "cuda" else None
    commit, dirty = git_commit()
    meta = {
        "device": name, "device_type": args.device, "device_info": device_info(args.device),
        "torch": torch.__version__, "cnnops": cnnops.__version__, "build": cnnops.build_info(),
        "commit": commit, "dirty": dirty,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(), "threads": torch.get_num_threads(),
        "dtype": args.dtype, "tf32": tf32, "conv_tf32": conv_tf32,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark) if args.device == "cuda" else None,
        "allocator": allocator, "spec": spec, "loadavg_start": loadavg(),
        "config": {"quick": args.quick, "ops": ops, "directions": list(directions), "rounds": args.rounds,
                   "cpu_min_run_time_s": opts.min_run_time if args.device == "cpu" else None,
                   "cuda_round_time_s": opts.cuda_round_time if args.device == "cuda" else None,
                   "rotate_bytes": opts.rotate_bytes, "filter": args.filter, "busy_retries": args.busy_retries,
                   "channels_last": args.channels_last,
                   "grad_output_layout": "channels_last in channels_last cases, else contiguous",
                   # the opt-in CUDA kernels (DESIGN.md section 3) ran instead of the default ones
                   "experimental": os.environ.get("CNNOPS_EXPERIMENTAL", "") == "1",
                   # every kernel-choice switch set (CNNOPS_DEPTHWISE_CUDA_PATH, ...)
                   "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("CNNOPS_")},
                   "timing": ("torch.utils.benchmark.Timer.blocked_autorange, best block of each round"
                              if args.device == "cpu" else "CUDA events around a loop of calls after warm-up"),
                   "best": "each side's best round"},
        "roofline": {},
    }
    print(f"cnnops.bench: {len(cases)} case(s) x {len(directions)} direction(s) on {args.device} ({name}); "
          f"allocator: {allocator}", file=err, flush=True)
    monitor = CpuMonitor()
    runs = [] if args.no_roofline else [measure_roofline(opts, conv_tf32)]
    meta["roofline"] = combine_rooflines(runs)
    for line in header_lines(meta):
        print(line, file=err, flush=True)

    def payload(rows, complete):
        return dict(meta, complete=complete, loadavg_end=loadavg(), summary=summarize(rows, directions), cases=rows)

    on_case = (lambda rows: write_json(args.json, payload(rows, False))) if args.json else None
    rows = run_cases(cases, opts, meta["roofline"], conv_tf32, spec, on_case)
    if runs:  # measured again after the cases; the best of both is the limit
        runs.append(measure_roofline(opts, conv_tf32))
        meta["roofline"] = combine_rooflines(runs)
        meta["roofline"]["runs"] = runs
        for r in rows:
            apply_limits(r, meta["roofline"], spec, conv_tf32)
    summary = summarize(rows, directions)
    meta["cpu_usage"] = monitor.result()
    meta["busy_warning"] = busy_warning(meta["cpu_usage"])
    if args.json:
        write_json(args.json, payload(rows, True))

    out = sys.stdout
    for line in header_lines(meta):
        print(line, file=out)
    print(file=out)
    print(format_table(rows), file=out)
    print(file=out)
    for line in summary_lines(rows, summary):
        print(line, file=out)
    if meta["busy_warning"]:
        print(meta["busy_warning"], file=out)
    if args.json:
        print(f"results written to {args.json}", file=out)
    if args.markdown or args.plot:
        from cnnops.bench import report
        print(file=out)
        report.render([payload(rows, True)], out if args.markdown else None, args.plot)
        if args.plot:
            print(f"plot written to {args.plot}", file=out)
    out.flush()
    failed = any(r["status"] == "error" or (r["status"] == "ok" and not r["correct"]) for r in rows)
    return 1 if failed else 0
