"""A small run of every cnnops CUDA kernel (forward and backward, every dtype, padding
mode and memory format; conv2d, pool2d, layer_norm and depthwise_conv2d), for compute-sanitizer. Exits non-zero on a wrong result."""
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


def pool2d_cases():
    """(name, cnnops call, torch reference) for every pooling kernel: max, average,
    adaptive max/avg, and global (1 x 1) max/avg, which also run the opt-in warp kernel."""
    F, T = cnnops.F, torch.nn.functional
    return [
        ("max_pool2d", lambda x: F.max_pool2d(x, 3, 2, 1, 2, True, True), lambda x: T.max_pool2d(x, 3, 2, 1, 2, True, True)),
        ("avg_pool2d", lambda x: F.avg_pool2d(x, 3, 2, 1, True, False), lambda x: T.avg_pool2d(x, 3, 2, 1, True, False)),
        ("avg_pool2d_div", lambda x: F.avg_pool2d(x, 2, 1, 1, False, True, 3), lambda x: T.avg_pool2d(x, 2, 1, 1, False, True, 3)),
        ("adaptive_max", lambda x: F.adaptive_max_pool2d(x, (4, 3), True), lambda x: T.adaptive_max_pool2d(x, (4, 3), True)),
        ("adaptive_avg", lambda x: F.adaptive_avg_pool2d(x, (4, 3)), lambda x: T.adaptive_avg_pool2d(x, (4, 3))),
        ("global_max", lambda x: F.adaptive_max_pool2d(x, 1, True), lambda x: T.adaptive_max_pool2d(x, 1, True)),
        ("global_avg", lambda x: F.adaptive_avg_pool2d(x, 1), lambda x: T.adaptive_avg_pool2d(x, 1)),
    ]


def check_pool2d():
    """Forward and backward of every pooling kernel, each dtype, NCHW and channels_last,
    against torch on the same values in float64 on the CPU (indices exactly)."""
    import os
    bad = 0
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
    for experimental in ("0", "1"):
        os.environ["CNNOPS_EXPERIMENTAL"] = experimental
        for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            for channels_last in (False, True):
                for name, ours, ref in pool2d_cases():
                    if experimental == "1" and not name.startswith("global"):
                        continue
                    x = torch.randint(-3, 4, (2, 6, 11, 9)).to(dtype)  # ties on purpose
                    x[0, 1, 2, 3] = float("nan")
                    x = x.to("cuda")
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    x.requires_grad_(True)
                    out = ours(x)
                    y = out[0] if isinstance(out, tuple) else out
                    grad = torch.randn(y.shape, dtype=torch.float64).to(dtype)
                    y.backward(grad.to("cuda"))
                    xr = x.detach().double().cpu().requires_grad_(True)
                    r = ref(xr)
                    ry = r[0] if isinstance(r, tuple) else r
                    ry.backward(grad.double())
                    errs = [((y.double().cpu() - ry).nan_to_num().abs().max() / ry.nan_to_num().abs().max().clamp(min=1)).item(),
                            ((x.grad.double().cpu() - xr.grad).abs().max() / xr.grad.abs().max().clamp(min=1)).item()]
                    same_nan = torch.equal(y.isnan().cpu(), ry.isnan())
                    same_idx = (not isinstance(out, tuple)) or torch.equal(out[1].cpu(), r[1])
                    ok = max(errs) < tol[dtype] and same_nan and same_idx
                    bad += not ok
                    print(f"pool2d {name} {dtype} channels_last={channels_last} experimental={experimental}: "
                          f"err out {errs[0]:.1e} grad {errs[1]:.1e} nan {same_nan} idx {same_idx} {'ok' if ok else 'WRONG'}")
    os.environ.pop("CNNOPS_EXPERIMENTAL", None)
