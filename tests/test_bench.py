"""The benchmark tool: runs in-process on tiny cases and checks its JSON. No timing assertions."""
import json
import os
import subprocess
import sys

import pytest
import torch

import cnnops  # noqa: F401  loads the extension
from cnnops.bench import core
from cnnops.bench import conv2d as bench_conv2d

TOP_FIELDS = ("device", "device_type", "torch", "cnnops", "build", "commit", "date", "threads", "tf32",
              "allocator", "roofline", "cases", "summary", "complete")
ROW_FIELDS = ("op", "case", "shape", "dtype", "direction", "status", "correct", "cnnops_ms", "torch_ms",
              "speedup", "flops", "bytes", "cnnops_GFLOPs", "cnnops_GBps", "pct_of_limit")


def _tiny_cases():
    c = bench_conv2d.conv_case
    return [
        c("tiny 3x3", 2, 4, 8, 10, 3, padding=1),
        c("tiny 1x1", 1, 8, 4, 9, 1),
        c("tiny strided stem", 1, 3, 8, 16, 7, stride=2, padding=3, input_grad=False),
        c("tiny dilated", 1, 4, 4, 12, 3, padding=2, dilation=2),
        c("tiny reflect", 1, 4, 4, 9, 3, padding=1, padding_mode="reflect", bias=True),
    ]


def _run(tmp_path, argv, cases=None):
    path = tmp_path / "bench.json"
    rc = core.main(["--json", str(path), "--threads", "1", "--no-mallopt", "--busy-retries", "0"] + argv, cases=cases)
    with open(path) as f:
        return rc, json.load(f)


def _check_rows(data, expected_rows):
    assert data["complete"] is True
    for key in TOP_FIELDS:
        assert key in data, key
    assert data["device_type"] == "cpu" and data["threads"] == 1
    assert data["torch"] == torch.__version__ and data["cnnops"] == cnnops.__version__
    assert data["build"] == cnnops.build_info()
    for key in ("copy_GBps", "matmul_GFLOPs"):
        assert data["roofline"][key] > 0
    assert len(data["cases"]) == expected_rows
    for row in data["cases"]:
        for key in ROW_FIELDS:
            assert key in row, key
        assert row["status"] == "ok", row.get("error")
        assert row["correct"] is True, row
        assert row["cnnops_ms"] > 0 and row["torch_ms"] > 0
        assert row["speedup"] == pytest.approx(row["torch_ms"] / row["cnnops_ms"], rel=1e-12)
        assert row["cnnops_GFLOPs"] == pytest.approx(row["flops"] / row["cnnops_ms"] / 1e6, rel=1e-9)
        assert row["pct_of_limit"] == pytest.approx(
            100 * row["cnnops_GFLOPs"] / data["roofline"]["matmul_GFLOPs"], rel=1e-9)
    for direction, s in data["summary"].items():
        assert s["cases"] == expected_rows // len(data["summary"])
        assert s["median_speedup"] > 0


def test_main_tiny_cases(tmp_path, capsys):
    cases = _tiny_cases()
    threads = torch.get_num_threads()
    rc, data = _run(tmp_path, ["--quick", "--rounds", "1"], cases=cases)
    assert rc == 0
    assert torch.get_num_threads() == threads  # --threads 1 did not leak out of main()
    _check_rows(data, 2 * len(cases))
    assert {r["direction"] for r in data["cases"]} == set(core.DIRECTIONS)
    out = capsys.readouterr().out
    for col in core.COLUMNS:
        assert col in out
    assert "median speedup" in out

    # FLOPs and bytes: 2*N*Cout*OH*OW*Cin/groups*kh*kw forward, 3x with both gradients,
    # 2x when the input gradient is not computed (the stem).
    rows = {(r["case"], r["direction"]): r for r in data["cases"]}
    fwd = 2 * 2 * 8 * 10 * 10 * 4 * 3 * 3
    assert rows[("tiny 3x3", "forward")]["flops"] == fwd
    assert rows[("tiny 3x3", "forward+backward")]["flops"] == 3 * fwd
    stem = rows[("tiny strided stem", "forward")]
    assert stem["flops"] == 2 * 8 * 8 * 8 * 3 * 7 * 7
    assert rows[("tiny strided stem", "forward+backward")]["flops"] == 2 * stem["flops"]
    assert rows[("tiny 3x3", "forward")]["bytes"] == 4 * (2 * 4 * 100 + 8 * 4 * 9 + 2 * 8 * 100)
    assert rows[("tiny reflect", "forward+backward")]["compared"] == [
        "output", "grad_input", "grad_weight", "grad_bias"]


