"""Pieces several methods share: gradient saliency over a set, and simple phase losses.

Example:
    >>> g = summed_gradient(ctx.apply_fn, ctx.params, ctx.model_state, ctx.x, ctx.y, ctx.forget_idx)
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxunlearn import objectives, selection

PyTree = Any


@functools.lru_cache(maxsize=32)
def _grad_sum_fn(apply_fn):
    # ``total`` is None for the first chunk and the running sum after it: two programs at most, and the
    # chunks are added inside the compiled program instead of by eager per-leaf operations.
    def f(params, model_state, x, y, idx, weights, total):
        def loss(p):
            logits, _ = apply_fn(p, model_state, jnp.take(x, idx, axis=0), train=False)
            ell = objectives.per_example_cross_entropy(logits, jnp.take(y, idx, axis=0))
            return jnp.sum(weights * ell)

        g = jax.grad(loss)(params)
        return g if total is None else jax.tree.map(jnp.add, total, g)

    return jax.jit(f)


def summed_gradient(apply_fn, params, model_state, x, y, idx, *, labels=None, batch_size: int = 256) -> PyTree:
    """``Σ_{i ∈ idx} ∇_w CE(f(x_i), y_i)`` in eval mode (batch-norm running statistics), batched.

    ``labels`` (same length as ``idx``) replaces ``y[idx]``. The magnitude ``|Σ ∇(−CE)|`` is the saliency
    that SalUn and Sharp MinMax rank parameters by.

    Example:
        >>> scores = jax.tree.map(jnp.abs, summed_gradient(apply_fn, params, state, x, y, forget_idx))
    """
    idx = np.asarray(idx)
    if idx.size == 0:
        raise ValueError("cannot compute a gradient over an empty set of examples.")
    if labels is not None:
        y = jnp.asarray(y).at[idx].set(jnp.asarray(labels, jnp.int32))
    fn = _grad_sum_fn(apply_fn)
    total = None
    bs = min(batch_size, idx.size)
    for start in range(0, idx.size, bs):
        chunk = idx[start : start + bs]
        w = np.ones(bs, np.float32)
        if chunk.size < bs:
            w[chunk.size :] = 0.0
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], bs - chunk.size)])
        total = fn(params, model_state, x, y, jnp.asarray(chunk, jnp.int32), jnp.asarray(w), total)
    return total


class MeanCE:
    """``loss(params, batch) = CE(f(batch["x"]), batch["y"])`` in eval mode, for the curvature estimators.

    :mod:`jaxunlearn.curvature` compiles one program per loss function (a static argument). Two
    ``MeanCE`` built from the same ``apply_fn`` and the same ``model_state`` arrays compare equal and
    hash alike, so repeated Hessian / Fisher scores (every ``hessian_select`` or ``ssd`` call) reuse the
    compiled program instead of recompiling a fresh closure each time.

    Example:
        >>> diag = curvature.fisher_diagonal(MeanCE(apply_fn, state), params, {"x": x, "y": y})
    """

    def __init__(self, apply_fn, model_state):
        self.apply_fn = apply_fn
        self.model_state = model_state
        self._leaves, self._treedef = jax.tree.flatten(model_state)

    def __call__(self, params, batch):
        logits, _ = self.apply_fn(params, self.model_state, batch["x"], train=False)
        return objectives.cross_entropy(logits, batch["y"])

    def __hash__(self):
        return hash((id(self.apply_fn), self._treedef, tuple(id(x) for x in self._leaves)))

    def __eq__(self, other):
        return (
            isinstance(other, MeanCE)
            and other.apply_fn is self.apply_fn
            and other._treedef == self._treedef
            and len(other._leaves) == len(self._leaves)
            and all(a is b for a, b in zip(other._leaves, self._leaves))
        )


def forget_saliency_mask(ctx, fraction: float, *, largest: bool = True) -> PyTree:
    """``M``: the top (or, ``largest=False``, bottom) ``fraction`` of ``|Σ_{i∈F} ∇CE_i|`` over all parameters,
    ranked globally (SalUn's and Sharp MinMax's mask; ``|Σ∇(−CE)| = |Σ∇CE|``).

    Example:
        >>> mask = forget_saliency_mask(ctx, 0.3)
    """
    g = summed_gradient(ctx.apply_fn, ctx.params, ctx.model_state, ctx.x, ctx.y, ctx.forget_idx)
    return selection.top_fraction(jax.tree.map(jnp.abs, g), fraction, largest=largest)
