"""Paired comparisons over seeds: the mean difference with a Student-t 95 % confidence interval, and the one verdict
rule every experiment uses.

With per-seed values ``a_s`` and ``b_s`` (the same seed = the same data split, original model and forget set),
``d_s = a_s − b_s``, ``d̄ = mean(d)``, ``s_d = std(d, ddof=1)`` and the interval
``d̄ ± t_{0.975, n−1} · s_d / √n``. :func:`verdict`: ``"agrees"`` only when the interval excludes 0 in the
claimed direction, ``"disagrees"`` only when it excludes 0 the other way, otherwise ``"not resolved"``.

Example:
    >>> d = paired_difference([0.9, 0.8, 0.85, 0.95, 0.9], [0.8, 0.75, 0.8, 0.85, 0.82])
    >>> round(d["mean"], 3), d["n"], d["ci_low"] > 0
    (0.076, 5, True)
    >>> verdict(d, "greater")
    'agrees'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["paired_difference", "verdict", "VERDICTS"]

VERDICTS = ("agrees", "disagrees", "not resolved")


def paired_difference(a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95) -> dict[str, Any]:
    """``d̄ = mean(a − b)`` over paired values, its sample std and the Student-t confidence interval.

    ``{"mean", "std", "n", "ci_low", "ci_high", "half_width", "confidence"}``; with ``n = 1`` the interval is
    unbounded (``-inf, inf``): one seed never resolves a claim.

    Example:
        >>> d = paired_difference([1.0, 2.0, 3.0], [0.0, 1.0, 1.0])   # d = 1, 1, 2: mean 4/3, std 0.577
        >>> round(d["half_width"], 3)                                  # t_{0.975, 2} = 4.303; 4.303·0.577/√3
        1.434
        >>> paired_difference([1.0, 2.0], [1.0])
        Traceback (most recent call last):
        ...
        ValueError: paired values need the same number of seeds on both sides, got 2 and 1.
    """
    x, y = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    if x.size != y.size:
        raise ValueError(f"paired values need the same number of seeds on both sides, got {x.size} and {y.size}.")
    if x.size == 0:
        raise ValueError("paired_difference needs at least one pair of values.")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("paired values must be finite (a diverged or missing run is not a number to compare).")
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}.")
    d = x - y
    n = int(d.size)
    mean = float(d.mean())
    if n == 1:
        return {"mean": mean, "std": 0.0, "n": 1, "ci_low": -math.inf, "ci_high": math.inf,
                "half_width": math.inf, "confidence": float(confidence)}  # fmt: skip
    from scipy import stats  # scikit-learn's dependency

    std = float(d.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n))
    return {"mean": mean, "std": std, "n": n, "ci_low": mean - half, "ci_high": mean + half, "half_width": half,
            "confidence": float(confidence)}  # fmt: skip


def verdict(diff: dict[str, Any], direction: str) -> str:
    """The verdict on a claim that ``a`` is ``"greater"`` (or ``"less"``) than ``b``, from
    :func:`paired_difference`'s interval: ``"agrees"`` / ``"disagrees"`` only when the interval excludes 0.

    Example:
        >>> verdict({"ci_low": -0.2, "ci_high": -0.1}, "greater"), verdict({"ci_low": -0.2, "ci_high": 0.1}, "less")
        ('disagrees', 'not resolved')
    """
    if direction not in ("greater", "less"):
        raise ValueError(f"direction must be 'greater' or 'less', got {direction!r}.")
    lo, hi = float(diff["ci_low"]), float(diff["ci_high"])
    above, below = lo > 0.0, hi < 0.0
    if direction == "less":
        above, below = below, above
    return "agrees" if above else "disagrees" if below else "not resolved"
