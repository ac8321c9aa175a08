"""``randomized_smoothing``: the gradient of the Gaussian-smoothed loss, as in Unlearn-Smooth's RS.

Fan, Jia, Zhang, Ramakrishna, Hong, Liu, "Towards LLM Unlearning Resilient to Relearning Attacks: A
Sharpness-Aware Minimization Perspective and Beyond", ICML 2025 (OPTML-Group/Unlearn-Smooth, ``RSTrainer``).

Example:
    >>> import jax.numpy as jnp
    >>> randomized_smoothing(0.01, seed=3).init(jnp.ones(2)).key.dtype
    dtype('uint32')
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxunlearn import _validate
from jaxunlearn.transforms import _common

__all__ = ["randomized_smoothing", "SmoothingState", "smoothing_noise"]

PyTree = Any


class SmoothingState(NamedTuple):
    """State of :func:`randomized_smoothing`: ``key``, the raw ``uint32`` data of the PRNG key of the next
    step (``jax.random.key_data``; raw data checkpoints and vmaps like any array).

    Example:
        >>> randomized_smoothing(0.01).init({"w": jnp.ones(2)}).key.shape
        (2,)
    """

    key: jax.Array


def smoothing_noise(key, params: PyTree, sigma, sample: int) -> PyTree:
    """The ``sample``-th perturbation ``σ·z`` of one step: ``z = normal(fold_in(key, sample), (N,))`` in float32
    (``N`` = the number of parameters), cut into the leaves in ``jax.tree.leaves`` order, reshaped and cast to
    each leaf's dtype. One draw per sample keeps the compiled step small (one random-bits kernel, not one per
    leaf).

    Example:
        >>> z = smoothing_noise(jax.random.key(0), {"a": jnp.zeros(3), "b": jnp.zeros(2)}, 0.5, 0)
        >>> z["a"].shape, z["b"].dtype
        ((3,), dtype('float32'))
    """
    leaves, treedef = jax.tree.flatten(params)
    sizes = [math.prod(jnp.shape(x)) for x in leaves]
    flat = sigma * jax.random.normal(jax.random.fold_in(key, sample), (sum(sizes),), jnp.float32)
    noise, offset = [], 0
    for x, n in zip(leaves, sizes):
        noise.append(flat[offset : offset + n].reshape(jnp.shape(x)).astype(jnp.result_type(x)))
        offset += n
    return jax.tree.unflatten(treedef, noise)


def _key_data(seed):
    """``(raw uint32 key data, key implementation)`` of an int seed or a PRNG key."""
    if _validate.is_prng_key(seed):
        if jax.dtypes.issubdtype(seed.dtype, jax.dtypes.prng_key):
            return jax.random.key_data(seed), jax.random.key_impl(seed)
        return jnp.asarray(seed, jnp.uint32), None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int or a JAX PRNG key, got {type(seed).__name__} {seed!r}.")
    return jax.random.key_data(jax.random.key(int(seed))), None


def randomized_smoothing(
    sigma=0.01,
    *,
    samples: int = 3,
    seed=0,
    has_aux: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Randomized smoothing: ``g ↦ (1/n) Σ_{i<n} ∇L(w + σ·z_i)``, ``z_i ~ N(0, I)`` fresh every step.

    The direction is the ``n``-sample Monte-Carlo gradient of the smoothed loss ``E_z L(w + σz)``; the input
    ``g`` is not used (as in the reference). The noise is :func:`smoothing_noise` with the step key: each
    update splits the state's key into ``(step key, next key)`` and keeps the next one, so the transform stays
    pure and a run is reproducible from ``seed`` (an int, or a PRNG key). Every model of a ``vmap``-ed init
    starts from the same key.

    Defaults from Unlearn-Smooth's ``RSTrainer``: ``σ = 0.01`` (their ``sam_rho`` default; their WMDP script
    uses 1e-4), ``n = 3`` (hard-coded there). Differences: there the smoothed gradient is taken of the forget
    loss only and the retain gradient added unperturbed; here it is the gradient of the whole phase loss that
    ``grad_fn`` evaluates. There is no sharpness-maximization form.

    Cost: ``1 + n`` gradients per step (the caller's ``g``, which also gives the loss value, and ``n`` calls of
    ``grad_fn``). Put it FIRST in an ``optax.chain``. ``σ > 0``, ``n >= 1`` (one-line errors otherwise).

    Example:
        >>> g_fn = jax.grad(lambda p: jnp.sum(p ** 4))
        >>> t = randomized_smoothing(0.1, samples=2, seed=0)
        >>> w = jnp.array([1.0, -1.0]); state = t.init(w)
        >>> d, new_state = t.update(g_fn(w), state, w, grad_fn=g_fn)
        >>> step_key = jax.random.split(jax.random.wrap_key_data(state.key))[0]
        >>> direct = sum(g_fn(w + smoothing_noise(step_key, w, 0.1, i)) for i in range(2)) / 2
        >>> bool(jnp.allclose(d, direct)), bool(jnp.any(new_state.key != state.key))
        (True, True)
    """
    _validate.real_number(
        "sigma", sigma, minimum=0.0, strict=True, hint="The noise scale σ of randomized smoothing is > 0, e.g. 0.01."
    )
    samples = _validate.positive_int("samples", samples)
    data, impl = _key_data(seed)

    def wrap(raw):
        return jax.random.wrap_key_data(raw) if impl is None else jax.random.wrap_key_data(raw, impl=impl)

    def init_fn(params):
        del params
        return SmoothingState(jnp.asarray(data))

    def update_fn(updates, state, params=None, *, grad_fn: Callable[[PyTree], Any] | None = None, **extra):
        del extra, updates
        _common.require("randomized_smoothing", params, grad_fn)
        _common.warn_composition("randomized_smoothing", "a smoothed gradient", "sigma")
        step_key, next_key = jax.random.split(wrap(state.key))
        total = None
        for i in range(samples):
            point = _common.add(params, smoothing_noise(step_key, params, sigma, i))
            gi = _common.grad_at("randomized_smoothing", grad_fn, point, params, has_aux)
            total = gi if total is None else _common.add(total, gi)
        direction = jax.tree.map(lambda t, p: (t / samples).astype(p.dtype), total, params)
        return direction, SmoothingState(jax.random.key_data(next_key))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
