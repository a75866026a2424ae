"""batch_norm benchmark cases: the BatchNorm layers of ResNet-50 (batch 8), MobileNetV2's
BN + ReLU6, and the BN + add + ReLU at the end of a ResNet bottleneck; training forward,
training forward+backward, and evaluation forward (its fwd+bwd rows are frozen-BN
fine-tuning).

cnnops side: cnnops.F.batch_norm with the activation / residual fused. torch side:
torch.nn.functional.batch_norm, then `+ residual`, then torch.relu / F.relu6 (separate
ops, as a torch model runs them), on the same tensors. Both sides update their running
statistics in training (the same buffers; outputs do not depend on them in training).

Bytes (DESIGN.md section 5: each input read once, each output written once): forward
reads x (and the residual) and writes y; forward+backward adds reading grad_out and x and
writing grad_input (and grad_residual). Per-channel parameters and statistics are counted
too (negligible).
"""
import torch
import torch.nn.functional as F

import cnnops
from cnnops.bench.core import Case

FAMILY = "batch_norm"


def bn_case(name, n, c, hw, training=True, activation=None, residual=False, channels_last=False):
    el = n * c * hw * hw

    def nbytes(direction, dtype):
        e = dtype.itemsize
        params = 6 * c * 4  # weight, bias, running stats, saved statistics (float32)
        fwd = el * e * (3 if residual else 2) + params
        if direction == "forward":
            return fwd
        return fwd + el * e * (4 if residual else 3) + 2 * c * 4

    def flops(direction):
        return el * (6 if direction == "forward" else 14)

    def make_inputs(device, dtype):
        x = torch.randn(n, c, hw, hw, device=device, dtype=torch.float32).to(dtype)
        r = torch.randn(n, c, hw, hw, device=device, dtype=torch.float32).to(dtype) if residual else None
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
            r = r.contiguous(memory_format=torch.channels_last) if r is not None else None
        pdt = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        w = 1 + 0.1 * torch.randn(c, device=device, dtype=pdt)
        b = 0.1 * torch.randn(c, device=device, dtype=pdt)
        rm = 0.1 * torch.randn(c, device=device, dtype=pdt)
        rv = 1 + 0.1 * torch.rand(c, device=device, dtype=pdt)
        return x, w, b, rm, rv, r

    def cnnops_fn(x, w, b, rm, rv, r):
        return cnnops.F.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5, activation, r)

    def torch_fn(x, w, b, rm, rv, r):
        y = F.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5)
        if r is not None:
            y = y + r
        if activation == "relu":
            y = torch.relu(y)
        elif activation == "relu6":
            y = F.relu6(y)
        return y

    what = "BN" + (" + add" if residual else "") + (f" + {activation}" if activation else "")
    mode = "train" if training else "eval"
    impl = "F.batch_norm" + (" + add" if residual else "") + (
        " + torch.relu" if activation == "relu" else " + F.relu6" if activation == "relu6" else "")
    shape = f"{n}x{c}x{hw}x{hw}" + (" channels_last" if channels_last else "")
    return Case(family=FAMILY, name=f"{name} {what} {mode}", shape=shape, make_inputs=make_inputs,
                cnnops_fn=cnnops_fn, torch_fn=torch_fn, flops=flops, nbytes=nbytes,
                grad_inputs=(0, 1, 2, 5) if residual else (0, 1, 2), bound="memory",
                params=dict(n=n, channels=c, height=hw, width=hw, training=training, activation=activation,
                            residual=residual, channels_last=channels_last, op="batch_norm"),
                torch_impl=impl, input_names=("input", "weight", "bias", "running_mean", "running_var", "residual"))


RESNET50 = [("ResNet-50 stem", 64, 112), ("ResNet-50 l1", 64, 56), ("ResNet-50 l1 out", 256, 56),
            ("ResNet-50 l2", 128, 28), ("ResNet-50 l2 out", 512, 28), ("ResNet-50 l3", 256, 14),
            ("ResNet-50 l3 out", 1024, 14), ("ResNet-50 l4", 512, 7), ("ResNet-50 l4 out", 2048, 7)]
MOBILENET_V2 = [("MobileNetV2 stem", 32, 112), ("MobileNetV2 expand 96", 96, 112), ("MobileNetV2 expand 144", 144, 56),
                ("MobileNetV2 expand 192", 192, 28), ("MobileNetV2 expand 384", 384, 14),
                ("MobileNetV2 expand 960", 960, 7)]
RESIDUAL = [("ResNet-50 block l1", 256, 56), ("ResNet-50 block l2", 512, 28), ("ResNet-50 block l3", 1024, 14),
            ("ResNet-50 block l4", 2048, 7)]


def _full():
    cases = []
    for name, c, hw in RESNET50:
        cases.append(bn_case(name, 8, c, hw, training=True))
    for name, c, hw in RESNET50:
        cases.append(bn_case(name, 8, c, hw, training=False))
    for name, c, hw in RESNET50[:4]:
        cases.append(bn_case(name, 8, c, hw, training=True, activation="relu"))
    for name, c, hw in MOBILENET_V2:
        cases.append(bn_case(name, 8, c, hw, training=True, activation="relu6"))
    for name, c, hw in RESIDUAL:
        cases.append(bn_case(name, 8, c, hw, training=True, activation="relu", residual=True))
    cases.append(bn_case("ResNet-50 l1 out CL", 8, 256, 56, training=True, channels_last=True))
    cases.append(bn_case("ResNet-50 l1 out CL", 8, 256, 56, training=True, activation="relu", channels_last=True))
    cases.append(bn_case("ResNet-50 l1 out CL", 8, 256, 56, training=False, channels_last=True))
    return cases


def _quick():
    return [
        bn_case("ResNet-50 l1 b2", 2, 64, 56, training=True),
        bn_case("ResNet-50 l4", 8, 512, 7, training=False),
        bn_case("MobileNetV2 expand 144 b2", 2, 144, 56, training=True, activation="relu6"),
        bn_case("ResNet-50 block l3", 8, 1024, 14, training=True, activation="relu", residual=True),
        bn_case("ResNet-50 l2 b2 CL", 2, 128, 28, training=True, activation="relu", channels_last=True),
    ]


def cases(quick):
    return _quick() if quick else _full()
