"""Convolution modules."""
import torch

from cnnops import functional as F


class Conv2d(torch.nn.Conv2d):
    """torch.nn.Conv2d computed by cnnops kernels; padding modes are applied inside the
    kernel instead of through a padded copy."""

    def _conv_forward(self, input, weight, bias):
        return F.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups, self.padding_mode)

    def forward(self, input):
        return self._conv_forward(input, self.weight, self.bias)


class ConvTranspose2d(torch.nn.ConvTranspose2d):
    """torch.nn.ConvTranspose2d computed by cnnops kernels (the convolution kernels run
    backwards); forward(input, output_size=None) as torch's."""

    def forward(self, input, output_size=None):
        if self.padding_mode != "zeros":
            raise ValueError("Only `zeros` padding mode is supported for ConvTranspose2d")
        return F.conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding, self.output_padding,
                                  self.groups, self.dilation, output_size=output_size)
