"""A small run of every cnnops CUDA kernel (forward and backward, every dtype, padding
mode and memory format), for compute-sanitizer. Exits non-zero on a wrong result."""
import sys

import torch

import cnnops


def conv2d_cases():
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        for mode in ("zeros", "reflect", "replicate", "circular"):
            for channels_last in (False, True):
                yield dtype, mode, channels_last


def check_conv2d():
    bad = 0
    for dtype, mode, channels_last in conv2d_cases():
        x = torch.randn(2, 6, 11, 9, device="cuda", dtype=dtype)
        w = torch.randn(8, 3, 3, 2, device="cuda", dtype=dtype)
        b = torch.randn(8, device="cuda", dtype=dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True), w.requires_grad_(True), b.requires_grad_(True)
        y = cnnops.F.conv2d(x, w, b, stride=(2, 1), padding=(1, 1), dilation=(1, 2), groups=2, padding_mode=mode)
        y.backward(torch.randn_like(y))
        ref = torch.nn.Conv2d(6, 8, (3, 2), (2, 1), (1, 1), (1, 2), 2, padding_mode=mode).to("cuda", torch.float64)
        with torch.no_grad():
            ref.weight.copy_(w.double()), ref.bias.copy_(b.double())
        r = ref(x.detach().double())
        err = ((y.double() - r).norm() / r.norm()).item()
        tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}[dtype]
        status = "ok" if err < tol else "WRONG"
        bad += status != "ok"
        print(f"conv2d {dtype} {mode} channels_last={channels_last}: rel err {err:.2e} {status}")
    return bad


if __name__ == "__main__":
    assert torch.cuda.is_available(), "no CUDA device"
    failures = check_conv2d()
    torch.cuda.synchronize()
    print(f"smoke: {failures} wrong")
    sys.exit(1 if failures else 0)
