"""The functionals' three ways into an op (cnnops/functional.py _call_op, _with_autograd):
below the Autograd key where no gradient can flow; in plain eager mode through a C++
autograd node for the convolutions (csrc/conv_eager_autograd.cpp) and a lean
torch.autograd.Function (ops/_common.py register_autograd) for the others; and through the
op's register_autograd kernel otherwise. The first two exist to cut host overhead (launch-bound
CUDA shapes pay it in full); they must give exactly what the op gives."""
import copy

import pytest
import torch

import cnnops
from conftest import CUDA_AVAILABLE, assert_close, leaf, rand

F = cnnops.F
OPS = torch.ops.cnnops

# name: (functional call, the same through the op, tensor shapes (input, weights..., biases...))
CASES = {
    "conv2d": (lambda x, w, b: F.conv2d(x, w, b, 2, 1, 1, 2, "reflect"),
               lambda x, w, b: OPS.conv2d(x, w, b, [2, 2], [1, 1, 1, 1], [1, 1], 2, "reflect"),
               [(2, 4, 7, 6), (6, 2, 3, 3), (6,)]),
    "depthwise_conv2d": (lambda x, w, b: F.depthwise_conv2d(x, w, b, 1, 2, 2, "circular"),
                         lambda x, w, b: OPS.depthwise_conv2d(x, w, b, [1, 1], [2, 2, 2, 2], [2, 2], "circular"),
                         [(2, 3, 8, 7), (6, 1, 3, 3), (6,)]),
    "conv2d groups == C": (lambda x, w, b: F.conv2d(x, w, b, 1, 1, 1, 3),
                           lambda x, w, b: OPS.depthwise_conv2d(x, w, b, [1, 1], [1, 1, 1, 1], [1, 1], "zeros"),
                           [(1, 3, 6, 6), (3, 1, 3, 3), (3,)]),
    "conv_transpose2d": (lambda x, w, b: F.conv_transpose2d(x, w, b, 2, 1, 1),
                         lambda x, w, b: OPS.conv_transpose2d(x, w, b, [2, 2], [1, 1], [1, 1], 1, [1, 1]),
                         [(2, 4, 5, 5), (4, 3, 3, 3), (3,)]),
    "depthwise_separable_conv2d": (
        lambda x, w1, w2, b1, b2: F.depthwise_separable_conv2d(x, w1, w2, b1, b2, 1, 1, 1, "replicate"),
        lambda x, w1, w2, b1, b2: OPS.depthwise_separable_conv2d(x, w1, b1, w2, b2, [1, 1], [1, 1, 1, 1], [1, 1],
                                                                 "replicate"),
        [(2, 3, 6, 5), (6, 1, 3, 3), (4, 6, 1, 1), (6,), (4,)]),
    "spatially_separable_conv2d": (
        lambda x, w1, w2, b1, b2: F.spatially_separable_conv2d(x, w1, w2, b1, b2, 1, 1, 1),
        lambda x, w1, w2, b1, b2: OPS.spatially_separable_conv2d(x, w1, b1, w2, b2, [1, 1], [1, 1, 1, 1], [1, 1],
                                                                 "zeros"),
        [(2, 3, 6, 5), (5, 3, 3, 1), (4, 5, 1, 3), (5,), (4,)]),
    "max_pool2d": (lambda x: F.max_pool2d(x, 3, 2, 1, 1, True),
                   lambda x: OPS.max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], True, True)[0],
                   [(2, 3, 9, 8)]),
    "avg_pool2d": (lambda x: F.avg_pool2d(x, 3, 2, 1, False, False),
                   lambda x: OPS.avg_pool2d(x, [3, 3], [2, 2], [1, 1], False, False, None),
                   [(2, 3, 9, 8)]),
    "adaptive_avg_pool2d": (lambda x: F.adaptive_avg_pool2d(x, (3, 2)),
                            lambda x: OPS.adaptive_avg_pool2d(x, [3, 2]), [(2, 3, 7, 5)]),
    "adaptive_max_pool2d": (lambda x: F.adaptive_max_pool2d(x, (3, 2)),
                            lambda x: OPS.adaptive_max_pool2d(x, [3, 2])[0], [(2, 3, 7, 5)]),
    "layer_norm": (lambda x, w, b: F.layer_norm(x, (5, 4), w, b),
                   lambda x, w, b: OPS.layer_norm(x, [5, 4], w, b, 1e-5)[0], [(3, 5, 4), (5, 4), (5, 4)]),
    "batch_norm": (lambda x, w, b: F.batch_norm(x, None, None, w, b, True, activation="relu"),
                   lambda x, w, b: OPS.batch_norm(x, w, b, None, None, None, None, True, 0.1, 1e-5, "relu")[0],
                   [(3, 4, 5, 2), (4,), (4,)]),
    "layer_norm2d": (lambda x, w, b: F.layer_norm2d(x, w, b),
                     lambda x, w, b: OPS.layer_norm2d(x, w, b, 1e-6)[0], [(2, 4, 3, 5), (4,), (4,)]),
}


