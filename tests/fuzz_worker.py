"""The process test_reliability's fuzz test talks to: it reads one case per line (JSON) on
stdin, runs it through cnnops and through torch, and writes one verdict per line on
stdout. It lives in its own process so that a crash (a segfault, an abort) is caught by
the test and reported with the case that caused it, instead of killing pytest.

A case is {"op": name, "seed": int, "dtype": str, "args": {...}}; every op below turns
the args into the same call for cnnops and for torch.
"""
import json
import re
import sys
import traceback

import torch
import torch.nn.functional as TF

import cnnops

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _tensor(shape, dtype, gen, channels_last=False, nan=False):
    t = torch.randn(shape, dtype=dtype, generator=gen)
    if nan and t.numel():
        t.view(-1)[0] = float("nan")
    if channels_last and t.dim() == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    return t


def _torch_conv2d(x, w, b, stride, padding, dilation, groups, padding_mode):
    if padding_mode == "zeros" or isinstance(padding, str):
        return TF.conv2d(x, w, b, stride, padding, dilation, groups)
    ph, pw = padding
    return TF.conv2d(TF.pad(x, (pw, pw, ph, ph), mode=padding_mode), w, b, stride, 0, dilation, groups)


def conv2d(a, dtype, gen):
    x = _tensor(a["input"], dtype, gen, a["channels_last"], a["nan"])
    w = _tensor(a["weight"], dtype, gen)
    b = _tensor(a["bias"], dtype, gen) if a["bias"] is not None else None
    padding = a["padding"] if isinstance(a["padding"], str) else tuple(a["padding"])
    args = (x, w, b, tuple(a["stride"]), padding, tuple(a["dilation"]), a["groups"])
    mode = a["padding_mode"]
    return (lambda: cnnops.F.conv2d(*args, padding_mode=mode)), (lambda: _torch_conv2d(*args, mode)), (x, w, b)


def conv_transpose2d(a, dtype, gen):
    x = _tensor(a["input"], dtype, gen, a["channels_last"], a["nan"])
    w = _tensor(a["weight"], dtype, gen)
    b = _tensor(a["bias"], dtype, gen) if a["bias"] is not None else None
    args = (x, w, b, tuple(a["stride"]), tuple(a["padding"]), tuple(a["output_padding"]), a["groups"],
            tuple(a["dilation"]))
    return (lambda: cnnops.F.conv_transpose2d(*args)), (lambda: TF.conv_transpose2d(*args)), (x, w, b)


def depthwise_conv2d(a, dtype, gen):
    x = _tensor(a["input"], dtype, gen, a["channels_last"], a["nan"])
    w = _tensor(a["weight"], dtype, gen)
    b = _tensor(a["bias"], dtype, gen) if a["bias"] is not None else None
    padding = a["padding"] if isinstance(a["padding"], str) else tuple(a["padding"])
    args = (x, w, b, tuple(a["stride"]), padding, tuple(a["dilation"]))
    mode = a["padding_mode"]
    groups = x.shape[-3] if x.dim() >= 3 else 1
    return ((lambda: cnnops.F.depthwise_conv2d(*args, padding_mode=mode)),
            (lambda: _torch_conv2d(*args, groups, mode)), (x, w, b))


def depthwise_separable_conv2d(a, dtype, gen):
    _, depthwise, (x, w, b) = depthwise_conv2d(a, dtype, gen)
    pw = _tensor(a["pointwise_weight"], dtype, gen)
    pb = _tensor(a["pointwise_bias"], dtype, gen) if a["pointwise_bias"] is not None else None
    padding = a["padding"] if isinstance(a["padding"], str) else tuple(a["padding"])
    return ((lambda: cnnops.F.depthwise_separable_conv2d(x, w, pw, b, pb, tuple(a["stride"]), padding,
                                                         tuple(a["dilation"]), a["padding_mode"])),
            (lambda: TF.conv2d(depthwise(), pw, pb)), (x, w, b, pw, pb))


def spatially_separable_conv2d(a, dtype, gen):
    x = _tensor(a["input"], dtype, gen, a["channels_last"], a["nan"])
    vw, hw = _tensor(a["vertical_weight"], dtype, gen), _tensor(a["horizontal_weight"], dtype, gen)
    vb = _tensor(a["vertical_bias"], dtype, gen) if a["vertical_bias"] is not None else None
    hb = _tensor(a["horizontal_bias"], dtype, gen) if a["horizontal_bias"] is not None else None
    (sv, sh), (dv, dh), mode, padding = a["stride"], a["dilation"], a["padding_mode"], a["padding"]
    if isinstance(padding, str):
        rows = cols = padding
    else:
        padding = tuple(padding)
        rows, cols = (padding[0], 0), (0, padding[1])

    def theirs():
        mid = _torch_conv2d(x, vw, vb, (sv, 1), rows, (dv, 1), 1, mode)
        return _torch_conv2d(mid, hw, hb, (1, sh), cols, (1, dh), 1, mode)

    return ((lambda: cnnops.F.spatially_separable_conv2d(x, vw, hw, vb, hb, (sv, sh), padding, (dv, dh), mode)),
            theirs, (x, vw, vb, hw, hb))


