"""Paired differences and the verdict rule, against direct formulas."""

import math

import numpy as np
import pytest
from scipy import stats as sp

from jaxunlearn.metrics import stats


def test_interval_is_the_student_t_interval_of_the_differences():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 0.3, 7), rng.normal(0.8, 0.3, 7)
    d = a - b
    got = stats.paired_difference(a, b)
    lo, hi = sp.t.interval(0.95, 6, loc=d.mean(), scale=d.std(ddof=1) / math.sqrt(7))
    assert got["n"] == 7 and got["mean"] == pytest.approx(d.mean())
    assert got["ci_low"] == pytest.approx(lo) and got["ci_high"] == pytest.approx(hi)
    assert stats.paired_difference(a, b, confidence=0.99)["half_width"] > got["half_width"]


@pytest.mark.parametrize(
    ("a", "b", "direction", "want"),
    [
        ([3.0, 3.1, 2.9, 3.0, 3.2], [1.0, 1.1, 0.9, 1.2, 1.0], "greater", "agrees"),
        ([3.0, 3.1, 2.9, 3.0, 3.2], [1.0, 1.1, 0.9, 1.2, 1.0], "less", "disagrees"),
        ([1.0, 2.0, 0.5, 1.5, 1.0], [1.2, 1.0, 1.0, 1.1, 1.3], "greater", "not resolved"),
        ([1.0], [0.0], "greater", "not resolved"),  # one seed never resolves
    ],
)
def test_verdict_rule(a, b, direction, want):
    assert stats.verdict(stats.paired_difference(a, b), direction) == want


def test_bad_input():
    with pytest.raises(ValueError, match="same number of seeds"):
        stats.paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="must be finite"):
        stats.paired_difference([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least one pair"):
        stats.paired_difference([], [])
    with pytest.raises(ValueError, match="direction must be"):
        stats.verdict({"ci_low": 0.1, "ci_high": 0.2}, "up")
