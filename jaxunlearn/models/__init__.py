"""Flax NNX models and the functional adapter used by the rest of jaxunlearn.

Models: ``theory_cnn`` (the two-layer CNN of the theory), ``mlp``, ``cnn``, ``resnet18``
(see `build`). `split_model` turns a module into ``(apply_fn, params, model_state)`` with plain-dict
pytrees; `logits_fn` / `features_fn` give eval-mode ``f(params, x)`` closures for metrics.

Example:
    >>> import jax.numpy as jnp
    >>> from jaxunlearn import models
    >>> apply_fn, params, state = models.split_model(
    ...     models.build("cnn", num_classes=10, input_shape=(8, 8, 1)))
    >>> logits, state = apply_fn(params, state, jnp.zeros((4, 8, 8, 1)))
    >>> logits.shape
    (4, 10)
"""

from jaxunlearn.models.adapter import (
    ApplyFn,
    call_convention,
    features_fn,
    logits_fn,
    merge_model,
    num_params,
    split_model,
    update_model,
)
from jaxunlearn.models.cnn import CNN
from jaxunlearn.models.layers import max_pool_2x2
from jaxunlearn.models.linen import LinenApplyFn, from_linen, to_linen_variables
from jaxunlearn.models.mlp import MLP
from jaxunlearn.models.nnx_loop import pure_loss, sam_grad_fn
from jaxunlearn.models.registry import MODELS, build
from jaxunlearn.models.resnet import BasicBlock, ResNet18
from jaxunlearn.models.theory import CLASS_SIGNS, TheoryCNN, theory_coefficients, theory_weights

__all__ = [
    "CLASS_SIGNS",
    "CNN",
    "MLP",
    "MODELS",
    "ApplyFn",
    "LinenApplyFn",
    "BasicBlock",
    "ResNet18",
    "TheoryCNN",
    "build",
    "call_convention",
    "features_fn",
    "from_linen",
    "logits_fn",
    "max_pool_2x2",
    "merge_model",
    "num_params",
    "pure_loss",
    "sam_grad_fn",
    "split_model",
    "to_linen_variables",
    "update_model",
    "theory_coefficients",
    "theory_weights",
]

from jaxunlearn.models.gpt import GPT  # noqa: E402

__all__ += ["GPT"]
