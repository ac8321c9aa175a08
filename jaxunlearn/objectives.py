"""Loss terms used by the unlearning methods, and helpers to build objectives over a model.

Terms are pure functions of logits/labels/params. Objectives take an ``apply_fn`` following the
model contract ``apply_fn(params, model_state, x, *, train, features) -> (out, new_model_state)``
(see ``docs/CONTRACTS.md``) but know nothing of Flax.

Example:
    >>> logits = jnp.array([[2.0, 0.0], [0.0, 1.0]]); labels = jnp.array([0, 1])
    >>> float(cross_entropy(logits, labels)) < float(cross_entropy(logits, 1 - labels))
    True
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "cross_entropy",
    "per_example_cross_entropy",
    "negated_cross_entropy",
    "kl_distillation",
    "l1_norm",
    "random_wrong_labels",
    "weighted_sum",
]

PyTree = Any


def per_example_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``ℓ_i = −log softmax(z_i)[y_i]`` for each example.

    Example:
        >>> [round(v, 6) for v in per_example_cross_entropy(jnp.zeros((1, 4)), jnp.array([2])).tolist()]   # log 4
        [1.386294]
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]


def cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Mean cross-entropy ``CE = (1/n) Σ_i ℓ_i`` (or ``Σ w_i ℓ_i / Σ w_i`` with ``weights``).

    Example:
        >>> round(float(cross_entropy(jnp.zeros((3, 2)), jnp.array([0, 1, 0]))), 6)   # log 2
        0.693147
    """
    ell = per_example_cross_entropy(logits, labels)
    if weights is None:
        return jnp.mean(ell)
    w = weights.astype(ell.dtype)
    return jnp.sum(w * ell) / jnp.maximum(jnp.sum(w), 1e-12)


def negated_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``−CE``: minimizing it is gradient ascent on the cross-entropy (GA, the forget side of NegGrad).

    Example:
        >>> round(float(negated_cross_entropy(jnp.zeros((1, 2)), jnp.array([0]))), 6)
        -0.693147
    """
    return -cross_entropy(logits, labels)


def kl_distillation(student_logits: jax.Array, teacher_logits: jax.Array, temperature=4.0) -> jax.Array:
    """SCRUB's distillation loss ``T² · mean_i KL(softmax(t_i/T) ‖ softmax(s_i/T))``.

    Example:
        >>> z = jnp.array([[1.0, 2.0]])
        >>> float(kl_distillation(z, z))
        0.0
    """
    t = temperature
    logp_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t, axis=-1)
    logp_t = jax.nn.log_softmax(jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / t, axis=-1)
    kl = jnp.sum(jnp.exp(logp_t) * (logp_t - logp_s), axis=-1)
    return jnp.mean(kl) * t * t


def l1_norm(params: PyTree) -> jax.Array:
    """``‖w‖₁ = Σ |w|`` over every parameter (the L1-sparse penalty).

    Example:
        >>> l1_norm({"a": jnp.array([1.0, -2.0]), "b": jnp.array(3.0)})
        Array(6., dtype=float32)
    """
    return sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(params))


def random_wrong_labels(key: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
    """Uniformly random labels different from the true ones: ``(y + U{1..C−1}) mod C``.

    Example:
        >>> y = jnp.array([0, 1, 2])
        >>> bool(jnp.all(random_wrong_labels(jax.random.key(0), y, 3) != y))
        True
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 to draw a wrong label, got {num_classes}.")
    shift = jax.random.randint(key, labels.shape, 1, num_classes)
    return ((labels + shift) % num_classes).astype(labels.dtype)


def weighted_sum(terms: dict[str, jax.Array], weights: dict[str, float]) -> jax.Array:
    """``Σ_k w_k · term_k`` over the keys of ``weights`` (every key must be in ``terms``).

    Example:
        >>> round(float(weighted_sum({"r": jnp.array(1.0), "f": jnp.array(2.0)}, {"r": 0.99, "f": -0.01})), 6)
        0.97
    """
    missing = set(weights) - set(terms)
    if missing:
        raise ValueError(f"weights name terms that were not computed: {sorted(missing)}; terms: {sorted(terms)}.")
    return sum(w * terms[k] for k, w in weights.items())
