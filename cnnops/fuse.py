"""Inference folding: a Conv2d followed by an eval-mode BatchNorm becomes one Conv2d."""
import torch

from cnnops.nn.conv import Conv2d


def fuse_conv_bn(conv, bn):
    """A cnnops.nn.Conv2d equal to bn(conv(x)) in eval mode: per output channel o,
    w'[o] = w[o] * gamma[o] / sqrt(var[o] + eps) and b'[o] = (b[o] - mean[o]) * that scale + beta[o].
    Grouped and depthwise convolutions fold the same way (BatchNorm scales output channels).
    The folded parameters are computed in float64 and stored in the conv's dtype."""
    op = "cnnops.fuse_conv_bn"
    if not isinstance(conv, torch.nn.Conv2d):
        raise TypeError(f"{op}: expected conv to be a torch.nn.Conv2d, got {type(conv).__name__}")
    if not isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"{op}: expected bn to be a BatchNorm module, got {type(bn).__name__}")
    if conv.training or bn.training:
        raise ValueError(f"{op}: expected conv and bn in eval mode (call .eval() first), got "
                         f"conv.training={conv.training}, bn.training={bn.training}")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"{op}: expected bn.num_features to equal conv.out_channels ({conv.out_channels}), "
                         f"got {bn.num_features}")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"{op}: expected bn to have running statistics (track_running_stats=True), got None")
    if getattr(bn, "activation", None) or getattr(bn, "_activation", None):
        raise ValueError(f"{op}: expected a BatchNorm without a fused activation, got {type(bn).__name__}")
    w = conv.weight.detach()
    fused = Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                   conv.groups, True, conv.padding_mode, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        invstd = torch.rsqrt(bn.running_var.detach().double() + bn.eps)
        scale = invstd * bn.weight.detach().double() if bn.weight is not None else invstd
        shift = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(scale)
        b = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(scale)
        fused.weight.copy_((w.double() * scale.view(-1, 1, 1, 1)).to(w.dtype))
        fused.bias.copy_(((b - bn.running_mean.detach().double()) * scale + shift).to(w.dtype))
    fused.eval()
    return fused
