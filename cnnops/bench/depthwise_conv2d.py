"""depthwise_conv2d benchmark cases: MobileNetV2 (3x3, stride 1 and 2), EfficientNet-B0
(5x5), ConvNeXt-T (7x7), RepLKNet (13x13, 31x31) and DeepLabV3 (dilated 5x5).

cnnops side: cnnops.F.depthwise_conv2d. torch side: torch.nn.functional.conv2d with
groups = C (what torch.nn.Conv2d runs for a depthwise layer), same tensors.

Fused separable cases ("separable ...", "spatial ..."): cnnops.F.depthwise_separable_conv2d
against torch's depthwise conv then 1x1 conv (MobileNetV2 and EfficientNet projections, an
Xception middle-flow layer), and cnnops.F.spatially_separable_conv2d against torch's (k x 1)
then (1 x k) convs (Inception-v3's factorized 7x7); fused forwards on the CPU.
"""
import torch

import cnnops
from cnnops.bench.core import Case

FAMILY = "depthwise_conv2d"


def _out_size(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def dw_case(name, n, c, hw, k, stride=1, padding=None, dilation=1, multiplier=1, bias=False,
            channels_last=False):
    padding = dilation * (k - 1) // 2 if padding is None else padding
    h = w = hw
    oc = c * multiplier
    oh, ow = _out_size(h, k, stride, padding, dilation), _out_size(w, k, stride, padding, dilation)
    fwd_flops = 2 * n * oc * oh * ow * k * k
    x_el, w_el, b_el, y_el = n * c * h * w, oc * k * k, oc if bias else 0, n * oc * oh * ow

    def flops(direction):
        return fwd_flops if direction == "forward" else 3 * fwd_flops

    def nbytes(direction, dtype):
        el = x_el + w_el + b_el + y_el
        if direction != "forward":
            el += y_el + x_el + w_el + b_el + w_el + x_el  # read grad_output; grad weight; grad input
        return el * dtype.itemsize

    def make_inputs(device, dtype):
        x = torch.randn(n, c, h, w, device=device, dtype=torch.float32)
        wt = torch.randn(oc, 1, k, k, device=device, dtype=torch.float32) / k
        b = torch.randn(oc, device=device, dtype=torch.float32) * 0.1 if bias else None
        x = x.to(dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, wt.to(dtype), None if b is None else b.to(dtype)

    def cnnops_fn(x, wt, b):
        return cnnops.F.depthwise_conv2d(x, wt, b, stride, padding, dilation)

    def torch_fn(x, wt, b):
        return torch.nn.functional.conv2d(x, wt, b, stride, padding, dilation, c)

    shape = f"{n}x{c}x{h}x{w} k{k} s{stride} p{padding}"
    if dilation != 1:
        shape += f" d{dilation}"
    if multiplier != 1:
        shape += f" m{multiplier}"
    if channels_last:
        shape += " NHWC"
    params = dict(n=n, channels=c, multiplier=multiplier, height=h, width=w, kernel=k, stride=stride,
                  padding=padding, dilation=dilation, bias=bias, channels_last=channels_last,
                  out_height=oh, out_width=ow)
    # 3x3 depthwise does 9 multiply-adds per 2 values moved: memory-bound; large kernels are not.
    return Case(family=FAMILY, name=name, shape=shape, make_inputs=make_inputs, cnnops_fn=cnnops_fn,
                torch_fn=torch_fn, flops=flops, nbytes=nbytes, grad_inputs=(0, 1, 2),
                bound="memory" if k <= 5 else "compute", params=params,
                torch_impl="torch.nn.functional.conv2d(groups=C)", input_names=("input", "weight", "bias"))


def separable_case(name, n, c, hw, k, out_channels, stride=1):
    padding = (k - 1) // 2
    oh = ow = _out_size(hw, k, stride, padding, 1)
    fwd_flops = 2 * n * c * oh * ow * (k * k + out_channels)
    x_el, w_el, y_el = n * c * hw * hw, c * k * k + out_channels * c, n * out_channels * oh * ow

    def flops(direction):
        return fwd_flops if direction == "forward" else 3 * fwd_flops

    def nbytes(direction, dtype):
        el = x_el + w_el + y_el
        if direction != "forward":
            el += y_el + x_el + w_el  # read grad_output; write grad input and grad weights
        return el * dtype.itemsize

    def make_inputs(device, dtype):
        x = torch.randn(n, c, hw, hw, device=device, dtype=torch.float32)
        dw = torch.randn(c, 1, k, k, device=device, dtype=torch.float32) / k
        pw = torch.randn(out_channels, c, 1, 1, device=device, dtype=torch.float32) / c ** 0.5
        return x.to(dtype), dw.to(dtype), pw.to(dtype)

    def cnnops_fn(x, dw, pw):
        return cnnops.F.depthwise_separable_conv2d(x, dw, pw, None, None, stride, padding)

    def torch_fn(x, dw, pw):
        mid = torch.nn.functional.conv2d(x, dw, None, stride, padding, 1, c)
        return torch.nn.functional.conv2d(mid, pw)

    shape = f"{n}x{c}x{hw}x{hw} k{k} s{stride} p{padding} -> {out_channels}"
    params = dict(n=n, channels=c, out_channels=out_channels, height=hw, width=hw, kernel=k, stride=stride,
                  padding=padding, separable=True, out_height=oh, out_width=ow)
    return Case(family=FAMILY, name=name, shape=shape, make_inputs=make_inputs, cnnops_fn=cnnops_fn,
                torch_fn=torch_fn, flops=flops, nbytes=nbytes, grad_inputs=(0, 1, 2), bound="compute",
                params=params, torch_impl="torch.nn.functional.conv2d(groups=C) then 1x1 conv2d",
                input_names=("input", "depthwise_weight", "pointwise_weight"))


def spatial_case(name, n, c, hw, k, mid_channels, out_channels):
    padding = (k - 1) // 2
    fwd_flops = 2 * n * hw * hw * k * (c * mid_channels + mid_channels * out_channels)
    x_el, w_el, y_el = n * c * hw * hw, k * (c * mid_channels + mid_channels * out_channels), n * out_channels * hw * hw

    def flops(direction):
        return fwd_flops if direction == "forward" else 3 * fwd_flops

    def nbytes(direction, dtype):
        el = x_el + w_el + y_el
        if direction != "forward":
            el += y_el + x_el + w_el
        return el * dtype.itemsize

    def make_inputs(device, dtype):
        x = torch.randn(n, c, hw, hw, device=device, dtype=torch.float32)
        vw = torch.randn(mid_channels, c, k, 1, device=device, dtype=torch.float32) / (c * k) ** 0.5
        hw_ = torch.randn(out_channels, mid_channels, 1, k, device=device, dtype=torch.float32)
        hw_ = hw_ / (mid_channels * k) ** 0.5
        return x.to(dtype), vw.to(dtype), hw_.to(dtype)

    def cnnops_fn(x, vw, hw_):
        return cnnops.F.spatially_separable_conv2d(x, vw, hw_, None, None, 1, padding)

    def torch_fn(x, vw, hw_):
        mid = torch.nn.functional.conv2d(x, vw, None, 1, (padding, 0))
        return torch.nn.functional.conv2d(mid, hw_, None, 1, (0, padding))

    shape = f"{n}x{c}x{hw}x{hw} {k}x1 -> {mid_channels}, 1x{k} -> {out_channels}"
    params = dict(n=n, channels=c, mid_channels=mid_channels, out_channels=out_channels, height=hw, width=hw,
                  kernel=k, stride=1, padding=padding, spatially_separable=True)
    return Case(family=FAMILY, name=name, shape=shape, make_inputs=make_inputs, cnnops_fn=cnnops_fn,
                torch_fn=torch_fn, flops=flops, nbytes=nbytes, grad_inputs=(0, 1, 2), bound="compute",
                params=params, torch_impl="torch.nn.functional.conv2d (k x 1) then (1 x k)",
                input_names=("input", "vertical_weight", "horizontal_weight"))


def _full(n=8):
    return [
        dw_case("mnv2 3x3 32", n, 32, 112, 3),
        dw_case("mnv2 3x3 144", n, 144, 56, 3),
        dw_case("mnv2 3x3/2 96", n, 96, 112, 3, stride=2),
        dw_case("mnv2 3x3/2 144", n, 144, 56, 3, stride=2),
        dw_case("mnv2 3x3 384", n, 384, 14, 3),
        dw_case("mnv2 3x3 960", n, 960, 7, 3),
        dw_case("mnv2 3x3 144 NHWC", n, 144, 56, 3, channels_last=True),
        dw_case("effnet 5x5 240", n, 240, 28, 5),
        dw_case("effnet 5x5 672", n, 672, 14, 5),
        dw_case("convnext 7x7 96", n, 96, 56, 7, bias=True),
        dw_case("convnext 7x7 384", n, 384, 14, 7, bias=True),
        dw_case("convnext 7x7 768", n, 768, 7, 7, bias=True),
        dw_case("replknet 13x13 256", 4, 256, 28, 13),
        dw_case("replknet 31x31 64", 2, 64, 32, 31),
        dw_case("deeplab 5x5 d2 320", 4, 320, 33, 5, dilation=2),
        separable_case("separable mnv2 3x3 144->24", n, 144, 56, 3, 24),
        separable_case("separable mnv2 3x3/2 96->24", n, 96, 112, 3, 24, stride=2),
        separable_case("separable mnv2 3x3 960->160", n, 960, 7, 3, 160),
        separable_case("separable effnet 5x5 240->40", n, 240, 28, 5, 40),
        separable_case("separable xception 3x3 728->728", n, 728, 19, 3, 728),
        spatial_case("spatial inception 7 128->128->192", n, 128, 17, 7, 128, 192),
        spatial_case("spatial 3 64->64->64", n, 64, 56, 3, 64, 64),
    ]


def _quick():
    return [
        dw_case("mnv2 3x3 144", 1, 144, 56, 3),
        dw_case("mnv2 3x3/2 96", 1, 96, 112, 3, stride=2),
        dw_case("convnext 7x7 96", 1, 96, 56, 7, bias=True),
        dw_case("replknet 31x31 64", 1, 64, 32, 31),
        separable_case("separable mnv2 3x3 144->24", 1, 144, 56, 3, 24),
        spatial_case("spatial inception 7 128->128->192", 1, 128, 17, 7, 128, 192),
    ]


def cases(quick):
    return _quick() if quick else _full()