def _devices():
    return ["cpu"] + (["cuda"] if CUDA_AVAILABLE else [])


def _tensors(shapes, device, dtype=torch.float64):
    torch.manual_seed(0)
    return [leaf(rand(*s, dtype=dtype, device=device)) for s in shapes]


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("name", list(CASES))
def test_eager_function_matches_the_op(name, device):
    """Output and every gradient through the eager Function equal (bitwise: same kernels)
    those through the op's register_autograd kernel; the graph node is the eager one."""
    functional, through_op, shapes = CASES[name]
    tensors = _tensors(shapes, device)
    out = functional(*tensors)
    assert "Eager" in out.grad_fn.name(), out.grad_fn.name()  # a Python Function or the C++ ConvEagerFunction
    ref = through_op(*tensors)
    if name != "batch_norm":  # whose Autograd-key kernel is BatchNormEager itself
        assert "Eager" not in ref.grad_fn.name()
    assert torch.equal(out, ref) and out.stride() == ref.stride()
    go = rand(*out.shape, device=device)
    n = len(tensors)
    for subset in [range(n), [0]] + ([[1], range(1, n)] if n > 1 else []):
        wanted = [tensors[i] for i in subset]
        grads = torch.autograd.grad(functional(*tensors), wanted, go)
        grads_ref = torch.autograd.grad(through_op(*tensors), wanted, go)
        for i, a, e in zip(subset, grads, grads_ref):
            assert torch.equal(a, e), f"{name}: gradient {i}"


@pytest.mark.parametrize("name", [name for name in CASES if name != "batch_norm"])  # batch_norm: no double backward
def test_eager_function_double_backward(name):
    """The eager backward calls the gradient ops below autograd only when no graph is being
    recorded: with create_graph=True they record, and second derivatives are right."""
    functional, _, shapes = CASES[name]
    tensors = _tensors([(1,) + s[1:] if i == 0 else s for i, s in enumerate(shapes)], "cpu")
    assert torch.autograd.gradgradcheck(functional, tensors)


@pytest.mark.parametrize("name", list(CASES))
def test_no_graph_where_no_gradient_flows(name):
    """Below the Autograd key where nothing requires grad or grad mode is off: no graph."""
    functional, through_op, shapes = CASES[name]
    tensors = [t.detach() for t in _tensors(shapes, "cpu")]
    out = functional(*tensors)
    assert out.grad_fn is None and torch.equal(out, through_op(*tensors))
    with torch.no_grad():
        assert functional(*[t.requires_grad_() for t in tensors]).grad_fn is None


@pytest.mark.parametrize("name", ["conv2d", "depthwise_conv2d", "depthwise_separable_conv2d"])
def test_compile_takes_the_op(name):
    """torch.compile traces the op's register_autograd kernel, not the eager Function."""
    functional, through_op, shapes = CASES[name]
    tensors = _tensors(shapes, "cpu")
    traced = []

    def backend(gm, example_inputs):  # dynamo's graph, then AOTAutograd as aot_eager does
        traced.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        from functorch.compile import make_boxed_func
        from torch._dynamo.backends.common import aot_autograd
        return aot_autograd(fw_compiler=lambda g, _: make_boxed_func(g.forward))(gm, example_inputs)

    torch._dynamo.reset()
    compiled = torch.compile(functional, fullgraph=True, backend=backend)
    out = compiled(*tensors)
    assert traced == [f"cnnops.{name}"], traced
    go = rand(*out.shape)
    grads = torch.autograd.grad(out, tensors, go)
    grads_ref = torch.autograd.grad(through_op(*tensors), tensors, go)
    for a, e in zip(grads, grads_ref):
        assert torch.allclose(a, e, rtol=1e-12, atol=1e-12)
    torch._dynamo.reset()


