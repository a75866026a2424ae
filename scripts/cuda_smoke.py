"""A small run of every cnnops CUDA kernel (forward and backward, every dtype, padding
mode and memory format; conv2d, pool2d, layer_norm, conv_transpose2d, batch_norm, depthwise_conv2d,
the separable pairs), for
compute-sanitizer. Exits non-zero on a wrong result."""
import contextlib
import os
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


@contextlib.contextmanager
def _saved_environ(*names):
    """The environment variables `names` as they were before, on leaving (unset ones unset)."""
    saved = {k: os.environ.get(k) for k in names}
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def check_pool2d():
    """Forward and backward of every pooling kernel, each dtype, NCHW and channels_last,
    against torch on the same values in float64 on the CPU (indices exactly)."""
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
    return bad


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


def check_conv2d_mma():
    """Every tensor-core conv2d kernel (opt-in, csrc/cuda/conv2d_mma*.cu), forced on with
    CNNOPS_MMA_REQUIRE=1: forward fp16/bf16/TF32 in every padding mode, the input gradient
    (zeros padding) and the fp16/bf16 weight gradient, with tile tails in M, N and K."""
    bad = 0
    tol = {torch.float32: 3e-3, torch.float16: 3e-3, torch.bfloat16: 2e-2}
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True
    ops = torch.ops.cnnops
    with _saved_environ("CNNOPS_EXPERIMENTAL", "CNNOPS_MMA_REQUIRE"):
        os.environ.update(CNNOPS_EXPERIMENTAL="1", CNNOPS_MMA_REQUIRE="1")
        try:
            for dtype in (torch.float16, torch.bfloat16, torch.float32):
                for mode in ("zeros", "reflect", "replicate", "circular"):
                    # 2 x 16 x 11 x 13, groups 2, 3x3 stride (2, 1), dilation (1, 2): M = 2*6*9 = 108,
                    # N = 24 per group, K = 9 * 8 = 72 (tails in all three)
                    x = torch.randn(2, 16, 11, 13, device="cuda").to(dtype).contiguous(memory_format=torch.channels_last)
                    w = (torch.randn(48, 8, 3, 3, device="cuda") / 8).to(dtype)
                    b = torch.randn(48, device="cuda").to(dtype)
                    args = ([2, 1], [1, 1, 2, 2], [1, 2], 2, mode)
                    xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, w, b))
                    xp = torch.nn.functional.pad(xd, (2, 2, 1, 1), mode=mode) if mode != "zeros" else xd
                    r = torch.nn.functional.conv2d(xp, wd, bd, (2, 1), 0 if mode != "zeros" else (1, 2), (1, 2), 2)
                    gy = torch.randn(r.shape, device="cuda").to(dtype).contiguous(memory_format=torch.channels_last)
                    rgx, rgw = torch.autograd.grad(r, (xd, wd), gy.double())
                    errs = {"out": _rel(ops.conv2d(x, w, b, *args), r)}
                    if mode == "zeros":
                        errs["dx"] = _rel(ops.conv2d_grad_input(gy, w, list(x.shape), *args, True), rgx)
                    if dtype != torch.float32:
                        errs["dw"] = _rel(ops.conv2d_grad_weight(gy, x, list(w.shape), *args, False), rgw)
                    ok = max(errs.values()) < tol[dtype]
                    bad += not ok
                    print(f"conv2d_mma {dtype} {mode}: rel err {' '.join(f'{k} {v:.1e}' for k, v in errs.items())} "
                          f"{'ok' if ok else 'WRONG'}")
        finally:
            torch.backends.cudnn.allow_tf32 = tf32
    return bad


