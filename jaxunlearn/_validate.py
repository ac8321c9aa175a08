"""Small input checks shared by the public functions (internal).

The checks only look at concrete Python values, so they never break tracing: a traced ``rho`` (for
instance under ``jax.vmap`` over ρ) is accepted as it is.
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Iterable

import jax
import numpy as np


def is_concrete_number(x) -> bool:
    """True for Python/NumPy scalars and concrete 0-d arrays (not tracers)."""
    if isinstance(x, numbers.Number):
        return True
    if isinstance(x, jax.core.Tracer):
        return False
    return isinstance(x, np.ndarray | jax.Array) and np.ndim(x) == 0


def positive(name: str, value, *, allow_zero: bool = False, hint: str = "") -> None:
    """Raise ``ValueError`` when a concrete ``value`` is not > 0 (or >= 0)."""
    if not is_concrete_number(value):
        return
    v = float(value)
    ok = v >= 0 if allow_zero else v > 0
    if not ok or not np.isfinite(v):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}.{(' ' + hint) if hint else ''}")


def fraction(name: str, value) -> float:
    """Return ``value`` as float after checking it lies in (0, 1]."""
    if not is_concrete_number(value):
        raise ValueError(f"{name} must be a concrete Python number in (0, 1], got a traced value.")
    v = float(value)
    if not (0.0 < v <= 1.0):
        raise ValueError(f"{name} must be in (0, 1] (a fraction of all parameters), got {value!r}.")
    return v


def positive_int(name: str, value) -> int:
    """Return ``value`` as int after checking it is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    return int(value)


def choice(name: str, value, options: Iterable[str]) -> str:
    """Check ``value`` is one of ``options``; suggest the closest on failure."""
    options = list(options)
    if value in options:
        return value
    close = difflib.get_close_matches(str(value), options, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"{name} must be one of {options}, got {value!r}.{hint}")


def same_structure(name_a: str, a, name_b: str, b) -> None:
    """Raise ``ValueError`` unless pytrees ``a`` and ``b`` have the same structure and leaf shapes."""
    ta, tb = jax.tree.structure(a), jax.tree.structure(b)
    if ta != tb:
        raise ValueError(
            f"{name_a} and {name_b} must be pytrees of the same structure; got\n  {name_a}: {ta}\n  {name_b}: {tb}"
        )
    for la, lb in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if np.shape(la) != np.shape(lb):
            raise ValueError(
                f"{name_a} and {name_b} must have leaves of the same shapes; got {np.shape(la)} vs {np.shape(lb)}."
            )
