"""cnnops: C++ (CPU) and CUDA kernels for the building blocks of convolutional networks,
as drop-in replacements for torch.nn.functional and torch.nn.

    import cnnops
    y = cnnops.F.conv2d(x, w, padding=1, padding_mode="reflect")
    layer = cnnops.nn.Conv2d(64, 64, 3, padding=1)
"""
from cnnops._loader import load_extension as _load_extension

_load_extension()  # before anything touches torch.ops.cnnops

from cnnops import ops  # noqa: E402  fake kernels and autograd for every op
from cnnops import functional  # noqa: E402
from cnnops import functional as F  # noqa: E402
from cnnops import nn  # noqa: E402
from cnnops._loader import build_info  # noqa: E402
from cnnops.conversion import ConvertReport, convert, revert  # noqa: E402
from cnnops.fuse import fuse_conv_bn  # noqa: E402

__version__ = "0.1.0"
__all__ = ["functional", "F", "nn", "ops", "build_info", "convert", "revert", "ConvertReport", "fuse_conv_bn",
           "__version__"]
