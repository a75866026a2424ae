"""batch_norm: parity with torch (outputs, all gradients, running statistics, strides) for
ranks 2-5, layouts, dtypes, fused activation and residual; modules (BatchNorm2d,
BatchNormReLU2d, BatchNormAddReLU2d) over several training steps then eval; momentum=None
under torch.compile(fullgraph=True); gradcheck and gradgradcheck; opcheck; bad input (eager and fake);
fuse_conv_bn. CUDA cases carry "cuda" in their ids and skip without a GPU."""
import copy
import inspect

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._subclasses.fake_tensor import FakeTensorMode

import cnnops

ops = torch.ops.cnnops
HAS_CUDA = torch.cuda.is_available() and cnnops.build_info()["cuda"]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device or CPU-only build"))]
DTYPES = {"cpu": (torch.float32, torch.float64, torch.bfloat16),
          "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16)}
REL_TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def device_dtypes():
    for dev in DEVICES:
        name = dev if isinstance(dev, str) else dev.values[0]
        marks = () if isinstance(dev, str) else dev.marks
        for dt in DTYPES[name]:
            yield pytest.param(name, dt, marks=marks, id=f"{name}-{str(dt).replace('torch.', '')}")


def rel_err(a, ref):
    a, ref = a.detach().double().cpu(), ref.detach().double().cpu()
    den = max(ref.norm().item(), 1e-3 * max(ref.numel(), 1) ** 0.5)
    return (a - ref).norm().item() / den


def check(a, ref, dtype, what, torch_same=None):
    """a within REL_TOL of the float64 reference, or at most 4x as far as torch's own
    result in the same dtype (where rounding dominates)."""
    assert a.shape == ref.shape, f"{what}: shape {tuple(a.shape)} vs {tuple(ref.shape)}"
    err = rel_err(a, ref)
    tol = REL_TOL[dtype]
    if torch_same is not None:
        tol = max(tol, 4 * rel_err(torch_same, ref))
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"


def significant_strides(t):
    return tuple(s for s, d in zip(t.stride(), t.shape) if d > 1)


def reference(x, rm, rv, w, b, training, momentum, eps, activation, residual):
    """torch's unfused composition: F.batch_norm, then + residual, then the activation."""
    y = F.batch_norm(x, rm, rv, w, b, training, momentum, eps)
    if residual is not None:
        y = y + residual
    if activation == "relu":
        y = torch.relu(y)
    elif activation == "relu6":
        y = F.relu6(y)
    return y


def layout(t, kind):
    if kind == "channels_last" and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    if kind == "channels_last" and t.dim() == 5:
        return t.contiguous(memory_format=torch.channels_last_3d)
    if kind == "noncontig":
        return torch.cat([t, t], dim=-1)[..., ::2] if t.dim() > 2 else t.t().contiguous().t()
    return t


def run_case(device, dtype, shape, kind="contiguous", training=True, affine=True, activation=None,
             residual=False, running=True, momentum=0.1, eps=1e-5, grads=True):
    c = shape[1]
    gen = torch.Generator().manual_seed(1)
    x64 = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 0.5)
    r64 = torch.randn(shape, generator=gen, dtype=torch.float64) if residual else None
    pdt = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    w64 = 1 + 0.3 * torch.randn(c, generator=gen, dtype=torch.float64) if affine else None
    b64 = 0.2 * torch.randn(c, generator=gen, dtype=torch.float64) if affine else None
    rm64 = 0.1 * torch.randn(c, generator=gen, dtype=torch.float64) if running else None
    rv64 = 1 + torch.rand(c, generator=gen, dtype=torch.float64) if running else None
    gy64 = torch.randn(shape, generator=gen, dtype=torch.float64)

    def mk(t, dt, req):
        if t is None:
            return None
        t = t.to(device=device, dtype=dt)
        return t.requires_grad_(req)

    x = layout(x64.to(dtype), kind).to(device).requires_grad_(grads)
    res = layout(r64.to(dtype), kind).to(device).requires_grad_(grads) if residual else None
    w, b = mk(w64, pdt, grads), mk(b64, pdt, grads)
    rm, rv = mk(rm64, pdt, False), mk(rv64, pdt, False)
    out = cnnops.F.batch_norm(x, rm, rv, w, b, training, momentum, eps, activation, res)
    assert out.dtype == dtype and out.shape == x.shape
    if x.dim() in (4, 5):
        ref_strides = F.batch_norm(x.detach(), None if rm is None else rm.clone(), None if rv is None else rv.clone(),
                                   None if w is None else w.detach(), None if b is None else b.detach(), training,
                                   momentum, eps).stride()
        assert significant_strides(out) == tuple(s for s, d in zip(ref_strides, out.shape) if d > 1)

    # float64 reference on the same (rounded) values
    xr = x.detach().double().cpu().requires_grad_(grads)
    rr = res.detach().double().cpu().requires_grad_(grads) if residual else None
    wr = w.detach().double().cpu().requires_grad_(grads) if affine else None
    br = b.detach().double().cpu().requires_grad_(grads) if affine else None
    rmr, rvr = (rm64.clone(), rv64.clone()) if running else (None, None)
    ref = reference(xr, rmr, rvr, wr, br, training, momentum, eps, activation, rr)
    # torch in the same dtype: the rounding scale (reduced precision, cancelling gradients)
    def leaf(t):
        return None if t is None else t.detach().clone().requires_grad_(grads)

    xs, ws, bs, rs = leaf(x), leaf(w), leaf(b), leaf(res)
    same = reference(xs, None if rm64 is None else rm64.to(device, pdt), None if rv64 is None else rv64.to(device, pdt),
                     ws, bs, training, momentum, eps, activation, rs)
    check(out, ref, dtype, "output", same)
    if running:
        check(rm, rmr, pdt, "running_mean")
        check(rv, rvr, pdt, "running_var")
    if grads:
        gy = gy64.to(device=device, dtype=dtype)
        tensors = [t for t in (x, w, b, res) if t is not None]
        got = torch.autograd.grad(out, tensors, gy)
        reft = [t for t in (xr, wr, br, rr) if t is not None]
        want = torch.autograd.grad(ref, reft, gy.double().cpu())
        same_g = torch.autograd.grad(same, [t for t in (xs, ws, bs, rs) if t is not None], gy)
        names = [n for n, t in zip(("input", "weight", "bias", "residual"), (x, w, b, res)) if t is not None]
        for g, r, sg, name, t in zip(got, want, same_g, names, tensors):
            assert g.dtype == t.dtype, f"grad {name} dtype"
            check(g, r, dtype if name in ("input", "residual") else pdt, f"grad {name}", sg)
        if kind == "channels_last":
            assert significant_strides(got[0]) == significant_strides(x)
    return out


