"""conv2d benchmark cases: shapes from ResNet-50, DeepLabV3 and style-transfer nets.

cnnops side: cnnops.F.conv2d (padding done inside the kernel for every padding_mode).
torch side: torch.nn.functional.conv2d for zero padding; for other padding modes the
torch.nn.Conv2d(padding_mode=...) forward itself (it pads a copy with F.pad, then
convolves), called with the same weight and bias tensors.
"""
import dataclasses

import torch

import cnnops
from cnnops.bench.core import Case

FAMILY = "conv2d"


def _out_size(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def conv_case(name, n, cin, cout, hw, k, stride=1, padding=0, dilation=1, groups=1,
              padding_mode="zeros", bias=False, input_grad=True):
    """A square conv2d case. input_grad=False: forward+backward computes the weight (and
    bias) gradients only, as for a network's first layer."""
    h = w = hw
    oh, ow = _out_size(h, k, stride, padding, dilation), _out_size(w, k, stride, padding, dilation)
    fwd_flops = 2 * n * cout * oh * ow * (cin // groups) * k * k
    x_el, w_el, b_el, y_el = n * cin * h * w, cout * (cin // groups) * k * k, cout if bias else 0, n * cout * oh * ow

    def flops(direction):
        if direction == "forward":
            return fwd_flops
        return fwd_flops * (2 + (1 if input_grad else 0))  # + weight grad (+ input grad)

    def nbytes(direction, dtype):
        el = x_el + w_el + b_el + y_el  # forward: read input, weight, bias; write output
        if direction != "forward":
            el += y_el  # read grad_output
            el += x_el + w_el  # weight grad: read input, write grad_weight
            el += b_el  # write grad_bias
            if input_grad:
                el += w_el + x_el  # input grad: read weight, write grad_input
        return el * dtype.itemsize

    def make_inputs(device, dtype):
        fan_in = (cin // groups) * k * k
        x = torch.randn(n, cin, h, w, device=device, dtype=torch.float32)
        wt = torch.randn(cout, cin // groups, k, k, device=device, dtype=torch.float32) / fan_in ** 0.5
        b = torch.randn(cout, device=device, dtype=torch.float32) * 0.1 if bias else None
        return tuple(None if t is None else t.to(dtype) for t in (x, wt, b))

    def cnnops_fn(x, wt, b):
        return cnnops.F.conv2d(x, wt, b, stride, padding, dilation, groups, padding_mode)

    if padding_mode == "zeros":
        def torch_fn(x, wt, b):
            return torch.nn.functional.conv2d(x, wt, b, stride, padding, dilation, groups)
        torch_impl = "torch.nn.functional.conv2d"
    else:
        module = torch.nn.Conv2d(cin, cout, k, stride, padding, dilation, groups, bias=bias,
                                 padding_mode=padding_mode, device="meta")

        def torch_fn(x, wt, b):
            return module._conv_forward(x, wt, b)  # what nn.Conv2d.forward runs, with our tensors
        torch_impl = f"torch.nn.Conv2d(padding_mode='{padding_mode}') forward (F.pad copy + F.conv2d)"

    shape = f"{n}x{cin}x{h}x{w} k{k} ->{cout} s{stride} p{padding}"
    if dilation != 1:
        shape += f" d{dilation}"
    if groups != 1:
        shape += f" g{groups}"
    if padding_mode != "zeros":
        shape += f" {padding_mode}"
    if bias:
        shape += " +b"
    grad_inputs = ((0,) if input_grad else ()) + (1, 2)
    params = dict(n=n, in_channels=cin, out_channels=cout, height=h, width=w, kernel=k, stride=stride,
                  padding=padding, dilation=dilation, groups=groups, padding_mode=padding_mode, bias=bias,
                  out_height=oh, out_width=ow, input_grad=input_grad)
    return Case(family=FAMILY, name=name, shape=shape, make_inputs=make_inputs, cnnops_fn=cnnops_fn,
                torch_fn=torch_fn, flops=flops, nbytes=nbytes, grad_inputs=grad_inputs, bound="compute",
                params=params, torch_impl=torch_impl,
                input_names=("input", "weight", "bias"))


def _full(n=8):
    return [
        conv_case("r50 3x3 64", n, 64, 64, 56, 3, padding=1),
        conv_case("r50 3x3 128", n, 128, 128, 28, 3, padding=1),
        conv_case("r50 3x3 256", n, 256, 256, 14, 3, padding=1),
        conv_case("r50 3x3 512", n, 512, 512, 7, 3, padding=1),
        conv_case("r50 1x1 256->64", n, 256, 64, 56, 1),
        conv_case("r50 1x1 64->256", n, 64, 256, 56, 1),
        conv_case("r50 1x1 1024->256", n, 1024, 256, 14, 1),
        conv_case("r50 stem 7x7/2", n, 3, 64, 224, 7, stride=2, padding=3, input_grad=False),
        conv_case("deeplab 3x3 d2", n, 256, 256, 33, 3, padding=2, dilation=2),
        conv_case("deeplab 3x3 d4", n, 256, 256, 33, 3, padding=4, dilation=4),
        conv_case("style 3x3 reflect", n, 128, 128, 64, 3, padding=1, padding_mode="reflect", bias=True),
    ]


def _quick():
    return [
        conv_case("r50 3x3 64", 1, 64, 64, 56, 3, padding=1),
        conv_case("r50 3x3 512", 2, 512, 512, 7, 3, padding=1),
        conv_case("r50 1x1 256->64", 1, 256, 64, 56, 1),
        conv_case("r50 stem 7x7/2", 1, 3, 64, 224, 7, stride=2, padding=3, input_grad=False),
        conv_case("deeplab 3x3 d2", 1, 256, 256, 33, 3, padding=2, dilation=2),
        conv_case("style 3x3 reflect", 1, 128, 128, 64, 3, padding=1, padding_mode="reflect", bias=True),
    ]


# ---- channels_last (NHWC) cases, for the tensor-core path (CNNOPS_EXPERIMENTAL=1 on CUDA,
# fp16/bf16, or fp32 with TF32). Full list only; select them with --filter nhwc.
def _nhwc(case):
    make = case.make_inputs

    def make_inputs(device, dtype):
        x, wt, b = make(device, dtype)
        cl = torch.channels_last
        return x.contiguous(memory_format=cl), wt.contiguous(memory_format=cl), b

    return dataclasses.replace(case, name="nhwc " + case.name, shape=case.shape + " nhwc",
                               make_inputs=make_inputs, params={**case.params, "channels_last": True})


def _channels_last_cases(n=8):
    return [_nhwc(c) for c in (
        conv_case("r50 3x3 64", n, 64, 64, 56, 3, padding=1),
        conv_case("r50 3x3 256", n, 256, 256, 14, 3, padding=1),
        conv_case("r50 3x3 128 s2", n, 128, 128, 56, 3, stride=2, padding=1),
        conv_case("r50 1x1 256->64", n, 256, 64, 56, 1),
        conv_case("r50 1x1 1024->256", n, 1024, 256, 14, 1),
        conv_case("deeplab 3x3 d2", n, 256, 256, 33, 3, padding=2, dilation=2),
        conv_case("style 3x3 reflect", n, 128, 128, 64, 3, padding=1, padding_mode="reflect", bias=True),
    )]


def cases(quick):
    return _quick() if quick else _full() + _channels_last_cases()