def test_forward_only_and_rotation(tmp_path):
    # The input-set rotation (used on CUDA for memory-bound cases) on CPU with a tiny budget.
    assert core.rotation_count(1000, 0) == 1
    assert core.rotation_count(1000, 4500) == 5
    assert core.rotation_count(10, 1 << 30) == 64
    case = bench_conv2d.conv_case("tiny rotated", 1, 4, 4, 8, 3, padding=1)
    case.rotate = True
    opts = core.Options(device="cpu", quick=True, directions=("forward",), rotate_bytes=10_000, rounds=1)
    rows = core.run_cases([case], opts, roofline={"matmul_GFLOPs": 1.0, "copy_GBps": 1.0})
    assert len(rows) == 1 and rows[0]["correct"] and rows[0]["input_sets"] > 1
    assert rows[0]["speedup"] == rows[0]["torch_ms"] / rows[0]["cnnops_ms"]


def test_incorrect_case_is_flagged(tmp_path):
    case = bench_conv2d.conv_case("wrong on purpose", 1, 4, 4, 8, 3, padding=1)
    good = case.cnnops_fn
    case.cnnops_fn = lambda x, w, b: good(x, w, b) * 1.01
    rc, data = _run(tmp_path, ["--quick", "--directions", "forward", "--no-roofline"], cases=[case])
    assert rc == 1
    assert data["cases"][0]["correct"] is False
    assert data["summary"]["forward"]["cases"] == 0


@pytest.mark.parametrize("who_is_off", ["torch", "cnnops"])
def test_half_precision_verdict_against_float64(who_is_off):
    """A bfloat16 case whose results miss torch's is judged again against torch in float64:
    correct when only torch's own bfloat16 result is off (its depthwise weight gradient can
    be), still incorrect when cnnops's is. Both errors go into the row."""
    case = bench_conv2d.conv_case("half", 1, 4, 4, 8, 3, padding=1)
    good_cnnops, good_torch = case.cnnops_fn, case.torch_fn

    def off(fn):  # 10% too large, in bfloat16 only
        return lambda x, w, b: fn(x, w, b) * (1.1 if x.dtype == torch.bfloat16 else 1.0)

    if who_is_off == "torch":
        case.torch_fn = off(good_torch)
    else:
        case.cnnops_fn = off(good_cnnops)
    torch.manual_seed(0)
    base = case.make_inputs("cpu", torch.bfloat16)
    out = case.torch_fn(*base)
    opts = core.Options(device="cpu", dtype=torch.bfloat16)
    checks, _ = core.check_case(case, base, torch.randn_like(out), opts, False)
    for direction in ("forward", "forward+backward"):
        check = checks[direction]
        assert check["correct"] is (who_is_off == "torch"), (direction, check)
        assert check["reference"].startswith("torch in float64")
        errors = (check["max_abs_err_vs_float64"], check["torch_max_abs_err_vs_float64"])
        assert (errors[0] < errors[1]) is (who_is_off == "torch"), (direction, errors)


def test_half_precision_verdict_keeps_the_joint_scale():
    """The float64 re-check judges a joint-scale case (whole models: errors against the
    largest of all results) on that scale too: a grad_input 15% off its own largest value,
    far below the weight gradient's, stays correct when torch's own result is the one off."""
    torch.manual_seed(0)
    case = bench_conv2d.conv_case("half joint", 2, 4, 4, 8, 3, padding=1)
    case.joint_scale = True
    good_cnnops, good_torch = case.cnnops_fn, case.torch_fn
    case.torch_fn = lambda x, w, b: good_torch(x, w, b) * (1.1 if x.dtype == torch.bfloat16 else 1.0)
    base = case.make_inputs("cpu", torch.bfloat16)
    gy = torch.randn_like(good_torch(*base))
    leaves = core._leaves(tuple(None if t is None else t.double() for t in base), case.grad_inputs)
    out = good_torch(*leaves)
    grad_input = torch.autograd.grad(out, core._targets(leaves, case.grad_inputs), gy.double())[0]
    shift = 0.15 * grad_input.abs().max().item() / gy.double().sum().item()

    def shifted(x, w, b):  # the same output, grad_input shifted by 15% of its largest value
        y = good_cnnops(x, w, b)
        return y + ((x - x.detach()).sum() * shift).to(y.dtype)

    case.cnnops_fn = shifted
    checks, _ = core.check_case(case, base, gy, core.Options(device="cpu", dtype=torch.bfloat16), False)
    check = checks["forward+backward"]
    assert check["reference"].startswith("torch in float64")
    assert check["correct"] is True, check


