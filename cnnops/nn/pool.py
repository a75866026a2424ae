"""Pooling modules: torch's, computed by cnnops kernels, plus global pooling."""
import torch

from cnnops import functional as F


class MaxPool2d(torch.nn.MaxPool2d):
    """torch.nn.MaxPool2d computed by cnnops kernels."""

    def forward(self, input):
        return F.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                            ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class AvgPool2d(torch.nn.AvgPool2d):
    """torch.nn.AvgPool2d computed by cnnops kernels."""

    def forward(self, input):
        return F.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad, self.divisor_override)


class AdaptiveAvgPool2d(torch.nn.AdaptiveAvgPool2d):
    """torch.nn.AdaptiveAvgPool2d computed by cnnops kernels."""

    def forward(self, input):
        return F.adaptive_avg_pool2d(input, self.output_size)


class AdaptiveMaxPool2d(torch.nn.AdaptiveMaxPool2d):
    """torch.nn.AdaptiveMaxPool2d computed by cnnops kernels."""

    def forward(self, input):
        return F.adaptive_max_pool2d(input, self.output_size, self.return_indices)


class GlobalAvgPool2d(torch.nn.Module):
    """Average over H and W: (N, C, H, W) -> (N, C, 1, 1), (C, H, W) -> (C, 1, 1)."""

    def forward(self, input):
        return F.adaptive_avg_pool2d(input, 1)


class GlobalMaxPool2d(torch.nn.Module):
    """Maximum over H and W: (N, C, H, W) -> (N, C, 1, 1), (C, H, W) -> (C, 1, 1)."""

    def forward(self, input):
        return F.adaptive_max_pool2d(input, 1)
