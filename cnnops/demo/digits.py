"""The training demo (``python -m cnnops.demo``): data, network, training loop, report.

Data: scikit-learn's bundled handwritten digits (1797 images, 8x8, 10 classes), split
stratified into train / validation / test. Network: input standardisation, conv + BatchNorm +
ReLU + max pool, a depthwise-separable block + BatchNorm + ReLU, global average pooling,
dropout and a linear classifier. Regularisation: L2 weight decay on the conv and linear
weights, random one-pixel shifts of the training images, dropout, and early stopping on
the validation accuracy (the best epoch's weights are restored before the test).
"""
import argparse
import copy
import importlib
import math
import os
import sys
import time
import types
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as TF

import cnnops
import cnnops.nn

DEMO_EXTRAS = "pip install scikit-learn matplotlib   (or, from a checkout: pip install -e .[demo])"


class MissingDependency(ImportError):
    """An optional demo dependency (scikit-learn, matplotlib) is not installed."""


def require(module, package, purpose):
    """Imports an optional dependency, or raises MissingDependency saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependency(
            f"cnnops.demo: {purpose} needs {package}, which is not installed ({e}).\n"
            f"Install the demo extras: {DEMO_EXTRAS}") from e


# ---------------------------------------------------------------------------- layers

class Standardize(torch.nn.Module):
    """Input normalisation as the network's first layer: (x - mean) / std, with the
    statistics of the training split stored as buffers (so they travel in the state_dict)."""

    def __init__(self, mean=0.0, std=1.0):
        super().__init__()
        if not std > 0:
            raise ValueError(f"Standardize: std must be > 0, got {std}")
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x):
        return (x - self.mean) / self.std

    def extra_repr(self):
        return f"mean={self.mean.item():.4g}, std={self.std.item():.4g}"


class _SeparableConv2d(torch.nn.Module):
    """Depthwise-separable convolution from two convolutions of ``conv_class``: a depthwise
    Conv2d (groups = in_channels) then a 1x1 pointwise Conv2d. Same constructor and
    submodule names (.depthwise, .pointwise) as DESIGN.md's cnnops.nn.DepthwiseSeparableConv2d,
    so the state_dict keys do not change when the demo switches to that module."""

    conv_class = torch.nn.Conv2d

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
                 padding_mode="zeros", depth_multiplier=1):
        super().__init__()
        mid = in_channels * depth_multiplier
        self.depthwise = self.conv_class(in_channels, mid, kernel_size, stride, padding, dilation, groups=in_channels,
                                         bias=bias, padding_mode=padding_mode)
        self.pointwise = self.conv_class(mid, out_channels, 1, bias=bias)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


def separable_conv_from(conv_class):
    """A DepthwiseSeparableConv2d class whose two convolutions are ``conv_class``."""
    return type("DepthwiseSeparableConv2d", (_SeparableConv2d,), {"conv_class": conv_class, "__module__": __name__})


class _TorchGlobalAvgPool2d(torch.nn.AdaptiveAvgPool2d):
    """torch.nn's global average pooling, with cnnops.nn.GlobalAvgPool2d's constructor."""

    def __init__(self):
        super().__init__(1)


# The two layer sets the network is built from. Activations, Flatten, Dropout and Linear
# have no cnnops twins (they are not convolution-network kernels), so both use torch's.
TORCH_LAYERS = types.SimpleNamespace(
    name="torch.nn",
    Conv2d=torch.nn.Conv2d,
    BatchNorm2d=torch.nn.BatchNorm2d,
    ReLU=torch.nn.ReLU,
    MaxPool2d=torch.nn.MaxPool2d,
    DepthwiseSeparableConv2d=separable_conv_from(torch.nn.Conv2d),
    GlobalAvgPool2d=_TorchGlobalAvgPool2d,
    Flatten=torch.nn.Flatten,
    Dropout=torch.nn.Dropout,
    Linear=torch.nn.Linear,
)

CNNOPS_LAYERS = types.SimpleNamespace(
    name="cnnops.nn",
    Conv2d=cnnops.nn.Conv2d,
    BatchNorm2d=cnnops.nn.BatchNorm2d,
    ReLU=torch.nn.ReLU,
    MaxPool2d=cnnops.nn.MaxPool2d,
    DepthwiseSeparableConv2d=cnnops.nn.DepthwiseSeparableConv2d,
    GlobalAvgPool2d=cnnops.nn.GlobalAvgPool2d,
    Flatten=torch.nn.Flatten,
    Dropout=torch.nn.Dropout,
    Linear=torch.nn.Linear,
)


def build_model(layers, mean=0.0, std=1.0, width=32, dropout=0.2, num_classes=10):
    """The demo network, from the modules of ``layers`` (CNNOPS_LAYERS or TORCH_LAYERS).
    The same seed before the call gives the same initial weights for either layer set."""
    L = layers
    return torch.nn.Sequential(OrderedDict([
        ("normalize", Standardize(mean, std)),
        ("conv", L.Conv2d(1, width, 3, padding=1, bias=False)),  # no bias: BatchNorm follows
        ("bn1", L.BatchNorm2d(width)),
        ("relu1", L.ReLU(inplace=True)),
        ("pool", L.MaxPool2d(2)),  # 8x8 -> 4x4
        ("separable", L.DepthwiseSeparableConv2d(width, 4 * width, 3, padding=1, bias=False)),
        ("bn2", L.BatchNorm2d(4 * width)),
        ("relu2", L.ReLU(inplace=True)),
        ("gap", L.GlobalAvgPool2d()),
        ("flatten", L.Flatten()),
        ("dropout", L.Dropout(dropout)),
        ("classifier", L.Linear(4 * width, num_classes)),
    ]))


# ---------------------------------------------------------------------------- data

def load_digits_split(seed=0, subset=None, val_fraction=0.15, test_fraction=0.2):
    """scikit-learn's bundled digits as float32 (N, 1, 8, 8) images (pixel values 0..16)
    and int64 labels, split stratified: {"train": (x, y), "val": (x, y), "test": (x, y)}.
    ``subset`` keeps that many images (stratified) before splitting, for quick runs."""
    datasets = require("sklearn.datasets", "scikit-learn", "the digits data set")
    model_selection = require("sklearn.model_selection", "scikit-learn", "the data split")
    digits = datasets.load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target, dtype=torch.int64)
    idx = list(range(len(y)))
    split = model_selection.train_test_split
    if subset is not None:
        if not 30 <= subset <= len(y):
            raise ValueError(f"subset must be between 30 and {len(y)} images, got {subset}")
        if subset < len(y):
            idx, _ = split(idx, train_size=subset, stratify=y.numpy(), random_state=seed)
    rest, test = split(idx, test_size=test_fraction, stratify=y[idx].numpy(), random_state=seed)
    train_idx, val = split(rest, test_size=val_fraction / (1 - test_fraction), stratify=y[rest].numpy(),
                           random_state=seed)
    pick = lambda ids: (x[torch.tensor(ids)], y[torch.tensor(ids)])  # noqa: E731
    return {"train": pick(train_idx), "val": pick(val), "test": pick(test)}


def random_shift(x, max_shift, generator):
    """Each image moved by a random whole number of pixels in [-max_shift, max_shift] along
    each axis, zero-filled (the background of the digits is 0)."""
    if max_shift <= 0:
        return x
    n, c, h, w = x.shape
    padded = TF.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # (n, 1, h, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]  # (n, 1, 1, w)
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


# ---------------------------------------------------------------------------- progress

class ProgressBar:
    """A one-line text progress bar. On a terminal it redraws in place as batches finish;
    elsewhere (logs, pipes) only the finished line of each epoch is written."""

    def __init__(self, total, prefix="", stream=None, width=20, live=None):
        self.total, self.prefix, self.width = max(1, total), prefix, width
        self.stream = sys.stdout if stream is None else stream
        self.live = (self.stream.isatty() if hasattr(self.stream, "isatty") else False) if live is None else live
        self._last_len = 0

    def render(self, done, postfix=""):
        filled = int(round(self.width * done / self.total))
        return f"{self.prefix}[{'#' * filled}{'.' * (self.width - filled)}] {done}/{self.total}{postfix}"

    def update(self, done, postfix=""):
        if self.live:
            self._write("\r" + self.render(done, postfix))

    def finish(self, postfix=""):
        self._write(("\r" if self.live else "") + self.render(self.total, postfix) + "\n")

    def _write(self, text):
        line_len = len(text.strip("\r\n"))
        if text.startswith("\r") and line_len < self._last_len:  # blank out what a longer line left
            text = text.rstrip("\n") + " " * (self._last_len - line_len) + ("\n" if text.endswith("\n") else "")
        self._last_len = 0 if text.endswith("\n") else line_len
        self.stream.write(text)
        self.stream.flush()


# ---------------------------------------------------------------------------- training

@dataclass
class History:
    """What one training run did: one dict per epoch (train_loss, train_acc, val_loss,
    val_acc, seconds), the epoch whose weights were kept, the test result, and times."""
    label: str
    epochs: list = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    test_loss: float = math.nan
    test_acc: float = math.nan
    train_seconds: float = 0.0


def evaluate(model, x, y, batch_size=512):
    """(mean cross-entropy, accuracy) in eval mode."""
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(y), batch_size):
            logits = model(x[i:i + batch_size])
            loss += TF.cross_entropy(logits, y[i:i + batch_size], reduction="sum").item()
            correct += (logits.argmax(1) == y[i:i + batch_size]).sum().item()
    n = max(1, len(y))
    return loss / n, correct / n


def param_groups(model, weight_decay):
    """L2 weight decay on the conv and linear weights only (not on BatchNorm's scale and
    shift, nor on biases)."""
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train(model, data, label="cnnops", epochs=25, batch_size=64, lr=1e-2, weight_decay=1e-4, patience=6,
          max_shift=1, seed=0, out=None, live=None):
    """Trains ``model`` on data["train"] with Adam (L2 weight decay through its coupled
    ``weight_decay``) and a cosine learning-rate decay over ``epochs``, early stopping on
    data["val"] accuracy, and evaluates the best epoch's weights on data["test"]. Everything
    random (shuffling, shifts, dropout) follows ``seed``."""
    out = sys.stdout if out is None else out
    x, y = data["train"]
    xv, yv = data["val"]
    torch.manual_seed(seed)  # dropout draws from the global generator
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(param_groups(model, weight_decay), lr=lr)
    steps = math.ceil(len(y) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps)  # steadier validation curve
    hist = History(label)
    best_key, best_state, waited = None, None, 0
    t_start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        bar = ProgressBar(steps, f"{label:>6} epoch {epoch:>2}/{epochs} ", out, live=live)
        perm = torch.randperm(len(y), generator=gen)
        seen, loss_sum, correct = 0, 0.0, 0
        for step in range(steps):
            ids = perm[step * batch_size:(step + 1) * batch_size]
            xb, yb = random_shift(x[ids], max_shift, gen), y[ids]
            logits = model(xb)
            loss = TF.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            seen += len(ids)
            loss_sum += loss.item() * len(ids)
            correct += (logits.argmax(1) == yb).sum().item()
            bar.update(step + 1, f"  loss {loss_sum / seen:.4f}")
        val_loss, val_acc = evaluate(model, xv, yv)
        row = {"epoch": epoch, "train_loss": loss_sum / seen, "train_acc": correct / seen, "val_loss": val_loss,
               "val_acc": val_acc, "seconds": time.perf_counter() - t0}
        hist.epochs.append(row)
        key = (val_acc, -val_loss)  # best accuracy; the lower loss breaks a tie
        improved = best_key is None or key > best_key
        if improved:
            best_key, best_state, hist.best_epoch, waited = key, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            waited += 1
        bar.finish(f"  train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:5.1f}%  "
                   f"val loss {val_loss:.4f} acc {100 * val_acc:5.1f}%  {row['seconds']:.2f} s"
                   + ("  *" if improved else ""))
        if waited >= patience:
            hist.stopped_early = True
            print(f"{label:>6} early stop: no better validation accuracy for {patience} epochs; "
                  f"keeping epoch {hist.best_epoch}", file=out)
            break
    hist.train_seconds = time.perf_counter() - t_start
    model.load_state_dict(best_state)
    hist.test_loss, hist.test_acc = evaluate(model, *data["test"])
    return hist


# ---------------------------------------------------------------------------- plot

def plot_histories(histories, path):
    """Both runs' learning curves (loss and accuracy, train and validation) in one PNG."""
    matplotlib = require("matplotlib", "matplotlib", "--compare (the learning-curve plot)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"cnnops": "tab:blue", "torch": "tab:orange"}
    for k, h in enumerate(histories):
        ep = [r["epoch"] for r in h.epochs]
        # the curves usually coincide: the first run wide and pale, the next thin on top
        style = {"color": colors.get(h.label), "linewidth": 4.0 if k == 0 else 1.3, "alpha": 0.45 if k == 0 else 1.0}
        tag = f"{h.label} (test {100 * h.test_acc:.1f}%, {h.train_seconds:.1f} s)"
        ax_loss.plot(ep, [r["train_loss"] for r in h.epochs], "-", label=f"{tag} train", **style)
        ax_loss.plot(ep, [r["val_loss"] for r in h.epochs], "--", label=f"{h.label} validation", **style)
        ax_acc.plot(ep, [100 * r["train_acc"] for r in h.epochs], "-", label=f"{tag} train", **style)
        ax_acc.plot(ep, [100 * r["val_acc"] for r in h.epochs], "--", label=f"{h.label} validation", **style)
        ax_acc.axvline(h.best_epoch, linestyle=":", **dict(style, linewidth=style["linewidth"] / 2))
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss", yscale="log")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy (dotted: epoch kept by early stopping)")
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("digits 8x8: the same network and seed, cnnops.nn layers vs torch.nn layers")
    fig.tight_layout()
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------- CLI