def check_conv_transpose2d():
    """conv_transpose2d forward and backward (the conv2d kernels run the other way, plus the
    finish kernel: bias, rows out of reach, layout change), every dtype, NCHW/channels_last,
    against float64 torch on the CPU."""
    bad = 0
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
    # (x shape, weight shape, stride, padding, output_padding, groups, dilation)
    cases = [((2, 6, 5, 7), (6, 4, 4, 4), 2, 1, 0, 1, 1),  # DCGAN-like
             ((2, 4, 5, 5), (4, 3, 3, 3), 2, 1, 1, 2, 1),  # FCN-like, grouped
             ((1, 3, 4, 5), (3, 2, 2, 3), 1, (0, 1), (2, 1), 1, (3, 2))]  # rows out of every tap's reach
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        for channels_last in (False, True):
            for xs, ws, *args in cases:
                x = torch.randn(xs, dtype=torch.float64)
                w = torch.randn(ws, dtype=torch.float64) / ws[0] ** 0.5
                b = torch.randn(ws[1] * args[3], dtype=torch.float64)
                xc, wc, bc = (t.to("cuda", dtype).requires_grad_() for t in (x, w, b))
                if channels_last:
                    xc = xc.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
                y = cnnops.F.conv_transpose2d(xc, wc, bc, *args)
                go = torch.randn(y.shape, dtype=torch.float64)
                gx, gw, gb = torch.autograd.grad(y, (xc, wc, bc), go.to("cuda", dtype))
                xr, wr, br = (t.clone().requires_grad_() for t in (x, w, b))
                r = torch.nn.functional.conv_transpose2d(xr, wr, br, *args)
                rx, rw, rb = torch.autograd.grad(r, (xr, wr, br), go)
                errs = [_rel(y.cpu(), r), _rel(gx.cpu(), rx), _rel(gw.cpu(), rw), _rel(gb.cpu(), rb)]
                ok = max(errs) < tol[dtype] and y.is_contiguous(
                    memory_format=torch.channels_last if channels_last else torch.contiguous_format)
                bad += not ok
                print(f"conv_transpose2d {dtype} channels_last={channels_last} {xs} w{ws} {args}: rel err "
                      f"out/dx/dw/db {' '.join(f'{e:.1e}' for e in errs)} {'ok' if ok else 'WRONG'}")
    return bad


