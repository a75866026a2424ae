"""Python side of each op family: fake kernels, autograd registration, vmap rules (batching.py) and the family's
torch.autograd.Function. Importing a module registers its ops."""
from cnnops.ops import conv2d  # noqa: F401
from cnnops.ops import pool2d  # noqa: F401
from cnnops.ops import layer_norm  # noqa: F401
from cnnops.ops import conv_transpose2d  # noqa: F401
from cnnops.ops import batch_norm  # noqa: F401
from cnnops.ops import depthwise_conv2d  # noqa: F401
from cnnops.ops import separable_conv2d  # noqa: F401
from cnnops.ops import batching  # noqa: F401  (vmap rules of the ops above)
