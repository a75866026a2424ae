"""A converted ResNet-style model with cnnops SyncBatchNorm trains under
DistributedDataParallel in two processes on loopback (gloo, CPU); after three steps its
parameters and running statistics equal single-process training of the unconverted torch
model on the whole batch."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import cnnops
from cnnops.bench.models import resnet
from conftest import assert_close

WORLD = 2
STEPS = 3
BATCH = 8  # 4 per rank: DDP averages gradients, which equals the whole batch's mean loss


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _setup():
    torch.manual_seed(0)
    model = resnet(num_classes=5, width=8).double()
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(BATCH, 3, 24, 24, generator=g, dtype=torch.float64) for _ in range(STEPS)]
    ys = [torch.randint(0, 5, (BATCH,), generator=g) for _ in range(STEPS)]
    return model, xs, ys


def _train(model, xs, ys, lo, hi):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for x, y in zip(xs, ys):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[lo:hi]), y[lo:hi]).backward()
        opt.step()


def _worker(rank, port, outdir):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model, xs, ys = _setup()
        model = cnnops.nn.SyncBatchNorm.convert_sync_batchnorm(cnnops.convert(model))
        assert any(type(m) is cnnops.nn.SyncBatchNorm for m in model.modules())
        ddp = cnnops.nn.DistributedDataParallel(model)  # torch's refuses any SyncBatchNorm on CPU
        per_rank = BATCH // WORLD
        _train(ddp, xs, ys, rank * per_rank, (rank + 1) * per_rank)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        torch.save(state, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_converted_resnet_trains_under_ddp_with_sync_batchnorm(tmp_path):
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True, start_method="spawn")
    reference, xs, ys = _setup()
    _train(reference, xs, ys, 0, BATCH)
    want = reference.state_dict()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    assert ranks[0].keys() == want.keys()
    for name, value in want.items():
        for state in ranks:
            if value.is_floating_point():
                assert_close(state[name], value, msg=name)
            else:
                assert torch.equal(state[name], value), name


def test_ddp_still_refuses_torch_sync_batchnorm_on_cpu():
    with pytest.raises(ValueError, match=r"0 is a torch.nn.SyncBatchNorm, whose kernels need CUDA"):
        cnnops.nn.DistributedDataParallel._passing_sync_batchnorm_handle(
            type("DDP", (), {"device_type": "cpu"})(), torch.nn.Sequential(torch.nn.SyncBatchNorm(3)))
