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

from jaxunlearn import distributed, objectives

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

    Returns ``{"logits", "loss", "correct", "accuracy"}`` (numpy; the last three only with ``y``).
    With ``mesh`` each chunk is split over the ``data`` axis (padded to a multiple of its size).

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
    outs = []
    fn = _eval_fn(apply_fn)
    if mesh is not None:
        k = distributed.data_size(mesh)
        batch_size = max(k, batch_size // k * k)
        params, model_state = distributed.replicate((params, model_state), mesh)
    for start in range(0, x.shape[0], batch_size):
        chunk = x[start : start + batch_size]
        pad = batch_size - chunk.shape[0] if x.shape[0] > batch_size else 0
        if mesh is not None:
            pad = pad or -chunk.shape[0] % k
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        if mesh is not None:
            chunk = distributed.shard_batch(chunk, mesh)
        out = fn(params, model_state, chunk)
        if mesh is not None and jax.process_count() > 1:  # every process gets all the logits
            out = _allgather(out)
        out = np.asarray(out)
        outs.append(out[: out.shape[0] - pad] if pad else out)
    logits = np.concatenate(outs)
    result: dict[str, Any] = {"logits": logits}
    if y is not None:
        y = np.asarray(y)
        result["loss"] = np.asarray(objectives.per_example_cross_entropy(jnp.asarray(logits), jnp.asarray(y)))
        result["correct"] = logits.argmax(-1) == y
        result["accuracy"] = float(result["correct"].mean())
    return result


def _allgather(x):
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(x, tiled=True)


@functools.lru_cache(maxsize=64)
def _eval_fn(apply_fn):
    return jax.jit(lambda p, s, x: apply_fn(p, s, x, train=False)[0])