@pytest.mark.parametrize("name", list(CASES))
def test_forward_ad_with_tensors_that_require_grad(name):
    """Forward AD where the operands also require grad (a module's parameters always do):
    the output's primal and tangent equal those of the no-grad path, and reverse-mode
    gradients flow through the primal. (The ops' autograd has no jvp: this used to raise.)"""
    import torch.autograd.forward_ad as fwAD
    functional, _, shapes = CASES[name]
    tensors = _tensors(shapes, "cpu")
    tangent = torch.randn_like(tensors[0])
    with fwAD.dual_level():
        plain = functional(fwAD.make_dual(tensors[0].detach(), tangent), *[t.detach() for t in tensors[1:]])
        expected_primal, expected_tangent = fwAD.unpack_dual(plain)
        out = functional(fwAD.make_dual(tensors[0], tangent), *tensors[1:])
        primal, out_tangent = fwAD.unpack_dual(out)
        assert torch.allclose(primal, expected_primal, rtol=1e-12, atol=1e-12)
        assert torch.allclose(out_tangent, expected_tangent, rtol=1e-12, atol=1e-12)
        grads = torch.autograd.grad(primal.sum(), tensors)
    expected = torch.autograd.grad(functional(*tensors).sum(), tensors)
    for i, (a, e) in enumerate(zip(grads, expected)):
        assert torch.allclose(a, e, rtol=1e-12, atol=1e-12), f"{name}: gradient {i}"


# ---------------------------------------------------------------- the convolutions' C++ eager path
# conv2d, depthwise_conv2d and conv_transpose2d record csrc/conv_eager_autograd.cpp's node
# (through the private ops cnnops::_<family>_eager) instead of a Python Function.

CONV_CASES = ["conv2d", "depthwise_conv2d", "conv2d groups == C", "conv_transpose2d"]


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("name", CONV_CASES)
def test_conv_eager_node_is_cpp(name, device):
    functional, _, shapes = CASES[name]
    out = functional(*_tensors(shapes, device))
    assert "ConvEagerFunction" in out.grad_fn.name(), out.grad_fn.name()


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("name", CONV_CASES)
def test_conv_eager_channels_last(name, device):
    """channels_last input with a grad_output that is not channels_last (the depthwise CPU
    backward makes one channels_last copy for both gradients): values and strides equal
    the op path's; the gradients take the forward's layout."""
    functional, through_op, shapes = CASES[name]
    tensors = _tensors(shapes, device)
    x = leaf(tensors[0].detach().contiguous(memory_format=torch.channels_last))
    tensors = [x] + tensors[1:]
    out, ref = functional(*tensors), through_op(*tensors)
    assert torch.equal(out, ref) and out.stride() == ref.stride()
    go = rand(*out.shape, device=device)  # NCHW
    grads = torch.autograd.grad(out, tensors, go)
    grads_ref = torch.autograd.grad(ref, tensors, go)
    for i, (a, e) in enumerate(zip(grads, grads_ref)):
        assert torch.equal(a, e) and a.stride() == e.stride(), f"{name}: gradient {i}"
    assert grads[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name", CONV_CASES)
def test_conv_eager_backward_twice_and_saved_tensor_hooks(name):
    """retain_graph: a second backward gives the same gradients; saved-tensor hooks see what
    the node saves (input and weight, each only where the other needs a gradient)."""
    functional, _, shapes = CASES[name]
    tensors = _tensors(shapes, "cpu")
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t.shape) or t, lambda t: t):
        out = functional(*tensors)
    assert sorted(packed) == sorted([tensors[0].shape, tensors[1].shape])
    go = rand(*out.shape)
    first = torch.autograd.grad(out, tensors, go, retain_graph=True)
    second = torch.autograd.grad(out, tensors, go)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    packed.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t.shape) or t, lambda t: t):
        functional(tensors[0].detach(), *tensors[1:])  # input needs no gradient: weight not saved
    assert packed == [tensors[0].shape]


