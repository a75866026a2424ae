"""Separable convolutions composed of cnnops.nn.Conv2d layers (DESIGN.md section 1).

The depthwise layer of DepthwiseSeparableConv2d has groups == in_channels, so
cnnops.functional.conv2d runs it on the dedicated depthwise kernels; on the CPU, without
autograd, each pair runs as one fused op (cnnops.functional.depthwise_separable_conv2d,
spatially_separable_conv2d)."""
import torch
from torch.nn.modules import module as _module

from cnnops import functional as F
from cnnops.nn.conv import Conv2d


def _int(value, name, cls):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"cnnops.nn.{cls}: expected {name} to be an int, got {value!r}")
    return value


class DepthwiseSeparableConv2d(torch.nn.Module):
    """A depthwise k x k convolution followed by a pointwise 1 x 1 convolution:

        .depthwise = Conv2d(C_in, C_in * m, k, stride, padding, dilation, groups=C_in, bias, padding_mode)
        .pointwise = Conv2d(C_in * m, C_out, 1, bias=bias)

    Parameters (m = depth_multiplier, k = kernel_size as kh x kw):
        depthwise  kh * kw * C_in * m  (+ C_in * m bias)
        pointwise  C_in * m * C_out    (+ C_out bias)
    e.g. 3 -> 64 channels, 3 x 3, m = 1, no bias: 3*3*3 + 3*64 = 27 + 192 = 219 weights, against
    3*3*3*64 = 1728 for a full 3 x 3 conv (7.9x fewer). In general the ratio to a full conv
    (kh * kw * C_in * C_out) is m / C_out + m / (kh * kw): 32 -> 64 channels with 3 x 3 and
    m = 1 need 288 + 2048 = 2336 weights instead of 18432 (1/64 + 1/9, 7.9x fewer); the
    multiply-adds per output pixel shrink by the same factor.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
                 padding_mode="zeros", depth_multiplier=1, device=None, dtype=None):
        super().__init__()
        depth_multiplier = _int(depth_multiplier, "depth_multiplier", type(self).__name__)
        if depth_multiplier < 1:
            raise ValueError(f"cnnops.nn.DepthwiseSeparableConv2d: expected depth_multiplier >= 1, got {depth_multiplier}")
        mid = in_channels * depth_multiplier
        self.depth_multiplier = depth_multiplier
        self.depthwise = Conv2d(in_channels, mid, kernel_size, stride, padding, dilation, groups=in_channels, bias=bias,
                                padding_mode=padding_mode, device=device, dtype=dtype)
        self.pointwise = Conv2d(mid, out_channels, 1, bias=bias, device=device, dtype=dtype)

    def forward(self, input):
        dw, pw = self.depthwise, self.pointwise
        if (_fusable(self, input, dw, pw) and dw.groups == dw.in_channels and pw.kernel_size == (1, 1)
                and pw.stride == (1, 1) and pw.padding == (0, 0) and pw.dilation == (1, 1) and pw.groups == 1):
            return F.depthwise_separable_conv2d(input, dw.weight, pw.weight, dw.bias, pw.bias, dw.stride, dw.padding,
                                                dw.dilation, dw.padding_mode)
        return pw(dw(input))


class SpatiallySeparableConv2d(torch.nn.Module):
    """A k x 1 convolution followed by a 1 x k convolution, together covering a k x k window:

        .vertical   = Conv2d(C_in, C_out, (k, 1), (s, 1), (p, 0), (d, 1), bias=bias, padding_mode=padding_mode)
        .horizontal = Conv2d(C_out, C_out, (1, k), (1, s), (0, p), (1, d), bias=bias, padding_mode=padding_mode)

    Parameters: vertical k * C_in * C_out (+ C_out), horizontal k * C_out * C_out (+ C_out),
    against k * k * C_in * C_out for a full k x k conv: e.g. 64 -> 64 channels with k = 7 and
    no bias: 7*64*64 + 7*64*64 = 57344 weights instead of 7*7*64*64 = 200704 (3.5x fewer);
    in general the ratio is (C_in + C_out) / (k * C_in). With one channel in and out, the
    pair equals a k x k conv whose kernel is an outer product (rank 1); in general it
    approximates, and cannot express every, full k x k conv.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
                 padding_mode="zeros", device=None, dtype=None):
        super().__init__()
        name = type(self).__name__
        k = _int(kernel_size, "kernel_size", name)
        s = _int(stride, "stride", name)
        d = _int(dilation, "dilation", name)
        if isinstance(padding, str):
            pv = ph = padding
        else:
            p = _int(padding, "padding", name)
            pv, ph = (p, 0), (0, p)
        self.vertical = Conv2d(in_channels, out_channels, (k, 1), (s, 1), pv, (d, 1), bias=bias,
                               padding_mode=padding_mode, device=device, dtype=dtype)
        self.horizontal = Conv2d(out_channels, out_channels, (1, k), (1, s), ph, (1, d), bias=bias,
                                 padding_mode=padding_mode, device=device, dtype=dtype)

    def forward(self, input):
        v, h = self.vertical, self.horizontal
        padding = self._fused_padding()
        if (padding is not None and _fusable(self, input, v, h) and v.groups == 1 and h.groups == 1
                and v.padding_mode == h.padding_mode and v.kernel_size[1] == h.kernel_size[0] == 1
                and v.stride[1] == h.stride[0] == 1 and v.dilation[1] == h.dilation[0] == 1):
            return F.spatially_separable_conv2d(input, v.weight, h.weight, v.bias, h.bias, (v.stride[0], h.stride[1]),
                                                padding, (v.dilation[0], h.dilation[1]), v.padding_mode)
        return h(v(input))

    def _fused_padding(self):
        """The fused op's padding (rows, columns) or string, None where the layers pad otherwise."""
        pv, ph = self.vertical.padding, self.horizontal.padding
        if isinstance(pv, str) or isinstance(ph, str):
            return pv if pv == ph else None
        return (pv[0], ph[1]) if pv[1] == 0 and ph[0] == 0 else None


def _fusable(module, input, first, second):
    """Whether a fused separable op may replace the two layers' forwards: it gives what they
    give, without the intermediate tensor. Used on the CPU when no autograd graph is recorded
    (its backward would recompute the intermediate) and nothing observes the layers (hooks,
    layers replaced by other classes); the caller checks the layers' shapes of kernel."""
    if input.device.type != "cpu" or _module._global_forward_hooks or _module._global_forward_pre_hooks:
        return False
    if torch.jit.is_tracing():  # torch.jit.trace's check re-runs without grad: one graph for both runs
        return False
    if torch.is_grad_enabled() and (input.requires_grad or any(p.requires_grad for p in module.parameters())):
        return False
    return not any(type(m) is not Conv2d or m._forward_hooks or m._forward_pre_hooks for m in (first, second))
