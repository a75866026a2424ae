"""Where cnnops's depthwise convolution is slower than torch's, beyond the bench's 15 shapes.

The bench (cnnops/bench/depthwise_conv2d.py) times the networks' layers in float32; this
sweeps the settings around them (kernel 3/5/7, stride 1/2, dilation 1/2, multiplier 1/2,
NCHW and channels_last, float32/bfloat16/float64, padding modes) on a few sizes, and prints
one line per config with torch's time over ours, marking those under --mark (default 1.1).
On 2026-11-29 (AMD EPYC Zen 4, 2 threads) it found channels_last with a multiplier of 2 at
0.34-0.6x and NCHW bfloat16 3x3 at 0.34-0.73x; both were then fixed (multiplier_via_nchw,
forward_bfloat16_via_float in csrc/cpu/depthwise_conv2d.cpp).

Timings are best of 3 runs of at least --min-ms each, ours then torch's, on the same
tensors; a noisy machine moves single lines by 20% or more, so rerun a marked line before
acting on it. No assertions: a measurement for people.

python scripts/depthwise_sweep.py [--direction forward|both] [--dtypes float32,bfloat16]
                                  [--layouts nchw,nhwc] [--sizes 8x64x56,8x256x14] [--threads 2]
"""
import argparse
import itertools
import time

import torch

import cnnops
from cnnops.bench import core


def best_ms(fn, min_ms):
    fn()
    best = float("inf")
    for _ in range(3):
        reps, start = 0, time.perf_counter()
        while True:
            fn()
            reps += 1
            elapsed = time.perf_counter() - start
            if elapsed * 1e3 > min_ms and reps >= 2:
                break
        best = min(best, elapsed / reps)
    return best * 1e3


def torch_reference(x, w, stride, padding, dilation, mode):
    """What a torch.nn.Conv2d(groups=C) with this padding mode runs."""
    if mode != "zeros":
        x = torch.nn.functional.pad(x, (padding,) * 4, mode=mode)
        padding = 0
    return torch.nn.functional.conv2d(x, w, None, stride, padding, dilation, x.shape[1])


def configs(args):
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    layouts = args.layouts.split(",")
    for k, s, d, layout, m, dtype in itertools.product((3, 5, 7), (1, 2), (1, 2), layouts, (1, 2), dtypes):
        if s == 2 and d == 2:
            continue
        yield k, s, d, layout, m, dtype, "zeros"
    for mode in args.modes.split(","):
        if mode != "zeros":
            for layout in layouts:
                yield 3, 1, 1, layout, 1, torch.float32, mode


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--direction", choices=("forward", "both"), default="forward",
                        help="forward alone (no_grad), or forward+backward through autograd")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--layouts", default="nchw,nhwc")
    parser.add_argument("--modes", default="zeros,reflect,replicate", help="padding modes (non-zero: 3x3 only)")
    parser.add_argument("--sizes", default="8x64x56,8x128x28,8x256x14,8x512x7,4x32x112", help="NxCxHW list")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-ms", type=float, default=50.0)
    parser.add_argument("--mark", type=float, default=1.1, help="mark lines where torch / ours is below this")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    core.tune_allocator()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    for k, s, d, layout, m, dtype, mode in configs(args):
        for n, c, hw in sizes:
            p = d * (k - 1) // 2
            x = torch.randn(n, c, hw, hw).to(dtype)
            w = (torch.randn(c * m, 1, k, k) / k).to(dtype)
            if layout == "nhwc":
                x = x.contiguous(memory_format=torch.channels_last)
            if args.direction == "forward":
                with torch.no_grad():
                    ours = best_ms(lambda: cnnops.F.depthwise_conv2d(x, w, None, s, p, d, mode), args.min_ms)
                    theirs = best_ms(lambda: torch_reference(x, w, s, p, d, mode), args.min_ms)
            else:
                xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
                go = torch.randn_like(torch_reference(x, w, s, p, d, mode))
                ours = best_ms(lambda: torch.autograd.grad(
                    cnnops.F.depthwise_conv2d(xr, wr, None, s, p, d, mode), [xr, wr], go), args.min_ms)
                theirs = best_ms(lambda: torch.autograd.grad(
                    torch_reference(xr, wr, s, p, d, mode), [xr, wr], go), args.min_ms)
            ratio = theirs / ours
            mark = "  <<<" if ratio < args.mark else ""
            print(f"{k}x{k} s{s} d{d} m{m} {layout} {str(dtype).split('.')[-1]:8s} {mode:9s} {n}x{c}x{hw}x{hw}: "
                  f"ours {ours:.3f} ms, torch {theirs:.3f} ms, x{ratio:.2f}{mark}", flush=True)


if __name__ == "__main__":
    main()
