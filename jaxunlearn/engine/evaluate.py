"""Batched eval-mode predictions of a classifier: logits, per-example loss, accuracy.

Example:
    >>> sorted(evaluate.__code__.co_varnames[:5])
    ['apply_fn', 'model_state', 'params', 'x', 'y']
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxunlearn import batching, distributed, objectives

__all__ = ["evaluate"]

PyTree = Any


def evaluate(
    apply_fn: Callable,
    params: PyTree,
    model_state: PyTree,
    x,
    y=None,
    *,
    batch_size: int = 1024,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, np.ndarray | float]:
    """Eval-mode logits for ``x`` (batched, jitted) and, with labels, accuracy and per-example loss.

    Returns ``{"logits", "loss", "correct", "accuracy"}`` (numpy; the last three only with ``y``). Chunks of
    ``batch_size`` rows through one compiled program (:func:`jaxunlearn.batching.batched_map`); with ``mesh``
    each chunk is split over the ``data`` axis (padded to a multiple of its size) and every process gets all
    the logits.

    Example:
        >>> import numpy as np
        >>> from jaxunlearn import models
        >>> apply_fn, params, state = models.split_model(models.build("mlp", num_classes=3, input_shape=(4,)))
        >>> out = evaluate(apply_fn, params, state, np.zeros((5, 4)), np.array([0, 1, 2, 0, 1]))
        >>> out["logits"].shape, 0.0 <= out["accuracy"] <= 1.0
        ((5, 3), True)
    """
    x = np.asarray(x, np.float32)
    if x.shape[0] == 0:
        raise ValueError("cannot evaluate on an empty set of examples.")
    fn = _eval_fn(apply_fn)
    if mesh is not None:
        params, model_state = distributed.replicate((params, model_state), mesh)
    logits = batching.batched_map(lambda chunk: fn(params, model_state, chunk), x, batch_size=batch_size, mesh=mesh)
    result: dict[str, Any] = {"logits": logits}
    if y is not None:
        y = np.asarray(y)
        result["loss"] = np.asarray(objectives.per_example_cross_entropy(jnp.asarray(logits), jnp.asarray(y)))
        result["correct"] = logits.argmax(-1) == y
        result["accuracy"] = float(result["correct"].mean())
    return result


@functools.lru_cache(maxsize=64)
def _eval_fn(apply_fn):
    return jax.jit(lambda p, s, x: apply_fn(p, s, x, train=False)[0])
