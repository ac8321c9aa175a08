"""Parameter selection: boolean mask pytrees over parameters.

A mask is a pytree of boolean arrays with the same structure and shapes as the parameters; ``True``
marks a selected (updated) parameter. Masks plug into :func:`jaxunlearn.transforms.masked` (element-wise)
and :func:`apply_mask`. Scores can be anything per parameter: the Hessian diagonal (paper B), the
gradient magnitude ``|∇ CE(F)|`` (SalUn, Sharp MinMax), the Fisher diagonal, ...

Example:
    >>> scores = {"a": jnp.array([0.1, 5.0]), "b": jnp.array([[3.0, 0.2]])}
    >>> top_fraction(scores, 0.5)            # the 2 largest of 4, ranked globally
    {'a': Array([False,  True], dtype=bool), 'b': Array([[ True, False]], dtype=bool)}
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxunlearn import _validate

ROUNDINGS = ("ceil", "floor")

__all__ = [
    "ROUNDINGS",
    "top_fraction",
    "random_fraction",
    "by_path",
    "all_params",
    "invert",
    "apply_mask",
    "mask_size",
    "count",
]

PyTree = Any


def count(tree: PyTree) -> int:
    """Total number of scalar entries in a pytree.

    Example:
        >>> count({"a": jnp.zeros((2, 3)), "b": jnp.zeros(4)})
        10
    """
    return int(sum(math.prod(jnp.shape(x)) for x in jax.tree.leaves(tree)))


def top_fraction(scores: PyTree, fraction: float, *, largest: bool = True, rounding: str = "ceil") -> PyTree:
    """Select exactly ``k = ⌈fraction · N⌉`` entries of ``scores`` by GLOBAL rank across all leaves.

    ``largest=True`` keeps the k largest scores, ``largest=False`` the k smallest (the reference code
    of Sharp MinMax sorts ascending and so selects the smallest). Ties are broken deterministically by
    position in the flattened pytree (earlier leaf / earlier index first). NaN scores rank last for
    ``largest=True`` and first... never: a NaN score raises when the scores are concrete.

    Args:
        scores: pytree of arrays (any float dtype).
        fraction: in (0, 1]; must be a Python number (k decides the output structure).
        largest: keep the largest (default) or the smallest scores.
        rounding: ``"ceil"`` (default, ``k = ⌈fraction · N⌉``: never an empty mask) or ``"floor"``
            (``k = ⌊fraction · N⌋``, the ``int(N · f)`` of Sharp MinMax's reference code; may be 0).

    Returns:
        A boolean pytree with the structure and shapes of ``scores`` and exactly k ``True`` entries.

    Example:
        >>> top_fraction({"w": jnp.array([1.0, 3.0, 2.0])}, 0.34)["w"]
        Array([False,  True,  True], dtype=bool)
        >>> top_fraction({"w": jnp.array([1.0, 3.0, 2.0])}, 0.34, rounding="floor")["w"]  # ⌊1.02⌋ = 1
        Array([False,  True, False], dtype=bool)
    """
    frac = _validate.fraction("fraction", fraction)
    _validate.choice("rounding", rounding, ROUNDINGS)
    n = count(scores)
    if n == 0:
        raise ValueError("scores has no entries to select from.")
    # "floor" is exactly the reference code's int(N · f), floating-point product included
    k = min(n, math.ceil(frac * n - 1e-9)) if rounding == "ceil" else int(n * frac)
    # host values (NumPy arrays of any dtype, Python numbers) become float32 on the host, before jit
    # would narrow 64-bit integers; JAX arrays are converted inside the program
    scores = jax.tree.map(lambda x: x if isinstance(x, jax.Array) else np.asarray(x, np.float32), scores)
    mask, has_nan = _top_k_mask(scores, k, bool(largest))
    if not isinstance(has_nan, jax.core.Tracer) and bool(has_nan):
        raise ValueError("scores contains NaN; compute scores at finite parameters or replace NaN first.")
    return mask


@functools.partial(jax.jit, static_argnames=("largest",))
def _top_k_mask(scores, k, largest):
    """The entries of global rank ``< k`` (stable order) and whether any score is NaN. One program per
    score structure, whatever ``k`` (eager per-leaf ops would compile once per leaf shape)."""
    flat, unravel = ravel_pytree(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), scores))
    order = jnp.argsort(-flat if largest else flat, stable=True)
    rank = jnp.zeros(flat.shape, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32))
    # ravel_pytree's unravel casts to the original dtype; rebuild a bool tree explicitly.
    as_float = unravel((rank < k).astype(jnp.float32))
    return jax.tree.map(lambda x: x > 0.5, as_float), jnp.any(jnp.isnan(flat))


def random_fraction(params: PyTree, fraction: float, key: jax.Array) -> PyTree:
    """Select exactly ``⌈fraction · N⌉`` parameters uniformly at random (a control for other masks).

    Example:
        >>> m = random_fraction({"w": jnp.zeros(10)}, 0.3, jax.random.key(0))
        >>> int(m["w"].sum())
        3
    """
    flat, unravel = ravel_pytree(params)
    scores = unravel(jax.random.uniform(key, flat.shape))
    return top_fraction(scores, fraction)


def by_path(params: PyTree, predicate: Callable[[str], bool]) -> PyTree:
    """Select whole leaves whose key path (as ``'a/b/c'``) satisfies ``predicate``.

    Useful for "last layer only": ``by_path(params, lambda p: p.startswith('head'))``.

    Example:
        >>> by_path({"body": jnp.ones(2), "head": jnp.ones(1)}, lambda p: "head" in p)
        {'body': Array([False, False], dtype=bool), 'head': Array([ True], dtype=bool)}
    """

    def name(path) -> str:
        parts = []
        for k in path:
            for attr in ("key", "name", "idx"):
                if hasattr(k, attr):
                    parts.append(str(getattr(k, attr)))
                    break
            else:
                parts.append(str(k))
        return "/".join(parts)

    return jax.tree_util.tree_map_with_path(lambda path, x: jnp.full(jnp.shape(x), bool(predicate(name(path)))), params)


def all_params(params: PyTree) -> PyTree:
    """The all-True mask (update every parameter).

    Example:
        >>> all_params({"w": jnp.zeros(2)})["w"]
        Array([ True,  True], dtype=bool)
    """
    return jax.tree.map(lambda x: jnp.ones(jnp.shape(x), bool), params)


def invert(mask: PyTree) -> PyTree:
    """Complement ``1 − M`` of a mask.

    Example:
        >>> invert({"w": jnp.array([True, False])})["w"]
        Array([False,  True], dtype=bool)
    """
    return jax.tree.map(jnp.logical_not, mask)


def apply_mask(tree: PyTree, mask: PyTree) -> PyTree:
    """Zero the entries of ``tree`` outside ``mask``: ``M ⊙ tree`` (exact zeros, dtype kept).

    Example:
        >>> apply_mask({"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([True, False])})["w"]
        Array([1., 0.], dtype=float32)
    """
    _validate.same_structure("tree", tree, "mask", mask)
    return jax.tree.map(lambda x, m: jnp.where(m, x, jnp.zeros_like(x)), tree, mask)


def mask_size(mask: PyTree) -> int:
    """Number of selected entries in a mask.

    Example:
        >>> mask_size({"w": jnp.array([True, False, True])})
        2
    """
    return int(sum(np.count_nonzero(np.asarray(m)) for m in jax.tree.leaves(mask)))  # on the host: no compile
