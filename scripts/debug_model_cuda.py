"""Which converted module makes a model's CUDA training steps differ from torch's?
Converts one module class at a time and compares two SGD steps (float64 and float32)."""
import copy
import sys

import torch

import cnnops
from cnnops.bench.models import MODELS
from cnnops.conversion import TWINS


def steps(model, x, n=2):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    rec = []
    for s in range(n):
        xi = (x * (1 + 0.1 * s)).requires_grad_()
        opt.zero_grad()
        out = model(xi)
        loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view_as(out)).sum()
        (loss + 0.5 * out.square().mean()).backward()
        rec.append((out.detach(), xi.grad.detach(), {k: p.grad.detach().clone() for k, p in model.named_parameters()}))
        opt.step()
    return rec


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


for name in sys.argv[1:] or ["aspp", "resnet"]:
    for dtype in (torch.float64, torch.float32):
        builder, shape = MODELS[name]
        torch.manual_seed(0)
        ref = builder().to("cuda", dtype)
        x = torch.randn(shape, device="cuda", dtype=dtype)
        want = steps(copy.deepcopy(ref), x)
        for cls, twin in list(TWINS.items()) + [(None, None)]:
            m = copy.deepcopy(ref)
            n = 0
            for mod in m.modules():
                if (cls is None and type(mod) in TWINS) or type(mod) is cls:
                    mod.__class__ = TWINS[type(mod)]
                    n += 1
            if not n:
                continue
            got = steps(m, x)
            worst = []
            for s, ((o, gi, gp), (wo, wgi, wgp)) in enumerate(zip(got, want)):
                pw = max(gp.keys(), key=lambda k: rel(gp[k], wgp[k]))
                worst.append(f"s{s} out {rel(o, wo):.1e} gin {rel(gi, wgi):.1e} gparam {rel(gp[pw], wgp[pw]):.1e} ({pw})")
            print(f"{name} {dtype} {cls.__name__ if cls else 'ALL'} x{n}: " + " | ".join(worst), flush=True)