def check_batch_norm():
    """batch_norm training and eval, forward and backward, every dtype (float16/bfloat16 also
    with float32 parameters and statistics), NCHW and channels_last (both statistics kernels:
    block per channel and chunk partials), fused relu6 + residual; and the SyncBatchNorm stages
    over a batch split in two. Against float64 torch."""
    bad = 0
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
    T = torch.nn.functional
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        for pdtype in {dtype, torch.float32} if dtype in (torch.float16, torch.bfloat16) else {dtype}:
            for channels_last in (False, True):
                for training in (True, False):
                    shape = (3, 20, 7, 9)
                    x = (torch.randn(shape, device="cuda", dtype=torch.float64) * 2 + 1).to(dtype)
                    r = torch.randn(shape, device="cuda", dtype=torch.float64).to(dtype)
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                        r = r.contiguous(memory_format=torch.channels_last)
                    w = torch.rand(20, device="cuda", dtype=pdtype).add_(0.5).requires_grad_()
                    b = torch.randn(20, device="cuda", dtype=pdtype, requires_grad=True)
                    rm = torch.randn(20, device="cuda", dtype=pdtype) * 0.1
                    rv = torch.rand(20, device="cuda", dtype=pdtype) + 0.5
                    rm_ref, rv_ref = rm.double(), rv.double()
                    x.requires_grad_(True), r.requires_grad_(True)
                    y = cnnops.F.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5, "relu6", r)
                    go = torch.randn(shape, device="cuda", dtype=torch.float64)
                    gx, gw, gb, gr = torch.autograd.grad(y, (x, w, b, r), go.to(dtype))
                    xd, wd, bd, rd = (t.detach().double().requires_grad_() for t in (x, w, b, r))
                    z = T.batch_norm(xd, rm_ref, rv_ref, wd, bd, training, 0.1, 1e-5) + rd
                    # relu6's mask as torch's reduced-precision composition sees it: on the
                    # pre-activation rounded to dtype (5.99 rounds to 6.0 in bfloat16: clamped).
                    # Without this, the float64 mask differs near 6 (seen on an H100).
                    ref = T.relu6(z.to(dtype).double() if dtype in (torch.float16, torch.bfloat16) else z)
                    rx, rw, rb, rr = torch.autograd.grad(ref, (xd, wd, bd, rd), go)
                    errs = [_rel(y, ref), _rel(gx, rx), _rel(gw, rw), _rel(gb, rb), _rel(gr, rr),
                            _rel(rm, rm_ref), _rel(rv, rv_ref)]
                    fmt = torch.channels_last if channels_last else torch.contiguous_format
                    ok = max(errs) < max(tol[dtype], tol[pdtype]) and y.is_contiguous(memory_format=fmt)
                    bad += not ok
                    print(f"batch_norm {dtype} params={pdtype} channels_last={channels_last} training={training}: "
                          f"rel err out/dx/dw/db/dres/rm/rv {' '.join(f'{e:.1e}' for e in errs)} {'ok' if ok else 'WRONG'}")
    ops = torch.ops.cnnops
    for channels_last in (False, True):
        x = torch.randn(8, 5, 6, 6, device="cuda", dtype=torch.float64)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        stats = torch.stack([ops.batch_norm_stats(x[:3]), ops.batch_norm_stats(x[3:])])
        mean, invstd, count = ops.batch_norm_gather_stats(stats, None, None, None, 0.1, 1e-5)
        y = ops.batch_norm_elemt(x, None, None, mean, invstd, None, None)
        go = torch.randn_like(x)
        s1, s2, _, _ = ops.batch_norm_backward_reduce(go, x, None, mean, invstd, None, None, None, [False, False])
        gx, _ = ops.batch_norm_backward_elemt(go, x, None, None, mean, invstd, s1, s2, count, None, [True, False])
        xd = x.detach().cpu().requires_grad_()
        ref = T.batch_norm(xd, None, None, training=True)
        rx, = torch.autograd.grad(ref, xd, go.cpu())
        errs = [_rel(y.cpu(), ref), _rel(gx.cpu(), rx)]
        ok = max(errs) < 1e-10 and count.item() == 8 * 36
        bad += not ok
        print(f"batch_norm sync stages channels_last={channels_last}: rel err out/dx {errs[0]:.1e} {errs[1]:.1e} "
              f"{'ok' if ok else 'WRONG'}")
    return bad


def check_depthwise_conv2d():
    """depthwise_conv2d forward and all gradients, every dtype, padding mode and layout,
    small and large kernels, against float64 torch on the CPU: the default kernels (the direct
    ones of depthwise_conv2d_direct.cu for 3x3, the tiled ones of depthwise_conv2d_fast.cu
    for the rest, where they apply), with CNNOPS_DEPTHWISE_CUDA_PATH=direct (the direct kernels
    first at every size), =tiled (the tiled ones first, 3x3 included, and with
    CNNOPS_EXPERIMENTAL=1 the opt-in kernel that makes the channels_last forward's weight
    copy), then with =simple the simple ones of depthwise_conv2d.cu everywhere (the tiled
    forward, its per-output fallback for channels_last, the gather grad_input and the two-pass
    grad_weight)."""
    bad = 0
    with _saved_environ("CNNOPS_DEPTHWISE_CUDA_PATH", "CNNOPS_EXPERIMENTAL"):
        for path in ("auto", "direct", "tiled", "simple"):
            os.environ["CNNOPS_DEPTHWISE_CUDA_PATH"] = path
            os.environ["CNNOPS_EXPERIMENTAL"] = "1" if path == "tiled" else "0"
            bad += _check_depthwise_conv2d(f"path={path}")
    return bad


