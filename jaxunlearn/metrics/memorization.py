"""Feldman–Zhang memorization scores by subsampling.

For an example i and K models trained on random subsets S_1..S_K of the training set,

    mem_i = mean_{k : i ∈ S_k} [f_k(x_i) = y_i]  −  mean_{k : i ∉ S_k} [f_k(x_i) = y_i]

(Feldman & Zhang 2020, "What neural networks memorize and why", subsampled estimator; the reference code of
the sharp-unlearn paper uses random 70% subsets). High scores = examples a model gets right only when it
trained on them (atypical or mislabelled examples); scores near 0 = typical examples.

Training is done by a callable supplied by the caller (the engine's vmapped trainer), so this module never
imports the engine: ``train_fn(masks: bool[K, N]) -> stacked params`` (leading axis K on every leaf).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxunlearn import _validate
from jaxunlearn.metrics.accuracy import (
    DEFAULT_BATCH_SIZE,
    correctness_stacked,
)

__all__ = ["subset_masks", "memorization_scores", "memorization_from_correctness", "heldout_accuracy"]


def subset_masks(num_models: int, num_examples: int, fraction: float, *, seed: int = 0) -> np.ndarray:
    """Seeded, per-example balanced inclusion masks ``bool[K, N]``.

    Every example is IN for exactly ``m = round(fraction · K)`` of the K models (clipped to [1, K − 1], so
    each example is IN for at least one model and OUT for at least one), the m models being a uniformly random
    subset chosen independently per example (the construction of Carlini et al.'s LiRA code). Each model
    therefore trains on ≈ ``fraction · N`` examples (exactly on average, not per model). Balancing per example
    guarantees that both terms of the Feldman–Zhang / LiRA estimators exist for every example.

    Example:
        >>> m = subset_masks(4, 6, 0.5, seed=0)
        >>> m.shape, m.sum(axis=0).tolist()
        ((4, 6), [2, 2, 2, 2, 2, 2])
    """
    if isinstance(num_models, bool) or not isinstance(num_models, (int, np.integer)) or num_models < 2:
        raise ValueError(
            f"num_models must be an integer >= 2 (each example needs an IN and an OUT model), got {num_models!r}"
        )
    if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) or num_examples < 1:
        raise ValueError(f"num_examples must be a positive integer, got {num_examples!r}")
    if not (0.0 < float(fraction) < 1.0):
        raise ValueError(f"fraction must lie strictly between 0 and 1, got {fraction!r}")
    k, n = int(num_models), int(num_examples)
    m = int(np.clip(round(float(fraction) * k), 1, k - 1))
    rng = np.random.default_rng(seed)
    ranks = np.argsort(rng.random((k, n)), axis=0)  # a random permutation of models per example
    return ranks < m


def _correctness(correct: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    """``correct`` as float64 and ``masks`` as bool, both ``[K, N]``, checked."""
    c = np.asarray(correct)
    msk = np.asarray(masks)
    if c.ndim != 2:
        raise ValueError(f"correct must have shape [K, N], got {c.shape}")
    if msk.shape != c.shape:
        raise ValueError(f"masks has shape {msk.shape} but correct has shape {c.shape}")
    if c.size == 0:
        raise ValueError("correct is empty")
    if msk.dtype != bool:
        if not np.all((msk == 0) | (msk == 1)):
            raise ValueError("masks must be boolean (or 0/1)")
        msk = msk.astype(bool)
    return c.astype(np.float64), msk


def memorization_from_correctness(correct: Any, masks: Any) -> np.ndarray:
    """Feldman–Zhang estimate from a correctness matrix: ``mem_i = mean_{k: M_ki} C_ki − mean_{k: ¬M_ki} C_ki``.

    ``correct``: ``[K, N]`` (bool or {0,1} floats) — model k classifies example i correctly;
    ``masks``: ``bool[K, N]`` — model k trained on example i.
    An example that is never IN or never OUT has no estimate; its score is set to 0.0 and a RuntimeWarning
    reports how many (use :func:`subset_masks`, which never produces such examples).

    Example:
        >>> c = np.array([[1, 1], [0, 1], [1, 1], [0, 1]])
        >>> m = np.array([[1, 1], [0, 0], [1, 0], [0, 1]], bool)
        >>> memorization_from_correctness(c, m)   # example 0: 1 − 0; example 1: 1 − 1
        array([1., 0.])
    """
    c, msk = _correctness(correct, masks)
    n_in = msk.sum(axis=0)
    n_out = (~msk).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_in = np.where(msk, c, 0.0).sum(axis=0) / n_in
        mean_out = np.where(~msk, c, 0.0).sum(axis=0) / n_out
    score = mean_in - mean_out
    missing = (n_in == 0) | (n_out == 0)
    if np.any(missing):
        warnings.warn(
            f"{int(missing.sum())} example(s) were never IN or never OUT of a subset; their "
            "memorization score is set to 0.0 (train more models)",
            RuntimeWarning,
            stacklevel=2,
        )
        score = np.where(missing, 0.0, score)
    return score


def heldout_accuracy(correct: Any, masks: Any) -> np.ndarray:
    """Each example's accuracy when held out: ``h_i = mean_{k: ¬M_ki} C_ki``, the fraction of the models that did
    NOT train on example i and still classify it correctly (the second term of the Feldman–Zhang estimate).

    Averaged over a forget set F, ``mean_{i∈F} h_i`` estimates the forget accuracy of a model that never saw F,
    i.e. Retrain's, without training one (``tuning.forget_target`` uses it). ``correct`` and ``masks`` as in
    :func:`memorization_from_correctness` (``memorization_scores(..., return_details=True)`` returns both); an
    example that is never OUT has no estimate and raises.

    Example:
        >>> c = np.array([[1, 1], [0, 1], [1, 1], [0, 1]])
        >>> m = np.array([[1, 1], [0, 0], [1, 0], [0, 1]], bool)
        >>> heldout_accuracy(c, m)   # example 0: OUT for models 1, 3 (both wrong); example 1: OUT for 1, 2
        array([0., 1.])
    """
    c, msk = _correctness(correct, masks)
    n_out = (~msk).sum(axis=0)
    if np.any(n_out == 0):
        raise ValueError(
            f"{int((n_out == 0).sum())} example(s) were never held out, so they have no held-out accuracy; build the "
            "masks with subset_masks (every example is OUT for at least one model)."
        )
    return np.where(~msk, c, 0.0).sum(axis=0) / n_out


def memorization_scores(
    train_fn: Callable[[Any], Any],
    logits_fn: Callable,
    x: Any,
    y: Any,
    *,
    num_models: int,
    subset_fraction: float = 0.7,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    return_details: bool = False,
):
    """Feldman–Zhang subsampled memorization scores ``[N]`` (see the module docstring for the formula).

    1. ``masks = subset_masks(num_models, N, subset_fraction, seed=seed)`` — every example IN for
       ``round(subset_fraction · K)`` random models;
    2. ``stacked = train_fn(jnp.asarray(masks))`` trains the K models (leading axis K on every leaf);
    3. ``correct[k, i]`` via ``jax.vmap`` over the models, in jitted batches of ``batch_size`` examples;
    4. ``memorization_from_correctness(correct, masks)``.

    Scores lie in [−1, 1]. ``return_details=True`` returns ``(scores, {"masks", "correct"})``.
    Needs ``num_models >= 2``; the estimate's standard error shrinks like 1/sqrt(K) (Feldman–Zhang use
    thousands of models on CIFAR; tens suffice to separate mislabelled from clean examples).

    Example (a lookup "model" that knows the labels it trained on and says class 0 otherwise: examples of
    the rare classes 1 and 2 are right only when trained on, so they are the memorized ones):
        >>> import jax
        >>> x, y = np.eye(6, dtype=np.float32), np.array([0, 0, 0, 0, 1, 2])    # example i is the input e_i
        >>> def train_fn(masks):                                               # [K, N] -> K stacked tables
        ...     return {"w": masks[:, :, None] * jax.nn.one_hot(y, 3) + 0.5 * jax.nn.one_hot(0, 3)}
        >>> scores = memorization_scores(train_fn, lambda p, x: x @ p["w"], x, y, num_models=4)
        >>> scores
        array([0., 0., 0., 0., 1., 1.])
        >>> np.argsort(scores)[-2:].tolist()                                   # the most memorized examples
        [4, 5]
    """
    if not callable(train_fn):
        raise ValueError(f"train_fn must be callable, got {type(train_fn).__name__}")
    batch_size = _validate.batch_size(batch_size)
    x = _validate.examples(x)
    n = int(x.shape[0])
    y = _validate.class_labels(y, n)
    masks = subset_masks(num_models, n, subset_fraction, seed=seed)
    stacked = train_fn(jnp.asarray(masks))
    k = _validate.num_models(stacked, "train_fn(masks)")
    if k != masks.shape[0]:
        raise ValueError(f"train_fn(masks) returned {k} models for {masks.shape[0]} masks")
    correct = correctness_stacked(logits_fn, stacked, x, y, batch_size)
    scores = memorization_from_correctness(correct, masks)
    if return_details:
        return scores, {"masks": masks, "correct": correct}
    return scores
