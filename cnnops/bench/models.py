"""Small versions of the networks cnnops targets, built from plain torch.nn layers (no
downloads). The model tests convert them and compare with the originals; the benchmark's
end-to-end rows time them converted against unconverted."""
import torch
from torch import nn
from torch.nn import functional as TF

from cnnops.bench.core import Case


def conv_bn_act(cin, cout, k, stride=1, groups=1, dilation=1, act=nn.ReLU):
    padding = dilation * (k - 1) // 2
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, padding, dilation, groups, bias=False),
                         nn.BatchNorm2d(cout), act(inplace=True))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    def __init__(self, cin, width, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + self.downsample(x))


def resnet(num_classes=10, width=16):
    """ResNet-style: 7x7 stride-2 stem, stem max pool, basic and bottleneck blocks."""
    return nn.Sequential(
        nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
        BasicBlock(width, width), BasicBlock(width, 2 * width, stride=2),
        Bottleneck(2 * width, width, 4 * width, stride=2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.block = nn.Sequential(
            conv_bn_act(cin, hidden, 1, act=nn.ReLU6),
            conv_bn_act(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.block(x)
        return x + out if self.use_residual else out


def mobilenet_v2(num_classes=10):
    """MobileNetV2-style: depthwise 3x3, BatchNorm + ReLU6, inverted residuals."""
    return nn.Sequential(
        conv_bn_act(3, 16, 3, 2, act=nn.ReLU6),
        InvertedResidual(16, 16, 1, 1), InvertedResidual(16, 24, 2, 4), InvertedResidual(24, 24, 1, 4),
        conv_bn_act(24, 64, 1, act=nn.ReLU6),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.0), nn.Linear(64, num_classes))


class ChannelsFirstLayerNorm(nn.LayerNorm):
    """torchvision's ConvNeXt LayerNorm2d: a LayerNorm subclass with its own forward
    (permute, layer_norm, permute). convert() leaves it alone and reports it."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = TF.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim, layer_scale=1e-1):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


def convnext(num_classes=10, dim=16):
    """ConvNeXt-style: patchify stem, 7x7 depthwise blocks, channels-first LayerNorm."""
    return nn.Sequential(
        nn.Conv2d(3, dim, 4, 4), ChannelsFirstLayerNorm(dim, eps=1e-6),
        ConvNeXtBlock(dim), ConvNeXtBlock(dim),
        ChannelsFirstLayerNorm(dim, eps=1e-6), nn.Conv2d(dim, 2 * dim, 2, 2), ConvNeXtBlock(2 * dim),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(2 * dim), nn.Linear(2 * dim, num_classes))


class UNet(nn.Module):
    """UNet-style encoder-decoder: max-pool downsampling, transposed-conv upsampling,
    skip connections concatenated."""

    def __init__(self, cin=3, classes=4, width=8):
        super().__init__()
        w = width
        self.enc1 = nn.Sequential(conv_bn_act(cin, w, 3), conv_bn_act(w, w, 3))
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), conv_bn_act(w, 2 * w, 3))
        self.bottom = nn.Sequential(nn.MaxPool2d(2), conv_bn_act(2 * w, 4 * w, 3))
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, 2)
        self.dec2 = conv_bn_act(4 * w, 2 * w, 3)
        self.up1 = nn.ConvTranspose2d(2 * w, w, 2, 2)
        self.dec1 = conv_bn_act(2 * w, w, 3)
        self.head = nn.Conv2d(w, classes, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        b = self.bottom(e2)
        d2 = self.dec2(torch.cat([self.up2(b), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)


class ASPP(nn.Module):
    """DeepLab-style atrous spatial pyramid pooling: 1x1, dilated 3x3 branches and an
    image-level (global average pooling) branch, concatenated and projected."""

    def __init__(self, cin=3, cout=8, rates=(2, 3)):
        super().__init__()
        self.stem = conv_bn_act(cin, cout, 3, 2)
        self.branches = nn.ModuleList([conv_bn_act(cout, cout, 1)] +
                                      [conv_bn_act(cout, cout, 3, dilation=r) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cout, cout, 1, bias=False),
                                  nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
        self.project = conv_bn_act(cout * (len(rates) + 2), cout, 1)
        self.classifier = nn.Conv2d(cout, 5, 1)

    def forward(self, x):
        x = self.stem(x)
        parts = [branch(x) for branch in self.branches]
        parts.append(TF.interpolate(self.pool(x), size=x.shape[-2:], mode="nearest"))
        return self.classifier(self.project(torch.cat(parts, 1)))


# name -> (builder, input shape)
MODELS = {
    "resnet": (resnet, (2, 3, 32, 32)),
    "mobilenet_v2": (mobilenet_v2, (2, 3, 32, 32)),
    "convnext": (convnext, (2, 3, 32, 32)),
    "unet": (UNet, (2, 3, 16, 16)),
    "aspp": (ASPP, (2, 3, 24, 24)),
}


# ---------------------------------------------------------------- end-to-end benchmark rows
FAMILY = "models"


def model_case(name, builder, shape, **kwargs):
    """A whole network, converted with cnnops.convert against the unconverted original.
    The inputs are the image batch and every parameter (so forward+backward computes all
    parameter gradients: a training step without the optimizer). The forward direction
    runs in eval mode, forward+backward in training mode (batch statistics)."""
    from torch.func import functional_call
    from torch.utils.flop_counter import FlopCounterMode

    import cnnops

    reference = builder(**kwargs)
    converted = cnnops.convert(reference)
    names = [n for n, _ in reference.named_parameters()]

    def make_inputs(device, dtype):
        reference.to(device=device, dtype=dtype), converted.to(device=device, dtype=dtype)
        x = torch.randn(shape, device=device, dtype=torch.float32).to(dtype)
        return (x,) + tuple(p.detach().clone() for p in reference.parameters())

    def runner(model):
        def run(x, *params):
            model.train(torch.is_grad_enabled())
            return functional_call(model, dict(zip(names, params)), (x,))
        return run

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        reference.eval()(torch.randn(shape))
    forward_flops = counter.get_total_flops()
    return Case(family=FAMILY, name=name, shape="x".join(map(str, shape)), make_inputs=make_inputs,
                cnnops_fn=runner(converted), torch_fn=runner(reference),
                flops=lambda direction: forward_flops * (1 if direction == "forward" else 3),
                nbytes=lambda direction, dtype: 0, grad_inputs=tuple(range(len(names) + 1)), bound="compute",
                joint_scale=True, fp32_tolerance=(1e-3, 1e-3),
                params=dict(model=builder.__name__, input_shape=list(shape), options=kwargs),
                torch_impl=f"the unconverted torch.nn model ({builder.__name__})",
                input_names=("input",) + tuple(names))


def cases(quick):
    if quick:
        return [model_case("resnet-style e2e", resnet, (2, 3, 32, 32)),
                model_case("mobilenet_v2-style e2e", mobilenet_v2, (2, 3, 32, 32))]
    return [model_case("resnet-style e2e", resnet, (8, 3, 96, 96), width=32),
            model_case("mobilenet_v2-style e2e", mobilenet_v2, (8, 3, 96, 96)),
            model_case("unet-style e2e", UNet, (8, 3, 64, 64), width=16),
            model_case("convnext-style e2e", convnext, (8, 3, 64, 64), dim=32)]
