"""Whole models, converted with cnnops.convert, against the unconverted torch.nn originals:
outputs, input and parameter gradients, BatchNorm running statistics over training steps;
optimizers built before conversion; torch.compile; torch.export; state_dict round trips."""
import copy

import pytest
import torch

import cnnops
from cnnops.bench.models import MODELS, ChannelsFirstLayerNorm
from cnnops.conversion import TWINS
from conftest import DEVICES, assert_close

MODEL_NAMES = list(MODELS)


def build(name, dtype=torch.float64, device="cpu", seed=0):
    torch.manual_seed(seed)
    builder, shape = MODELS[name]
    model = builder().to(device=device, dtype=dtype)
    x = torch.randn(shape, dtype=dtype, device=device)
    return model, x


def train_steps(model, x, optimizer, steps=3):
    """Runs `steps` SGD steps on a fixed loss; returns what each step produced."""
    record = []
    named = getattr(model, "_orig_mod", model)  # the module behind a torch.compile wrapper
    for step in range(steps):
        xi = (x * (1 + 0.1 * step)).requires_grad_()
        optimizer.zero_grad()
        out = model(xi)
        loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view_as(out)).sum()
        loss = loss + 0.5 * out.square().mean()
        loss.backward()
        record.append({
            "out": out.detach().clone(),
            "grad_input": xi.grad.clone(),
            "grads": {n: p.grad.clone() for n, p in named.named_parameters() if p.grad is not None},
        })
        optimizer.step()
    record.append({"buffers": {n: b.clone() for n, b in named.named_buffers()},
                   "params": {n: p.detach().clone() for n, p in named.named_parameters()}})
    return record


def assert_records_equal(got, want, dtype=None):
    """dtype: compare with that dtype's tolerances (default: the tensors' own)."""
    assert len(got) == len(want)
    for step, (g, w) in enumerate(zip(got, want)):
        assert g.keys() == w.keys()
        for key in g:
            if isinstance(g[key], dict):
                assert g[key].keys() == w[key].keys(), f"step {step} {key}"
                for name in g[key]:
                    if not g[key][name].is_floating_point():  # num_batches_tracked
                        assert torch.equal(g[key][name], w[key][name]), f"step {step} {key} {name}"
                        continue
                    assert_close(g[key][name], w[key][name], dtype=dtype, msg=f"step {step} {key} {name}")
            else:
                assert_close(g[key], w[key], dtype=dtype, msg=f"step {step} {key}")


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_convert_swaps_exact_classes_and_reports(name):
    model, _ = build(name)
    converted, report = cnnops.convert(model, return_report=True)
    assert converted is not model
    swapped = 0
    for (mod_name, original), (_, new) in zip(model.named_modules(), converted.named_modules()):
        twin = TWINS.get(type(original))
        if twin is not None:
            assert type(new) is twin, mod_name
            swapped += 1
        else:
            assert type(new) is type(original), mod_name
    assert swapped == len(report.replaced) > 0
    left = {n for n, _ in report.left}
    for mod_name, module in model.named_modules():
        if isinstance(module, ChannelsFirstLayerNorm):
            assert mod_name in left
    # the original is untouched
    assert all(type(m).__module__.startswith("torch") or "bench" in type(m).__module__ for m in model.modules())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_training_steps_match_torch_float64(name):
    reference, x = build(name)
    converted = cnnops.convert(reference)
    want = train_steps(reference, x, sgd(reference))
    got = train_steps(converted, x, sgd(converted))
    assert_records_equal(got, want)
    # eval mode, with the running statistics the training steps left
    reference.eval(), converted.eval()
    with torch.no_grad():
        assert_close(converted(x), reference(x))


@pytest.mark.parametrize("name", ["resnet", "mobilenet_v2"])
def test_optimizer_built_before_inplace_conversion_keeps_training(name):
    reference, x = build(name)
    model = copy.deepcopy(reference)
    optimizer = sgd(model)  # built before conversion
    params_before = [id(p) for p in model.parameters()]
    assert cnnops.convert(model, inplace=True) is model
    assert [id(p) for p in model.parameters()] == params_before
    assert_records_equal(train_steps(model, x, optimizer), train_steps(reference, x, sgd(reference)))


def test_hooks_survive_conversion():
    model, x = build("resnet")
    seen = []
    model[0].register_forward_hook(lambda mod, inp, out: seen.append(type(mod)))
    cnnops.convert(model, inplace=True)
    model(x)
    assert seen == [cnnops.nn.Conv2d]


def test_parametrizations_survive_conversion():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1).double()
    torch.nn.utils.parametrizations.weight_norm(conv)
    model = torch.nn.Sequential(conv)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    want = model(x)
    cnnops.convert(model, inplace=True)
    assert isinstance(model[0], cnnops.nn.Conv2d)
    assert torch.nn.utils.parametrize.is_parametrized(model[0], "weight")
    assert_close(model(x), want)
    cnnops.revert(model)
    assert type(model[0]).__bases__ == (torch.nn.Conv2d,)
    assert torch.nn.utils.parametrize.is_parametrized(model[0], "weight")
    assert_close(model(x), want)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_state_dict_round_trips(name):
    reference, x = build(name)
    converted = cnnops.convert(reference)
    train_steps(converted, x, sgd(converted), steps=1)  # make the converted state differ
    fresh, _ = build(name, seed=1)
    fresh.load_state_dict(converted.state_dict(), strict=True)
    assert converted.state_dict().keys() == reference.state_dict().keys()
    fresh.eval(), converted.eval()
    with torch.no_grad():
        assert_close(converted(x), fresh(x))