def test_channels_last_option(tmp_path):
    """--channels-last: the cases' 4-D inputs in channels_last, the shape says NHWC, the JSON says so."""
    case = bench_conv2d.conv_case("tiny cl", 1, 4, 4, 8, 3, padding=1)
    converted = core.as_channels_last(case)
    x, w, b = converted.make_inputs("cpu", torch.float32)
    assert x.is_contiguous(memory_format=torch.channels_last) and w.is_contiguous(memory_format=torch.channels_last)
    assert b is None or b.dim() == 1
    assert converted.shape.endswith(" NHWC") and converted.params["channels_last"]
    assert core.as_channels_last(converted) is converted
    rc, data = _run(tmp_path, ["--quick", "--rounds", "1", "--directions", "forward", "--no-roofline",
                               "--channels-last"], cases=[case])
    assert rc == 0 and data["config"]["channels_last"] is True and data["cases"][0]["correct"] is True
    assert data["cases"][0]["shape"].endswith(" NHWC")


def test_unsupported_dtype_is_reported(tmp_path):
    # cnnops has no CPU float16 kernels: rows say "unsupported", nothing crashes.
    cases = _tiny_cases()[:1]
    rc, data = _run(tmp_path, ["--quick", "--dtype", "float16", "--directions", "forward", "--no-roofline"],
                    cases=cases)
    assert rc == 0
    assert data["cases"][0]["status"] == "unsupported"


