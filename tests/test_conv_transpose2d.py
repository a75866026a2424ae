"""conv_transpose2d: cnnops.functional.conv_transpose2d, the torch.ops.cnnops.conv_transpose2d*
ops, ConvTranspose2dFunction and cnnops.nn.ConvTranspose2d, checked against
torch.nn.functional.conv_transpose2d / torch.nn.ConvTranspose2d on the same inputs (outputs,
all gradients, dtypes, strides), plus output_size, gradcheck/gradgradcheck, opcheck,
torch.compile, autocast and the error messages of bad input (eager and under fake tensors)."""
import re

import pytest
import torch
import torch.nn.functional as TF
from hypothesis import assume, given
from hypothesis import strategies as st
from torch._subclasses.fake_tensor import FakeTensorMode

import cnnops
from conftest import (CUDA_AVAILABLE, DEVICE_DTYPES, assert_close, device_dtype_params, significant_strides,
                      leaf, make_input, make_weight, rand, torch_rule_strides)

ops = torch.ops.cnnops
F = cnnops.F
CL = torch.channels_last


# ---------------------------------------------------------------- helpers

def _format_of(t):
    return torch.channels_last if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) \
        and not t.is_contiguous() else torch.contiguous_format


def grads(out, inputs, grad_out):
    return torch.autograd.grad(out, [t for t in inputs if t is not None], grad_out)


def compare_with_torch(x, w, b, stride, padding, output_padding, groups, dilation, msg="", fn=None):
    """Forward and all gradients of cnnops.F.conv_transpose2d (or fn) against torch; strides too."""
    dtype, device = x.dtype, x.device
    ref = TF.conv_transpose2d(x, w, b, stride, padding, output_padding, groups, dilation)
    fn = fn or F.conv_transpose2d
    out = fn(x, w, b, stride, padding, output_padding, groups, dilation)
    assert out.dtype == ref.dtype == dtype, msg
    assert out.device == x.device, msg
    assert_close(out, ref, dtype, device, msg=f"{msg} forward")
    if out.numel() > 0:
        expected = torch_rule_strides(lambda *t: TF.conv_transpose2d(*t, stride, padding, output_padding, groups,
                                                                     dilation), x, w, b)
        assert significant_strides(out) == expected, f"{msg}: {out.stride()} vs torch's rule {expected}"
    grad_out = rand(*ref.shape, dtype=dtype, device=device)
    g_ref = grads(ref, (x, w, b), grad_out)
    g_out = grads(out, (x, w, b), grad_out)
    if device.type != "cpu":  # torch's CPU gradients give the layout rule (see torch_rule_strides)
        cpu = [None if t is None else t.detach().cpu().float().requires_grad_() for t in (x, w, b)]
        ref_cpu = TF.conv_transpose2d(*cpu, stride, padding, output_padding, groups, dilation)
        g_ref_layout = grads(ref_cpu, cpu, grad_out.cpu().float().contiguous(memory_format=_format_of(grad_out)))
    else:
        g_ref_layout = g_ref
    for name, a, e, layout in zip(("input", "weight", "bias"), g_out, g_ref, g_ref_layout):
        assert a.dtype == e.dtype, f"{msg} grad {name}"
        assert_close(a, e, dtype, device, msg=f"{msg} grad_{name}")
        if a.numel() > 0:
            assert significant_strides(a) == significant_strides(layout), (
                f"{msg} grad_{name}: {a.stride()} vs torch's rule {layout.stride()}")
    return out


# ---------------------------------------------------------------- 1. parametrized correctness

class Case:
    def __init__(self, name, n, c, oc, h, w, kernel, stride=1, padding=0, output_padding=0, groups=1, dilation=1,
                 bias=True):
        self.name, self.n, self.c, self.oc, self.h, self.w = name, n, c, oc, h, w
        self.kernel, self.stride, self.padding, self.output_padding = kernel, stride, padding, output_padding
        self.groups, self.dilation, self.bias = groups, dilation, bias

    def __repr__(self):
        return self.name