def batch_norm(a, dtype, gen):
    x = _tensor(a["input"], dtype, gen, a["channels_last"], a["nan"])
    c = a["channels"]
    stats = [None, None] if a["no_stats"] else [torch.randn(c, dtype=dtype, generator=gen),
                                                 torch.rand(c, dtype=dtype, generator=gen) + 0.5]
    w = torch.rand(c, dtype=dtype, generator=gen) + 0.5 if a["affine"] else None
    b = torch.randn(c, dtype=dtype, generator=gen) if a["affine"] else None
    mine = [None if t is None else t.clone() for t in stats]
    act = a["activation"]
    torch_act = {None: lambda t: t, "relu": TF.relu, "relu6": TF.relu6}[act]

    def ours():
        return cnnops.F.batch_norm(x, *mine, w, b, a["training"], 0.1, a["eps"], act)

    def theirs():
        return torch_act(TF.batch_norm(x, *stats, w, b, a["training"], 0.1, a["eps"]))
    return ours, theirs, (x, w, b)


def max_pool2d(a, dtype, gen):
    x = _tensor(a["input"], dtype, gen, a["channels_last"], a["nan"])
    kw = dict(kernel_size=a["kernel"], stride=a["stride"], padding=a["padding"], dilation=a["dilation"],
              ceil_mode=a["ceil_mode"], return_indices=True)
    return (lambda: cnnops.F.max_pool2d(x, **kw)), (lambda: TF.max_pool2d(x, **kw)), (x,)


def avg_pool2d(a, dtype, gen):
    x = _tensor(a["input"], dtype, gen, a["channels_last"], a["nan"])
    kw = dict(kernel_size=a["kernel"], stride=a["stride"], padding=a["padding"], ceil_mode=a["ceil_mode"],
              count_include_pad=a["count_include_pad"], divisor_override=a["divisor_override"])
    return (lambda: cnnops.F.avg_pool2d(x, **kw)), (lambda: TF.avg_pool2d(x, **kw)), (x,)


def adaptive_avg_pool2d(a, dtype, gen):
    x = _tensor(a["input"], dtype, gen, a["channels_last"], a["nan"])
    size = a["output_size"]
    return (lambda: cnnops.F.adaptive_avg_pool2d(x, size)), (lambda: TF.adaptive_avg_pool2d(x, size)), (x,)


def adaptive_max_pool2d(a, dtype, gen):
    x = _tensor(a["input"], dtype, gen, a["channels_last"], a["nan"])
    size = a["output_size"]
    return ((lambda: cnnops.F.adaptive_max_pool2d(x, size, True)),
            (lambda: TF.adaptive_max_pool2d(x, size, True)), (x,))


def layer_norm(a, dtype, gen):
    x = _tensor(a["input"], dtype, gen, False, a["nan"])
    w = _tensor(a["weight"], dtype, gen) if a["weight"] is not None else None
    b = _tensor(a["weight"], dtype, gen) if a["weight"] is not None else None
    shape = a["normalized_shape"]
    return ((lambda: cnnops.F.layer_norm(x, shape, w, b, a["eps"])),
            (lambda: TF.layer_norm(x, shape, w, b, a["eps"])), (x, w, b))


def _layer_norm_condition(a, leaves):
    """The largest 1 / sqrt(var + eps) over the normalized groups: LayerNorm's input gradient
    is a difference of terms of that size, so its rounding (either side's) grows with it
    (e.g. two nearly equal values normalized together, whose exact gradient is 0)."""
    x = leaves[0].detach().double()
    dims = tuple(range(x.dim() - len(a["normalized_shape"]), x.dim()))
    rstd = 1.0 / torch.sqrt(x.var(dim=dims, unbiased=False) + a["eps"])
    rstd = rstd[torch.isfinite(rstd)]
    return max(1.0, rstd.max().item()) if rstd.numel() else 1.0


GRAD_CONDITION = {"layer_norm": _layer_norm_condition}

OPS = {f.__name__: f for f in (conv2d, conv_transpose2d, depthwise_conv2d, depthwise_separable_conv2d,
                               spatially_separable_conv2d, batch_norm, max_pool2d, avg_pool2d, adaptive_avg_pool2d,
                               adaptive_max_pool2d, layer_norm)}