def _rel(a, ref):
    return ((a.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def check_layer_norm():
    """layer_norm and layer_norm2d, forward and backward, every dtype (float16/bfloat16 also
    with float32 parameters), NCHW and channels_last, against float64 torch."""
    bad = 0
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        for pdtype in {dtype, torch.float32} if dtype in (torch.float16, torch.bfloat16) else {dtype}:
            cases = [("layer_norm", None, (37, 1000)), ("layer_norm", None, (3, 5, 64)),
                     ("layer_norm2d", False, (2, 24, 7, 9)), ("layer_norm2d", True, (2, 24, 7, 9))]
            for name, channels_last, shape in cases:
                x = (torch.randn(shape, device="cuda", dtype=torch.float64) * 2 + 1).to(dtype)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                feat = shape[-1] if name == "layer_norm" else shape[1]
                w = torch.randn(feat, device="cuda", dtype=pdtype, requires_grad=True)
                b = torch.randn(feat, device="cuda", dtype=pdtype, requires_grad=True)
                x.requires_grad_(True)
                if name == "layer_norm":
                    y = cnnops.F.layer_norm(x, (feat,), w, b)
                else:
                    y = cnnops.F.layer_norm2d(x, w, b)
                go = torch.randn(y.shape, device="cuda", dtype=torch.float64)
                gx, gw, gb = torch.autograd.grad(y, (x, w, b), go.to(dtype))
                xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, w, b))
                if name == "layer_norm":
                    r = torch.nn.functional.layer_norm(xd, (feat,), wd, bd, 1e-5)
                else:
                    r = torch.nn.functional.layer_norm(xd.permute(0, 2, 3, 1), (feat,), wd, bd, 1e-6).permute(0, 3, 1, 2)
                rx, rw, rb = torch.autograd.grad(r, (xd, wd, bd), go)
                errs = [_rel(y, r), _rel(gx, rx), _rel(gw, rw), _rel(gb, rb)]
                fmt_ok = channels_last is None or y.is_contiguous(
                    memory_format=torch.channels_last if channels_last else torch.contiguous_format)
                ok = max(errs) < tol[dtype] and fmt_ok and gw.dtype == pdtype
                bad += not ok
                print(f"{name} {dtype} params={pdtype} channels_last={channels_last} {shape}: "
                      f"rel err out/dx/dw/db {' '.join(f'{e:.1e}' for e in errs)} {'ok' if ok else 'WRONG'}")
    return bad


def check_depthwise_conv2d():
    """depthwise_conv2d forward and all gradients, every dtype, padding mode and layout,
    small and large kernels (the tiled forward, its per-output fallback for channels_last,
    the gather grad_input and the two-pass grad_weight), against float64 torch on the CPU."""
    bad = 0
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
    configs = [  # (C, multiplier, H, W, kernel, stride, padding, dilation)
        (6, 1, 11, 9, (3, 3), (1, 1), (1, 1), (1, 1)),
        (4, 2, 13, 10, (5, 4), (2, 1), (2, 2), (1, 2)),
        (3, 1, 20, 21, (13, 13), (1, 1), (6, 6), (1, 1)),
        (8, 1, 34, 35, (3, 3), (3, 2), (1, 1), (2, 2)),
    ]
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        for mode in ("zeros", "reflect", "replicate", "circular"):
            for channels_last in (False, True):
                for c, m, h, w, k, s, p, d in configs:
                    x = torch.randn(2, c, h, w, dtype=torch.float64)
                    wt = torch.randn(c * m, 1, *k, dtype=torch.float64) / (k[0] * k[1]) ** 0.5
                    b = torch.randn(c * m, dtype=torch.float64)
                    xc = x.to("cuda", dtype)
                    if channels_last:
                        xc = xc.contiguous(memory_format=torch.channels_last)
                    xc, wc, bc = (t.requires_grad_(True) for t in (xc, wt.to("cuda", dtype), b.to("cuda", dtype)))
                    y = cnnops.F.depthwise_conv2d(xc, wc, bc, s, p, d, mode)
                    go = torch.randn(y.shape, dtype=torch.float64)
                    g = torch.autograd.grad(y, (xc, wc, bc), go.to("cuda", dtype))
                    ref = torch.nn.Conv2d(c, c * m, k, s, p, d, c, padding_mode=mode, dtype=torch.float64)
                    with torch.no_grad():
                        ref.weight.copy_(wt), ref.bias.copy_(b)
                    xr = x.clone().requires_grad_(True)
                    r = ref(xr)
                    rg = torch.autograd.grad(r, (xr, ref.weight, ref.bias), go)
                    errs = [_rel(y.cpu(), r)] + [_rel(a.cpu(), e) for a, e in zip(g, rg)]
                    ok = max(errs) < tol[dtype]
                    bad += not ok
                    print(f"depthwise_conv2d {dtype} {mode} channels_last={channels_last} C={c} m={m} k={k} s={s}: "
                          f"rel err out/dx/dw/db {' '.join(f'{e:.1e}' for e in errs)} {'ok' if ok else 'WRONG'}")
    return bad


if __name__ == "__main__":
    assert torch.cuda.is_available(), "no CUDA device"
    failures = check_conv2d() + check_pool2d() + check_layer_norm() + check_depthwise_conv2d()
    torch.cuda.synchronize()
    print(f"smoke: {failures} wrong")
    sys.exit(1 if failures else 0)
