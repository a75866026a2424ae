"""Reliability across all ops: a fuzz test (valid and invalid arguments, in a long-lived
subprocess so a crash is caught), autograd transforms (double backward, forward-mode AD,
vmap), concurrent calls from several threads, determinism, 64-bit indexing on CUDA."""
import json
import os
import subprocess
import sys
import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import cnnops
from conftest import CUDA_AVAILABLE, assert_close

WORKER = os.path.join(os.path.dirname(__file__), "fuzz_worker.py")


class Worker:
    """The fuzz worker process; restarted after a crash."""

    def __init__(self):
        self.proc = None

    def start(self):
        # the worker imports the same cnnops as this process (a source tree may shadow the install)
        root = os.path.dirname(os.path.dirname(os.path.abspath(cnnops.__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen([sys.executable, WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=env)

    def ask(self, case):
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        self.proc.stdin.write(json.dumps(case) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:  # the worker died on this case
            code = self.proc.wait()
            self.proc = None
            return {"verdict": "crash", "why": f"the worker process died (exit status {code}) on this case"}
        return json.loads(line)

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.close()


def mostly(valid, invalid):
    """Seven draws in eight from `valid`: most cases should reach the kernels."""
    return st.integers(0, 7).flatmap(lambda i: valid if i else invalid)


sizes = mostly(st.integers(1, 9), st.integers(0, 9))
pair = st.tuples(mostly(st.integers(0, 2), st.integers(-1, 3)), st.integers(0, 2))
positive_pair = st.tuples(mostly(st.integers(1, 3), st.integers(-1, 0)), st.integers(1, 3))


def input_shape(channels=st.integers(1, 6)):
    batched = st.tuples(st.integers(0, 3), channels, sizes, sizes)
    return mostly(batched, st.one_of(st.tuples(channels, sizes, sizes),  # unbatched
                                     st.tuples(sizes, sizes)))  # wrong rank


@st.composite
def conv2d_args(draw):
    groups = draw(mostly(st.sampled_from([1, 2, 3]), st.integers(0, 3)))
    cin = draw(mostly(st.integers(1, 3).map(lambda m: m * max(groups, 1)), st.integers(1, 6)))
    shape = draw(input_shape(st.just(cin)))
    k = draw(st.tuples(st.integers(1, 4), st.integers(1, 4)))
    cout = draw(mostly(st.integers(1, 2).map(lambda m: m * max(groups, 1)), st.integers(0, 6)))
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    if mode == "zeros":
        padding = draw(st.one_of(pair, st.sampled_from(["same", "valid"])))
    else:
        padding = draw(st.tuples(st.integers(0, 3), st.integers(0, 3)))
    wcin = draw(mostly(st.just(cin // max(groups, 1)), st.integers(0, 4)))
    return dict(input=shape, weight=(cout, wcin) + k,
                bias=draw(mostly(st.sampled_from([None, (cout,)]), st.just((cout + 1,)))),
                stride=draw(positive_pair), padding=padding, dilation=draw(positive_pair), groups=groups,
                padding_mode=mode, channels_last=draw(st.booleans()), nan=draw(st.booleans()))


@st.composite
def conv_transpose2d_args(draw):
    groups = draw(mostly(st.sampled_from([1, 2]), st.integers(0, 3)))
    cin = draw(mostly(st.integers(1, 3).map(lambda m: m * max(groups, 1)), st.integers(1, 6)))
    shape = draw(input_shape(st.just(cin)))
    wcin = draw(mostly(st.just(cin), st.integers(0, 6)))
    cout_per_group = draw(st.integers(0, 3))
    stride, dilation = draw(positive_pair), draw(positive_pair)
    output_padding = draw(mostly(st.tuples(*[st.integers(0, max(0, max(s, d) - 1)) for s, d in zip(stride, dilation)]),
                                 st.tuples(st.integers(-1, 3), st.integers(0, 3))))
    return dict(input=shape, weight=(wcin, cout_per_group) + draw(st.tuples(st.integers(1, 4), st.integers(1, 4))),
                bias=draw(mostly(st.sampled_from([None, (cout_per_group * max(groups, 1),)]), st.just((7,)))),
                stride=stride, padding=draw(pair), output_padding=output_padding, groups=groups, dilation=dilation,
                channels_last=draw(st.booleans()), nan=draw(st.booleans()))


@st.composite
def depthwise_conv2d_args(draw):
    cin = draw(st.integers(1, 4))
    shape = draw(input_shape(st.just(cin)))
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    if mode == "zeros":
        padding = draw(st.one_of(pair, st.sampled_from(["same", "valid"])))
    else:
        padding = draw(st.tuples(st.integers(0, 3), st.integers(0, 3)))
    mult = draw(mostly(st.integers(1, 3), st.integers(0, 2)))
    k = draw(st.tuples(st.integers(1, 7), st.integers(1, 7)))
    wshape = draw(mostly(st.just((cin * mult, 1) + k), st.tuples(st.integers(0, 6), st.integers(0, 2), *[st.just(v) for v in k])))
    return dict(input=shape, weight=wshape, bias=draw(mostly(st.sampled_from([None, (wshape[0],)]), st.just((9,)))),
                stride=draw(positive_pair), padding=padding, dilation=draw(positive_pair), padding_mode=mode,
                channels_last=draw(st.booleans()), nan=draw(st.booleans()))


@st.composite
def depthwise_separable_conv2d_args(draw):
    a = draw(depthwise_conv2d_args())
    cmid, cout = a["weight"][0], draw(st.integers(1, 4))
    a["pointwise_weight"] = draw(mostly(st.just((cout, cmid, 1, 1)), st.tuples(
        st.integers(0, 3), st.integers(0, 6), st.integers(1, 2), st.just(1))))
    a["pointwise_bias"] = draw(mostly(st.sampled_from([None, (cout,)]), st.just((5,))))
    return a


@st.composite
def spatially_separable_conv2d_args(draw):
    cin, cmid, cout = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    if mode == "zeros":
        padding = draw(st.one_of(pair, st.sampled_from(["same", "valid"])))
    else:
        padding = draw(st.tuples(st.integers(0, 3), st.integers(0, 3)))
    return dict(input=draw(input_shape(st.just(cin))), padding=padding, padding_mode=mode,
                vertical_weight=draw(mostly(st.just((cmid, cin, kh, 1)), st.tuples(
                    st.integers(0, 4), st.integers(0, 5), st.just(kh), st.integers(1, 2)))),
                horizontal_weight=draw(mostly(st.just((cout, cmid, 1, kw)), st.tuples(
                    st.integers(0, 4), st.integers(0, 5), st.integers(1, 2), st.just(kw)))),
                vertical_bias=draw(mostly(st.sampled_from([None, (cmid,)]), st.just((6,)))),
                horizontal_bias=draw(mostly(st.sampled_from([None, (cout,)]), st.just((6,)))),
                stride=draw(positive_pair), dilation=draw(positive_pair),
                channels_last=draw(st.booleans()), nan=draw(st.booleans()))


@st.composite
def batch_norm_args(draw):
    c = draw(st.integers(1, 5))
    rank = draw(mostly(st.integers(2, 5), st.integers(1, 2)))
    shape = (draw(mostly(st.integers(1, 4), st.integers(0, 1))), draw(mostly(st.just(c), st.integers(0, 6))))
    shape += tuple(draw(st.integers(1, 4)) for _ in range(rank - 2))
    return dict(input=shape[:rank], channels=c, no_stats=draw(st.booleans()), affine=draw(st.booleans()),
                training=draw(st.booleans()), eps=draw(st.sampled_from([1e-5, 1e-3])),
                activation=draw(st.sampled_from([None, "relu", "relu6"])),
                channels_last=draw(st.booleans()), nan=draw(mostly(st.just(False), st.just(True))))


@st.composite
def layer_norm_args(draw):
    shape = draw(input_shape())
    trailing = list(shape[len(shape) - draw(st.integers(1, min(3, len(shape)))):])
    normalized = draw(mostly(st.just(trailing), st.lists(st.integers(0, 9), min_size=0, max_size=3)))
    weight = draw(mostly(st.sampled_from([None, normalized]), st.lists(st.integers(0, 9), min_size=1, max_size=2)))
    return dict(input=shape, nan=draw(st.booleans()), normalized_shape=normalized, weight=weight,
                eps=draw(st.sampled_from([1e-5, 0.0, 1.0])))


@st.composite
def pool_window(draw, dilation):
    """kernel, stride, padding (and dilation): mostly a window torch accepts (padding at
    most half the effective kernel), sometimes not."""
    k = draw(st.tuples(mostly(st.integers(1, 4), st.integers(-1, 0)), st.integers(1, 4)))
    d = draw(positive_pair) if dilation else (1, 1)
    valid_pad = st.tuples(*[st.integers(0, max(0, (di * (ki - 1) + 1) // 2)) for ki, di in zip(k, d)])
    window = dict(kernel=k, stride=draw(st.one_of(st.none(), positive_pair)), padding=draw(mostly(valid_pad, pair)))
    if dilation:
        window["dilation"] = d
    return window


pool_common = dict(input=input_shape(), channels_last=st.booleans(), nan=st.booleans(), ceil_mode=st.booleans())
adaptive_size = mostly(st.tuples(st.one_of(st.none(), st.integers(1, 5)), st.integers(1, 5)),
                       st.tuples(st.integers(-1, 5), st.integers(0, 5)))
OP_ARGS = {
    "conv2d": conv2d_args(),
    "conv_transpose2d": conv_transpose2d_args(),
    "depthwise_conv2d": depthwise_conv2d_args(),
    "depthwise_separable_conv2d": depthwise_separable_conv2d_args(),
    "spatially_separable_conv2d": spatially_separable_conv2d_args(),
    "batch_norm": batch_norm_args(),
    "max_pool2d": st.tuples(st.fixed_dictionaries(pool_common), pool_window(True)).map(lambda t: {**t[0], **t[1]}),
    "avg_pool2d": st.tuples(st.fixed_dictionaries(dict(
        pool_common, count_include_pad=st.booleans(), divisor_override=mostly(st.none(), st.integers(-1, 3)))),
        pool_window(False)).map(lambda t: {**t[0], **t[1]}),
    "adaptive_avg_pool2d": st.fixed_dictionaries(dict(
        input=input_shape(), channels_last=st.booleans(), nan=st.booleans(), output_size=adaptive_size)),
    "adaptive_max_pool2d": st.fixed_dictionaries(dict(
        input=input_shape(), channels_last=st.booleans(), nan=st.booleans(), output_size=adaptive_size)),
    "layer_norm": layer_norm_args(),
}


@st.composite
def cases(draw):
    op = draw(st.sampled_from(sorted(OP_ARGS)))
    return {"op": op, "seed": draw(st.integers(0, 2 ** 16)), "dtype": draw(st.sampled_from(["float32", "float64"])),
            "args": draw(OP_ARGS[op])}


@settings(max_examples=int(os.environ.get("CNNOPS_FUZZ_EXAMPLES", 400)), database=None)
@given(case=cases())
def test_fuzz_every_op_matches_torch_or_raises_clearly(worker, case):
    reply = worker.ask(case)
    assert reply["verdict"] in ("match", "both-raised", "stricter", "empty-where-torch-raises", "skip"), \
        f"{case}\n-> {reply['why']}"


# ---------------------------------------------------------------- autograd transforms
def _unary_cases():
    """(name, cnnops fn, torch fn, input) for each op family with a single tensor input."""
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    ln_w = torch.randn(7, dtype=torch.float64)
    c2_w = torch.randn(3, dtype=torch.float64)
    dw = torch.randn(6, 1, 5, 5, dtype=torch.float64)
    pw = torch.randn(4, 6, 1, 1, dtype=torch.float64)
    vw, hw = torch.randn(5, 3, 3, 1, dtype=torch.float64), torch.randn(4, 5, 1, 3, dtype=torch.float64)
    F = torch.nn.functional
    return [
        ("conv2d", lambda t: cnnops.F.conv2d(t, w, padding=1), lambda t: F.conv2d(t, w, padding=1), x),
        ("conv_transpose2d", lambda t: cnnops.F.conv_transpose2d(t, w.transpose(0, 1), stride=2, padding=1),
         lambda t: F.conv_transpose2d(t, w.transpose(0, 1), stride=2, padding=1), x),
        ("depthwise_conv2d", lambda t: cnnops.F.depthwise_conv2d(t, dw, padding=2, padding_mode="reflect"),
         lambda t: F.conv2d(F.pad(t, (2, 2, 2, 2), mode="reflect"), dw, groups=3), x),
        ("depthwise_separable_conv2d",
         lambda t: cnnops.F.depthwise_separable_conv2d(t, dw, pw, padding=2, padding_mode="reflect"),
         lambda t: F.conv2d(F.conv2d(F.pad(t, (2, 2, 2, 2), mode="reflect"), dw, groups=3), pw), x),
        ("spatially_separable_conv2d", lambda t: cnnops.F.spatially_separable_conv2d(t, vw, hw, padding=1),
         lambda t: F.conv2d(F.conv2d(t, vw, padding=(1, 0)), hw, padding=(0, 1)), x),
        ("batch_norm", lambda t: cnnops.F.batch_norm(t, None, None, c2_w, c2_w, training=True, activation="relu"),
         lambda t: F.relu(F.batch_norm(t, None, None, c2_w, c2_w, training=True)), x),
        ("max_pool2d", lambda t: cnnops.F.max_pool2d(t, 2), lambda t: F.max_pool2d(t, 2), x),
        ("avg_pool2d", lambda t: cnnops.F.avg_pool2d(t, 3, 2, 1), lambda t: F.avg_pool2d(t, 3, 2, 1), x),
        ("adaptive_avg_pool2d", lambda t: cnnops.F.adaptive_avg_pool2d(t, 3), lambda t: F.adaptive_avg_pool2d(t, 3),
         x),
        ("adaptive_max_pool2d", lambda t: cnnops.F.adaptive_max_pool2d(t, 3), lambda t: F.adaptive_max_pool2d(t, 3),
         x),
        ("layer_norm", lambda t: cnnops.F.layer_norm(t, (7,), ln_w), lambda t: F.layer_norm(t, (7,), ln_w), x),
        ("layer_norm2d", lambda t: cnnops.F.layer_norm2d(t, c2_w),
         lambda t: F.layer_norm(t.permute(0, 2, 3, 1), (3,), c2_w, eps=1e-6).permute(0, 3, 1, 2), x),
    ]


UNARY = _unary_cases()
IDS = [c[0] for c in UNARY]


def _works_or_names_op(name, fn):
    """Runs fn; returns its result, or None after checking the error names the op."""
    try:
        return fn()
    except (RuntimeError, NotImplementedError) as e:
        assert name in str(e) and "cnnops" in str(e), f"unclear error for {name}: {e}"
        return None


@pytest.mark.parametrize("name,ours,theirs,x", UNARY, ids=IDS)
def test_double_backward(name, ours, theirs, x):
    def second(fn):
        t = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(fn(t).square().sum(), t, create_graph=True)
        (gg,) = torch.autograd.grad(g.sin().sum(), t)
        return gg

    got = _works_or_names_op(name, lambda: second(ours))
    if got is not None:
        assert_close(got, second(theirs))


@pytest.mark.parametrize("name,ours,theirs,x", UNARY, ids=IDS)
def test_forward_mode_ad(name, ours, theirs, x):
    import torch.autograd.forward_ad as fwAD
    tangent = torch.randn_like(x)

    def jvp(fn):
        with fwAD.dual_level():
            t = fwAD.unpack_dual(fn(fwAD.make_dual(x, tangent))).tangent
        assert t is not None, f"{name}: forward-mode AD dropped the tangent without an error"
        return t

    got = _works_or_names_op(name, lambda: jvp(ours))
    if got is not None:
        assert_close(got, jvp(theirs))
    # torch.func.jvp too (a tangent of zeros, not None, is what a dropped one looks like there)
    got = _works_or_names_op(name, lambda: torch.func.jvp(ours, (x,), (tangent,))[1])
    if got is not None:
        assert_close(got, torch.func.jvp(theirs, (x,), (tangent,))[1])


@pytest.mark.parametrize("name,ours,theirs,x", UNARY, ids=IDS)
def test_vmap(name, ours, theirs, x):
    batched = torch.stack([x, 2 * x, -x])
    got = _works_or_names_op(name, lambda: torch.func.vmap(ours)(batched))
    if got is not None:
        assert_close(got, torch.func.vmap(theirs)(batched))


# ---------------------------------------------------------------- threads, determinism
def _modules():
    torch.manual_seed(0)
    return [
        torch.nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"),
        torch.nn.ConvTranspose2d(8, 4, 4, 2, 1),
        torch.nn.Conv2d(8, 16, 7, padding=3, groups=8),
        torch.nn.BatchNorm2d(8),
        torch.nn.MaxPool2d(3, 2, 1),
        torch.nn.AvgPool2d(3, 2, 1),
        torch.nn.AdaptiveAvgPool2d(5),
        torch.nn.LayerNorm(20),
    ]


@pytest.mark.parametrize("module", _modules(), ids=lambda m: type(m).__name__)
def test_same_module_from_four_threads(module):
    ours = cnnops.convert(module)
    inputs = [torch.randn(2, 8, 20, 20) * (i + 1) for i in range(4)]
    results, errors = [None] * 4, []

    def run(i):
        try:
            for _ in range(3):
                x = inputs[i].clone().requires_grad_()
                out = ours(x)
                out.sum().backward()
                results[i] = (out.detach(), x.grad)
        except Exception as e:  # reported below, in the main thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for i in range(4):
        x = inputs[i].clone().requires_grad_()
        want = module(x)
        want.sum().backward()
        assert_close(results[i][0], want)
        assert_close(results[i][1], x.grad)


@pytest.fixture
def deterministic():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


@pytest.mark.parametrize("module", _modules(), ids=lambda m: type(m).__name__)
def test_bitwise_identical_runs_when_deterministic(module, deterministic):
    ours = cnnops.convert(module)
    x0 = torch.randn(4, 8, 20, 20)

    def run():
        x = x0.clone().requires_grad_()
        out = ours(x)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return [out.detach(), x.grad] + [p.grad.clone() for p in ours.parameters()]

    first = run()
    ours.zero_grad()
    second = run()
    for a, b in zip(first, second):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- 64-bit indexing (CUDA)
@pytest.mark.cuda
@pytest.mark.skipif(not CUDA_AVAILABLE, reason="no CUDA device visible")
def test_cuda_tensor_over_2_31_elements():
    free, _ = torch.cuda.mem_get_info()
    if free < 20 * 2 ** 30:
        pytest.skip("needs 20 GiB of free GPU memory")
    x = torch.randn(1, 2, 32768, 32800, device="cuda", dtype=torch.float16)  # 2^31 + 2^21 elements
    assert x.numel() > 2 ** 31
    tail = x[..., -64:, -64:]  # windows there have flat offsets past 2^31
    got = cnnops.F.max_pool2d(x, 2)[..., -32:, -32:]
    assert torch.equal(got, torch.nn.functional.max_pool2d(tail, 2))
    got = cnnops.F.avg_pool2d(x, 2)[..., -32:, -32:]
    assert_close(got, torch.nn.functional.avg_pool2d(tail, 2))
    del got
    rows = x.view(-1, 32800)
    got = cnnops.F.layer_norm(rows, (32800,))[-4:]
    assert_close(got, torch.nn.functional.layer_norm(rows[-4:], (32800,)))
