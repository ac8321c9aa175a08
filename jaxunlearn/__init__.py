"""jaxunlearn: sharpness-aware machine unlearning in JAX.

The core (`sharpness`, `curvature`, and `batching`, which runs a compiled function over a dataset in chunks)
is framework-free; `transforms` and `selection` turn it into Optax pieces; `methods` and `engine` compose
them into unlearning algorithms over Flax NNX models. The heavier sub-packages (`engine`, `methods`,
`models`, `data`, `metrics`, `report`, `runner`) load on first use.

Example:
    >>> import jaxunlearn
    >>> jaxunlearn.methods.get("sharp_minmax").summary
    'SAM-min on R outside M, sharpness maximization on F inside M'
"""

import importlib

from jaxunlearn import batching, curvature, selection, sharpness, transforms

_LAZY = (
    "checkpoint",
    "data",
    "distributed",
    "engine",
    "methods",
    "metrics",
    "models",
    "objectives",
    "plan",
    "report",
    "runner",
    "theory",
)

__all__ = ["batching", "curvature", "selection", "sharpness", "transforms", *_LAZY]
__version__ = "0.1.0"


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f"jaxunlearn.{name}")
    raise AttributeError(f"module 'jaxunlearn' has no attribute {name!r}")
