"""Shared pieces of the LM methods: the mean token cross-entropy as a curvature loss, and summed gradients
over a set of token examples (for saliency masks)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxunlearn import objectives


class LMTokenCE:
    """``loss(params, batch) = CE = −Σ m log p(y) / Σ m`` in eval mode over a token batch ``{"x","y","mask"}``:
    the LM loss of :mod:`jaxunlearn.curvature`'s estimators (hashable like ``methods.common.MeanCE``, so equal
    losses share compiled programs).

    Example:
        >>> from jaxunlearn import curvature
        >>> from jaxunlearn.methods.lm import toy_lm_context
        >>> ctx = toy_lm_context()
        >>> loss = LMTokenCE(ctx.apply_fn, ctx.model_state)
        >>> batch = {k: ctx.data[k][:4] for k in ("x", "y", "mask")}
        >>> g = jax.grad(loss)(ctx.params, batch)
        >>> loss == LMTokenCE(ctx.apply_fn, ctx.model_state), jax.tree.structure(g) == jax.tree.structure(ctx.params)
        (True, True)
    """

    def __init__(self, apply_fn, model_state):
        self.apply_fn = apply_fn
        self.model_state = model_state
        self._leaves, self._treedef = jax.tree.flatten(model_state)

    def __call__(self, params, batch):
        logits, _ = self.apply_fn(params, self.model_state, batch["x"], train=False)
        return objectives.token_cross_entropy(logits, batch["y"], batch["mask"])

    def __hash__(self):
        return hash((id(self.apply_fn), self._treedef, tuple(id(x) for x in self._leaves)))

    def __eq__(self, other):
        return (isinstance(other, LMTokenCE) and other.apply_fn is self.apply_fn and other._treedef == self._treedef
                and all(a is b for a, b in zip(other._leaves, self._leaves)))  # fmt: skip


@functools.lru_cache(maxsize=32)
def _grad_fn(apply_fn):
    def g(params, model_state, batch):
        def total(p):  # Σ over the chunk's tokens of −log p: chunks then add up to the set's sum
            logits, _ = apply_fn(p, model_state, batch["x"], train=False)
            return -jnp.sum(batch["mask"] * objectives.token_log_probs(logits, batch["y"]))

        return jax.grad(total)(params)

    return jax.jit(g)


def token_gradient(apply_fn, params, model_state, data: dict, idx, *, chunk: int = 64):
    """``Σ_{i∈idx} Σ_t m_it ∇(−log p(y_it))``: the summed token-NLL gradient over the examples ``idx``, in chunks.
    ``|token_gradient|`` is the saliency of Sharp MinMax's mask (``|Σ∇(−CE)| = |Σ∇CE|``).

    Example:
        >>> from jaxunlearn.methods.lm import toy_lm_context
        >>> ctx = toy_lm_context()
        >>> g1 = token_gradient(ctx.apply_fn, ctx.params, ctx.model_state, ctx.data, ctx.forget_idx, chunk=3)
        >>> g2 = token_gradient(ctx.apply_fn, ctx.params, ctx.model_state, ctx.data, ctx.forget_idx)
        >>> all(np.allclose(a, b, atol=1e-4) for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)))
        True
    """
    idx = np.asarray(idx)
    if idx.size == 0:
        raise ValueError("cannot compute a gradient over an empty set of examples.")
    fn, total = _grad_fn(apply_fn), None
    for s in range(0, idx.size, chunk):
        part = {k: jnp.take(data[k], jnp.asarray(idx[s : s + chunk]), axis=0) for k in ("x", "y", "mask")}
        part["mask"] = part["mask"].astype(jnp.float32)
        g = fn(params, model_state, part)
        total = g if total is None else jax.tree.map(jnp.add, total, g)
    return total
