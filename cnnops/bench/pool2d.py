"""pool2d benchmark cases: the pooling layers of ResNet, GoogLeNet, VGG, DenseNet,
MobileNetV2/ResNet-50 heads and AlexNet.

cnnops side: cnnops.functional; torch side: torch.nn.functional, same arguments. All
cases are memory-bound: bytes are the necessary ones (forward: read the input, write the
output; forward+backward adds: read grad_output, write grad_input). Max pooling's indices
are an implementation detail of both sides and are not counted.
"""
import torch

import cnnops
from cnnops.bench.core import Case
from cnnops.ops.pool2d import pool_output_size

FAMILY = "pool2d"


def pool_case(name, kind, n, c, h, w, kernel=None, stride=None, padding=0, ceil_mode=False,
              count_include_pad=True, output_size=None):
    """kind: 'max', 'avg', 'adaptive_avg', 'adaptive_max'. Square kernels/strides."""
    if kind in ("max", "avg"):
        stride = kernel if stride is None else stride
        oh = pool_output_size(h, kernel, stride, padding, 1, ceil_mode)
        ow = pool_output_size(w, kernel, stride, padding, 1, ceil_mode)
    else:
        oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    x_el, y_el = n * c * h * w, n * c * oh * ow

    def nbytes(direction, dtype):
        el = x_el + y_el
        if direction != "forward":
            el += y_el + x_el
        return el * dtype.itemsize

    def make_inputs(device, dtype):
        return (torch.randn(n, c, h, w, device=device, dtype=torch.float32).to(dtype),)

    if kind == "max":
        def cnnops_fn(x):
            return cnnops.F.max_pool2d(x, kernel, stride, padding, ceil_mode=ceil_mode)

        def torch_fn(x):
            return torch.nn.functional.max_pool2d(x, kernel, stride, padding, ceil_mode=ceil_mode)
        desc = f"k{kernel} s{stride} p{padding}" + (" ceil" if ceil_mode else "")
    elif kind == "avg":
        def cnnops_fn(x):
            return cnnops.F.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad)

        def torch_fn(x):
            return torch.nn.functional.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad)
        desc = f"k{kernel} s{stride} p{padding}" + (" ceil" if ceil_mode else "")
    elif kind == "adaptive_avg":
        def cnnops_fn(x):
            return cnnops.F.adaptive_avg_pool2d(x, output_size)

        def torch_fn(x):
            return torch.nn.functional.adaptive_avg_pool2d(x, output_size)
        desc = f"adaptive avg ->{oh}x{ow}"
    elif kind == "adaptive_max":
        def cnnops_fn(x):
            return cnnops.F.adaptive_max_pool2d(x, output_size)

        def torch_fn(x):
            return torch.nn.functional.adaptive_max_pool2d(x, output_size)
        desc = f"adaptive max ->{oh}x{ow}"
    else:
        raise ValueError(f"unknown pooling kind {kind!r}")

    params = dict(kind=kind, n=n, channels=c, height=h, width=w, kernel=kernel, stride=stride, padding=padding,
                  ceil_mode=ceil_mode, count_include_pad=count_include_pad, output_size=output_size,
                  out_height=oh, out_width=ow)
    torch_impl = {"max": "max_pool2d", "avg": "avg_pool2d", "adaptive_avg": "adaptive_avg_pool2d",
                  "adaptive_max": "adaptive_max_pool2d"}[kind]
    return Case(family=FAMILY, name=name, shape=f"{n}x{c}x{h}x{w} {desc}", make_inputs=make_inputs,
                cnnops_fn=cnnops_fn, torch_fn=torch_fn, flops=lambda direction: 0, nbytes=nbytes,
                grad_inputs=(0,), bound="memory", params=params,
                torch_impl=f"torch.nn.functional.{torch_impl}", input_names=("input",))


def _full(n=8):
    return [
        pool_case("resnet stem max 3x3/2", "max", n, 64, 112, 112, 3, 2, 1),
        pool_case("googlenet max 3x3/2 ceil 192", "max", n, 192, 56, 56, 3, 2, 0, ceil_mode=True),
        pool_case("googlenet max 3x3/2 ceil 480", "max", n, 480, 28, 28, 3, 2, 0, ceil_mode=True),
        pool_case("googlenet max 3x3/2 ceil 832", "max", n, 832, 14, 14, 3, 2, 0, ceil_mode=True),
        pool_case("vgg max 2x2 64", "max", n, 64, 224, 224, 2),
        pool_case("vgg max 2x2 256", "max", n, 256, 56, 56, 2),
        pool_case("vgg max 2x2 512", "max", n, 512, 14, 14, 2),
        pool_case("densenet avg 2x2 128", "avg", n, 128, 56, 56, 2),
        pool_case("densenet avg 2x2 256", "avg", n, 256, 28, 28, 2),
        pool_case("densenet avg 2x2 512", "avg", n, 512, 14, 14, 2),
        pool_case("global avg 2048x7x7", "adaptive_avg", n, 2048, 7, 7, output_size=1),
        pool_case("global avg 1280x7x7", "adaptive_avg", n, 1280, 7, 7, output_size=1),
        pool_case("alexnet adaptive avg 13->6", "adaptive_avg", n, 256, 13, 13, output_size=6),
        pool_case("adaptive max 13->6", "adaptive_max", n, 256, 13, 13, output_size=6),
    ]


def _quick():
    return [
        pool_case("resnet stem max 3x3/2", "max", 1, 64, 112, 112, 3, 2, 1),
        pool_case("googlenet max 3x3/2 ceil 480", "max", 1, 480, 28, 28, 3, 2, 0, ceil_mode=True),
        pool_case("vgg max 2x2 256", "max", 1, 256, 56, 56, 2),
        pool_case("densenet avg 2x2 128", "avg", 1, 128, 56, 56, 2),
        pool_case("global avg 2048x7x7", "adaptive_avg", 2, 2048, 7, 7, output_size=1),
        pool_case("alexnet adaptive avg 13->6", "adaptive_avg", 2, 256, 13, 13, output_size=6),
    ]


def cases(quick):
    return _quick() if quick else _full()
