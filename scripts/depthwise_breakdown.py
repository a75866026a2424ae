"""Where a depthwise forward+backward spends its time, per bench case
(cnnops/bench/depthwise_conv2d.py).

For each kernel path (CNNOPS_DEPTHWISE_CUDA_PATH) it times four things alone:
- cnnops's four ops: forward, grad_input, grad_weight and grad_bias;
- torch's pieces: F.conv2d, and convolution_backward for the input and for the weight;
- the whole forward+backward through autograd, as the bench times it.

Each time comes twice. "device" is the time per call with the device synchronized around a
run of calls. "host" is the time per call the host took to issue them. Where host is close to
device, the case is host-bound, and its kernels are not what sets its speed.

A piece alone runs on the same tensors call after call, so its operands stay in cache; the
whole pass moves through them in turn. On this project's 2-core CPU (1x144x56x56 NHWC) the
three cnnops ops took 0.33 ms alone and 0.67 ms as a whole pass. So compare pieces with
pieces, and wholes with wholes.
No assertions on times: this is a measurement, for scripts/gpu_check.sh and for people.

python scripts/depthwise_breakdown.py [--device cuda] [--sets fp32,fp16-nhwc] [--paths auto,tiled]
                                      [--filter TEXT] [--quick] [--json PATH]
"""
import argparse
import json
import os
import sys
import time

import torch

import cnnops
from cnnops.bench import core as bench_core
from cnnops.bench import depthwise_conv2d as dw_bench

SETS = {"fp32": (torch.float32, False), "fp16-nhwc": (torch.float16, True), "bf16-nhwc": (torch.bfloat16, True),
        "fp32-nhwc": (torch.float32, True)}


def timed(fn, device, reps, rounds):
    """(device ms, host ms) per call: the best of `rounds` runs of `reps` calls."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fn()
    sync()
    best_device = best_host = float("inf")
    for _ in range(rounds):
        sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        t1 = time.perf_counter()
        sync()
        t2 = time.perf_counter()
        best_host = min(best_host, (t1 - t0) / reps * 1e3)
        best_device = min(best_device, (t2 - t0) / reps * 1e3)
    return best_device, best_host


def pieces(case, device, dtype, channels_last):
    """name -> callable, for one case: cnnops's ops, torch's pieces, and both whole passes."""
    p = case.params
    x, w, b = case.make_inputs(device, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    stride, dilation, pad, groups = [p["stride"]] * 2, [p["dilation"]] * 2, p["padding"], p["channels"]
    y = torch.nn.functional.conv2d(x, w, b, stride, pad, dilation, groups)
    go = torch.randn_like(y)
    ops = torch.ops.cnnops
    cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()  # the input's layout
    bias_sizes = None if b is None else list(b.shape)

    def whole(fn):
        leaves = [t.detach().requires_grad_() for t in (x, w) + ((b,) if b is not None else ())]

        def run():
            return torch.autograd.grad(fn(*leaves, *([None] if b is None else [])), leaves, go)
        return run

    out = {
        "cnnops forward": lambda: ops.depthwise_conv2d(x, w, b, stride, [pad] * 4, dilation, "zeros"),
        "cnnops grad_input": lambda: ops.depthwise_conv2d_grad_input(go, w, list(x.shape), stride, [pad] * 4,
                                                                     dilation, "zeros", cl),
        "cnnops grad_weight": lambda: ops.depthwise_conv2d_grad_weight(go, x, list(w.shape), stride, [pad] * 4,
                                                                       dilation, "zeros", False),
        "torch forward": lambda: torch.nn.functional.conv2d(x, w, b, stride, pad, dilation, groups),
        "torch grad_input": lambda: torch.ops.aten.convolution_backward(
            go, x, w, bias_sizes, stride, [pad] * 2, dilation, False, [0, 0], groups, [True, False, False]),
        "torch grad_weight": lambda: torch.ops.aten.convolution_backward(
            go, x, w, bias_sizes, stride, [pad] * 2, dilation, False, [0, 0], groups, [False, True, False]),
        "cnnops forward+backward": whole(lambda x_, w_, b_: cnnops.F.depthwise_conv2d(x_, w_, b_, p["stride"], pad,
                                                                                      p["dilation"])),
        "torch forward+backward": whole(lambda x_, w_, b_: torch.nn.functional.conv2d(x_, w_, b_, stride, pad,
                                                                                      dilation, groups)),
    }
    if b is not None:
        out["cnnops grad_bias"] = lambda: ops.conv2d_grad_bias(go)
    return out


def breakdown(device="cuda", sets=("fp32", "fp16-nhwc"), paths=("auto", "tiled"), text_filter=None, quick=False,
              reps=20, rounds=3, report=print):
    """One row per (set, case, path, piece): {set, case, shape, path, piece, device_ms, host_ms}."""
    rows = []
    saved = os.environ.get("CNNOPS_DEPTHWISE_CUDA_PATH")
    try:
        for set_name in sets:
            dtype, channels_last = SETS[set_name]
            for case in dw_bench.cases(quick):
                if text_filter and text_filter not in case.name and text_filter not in case.shape:
                    continue
                fns = pieces(case, device, dtype, channels_last)
                # torch's pieces once per case; cnnops's once per path (the variable is read on every call)
                for path in ("torch",) + tuple(paths):
                    if path != "torch":
                        os.environ["CNNOPS_DEPTHWISE_CUDA_PATH"] = path
                    for piece, fn in fns.items():
                        if piece.startswith("torch") != (path == "torch"):
                            continue
                        dev_ms, host_ms = timed(fn, device, reps, rounds)
                        rows.append({"set": set_name, "case": case.name, "shape": case.shape, "path": path,
                                     "piece": piece, "device_ms": dev_ms, "host_ms": host_ms})
                        report(f"{set_name:9s} {case.name:22s} {path:6s} {piece:25s} device {dev_ms:8.4f} ms"
                               f"  host {host_ms:8.4f} ms")
    finally:
        if saved is None:
            os.environ.pop("CNNOPS_DEPTHWISE_CUDA_PATH", None)
        else:
            os.environ["CNNOPS_DEPTHWISE_CUDA_PATH"] = saved
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--sets", default="fp32,fp16-nhwc", help="comma-separated: " + ", ".join(SETS))
    parser.add_argument("--paths", default="auto,tiled", help="CNNOPS_DEPTHWISE_CUDA_PATH values, comma-separated")
    parser.add_argument("--filter", default=None, help="only cases whose name or shape contains this")
    parser.add_argument("--quick", action="store_true", help="the bench's quick cases")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    sets = [s for s in args.sets.split(",") if s]
    unknown = [s for s in sets if s not in SETS]
    if unknown:
        parser.error(f"unknown set(s) {unknown}; expected some of {list(SETS)}")
    allocator = bench_core.tune_allocator()  # as the bench: large CPU outputs do not page-fault on every call
    rows = breakdown(args.device, sets, [p for p in args.paths.split(",") if p], args.filter, args.quick,
                     args.reps)
    if args.json:
        meta = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                "torch": torch.__version__, "cnnops_build": cnnops.build_info(), "allocator": allocator}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
