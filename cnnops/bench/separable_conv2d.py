"""separable_conv2d benchmark cases: the fused separable ops against torch's two convs.

depthwise_separable_conv2d against torch's depthwise conv (conv2d with groups = C) then 1x1
conv: MobileNetV2 and EfficientNet-B0 projections, an Xception middle-flow layer.
spatially_separable_conv2d against torch's (k x 1) then (1 x k) convs: Inception-v3's
factorized 7x7 and a 3x3 pair. On the CPU the forwards are fused (no intermediate tensor).
"""
import torch

import cnnops
from cnnops.bench.core import Case

FAMILY = "separable_conv2d"


def separable_case(name, n, c, hw, k, out_channels, stride=1):
    padding = (k - 1) // 2
    oh = ow = (hw + 2 * padding - (k - 1) - 1) // stride + 1
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
        separable_case("mnv2 3x3 144->24", n, 144, 56, 3, 24),
        separable_case("mnv2 3x3/2 96->24", n, 96, 112, 3, 24, stride=2),
        separable_case("mnv2 3x3 960->160", n, 960, 7, 3, 160),
        separable_case("effnet 5x5 240->40", n, 240, 28, 5, 40),
        separable_case("xception 3x3 728->728", n, 728, 19, 3, 728),
        spatial_case("inception 7 128->128->192", n, 128, 17, 7, 128, 192),
        spatial_case("3 64->64->64", n, 64, 56, 3, 64, 64),
    ]


def _quick():
    return [
        separable_case("mnv2 3x3 144->24", 1, 144, 56, 3, 24),
        spatial_case("inception 7 128->128->192", 1, 128, 17, 7, 128, 192),
    ]


def cases(quick):
    return _quick() if quick else _full()
