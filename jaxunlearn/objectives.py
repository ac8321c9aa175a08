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
__all__ += [  # token-level losses (language models), defined at the end of the module
    "token_log_probs",
    "token_cross_entropy",
    "sequence_log_likelihood",
    "npo_loss",
    "simnpo_loss",
    "masked_mse",
    "rmu_loss",
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


# ---- token-level losses for language models (batches of [B, T] tokens with a [B, T] loss mask) ----


def token_log_probs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """``log p(y_t | y_<t)`` per position: ``log softmax(z_t)[y_t]``, shape ``[B, T]``.

    Example:
        >>> [round(v, 6) for v in token_log_probs(jnp.zeros((1, 2, 4)), jnp.array([[1, 3]]))[0].tolist()]
        [-1.386294, -1.386294]
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]


def token_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean cross-entropy over the masked tokens: ``CE = −Σ_{b,t} m_bt log p(y_bt) / Σ_{b,t} m_bt``.

    Example:
        >>> z = jnp.zeros((1, 3, 4)); y = jnp.array([[0, 1, 2]]); m = jnp.array([[1.0, 1.0, 0.0]])
        >>> round(float(token_cross_entropy(z, y, m)), 6)   # log 4
        1.386294
    """
    m = mask.astype(jnp.float32)
    return -jnp.sum(m * token_log_probs(logits, targets)) / jnp.maximum(jnp.sum(m), 1.0)


def sequence_log_likelihood(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """``log π(y|x) = Σ_t m_t log p(y_t | y_<t)`` per sequence, shape ``[B]`` (the masked tokens are the
    response ``y``, the rest the prompt ``x``).

    Example:
        >>> mask = jnp.array([[1, 1, 0], [1, 1, 1]])
        >>> ll = sequence_log_likelihood(jnp.zeros((2, 3, 4)), jnp.zeros((2, 3), int), mask)
        >>> [round(v, 4) for v in ll.tolist()]       # 2·log(1/4), 3·log(1/4)
        [-2.7726, -4.1589]
    """
    return jnp.sum(mask.astype(jnp.float32) * token_log_probs(logits, targets), axis=-1)


def npo_loss(log_lik: jax.Array, ref_log_lik: jax.Array, beta=0.1) -> jax.Array:
    """Negative Preference Optimization (Zhang et al. 2024, "Negative Preference Optimization: From
    Catastrophic Collapse to Effective Unlearning"):
    ``L = (2/β) · mean_i log(1 + (π_θ(y_i|x_i) / π_ref(y_i|x_i))^β) = (2/β) · mean_i softplus(β (log π_θ − log π_ref))``
    with sequence log-likelihoods; ``π_ref`` is the model before unlearning (its log-likelihoods carry no
    gradient). At ``π_θ = π_ref`` it is ``(2/β) log 2``; as ``β → 0`` it tends to gradient ascent.

    Example:
        >>> round(float(npo_loss(jnp.array([-3.0]), jnp.array([-3.0]), beta=0.1)), 4)   # 20 · log 2
        13.8629
    """
    diff = log_lik - jax.lax.stop_gradient(ref_log_lik)
    return (2.0 / beta) * jnp.mean(jax.nn.softplus(beta * diff))


def simnpo_loss(log_lik: jax.Array, lengths: jax.Array, beta=2.5, gamma=0.0) -> jax.Array:
    """SimNPO (Fan et al. 2024, "Simplicity Prevails: Rethinking Negative Preference Optimization for LLM
    Unlearning"), reference-free and length-normalized:
    ``L = −(2/β) · mean_i log σ(−(β/|y_i|) log π_θ(y_i|x_i) − γ) = (2/β) · mean_i softplus((β/|y_i|) log π_θ + γ)``.

    Example:
        >>> round(float(simnpo_loss(jnp.array([0.0]), jnp.array([4.0]), beta=2.5)), 4)   # (2/2.5) · log 2
        0.5545
    """
    n = jnp.maximum(lengths.astype(jnp.float32), 1.0)
    return (2.0 / beta) * jnp.mean(jax.nn.softplus(beta * log_lik / n + gamma))


def masked_mse(h: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean squared distance of hidden states over the masked tokens:
    ``Σ_{b,t} m_bt ‖h_bt − target_bt‖² / (D · Σ_{b,t} m_bt)`` (``h`` ``[B, T, D]``, ``target`` broadcastable):
    RMU's forget term with ``target = c·u`` and its retain term with the frozen model's states.

    Example:
        >>> h = jnp.ones((1, 2, 4)); m = jnp.array([[1.0, 0.0]])
        >>> float(masked_mse(h, jnp.zeros(4), m))
        1.0
    """
    m = mask.astype(jnp.float32)
    d2 = jnp.mean(jnp.square(h.astype(jnp.float32) - target), axis=-1)
    return jnp.sum(m * d2) / jnp.maximum(jnp.sum(m), 1.0)


def rmu_loss(h_forget, mask_forget, u, steer, h_retain, h_retain_ref, mask_retain, alpha=1.0) -> jax.Array:
    """Representation Misdirection for Unlearning (Li et al. 2024, "The WMDP Benchmark"):
    ``L = ‖h_ℓ(x_f) − c·u‖² + α · ‖h_ℓ(x_r) − h_ℓ^frozen(x_r)‖²`` (each a per-token mean squared distance,
    :func:`masked_mse`), ``u`` a fixed random unit vector, ``c`` the steering coefficient, ``h_ℓ`` the hidden
    states at the chosen layer ℓ and ``h^frozen`` the model's before unlearning.

    Example:
        >>> h = jnp.zeros((1, 1, 2)); m = jnp.ones((1, 1)); u = jnp.array([1.0, 0.0])
        >>> float(rmu_loss(h, m, u, 2.0, h, h, m, alpha=5.0))     # ‖(0,0) − (2,0)‖² / 2
        2.0
    """
    forget = masked_mse(h_forget, steer * u, mask_forget)
    retain = masked_mse(h_retain, jax.lax.stop_gradient(h_retain_ref), mask_retain)
    return forget + alpha * retain