CASES = [
    Case("unet_2x2_s2", 2, 8, 4, 4, 5, (2, 2), stride=2),
    Case("dcgan_4x4_s2_p1", 2, 6, 4, 5, 4, (4, 4), stride=2, padding=1),
    Case("fcn_3x3_s2_op1", 2, 4, 6, 5, 5, (3, 3), stride=2, padding=1, output_padding=1),
    Case("groups2_dilated_op_below_dilation", 2, 4, 6, 5, 6, (3, 3), padding=1, output_padding=1, groups=2,
         dilation=2),
    Case("depthwise_s2", 1, 6, 6, 4, 5, (3, 3), stride=2, padding=1, output_padding=1, groups=6),
    Case("batch0", 0, 3, 5, 4, 4, (3, 3), stride=2),
    Case("batch1_k3x5_mixed_nobias", 1, 4, 4, 5, 3, (3, 5), stride=(3, 1), padding=(1, 2), output_padding=(2, 0),
         bias=False),
    Case("pointwise_odd", 2, 3, 2, 5, 7, (1, 1)),
    # output_padding - padding >= stride (allowed as output_padding < dilation): the last rows
    # are out of every tap's reach, zero + bias
    Case("rows_out_of_reach", 2, 3, 4, 4, 5, (2, 3), stride=1, padding=(0, 1), output_padding=(2, 1),
         dilation=(3, 2)),
    Case("groups3_k5_s3_p2", 1, 6, 9, 3, 4, (5, 5), stride=3, padding=2, output_padding=(1, 2), groups=3),
]
LAYOUTS = ("contiguous", "channels_last_input", "channels_last_weight", "sliced_input", "transposed_input")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=repr)
@pytest.mark.parametrize("device,dtype", device_dtype_params())
def test_conv_transpose2d_matches_torch(device, dtype, case, layout):
    c = case
    x = make_input((c.n, c.c, c.h, c.w), layout, dtype, device)
    w = make_weight((c.c, c.oc // c.groups, *c.kernel), layout, dtype, device)
    b = leaf(rand(c.oc, dtype=dtype, device=device)) if c.bias else None
    compare_with_torch(x, w, b, c.stride, c.padding, c.output_padding, c.groups, c.dilation, msg=f"{c} {layout}")


def test_no_tap_reaches_the_output():
    """A 1 x 1 output that every tap misses (padding 1, output_padding 2 < dilation 3): bias only,
    zero gradients for input and weight, as torch."""
    x, w, b = leaf(rand(2, 2, 1, 1)), leaf(rand(2, 3, 1, 1)), leaf(rand(3))
    compare_with_torch(x, w, b, 1, 1, 2, 1, 3)


@pytest.mark.parametrize("go_layout", ["contiguous", "channels_last", "expanded"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last_input", "channels_last_weight"])
def test_gradient_strides_follow_the_forward(layout, go_layout):
    """Gradients take the forward's layout whatever grad_output's layout is (as torch's)."""
    x = make_input((2, 4, 5, 5), layout)
    w = make_weight((4, 3, 3, 3), layout)
    out, ref = F.conv_transpose2d(x, w, None, 2, 1, 1), TF.conv_transpose2d(x, w, None, 2, 1, 1)
    go = rand(*out.shape)
    if go_layout == "channels_last":
        go = go.contiguous(memory_format=CL)
    elif go_layout == "expanded":
        go = torch.ones(()).double().expand(out.shape)
    for a, e in zip(grads(out, (x, w), go), grads(ref, (x, w), go)):
        assert_close(a, e)
        assert significant_strides(a) == significant_strides(e), (a.stride(), e.stride())


# ---------------------------------------------------------------- 2. hypothesis

@st.composite
def configs(draw):
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    oph = draw(st.integers(0, max(sh, dh) - 1))
    opw = draw(st.integers(0, max(sw, dw) - 1))
    groups = draw(st.sampled_from([1, 2, 3]))
    cin = groups * draw(st.integers(1, 2))
    cout = groups * draw(st.integers(1, 2))
    n = draw(st.integers(0, 2))
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    layout = draw(st.sampled_from(LAYOUTS))
    bias = draw(st.booleans())
    return dict(n=n, cin=cin, cout=cout, h=h, w=w, kernel=(kh, kw), stride=(sh, sw), padding=(ph, pw),
                output_padding=(oph, opw), dilation=(dh, dw), groups=groups, layout=layout, bias=bias)


def _hypothesis_tensors(cfg):
    out_h = (cfg["h"] - 1) * cfg["stride"][0] - 2 * cfg["padding"][0] + cfg["dilation"][0] * (cfg["kernel"][0] - 1) \
        + cfg["output_padding"][0] + 1
    out_w = (cfg["w"] - 1) * cfg["stride"][1] - 2 * cfg["padding"][1] + cfg["dilation"][1] * (cfg["kernel"][1] - 1) \
        + cfg["output_padding"][1] + 1
    assume(out_h >= 1 and out_w >= 1)
    x = make_input((cfg["n"], cfg["cin"], cfg["h"], cfg["w"]), cfg["layout"])
    w = make_weight((cfg["cin"], cfg["cout"] // cfg["groups"], *cfg["kernel"]), cfg["layout"])
    b = leaf(rand(cfg["cout"])) if cfg["bias"] else None
    return x, w, b, (cfg["stride"], cfg["padding"], cfg["output_padding"], cfg["groups"], cfg["dilation"])


class _one_thread:
    """One intra-op thread inside a hypothesis example (many tiny calls), restored after."""

    def __enter__(self):
        self.previous = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.previous)


@given(configs())
def test_conv_transpose2d_hypothesis(cfg):
    with _one_thread():
        x, w, b, args = _hypothesis_tensors(cfg)
        compare_with_torch(x, w, b, *args, msg=str(cfg))


@given(configs())
def test_gather_forward_matches_torch(cfg):
    """The forward through conv2d's gather-style grad_input (the CUDA kernel's formulation,
    run on the CPU): checks the composition and index math the GPU runs."""
    x, w, b, args = _hypothesis_tensors(cfg)
    stride, padding, output_padding, groups, dilation = args
    with _one_thread():
        ref = TF.conv_transpose2d(x, w, b, *args)
        out = ops._conv_transpose2d_gather(x.detach(), w.detach(), None if b is None else b.detach(), list(stride),
                                           list(padding), list(output_padding), groups, list(dilation))
    assert_close(out, ref, msg=str(cfg))
    if out.numel():
        assert significant_strides(out) == significant_strides(ref)


# ---------------------------------------------------------------- 3. output_size

@pytest.mark.parametrize("unbatched", [False, True])
def test_module_output_size_every_reachable_size(unbatched):
    """Every size nn.ConvTranspose2d reaches through output_size, as 2 sizes or input.dim()."""
    m = cnnops.nn.ConvTranspose2d(4, 3, 3, stride=(3, 2), padding=1, dtype=torch.float64)
    r = torch.nn.ConvTranspose2d(4, 3, 3, stride=(3, 2), padding=1, dtype=torch.float64)
    r.load_state_dict(m.state_dict())
    shape = (4, 5, 6) if unbatched else (2, 4, 5, 6)
    x = leaf(rand(*shape))
    lead = list(shape[:-2])  # torch accepts input.dim() elements, the leading ones ignored
    for oh in (13, 14, 15):
        for ow in (11, 12):
            for size in ([oh, ow], lead + [oh, ow], torch.Size([oh, ow])):
                y, yr = m(x, output_size=size), r(x, output_size=size)
                assert y.shape == yr.shape and y.shape[-2:] == (oh, ow)
                assert_close(y, yr)
    y = m(x, output_size=[15, 12])
    go = rand(*y.shape)
    yr = r(x, output_size=[15, 12])
    for a, e in zip(grads(y, (x, m.weight, m.bias), go), grads(yr, (x, r.weight, r.bias), go)):
        assert_close(a, e)


def test_functional_output_size_overrides_output_padding():
    x, w = rand(1, 2, 4, 4), rand(2, 3, 3, 3)
    out = F.conv_transpose2d(x, w, stride=2, output_padding=0, output_size=(10, 9))
    assert_close(out, TF.conv_transpose2d(x, w, stride=2, output_padding=(1, 0)))


def test_function_apply_with_output_size():
    x, w, b = leaf(rand(2, 4, 3, 5)), leaf(rand(4, 2, 3, 2)), leaf(rand(4))
    out = F.ConvTranspose2dFunction.apply(x, w, b, 2, (1, 0), 0, 2, 1, (6, 11))
    ref = TF.conv_transpose2d(x, w, b, 2, (1, 0), (1, 1), 2, 1)
    assert_close(out, ref)
    go = rand(*out.shape)
    for a, e in zip(grads(out, (x, w, b), go), grads(ref, (x, w, b), go)):
        assert_close(a, e)
    # only the gradient asked for
    out2 = F.ConvTranspose2dFunction.apply(x.detach(), w, None, 2, (1, 0), (1, 1), 2)
    (gw,) = torch.autograd.grad(out2, w, go)
    assert_close(gw, grads(TF.conv_transpose2d(x.detach(), w, None, 2, (1, 0), (1, 1), 2), (w,), go)[0])


# ---------------------------------------------------------------- 4. module, unbatched, autocast

MODULE_KWARGS = [
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, output_padding=1),
    dict(in_channels=4, out_channels=4, kernel_size=(2, 4), stride=(2, 1), groups=2, bias=False),
    dict(in_channels=3, out_channels=5, kernel_size=3, dilation=2, padding=2, output_padding=1),
]


@pytest.mark.parametrize("kwargs", MODULE_KWARGS, ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()))
def test_module_matches_torch_module(kwargs):
    m = cnnops.nn.ConvTranspose2d(**kwargs, dtype=torch.float64)
    r = torch.nn.ConvTranspose2d(**kwargs, dtype=torch.float64)
    assert isinstance(m, torch.nn.ConvTranspose2d)
    assert list(m.state_dict()) == list(r.state_dict()) and repr(m) == repr(r)
    r.load_state_dict(m.state_dict())
    x = leaf(rand(2, kwargs["in_channels"], 5, 6))
    y, yr = m(x), r(x)
    assert_close(y, yr)
    go = rand(*y.shape)
    params, params_ref = [x, *m.parameters()], [x, *r.parameters()]
    for a, e in zip(torch.autograd.grad(y, params, go), torch.autograd.grad(yr, params_ref, go)):
        assert_close(a, e)


def test_module_rejects_other_padding_modes():
    m = cnnops.nn.ConvTranspose2d(2, 2, 3)
    m.padding_mode = "reflect"
    with pytest.raises(ValueError, match="Only `zeros` padding mode is supported for ConvTranspose2d"):
        m(rand(1, 2, 4, 4, dtype=torch.float32))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last_weight"])
def test_unbatched_input(layout):
    x = leaf(rand(4, 5, 6))
    w = make_weight((4, 3, 3, 3), layout)
    b = leaf(rand(3))
    out, ref = F.conv_transpose2d(x, w, b, 2, 1, 1), TF.conv_transpose2d(x, w, b, 2, 1, 1)
    assert out.shape == ref.shape == (3, 10, 12)
    assert_close(out, ref)
    assert out.stride() == ref.stride()
    go = rand(*out.shape)
    for a, e in zip(grads(out, (x, w, b), go), grads(ref, (x, w, b), go)):
        assert_close(a, e)


def test_autocast_bfloat16():
    x, w, b = rand(2, 4, 5, 5, dtype=torch.float32), rand(4, 6, 4, 4, dtype=torch.float32), rand(6, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = F.conv_transpose2d(x, w, b, 2, 1)
        ref = TF.conv_transpose2d(x, w, b, 2, 1)
    assert out.dtype == ref.dtype == torch.bfloat16
    assert_close(out, ref)
    assert_close(out, F.conv_transpose2d(x.bfloat16(), w.bfloat16(), b.bfloat16(), 2, 1))


def test_autocast_module_backward_and_float64():
    m = cnnops.nn.ConvTranspose2d(4, 6, 3, stride=2)
    r = torch.nn.ConvTranspose2d(4, 6, 3, stride=2)
    r.load_state_dict(m.state_dict())
    x = leaf(rand(2, 4, 5, 5, dtype=torch.float32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref = m(x), r(x)
        x64, w64 = rand(1, 4, 3, 3), rand(4, 2, 3, 3)
        assert F.conv_transpose2d(x64, w64).dtype == torch.float64  # float64 left alone, as torch
    assert out.dtype == ref.dtype == torch.bfloat16
    go = rand(*out.shape, dtype=torch.bfloat16)
    g = torch.autograd.grad(out, (x, m.weight, m.bias), go)
    g_ref = torch.autograd.grad(ref, (x, r.weight, r.bias), go)
    for a, e in zip(g, g_ref):
        assert a.dtype == e.dtype
        assert_close(a, e, dtype=torch.bfloat16)


# ---------------------------------------------------------------- 5. gradcheck, opcheck

GRADCHECK_CONFIGS = [
    ((2, 4, 3, 4), (4, 3, 3, 2), True, dict(stride=2, padding=1, output_padding=1, groups=2)),
    ((1, 2, 3, 3), (2, 2, 2, 3), False, dict(stride=1, padding=(0, 1), output_padding=(2, 1), dilation=(3, 2))),
    ((2, 3, 2, 3), (3, 1, 3, 3), True, dict(stride=(1, 2), padding=1, groups=3)),
]


@pytest.mark.parametrize("i", range(len(GRADCHECK_CONFIGS)))
def test_gradcheck_and_gradgradcheck(i, single_thread):
    xs, ws, has_bias, kwargs = GRADCHECK_CONFIGS[i]
    x, w = leaf(rand(*xs)), leaf(rand(*ws))
    b = leaf(rand(ws[1] * kwargs.get("groups", 1))) if has_bias else None
    inputs = (x, w, b) if has_bias else (x, w)

    def f(x, w, b=None):
        return F.conv_transpose2d(x, w, b, **kwargs)

    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


def test_gradcheck_function_apply(single_thread):
    x, w, b = leaf(rand(1, 2, 3, 3)), leaf(rand(2, 2, 2, 2)), leaf(rand(2))
    assert torch.autograd.gradcheck(lambda x, w, b: F.ConvTranspose2dFunction.apply(x, w, b, 2, 0, 1), (x, w, b))


OPCHECK_CONFIGS = {
    # name: input (shape, channels_last), weight (shape, channels_last), bias, stride, padding, output_padding,
    #       groups, dilation
    "groups2_op1": (((2, 4, 3, 4), False), ((4, 3, 3, 2), False), True, [2, 2], [1, 0], [1, 1], 2, [1, 1]),
    "channels_last_input_dilated": (((1, 3, 4, 3), True), ((3, 2, 2, 3), False), False, [1, 2], [0, 1], [1, 1], 1,
                                    [2, 1]),
    "rows_out_of_reach_cl_weight": (((2, 2, 3, 3), False), ((2, 3, 2, 2), True), True, [1, 1], [0, 0], [2, 0], 1,
                                    [3, 1]),
}


def _opcheck_inputs(name):
    (xs, xcl), (ws, wcl), has_bias, *args = OPCHECK_CONFIGS[name]
    x = make_input(xs, "channels_last_input" if xcl else "contiguous")
    w = make_weight(ws, "channels_last_weight" if wcl else "contiguous")
    b = leaf(rand(ws[1] * args[3])) if has_bias else None
    return x, w, b, args


@pytest.mark.parametrize("name", list(OPCHECK_CONFIGS))
@pytest.mark.parametrize("op", ["conv_transpose2d", "conv_transpose2d_grad_input", "conv_transpose2d_grad_weight",
                                "_conv_transpose2d_gather"])
def test_opcheck(op, name, single_thread):
    x, w, b, args = _opcheck_inputs(name)
    out = ops.conv_transpose2d(x.detach(), w.detach(), None if b is None else b.detach(), *args)
    go = leaf(rand(*out.shape))
    cl = cnnops.ops._common.conv_memory_format(x, w) == CL
    if op == "conv_transpose2d":
        call = (ops.conv_transpose2d, (x, w, b, *args))
    elif op == "_conv_transpose2d_gather":  # no autograd: a forward-only test hook
        call = (ops._conv_transpose2d_gather, (x.detach(), w.detach(), None if b is None else b.detach(), *args))
    elif op == "conv_transpose2d_grad_input":
        call = (ops.conv_transpose2d_grad_input, (go, w, list(x.shape), *args, cl))
    else:
        call = (ops.conv_transpose2d_grad_weight, (go, x, list(w.shape), *args, cl))
    result = torch.library.opcheck(*call)
    assert result and all(v == "SUCCESS" for v in result.values()), result


def test_gradient_ops_match_torch():
    """The backward ops called directly, against torch's gradients (grad_bias is conv2d_grad_bias)."""
    x, w, b, args = _opcheck_inputs("rows_out_of_reach_cl_weight")
    ref = TF.conv_transpose2d(x, w, b, *args)
    go = rand(*ref.shape)
    gi, gw, gb = torch.autograd.grad(ref, (x, w, b), go)
    cl = cnnops.ops._common.conv_memory_format(x, w) == CL
    assert_close(ops.conv_transpose2d(x, w, b, *args), ref)
    assert_close(ops.conv_transpose2d_grad_input(go, w.detach(), list(x.shape), *args, cl), gi)
    assert_close(ops.conv_transpose2d_grad_weight(go, x.detach(), list(w.shape), *args, cl), gw)
    assert_close(ops.conv2d_grad_bias(go), gb)


# ---------------------------------------------------------------- 6. torch.compile

COMPILE_CONFIGS = {
    "dcgan_output_size": (dict(in_channels=4, out_channels=6, kernel_size=4, stride=2, padding=1), (2, 4, 5, 5),
                          None, [11, 10]),
    "groups_channels_last": (dict(in_channels=4, out_channels=8, kernel_size=3, stride=2, padding=1,
                                  output_padding=1, groups=2), (2, 4, 5, 5), CL, None),
    "unbatched_dilated_nobias": (dict(in_channels=3, out_channels=2, kernel_size=2, dilation=3, output_padding=2,
                                      bias=False), (3, 4, 4), None, None),
}


def _compile_and_compare(kwargs, shape, memory_format, output_size, backend, dtype=torch.float64):
    m = cnnops.nn.ConvTranspose2d(**kwargs, dtype=dtype)
    r = torch.nn.ConvTranspose2d(**kwargs, dtype=dtype)
    r.load_state_dict(m.state_dict())
    x = rand(*shape, dtype=dtype)
    if memory_format is not None:
        x = x.contiguous(memory_format=memory_format)
    x = leaf(x)
    compiled = torch.compile(m, backend=backend, fullgraph=True)
    y, y_ref = compiled(x, output_size), r(x, output_size)
    assert_close(y, y_ref)
    assert significant_strides(y) == significant_strides(y_ref)
    go = rand(*y.shape, dtype=dtype)
    params, params_ref = [x, *m.parameters()], [x, *r.parameters()]
    for a, e in zip(torch.autograd.grad(y, params, go), torch.autograd.grad(y_ref, params_ref, go)):
        assert_close(a, e)
    x2 = leaf(rand(*shape, dtype=dtype))
    assert_close(compiled(x2, output_size), r(x2, output_size))


@pytest.mark.parametrize("name", list(COMPILE_CONFIGS))
def test_compile_aot_eager(name, dynamo_reset):
    _compile_and_compare(*COMPILE_CONFIGS[name], "aot_eager")


def test_compile_function_apply_aot_eager(dynamo_reset):
    x, w, b = leaf(rand(2, 3, 4, 4)), leaf(rand(3, 2, 3, 3)), leaf(rand(2))

    def f(x, w, b):
        return F.ConvTranspose2dFunction.apply(x, w, b, 2, 1, 1)

    y = torch.compile(f, backend="aot_eager", fullgraph=True)(x, w, b)
    ref = TF.conv_transpose2d(x, w, b, 2, 1, 1)
    assert_close(y, ref)
    go = rand(*y.shape)
    for a, e in zip(grads(y, (x, w, b), go), grads(ref, (x, w, b), go)):
        assert_close(a, e)


@pytest.mark.slow
def test_compile_inductor(dynamo_reset, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    _compile_and_compare(dict(in_channels=4, out_channels=6, kernel_size=2, stride=2), (2, 4, 5, 5), None, None,
                         "inductor", dtype=torch.float32)


# ---------------------------------------------------------------- 7. bad input

def _x(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


def _grad_input_call(go_shape):
    return lambda: ops.conv_transpose2d_grad_input(_x(*go_shape), _x(4, 3, 3, 3), [2, 4, 5, 5], [2, 2], [1, 1],
                                                   [1, 1], 1, [1, 1], False)


# (id, call, exception type, message regex, reaches the op (so checked under torch.compile))
ERROR_CASES = [
    ("input_2d", lambda: F.conv_transpose2d(_x(4, 8), _x(4, 3, 3, 3)), ValueError,
     r"cnnops\.conv_transpose2d: expected input to be 3-D \(C, H, W\) or 4-D \(N, C, H, W\), got shape \(4, 8\)",
     False),
    ("weight_3d", lambda: F.conv_transpose2d(_x(2, 4, 5, 5), _x(4, 3, 3)), ValueError,
     r"expected weight to be a 4-D tensor \(in_channels, out_channels / groups, kH, kW\), got shape \(4, 3, 3\)",
     False),
    ("op_input_5d", lambda: ops.conv_transpose2d(_x(1, 2, 4, 5, 5), _x(4, 3, 3, 3), None, [1, 1], [0, 0], [0, 0], 1,
                                                 [1, 1]), ValueError,
     r"cnnops\.conv_transpose2d: expected input to be a 4-D tensor \(N, C, H, W\), got shape \(1, 2, 4, 5, 5\)", True),
    ("weight_dim0", lambda: F.conv_transpose2d(_x(2, 4, 5, 5), _x(6, 3, 3, 3)), ValueError,
     r"expected input to have weight\.size\(0\) = 6 channels \(weight is \(in_channels, out_channels / groups, "
     r"kH, kW\)\), got 4 \(input shape \(2, 4, 5, 5\)\)", True),
    ("groups_divide", lambda: F.conv_transpose2d(_x(2, 6, 5, 5), _x(6, 3, 3, 3), groups=4), ValueError,
     r"expected in_channels \(weight\.size\(0\) = 6\) to be divisible by groups = 4", True),
    ("groups_0", lambda: F.conv_transpose2d(_x(2, 4, 5, 5), _x(4, 3, 3, 3), groups=0), ValueError,
     r"expected groups >= 1, got 0", True),
    ("output_padding_rule", lambda: F.conv_transpose2d(_x(2, 4, 5, 5), _x(4, 3, 3, 3), stride=2, output_padding=2),
     ValueError, r"expected output_padding to be smaller than stride or dilation in each dimension, got "
                 r"output_padding \(2, 2\) with stride \(2, 2\) and dilation \(1, 1\)", True),
    ("output_padding_width", lambda: F.conv_transpose2d(_x(2, 4, 5, 5), _x(4, 3, 3, 3), stride=(1, 2), dilation=(2, 1),
                                                        output_padding=(1, 2)),
     ValueError, r"got output_padding \(1, 2\) with stride \(1, 2\) and dilation \(2, 1\)", True),
    ("output_padding_negative", lambda: F.conv_transpose2d(_x(2, 4, 5, 5), _x(4, 3, 3, 3), output_padding=-1),
     ValueError, r"expected output_padding to be two integers >= 0, got \(-1, -1\)", True),
    ("output_size_unreachable", lambda: F.conv_transpose2d(_x(2, 4, 5, 5), _x(4, 3, 3, 3), stride=2, padding=1,
                                                           output_size=(12, 9)),
     ValueError, r"output_size \(12, 9\) cannot be reached from an input of 5 x 5 with stride \(2, 2\), padding "
                 r"\(1, 1\), dilation \(1, 1\) and kernel \(3, 3\): reachable heights are 9 to 10, widths 9 to 10",
     False),
    ("output_size_length", lambda: F.conv_transpose2d(_x(2, 4, 5, 5), _x(4, 3, 3, 3), output_size=(1, 7, 7)),
     ValueError, r"expected output_size to have 2 or 4 elements for a 4-D input, got \(1, 7, 7\)", False),
    ("output_size_module", lambda: cnnops.nn.ConvTranspose2d(4, 3, 3, stride=3)(_x(4, 5, 5), output_size=(3, 14, 18)),
     ValueError, r"output_size \(14, 18\) cannot be reached .* heights are 15 to 17, widths 15 to 17", False),
    ("output_negative", lambda: F.conv_transpose2d(_x(2, 4, 2, 5), _x(4, 3, 3, 3), padding=(3, 0)), ValueError,
     r"expected a non-negative output size, got -2 x 7 = \(input - 1\) \* stride - 2 \* padding \+ dilation \* "
     r"\(kernel - 1\) \+ output_padding \+ 1 for input 2 x 5", True),
    ("stride_0", lambda: F.conv_transpose2d(_x(2, 4, 5, 5), _x(4, 3, 3, 3), stride=(1, 0)), ValueError,
     r"expected stride to be two integers >= 1, got \(1, 0\)", True),
    ("padding_negative", lambda: F.conv_transpose2d(_x(2, 4, 5, 5), _x(4, 3, 3, 3), padding=-1), ValueError,
     r"expected padding to be two integers >= 0, got \(-1, -1\)", True),
    ("dilation_0", lambda: F.conv_transpose2d(_x(2, 4, 5, 5), _x(4, 3, 3, 3), dilation=0), ValueError,
     r"expected dilation to be two integers >= 1, got \(0, 0\)", True),
    ("padding_string", lambda: F.conv_transpose2d(_x(2, 4, 5, 5), _x(4, 3, 3, 3), padding="same"), TypeError,
     r"expected padding to be an int or a pair of ints, got 'same'", False),
    ("dtype_weight", lambda: F.conv_transpose2d(_x(2, 4, 5, 5), _x(4, 3, 3, 3, dtype=torch.float64)), TypeError,
     r"expected weight to have the same dtype as input \(float32\), got float64", True),
    ("bias_length", lambda: F.conv_transpose2d(_x(2, 4, 5, 5), _x(4, 3, 3, 3), _x(4), groups=2), ValueError,
     r"expected bias to have shape \(6,\) \(out_channels = weight\.size\(1\) \* groups\), got shape \(4,\)", True),
    ("float16_cpu", lambda: F.conv_transpose2d(_x(2, 4, 5, 5, dtype=torch.float16), _x(4, 3, 3, 3, dtype=torch.float16)),
     NotImplementedError, r"cnnops\.conv_transpose2d: dtype float16 on device cpu is not supported; supported: "
                          r"float32, float64, bfloat16", True),
    ("empty_channels", lambda: F.conv_transpose2d(_x(2, 0, 5, 5), _x(0, 3, 3, 3)), ValueError,
     r"expected input to have non-zero channels, height and width, got shape \(2, 0, 5, 5\)", True),
    ("grad_input_shape", _grad_input_call((2, 3, 9, 10)), ValueError,
     r"cnnops\.conv_transpose2d_grad_input: expected grad_output to have shape \(2, 3, 10, 10\), got \(2, 3, 9, 10\)",
     True),
    ("grad_weight_shape", lambda: ops.conv_transpose2d_grad_weight(_x(2, 3, 10, 9), _x(2, 4, 5, 5), [4, 3, 3, 3],
                                                                   [2, 2], [1, 1], [1, 1], 1, [1, 1], False),
     ValueError, r"cnnops\.conv_transpose2d_grad_weight: expected grad_output to have shape \(2, 3, 10, 10\), got "
                 r"\(2, 3, 10, 9\)", True),
    ("grad_weight_dtype", lambda: ops.conv_transpose2d_grad_weight(_x(2, 3, 10, 10), _x(2, 4, 5, 5, dtype=torch.float64),
                                                                   [4, 3, 3, 3], [2, 2], [1, 1], [1, 1], 1, [1, 1],
                                                                   False),
     TypeError, r"expected input to have the same dtype as grad_output \(float32\), got float64", True),
]


def _find_in_chain(exc, exc_type, pattern):
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


_COMPILE_ERROR_CASES = [c for c in ERROR_CASES if c[0] in ("weight_dim0", "output_padding_rule", "bias_length")]


@pytest.mark.parametrize("name,call,exc_type,pattern,reaches_op", _COMPILE_ERROR_CASES,
                         ids=[c[0] for c in _COMPILE_ERROR_CASES])
def test_bad_input_compiled(name, call, exc_type, pattern, reaches_op, dynamo_reset):
    compiled = torch.compile(call, backend="aot_eager", fullgraph=True)
    with pytest.raises(Exception) as info:
        compiled()
    assert _find_in_chain(info.value, exc_type, pattern) is not None, repr(info.value)


def test_torch_rejects_what_cnnops_rejects():
    """Sanity of the error table: torch rejects the same calls."""
    x, w = _x(2, 4, 5, 5), _x(4, 3, 3, 3)
    for kwargs in [dict(stride=2, output_padding=2), dict(groups=3), dict(padding=(4, 0)), dict(stride=0)]:
        with pytest.raises(Exception):
            TF.conv_transpose2d(x, w, **kwargs)
        with pytest.raises(ValueError):
            F.conv_transpose2d(x, w, **kwargs)
    with pytest.raises(Exception):
        TF.conv_transpose2d(x, _x(6, 3, 3, 3))
    with pytest.raises(ValueError):
        torch.nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1)(x, output_size=(12, 9))


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA_AVAILABLE, reason="no CUDA device visible")
def test_device_mismatch_cuda():
    x = _x(2, 4, 5, 5).cuda()
    with pytest.raises(RuntimeError, match=r"expected weight to be on the same device as input \(cuda:0\), got cpu"):
        F.conv_transpose2d(x, _x(4, 3, 3, 3))
    with pytest.raises(RuntimeError, match=r"expected weight to be on the same device as input \(cpu\), got cuda:0"):
        F.conv_transpose2d(x.cpu(), _x(4, 3, 3, 3).cuda())
    with pytest.raises(NotImplementedError, match=r"dtype int64 on device cuda:0 is not supported"):
        F.conv_transpose2d(x.long(), _x(4, 3, 3, 3).long().cuda())


# ---------------------------------------------------------------- 8. meta, determinism, threads

@pytest.mark.parametrize("layout", ["contiguous", "channels_last_input", "channels_last_weight", "sliced_input"])
def test_meta_tensors_match_cpu(layout):
    x = make_input((2, 4, 5, 6), layout, torch.float32)
    w = make_weight((4, 3, 3, 2), layout, torch.float32)
    args = ((2, 1), (1, 0), (1, 0), 1, (1, 2))
    out = F.conv_transpose2d(x, w, None, *args)
    meta = F.conv_transpose2d(x.detach().to("meta"), w.detach().to("meta"), None, *args)
    assert meta.shape == out.shape and meta.dtype == out.dtype
    assert significant_strides(meta) == significant_strides(out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_is_deterministic(dtype):
    x, w, b = leaf(rand(4, 8, 9, 9, dtype=dtype)), leaf(rand(8, 6, 4, 4, dtype=dtype)), leaf(rand(6, dtype=dtype))
    runs = []
    for _ in range(2):
        out = F.conv_transpose2d(x, w, b, 2, 1)
        runs.append((out, *torch.autograd.grad(out, (x, w, b), torch.ones_like(out))))
    for a, e in zip(*runs):
        assert torch.equal(a, e)


@pytest.mark.parametrize("device,dtype", device_dtype_params())
def test_larger_problem_many_threads(device, dtype):
    """A UNet-decoder-like shape with enough work for every thread and several GEMM tiles."""
    if dtype == torch.float64:
        pytest.skip("covered by the small cases")
    x = make_input((2, 32, 12, 12), "channels_last_input", dtype, device)
    w = make_weight((32, 16, 2, 2), "contiguous", dtype, device)
    b = leaf(rand(16, dtype=dtype, device=device))
    compare_with_torch(x, w, b, 2, 0, 0, 1, 1)


def test_dtypes_listed_for_cpu():
    assert set(DEVICE_DTYPES["cpu"]) == {torch.float64, torch.float32, torch.bfloat16}


def test_forward_mode_ad_matches_torch():
    """Custom ops drop forward-mode tangents; the functional wrapper computes the output's own."""
    import torch.autograd.forward_ad as fwAD
    x, w, b = rand(2, 4, 3, 5), rand(4, 3, 3, 3), rand(6)
    tx, tw, tb = rand(2, 4, 3, 5), rand(4, 3, 3, 3), rand(6)
    for with_b, with_tw in [(True, True), (False, False), (True, False)]:
        results = []
        for fn in (F.conv_transpose2d, TF.conv_transpose2d):
            with fwAD.dual_level():
                xd = fwAD.make_dual(x, tx)
                wd = fwAD.make_dual(w, tw) if with_tw else w
                bd = (fwAD.make_dual(b, tb) if with_tw else b) if with_b else None
                y = fn(xd, wd, bd, 2, 1, 1, 2)
                results.append(fwAD.unpack_dual(y))
        (p, t), (p_ref, t_ref) = results
        assert_close(p, p_ref)
        assert t is not None
        assert_close(t, t_ref)


def test_zero_output_size_gives_an_empty_result_as_torch():
    # torch accepts a transposed convolution whose output has 0 rows (found by the fuzz test)
    x = torch.randn(2, 4, 2, 5, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    got = F.conv_transpose2d(x, w, b, padding=(2, 0))
    want = torch.nn.functional.conv_transpose2d(x, w, b, padding=(2, 0))
    assert got.shape == want.shape == (2, 3, 0, 7)
    grads = torch.autograd.grad(got.sum(), (x, w, b))
    for g, r in zip(grads, torch.autograd.grad(want.sum(), (x, w, b))):
        assert torch.equal(g, r)