@pytest.mark.parametrize("name", CONV_CASES)
def test_conv_eager_errors_match_the_op(name):
    """Bad arguments raise the op's own error, whether or not a gradient can flow."""
    functional, _, shapes = CASES[name]
    tensors = _tensors(shapes, "cpu")
    bad = tensors[1].float()  # a float32 weight for a float64 input
    with pytest.raises(TypeError) as no_grad_error:
        functional(tensors[0].detach(), bad.detach(), tensors[2].detach())
    with pytest.raises(TypeError) as grad_error:
        functional(tensors[0], leaf(bad), tensors[2])
    assert "weight" in str(grad_error.value) and str(grad_error.value) == str(no_grad_error.value)


@pytest.mark.parametrize("name", list(CASES))
def test_torch_func_gradients(name):
    """torch.func.grad, and per-sample gradients through vmap(grad), equal autograd's.
    torch.library's own autograd kernel refuses torch.func's grad transforms; the functionals
    go through the ops' register_autograd Functions there (ops/_common.py autograd_call)."""
    functional, _, shapes = CASES[name]
    tensors = _tensors(shapes, "cpu")

    def loss(*t):
        return functional(*t).square().sum()

    grads = torch.func.grad(loss, argnums=tuple(range(len(tensors))))(*tensors)
    for a, e in zip(grads, torch.autograd.grad(loss(*tensors), tensors)):
        assert_close(a, e)
    if len(tensors) > 1:  # the second operand's gradient per sample of the first
        x, rest = tensors[0].detach(), tensors[1:]
        per_sample = torch.func.vmap(torch.func.grad(lambda xi, *r: loss(xi.unsqueeze(0), *r), argnums=1),
                                     in_dims=(0,) + (None,) * len(rest))(x, *rest)
        loop = [torch.autograd.grad(loss(x[i:i + 1], *rest), rest[0])[0] for i in range(x.shape[0])]
        assert_close(per_sample, torch.stack(loop))


@pytest.mark.parametrize("name", CONV_CASES)
def test_torch_func_second_order(name):
    """grad of grad under torch.func: the backward's gradient ops go through their own
    register_autograd Functions, whose derivatives are the convolutions again."""
    functional, _, shapes = CASES[name]
    x, w, *rest = _tensors(shapes, "cpu")

    def loss(x, w):
        return functional(x, w, *rest).square().sum()

    got = torch.func.grad(lambda x, w: torch.func.grad(loss)(x, w).square().sum(), argnums=1)(x, w)
    (gx,) = torch.autograd.grad(loss(x, w), x, create_graph=True)
    assert_close(got, torch.autograd.grad(gx.square().sum(), w)[0])


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # vmap's loop over the ops
@pytest.mark.parametrize("name", list(CASES))
def test_torch_func_hessian_vector_product(name):
    """Forward mode over reverse mode: torch.func.jvp of torch.func.grad (a Hessian-vector
    product, over every operand at once) equals reverse mode twice. The backward's gradient
    ops meet the tangents inside the ops' transformable Functions, whose jvp
    (register_autograd) this runs; before it, torch raised "You must implement the jvp"."""
    functional, _, shapes = CASES[name]
    tensors = tuple(t.detach() for t in _tensors(shapes, "cpu"))
    directions = tuple(torch.randn_like(t) for t in tensors)
    argnums = tuple(range(len(tensors)))

    def loss(*t):
        return functional(*t).sin().sum()  # not quadratic: the Hessian depends on the point

    _, got = torch.func.jvp(torch.func.grad(loss, argnums=argnums), tensors, directions)
    leaves = [leaf(t) for t in tensors]
    grads = torch.autograd.grad(loss(*leaves), leaves, create_graph=True)
    directional = sum((g * d).sum() for g, d in zip(grads, directions))
    expected = torch.autograd.grad(directional, leaves, allow_unused=True)
    for i, (a, e) in enumerate(zip(got, expected)):
        assert_close(a, torch.zeros_like(a) if e is None else e, msg=f"{name}: operand {i}")


