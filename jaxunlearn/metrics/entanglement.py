"""Entanglement score (ES) between retain and forget sets in feature space (RUM, Zhao et al. 2024).

RUM ("What makes unlearning hard and what to do about it", reference code ``kairanzhao/RUM``) defines,
on penultimate-layer embeddings φ(x) of a model (RUM uses the original model, to rate how hard a forget
set is; paper A compares models trained/unlearned with SGD vs SAM):

    μ_R = mean_{i∈R} φ_i,   μ_F = mean_{j∈F} φ_j,   μ = mean_{k∈R∪F} φ_k   (mean over the union)

                mean_{i∈R} ‖φ_i − μ_R‖²  +  mean_{j∈F} ‖φ_j − μ_F‖²        (intra-set variance)
    ES(R, F) = ─────────────────────────────────────────────────────
                      ½ (‖μ_R − μ‖² + ‖μ_F − μ‖²)                           (inter-set variance)

A LARGE ES means the two sets are entangled (they overlap relative to the distance between their
centres); a small ES means they are well separated. Paper A reports that SAM lowers ES.

Notes on the reference code of paper A (``HaoranTang/sharp-unlearn``, ``analysis.py``):
- it L2-normalises every embedding first (``F.normalize(φ, dim=1)``): pass ``l2_normalize=True``;
- it then maps the raw score to [0, 1] by ``clip(ES / 1300, 0, 1)``, an arbitrary dataset-specific scale
  that is NOT applied here (divide yourself if you need to compare with its numbers);
- it returns 0 when the two means coincide; here the score is then ``inf`` (maximally entangled), or
  ``nan`` when every feature is identical;
- it also offers a class-wise variant (per class present in both sets, weighted by the class's number of
  examples in R ∪ F): pass ``labels_retain`` and ``labels_forget``.

All statistics are computed in float64 on the host (two-pass, no cancellation-prone E‖φ‖² − ‖μ‖²).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from jaxunlearn.metrics.features import batched_apply

__all__ = ["entanglement_from_features", "entanglement_score"]


def _as_features(f, argname: str) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    if f.ndim == 1:
        f = f[:, None]
    if f.ndim > 2:  # flatten e.g. [N, H, W, C] feature maps
        f = f.reshape(f.shape[0], -1)
    if f.ndim != 2 or f.shape[0] == 0:
        raise ValueError(f"{argname} must be a non-empty [N, D] array, got shape {f.shape}")
    if not np.all(np.isfinite(f)):
        raise ValueError(f"{argname} contains NaN or inf")
    return f


def _l2_normalize(f: np.ndarray) -> np.ndarray:
    # Same as torch.nn.functional.normalize(p=2, dim=1, eps=1e-12).
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def _es(fr: np.ndarray, ff: np.ndarray) -> float:
    mu_r = fr.mean(axis=0)
    mu_f = ff.mean(axis=0)
    mu = np.concatenate([fr, ff], axis=0).mean(axis=0)
    intra = np.mean(np.sum((fr - mu_r) ** 2, axis=1)) + np.mean(np.sum((ff - mu_f) ** 2, axis=1))
    inter = 0.5 * (np.sum((mu_r - mu) ** 2) + np.sum((mu_f - mu) ** 2))
    if inter == 0.0:
        return float("nan") if intra == 0.0 else float("inf")
    return float(intra / inter)


def entanglement_from_features(
    f_retain,
    f_forget,
    *,
    l2_normalize: bool = False,
    labels_retain=None,
    labels_forget=None,
) -> float:
    """Entanglement score of two feature sets (RUM).

    ES = [mean_{i∈R}‖φ_i − μ_R‖² + mean_{j∈F}‖φ_j − μ_F‖²] / [½(‖μ_R − μ‖² + ‖μ_F − μ‖²)],
    μ_R, μ_F the set means, μ the mean over R ∪ F. Higher = more entangled. ``inf`` when μ_R = μ_F
    (and ``nan`` when additionally all features are equal). Class-wise (both label arrays given):
    ES = Σ_c n_c·ES_c / Σ_c n_c over the classes c present in both sets with a finite ES_c, n_c the
    number of examples of class c in R ∪ F (``nan`` if no class qualifies).

    Example:
        >>> fr = np.array([[0.0, 0.0], [0.0, 2.0]])           # retain: centre (0, 1), spread 1
        >>> ff = np.array([[4.0, 0.0], [4.0, 2.0]])           # forget: centre (4, 1), spread 1
        >>> entanglement_from_features(fr, ff)                # (1 + 1) / (½ (2² + 2²))
        0.5
        >>> entanglement_from_features(fr, ff - [3.0, 0.0])   # centres closer: (1 + 1) / (½ (0.5² + 0.5²))
        8.0
        >>> round(entanglement_from_features(fr + 1, ff, l2_normalize=True), 4)   # paper A's reference code
        0.7611
        >>> entanglement_from_features(fr, ff, labels_retain=[0, 1], labels_forget=[0, 1])   # one point per set
        0.0

    Args:
      f_retain: ``[N_R, D]`` retain features (N_R >= 1; arrays with more dims are flattened per example).
      f_forget: ``[N_F, D]`` forget features, same D.
      l2_normalize: divide each feature vector by its L2 norm first (paper A's reference code does).
      labels_retain, labels_forget: optional integer labels ``[N_R]``, ``[N_F]`` for the class-wise score.
    Returns:
      the score as a Python float.
    """
    fr = _as_features(f_retain, "f_retain")
    ff = _as_features(f_forget, "f_forget")
    if fr.shape[1] != ff.shape[1]:
        raise ValueError(f"f_retain has feature dim {fr.shape[1]} but f_forget has {ff.shape[1]}")
    if l2_normalize:
        fr, ff = _l2_normalize(fr), _l2_normalize(ff)
    if (labels_retain is None) != (labels_forget is None):
        raise ValueError("pass both labels_retain and labels_forget for the class-wise score, or neither")
    if labels_retain is None:
        return _es(fr, ff)
    lr = np.asarray(labels_retain).reshape(-1)
    lf = np.asarray(labels_forget).reshape(-1)
    if lr.shape[0] != fr.shape[0]:
        raise ValueError(f"labels_retain has {lr.shape[0]} entries but f_retain has {fr.shape[0]} rows")
    if lf.shape[0] != ff.shape[0]:
        raise ValueError(f"labels_forget has {lf.shape[0]} entries but f_forget has {ff.shape[0]} rows")
    total, weight = 0.0, 0
    for c in np.intersect1d(np.unique(lr), np.unique(lf)):
        es_c = _es(fr[lr == c], ff[lf == c])
        if np.isfinite(es_c):
            n_c = int(np.sum(lr == c) + np.sum(lf == c))
            total += n_c * es_c
            weight += n_c
    return float(total / weight) if weight > 0 else float("nan")


def entanglement_score(
    features_fn: Callable,
    params: Any,
    x_retain,
    x_forget,
    *,
    batch_size: int = 256,
    l2_normalize: bool = False,
    labels_retain=None,
    labels_forget=None,
) -> float:
    """Entanglement score of the model's penultimate features on the retain and forget inputs.

    Computes φ = ``features_fn(params, x)`` in jitted batches of ``batch_size`` and returns
    ``entanglement_from_features(φ(x_retain), φ(x_forget), ...)``, i.e.
    ES = [mean_R‖φ − μ_R‖² + mean_F‖φ − μ_F‖²] / [½(‖μ_R − μ‖² + ‖μ_F − μ‖²)].

    Example (linear features ``φ(x) = x W``):
        >>> import jax.numpy as jnp
        >>> x_retain = np.array([[0.0, 0.0], [0.0, 2.0]], np.float32)
        >>> x_forget = np.array([[4.0, 0.0], [4.0, 2.0]], np.float32)
        >>> entanglement_score(lambda w, x: x @ w, jnp.eye(2), x_retain, x_forget)
        0.5

    Args:
      features_fn: pure ``features_fn(params, x) -> [B, D]``.
      params: any pytree.
      x_retain, x_forget: inputs ``[N, ...]`` (N >= 1 each).
      batch_size: examples per jitted call.
      l2_normalize, labels_retain, labels_forget: see ``entanglement_from_features``.
    Returns:
      the score as a Python float.
    """
    if np.shape(x_retain)[:1] in ((), (0,)):
        raise ValueError(f"x_retain must be a non-empty batch of inputs, got shape {np.shape(x_retain)}")
    if np.shape(x_forget)[:1] in ((), (0,)):
        raise ValueError(f"x_forget must be a non-empty batch of inputs, got shape {np.shape(x_forget)}")
    fr = batched_apply(features_fn, params, x_retain, batch_size=batch_size)
    ff = batched_apply(features_fn, params, x_forget, batch_size=batch_size)
    return entanglement_from_features(
        fr, ff, l2_normalize=l2_normalize, labels_retain=labels_retain, labels_forget=labels_forget
    )
