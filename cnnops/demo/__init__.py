"""Training demo: a small CNN built from cnnops layers learns scikit-learn's bundled 8x8
handwritten digits (no download). ``python -m cnnops.demo --help``.

The network is written once, in :func:`build_model`, against a ``layers`` namespace, so the
same code builds the cnnops network (:data:`CNNOPS_LAYERS`) and the plain torch.nn one
(:data:`TORCH_LAYERS`) that ``--compare`` trains beside it.
"""
from cnnops.demo.digits import (CNNOPS_LAYERS, TORCH_LAYERS, History, MissingDependency, build_model,
                               load_digits_split, main, run, train)

__all__ = ["CNNOPS_LAYERS", "TORCH_LAYERS", "History", "MissingDependency", "build_model", "load_digits_split",
           "main", "run", "train"]