def _check_depthwise_conv2d(tag):
    bad = 0
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
    configs = [  # (C, multiplier, H, W, kernel, stride, padding, dilation)
        (6, 1, 11, 9, (3, 3), (1, 1), (1, 1), (1, 1)),
        (4, 2, 13, 10, (5, 4), (2, 1), (2, 2), (1, 2)),
        (3, 1, 20, 21, (13, 13), (1, 1), (6, 6), (1, 1)),
        (8, 1, 34, 35, (3, 3), (3, 2), (1, 1), (2, 2)),
        (10, 1, 7, 7, (7, 7), (1, 1), (3, 3), (1, 1)),  # small planes, several to a block
        (5, 1, 30, 31, (3, 3), (2, 2), (1, 1), (1, 1)),  # stride 2 (the direct kernels' spread grad_input)
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
                    print(f"depthwise_conv2d {tag} {dtype} {mode} channels_last={channels_last} C={c} m={m} k={k} s={s}: "
                          f"rel err out/dx/dw/db {' '.join(f'{e:.1e}' for e in errs)} {'ok' if ok else 'WRONG'}")
    return bad


def check_separable_conv2d():
    """depthwise_separable_conv2d's forward (the two kernels, then with CNNOPS_EXPERIMENTAL=1
    the fused kernel of separable_conv2d_fused.cu) and spatially_separable_conv2d's, every
    dtype, padding mode and layout, against float64 torch on the CPU."""
    bad = 0
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
    F = torch.nn.functional
    # float32 exactly: with CNNOPS_EXPERIMENTAL=1 and TF32 allowed (torch's default), the
    # spatial pair's channels_last convs run the TF32 tensor-core path (rel err ~4e-4 on the
    # H100, 2026-11-27), which check_conv2d_mma checks at its own tolerance.
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    for experimental in ("0", "1"):
        os.environ["CNNOPS_EXPERIMENTAL"] = experimental
        for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            for mode in ("zeros", "reflect", "replicate", "circular"):
                for channels_last in (False, True):
                    x = torch.randn(2, 20, 13, 11, dtype=torch.float64)
                    dw, db = torch.randn(40, 1, 3, 3, dtype=torch.float64) / 3, torch.randn(40, dtype=torch.float64)
                    pw, pb = torch.randn(70, 40, 1, 1, dtype=torch.float64) / 6, torch.randn(70, dtype=torch.float64)
                    vw, hw = torch.randn(8, 20, 3, 1, dtype=torch.float64) / 8, torch.randn(6, 8, 1, 3, dtype=torch.float64) / 5
                    xc = x.to("cuda", dtype)
                    if channels_last:
                        xc = xc.contiguous(memory_format=torch.channels_last)
                    on = lambda t: t.to("cuda", dtype)  # noqa: E731
                    y = cnnops.F.depthwise_separable_conv2d(xc, on(dw), on(pw), on(db), on(pb), (2, 1), 1, (1, 2), mode)
                    xp = F.pad(x, (1, 1, 1, 1), mode="constant" if mode == "zeros" else mode)
                    r = F.conv2d(F.conv2d(xp, dw, db, (2, 1), 0, (1, 2), 20), pw, pb)
                    z = cnnops.F.spatially_separable_conv2d(xc, on(vw), on(hw), None, None, 1, 1, 1, mode)
                    zr = F.conv2d(F.pad(F.conv2d(F.pad(x, (0, 0, 1, 1), mode="constant" if mode == "zeros" else mode), vw),
                                        (1, 1, 0, 0), mode="constant" if mode == "zeros" else mode), hw)
                    errs = [_rel(y.cpu(), r), _rel(z.cpu(), zr)]
                    ok = max(errs) < tol[dtype]
                    bad += not ok
                    print(f"separable experimental={experimental} {dtype} {mode} channels_last={channels_last}: "
                          f"rel err depthwise/spatial {' '.join(f'{e:.1e}' for e in errs)} {'ok' if ok else 'WRONG'}")
    os.environ.pop("CNNOPS_EXPERIMENTAL", None)
    torch.backends.cudnn.allow_tf32 = tf32
    return bad


if __name__ == "__main__":
    assert torch.cuda.is_available(), "no CUDA device"
    failures = (check_conv2d() + check_pool2d() + check_layer_norm() + check_conv2d_mma() + check_conv_transpose2d()
                + check_batch_norm() + check_depthwise_conv2d() + check_separable_conv2d())
    torch.cuda.synchronize()
    print(f"smoke: {failures} wrong")
    sys.exit(1 if failures else 0)