def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m cnnops.demo",
        description="Train a small CNN built from cnnops layers on scikit-learn's bundled 8x8 digits "
                    "(needs scikit-learn; --compare also needs matplotlib).")
    p.add_argument("--epochs", type=int, default=25,
                   help="at most this many epochs; the learning rate decays to 0 over them (default 25)")
    p.add_argument("--patience", type=int, default=6,
                   help="early stopping: epochs without a better validation accuracy (default 6)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-2, help="Adam's initial learning rate (default 1e-2)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="L2 on conv and linear weights (default 1e-4)")
    p.add_argument("--width", type=int, default=32, help="channels of the first conv (default 32)")
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--shift", type=int, default=1, help="augmentation: random shifts up to this many pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--subset", type=int, help="use only this many images (stratified), for a quick run")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads for the run (default 1: a batch here is 64 images of 8x8, too "
                        "little work to share between threads; on a busy machine 2 threads measured 10x slower)")
    p.add_argument("--compare", action="store_true",
                   help="also train the same network with torch.nn layers from the same seed and plot both")
    p.add_argument("--out", default="demo_learning_curves.png", metavar="PATH",
                   help="where --compare writes its PNG (default demo_learning_curves.png)")
    p.add_argument("--live", choices=("auto", "on", "off"), default="auto",
                   help="redraw the progress bar during an epoch (default: when writing to a terminal)")
    return p


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("epochs", "patience", "batch_size", "width"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.dropout < 1:
        parser.error(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    return args


def run(args, out=None):
    """The demo for parsed arguments: returns the History of the cnnops run (and of the
    torch.nn run with --compare). Raises MissingDependency when scikit-learn (or, with
    --compare, matplotlib) is missing, before any training."""
    out = sys.stdout if out is None else out
    live = {"auto": None, "on": True, "off": False}[args.live]
    if args.compare:
        require("matplotlib", "matplotlib", "--compare (the learning-curve plot)")
    saved_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(args.threads)
        t0 = time.perf_counter()
        data = load_digits_split(args.seed, args.subset)
        x_train = data["train"][0]
        mean, std = x_train.mean().item(), x_train.std().item()
        sizes = ", ".join(f"{k} {len(v[1])}" for k, v in data.items())
        print(f"digits 8x8 (scikit-learn, bundled): {sizes} images; torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, cnnops {cnnops.__version__}", file=out)

        runs = [("cnnops", CNNOPS_LAYERS)] + ([("torch", TORCH_LAYERS)] if args.compare else [])
        models = {}
        for label, layers in runs:
            torch.manual_seed(args.seed)
            models[label] = build_model(layers, mean, std, args.width, args.dropout)
        if args.compare:
            a, b = models["cnnops"].state_dict(), models["torch"].state_dict()
            same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
            print(f"same initial weights for both networks: {'yes' if same else 'NO'}", file=out)
        print(f"network ({CNNOPS_LAYERS.name} layers):\n{models['cnnops']}", file=out)
        histories = []
        for label, _ in runs:
            h = train(models[label], data, label, args.epochs, args.batch_size, args.lr, args.weight_decay,
                      args.patience, args.shift, args.seed, out, live)
            histories.append(h)
            print(f"{label:>6}: test accuracy {100 * h.test_acc:.2f}% (loss {h.test_loss:.4f}) with the weights of "
                  f"epoch {h.best_epoch}; training {h.train_seconds:.1f} s for {len(h.epochs)} epochs", file=out)
        if args.compare:
            c, t = histories
            per_epoch = lambda h: h.train_seconds / len(h.epochs)  # noqa: E731
            print(f"cnnops vs torch.nn: test accuracy {100 * c.test_acc:.2f}% vs {100 * t.test_acc:.2f}%; "
                  f"time per epoch {per_epoch(c):.2f} s vs {per_epoch(t):.2f} s", file=out)
            print(f"learning curves written to {plot_histories(histories, args.out)}", file=out)
        print(f"total wall time {time.perf_counter() - t0:.1f} s", file=out)
        return histories
    finally:
        torch.set_num_threads(saved_threads)


def main(argv=None, out=None):
    """Runs the demo; returns 0, or 2 when an optional dependency is missing (argparse
    exits with 2 on a usage error)."""
    args = parse_args(argv)
    try:
        run(args, out)
    except MissingDependency as e:
        print(e, file=sys.stderr)
        return 2
    return 0
