"""``gsam``: surrogate-gap guided SAM (GSAM) as an Optax transform (two gradients per step).

Zhuang, Gong, Yuan, Cui, Adam, Dvornek, Tatikonda, Duncan, Liu, "Surrogate Gap Minimization Improves
Sharpness-Aware Training", ICLR 2022 (Algorithm 1).

Example:
    >>> import jax.numpy as jnp
    >>> int(gsam(0.05).init(jnp.ones(3)).count)
    0
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxunlearn import _validate, sharpness
from jaxunlearn.transforms import _common

__all__ = ["gsam", "GSAMState"]

PyTree = Any


class GSAMState(NamedTuple):
    """State of :func:`gsam`: ``count`` (int32, updates so far), the argument of a ``rho`` schedule.

    Example:
        >>> gsam(0.05).init({"w": jnp.ones(2)})
        GSAMState(count=Array(0, dtype=int32))
    """

    count: jax.Array


def gsam(
    rho,
    *,
    alpha=0.1,
    adaptive: bool = False,
    eta=0.0,
    has_aux: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """GSAM: ``g ↦ g_p − α·g_⊥``, SAM's gradient plus an ascent step of ``L`` orthogonal to it.

    ``g = ∇L(w)`` (the input), ``e`` the (A)SAM perturbation of radius ``ρ_t`` (:func:`jaxunlearn.sharpness.
    perturbation`), ``g_p = ∇L(w + e)`` and ``g_⊥ = g − (⟨g, g_p⟩ / ‖g_p‖²)·g_p``, the component of the plain
    gradient orthogonal to ``g_p`` (whole-pytree inner products). Descending along ``g_p`` lowers the perturbed
    loss ``L_p``; the term ``−α·g_⊥`` raises ``L`` without changing ``L_p`` to first order, so it shrinks the
    surrogate gap ``h = L_p − L`` (the sharpness). ``α = 0`` is SAM. Default ``α = 0.1`` as in the paper's code.

    ``rho``: a number, or a schedule ``count -> ρ_t`` (e.g. an ``optax`` schedule). The paper ties ``ρ_t`` to the
    learning rate, ``ρ_t = ρ_min + (ρ_max − ρ_min)·(lr_t − lr_min)/(lr_max − lr_min)``: pass such a schedule
    here (:class:`jaxunlearn.plan.OptimConfig` uses a constant ρ). There is no sharpness-maximization form
    (``sign="max"``): use :func:`sam` or :func:`looksam` for that.

    Cost: two gradients per step (the caller's ``g`` and one ``grad_fn`` call) plus O(#params), i.e. SAM's.
    Put it FIRST in an ``optax.chain``; ``update(g, state, params, *, grad_fn)`` as :func:`sam`.

    Example:
        >>> g_fn = jax.grad(lambda p: jnp.sum(p ** 4))
        >>> w = jnp.array([1.0, 0.5])
        >>> t = gsam(0.1, alpha=0.0)
        >>> d, _ = t.update(g_fn(w), t.init(w), w, grad_fn=g_fn)      # α = 0: SAM's ∇L(w + e)
        >>> bool(jnp.allclose(d, g_fn(w + 0.1 * g_fn(w) / jnp.linalg.norm(g_fn(w)))))
        True
        >>> d, _ = gsam(0.1, alpha=0.5).update(g_fn(w), gsam(0.1).init(w), w, grad_fn=g_fn)
        >>> gp = g_fn(w + 0.1 * g_fn(w) / jnp.linalg.norm(g_fn(w)))
        >>> abs(float(jnp.dot(d - gp, gp))) < 1e-4          # the correction is orthogonal to g_p
        True
    """
    if callable(rho):
        schedule = rho
        _validate.sam_hyperparams(1.0, eta, 1.0, "min", sharpness.SIGNS)
    else:
        _validate.sam_hyperparams(rho, eta, 1.0, "min", sharpness.SIGNS)
        schedule = None
    _validate.real_number("alpha", alpha, minimum=0.0, hint="GSAM's ascent weight α is >= 0, e.g. alpha=0.1.")

    def init_fn(params):
        del params
        return GSAMState(jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None, *, grad_fn: Callable[[PyTree], Any] | None = None, **extra):
        del extra
        _common.require("gsam", params, grad_fn)
        _common.warn_composition("gsam", "g_p − α·g_⊥", "rho")
        g = updates
        count = state.count
        rho_t = rho if schedule is None else schedule(count)
        e = sharpness.perturbation(g, params, rho_t, adaptive=adaptive, eta=eta)
        g_p = _common.grad_at("gsam", grad_fn, _common.add(params, e), params, has_aux)
        g_perp = _common.reject_from(g, g_p)
        direction = jax.tree.map(lambda a, b: (a - alpha * b).astype(a.dtype), g_p, g_perp)
        return direction, GSAMState(count + 1)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
