"""layer_norm benchmark cases: transformer-sized rows (ViT-B/L token batches) and the
channels-first LayerNorm2d of ConvNeXt-T.

cnnops side: cnnops.F.layer_norm / cnnops.F.layer_norm2d.
torch side: torch.nn.functional.layer_norm; for layer_norm2d, torchvision's ConvNeXt
LayerNorm2d forward (permute to NHWC, F.layer_norm over C, permute back), with the same
weight and bias tensors.

Bytes (DESIGN.md section 5, each input read once, each output written once): forward
reads x, weight, bias and writes y and the float32 mean/rstd (float64 for float64 input);
forward+backward adds reading grad_out, x, mean, rstd, weight and writing grad_input,
grad_weight, grad_bias.
"""
import torch
import torch.nn.functional as F

import cnnops
from cnnops.bench.core import Case

FAMILY = "layer_norm"


def _stat_bytes(dtype):
    return 8 if dtype == torch.float64 else 4


def _nbytes_fn(rows, width):
    """nbytes(direction, dtype) for `rows` normalized rows of `width` values, with weight
    and bias of `width` values."""
    def nbytes(direction, dtype):
        e, s = dtype.itemsize, _stat_bytes(dtype)
        x = rows * width * e
        p = width * e
        stats = 2 * rows * s
        fwd = x + 2 * p + x + stats  # read x, w, b; write y, mean, rstd
        if direction == "forward":
            return fwd
        return fwd + 2 * x + stats + p + x + 2 * p  # read dy, x, mean, rstd, w; write dx, dw, db
    return nbytes


def _flops_fn(rows, width):
    def flops(direction):  # about 8 flops per element forward, 12 more backward; memory-bound
        return rows * width * (8 if direction == "forward" else 20)
    return flops


def layer_norm_case(name, rows, width):
    def make_inputs(device, dtype):
        x = torch.randn(rows, width, device=device, dtype=torch.float32)
        w = 1 + 0.1 * torch.randn(width, device=device, dtype=torch.float32)
        b = 0.1 * torch.randn(width, device=device, dtype=torch.float32)
        return tuple(t.to(dtype) for t in (x, w, b))

    def cnnops_fn(x, w, b):
        return cnnops.F.layer_norm(x, (width,), w, b, 1e-5)

    def torch_fn(x, w, b):
        return F.layer_norm(x, (width,), w, b, 1e-5)

    return Case(family=FAMILY, name=name, shape=f"{rows}x{width}", make_inputs=make_inputs,
                cnnops_fn=cnnops_fn, torch_fn=torch_fn, flops=_flops_fn(rows, width),
                nbytes=_nbytes_fn(rows, width), grad_inputs=(0, 1, 2), bound="memory",
                params=dict(rows=rows, width=width, op="layer_norm"),
                torch_impl="torch.nn.functional.layer_norm", input_names=("input", "weight", "bias"))


def layer_norm2d_case(name, n, c, hw, channels_last=False):
    def make_inputs(device, dtype):
        x = torch.randn(n, c, hw, hw, device=device, dtype=torch.float32).to(dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        w = 1 + 0.1 * torch.randn(c, device=device, dtype=torch.float32)
        b = 0.1 * torch.randn(c, device=device, dtype=torch.float32)
        return x, w.to(dtype), b.to(dtype)

    def cnnops_fn(x, w, b):
        return cnnops.F.layer_norm2d(x, w, b, 1e-6)

    def torch_fn(x, w, b):  # torchvision.models.convnext.LayerNorm2d.forward
        y = F.layer_norm(x.permute(0, 2, 3, 1), (c,), w, b, 1e-6)
        return y.permute(0, 3, 1, 2)

    rows = n * hw * hw
    shape = f"{n}x{c}x{hw}x{hw}" + (" channels_last" if channels_last else "")
    return Case(family=FAMILY, name=name, shape=shape, make_inputs=make_inputs,
                cnnops_fn=cnnops_fn, torch_fn=torch_fn, flops=_flops_fn(rows, c),
                nbytes=_nbytes_fn(rows, c), grad_inputs=(0, 1, 2), bound="memory",
                params=dict(n=n, channels=c, height=hw, width=hw, channels_last=channels_last, op="layer_norm2d"),
                torch_impl="permute(0,2,3,1) + F.layer_norm + permute(0,3,1,2) (torchvision ConvNeXt LayerNorm2d)",
                input_names=("input", "weight", "bias"))


def _full():
    return [
        layer_norm_case("ViT-B tokens 8x196", 1568, 768),
        layer_norm_case("ViT-L tokens 8x196", 1568, 1024),
        layer_norm_case("MLP width 4096", 1568, 4096),
        layer_norm_case("BERT-L 8x512", 4096, 1024),
        layer_norm2d_case("ConvNeXt-T stage 1", 8, 96, 56),
        layer_norm2d_case("ConvNeXt-T stage 2", 8, 192, 28),
        layer_norm2d_case("ConvNeXt-T stage 3", 8, 384, 14),
        layer_norm2d_case("ConvNeXt-T stage 4", 8, 768, 7),
        layer_norm2d_case("ConvNeXt-T stage 1 b32", 32, 96, 56),
        layer_norm2d_case("ConvNeXt-T stage 1 CL", 8, 96, 56, channels_last=True),
    ]


def _quick():
    return [
        layer_norm_case("ViT-B tokens 8x196", 1568, 768),
        layer_norm_case("rows 1000 (not /4)", 256, 1000),
        layer_norm2d_case("ConvNeXt-T stage 1 b2", 2, 96, 56),
        layer_norm2d_case("ConvNeXt-T stage 4", 8, 768, 7),
        layer_norm2d_case("ConvNeXt-T stage 1 b2 CL", 2, 96, 56, channels_last=True),
    ]


def cases(quick):
    return _quick() if quick else _full()