def _outputs(result):
    return list(result) if isinstance(result, (tuple, list)) else [result]


def _close(got, want, scale=1.0):
    for g, w in zip(got, want):
        if g.shape != w.shape or g.dtype != w.dtype:
            return f"shape/dtype {tuple(g.shape)} {g.dtype} != {tuple(w.shape)} {w.dtype}"
        if not g.is_floating_point():
            continue  # indices may differ between equal maxima; values are compared
        tol = 1e-9 if g.dtype == torch.float64 else 1e-4
        try:
            torch.testing.assert_close(g, w, rtol=tol, atol=tol * scale, equal_nan=True)
        except AssertionError as e:
            return str(e)[:500]
    return None


def run_case(case):
    dtype = DTYPES[case["dtype"]]
    gen = torch.Generator().manual_seed(case["seed"])
    try:
        ours, theirs, leaves = OPS[case["op"]](case["args"], dtype, gen)
    except Exception as e:  # the case cannot even be built (e.g. a negative size)
        return {"verdict": "skip", "why": f"{type(e).__name__}: {e}"[:300]}
    try:
        want = _outputs(theirs())
    except Exception as e:
        torch_error = f"{type(e).__name__}: {e}"
        try:
            ours()
        except Exception as mine:
            msg = str(mine).strip()
            if not msg:
                return {"verdict": "bad", "why": f"cnnops raised {type(mine).__name__} with an empty message"}
            return {"verdict": "both-raised", "torch": torch_error[:200], "cnnops": msg[:300]}
        # torch's conv_transpose2d refuses an output with a zero-size side at batch size 1
        # ("Output size is too small", its batch-1 path) but returns the empty tensor at
        # batch 2; cnnops returns the empty tensor at every batch size.
        if (re.search(r"Calculated output size per channel: \((0 x \d+|\d+ x 0)\)", torch_error)
                and all(t.numel() == 0 for t in _outputs(ours()))):
            return {"verdict": "empty-where-torch-raises", "torch": torch_error[:200]}
        return {"verdict": "bad", "why": f"torch rejects ({torch_error[:300]}) but cnnops returned a result"}
    try:
        got = _outputs(ours())
    except Exception as e:
        # Stricter than torch is allowed, with a clear message (e.g. dilation 0, which torch's
        # conv_transpose2d accepts, or a 1-D input to batch_norm); anything else is a bug.
        if isinstance(e, (ValueError, TypeError, NotImplementedError)) and "cnnops" in str(e):
            return {"verdict": "stricter", "cnnops": str(e)[:300]}
        return {"verdict": "bad", "why": f"torch succeeds but cnnops raised {type(e).__name__}: {str(e)[:300]}"}
    problem = _close(got, want)
    if problem:
        return {"verdict": "bad", "why": f"result differs from torch: {problem}"}
    # Gradients, where the forward is differentiable and non-empty and the input finite: the
    # gradient at a NaN input element is not defined by torch either (its kernels multiply it
    # by zero or leave it out depending on the formula; cnnops may differ there).
    if (all(t is None or t.numel() for t in leaves) and got[0].is_floating_point() and got[0].numel()
            and not case["args"].get("nan")):
        for t in leaves:
            if t is not None:
                t.requires_grad_()
        grads = []
        for fn in (ours, theirs):
            out = _outputs(fn())[0]
            inputs = [t for t in leaves if t is not None]
            grads.append(torch.autograd.grad((out.nan_to_num() * 1.5).sum(), inputs, allow_unused=True))
        # one scale for all gradients: a gradient that cancels to ~0 (e.g. the weight of a
        # LayerNorm over one element) is compared against the others' magnitude (finite
        # values only: eps = 0 over one element gives NaN on both sides)
        finite = [w[torch.isfinite(w)] for w in grads[1] if w is not None]
        scale = max([w.abs().max().item() for w in finite if w.numel()] + [1.0])
        scale *= GRAD_CONDITION.get(case["op"], lambda a, leaves: 1.0)(case["args"], leaves)
        for g, w in zip(*grads):
            if (g is None) != (w is None):
                return {"verdict": "bad", "why": "a gradient is missing on one side"}
            if g is not None:
                problem = _close([g], [w], scale)
                if problem:
                    return {"verdict": "bad", "why": f"gradient differs from torch: {problem}"}
    return {"verdict": "match"}


def main():
    for line in sys.stdin:
        case = json.loads(line)
        try:
            reply = run_case(case)
        except Exception:
            reply = {"verdict": "bad", "why": "worker error: " + traceback.format_exc()[-800:]}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