SHAPES = [(4, 3), (2, 5, 7), (3, 4, 5, 6), (2, 3, 3, 4, 5), (1, 8, 1, 2), (5, 16, 1, 1), (2, 1, 9, 9),
          (16, 64, 3, 3), (1, 2, 3, 3)]


@pytest.mark.parametrize("device,dtype", list(device_dtypes()))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_parity_shapes(device, dtype, shape, training):
    run_case(device, dtype, shape, training=training)


@pytest.mark.parametrize("device,dtype", list(device_dtypes()))
@pytest.mark.parametrize("kind", ["channels_last", "noncontig"])
@pytest.mark.parametrize("shape", [(3, 5, 7, 6), (2, 4, 3, 5, 2), (8, 33, 5, 5)], ids=lambda s: "x".join(map(str, s)))
def test_parity_layouts(device, dtype, kind, shape):
    run_case(device, dtype, shape, kind=kind, activation="relu", residual=True)
    run_case(device, dtype, shape, kind=kind, training=False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", [None, "relu", "relu6"])
@pytest.mark.parametrize("residual", [False, True], ids=["nores", "res"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
def test_fused_activation_residual(device, activation, residual, training, kind):
    out = run_case(device, torch.float64, (4, 6, 5, 7), kind=kind, training=training, activation=activation,
                   residual=residual)
    if activation == "relu6":
        assert (out > 0).any() and (out == 6).any() or (out < 6).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("affine,running", [(False, True), (True, False), (False, False)])
def test_optional_params_and_stats(device, affine, running):
    run_case(device, torch.float64, (3, 5, 4, 4), affine=affine, running=running, activation="relu", residual=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,kind", [((2, 3, 70, 70), "contiguous"), ((2, 3, 70, 70), "channels_last"),
                                        ((3, 2100, 2, 3), "channels_last"), ((4100, 3), "contiguous"),
                                        ((600, 40, 3, 3), "channels_last")])
def test_multi_block_paths(device, shape, kind):
    """Planes longer than one L1 block, rows wider than one block, many row chunks."""
    run_case(device, torch.float32, shape, kind=kind, activation="relu6", residual=True)


@pytest.mark.parametrize("device", DEVICES)
def test_weight_only_bias_only(device):
    x = torch.randn(4, 3, 5, 5, device=device, dtype=torch.float64)
    w = torch.rand(3, device=device, dtype=torch.float64) + 0.5
    for wt, bt in ((w, None), (None, w)):
        got = cnnops.F.batch_norm(x, None, None, wt, bt, True)
        torch.testing.assert_close(got, F.batch_norm(x, None, None, wt, bt, True))


@settings(max_examples=20)
@given(rank=st.integers(2, 5), n=st.integers(1, 16), c=st.integers(1, 64), h=st.integers(1, 9),
       kind=st.sampled_from(["contiguous", "channels_last", "noncontig"]),
       activation=st.sampled_from([None, "relu", "relu6"]), residual=st.booleans(), training=st.booleans(),
       affine=st.booleans())
def test_hypothesis_parity(rank, n, c, h, kind, activation, residual, training, affine):
    shape = (n, c) + tuple(h + i for i in range(rank - 2))
    if training:
        count = n
        for s in shape[2:]:
            count *= s
        if count == 1:
            shape = (2,) + shape[1:]
    run_case("cpu", torch.float64, shape, kind=kind, activation=activation, residual=residual, training=training,
             affine=affine)


def test_empty_batch_keeps_running_stats():
    x = torch.randn(0, 3, 4, 4)
    rm, rv = torch.zeros(3), torch.ones(3)
    out = cnnops.F.batch_norm(x, rm, rv, training=True)
    assert out.shape == x.shape
    assert torch.equal(rm, torch.zeros(3)) and torch.equal(rv, torch.ones(3))
    x = torch.randn(0, 3, 4, 4, requires_grad=True)
    cnnops.F.batch_norm(x, None, None, torch.ones(3, requires_grad=True), None, True).sum().backward()
    assert x.grad.shape == x.shape


def test_deterministic_any_thread_count():
    """Bitwise equal results with 1 and 2 threads (fixed chunks, fixed merge order)."""
    prev = torch.get_num_threads()
    x = torch.randn(8, 48, 30, 30).contiguous(memory_format=torch.channels_last)
    xs = [x, x.contiguous()]
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs = []
            for xi in xs:
                xi = xi.clone().requires_grad_(True)
                w = torch.ones(48, requires_grad=True)
                rm, rv = torch.zeros(48), torch.ones(48)
                y = cnnops.F.batch_norm(xi, rm, rv, w, None, True, activation="relu")
                y.backward(torch.ones_like(y))
                outs += [y.detach(), rm, rv, xi.grad, w.grad]
            results.append(outs)
    finally:
        torch.set_num_threads(prev)
    for a, b in zip(*results):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- modules

MODULE_OPTIONS = [dict(), dict(momentum=None), dict(affine=False), dict(track_running_stats=False),
                  dict(eps=1e-3, momentum=0.3)]
if "bias" in inspect.signature(torch.nn.BatchNorm2d.__init__).parameters:  # torch >= 2.14's option
    MODULE_OPTIONS.append(dict(bias=False))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("opts", MODULE_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
@pytest.mark.parametrize("cls,act", [("BatchNorm2d", None), ("BatchNormReLU2d", "relu"),
                                     ("BatchNormAddReLU2d", "relu")])
def test_module_training_steps_then_eval(device, opts, cls, act):
    torch.manual_seed(0)
    ours = getattr(cnnops.nn, cls)(6, device=device, dtype=torch.float64, **opts)
    ref = torch.nn.BatchNorm2d(6, device=device, dtype=torch.float64, **opts)
    if ours.weight is not None:
        with torch.no_grad():
            ours.weight.uniform_(0.5, 1.5)
            if ours.bias is not None:
                ours.bias.uniform_(-0.5, 0.5)
    ref.load_state_dict(ours.state_dict())
    assert list(ours.state_dict()) == list(ref.state_dict())
    add = cls == "BatchNormAddReLU2d"
    for step in range(4):
        mode = ("train", "train", "train", "eval")[step]
        ours.train(mode == "train")
        ref.train(mode == "train")
        x = torch.randn(3 + step, 6, 5, 4, device=device, dtype=torch.float64, requires_grad=True)
        r = torch.randn_like(x, requires_grad=True) if add else None
        y = ours(x, r) if add else ours(x)
        z = ref(x) + r if add else ref(x)
        z = torch.relu(z) if act else z
        torch.testing.assert_close(y, z)
        gy = torch.randn_like(y)
        params = [p for p in ours.parameters()]
        got = torch.autograd.grad(y, [x] + params + ([r] if add else []), gy)
        want = torch.autograd.grad(z, [x] + list(ref.parameters()) + ([r] if add else []), gy)
        for g, w_ in zip(got, want):
            torch.testing.assert_close(g, w_)
        for k, v in ref.state_dict().items():
            torch.testing.assert_close(ours.state_dict()[k], v, msg=k)


def test_module_state_dict_moves_between_classes():
    a = cnnops.nn.BatchNorm2d(5)
    a.running_mean.add_(1)
    for cls in (cnnops.nn.BatchNormReLU2d, cnnops.nn.BatchNormAddReLU2d, torch.nn.BatchNorm2d):
        b = cls(5)
        b.load_state_dict(a.state_dict())
        assert torch.equal(b.running_mean, a.running_mean)
    assert isinstance(a, torch.nn.BatchNorm2d)
    assert repr(a) == repr(torch.nn.BatchNorm2d(5))


def test_module_rejects_wrong_rank():
    with pytest.raises(ValueError, match="expected 4D input"):
        cnnops.nn.BatchNorm2d(3)(torch.randn(2, 3, 4))


def test_module_channels_last():
    m = cnnops.nn.BatchNormReLU2d(8)
    x = torch.randn(4, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    y = m(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    ref = torch.relu(torch.nn.BatchNorm2d(8)(x))
    torch.testing.assert_close(y, ref)


# ---------------------------------------------------------------- compile

def _compile_steps(module_ours, module_ref, steps, add=False, backend="aot_eager"):
    compiled = torch.compile(module_ours, backend=backend, fullgraph=True)
    for step in range(steps):
        x = torch.randn(4, module_ref.num_features, 5, 5, requires_grad=True)
        r = torch.randn_like(x) if add else None
        y = compiled(x, r) if add else compiled(x)
        z = module_ref(x)
        if add:
            z = torch.relu(z + r)
        elif isinstance(module_ours, cnnops.nn.BatchNormReLU2d):
            z = torch.relu(z)
        torch.testing.assert_close(y, z)
        gx, = torch.autograd.grad(y.sum(), x)
        rx, = torch.autograd.grad(z.sum(), x)
        torch.testing.assert_close(gx, rx)
    for k, v in module_ref.state_dict().items():
        torch.testing.assert_close(module_ours.state_dict()[k], v, msg=k)


def test_compile_momentum_none_fullgraph():
    """torch's own BatchNorm2d(momentum=None) calls float(num_batches_tracked) and breaks
    the graph; ours computes the factor inside the op."""
    torch._dynamo.reset()
    ours, ref = cnnops.nn.BatchNorm2d(5, momentum=None), torch.nn.BatchNorm2d(5, momentum=None)
    _compile_steps(ours, ref, 4)
    assert ours.num_batches_tracked.item() == 4


@pytest.mark.parametrize("cls", ["BatchNorm2d", "BatchNormReLU2d", "BatchNormAddReLU2d"])
def test_compile_fullgraph_modules(cls):
    torch._dynamo.reset()
    ours, ref = getattr(cnnops.nn, cls)(6), torch.nn.BatchNorm2d(6)
    _compile_steps(ours, ref, 2, add=cls == "BatchNormAddReLU2d")
    ours.eval()
    ref.eval()
    _compile_steps(ours, ref, 1, add=cls == "BatchNormAddReLU2d")


@pytest.mark.slow
def test_compile_inductor():
    torch._dynamo.reset()
    _compile_steps(cnnops.nn.BatchNormReLU2d(4), torch.nn.BatchNorm2d(4), 2, backend="inductor")


# ---------------------------------------------------------------- gradcheck / opcheck

@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("activation,residual", [(None, False), ("relu", True), ("relu6", True)])
@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
def test_gradcheck(single_thread, training, activation, residual, kind):
    torch.manual_seed(3)
    x = layout(torch.randn(3, 4, 3, 2, dtype=torch.float64) * 3, kind).requires_grad_()
    w = (torch.rand(4, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(4, dtype=torch.float64).requires_grad_()
    r = layout(torch.randn(3, 4, 3, 2, dtype=torch.float64), kind).requires_grad_() if residual else None
    rm, rv = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64) + 0.5

    def fn(x, w, b, *r):
        return cnnops.F.batch_norm(x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-5, activation,
                                   r[0] if r else None)

    args = (x, w, b) + ((r,) if residual else ())
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradcheck(lambda *a: cnnops.functional.BatchNormFunction.apply(
        a[0], rm.clone(), rv.clone(), a[1], a[2], training, 0.1, 1e-5, activation, a[3] if residual else None),
        args)


def _opcheck(op, args):
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_autograd_registration",
                                                 "test_faketensor", "test_aot_dispatch_dynamic"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("activation,residual,kind", [(None, False, "contiguous"), ("relu6", True, "channels_last"),
                                                      ("relu", True, "contiguous")])
def test_opcheck_batch_norm(single_thread, device, training, activation, residual, kind):
    x = layout(torch.randn(2, 3, 4, 5, device=device), kind).requires_grad_()
    w = torch.rand(3, device=device).add_(0.5).requires_grad_()
    b = torch.randn(3, device=device, requires_grad=True)
    r = layout(torch.randn(2, 3, 4, 5, device=device), kind).requires_grad_() if residual else None
    rm, rv = torch.zeros(3, device=device), torch.ones(3, device=device)
    nbt = torch.tensor(2, device=device)
    _opcheck(ops.batch_norm.default, (x, w, b, rm, rv, nbt, r, training, None if training else 0.1, 1e-5, activation))
    # The backward op (its double backward: test_double_backward), without inputs that require grad.
    out, mean, invstd = ops.batch_norm(x.detach(), w.detach(), b.detach(), rm, rv, None,
                                       None if r is None else r.detach(), training, 0.1, 1e-5, activation)
    gy = torch.randn_like(out)
    _opcheck(ops.batch_norm_backward.default, (gy, x.detach(), out, w.detach(), b.detach(), mean, invstd, training,
                                               activation, [True, True, True, residual]))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_sync_stages(single_thread, device):
    x = torch.randn(3, 4, 5, 2, device=device)
    stats = ops.batch_norm_stats(x)
    _opcheck(ops.batch_norm_stats.default, (x,))
    gathered = torch.stack([stats, ops.batch_norm_stats(torch.randn(2, 4, 5, 2, device=device))])
    rm, rv = torch.zeros(4, device=device), torch.ones(4, device=device)
    _opcheck(ops.batch_norm_gather_stats.default, (gathered, rm, rv, None, 0.1, 1e-5))
    mean, invstd, count = ops.batch_norm_gather_stats(gathered, None, None, None, 0.1, 1e-5)
    w, b = torch.rand(4, device=device), torch.randn(4, device=device)
    _opcheck(ops.batch_norm_elemt.default, (x, w, b, mean, invstd, None, "relu"))
    out = ops.batch_norm_elemt(x, w, b, mean, invstd, None, "relu")
    gy = torch.randn_like(x)
    _opcheck(ops.batch_norm_backward_reduce.default, (gy, x, out, mean, invstd, w, b, "relu", [True, True]))
    s1, s2, _, _ = ops.batch_norm_backward_reduce(gy, x, out, mean, invstd, w, b, "relu", [False, False])
    _opcheck(ops.batch_norm_backward_elemt.default, (gy, x, out, w, mean, invstd, s1, s2, count, "relu", [True, True]))


@pytest.mark.parametrize("activation", ["relu", "relu6"])
@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backward_mask_recomputed_equals_output_mask(activation, kind, dtype):
    """Without output, the backward recomputes the activation's input from x: bitwise the
    same gradients as with the forward's output (values at the kinks included)."""
    x = layout(torch.randn(4, 6, 5, 7, dtype=dtype), kind)
    x[:, :, 0] = 0.0  # repeated inputs: many equal z values, some at the kink
    w, b = torch.rand(6, dtype=dtype) + 0.5, torch.randn(6, dtype=dtype)
    out, mean, invstd = ops.batch_norm(x, w, b, None, None, None, None, True, 0.1, 1e-5, activation)
    assert (out == 0).any()
    gy = layout(torch.randn(4, 6, 5, 7, dtype=dtype), kind)
    mask = [True, True, True, False]
    a = ops.batch_norm_backward(gy, x, out, w, b, mean, invstd, True, activation, mask)
    r = ops.batch_norm_backward(gy, x, None, w, b, mean, invstd, True, activation, mask)
    for t, u in zip(a[:3], r[:3]):
        assert torch.equal(t, u)


AFFINE = [(True, True), (False, False), (True, False), (False, True)]  # (weight, bias)


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("activation", [None, "relu", "relu6"])
@pytest.mark.parametrize("training", [True, False])
def test_double_backward(training, activation, residual):
    """gradgradcheck (float64) of batch_norm in training (batch statistics) and evaluation
    (running statistics), with each activation, a residual or not, every weight/bias
    combination across the cases, on 4-D and 3-D input: the backward op's derivative is a
    composite of torch ops (ops/batch_norm.py _batch_norm_double_backward)."""
    torch.manual_seed(0)
    case = (2 * int(training) + int(residual) + (activation or "").__len__()) % len(AFFINE)
    for shape in ((3, 4, 5, 2), (4, 3, 6)):
        c = shape[1]
        x = (3 * torch.randn(*shape, dtype=torch.float64)).requires_grad_()
        w = torch.randn(c, dtype=torch.float64, requires_grad=True) if AFFINE[case][0] else None
        b = torch.randn(c, dtype=torch.float64, requires_grad=True) if AFFINE[case][1] else None
        r = torch.randn(*shape, dtype=torch.float64, requires_grad=True) if residual else None
        rm, rv = torch.randn(c, dtype=torch.float64), torch.rand(c, dtype=torch.float64) + 0.5
        present = [t is not None for t in (w, b, r)]

        def f(x, *rest):
            it = iter(rest)
            w_, b_, r_ = (next(it) if p else None for p in present)
            return cnnops.F.batch_norm(x, rm.clone(), rv.clone(), w_, b_, training, 0.1, 1e-5, activation, r_)

        assert torch.autograd.gradgradcheck(f, (x,) + tuple(t for t in (w, b, r) if t is not None))


def test_second_order_gradients_of_a_converted_model():
    """MAML-style: the gradient of a loss after one inner gradient step (create_graph=True),
    through a converted model with BatchNorm in training mode (fused with ReLU by convert),
    equals torch's through the original."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Conv2d(4, 2, 1), torch.nn.BatchNorm2d(2)).double()
    converted = cnnops.convert(copy.deepcopy(model))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) and type(m) is torch.nn.BatchNorm2d
                   for m in converted.modules())
    x, x_query = torch.randn(4, 3, 6, 6, dtype=torch.float64), torch.randn(4, 3, 6, 6, dtype=torch.float64)

    def meta_gradient(m):
        params = dict(m.named_parameters())
        inner = torch.func.functional_call(m, params, (x,)).square().mean()
        grads = torch.autograd.grad(inner, list(params.values()), create_graph=True)
        adapted = {k: p - 0.1 * g for (k, p), g in zip(params.items(), grads)}
        outer = torch.func.functional_call(m, adapted, (x_query,)).square().mean()
        return torch.autograd.grad(outer, list(params.values()))

    for a, e in zip(meta_gradient(converted), meta_gradient(model)):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-10)


def test_sync_stages_match_single_batch():
    """The stages over a batch split 3 + 5 give the statistics of the whole batch (Chan)."""
    x = torch.randn(8, 4, 3, 3, dtype=torch.float64)
    st_ = torch.stack([ops.batch_norm_stats(x[:3]), ops.batch_norm_stats(x[3:])])
    rm, rv = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    mean, invstd, count = ops.batch_norm_gather_stats(st_, rm, rv, None, 0.1, 1e-5)
    assert count.item() == 72
    torch.testing.assert_close(mean, x.mean((0, 2, 3)))
    torch.testing.assert_close(invstd, (x.var((0, 2, 3), unbiased=False) + 1e-5).rsqrt())
    torch.testing.assert_close(rv, 0.9 + 0.1 * x.var((0, 2, 3), unbiased=True))


# ---------------------------------------------------------------- bad input (eager and fake)

def _bad_cases():
    x = torch.randn(2, 3, 4, 4)
    c3, c4 = torch.zeros(3), torch.zeros(4)
    return [
        ("rank", (torch.randn(3), None, None, None, None, None, None, True, 0.1, 1e-5, None), ValueError,
         "expected input to have at least 2 dimensions"),
        ("int input", (torch.ones(2, 3, dtype=torch.long), None, None, None, None, None, None, True, 0.1, 1e-5, None),
         NotImplementedError, "dtype int64"),
        ("weight length", (x, c4, None, None, None, None, None, True, 0.1, 1e-5, None), ValueError,
         r"expected weight to have shape \(3,\)"),
        ("bias length", (x, None, c4, None, None, None, None, True, 0.1, 1e-5, None), ValueError,
         r"expected bias to have shape \(3,\)"),
        ("running_mean length", (x, None, None, c4, c3, None, None, True, 0.1, 1e-5, None), ValueError,
         r"expected running_mean to have shape \(3,\)"),
        ("running_var dtype", (x, None, None, c3, c3.double(), None, None, True, 0.1, 1e-5, None), TypeError,
         "expected running_var to have the same dtype as input"),
        ("pair", (x, None, None, c3, None, None, None, True, 0.1, 1e-5, None), ValueError,
         "both tensors or both None"),
        ("eval without stats", (x, None, None, None, None, None, None, False, 0.1, 1e-5, None), ValueError,
         "when training is False"),
        ("activation", (x, None, None, None, None, None, None, True, 0.1, 1e-5, "gelu"), ValueError,
         "expected activation to be None, 'relu' or 'relu6', got 'gelu'"),
        ("residual shape", (x, None, None, None, None, None, torch.randn(2, 3, 4, 5), True, 0.1, 1e-5, None),
         ValueError, "expected residual to have the same shape as input"),
        ("residual dtype", (x, None, None, None, None, None, x.double(), True, 0.1, 1e-5, None), TypeError,
         "expected residual to have the same dtype as input"),
        ("momentum None", (x, None, None, c3, c3 + 1, None, None, True, None, 1e-5, None), ValueError,
         "needs num_batches_tracked"),
        ("nbt dtype", (x, None, None, c3, c3 + 1, torch.tensor(1.0), None, True, None, 1e-5, None), TypeError,
         "num_batches_tracked to have dtype int64"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
@pytest.mark.parametrize("fake", [False, True], ids=["eager", "fake"])
def test_bad_input(case, fake):
    _, args, exc, msg = case
    if fake:
        with FakeTensorMode(allow_non_fake_inputs=False) as mode:
            args = tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args)
            with pytest.raises(exc, match=msg):
                ops.batch_norm(*args)
    else:
        with pytest.raises(exc, match=msg):
            ops.batch_norm(*args)


def test_bad_input_functional():
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        cnnops.F.batch_norm(torch.randn(1, 3), None, None, training=True)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        cnnops.F.batch_norm(torch.randn(1, 3, 1, 1), torch.zeros(3), torch.ones(3), training=True)


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device or CPU-only build")
def test_bad_input_running_stats_other_device_cuda():
    x = torch.randn(2, 3, 4, 4, device="cuda")
    with pytest.raises(RuntimeError, match="expected running_mean to be on the same device as input"):
        ops.batch_norm(x, None, None, torch.zeros(3), torch.ones(3), None, None, True, 0.1, 1e-5, None)


def test_bad_input_running_stats_other_device_meta():
    """A device mismatch (meta stands in for a second device without a GPU): the fake kernel's check."""
    x = torch.randn(2, 3, 4, 4, device="meta")
    with pytest.raises(RuntimeError, match=r"expected running_mean to be on the same device as input \(meta\)"):
        ops.batch_norm(x, None, None, torch.zeros(3), torch.ones(3), None, None, True, 0.1, 1e-5, None)


def test_backward_bad_input():
    x = torch.randn(2, 3, 4)
    m, s = torch.zeros(3), torch.ones(3)
    with pytest.raises(ValueError, match="expected output to have the same shape"):
        ops.batch_norm_backward(x, x, x[:1], None, None, m, s, True, "relu", [True, False, False, False])
    with pytest.raises(ValueError, match="expected output"):
        ops.batch_norm_backward_reduce(x, x, None, m, s, None, None, "relu", [False, False])
    with pytest.raises(TypeError, match="expected save_mean to have dtype float32"):
        ops.batch_norm_backward(x, x, None, None, None, m.double(), s, True, None, [True, False, False, False])
    with pytest.raises(ValueError, match="expected grad_out to have the same shape"):
        ops.batch_norm_backward(x[:1], x, None, None, None, m, s, True, None, [True, False, False, False])


# ---------------------------------------------------------------- autocast

def test_autocast_keeps_input_dtype_cpu():
    m = cnnops.nn.BatchNormAddReLU2d(4)
    ref = torch.nn.BatchNorm2d(4)
    x = torch.randn(2, 4, 5, 5).bfloat16()
    r = torch.randn(2, 4, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x, r)
        z = ref(x)
    assert y.dtype == torch.bfloat16 and m.running_mean.dtype == torch.float32
    torch.testing.assert_close(y.float(), torch.relu(z.float() + r.bfloat16().float()), atol=0.05, rtol=0.02)
    torch.testing.assert_close(m.running_mean, ref.running_mean)


# ---------------------------------------------------------------- fuse_conv_bn

@pytest.mark.parametrize("groups,cin,cout,bias", [(1, 3, 8, True), (1, 4, 6, False), (2, 4, 6, True),
                                                   (6, 6, 6, False), (4, 4, 8, True)],
                         ids=["plain", "nobias", "grouped", "depthwise", "depthwise-mult2"])
def test_fuse_conv_bn(groups, cin, cout, bias):
    conv = torch.nn.Conv2d(cin, cout, 3, stride=2, padding=1, groups=groups, bias=bias).double()
    bn = torch.nn.BatchNorm2d(cout).double()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    conv.eval()
    bn.eval()
    fused = cnnops.fuse_conv_bn(conv, bn)
    assert isinstance(fused, cnnops.nn.Conv2d) and not fused.training
    x = torch.randn(2, cin, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(fused(x), bn(conv(x)))


def test_fuse_conv_bn_training_mode_rejected():
    conv, bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)
    with pytest.raises(ValueError, match="eval mode"):
        cnnops.fuse_conv_bn(conv, bn)
    conv.eval()
    with pytest.raises(ValueError, match="bn.training=True"):
        cnnops.fuse_conv_bn(conv, bn)
    bn.eval()
    with pytest.raises(ValueError, match="num_features"):
        cnnops.fuse_conv_bn(conv, torch.nn.BatchNorm2d(5).eval())


@pytest.mark.parametrize("device", DEVICES)
def test_reduced_precision_params_in_input_dtype(device):
    """bfloat16 input with bfloat16 weight, bias and running statistics (model.bfloat16())."""
    m = cnnops.nn.BatchNormReLU2d(5).to(device).bfloat16()
    ref = torch.nn.BatchNorm2d(5).to(device).bfloat16()
    x = torch.randn(4, 5, 6, 6, device=device).bfloat16().requires_grad_()
    y = m(x)
    z = torch.relu(ref(x))
    assert y.dtype == torch.bfloat16 and m.running_var.dtype == torch.bfloat16
    torch.testing.assert_close(y, z, atol=0.05, rtol=0.02)
    gx, gw = torch.autograd.grad(y.float().sum(), (x, m.weight))
    rx, rw = torch.autograd.grad(z.float().sum(), (x, ref.weight))
    assert gw.dtype == torch.bfloat16
    torch.testing.assert_close(gx.float(), rx.float(), atol=0.05, rtol=0.05)
    torch.testing.assert_close(gw.float(), rw.float(), atol=0.1, rtol=0.05)
    torch.testing.assert_close(m.running_mean.float(), ref.running_mean.float(), atol=0.01, rtol=0.01)


def test_forward_ad_and_functorch_use_torch_composite():
    """Forward-mode AD and torch.func transforms (which the custom op's autograd does not
    support) fall back to the equivalent torch composite."""
    import torch.autograd.forward_ad as fwad
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    t = torch.randn_like(x)
    w = torch.rand(4, dtype=torch.float64) + 0.5
    with fwad.dual_level():
        y = cnnops.F.batch_norm(fwad.make_dual(x, t), None, None, w, None, True, activation="relu")
        jvp = fwad.unpack_dual(y).tangent
    with fwad.dual_level():
        z = torch.relu(F.batch_norm(fwad.make_dual(x, t), None, None, w, None, True))
        ref = fwad.unpack_dual(z).tangent
    torch.testing.assert_close(jvp, ref)
    g = torch.func.grad(lambda a: cnnops.F.batch_norm(a, None, None, w, None, True, activation="relu6").sum())(x)
    r = torch.func.grad(lambda a: F.relu6(F.batch_norm(a, None, None, w, None, True)).sum())(x)
    torch.testing.assert_close(g, r)
