"""BatchNorm modules: BatchNorm2d, the fused BatchNormReLU2d / BatchNormAddReLU2d (same
constructor and state_dict as BatchNorm2d, so checkpoints move between them) and
SyncBatchNorm over torch.distributed (CPU with gloo too)."""
import torch

from cnnops import functional as F
from cnnops.ops.batch_norm import SyncBatchNormFunction


def _bn_forward(module, input, activation, residual):
    """torch's _BatchNorm.forward, with momentum=None's factor computed inside the op from
    num_batches_tracked (no float() of a tensor, so torch.compile(fullgraph=True) works)."""
    nbt = None
    if module.training and module.track_running_stats and module.num_batches_tracked is not None:
        module.num_batches_tracked.add_(1)
        nbt = module.num_batches_tracked
    momentum = module.momentum
    if momentum is None and nbt is None:
        momentum = 0.0  # torch's factor when nothing is tracked
    bn_training = module.training or (module.running_mean is None and module.running_var is None)
    use_running = not module.training or module.track_running_stats
    return F._batch_norm(input, module.running_mean if use_running else None,
                         module.running_var if use_running else None, module.weight, module.bias, bn_training,
                         momentum, module.eps, activation, residual, nbt)


class BatchNorm2d(torch.nn.BatchNorm2d):
    """torch.nn.BatchNorm2d computed by cnnops kernels (one read for the statistics, one
    pass to normalize); every constructor option of torch's is passed through, momentum=None
    included (and compiles with fullgraph=True)."""

    _activation = None

    def forward(self, input):
        self._check_input_dim(input)
        return _bn_forward(self, input, self._activation, None)


class BatchNormReLU2d(BatchNorm2d):
    """relu(BatchNorm2d(x)) in the same kernels, forward and backward."""

    _activation = "relu"


class BatchNormReLU6_2d(BatchNorm2d):
    """clamp(BatchNorm2d(x), 0, 6) in the same kernels (MobileNetV2's BN + ReLU6), forward
    and backward; what cnnops.convert(fuse_bn_relu=True) makes of BatchNorm2d -> ReLU6."""

    _activation = "relu6"


class BatchNormAddReLU2d(BatchNorm2d):
    """relu(BatchNorm2d(x) + residual) in the same kernels (the end of a ResNet block):
    forward(x, residual); dresidual comes out of the same backward pass."""

    _activation = "relu"

    def forward(self, input, residual):
        self._check_input_dim(input)
        return _bn_forward(self, input, self._activation, residual)




class SyncBatchNorm(torch.nn.SyncBatchNorm):
    """torch.nn.SyncBatchNorm computed by cnnops kernels: per-rank (count, mean, M2) are
    all-gathered in the process group and merged in rank order, so unequal batch sizes weigh
    correctly and the running statistics are identical on every rank; backward all-reduces
    its two per-channel sums. Works on CPU (gloo) and CUDA. `activation` ('relu', 'relu6' or
    None) and forward(input, residual=None) fuse as in BatchNormReLU2d / BatchNormAddReLU2d."""

    def __init__(self, *args, activation=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.activation = activation

    def extra_repr(self):
        s = super().extra_repr()
        return s + (f", activation={self.activation!r}" if getattr(self, "activation", None) else "")

    def forward(self, input, residual=None):
        self._check_input_dim(input)
        self._check_non_zero_input_channels(input)
        activation = getattr(self, "activation", None)
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        need_sync = bn_training and self.training
        if need_sync:
            import torch.distributed as dist
            need_sync = dist.is_available() and dist.is_initialized()
            if need_sync:
                group = self.process_group or dist.group.WORLD
                world_size = dist.get_world_size(group)
                need_sync = world_size > 1
        if not need_sync:
            return _bn_forward(self, input, activation, residual)
        nbt = None
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            nbt = self.num_batches_tracked
        momentum = self.momentum
        if momentum is None and nbt is None:
            momentum = 0.0
        use_running = self.track_running_stats
        return SyncBatchNormFunction.apply(
            input, self.weight, self.bias, self.running_mean if use_running else None,
            self.running_var if use_running else None, nbt, residual, momentum, self.eps, activation, group,
            world_size)

    @classmethod
    def convert_sync_batchnorm(cls, module, process_group=None):
        """Like torch.nn.SyncBatchNorm.convert_sync_batchnorm, but builds cnnops
        SyncBatchNorm modules and keeps the activation of BatchNormReLU2d /
        BatchNormAddReLU2d (torch's would build plain SyncBatchNorm and drop the ReLU).
        Parameters and buffers are shared with the converted module, as torch's."""
        module_output = module
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
            activation = getattr(module, "_activation", None) if isinstance(module, BatchNorm2d) else None
            if isinstance(module, torch.nn.SyncBatchNorm):
                activation = getattr(module, "activation", None)
            extra = {"bias": False} if module.affine and module.bias is None else {}  # torch >= 2.14's option
            module_output = cls(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats, process_group, activation=activation, **extra)
            if module.affine:
                with torch.no_grad():
                    module_output.weight = module.weight
                    module_output.bias = module.bias
            module_output.running_mean = module.running_mean
            module_output.running_var = module.running_var
            module_output.num_batches_tracked = module.num_batches_tracked
            module_output.training = module.training
            if hasattr(module, "qconfig"):
                module_output.qconfig = module.qconfig
        for name, child in module.named_children():
            module_output.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        del module
        return module_output
