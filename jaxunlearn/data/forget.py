"""Forget-set selection: which training examples an unlearning run must forget.

Kinds (paper A): `random`; `class` (a whole class); and, from a per-example score such as the
Feldman–Zhang memorization estimate, `high` (top N), `low` (bottom N), `mid` (N closest to 0.5) and `mix`
(N//3 from the top, N//3 from the bottom, the rest closest to 0.5, without overlap). Ties in a score are
broken at random by `seed`, so equal scores never favour low indices.
"""

from __future__ import annotations

import difflib
import numbers

import numpy as np

__all__ = ["FORGET_KINDS", "forget_mask", "retain_indices", "select_forget"]

FORGET_KINDS = ("random", "class", "high", "low", "mid", "mix")


def _resolve_size(size, n: int, what: str) -> int:
    """An int count, or a float fraction in (0, 1) of `n` (rounded, at least 1)."""
    if size is None:
        raise ValueError(f"size is required for {what}")
    if isinstance(size, bool) or not isinstance(size, numbers.Real):
        raise TypeError(f"size must be an int count or a float fraction in (0, 1), got {size!r}")
    if isinstance(size, numbers.Integral) or (float(size).is_integer() and size >= 1):
        count = int(size)
    elif 0.0 < size < 1.0:
        count = max(1, int(round(float(size) * n)))
    else:
        raise ValueError(f"size must be a positive int count or a fraction in (0, 1), got {size!r}")
    if count <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    if count > n:
        raise ValueError(f"size {count} exceeds the {n} examples available for {what}")
    return count


def _ranking(key: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices sorted by ascending `key`, ties broken by a random permutation."""
    tiebreak = rng.permutation(len(key))
    return np.lexsort((tiebreak, key))


def select_forget(
    labels: np.ndarray,
    kind: str,
    size: int | float | None = None,
    *,
    seed: int = 0,
    scores: np.ndarray | None = None,
    class_id: int | None = None,
) -> np.ndarray:
    """Choose a forget set; returns sorted unique int64 indices into the training set.

    Args:
      labels: `[n]` training labels (only their number matters, except for `class`).
      kind: `random`, `class`, `high`, `low`, `mid` or `mix`.
      size: number of examples, or a fraction in (0, 1) of the `n` training examples. For `class` it is
        optional: None takes the whole class, otherwise a seeded random subset of that many examples
        (a fraction is then a fraction of the class).
      seed: seeds the random choice and the tie-breaking among equal scores.
      scores: `[n]` finite per-example scores (e.g. memorization in [0, 1]); needed for the score kinds.
      class_id: the class to forget, for `class`.

    `high` takes the N largest scores, `low` the N smallest, `mid` the N with `|score − 0.5|` smallest,
    `mix` N//3 highest, then N//3 lowest among the rest, then the remaining N − 2·(N//3) closest to 0.5
    among what is left.

    Example:
      >>> import numpy as np
      >>> y = np.array([0, 1, 0, 1, 2, 2])
      >>> select_forget(y, "class", class_id=2).tolist()
      [4, 5]
      >>> select_forget(y, "high", 2, scores=np.array([.1, .9, .5, .8, .0, .4])).tolist()
      [1, 3]
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    n = len(labels)
    if n == 0:
        raise ValueError("labels is empty")
    if kind not in FORGET_KINDS:
        close = difflib.get_close_matches(str(kind), FORGET_KINDS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown forget-set kind {kind!r}; known: {', '.join(FORGET_KINDS)}.{hint}")
    rng = np.random.default_rng(seed)

    if kind == "class":
        if class_id is None:
            raise ValueError("kind='class' needs class_id")
        present = np.unique(labels)
        if isinstance(class_id, bool) or not isinstance(class_id, numbers.Integral) or class_id not in present:
            raise ValueError(f"class_id {class_id!r} has no training examples; classes present: {present.tolist()}")
        members = np.flatnonzero(labels == class_id)
        if size is not None:
            count = _resolve_size(size, len(members), f"class {class_id}")
            members = rng.choice(members, size=count, replace=False)
        return np.sort(members).astype(np.int64)

    count = _resolve_size(size, n, f"kind={kind!r}")
    if kind == "random":
        return np.sort(rng.choice(n, size=count, replace=False)).astype(np.int64)

    if scores is None:
        raise ValueError(f"kind={kind!r} ranks examples by a score: pass scores (one per training example)")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (n,):
        raise ValueError(f"scores must have shape ({n},) like labels, got {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")
    by_high = _ranking(-scores, rng)
    by_low = _ranking(scores, rng)
    by_mid = _ranking(np.abs(scores - 0.5), rng)
    if kind == "high":
        chosen = by_high[:count]
    elif kind == "low":
        chosen = by_low[:count]
    elif kind == "mid":
        chosen = by_mid[:count]
    else:  # mix
        third = count // 3
        taken = np.zeros(n, bool)
        picks = []
        for order, k in ((by_high, third), (by_low, third), (by_mid, count - 2 * third)):
            pick = order[~taken[order]][:k]
            taken[pick] = True
            picks.append(pick)
        chosen = np.concatenate(picks)
    return np.sort(chosen).astype(np.int64)


def retain_indices(n: int, forget_idx: np.ndarray) -> np.ndarray:
    """The sorted int64 indices in `range(n)` that are not in `forget_idx`.

    Example:
      >>> retain_indices(5, np.array([1, 3])).tolist()
      [0, 2, 4]
    """
    return np.flatnonzero(~forget_mask(n, forget_idx)).astype(np.int64)


def forget_mask(n: int, forget_idx: np.ndarray) -> np.ndarray:
    """Boolean `[n]` mask, True at the forget indices.

    Example:
      >>> forget_mask(4, np.array([0, 2])).tolist()
      [True, False, True, False]
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    forget_idx = np.asarray(forget_idx)
    if forget_idx.size and not np.issubdtype(forget_idx.dtype, np.integer):
        raise ValueError(f"forget indices must be integers, got dtype {forget_idx.dtype}")
    if forget_idx.size and (forget_idx.min() < 0 or forget_idx.max() >= n):
        raise ValueError(f"forget indices must lie in [0, {n}), got [{forget_idx.min()}, {forget_idx.max()}]")
    mask = np.zeros(int(n), bool)
    mask[forget_idx.astype(np.int64).reshape(-1)] = True
    return mask
