"""conv_transpose2d benchmark cases: decoder upsampling layers of UNet (2x2 stride 2),
DCGAN generators (4x4 stride 2 padding 1) and FCN-style heads (3x3 stride 2 output_padding 1).

cnnops side: cnnops.F.conv_transpose2d (the conv2d kernels: forward = conv2d_grad_input).
torch side: torch.nn.functional.conv_transpose2d (oneDNN on the CPU, cuDNN on CUDA).
"""
import torch

import cnnops
from cnnops.bench.core import Case

FAMILY = "conv_transpose2d"


def tconv_case(name, n, cin, cout, hw, k, stride=1, padding=0, output_padding=0, groups=1, bias=False):
    h = w = hw
    oh = ow = (hw - 1) * stride - 2 * padding + (k - 1) + output_padding + 1
    # Every input pixel meets every tap once: the same multiply-adds as the convolution it transposes.
    fwd_flops = 2 * n * cin * (cout // groups) * k * k * h * w
    x_el, w_el, b_el, y_el = n * cin * h * w, cin * (cout // groups) * k * k, cout if bias else 0, n * cout * oh * ow

    def flops(direction):
        return fwd_flops if direction == "forward" else 3 * fwd_flops  # + input grad + weight grad

    def nbytes(direction, dtype):
        el = x_el + w_el + b_el + y_el
        if direction != "forward":
            el += y_el + (x_el + w_el + b_el) + (w_el + x_el)  # read grad_output; write grads, reread x, w
        return el * dtype.itemsize

    def make_inputs(device, dtype):
        fan_in = cin * k * k // (stride * stride)
        x = torch.randn(n, cin, h, w, device=device, dtype=torch.float32)
        wt = torch.randn(cin, cout // groups, k, k, device=device, dtype=torch.float32) / max(fan_in, 1) ** 0.5
        b = torch.randn(cout, device=device, dtype=torch.float32) * 0.1 if bias else None
        return tuple(None if t is None else t.to(dtype) for t in (x, wt, b))

    def cnnops_fn(x, wt, b):
        return cnnops.F.conv_transpose2d(x, wt, b, stride, padding, output_padding, groups)

    def torch_fn(x, wt, b):
        return torch.nn.functional.conv_transpose2d(x, wt, b, stride, padding, output_padding, groups)

    shape = f"{n}x{cin}x{h}x{w} k{k} ->{cout} s{stride} p{padding}"
    if output_padding:
        shape += f" op{output_padding}"
    if groups != 1:
        shape += f" g{groups}"
    if bias:
        shape += " +b"
    params = dict(n=n, in_channels=cin, out_channels=cout, height=h, width=w, kernel=k, stride=stride,
                  padding=padding, output_padding=output_padding, groups=groups, bias=bias, out_height=oh,
                  out_width=ow)
    return Case(family=FAMILY, name=name, shape=shape, make_inputs=make_inputs, cnnops_fn=cnnops_fn,
                torch_fn=torch_fn, flops=flops, nbytes=nbytes, grad_inputs=(0, 1, 2), bound="compute",
                params=params, torch_impl="torch.nn.functional.conv_transpose2d",
                input_names=("input", "weight", "bias"))


def _full():
    return [
        tconv_case("unet up 512->256", 4, 512, 256, 16, 2, stride=2, bias=True),
        tconv_case("unet up 256->128", 4, 256, 128, 32, 2, stride=2, bias=True),
        tconv_case("unet up 128->64", 4, 128, 64, 64, 2, stride=2, bias=True),
        tconv_case("unet up 64->32", 4, 64, 32, 128, 2, stride=2, bias=True),
        tconv_case("dcgan 4x4 256->128", 8, 256, 128, 16, 4, stride=2, padding=1),
        tconv_case("dcgan 4x4 128->64", 8, 128, 64, 32, 4, stride=2, padding=1),
        tconv_case("dcgan 4x4 64->3", 8, 64, 3, 32, 4, stride=2, padding=1),
        tconv_case("fcn 3x3 op1 256->128", 4, 256, 128, 28, 3, stride=2, padding=1, output_padding=1, bias=True),
        tconv_case("fcn 3x3 op1 128->64", 4, 128, 64, 56, 3, stride=2, padding=1, output_padding=1, bias=True),
    ]


def _quick():
    return [
        tconv_case("unet up 256->128", 1, 256, 128, 16, 2, stride=2, bias=True),
        tconv_case("dcgan 4x4 128->64", 2, 128, 64, 16, 4, stride=2, padding=1),
        tconv_case("fcn 3x3 op1 128->64", 1, 128, 64, 28, 3, stride=2, padding=1, output_padding=1, bias=True),
    ]


def cases(quick):
    return _quick() if quick else _full()
