"""Whole-model conversion: swap torch.nn layers for their cnnops twins and back.

The swap changes each module's ``__class__`` and nothing else, so parameters, buffers,
an optimizer built before the call, hooks and parametrizations all survive: the module
object is the same one, only its ``forward`` now calls cnnops kernels.
"""
import copy
from dataclasses import dataclass, field

import torch
from torch.nn.utils import parametrize

from cnnops import nn as cnn

# torch.nn class -> its cnnops twin (a subclass that only overrides the computation).
TWINS = {
    torch.nn.Conv2d: cnn.Conv2d,
    torch.nn.ConvTranspose2d: cnn.ConvTranspose2d,
    torch.nn.MaxPool2d: cnn.MaxPool2d,
    torch.nn.AvgPool2d: cnn.AvgPool2d,
    torch.nn.AdaptiveAvgPool2d: cnn.AdaptiveAvgPool2d,
    torch.nn.AdaptiveMaxPool2d: cnn.AdaptiveMaxPool2d,
    torch.nn.LayerNorm: cnn.LayerNorm,
    torch.nn.BatchNorm2d: cnn.BatchNorm2d,
    torch.nn.SyncBatchNorm: cnn.SyncBatchNorm,
}

# Fusions of a BatchNorm2d followed by an activation inside an nn.Sequential:
# activation class -> fused module class (same constructor and state_dict as BatchNorm2d).
BN_ACTIVATION_FUSIONS = {torch.nn.ReLU: cnn.BatchNormReLU2d, torch.nn.ReLU6: cnn.BatchNormReLU6_2d}


@dataclass
class ConvertReport:
    """What convert() did: each entry is (module name, detail)."""
    replaced: list = field(default_factory=list)  # (name, "torch.nn.X -> cnnops.nn.X")
    fused: list = field(default_factory=list)  # (name, "a + b -> cnnops.nn.X")
    left: list = field(default_factory=list)  # (name, why it was left as it is)

    def __str__(self):
        lines = [f"cnnops.convert: {len(self.replaced)} replaced, {len(self.fused)} fused, {len(self.left)} left"]
        for title, rows in (("replaced", self.replaced), ("fused", self.fused), ("left", self.left)):
            lines += [f"  {title:8s} {name or '(model)'}: {detail}" for name, detail in rows]
        return "\n".join(lines)


class FusedAway(torch.nn.Identity):
    """Stands where a module was fused into its predecessor (it returns its input).
    Keeps the original module outside the module tree so revert() can put it back and
    state_dict keys do not change."""

    def __init__(self, original, fused_into):
        super().__init__()
        object.__setattr__(self, "original", original)  # not a submodule: no state_dict entry
        self.fused_into = fused_into

    def extra_repr(self):
        return f"fused into {self.fused_into!r}: {self.original}"


def _qualname(cls):
    return f"{'cnnops.nn' if cls.__module__.startswith('cnnops') else 'torch.nn'}.{cls.__name__}"


def _twin_base(module):
    """The torch.nn class this module is an instance of, when it is one cnnops swaps."""
    for base in type(module).__mro__:
        if base in TWINS:
            return base
    return None


def _rebase_parametrized(cls, new_base):
    """torch.nn.utils.parametrize gives a parametrized module a class of its own, derived
    from the module's class and holding one property per parametrized tensor. The same
    class over another base keeps the parametrizations working."""
    namespace = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
    return type(cls.__name__, (new_base,), namespace)


def _swap_classes(model, report):
    twin_classes = set(TWINS.values())
    for name, module in model.named_modules():
        cls = type(module)
        if cls in TWINS:
            module.__class__ = TWINS[cls]
            report.replaced.append((name, f"{_qualname(cls)} -> {_qualname(TWINS[cls])}"))
        elif parametrize.is_parametrized(module) and cls.__bases__[0] in TWINS:
            base = cls.__bases__[0]
            module.__class__ = _rebase_parametrized(cls, TWINS[base])
            report.replaced.append((name, f"{_qualname(base)} -> {_qualname(TWINS[base])} (parametrized)"))
        elif cls in twin_classes or isinstance(module, FusedAway):
            continue
        else:
            base = _twin_base(module)
            if base is None:
                continue
            if cls.forward is not base.forward:
                why = f"{cls.__qualname__} subclasses {_qualname(base)} with its own forward"
            else:
                why = f"{cls.__qualname__} subclasses {_qualname(base)}; swapping its class would drop the subclass"
            report.left.append((name, why))


