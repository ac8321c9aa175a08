"""Shared pieces of the LM methods: the token cross-entropy of one part of a batch, one forward pass over a
paired retain/forget batch with the weighted retain NLL every paired objective adds, the mean token
cross-entropy as a curvature loss, and summed gradients over a set of token examples (for saliency masks).

Example:
    >>> from jaxunlearn.methods.lm import toy_lm_context
    >>> ctx = toy_lm_context()
    >>> b = {k: {a: ctx.data[a][i[:3]] for a in ("x", "y", "mask")} for k, i in (("retain", ctx.retain_idx),
    ...                                                                             ("forget", ctx.forget_idx))}
    >>> out_r, out_f, _ = paired_forward(ctx.apply_fn, ctx.params, ctx.model_state, b)
    >>> out_r.shape[0], out_f.shape[0]
    (3, 3)
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxunlearn import batching, objectives
from jaxunlearn.methods.lm.base import forward

__all__ = ["part_ce", "paired_forward", "retain_nll", "paired_nll_loss", "LMTokenCE", "token_gradient"]


def part_ce(apply_fn, params, model_state, batch, key: str):
    """``CE(P) = −Σ m log p(y) / Σ m`` over the masked tokens of the part ``P = batch[key]`` (``"retain"`` or
    ``"forget"``), one forward pass in train mode: ``(CE(P), new_state)``. GradAscent's ``−CE(F)`` and
    Sharp MinMax's ``α·CE(R)`` / ``−(1−α)·CE(F)`` are multiples of it.

    Example:
        >>> from jaxunlearn.methods.lm import toy_lm_context
        >>> ctx = toy_lm_context()
        >>> part = {k: ctx.data[k][ctx.forget_idx] for k in ("x", "y", "mask")}
        >>> ce, _ = part_ce(ctx.apply_fn, ctx.params, ctx.model_state, {"forget": part}, "forget")
        >>> bool(abs(ce - jnp.log(ctx.apply_fn.num_classes)) < 0.5)   # an untrained model: about log V
        True
    """
    p = batch[key]
    logits, new_state = forward(apply_fn, params, model_state, p)
    return objectives.token_cross_entropy(logits, p["y"], p["mask"]), new_state


def paired_forward(apply_fn, params, model_state, batch, *, features: bool = False):
    """One forward pass over the concatenated inputs ``[x_R; x_F]`` of ``batch = {"retain": R, "forget": F}``:
    ``(out_R, out_F, new_state)``, ``out`` the logits ``[B, T, V]`` (``features=True``: the hidden states
    ``[B, L + 1, T, D]``).

    Example:
        >>> from jaxunlearn.methods.lm import toy_lm_context
        >>> ctx = toy_lm_context()
        >>> b = {"retain": {"x": ctx.data["x"][:2]}, "forget": {"x": ctx.data["x"][2:5]}}
        >>> h_r, h_f, _ = paired_forward(ctx.apply_fn, ctx.params, ctx.model_state, b, features=True)
        >>> h_r.shape, h_f.shape
        ((2, 3, 14, 16), (3, 3, 14, 16))
    """
    r, f = batch["retain"], batch["forget"]
    out, new_state = forward(apply_fn, params, model_state, {"x": jnp.concatenate([r["x"], f["x"]])},
                             features=features)  # fmt: skip
    n = r["x"].shape[0]
    return out[:n], out[n:], new_state


def retain_nll(logits_r, r: dict, hp: dict):
    """The retain term of the paired objectives (open-unlearning's NLL retain loss): ``w_r·CE(R)``,
    ``w_r = hp["retain_weight"]``.

    Example:
        >>> logits = jnp.zeros((1, 2, 4)); r = {"y": jnp.array([[1, 2]]), "mask": jnp.ones((1, 2))}
        >>> round(float(retain_nll(logits, r, {"retain_weight": 2.0})), 4)   # 2·log 4
        2.7726
    """
    return hp["retain_weight"] * objectives.token_cross_entropy(logits_r, r["y"], r["mask"])


def paired_nll_loss(apply_fn, params, model_state, batch, hp, forget_term: Callable):
    """``L = forget_term(apply_fn, model_state, logits_F, F, hp) + w_r·CE(R)``: the phase loss of GradDiff, NPO
    and SimNPO, the logits of both parts from one forward pass (:func:`paired_forward`); returns
    ``(L, new_state)``.

    Example:
        >>> from jaxunlearn.methods.lm import toy_lm_context
        >>> ctx = toy_lm_context()
        >>> b = {k: {a: ctx.data[a][i[:3]] for a in ("x", "y", "mask")} for k, i in (("retain", ctx.retain_idx),
        ...                                                                             ("forget", ctx.forget_idx))}
        >>> zero = lambda apply_fn, model_state, logits, f, hp: 0.0
        >>> loss, _ = paired_nll_loss(ctx.apply_fn, ctx.params, ctx.model_state, b, {"retain_weight": 1.0}, zero)
        >>> ce, _ = part_ce(ctx.apply_fn, ctx.params, ctx.model_state, b, "retain")
        >>> bool(jnp.isclose(loss, ce))
        True
    """
    logits_r, logits_f, new_state = paired_forward(apply_fn, params, model_state, batch)
    f = batch["forget"]
    return forget_term(apply_fn, model_state, logits_f, f, hp) + retain_nll(logits_r, batch["retain"], hp), new_state


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
    def g(params, model_state, batch, weights):
        def total(p):  # Σ over the chunk's real examples and tokens of −log p: chunks then add up to the set's sum
            logits, _ = apply_fn(p, model_state, batch["x"], train=False)
            nll = -jnp.sum(batch["mask"] * objectives.token_log_probs(logits, batch["y"]), axis=-1)
            return jnp.sum(weights * nll)

        return jax.grad(total)(params)

    return jax.jit(g)


def token_gradient(apply_fn, params, model_state, data: dict, idx, *, chunk: int = 64):
    """``Σ_{i∈idx} Σ_t m_it ∇(−log p(y_it))``: the summed token-NLL gradient over the examples ``idx``, in chunks
    of ``chunk`` examples (:func:`jaxunlearn.batching.batched_sum`, one compiled program for every chunk).
    ``|token_gradient|`` is the saliency of Sharp MinMax's mask (``|Σ∇(−CE)| = |Σ∇CE|``).

    Example:
        >>> from jaxunlearn.methods.lm import toy_lm_context
        >>> ctx = toy_lm_context()
        >>> g1 = token_gradient(ctx.apply_fn, ctx.params, ctx.model_state, ctx.data, ctx.forget_idx, chunk=5)
        >>> g2 = token_gradient(ctx.apply_fn, ctx.params, ctx.model_state, ctx.data, ctx.forget_idx)
        >>> all(np.allclose(a, b, atol=1e-4) for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)))
        True
    """
    idx = np.asarray(idx)
    if idx.size == 0:
        raise ValueError("cannot compute a gradient over an empty set of examples.")
    part = {k: jnp.take(jnp.asarray(data[k]), jnp.asarray(idx), axis=0) for k in ("x", "y", "mask")}
    part["mask"] = part["mask"].astype(jnp.float32)
    fn = _grad_fn(apply_fn)
    return batching.batched_sum(lambda c, w: fn(params, model_state, c, w), part, batch_size=int(chunk))