def test_registry_and_cli_errors(capsys):
    assert "conv2d" in core.FAMILIES
    for quick in (True, False):
        cases = core.load_cases(core.FAMILIES, quick)
        assert cases and all(c.family in core.FAMILIES for c in cases)
    assert len(core.load_cases(["conv2d"], True)) <= 8
    with pytest.raises(SystemExit) as e:
        core.main(["--ops", "no_such_family"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        core.main(["--directions", "sideways"])
    assert core.main(["--list", "--quick"]) == 0
    assert "r50 3x3 64" in capsys.readouterr().out
    if not torch.cuda.is_available():
        assert core.main(["--device", "cuda", "--quick"]) == 2


def test_allocator_tuning_never_raises():
    assert "not applied" in core.tune_allocator(False)
    # The real call changes the malloc settings of its process: run it in a child.
    code = "from cnnops.bench.core import tune_allocator; print(tune_allocator(True))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(cnnops.__file__))))
    assert res.returncode == 0, res.stderr
    msg = res.stdout.strip()
    assert msg
    if sys.platform.startswith("linux") and "glibc" in msg and "failed" not in msg:
        assert "M_MMAP_MAX=0" in msg


@pytest.mark.slow
def test_quick_conv2d_run(tmp_path):
    """The real --quick conv2d case list, as shipped (about 10 s on the 2-core machine)."""
    rc, data = _run(tmp_path, ["--ops", "conv2d", "--quick"])
    assert rc == 0
    _check_rows(data, 2 * len(bench_conv2d.cases(True)))


def test_disturbed_case_is_run_again(monkeypatch):
    loads = iter([0.9, 0.5, 0.7])  # every attempt disturbed: the least disturbed one is kept

    class FakeMonitor:
        def result(self):
            return {"other_load": next(loads)}

    monkeypatch.setattr(core, "CpuMonitor", FakeMonitor)
    monkeypatch.setattr(core, "wait_for_quiet", lambda s: True)
    case = bench_conv2d.conv_case("tiny", 1, 4, 4, 8, 3, padding=1)
    opts = core.Options(device="cpu", quick=True, directions=("forward",), rounds=1, busy_retries=2)
    rows = core.run_cases([case], opts, roofline={})
    assert rows[0]["attempts"] == 2 and rows[0]["other_cpu_load"] == 0.5
    assert "busy" in core.format_table(rows)


def test_cuda_timing_logic_with_a_fake_clock(monkeypatch):
    """The CUDA branch of Timing (warm-up, calls per round, event arithmetic), run on the CPU
    with fake events, since the development machine has no GPU."""
    import time as _time

    class FakeEvent:
        def __init__(self, enable_timing=False):
            self.t = None

        def record(self):
            self.t = _time.perf_counter()

        def synchronize(self):
            pass

        def elapsed_time(self, end):
            return (end.t - self.t) * 1e3

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    opts = core.Options(device="cuda", quick=True, rotate_bytes=0)
    calls = []

    def step():
        calls.append(1)
        _time.sleep(0.002)

    t = core.Timing(opts)
    t.warmup("s", step)
    assert 1 <= t._n["s"] <= int(opts.cuda_round_time / 0.002) + 1
    before = len(calls)
    sec = t.measure("s", step)
    assert len(calls) - before == t._n["s"]
    assert 0.002 <= sec < 0.05


def test_gpu_spec_and_limits():
    spec = core.gpu_spec("NVIDIA H200")
    assert spec["memory_TBps"] == 4.8
    h100 = core.gpu_spec("NVIDIA H100 80GB HBM3")
    assert h100["memory_TBps"] == 3.35 and "note" not in h100
    assert "note" in core.gpu_spec("NVIDIA H100 PCIe")
    assert core.gpu_spec("NVIDIA A100-SXM4-80GB") is None
    assert core.spec_compute_peak(h100, torch.float32, True) == 495.0
    assert core.spec_compute_peak(h100, torch.float32, False) == 67.0
    assert core.spec_compute_peak(h100, torch.bfloat16, False) == 989.0
    row = {"cnnops_ms": 1.0, "bound": "compute", "dtype": "float32", "cnnops_GFLOPs": 49500.0, "torch_GFLOPs": 99000.0}
    core.apply_limits(row, {"matmul_GFLOPs": 99000.0}, h100, tf32_on=True)
    assert row["pct_of_limit"] == pytest.approx(50.0) and row["torch_pct_of_limit"] == pytest.approx(100.0)
    assert row["pct_of_spec"] == pytest.approx(10.0)
    row = {"cnnops_ms": 1.0, "bound": "memory", "dtype": "float16", "cnnops_GBps": 2400.0, "torch_GBps": 1200.0}
    core.apply_limits(row, {"copy_GBps": 3000.0}, spec)
    assert row["pct_of_limit"] == pytest.approx(80.0) and row["pct_of_spec"] == pytest.approx(50.0)
    assert not core.conv_uses_tf32("cpu", torch.float32, {"cudnn.allow_tf32": True})
    assert core.conv_uses_tf32("cuda", torch.float32, {"cudnn.conv.fp32_precision": "tf32"})
    assert not core.conv_uses_tf32("cuda", torch.float32, {"cudnn.conv.fp32_precision": "none", "cudnn.allow_tf32": False})
    assert not core.conv_uses_tf32("cuda", torch.bfloat16, {"cudnn.allow_tf32": True})


def test_depthwise_breakdown_script_on_cpu():
    """scripts/depthwise_breakdown.py (run by gpu_check.sh before the depthwise benches) calls
    every op it times with the arguments they take: one quick case, each piece once."""
    import importlib.util
    path = os.path.join(os.path.dirname(__file__), "..", "scripts", "depthwise_breakdown.py")
    spec = importlib.util.spec_from_file_location("depthwise_breakdown", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    lines, saved = [], os.environ.get("CNNOPS_DEPTHWISE_CUDA_PATH")
    rows = script.breakdown("cpu", sets=("fp32", "fp32-nhwc"), paths=("auto",), text_filter="convnext",
                            quick=True, reps=1, rounds=1, report=lines.append)
    pieces = {(r["set"], r["path"], r["piece"]) for r in rows}
    for s in ("fp32", "fp32-nhwc"):
        for piece in ("forward", "grad_input", "grad_weight", "forward+backward"):
            assert (s, "torch", f"torch {piece}") in pieces
            assert (s, "auto", f"cnnops {piece}") in pieces
        assert (s, "auto", "cnnops grad_bias") in pieces  # the ConvNeXt case has a bias
    assert len(lines) == len(rows) == 18
    assert all(r["device_ms"] > 0 and r["host_ms"] > 0 for r in rows)
    assert os.environ.get("CNNOPS_DEPTHWISE_CUDA_PATH") == saved  # restored
