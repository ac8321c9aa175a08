"""Pieces several methods share: gradient saliency over a set, and simple phase losses.

Example:
    >>> from jaxunlearn.methods import toy_context
    >>> ctx = toy_context()
    >>> g = summed_gradient(ctx.apply_fn, ctx.params, ctx.model_state, ctx.x, ctx.y, ctx.forget_idx)
    >>> jax.tree.structure(g) == jax.tree.structure(ctx.params)
    True
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxunlearn import batching, objectives, selection

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


def summed_gradient(
    apply_fn, params, model_state, x, y, idx, *, labels=None, batch_size: int = 256, batch_mean: bool = False
) -> PyTree:
    """``Σ_{i ∈ idx} ∇_w CE(f(x_i), y_i)`` in eval mode (batch-norm running statistics), batched.

    ``labels`` (same length as ``idx``) replaces ``y[idx]``. The magnitude ``|Σ ∇(−CE)|`` is the saliency
    that SalUn and Sharp MinMax rank parameters by. ``batch_mean=True`` sums per-batch MEANS instead,
    ``Σ_b (1/|B_b|) Σ_{i ∈ B_b} ∇CE_i`` over consecutive batches ``B_b`` of ``batch_size`` examples of
    ``idx`` (the last one may be smaller), as the reference code of Sharp MinMax accumulates the
    gradients of its forget loader; the two differ only by the weight of the last, shorter batch.

    Example:
        >>> from jaxunlearn.methods import toy_context
        >>> ctx = toy_context()
        >>> idx = ctx.forget_idx  # 12 examples, summed in batches of 5 (the last one padded with weight 0)
        >>> g = summed_gradient(ctx.apply_fn, ctx.params, ctx.model_state, ctx.x, ctx.y, idx, batch_size=5)
        >>> def total_ce(p):  # Σ_i CE_i in one batch
        ...     logits, _ = ctx.apply_fn(p, ctx.model_state, ctx.x[idx])
        ...     return objectives.per_example_cross_entropy(logits, ctx.y[idx]).sum()
        >>> ref = jax.jit(jax.grad(total_ce))(ctx.params)
        >>> all(np.allclose(a, b, atol=1e-5) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref)))
        True
        >>> scores = jax.tree.map(jnp.abs, g)  # the saliency of SalUn and Sharp MinMax
        >>> gm = summed_gradient(ctx.apply_fn, ctx.params, ctx.model_state, ctx.x, ctx.y, idx, batch_size=5,
        ...                      batch_mean=True)  # batches of 5, 5 and 2: (g₁ + g₂)/5 + g₃/2
        >>> g3 = summed_gradient(ctx.apply_fn, ctx.params, ctx.model_state, ctx.x, ctx.y, idx[10:])
        >>> ref = jax.tree.map(lambda a, b: (a - b) / 5 + b / 2, g, g3)
        >>> all(np.allclose(a, b, atol=1e-5) for a, b in zip(jax.tree.leaves(gm), jax.tree.leaves(ref)))
        True
    """
    idx = np.asarray(idx)
    if idx.size == 0:
        raise ValueError("cannot compute a gradient over an empty set of examples.")
    if labels is not None:
        y = jnp.asarray(y).at[idx].set(jnp.asarray(labels, jnp.int32))
    fn = _grad_sum_fn(apply_fn)

    def add_chunk(chunk, weights, total):  # the chunk's examples gathered and summed inside one program
        if batch_mean:
            weights = weights / weights.sum()
        return fn(params, model_state, x, y, jnp.asarray(chunk, jnp.int32), jnp.asarray(weights), total)

    return batching.batched_sum(add_chunk, idx, batch_size=batch_size, carry=True)


class MeanCE:
    """``loss(params, batch) = CE(f(batch["x"]), batch["y"])`` in eval mode, for the curvature estimators.

    :mod:`jaxunlearn.curvature` compiles one program per loss function (a static argument). Two
    ``MeanCE`` built from the same ``apply_fn`` and the same ``model_state`` arrays compare equal and
    hash alike, so repeated Hessian / Fisher scores (every ``hessian_select`` or ``ssd`` call) reuse the
    compiled program instead of recompiling a fresh closure each time.

    Example:
        >>> from jaxunlearn import curvature
        >>> from jaxunlearn.methods import toy_context
        >>> ctx = toy_context()
        >>> loss = MeanCE(ctx.apply_fn, ctx.model_state)
        >>> loss == MeanCE(ctx.apply_fn, ctx.model_state)  # same function, same state arrays
        True
        >>> batch = {"x": ctx.x[:8], "y": ctx.y[:8]}
        >>> logits, _ = ctx.apply_fn(ctx.params, ctx.model_state, batch["x"])
        >>> bool(jnp.isclose(loss(ctx.params, batch), objectives.cross_entropy(logits, batch["y"])))
        True
        >>> diag = curvature.fisher_diagonal(loss, ctx.params, batch)
        >>> jax.tree.structure(diag) == jax.tree.structure(ctx.params)
        True
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


def forget_saliency_mask(
    ctx, fraction: float, *, largest: bool = True, batch_mean: bool = False, rounding: str = "ceil"
) -> PyTree:
    """``M``: the top (or, ``largest=False``, bottom) ``fraction`` of ``|Σ_{i∈F} ∇CE_i|`` over all parameters,
    ranked globally (SalUn's and Sharp MinMax's mask; ``|Σ∇(−CE)| = |Σ∇CE|``).

    ``batch_mean=True`` ranks ``|Σ_b mean_{i∈B_b} ∇CE_i|`` over the forget set in batches of
    ``ctx.batch_size`` (:func:`summed_gradient`), and ``rounding`` is :func:`selection.top_fraction`'s
    (``"floor"``: ``int(N·f)`` entries): Sharp MinMax's reference code does both.

    Example:
        >>> from jaxunlearn.methods import toy_context
        >>> ctx = toy_context()
        >>> mask = forget_saliency_mask(ctx, 0.3)
        >>> selection.mask_size(mask), selection.count(mask)  # ⌈0.3 · 67⌉ of the toy's 67 parameters
        (21, 67)
        >>> low = forget_saliency_mask(ctx, 0.3, largest=False)
        >>> any(bool(jnp.any(a & b)) for a, b in zip(jax.tree.leaves(mask), jax.tree.leaves(low)))
        False
    """
    kw = {"batch_size": ctx.batch_size, "batch_mean": True} if batch_mean else {}
    g = summed_gradient(ctx.apply_fn, ctx.params, ctx.model_state, ctx.x, ctx.y, ctx.forget_idx, **kw)
    return selection.top_fraction(jax.tree.map(jnp.abs, g), fraction, largest=largest, rounding=rounding)
