"""jaxunlearn: sharpness-aware machine unlearning in JAX.

The core (`sharpness`, `curvature`) is framework-free; `transforms` and `selection` turn it into Optax
pieces; `methods` and `engine` compose them into unlearning algorithms over Flax NNX models.
"""

from jaxunlearn import curvature, selection, sharpness, transforms

__all__ = ["curvature", "selection", "sharpness", "transforms"]
__version__ = "0.1.0"