@pytest.mark.parametrize("name", list(CASES))
def test_forward_mode_hessian(name):
    """torch.autograd.functional.hessian's forward-mode outer Jacobian (forward AD over a
    backward) equals its reverse-mode one, over the input and every weight and bias (the
    cross blocks need the weight's tangent inside the backward's grad_input): the operands
    are saved as dual tensors and the backward's gradient ops go through the transformable
    Functions' jvp. Before, torch raised "You must implement the jvp function" there."""
    functional, _, shapes = CASES[name]
    x, *rest = (t.detach() for t in _tensors(shapes, "cpu"))
    operands = (x[:1], *rest)  # a 1-sample input keeps the Hessian small

    def loss(x, *rest):
        return functional(x.sin(), *rest).sin().sum()

    got = torch.autograd.functional.hessian(loss, operands, vectorize=True, outer_jacobian_strategy="forward-mode")
    expected = torch.autograd.functional.hessian(loss, operands)
    for i, (row, row_expected) in enumerate(zip(got, expected)):
        for j, (a, e) in enumerate(zip(row, row_expected)):
            assert_close(a, e, msg=f"{name}: block ({i}, {j})")


@pytest.mark.filterwarnings("ignore:There is a performance drop")
def test_torch_func_hessian_of_a_converted_model():
    """torch.func.hessian of a loss in the input, and a Hessian-vector product in the
    parameters, through a converted model equal torch's through the original."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1, groups=2), torch.nn.Tanh(), torch.nn.MaxPool2d(2, ceil_mode=True),
        torch.nn.ConvTranspose2d(4, 4, 2, stride=2), torch.nn.Conv2d(4, 3, (3, 1), padding=(1, 0)), torch.nn.Tanh(),
        torch.nn.AvgPool2d(2), torch.nn.AdaptiveMaxPool2d(1)).double()
    converted = cnnops.convert(copy.deepcopy(model))
    assert type(converted[0]) is not torch.nn.Conv2d
    x = rand(1, 2, 5, 5)
    params = {k: v.detach() for k, v in model.named_parameters()}
    directions = {k: torch.randn_like(v) for k, v in params.items()}

    def input_loss(m):
        return lambda x: m(x.sin()).square().sum()

    def param_loss(m):
        return lambda p: torch.func.functional_call(m, p, (x,)).square().sum()

    assert_close(torch.func.hessian(input_loss(converted))(x), torch.func.hessian(input_loss(model))(x))
    got = torch.func.jvp(torch.func.grad(param_loss(converted)), (params,), (directions,))[1]
    expected = torch.func.jvp(torch.func.grad(param_loss(model)), (params,), (directions,))[1]
    for k in params:
        assert_close(got[k], expected[k], msg=k)


@pytest.mark.parametrize("name", CONV_CASES + ["depthwise_separable_conv2d", "spatially_separable_conv2d"])
def test_batched_grads_with_channels_last(name):
    """is_grads_batched backward of a channels_last convolution: the backward's one
    channels_last copy of grad_output is skipped for a tensor of vmap (whose layout cannot be
    asked for); the gradients equal those of one backward per row."""
    functional, _, shapes = CASES[name]
    x, *rest = _tensors(shapes, "cpu")
    x = leaf(x.detach().contiguous(memory_format=torch.channels_last))
    wanted = (x, rest[0])
    out = functional(x, *rest)
    gos = rand(3, *out.shape)
    got = torch.autograd.grad(out, wanted, gos, is_grads_batched=True)
    rows = [torch.autograd.grad(functional(x, *rest), wanted, go) for go in gos]
    for i, g in enumerate(got):
        assert_close(g, torch.stack([r[i] for r in rows]))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated, and still used
@pytest.mark.parametrize("module", ["depthwise", "conv2d", "max_pool2d", "separable"])
def test_jit_trace_check_passes(module):
    """torch.jit.trace's check re-runs the module without grad, where the functionals call
    the op: with grad they record the op too (not the eager path's private op), so the two
    graphs agree and the trace check passes."""
    torch.manual_seed(0)
    m = {"depthwise": lambda: cnnops.nn.Conv2d(4, 4, 3, padding=1, groups=4),
         "conv2d": lambda: cnnops.nn.Conv2d(4, 6, 3),
         "max_pool2d": lambda: torch.nn.Sequential(cnnops.nn.Conv2d(4, 4, 1), cnnops.nn.MaxPool2d(2)),
         "separable": lambda: cnnops.nn.DepthwiseSeparableConv2d(4, 6, 3, padding=1)}[module]()
    x = torch.randn(2, 4, 8, 8)
    traced = torch.jit.trace(m, (x,))
    assert_close(traced(x), m(x))
