"""DistributedDataParallel that accepts cnnops.nn.SyncBatchNorm on CPU."""
import torch

from cnnops.nn.batchnorm import SyncBatchNorm


class DistributedDataParallel(torch.nn.parallel.DistributedDataParallel):
    """torch's DistributedDataParallel, unchanged except for one check: torch's constructor
    refuses every torch.nn.SyncBatchNorm (subclasses included) in a CPU module, because
    torch's SyncBatchNorm kernels are CUDA-only. cnnops.nn.SyncBatchNorm runs on CPU over
    gloo, so only torch's own SyncBatchNorm layers are refused here."""

    def _passing_sync_batchnorm_handle(self, module):
        if self.device_type != "cpu":
            return
        for name, layer in module.named_modules():
            if isinstance(layer, torch.nn.SyncBatchNorm) and not isinstance(layer, SyncBatchNorm):
                raise ValueError(
                    f"cnnops.nn.DistributedDataParallel: {name or 'the module'} is a torch.nn.SyncBatchNorm, whose "
                    "kernels need CUDA; cnnops.convert(model) swaps it for cnnops.nn.SyncBatchNorm, which runs on CPU")
