"""Normalization modules."""
import torch

from cnnops import functional as F


class LayerNorm(torch.nn.LayerNorm):
    """torch.nn.LayerNorm computed by cnnops kernels (same constructor, parameters and
    state_dict, elementwise_affine and bias=False included)."""

    def forward(self, input):
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


class LayerNorm2d(torch.nn.LayerNorm):
    """Channels-first LayerNorm of ConvNeXt: normalizes an (N, C, H, W) tensor over C, in
    NCHW or channels_last memory, without permute copies. A torch.nn.LayerNorm with
    normalized_shape (C,), so weight and bias have shape (C,) and the state_dict keys are
    'weight' and 'bias', as in torchvision's ConvNeXt LayerNorm2d, whose state_dict it loads."""

    def __init__(self, num_channels, eps=1e-6, elementwise_affine=True, bias=True, device=None, dtype=None):
        super().__init__(num_channels, eps=eps, elementwise_affine=elementwise_affine, bias=bias,
                         device=device, dtype=dtype)

    def forward(self, input):
        return F.layer_norm2d(input, self.weight, self.bias, self.eps)
