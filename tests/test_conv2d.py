"""conv2d: cnnops.functional.conv2d, the torch.ops.cnnops.conv2d* ops, Conv2dFunction and
cnnops.nn.Conv2d, checked against torch.nn.functional.conv2d / torch.nn.Conv2d on the same
inputs (outputs, gradients, dtypes, strides), plus gradcheck, opcheck, torch.compile,
autocast and the error messages of bad input."""
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given
from hypothesis import strategies as st
from torch._subclasses.fake_tensor import FakeTensorMode

import cnnops
from conftest import (CUDA_AVAILABLE, DEVICE_DTYPES, assert_close, device_dtype_params, significant_strides,
                      leaf, make_input, make_weight, rand, torch_rule_strides)

ops = torch.ops.cnnops
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")
MODES = ("zeros", "reflect", "replicate", "circular")
CL = torch.channels_last


# ---------------------------------------------------------------- reference and helpers

def torch_conv2d(x, w, b, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """torch's own conv2d for every padding_mode: nn.Conv2d._conv_forward, i.e. F.pad with
    the module's padding followed by F.conv2d (or F.conv2d directly for 'zeros'). The module
    is built on the meta device only to get torch's argument handling (incl. 'same')."""
    m = torch.nn.Conv2d(x.shape[-3], w.shape[0], tuple(w.shape[2:]), stride, padding, dilation, groups,
                        bias=b is not None, padding_mode=padding_mode, device="meta")
    return m._conv_forward(x, w, b)


def torch_layout_strides(x, w, b, stride, padding, dilation, groups):
    """The strides torch's convolution rule gives this call (channels_last when the input or
    the weight is channels_last), from torch's zeros-mode conv, which has the same output shape.

    For 'reflect'/'replicate' nn.Conv2d gives the same strides; for 'circular' torch's F.pad
    returns a contiguous tensor even for a channels_last input, so nn.Conv2d loses channels_last
    there: cnnops (padding inside the kernel) keeps torch's convolution rule instead. Run on
    the CPU: torch's float64 CUDA convolution returns NCHW whatever the inputs."""
    return torch_rule_strides(lambda *t: TF.conv2d(*t, stride, padding, dilation, groups), x, w, b)


def grads(out, inputs, grad_out):
    inputs = [t for t in inputs if t is not None]
    return torch.autograd.grad(out, inputs, grad_out)


def compare_with_torch(x, w, b, stride, padding, dilation, groups, mode, check_strides=True, msg=""):
    """Forward and all gradients of cnnops.F.conv2d against torch; returns cnnops' output."""
    dtype, device = x.dtype, x.device
    ref = torch_conv2d(x, w, b, stride, padding, dilation, groups, mode)
    out = cnnops.F.conv2d(x, w, b, stride, padding, dilation, groups, mode)
    assert out.dtype == ref.dtype == dtype, msg
    assert out.device == x.device, msg
    assert_close(out, ref, dtype, device, msg=f"{msg} forward")
    if check_strides and out.numel() > 0:  # an empty tensor's strides carry no layout
        expected = torch_layout_strides(x.detach(), w.detach(), None if b is None else b.detach(),
                                        stride, padding, dilation, groups)
        assert significant_strides(out) == expected, (
            f"{msg}: out.stride() {out.stride()}, torch's rule gives {expected}")
        # torch's non-zeros modes pad a copy first; on CUDA (seen on an H100, torch 2.11) that
        # copy of a channels_last input comes back contiguous, so nn.Conv2d drops the layout
        # there (and for circular everywhere). cnnops keeps the convolution rule checked above.
        # On CUDA torch's float64 convolution is NCHW whatever the inputs: the rule above holds.
        if x.device.type == "cpu" and mode in ("zeros", "reflect", "replicate"):
            assert significant_strides(out) == significant_strides(ref), f"{msg}: {out.stride()} vs {ref.stride()}"
    grad_out = rand(*ref.shape, dtype=dtype, device=device)
    g_ref = grads(ref, (x, w, b), grad_out)
    g_out = grads(out, (x, w, b), grad_out)
    for name, a, e in zip(("input", "weight", "bias"), g_out, g_ref):
        assert a.dtype == e.dtype, f"{msg} grad {name}"
        assert_close(a, e, dtype, device, msg=f"{msg} grad_{name}")
    return out


# ---------------------------------------------------------------- 1. parametrized correctness

class Case:
    def __init__(self, name, n, c, oc, h, w, kernel, stride=1, padding=0, dilation=1, groups=1, bias=True):
        self.name, self.n, self.c, self.oc, self.h, self.w = name, n, c, oc, h, w
        self.kernel, self.stride, self.padding, self.dilation = kernel, stride, padding, dilation
        self.groups, self.bias = groups, bias

    def __repr__(self):
        return self.name


# Every case is legal for every padding_mode (reflect padding < input size).
CASES = [
    Case("basic", 2, 4, 6, 7, 8, (3, 3), padding=1),
    Case("k3x5_stride2x1_batch1_nobias", 1, 4, 4, 9, 7, (3, 5), stride=(2, 1), padding=(1, 2), bias=False),
    Case("depthwise_dilated", 3, 6, 6, 10, 11, (3, 3), padding=2, dilation=2, groups=6),
    Case("groups2_k2x3_mixed", 2, 4, 8, 11, 9, (2, 3), stride=(1, 2), padding=(0, 1), dilation=(2, 1), groups=2),
    Case("batch0", 0, 3, 5, 6, 6, (3, 3), padding=1),
    Case("pointwise_odd", 2, 3, 2, 5, 5, (1, 1)),
    Case("k4_stride3_groups4", 1, 8, 4, 12, 12, (4, 4), stride=3, padding=3, groups=4, bias=False),
    Case("same_even_kernel", 2, 2, 4, 5, 3, (4, 2), padding="same"),
    Case("height1", 2, 3, 4, 1, 6, (1, 3), padding=(0, 1)),
]
LAYOUTS = ("contiguous", "channels_last_input", "channels_last_weight", "sliced_input", "transposed_input")


def _correctness_params():
    # Not the full product: the padding mode rotates with (case, layout), so every mode meets
    # every layout and every case on each (device, dtype).
    params = []
    for i, case in enumerate(CASES):
        for j, layout in enumerate(LAYOUTS):
            mode = MODES[(i + j) % len(MODES)]
            params.append(pytest.param(case, layout, mode, id=f"{case.name}-{layout}-{mode}"))
    return params


@pytest.mark.parametrize("case,layout,mode", _correctness_params())
@pytest.mark.parametrize("device,dtype", device_dtype_params())
def test_conv2d_matches_torch(device, dtype, case, layout, mode):
    c = case
    x = make_input((c.n, c.c, c.h, c.w), layout, dtype, device)
    w = make_weight((c.oc, c.c // c.groups, *c.kernel), layout, dtype, device)
    b = leaf(rand(c.oc, dtype=dtype, device=device)) if c.bias else None
    out = compare_with_torch(x, w, b, c.stride, c.padding, c.dilation, c.groups, mode, msg=f"{c} {layout} {mode}")
    # channels_last in, channels_last out (unless the weight's layout is ambiguous, e.g. depthwise)
    cl_in = layout == "channels_last_input" or (layout == "channels_last_weight" and not w.is_contiguous())
    if cl_in and out.numel() > 0 and out.shape[1] > 1:
        assert out.is_contiguous(memory_format=CL)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DEVICE_DTYPES["cpu"])
def test_conv2d_many_tiles(dtype, mode):
    """Outputs larger than one im2col tile (tile edges fall inside rows) and several
    images per weight-gradient chunk."""
    x = make_input((3, 8, 50, 47), "contiguous", dtype)
    w = make_weight((6, 4, 3, 3), "contiguous", dtype)
    b = leaf(rand(6, dtype=dtype))
    compare_with_torch(x, w, b, 1, 1, 1, 2, mode, msg=f"{dtype} {mode}")


GRAD_OUTPUT_LAYOUTS = ("like_output", "contiguous", "channels_last")


def _grad_stride_params(which):
    params = []
    for layout in LAYOUTS:
        for go_layout in GRAD_OUTPUT_LAYOUTS:
            params.append(pytest.param(layout, go_layout, id=f"{layout}-grad_output_{go_layout}"))
    return params


def _grads_both(layout, go_layout, index):
    """(cnnops grad, torch grad) of input (index 0) or weight (index 1), zeros padding."""
    x = make_input((2, 4, 7, 8), layout)
    w = make_weight((6, 4, 3, 3), layout)
    out_ref = TF.conv2d(x, w, None, 1, 1)
    out = cnnops.F.conv2d(x, w, None, 1, 1)
    go = rand(*out.shape)
    if go_layout == "like_output":
        go = torch.empty_like(out_ref).copy_(go)
    elif go_layout == "channels_last":
        go = go.contiguous(memory_format=CL)
    g = torch.autograd.grad(out, (x, w), go)[index]
    g_ref = torch.autograd.grad(out_ref, (x, w), go)[index]
    assert_close(g, g_ref)
    return g, g_ref


@pytest.mark.parametrize("layout,go_layout", _grad_stride_params("input"))
def test_grad_input_strides_match_torch(layout, go_layout):
    gi, gi_ref = _grads_both(layout, go_layout, 0)
    assert significant_strides(gi) == significant_strides(gi_ref), f"{gi.stride()} vs torch {gi_ref.stride()}"


@pytest.mark.parametrize("layout,go_layout", _grad_stride_params("weight"))
def test_grad_weight_strides_match_torch(layout, go_layout):
    gw, gw_ref = _grads_both(layout, go_layout, 1)
    assert significant_strides(gw) == significant_strides(gw_ref), f"{gw.stride()} vs torch {gw_ref.stride()}"


# ---------------------------------------------------------------- 2. hypothesis configurations

@st.composite
def conv_configs(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    mode = draw(st.sampled_from(MODES))
    padding_kind = draw(st.sampled_from(["int", "pair", "same", "valid"]))
    if padding_kind == "same":
        stride = (1, 1)
        th, tw = dh * (kh - 1), dw * (kw - 1)
        pads = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        padding = "same"
    else:
        stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        if padding_kind == "valid":
            padding, pads = "valid", (0, 0, 0, 0)
        elif padding_kind == "int":
            p = draw(st.integers(0, 3))
            padding, pads = p, (p, p, p, p)
        else:
            ph, pw = draw(st.integers(0, 3)), draw(st.integers(0, 3))
            padding, pads = (ph, pw), (ph, ph, pw, pw)
    if draw(st.booleans()):  # sometimes the int/pair form of the same stride
        stride = stride[0] if stride[0] == stride[1] else stride

    def min_size(pad_a, pad_b, dilated_kernel):
        need = max(1, dilated_kernel - pad_a - pad_b)
        if mode == "reflect":
            need = max(need, max(pad_a, pad_b) + 1)
        elif mode == "circular":
            need = max(need, pad_a, pad_b)
        return need

    min_h = min_size(pads[0], pads[1], dh * (kh - 1) + 1)
    min_w = min_size(pads[2], pads[3], dw * (kw - 1) + 1)
    h = draw(st.integers(min_h, min_h + 6))
    w = draw(st.integers(min_w, min_w + 6))
    groups = draw(st.sampled_from([1, 2, 3]))
    c = groups * draw(st.integers(1, 3))
    oc = groups * draw(st.integers(1, 3))
    return dict(
        n=draw(st.integers(0, 2)), c=c, oc=oc, h=h, w=w, kernel=(kh, kw), stride=stride, padding=padding,
        dilation=(dh, dw) if dh != dw else dh, groups=groups, mode=mode, bias=draw(st.booleans()),
        layout=draw(st.sampled_from(LAYOUTS)))


@given(cfg=conv_configs())
def test_conv2d_hypothesis(cfg):
    x = make_input((cfg["n"], cfg["c"], cfg["h"], cfg["w"]), cfg["layout"])
    w = make_weight((cfg["oc"], cfg["c"] // cfg["groups"], *cfg["kernel"]), cfg["layout"])
    b = leaf(rand(cfg["oc"])) if cfg["bias"] else None
    compare_with_torch(x, w, b, cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"], cfg["mode"],
                       msg=str(cfg))


@given(cfg=conv_configs())
def test_grad_input_gather_matches_torch(cfg):
    """The CUDA grad_input's gather formulation (conv2d_grad_input_at, padded_preimages in
    csrc/common/conv_index.h), run on the CPU through _conv2d_grad_input_gather."""
    x = make_input((cfg["n"], cfg["c"], cfg["h"], cfg["w"]), cfg["layout"])
    w = make_weight((cfg["oc"], cfg["c"] // cfg["groups"], *cfg["kernel"]), cfg["layout"])
    ref = torch.nn.Conv2d(cfg["c"], cfg["oc"], cfg["kernel"], cfg["stride"], cfg["padding"], cfg["dilation"],
                          cfg["groups"], bias=False, padding_mode=cfg["mode"]).double()
    ref.weight.data.copy_(w.detach())
    x_ref = x.detach().clone().requires_grad_(True)
    out = ref(x_ref)
    go = rand(*out.shape)
    (gi_ref,) = torch.autograd.grad(out, x_ref, go)
    stride, pads, dilation = cnnops.ops.conv2d.normalize_conv2d_args("test", w.shape, cfg["stride"], cfg["padding"],
                                                                     cfg["dilation"])
    gi = ops._conv2d_grad_input_gather(go, w.detach(), list(x.shape), stride, pads, dilation, cfg["groups"],
                                       cfg["mode"], False)
    assert_close(gi, gi_ref, msg=str(cfg))


# ---------------------------------------------------------------- 3. padding forms, unbatched input

@pytest.mark.parametrize("padding", [0, 2, (1, 3), [2, 0], (1,), "valid", "same"])
@pytest.mark.parametrize("mode", MODES)
def test_padding_forms(padding, mode):
    if padding == (1,) and mode != "zeros":
        pytest.skip("torch.nn.Conv2d itself fails on padding=(1,) with a non-zeros padding_mode")
    x = make_input((2, 3, 8, 7), "contiguous")
    w = make_weight((4, 3, 3, 4), "contiguous")
    b = leaf(rand(4))
    compare_with_torch(x, w, b, 1, padding, 1, 1, mode, msg=f"padding={padding!r} {mode}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kernel,dilation", [
    ((2, 2), 1), ((4, 3), (2, 1)), ((3, 4), (1, 3)), ((1, 2), 2), ((2, 5), (3, 2)), ((3, 3), 2)])
def test_padding_same(kernel, dilation, mode):
    """'same' pads unevenly (the extra row/column at the bottom/right) for even dilated extents."""
    x = make_input((2, 4, 9, 10), "contiguous")
    w = make_weight((6, 2, *kernel), "contiguous")
    b = leaf(rand(6))
    out = compare_with_torch(x, w, b, 1, "same", dilation, 2, mode, msg=f"{kernel} {dilation} {mode}")
    assert out.shape == (2, 6, 9, 10)


@pytest.mark.parametrize("mode,padding", [("reflect", (4, 2)), ("circular", (5, 3)), ("replicate", (6, 7))])
def test_padding_at_the_limit(mode, padding):
    """The largest legal padding: reflect size - 1, circular == size; replicate is unbounded."""
    x = make_input((1, 2, 5, 3), "contiguous")
    w = make_weight((3, 2, 2, 3), "contiguous")
    compare_with_torch(x, w, leaf(rand(3)), 1, padding, 1, 1, mode, msg=f"{mode} {padding}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding", [1, "same", (0, 2)])
def test_unbatched_input(mode, padding):
    x = leaf(rand(4, 7, 6))
    w = make_weight((6, 2, 3, 3), "contiguous")
    b = leaf(rand(6))
    ref = torch_conv2d(x, w, b, 1, padding, 1, 2, mode)
    out = cnnops.F.conv2d(x, w, b, 1, padding, 1, 2, mode)
    assert out.dim() == 3 and out.shape == ref.shape
    assert_close(out, ref)
    go = rand(*ref.shape)
    for a, e in zip(grads(out, (x, w, b), go), grads(ref, (x, w, b), go)):
        assert_close(a, e)
    # the module too
    m = cnnops.nn.Conv2d(4, 6, 3, padding=padding, groups=2, padding_mode=mode, dtype=torch.float64)
    r = torch.nn.Conv2d(4, 6, 3, padding=padding, groups=2, padding_mode=mode, dtype=torch.float64)
    r.load_state_dict(m.state_dict())
    assert_close(m(x), r(x))


# ---------------------------------------------------------------- 4. gradcheck / gradgradcheck

@pytest.mark.parametrize("mode", MODES)
def test_gradcheck(mode, single_thread):
    x = leaf(rand(2, 4, 5, 6))
    w = leaf(rand(4, 2, 3, 2))
    b = leaf(rand(4))

    def f(x, w, b):
        return cnnops.F.conv2d(x, w, b, (2, 1), (2, 1), (1, 2), 2, mode)

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_same_padding_no_bias(mode, single_thread):
    x = leaf(rand(1, 2, 5, 4))
    w = leaf(rand(3, 2, 2, 3))

    def f(x, w):
        return cnnops.F.conv2d(x, w, None, 1, "same", (2, 1), 1, mode)

    assert torch.autograd.gradcheck(f, (x, w))
    assert torch.autograd.gradgradcheck(f, (x, w))


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_gradcheck_conv2d_function(mode, single_thread):
    x = leaf(rand(2, 2, 5, 5))
    w = leaf(rand(3, 2, 3, 3))
    b = leaf(rand(3))

    def f(x, w, b):
        return cnnops.functional.Conv2dFunction.apply(x, w, b, 1, 1, 1, 1, mode)

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


# ---------------------------------------------------------------- 5. opcheck

OPCHECK_CONFIGS = {
    # name: (input (shape, channels_last), weight (shape, channels_last), bias, stride, padding, dilation, groups, mode)
    "reflect_groups2_asym": (((2, 4, 7, 6), False), ((6, 2, 3, 2), False), True, [1, 2], [1, 0, 2, 1], [1, 1], 2,
                             "reflect"),
    "zeros_channels_last_input": (((2, 3, 6, 7), True), ((4, 3, 3, 3), False), False, [2, 1], [1, 1, 1, 1], [2, 1],
                                  1, "zeros"),
    "circular_depthwise_cl_weight": (((1, 4, 5, 5), False), ((4, 1, 2, 3), True), True, [1, 1], [2, 1, 0, 3],
                                     [1, 1], 4, "circular"),
}


def _opcheck_inputs(name):
    (xs, xcl), (ws, wcl), has_bias, stride, padding, dilation, groups, mode = OPCHECK_CONFIGS[name]
    x = make_input(xs, "channels_last_input" if xcl else "contiguous")
    w = make_weight(ws, "channels_last_weight" if wcl else "contiguous")
    b = leaf(rand(ws[0])) if has_bias else None
    return x, w, b, (stride, padding, dilation, groups, mode)


def _cl(x, w):
    """The channels_last flag the autograd formula passes to the gradient ops."""
    return cnnops.ops._common.conv_memory_format(x, w) == CL


def _assert_opcheck(result):
    assert result and all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("name", list(OPCHECK_CONFIGS))
@pytest.mark.parametrize("op", ["conv2d", "conv2d_grad_input", "conv2d_grad_weight", "conv2d_grad_bias"])
def test_opcheck(op, name, single_thread):
    x, w, b, args = _opcheck_inputs(name)
    out = ops.conv2d(x.detach(), w.detach(), None if b is None else b.detach(), *args)
    go = leaf(rand(*out.shape))
    if op == "conv2d":
        call = (ops.conv2d, (x, w, b, *args))
    elif op == "conv2d_grad_input":
        call = (ops.conv2d_grad_input, (go, w, list(x.shape), *args, _cl(x, w)))
    elif op == "conv2d_grad_weight":
        call = (ops.conv2d_grad_weight, (go, x, list(w.shape), *args, _cl(x, w)))
    else:
        call = (ops.conv2d_grad_bias, (go,))
    _assert_opcheck(torch.library.opcheck(*call))


def test_ops_match_torch_gradients():
    """The backward ops themselves, called directly, against torch's gradients."""
    x, w, b, args = _opcheck_inputs("reflect_groups2_asym")
    stride, padding, dilation, groups, mode = args
    # torch: reflect pad with (left, right, top, bottom) = (2, 1, 1, 0)
    ref = TF.conv2d(TF.pad(x, (padding[2], padding[3], padding[0], padding[1]), mode=mode), w, b, stride, 0,
                    dilation, groups)
    go = rand(*ref.shape)
    gi, gw, gb = torch.autograd.grad(ref, (x, w, b), go)
    assert_close(ops.conv2d(x, w, b, *args), ref)
    assert_close(ops.conv2d_grad_input(go, w.detach(), list(x.shape), *args, _cl(x, w)), gi)
    assert_close(ops.conv2d_grad_weight(go, x.detach(), list(w.shape), *args, _cl(x, w)), gw)
    assert_close(ops.conv2d_grad_bias(go), gb)


# ---------------------------------------------------------------- 6. torch.compile

COMPILE_CONFIGS = {
    "same_even_kernel": (dict(in_channels=4, out_channels=6, kernel_size=(3, 4), padding="same"), (2, 4, 9, 9), None),
    "reflect_stride2": (dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=2,
                             padding_mode="reflect"), (2, 4, 9, 8), None),
    "circular_groups_channels_last": (dict(in_channels=4, out_channels=8, kernel_size=3, padding=1, groups=4,
                                           padding_mode="circular"), (2, 4, 7, 7), CL),
    "replicate_dilated_unbatched": (dict(in_channels=3, out_channels=5, kernel_size=3, padding=(2, 1),
                                         dilation=2, padding_mode="replicate"), (3, 8, 8), None),
    "valid_nobias": (dict(in_channels=3, out_channels=4, kernel_size=(2, 3), padding="valid", bias=False),
                     (1, 3, 6, 7), None),
}


def _compile_and_compare(kwargs, shape, memory_format, backend, dtype=torch.float64):
    m = cnnops.nn.Conv2d(**kwargs, dtype=dtype)
    r = torch.nn.Conv2d(**kwargs, dtype=dtype)
    r.load_state_dict(m.state_dict())
    x = rand(*shape, dtype=dtype)
    if memory_format is not None:
        x = x.contiguous(memory_format=memory_format)
    x = leaf(x)
    compiled = torch.compile(m, backend=backend, fullgraph=True)
    y = compiled(x)
    y_ref = r(x)
    assert_close(y, y_ref)
    go = rand(*y.shape, dtype=dtype)
    params = [x, m.weight] + ([m.bias] if m.bias is not None else [])
    params_ref = [x, r.weight] + ([r.bias] if r.bias is not None else [])
    for a, e in zip(torch.autograd.grad(y, params, go), torch.autograd.grad(y_ref, params_ref, go)):
        assert_close(a, e)
    # a second call with new values reuses the graph and is still right
    x2 = leaf(rand(*shape, dtype=dtype))
    assert_close(compiled(x2), r(x2))


@pytest.mark.parametrize("name", list(COMPILE_CONFIGS))
def test_compile_aot_eager(name, dynamo_reset):
    kwargs, shape, memory_format = COMPILE_CONFIGS[name]
    _compile_and_compare(kwargs, shape, memory_format, "aot_eager")


def test_compile_conv2d_function_aot_eager(dynamo_reset):
    x = leaf(rand(2, 3, 6, 6))
    w = leaf(rand(4, 3, 3, 3))
    b = leaf(rand(4))

    def f(x, w, b):
        return cnnops.functional.Conv2dFunction.apply(x, w, b, 1, "same", 1, 1, "reflect")

    y = torch.compile(f, backend="aot_eager", fullgraph=True)(x, w, b)
    ref = torch_conv2d(x, w, b, 1, "same", 1, 1, "reflect")
    assert_close(y, ref)
    go = rand(*y.shape)
    for a, e in zip(grads(y, (x, w, b), go), grads(ref, (x, w, b), go)):
        assert_close(a, e)


@pytest.mark.slow
def test_compile_inductor(dynamo_reset, tmp_path, monkeypatch):
    # A private cache: inductor's on-disk cache does not key on custom-op schemas, so code
    # compiled against an older build of the extension could be replayed.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    kwargs = dict(in_channels=4, out_channels=8, kernel_size=3, padding=1, padding_mode="reflect")
    _compile_and_compare(kwargs, (2, 4, 9, 9), None, "inductor", dtype=torch.float32)


# ---------------------------------------------------------------- 7. autocast

def test_autocast_bfloat16():
    x, w, b = rand(2, 4, 8, 8, dtype=torch.float32), rand(6, 4, 3, 3, dtype=torch.float32), rand(6, dtype=torch.float32)
    full = cnnops.F.conv2d(x, w, b, 1, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cnnops.F.conv2d(x, w, b, 1, 1)
        ref = TF.conv2d(x, w, b, 1, 1)
    assert ref.dtype == torch.bfloat16
    assert out.dtype == torch.bfloat16
    assert_close(out, ref)
    assert_close(out.float(), full, dtype=torch.bfloat16)
    # the same numbers as casting the inputs by hand
    assert_close(out, cnnops.F.conv2d(x.bfloat16(), w.bfloat16(), b.bfloat16(), 1, 1))


def test_autocast_mixed_input_and_module_backward():
    m = cnnops.nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect")
    r = torch.nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect")
    r.load_state_dict(m.state_dict())
    x = leaf(rand(2, 4, 8, 8, dtype=torch.bfloat16))  # bfloat16 input, float32 parameters
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
        ref = r(x)
    assert out.dtype == ref.dtype == torch.bfloat16
    assert_close(out, ref)
    go = rand(*out.shape, dtype=torch.bfloat16)
    g = torch.autograd.grad(out, (x, m.weight, m.bias), go)
    g_ref = torch.autograd.grad(ref, (x, r.weight, r.bias), go)
    for a, e in zip(g, g_ref):
        assert a.dtype == e.dtype  # float32 for the parameters, bfloat16 for x
        assert_close(a, e, dtype=torch.bfloat16)
    assert g[1].dtype == torch.float32


def test_autocast_leaves_float64_alone():
    x, w = rand(2, 4, 8, 8), rand(6, 4, 3, 3)
    plain = cnnops.F.conv2d(x, w, None, 1, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cnnops.F.conv2d(x, w, None, 1, 1)
        ref = TF.conv2d(x, w, None, 1, 1)
    assert ref.dtype == out.dtype == torch.float64
    assert torch.equal(out, plain)


# ---------------------------------------------------------------- 8. module and Conv2dFunction

MODULE_KWARGS = [
    dict(in_channels=4, out_channels=6, kernel_size=3),
    dict(in_channels=4, out_channels=8, kernel_size=(3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2),
         groups=2, bias=False, padding_mode="reflect"),
    dict(in_channels=6, out_channels=6, kernel_size=2, padding="same", groups=6, padding_mode="circular"),
    dict(in_channels=3, out_channels=5, kernel_size=3, padding="valid", padding_mode="replicate"),
]


@pytest.mark.parametrize("kwargs", MODULE_KWARGS, ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()))
def test_module_matches_torch_module(kwargs):
    assert issubclass(cnnops.nn.Conv2d, torch.nn.Conv2d)
    m = cnnops.nn.Conv2d(**kwargs, dtype=torch.float64)
    assert isinstance(m, torch.nn.Conv2d)
    r = torch.nn.Conv2d(**kwargs, dtype=torch.float64)
    assert repr(m) == repr(r)
    assert m.extra_repr() == r.extra_repr()
    assert list(m.state_dict()) == list(r.state_dict())
    # cnnops -> torch
    r.load_state_dict(m.state_dict())
    x = leaf(rand(2, kwargs["in_channels"], 9, 8))
    y, y_ref = m(x), r(x)
    assert_close(y, y_ref)
    go = rand(*y.shape)
    params = [p for p in (m.weight, m.bias) if p is not None]
    params_ref = [p for p in (r.weight, r.bias) if p is not None]
    for a, e in zip(torch.autograd.grad(y, [x, *params], go), torch.autograd.grad(y_ref, [x, *params_ref], go)):
        assert_close(a, e)
    # torch -> cnnops, after changing torch's parameters
    with torch.no_grad():
        for p in r.parameters():
            p.add_(0.5)
    m2 = cnnops.nn.Conv2d(**kwargs, dtype=torch.float64)
    m2.load_state_dict(r.state_dict())
    assert_close(m2(x), r(x))
    assert not torch.allclose(m2(x), m(x))
    # reset_parameters is torch's
    m2.reset_parameters()
    assert m2.weight.shape == r.weight.shape


@pytest.mark.parametrize("padding,mode", [(1, "zeros"), ((2, 1), "reflect"), ("same", "circular"),
                                          ("valid", "replicate")])
def test_conv2d_function_apply(padding, mode):
    x = make_input((2, 4, 7, 8), "contiguous")
    w = make_weight((6, 2, 3, 2), "contiguous")
    b = leaf(rand(6))
    args = ((1, 1) if padding == "same" else (2, 1), padding, (1, 2), 2, mode)
    out = cnnops.functional.Conv2dFunction.apply(x, w, b, *args)
    ref = torch_conv2d(x, w, b, *args)
    assert_close(out, ref)
    assert_close(out, cnnops.F.conv2d(x, w, b, *args))
    go = rand(*out.shape)
    for a, e in zip(grads(out, (x, w, b), go), grads(ref, (x, w, b), go)):
        assert_close(a, e)
    # only the gradients asked for
    out2 = cnnops.functional.Conv2dFunction.apply(x.detach(), w, None, *args)
    ref2 = torch_conv2d(x.detach(), w, None, *args)
    (gw,) = torch.autograd.grad(out2, w, go)
    assert_close(gw, grads(ref2, (w,), go)[0])


# ---------------------------------------------------------------- 9. bad input

def _x(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


F = cnnops.F
# (id, call, exception type, message regex, reaches the op (so checked under torch.compile))
ERROR_CASES = [
    ("input_2d", lambda: F.conv2d(_x(4, 8), _x(6, 4, 3, 3)), ValueError,
     r"cnnops\.conv2d: expected input to be 3-D \(C, H, W\) or 4-D \(N, C, H, W\), got shape \(4, 8\)", False),
    ("input_5d", lambda: F.conv2d(_x(1, 2, 4, 8, 8), _x(6, 4, 3, 3)), ValueError,
     r"expected input to be 3-D .* or 4-D .*, got shape \(1, 2, 4, 8, 8\)", False),
    ("weight_3d", lambda: F.conv2d(_x(2, 4, 8, 8), _x(6, 4, 3)), ValueError,
     r"expected weight to be a 4-D tensor \(out_channels, in_channels / groups, kH, kW\), got shape \(6, 4, 3\)",
     False),
    ("op_weight_5d", lambda: ops.conv2d(_x(2, 4, 8, 8), _x(6, 4, 3, 3, 1), None, [1, 1], [0, 0, 0, 0], [1, 1], 1,
                                        "zeros"), ValueError,
     r"expected weight to be a 4-D tensor .*got shape \(6, 4, 3, 3, 1\)", True),
    ("in_channels", lambda: F.conv2d(_x(2, 4, 8, 8), _x(6, 3, 3, 3)), ValueError,
     r"expected input to have weight\.size\(1\) \* groups = 3 \* 1 = 3 channels, got 4 \(input shape \(2, 4, 8, 8\)\)",
     True),
    ("in_channels_groups", lambda: F.conv2d(_x(2, 4, 8, 8), _x(6, 4, 3, 3), groups=2), ValueError,
     r"expected input to have weight\.size\(1\) \* groups = 4 \* 2 = 8 channels, got 4", True),
    ("out_channels_groups", lambda: F.conv2d(_x(2, 4, 8, 8), _x(5, 2, 3, 3), groups=2), ValueError,
     r"expected out_channels \(weight\.size\(0\) = 5\) to be divisible by groups = 2", True),
    ("groups_0", lambda: F.conv2d(_x(2, 4, 8, 8), _x(6, 4, 3, 3), groups=0), ValueError,
     r"expected groups >= 1, got 0", True),
    ("dtype_weight", lambda: F.conv2d(_x(2, 4, 8, 8), _x(6, 4, 3, 3, dtype=torch.float64)), TypeError,
     r"expected weight to have the same dtype as input \(float32\), got float64", True),
    ("dtype_bias", lambda: F.conv2d(_x(2, 4, 8, 8), _x(6, 4, 3, 3), _x(6, dtype=torch.bfloat16)), TypeError,
     r"expected bias to have the same dtype as input \(float32\), got bfloat16", True),
    ("bias_length", lambda: F.conv2d(_x(2, 4, 8, 8), _x(6, 4, 3, 3), _x(5)), ValueError,
     r"expected bias to have shape \(6,\) \(out_channels\), got shape \(5,\)", True),
    ("bias_2d", lambda: F.conv2d(_x(2, 4, 8, 8), _x(6, 4, 3, 3), _x(6, 1)), ValueError,
     r"expected bias to have shape \(6,\) \(out_channels\), got shape \(6, 1\)", True),
    ("stride_0", lambda: F.conv2d(_x(2, 4, 8, 8), _x(6, 4, 3, 3), stride=0), ValueError,
     r"expected stride to be two integers >= 1, got \(0, 0\)", True),
    ("stride_negative", lambda: F.conv2d(_x(2, 4, 8, 8), _x(6, 4, 3, 3), stride=(1, -2)), ValueError,
     r"expected stride to be two integers >= 1, got \(1, -2\)", True),
    ("dilation_0", lambda: F.conv2d(_x(2, 4, 8, 8), _x(6, 4, 3, 3), dilation=(1, 0)), ValueError,
     r"expected dilation to be two integers >= 1, got \(1, 0\)", True),
    ("padding_negative", lambda: F.conv2d(_x(2, 4, 8, 8), _x(6, 4, 3, 3), padding=(-1, 0)), ValueError,
     r"expected padding to be four integers >= 0 \(top, bottom, left, right\), got \(-1, -1, 0, 0\)", True),
    ("padding_three", lambda: F.conv2d(_x(2, 4, 8, 8), _x(6, 4, 3, 3), padding=(1, 1, 1)), ValueError,
     r"expected padding to be an int or a pair of ints, got \(1, 1, 1\)", False),
    ("stride_float", lambda: F.conv2d(_x(2, 4, 8, 8), _x(6, 4, 3, 3), stride=1.5), TypeError,
     r"expected stride to be an int or a pair of ints, got 1\.5", False),
    ("kernel_too_large", lambda: F.conv2d(_x(2, 4, 8, 8), _x(6, 4, 9, 3)), ValueError,
     r"expected the padded input \(8 x 8\) to be at least as large as the dilated kernel \(9 x 3\)", True),
    ("dilated_kernel_too_large", lambda: F.conv2d(_x(2, 4, 8, 6), _x(6, 4, 3, 3), padding=(0, 1), dilation=(1, 4)),
     ValueError, r"expected the padded input \(8 x 8\) to be at least as large as the dilated kernel \(3 x 9\)", False),
    ("dilated_kernel_too_large_2", lambda: F.conv2d(_x(2, 4, 8, 8), _x(6, 4, 3, 3), dilation=(1, 4)),
     ValueError, r"expected the padded input \(8 x 8\) to be at least as large as the dilated kernel \(3 x 9\)", True),
    ("reflect_padding_too_large", lambda: F.conv2d(_x(2, 4, 8, 8), _x(6, 4, 3, 3), padding=8, padding_mode="reflect"),
     ValueError, r"reflect padding must be smaller than the input size, got padding \(8, 8, 8, 8\) for input height 8 "
                 r"and width 8", True),
    ("reflect_padding_width", lambda: F.conv2d(_x(2, 4, 8, 5), _x(6, 4, 3, 3), padding=(1, 5),
                                               padding_mode="reflect"),
     ValueError, r"reflect padding must be smaller than the input size, got padding \(1, 1, 5, 5\) for input height 8 "
                 r"and width 5", True),
    ("circular_padding_too_large", lambda: F.conv2d(_x(2, 4, 8, 8), _x(6, 4, 3, 3), padding=(9, 1),
                                                    padding_mode="circular"),
     ValueError, r"circular padding must be at most the input size, got padding \(9, 9, 1, 1\) for input height 8 "
                 r"and width 8", True),
    ("same_strided", lambda: F.conv2d(_x(2, 4, 8, 8), _x(6, 4, 3, 3), stride=2, padding="same"), ValueError,
     r"padding='same' is not supported for strided convolutions, got stride \(2, 2\)", False),
    ("padding_string", lambda: F.conv2d(_x(2, 4, 8, 8), _x(6, 4, 3, 3), padding="full"), ValueError,
     r"expected padding to be 'same', 'valid', an int or a pair of ints, got 'full'", False),
    ("padding_mode", lambda: F.conv2d(_x(2, 4, 8, 8), _x(6, 4, 3, 3), padding_mode="mirror"), ValueError,
     r"expected padding_mode to be one of 'zeros', 'reflect', 'replicate', 'circular', got 'mirror'", True),
    ("float16_cpu", lambda: F.conv2d(_x(2, 4, 8, 8, dtype=torch.float16), _x(6, 4, 3, 3, dtype=torch.float16)),
     NotImplementedError, r"cnnops\.conv2d: dtype float16 on device cpu is not supported; supported: float32, "
                          r"float64, bfloat16", True),
    ("int64", lambda: F.conv2d(torch.ones(2, 4, 8, 8, dtype=torch.int64), torch.ones(6, 4, 3, 3, dtype=torch.int64)),
     NotImplementedError, r"cnnops\.conv2d: dtype int64 on device cpu is not supported", True),
    ("empty_channels", lambda: F.conv2d(_x(2, 0, 8, 8), _x(6, 0, 3, 3)), ValueError,
     r"expected input to have non-zero channels, height and width, got shape \(2, 0, 8, 8\)", True),
    ("grad_input_shape", lambda: ops.conv2d_grad_input(_x(2, 6, 5, 5), _x(6, 4, 3, 3), [2, 4, 8, 8], [1, 1],
                                                       [0, 0, 0, 0], [1, 1], 1, "zeros", False), ValueError,
     r"cnnops\.conv2d_grad_input: expected grad_output to have shape \(2, 6, 6, 6\), got \(2, 6, 5, 5\)", True),
    ("grad_weight_shape", lambda: ops.conv2d_grad_weight(_x(2, 5, 6, 6), _x(2, 4, 8, 8), [6, 4, 3, 3], [1, 1],
                                                         [0, 0, 0, 0], [1, 1], 1, "zeros", False), ValueError,
     r"cnnops\.conv2d_grad_weight: expected grad_output to have shape \(2, 6, 6, 6\), got \(2, 5, 6, 6\)", True),
    ("grad_input_reflect", lambda: ops.conv2d_grad_input(_x(2, 6, 8, 8), _x(6, 4, 3, 3), [2, 4, 8, 8], [1, 1],
                                                         [8, 8, 1, 1], [1, 1], 1, "reflect", False), ValueError,
     r"cnnops\.conv2d_grad_input: reflect padding must be smaller than the input size", True),
    ("grad_bias_1d", lambda: ops.conv2d_grad_bias(_x(6)), ValueError,
     r"cnnops\.conv2d_grad_bias: expected grad_output with at least 2 dimensions \(N, C, \.\.\.\), got shape \(6,\)",
     True),
]


def _find_in_chain(exc, exc_type, pattern):
    """The exception, or one it was raised from (torch.compile wraps errors), of exc_type
    whose message matches pattern."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, exc_type) and re.search(pattern, str(exc)):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


@pytest.mark.parametrize("name,call,exc_type,pattern,reaches_op", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_bad_input_eager(name, call, exc_type, pattern, reaches_op):
    with pytest.raises(exc_type, match=pattern):
        call()


@pytest.mark.parametrize("name,call,exc_type,pattern,reaches_op", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_bad_input_fake_tensors(name, call, exc_type, pattern, reaches_op):
    """The fake kernels raise the C++ kernels' errors and messages."""
    with FakeTensorMode():
        with pytest.raises(exc_type, match=pattern):
            call()


_COMPILE_ERROR_CASES = [c for c in ERROR_CASES if c[4] and c[0] in (
    "in_channels", "dtype_bias", "reflect_padding_too_large", "circular_padding_too_large", "int64")]


@pytest.mark.parametrize("name,call,exc_type,pattern,reaches_op", _COMPILE_ERROR_CASES,
                         ids=[c[0] for c in _COMPILE_ERROR_CASES])
def test_bad_input_compiled(name, call, exc_type, pattern, reaches_op, dynamo_reset):
    compiled = torch.compile(call, backend="aot_eager", fullgraph=True)
    with pytest.raises(Exception) as info:
        compiled()
    assert _find_in_chain(info.value, exc_type, pattern) is not None, repr(info.value)


def test_torch_rejects_what_cnnops_rejects():
    """Sanity of the error table: torch rejects the same calls (where it has the argument)."""
    x, w = _x(2, 4, 8, 8), _x(6, 4, 3, 3)
    for kwargs in [dict(stride=0), dict(padding=-1), dict(dilation=0), dict(groups=2), dict(padding="full"),
                   dict(stride=2, padding="same")]:
        with pytest.raises(Exception):
            TF.conv2d(x, w, **kwargs)
        with pytest.raises((ValueError, TypeError)):
            F.conv2d(x, w, **kwargs)
    with pytest.raises(Exception):
        torch.nn.Conv2d(4, 6, 3, padding=8, padding_mode="reflect")(x)
    with pytest.raises(Exception):
        torch.nn.Conv2d(4, 6, 3, padding=9, padding_mode="circular")(x)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA_AVAILABLE, reason="no CUDA device visible")
def test_device_mismatch_cuda():
    x = _x(2, 4, 8, 8).cuda()
    with pytest.raises(RuntimeError, match=r"expected weight to be on the same device as input \(cuda:0\), got cpu"):
        F.conv2d(x, _x(6, 4, 3, 3))
    with pytest.raises(NotImplementedError, match=r"dtype int64 on device cuda:0 is not supported"):
        F.conv2d(x.long(), _x(6, 4, 3, 3).long().cuda())


@pytest.mark.parametrize("kwargs", [dict(stride=np.int64(2)), dict(padding=np.int64(1))], ids=["stride", "padding"])
def test_numpy_int_arguments(kwargs):
    x, w = rand(2, 4, 8, 8), rand(6, 4, 3, 3)
    assert_close(cnnops.F.conv2d(x, w, **kwargs), TF.conv2d(x, w, **kwargs))


@pytest.mark.parametrize("op", ["conv2d_grad_input", "conv2d_grad_weight"])
def test_grad_op_dtype_mismatch_names_grad_output(op):
    go = _x(2, 6, 6, 6)
    if op == "conv2d_grad_input":
        other, size, name = _x(6, 4, 3, 3, dtype=torch.float64), [2, 4, 8, 8], "weight"
    else:
        other, size, name = _x(2, 4, 8, 8, dtype=torch.float64), [6, 4, 3, 3], "input"
    with pytest.raises(TypeError, match=rf"cnnops\.{op}: expected {name} to have the same dtype as grad_output "
                                        r"\(float32\), got float64"):
        getattr(ops, op)(go, other, size, [1, 1], [0, 0, 0, 0], [1, 1], 1, "zeros", False)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last_input", "channels_last_weight", "sliced_input"])
@pytest.mark.parametrize("mode,padding", [("zeros", (1, 0)), ("reflect", "same"), ("circular", 2)])
def test_meta_tensors_match_cpu(layout, mode, padding):
    """The meta device runs the fake kernels: the same shape, dtype and strides as the CPU kernel."""
    x = make_input((2, 4, 9, 8), layout, torch.float32)
    w = make_weight((6, 2, 3, 2), layout, torch.float32)
    b = rand(6, dtype=torch.float32)
    stride = 1 if padding == "same" else (2, 1)
    out = cnnops.F.conv2d(x, w, b, stride, padding, 1, 2, mode)
    meta = cnnops.F.conv2d(x.detach().to("meta"), w.detach().to("meta"), b.to("meta"), stride, padding, 1, 2, mode)
    assert meta.device.type == "meta"
    assert (meta.shape, meta.dtype, meta.stride()) == (out.shape, out.dtype, out.stride())
    # the backward ops too, with the padding resolved as the functional wrapper does
    st, pads, dil = cnnops.ops.conv2d.normalize_conv2d_args("test", w.shape, stride, padding, 1)
    args = (st, pads, dil, 2, mode, _cl(x, w))
    go = torch.randn(out.shape).contiguous(memory_format=CL if out.is_contiguous(memory_format=CL) else
                                           torch.contiguous_format)
    for real, fake in [
        (ops.conv2d_grad_input(go, w.detach(), list(x.shape), *args),
         ops.conv2d_grad_input(go.to("meta"), w.detach().to("meta"), list(x.shape), *args)),
        (ops.conv2d_grad_weight(go, x.detach(), list(w.shape), *args),
         ops.conv2d_grad_weight(go.to("meta"), x.detach().to("meta"), list(w.shape), *args)),
        (ops.conv2d_grad_bias(go), ops.conv2d_grad_bias(go.to("meta"))),
    ]:
        assert (fake.shape, fake.dtype, fake.stride()) == (real.shape, real.dtype, real.stride())
    m = cnnops.nn.Conv2d(4, 6, (3, 2), stride, padding, 1, 2, padding_mode=mode, device="meta")
    assert m(x.detach().to("meta")).shape == out.shape
    with pytest.raises(ValueError, match=r"reflect padding must be smaller than the input size"):
        cnnops.F.conv2d(x.detach().to("meta"), w.detach().to("meta"), None, 1, 9, 1, 2, "reflect")


# ---------------------------------------------------------------- 10. NaN / Inf, empty batch

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_nan_inf_propagate_like_torch(dtype, mode):
    x = rand(2, 4, 8, 8, dtype=dtype)
    x[0, 1, 2, 3] = float("nan")
    x[1, 2, 0, 0] = float("inf")  # a corner: reaches the padding of every mode
    x[1, 3, 7, 7] = -float("inf")
    x[1, 0, 4, 0] = float("inf")
    x = leaf(x)
    w, b = leaf(rand(6, 4, 3, 3, dtype=dtype)), leaf(rand(6, dtype=dtype))
    ref = torch_conv2d(x, w, b, 1, 1, 1, 1, mode)
    out = cnnops.F.conv2d(x, w, b, 1, 1, 1, 1, mode)
    assert ref.isnan().any() and ref.isinf().any()  # the test input does what it should
    assert torch.equal(out.isnan(), ref.isnan())
    assert torch.equal(out.isinf(), ref.isinf())
    assert_close(out, ref, equal_nan=True)
    go = rand(*ref.shape, dtype=dtype)
    for a, e in zip(grads(out, (x, w, b), go), grads(ref, (x, w, b), go)):
        assert torch.equal(a.isnan(), e.isnan())
        assert_close(a, e, equal_nan=True)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DEVICE_DTYPES["cpu"])
def test_empty_batch(dtype, mode):
    x = leaf(rand(0, 3, 6, 5, dtype=dtype))
    w = leaf(rand(4, 3, 3, 2, dtype=dtype))
    b = leaf(rand(4, dtype=dtype))
    out = cnnops.F.conv2d(x, w, b, (2, 1), 1, 1, 1, mode)
    assert out.shape == (0, 4, 3, 6) and out.dtype == dtype
    gi, gw, gb = torch.autograd.grad(out, (x, w, b), torch.empty_like(out))
    assert gi.shape == x.shape
    assert torch.equal(gw, torch.zeros_like(w))
    assert torch.equal(gb, torch.zeros_like(b))


# ---------------------------------------------------------------- 11. determinism

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_backward_is_deterministic(dtype):
    x = make_input((6, 8, 40, 37), "contiguous", dtype)
    w = make_weight((8, 4, 3, 3), "contiguous", dtype)
    b = leaf(rand(8, dtype=dtype))
    go = rand(6, 8, 40, 37, dtype=dtype)
    results = []
    for _ in range(2):
        out = cnnops.F.conv2d(x, w, b, 1, 1, 1, 2, "reflect")
        results.append((out, *torch.autograd.grad(out, (x, w, b), go)))
    for first, second in zip(*results):
        assert torch.equal(first, second)
