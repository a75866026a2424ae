"""cnnops.nn.SyncBatchNorm over torch.distributed, for real: two processes on loopback with
the gloo backend and unequal batches (3 and 5). Outputs, input (and residual) gradients,
summed weight/bias gradients and running statistics must equal one BatchNorm2d over the
whole batch of 8; running statistics must be identical on both ranks. Also
convert_sync_batchnorm (keeps fused activations, shares parameters)."""
import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import cnnops

BATCHES = (3, 5)
C = 6


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data(layout):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(sum(BATCHES), C, 5, 4, generator=g, dtype=torch.float64) * 2 + 1
    r = torch.randn(x.shape, generator=g, dtype=torch.float64)
    gy = torch.randn(x.shape, generator=g, dtype=torch.float64)
    w = torch.rand(C, generator=g, dtype=torch.float64) + 0.5
    b = torch.randn(C, generator=g, dtype=torch.float64)
    if layout == "channels_last":
        x, r, gy = (t.contiguous(memory_format=torch.channels_last) for t in (x, r, gy))
    return x, r, gy, w, b


def _worker(rank, world, port, outdir, layout, activation, momentum, device):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x, r, gy, w, b = _data(layout)
        lo = sum(BATCHES[:rank])
        sl = slice(lo, lo + BATCHES[rank])
        x, r, gy = x.to(device), r.to(device), gy.to(device)
        m = cnnops.nn.SyncBatchNorm(C, momentum=momentum, activation=activation).double().to(device)
        with torch.no_grad():
            m.weight.copy_(w)
            m.bias.copy_(b)
        out = {}
        for step in range(2):  # two steps: running statistics and num_batches_tracked advance
            xi = x[sl].clone().requires_grad_(True)
            ri = r[sl].clone().requires_grad_(True)
            y = m(xi, ri)
            y.backward(gy[sl])
            out[f"y{step}"] = y.detach().cpu()
            out[f"gx{step}"] = xi.grad.cpu()
            out[f"gr{step}"] = ri.grad.cpu()
            out[f"gw{step}"] = m.weight.grad.cpu()
            out[f"gb{step}"] = m.bias.grad.cpu()
            m.weight.grad = None
            m.bias.grad = None
        out["running_mean"] = m.running_mean.cpu()
        out["running_var"] = m.running_var.cpu()
        out["nbt"] = m.num_batches_tracked.cpu()
        torch.save(out, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


HAS_CUDA = torch.cuda.is_available() and cnnops.build_info()["cuda"]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device or CPU-only build"))]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout,activation,momentum", [("contiguous", "relu", 0.1),
                                                        ("channels_last", None, None)])
def test_sync_batch_norm_two_processes_gloo(layout, activation, momentum, device):
    """Both ranks on one device (CUDA tensors go through gloo too; NCCL would need two GPUs)."""
    world = 2
    with tempfile.TemporaryDirectory() as outdir:
        mp.spawn(_worker, args=(world, _free_port(), outdir, layout, activation, momentum, device), nprocs=world,
                 join=True)
        res = [torch.load(os.path.join(outdir, f"rank{i}.pt")) for i in range(world)]

    x, r, gy, w, b = _data(layout)
    ref = torch.nn.BatchNorm2d(C, momentum=momentum).double()
    with torch.no_grad():
        ref.weight.copy_(w)
        ref.bias.copy_(b)
    for step in range(2):
        xi = x.clone().requires_grad_(True)
        ri = r.clone().requires_grad_(True)
        z = ref(xi) + ri
        if activation == "relu":
            z = torch.relu(z)
        z.backward(gy)
        torch.testing.assert_close(torch.cat([res[0][f"y{step}"], res[1][f"y{step}"]]), z.detach())
        torch.testing.assert_close(torch.cat([res[0][f"gx{step}"], res[1][f"gx{step}"]]), xi.grad)
        torch.testing.assert_close(torch.cat([res[0][f"gr{step}"], res[1][f"gr{step}"]]), ri.grad)
        torch.testing.assert_close(res[0][f"gw{step}"] + res[1][f"gw{step}"], ref.weight.grad)
        torch.testing.assert_close(res[0][f"gb{step}"] + res[1][f"gb{step}"], ref.bias.grad)
        ref.weight.grad = None
        ref.bias.grad = None
    for key in ("running_mean", "running_var", "nbt"):
        assert torch.equal(res[0][key], res[1][key]), f"{key} differs between ranks"
    torch.testing.assert_close(res[0]["running_mean"], ref.running_mean)
    torch.testing.assert_close(res[0]["running_var"], ref.running_var)
    assert res[0]["nbt"].item() == 2


def test_convert_sync_batchnorm_keeps_activation_and_parameters():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), cnnops.nn.BatchNormReLU2d(4),
                                torch.nn.Sequential(torch.nn.BatchNorm2d(4), cnnops.nn.BatchNorm2d(4)))
    w = model[1].weight
    model[1].running_mean.fill_(0.5)
    conv = cnnops.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert type(conv[1]) is cnnops.nn.SyncBatchNorm and conv[1].activation == "relu"
    assert conv[1].weight is w and torch.equal(conv[1].running_mean, torch.full((4,), 0.5))
    assert type(conv[2][0]) is cnnops.nn.SyncBatchNorm and conv[2][0].activation is None
    assert type(conv[2][1]) is cnnops.nn.SyncBatchNorm
    assert isinstance(conv[1], torch.nn.SyncBatchNorm)
    assert "activation='relu'" in repr(conv[1])


def test_sync_batch_norm_without_process_group_is_batch_norm():
    """Not initialized (single process): the module falls back to a local BatchNorm, on CPU
    too (torch's own SyncBatchNorm refuses CPU tensors in training)."""
    m = cnnops.nn.SyncBatchNorm(4, activation="relu6")
    ref = torch.nn.BatchNorm2d(4)
    x = torch.randn(3, 4, 5, 5) * 4
    torch.testing.assert_close(m(x), torch.nn.functional.relu6(ref(x)))
    torch.testing.assert_close(m.running_var, ref.running_var)
    m.eval()
    ref.eval()
    torch.testing.assert_close(m(x), torch.nn.functional.relu6(ref(x)))
