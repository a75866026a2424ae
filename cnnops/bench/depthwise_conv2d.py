"""depthwise_conv2d benchmark cases: MobileNetV2 (3x3, stride 1 and 2), EfficientNet-B0
(5x5), ConvNeXt-T (7x7), RepLKNet (13x13, 31x31) and DeepLabV3 (dilated 5x5).

cnnops side: cnnops.F.depthwise_conv2d. torch side: torch.nn.functional.conv2d with
groups = C (what torch.nn.Conv2d runs for a depthwise layer), same tensors.
"""
import torch

import cnnops
from cnnops.bench.core import Case

FAMILY = "depthwise_conv2d"


def _out_size(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _taps_inside(size, k, s, p, d, out):
    """Taps of the `out` outputs along one axis that read the input, not its zero padding."""
    return sum(sum(1 for t in range(k) if 0 <= o * s - p + t * d < size) for o in range(out))


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
                  out_height=oh, out_width=ow,
                  # the share of fwd_flops whose taps read the input: the rest multiply zero
                  # padding, which a kernel may skip; flops / GFLOP/s count every tap (as
                  # conv2d's do), so a large kernel on a small input can show more than the
                  # peak. The time bound at the peak is flops * useful_taps / peak.
                  useful_taps=round(_taps_inside(h, k, stride, padding, dilation, oh)
                                    * _taps_inside(w, k, stride, padding, dilation, ow) / (oh * ow * k * k), 4))
    # 3x3 depthwise does 9 multiply-adds per 2 values moved: memory-bound; large kernels are not.
    return Case(family=FAMILY, name=name, shape=shape, make_inputs=make_inputs, cnnops_fn=cnnops_fn,
                torch_fn=torch_fn, flops=flops, nbytes=nbytes, grad_inputs=(0, 1, 2),
                bound="memory" if k <= 5 else "compute", params=params,
                torch_impl="torch.nn.functional.conv2d(groups=C)", input_names=("input", "weight", "bias"))


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
    ]


def _quick():
    return [
        dw_case("mnv2 3x3 144", 1, 144, 56, 3),
        dw_case("mnv2 3x3/2 96", 1, 96, 112, 3, stride=2),
        dw_case("convnext 7x7 96", 1, 96, 56, 7, bias=True),
        dw_case("replknet 31x31 64", 1, 64, 32, 31),
    ]


def cases(quick):
    return _quick() if quick else _full()