def test_revert_restores_torch_classes():
    reference, x = build("resnet")
    converted = cnnops.convert(reference)
    reverted = cnnops.revert(converted)
    assert [type(m) for m in reverted.modules()] == [type(m) for m in reference.modules()]
    assert_close(reverted(x), reference(x))


def test_subclass_with_own_forward_is_left_and_reported():
    class MyConv(torch.nn.Conv2d):
        def forward(self, x):
            return super().forward(x) * 2

    class Tagged(torch.nn.MaxPool2d):  # no forward of its own: its class is still kept
        pass

    model = torch.nn.Sequential(MyConv(3, 3, 1), Tagged(2), torch.nn.Conv2d(3, 3, 1))
    converted, report = cnnops.convert(model, return_report=True)
    assert type(converted[0]) is MyConv and type(converted[1]) is Tagged
    assert type(converted[2]) is cnnops.nn.Conv2d
    left = dict(report.left)
    assert "own forward" in left["0"] and "MyConv" in left["0"]
    assert "Tagged" in left["1"]
    assert [n for n, _ in report.replaced] == ["2"]
    assert "1 replaced" in str(report)


def test_convert_rejects_non_module():
    with pytest.raises(TypeError, match="expected model to be a torch.nn.Module, got list"):
        cnnops.convert([torch.nn.Conv2d(1, 1, 1)])
    with pytest.raises(TypeError, match="cnnops.revert: expected model"):
        cnnops.revert("resnet")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_compiled_training_step_matches(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    reference, x = build(name)
    converted = cnnops.convert(reference)
    compiled = torch.compile(converted, fullgraph=True, backend="aot_eager")
    assert_records_equal(train_steps(compiled, x, sgd(converted), steps=2),
                         train_steps(reference, x, sgd(reference), steps=2))
    torch._dynamo.reset()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_export_eval_matches(name):
    reference, x = build(name)
    reference.eval()
    converted = cnnops.convert(reference)
    exported = torch.export.export(converted, (x,))
    targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert any(t.startswith("cnnops.") for t in targets), targets
    assert_close(exported.module()(x), reference(x))


# ---------------------------------------------------------------- CUDA
@pytest.mark.parametrize("device", [d for d in DEVICES if getattr(d, "values", [d])[0] == "cuda"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_cuda_training_autocast_stream_and_graph(device, name):
    # Training steps in float64: in float32, torch's convolutions use TF32 (its default) and
    # two steps of SGD amplify that rounding past any fixed tolerance (seen on an H100: ASPP's
    # BatchNorm over 2 values per channel; float64 agreed to 1e-13).
    reference, x = build(name, dtype=torch.float64, device=device)
    converted = cnnops.convert(reference)
    assert_records_equal(train_steps(converted, x, sgd(converted)), train_steps(reference, x, sgd(reference)))
    reference, x = build(name, dtype=torch.float32, device=device)
    converted = cnnops.convert(reference)
    reference.eval(), converted.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        assert_close(converted(x).float(), reference(x).float(), dtype=torch.bfloat16)
    # a non-default stream
    stream = torch.cuda.Stream()
    with torch.no_grad():
        want = reference(x)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            got = converted(x)
        torch.cuda.current_stream().wait_stream(stream)
    assert_close(got, want, dtype=torch.bfloat16)
    # CUDA-graph capture and replay
    static_x = x.clone()
    with torch.no_grad():
        converted(static_x)  # warm up outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = converted(static_x)
        static_x.copy_(x * 2)
        graph.replay()
        torch.cuda.synchronize()
        assert_close(static_out, reference(x * 2), dtype=torch.bfloat16)


# ---------------------------------------------------------------- fusions
@pytest.mark.parametrize("name", ["resnet", "mobilenet_v2"])
def test_fuse_bn_relu_matches_and_reverts(name):
    reference, x = build(name)
    converted, report = cnnops.convert(reference, fuse_bn_relu=True, return_report=True)
    fused = [type(m) for m in converted.modules() if type(m) in (cnnops.nn.BatchNormReLU2d, cnnops.nn.BatchNormReLU6_2d)]
    assert fused and len(report.fused) == len(fused)
    assert converted.state_dict().keys() == reference.state_dict().keys()
    assert_records_equal(train_steps(converted, x, sgd(converted)), train_steps(reference, x, sgd(reference)))
    cnnops.revert(converted)
    assert [type(m) for m in converted.modules()] == [type(m) for m in reference.modules()]
    converted.eval(), reference.eval()
    assert_close(converted(x), reference(x))


@pytest.mark.parametrize("name", ["resnet", "mobilenet_v2", "aspp"])
def test_fuse_bn_folds_in_eval_mode_only(name):
    reference, x = build(name)
    train_steps(reference, x, sgd(reference), steps=2)  # running stats away from their defaults
    _, report = cnnops.convert(reference, fuse_bn=True, return_report=True)
    assert not report.fused and any("training mode" in why for _, why in report.left)
    reference.eval()
    folded, report = cnnops.convert(reference, fuse_bn=True, return_report=True)
    assert report.fused
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert n_bn == sum(isinstance(m, torch.nn.BatchNorm2d) for m in reference.modules()) - len(report.fused)
    with torch.no_grad():
        assert_close(folded(x), reference(x))