def _sequential_pairs(model):
    """(sequential's name, sequential, index) of each adjacent child pair inside an nn.Sequential."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Sequential):
            keys = list(module._modules.keys())
            for i in range(len(keys) - 1):
                yield name, module, keys[i], keys[i + 1]


def _child_name(parent, key):
    return f"{parent}.{key}" if parent else key


def _fuse_conv_bn_pairs(model, report):
    from cnnops.fuse import fuse_conv_bn

    for parent_name, seq, first, second in list(_sequential_pairs(model)):
        conv, bn = seq._modules[first], seq._modules[second]
        if not (isinstance(conv, torch.nn.Conv2d) and type(bn) in (torch.nn.BatchNorm2d, _bn_twin())):
            continue
        names = f"{_child_name(parent_name, first)} + {_child_name(parent_name, second)}"
        if conv.training or bn.training:
            report.left.append((names, "Conv2d -> BatchNorm2d in training mode: fuse_bn folds only in eval mode"))
            continue
        seq._modules[first] = fuse_conv_bn(conv, bn)
        seq._modules[second] = FusedAway(bn, _child_name(parent_name, first))
        report.fused.append((names, "Conv2d + BatchNorm2d -> cnnops.nn.Conv2d (BatchNorm folded into weight and bias)"))


def _bn_twin():
    return TWINS.get(torch.nn.BatchNorm2d)


def _fuse_bn_activation_pairs(model, report):
    for parent_name, seq, first, second in list(_sequential_pairs(model)):
        bn, act = seq._modules[first], seq._modules[second]
        fused_cls = BN_ACTIVATION_FUSIONS.get(type(act))
        if fused_cls is None or type(bn) not in (torch.nn.BatchNorm2d, _bn_twin()):
            continue
        names = f"{_child_name(parent_name, first)} + {_child_name(parent_name, second)}"
        bn.__class__ = fused_cls
        seq._modules[second] = FusedAway(act, _child_name(parent_name, first))
        report.fused.append((names, f"BatchNorm2d + {type(act).__name__} -> cnnops.nn.{fused_cls.__name__}"))


def convert(model, inplace=False, fuse_bn=False, fuse_bn_relu=False, return_report=False):
    """Swap the exact torch.nn classes cnnops implements (``TWINS``) for their cnnops
    twins by changing ``__class__``; everything else is left as it is.

    inplace: convert ``model`` itself (an optimizer built before the call keeps working);
        otherwise a deep copy is converted and returned.
    fuse_bn: fold Conv2d -> BatchNorm2d pairs inside nn.Sequential into one Conv2d
        (eval mode only: the BatchNorm's running statistics are baked into the weights).
    fuse_bn_relu: turn BatchNorm2d -> ReLU / ReLU6 pairs inside nn.Sequential into one
        fused module (the activation's place is taken by a ``FusedAway`` identity).
    return_report: return ``(model, ConvertReport)`` instead of the model.

    Subclasses of those torch.nn classes are left alone and listed in the report.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"cnnops.convert: expected model to be a torch.nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    report = ConvertReport()
    if fuse_bn:
        _fuse_conv_bn_pairs(model, report)
    _swap_classes(model, report)
    if fuse_bn_relu:
        _fuse_bn_activation_pairs(model, report)
    return (model, report) if return_report else model


def revert(model):
    """Undo convert() in place and return the model: every cnnops twin becomes its torch.nn
    class again and modules fused away come back. Folded Conv2d -> BatchNorm2d pairs stay
    folded (the BatchNorm's statistics live in the conv weights now): the conv becomes a
    torch.nn.Conv2d and the BatchNorm's place keeps an identity."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"cnnops.revert: expected model to be a torch.nn.Module, got {type(model).__name__}")
    back = {twin: base for base, twin in TWINS.items()}
    fused_bases = {fused: torch.nn.BatchNorm2d for fused in BN_ACTIVATION_FUSIONS.values()}
    for name, module in list(model.named_modules()):
        for key, child in list(module._modules.items()):
            if isinstance(child, FusedAway) and not isinstance(child.original, torch.nn.BatchNorm2d):
                module._modules[key] = child.original
        cls = type(module)
        if cls in fused_bases:
            module.__class__ = fused_bases[cls]
        elif cls in back:
            module.__class__ = back[cls]
        elif parametrize.is_parametrized(module) and cls.__bases__[0] in back:
            module.__class__ = _rebase_parametrized(cls, back[cls.__bases__[0]])
    return model
