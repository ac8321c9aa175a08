"""Smoothness penalties by finite differences of ``grad_fn``: the gradient-norm penalty and curvature
regularization of Unlearn-Smooth (``NPO_FT_GNR`` and ``NPO_FT_CR`` in OPTML-Group/Unlearn-Smooth).

Both return the gradient of ``L + s·γ·P`` with the penalty ``P``'s gradient from finite differences of the
gradient, so they need only ``grad_fn(params) -> ∇L`` (no second derivatives of the user's loss).

Example:
    >>> import jax, jax.numpy as jnp
    >>> g_fn = jax.grad(lambda p: 0.5 * jnp.sum(jnp.array([1.0, 4.0]) * p ** 2))   # H = diag(1, 4)
    >>> w = jnp.array([1.0, 1.0])
    >>> d, _ = gradient_norm_penalty(0.1).update(g_fn(w), None, w, grad_fn=g_fn)
    >>> [round(v, 4) for v in d.tolist()]       # g + γ·H g/‖g‖ (exact for a quadratic)
    [1.0243, 4.3881]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from jaxunlearn import _validate, sharpness
from jaxunlearn.transforms import _common

__all__ = ["gradient_norm_penalty", "curvature_penalty"]

PyTree = Any


def _check(gamma, radius, sign, default_gamma):
    _validate.real_number("gamma", gamma, minimum=0.0, hint=f"The penalty weight γ is >= 0, e.g. {default_gamma}.")
    _validate.real_number(
        "radius", radius, minimum=0.0, strict=True, hint="The finite-difference radius r is > 0, e.g. 0.01."
    )
    return sharpness.SIGNS[_validate.choice("sign", sign, sharpness.SIGNS)]


def _unit(tree):
    norm = sharpness.tree_norm(tree)
    return jax.tree.map(lambda x: (x / (norm + _common.EPS)).astype(x.dtype), tree)


def gradient_norm_penalty(
    gamma=0.01, *, radius=0.01, sign: str = "min", has_aux: bool = False
) -> optax.GradientTransformationExtraArgs:
    """Gradient-norm penalty: ``g ↦ g + s·γ·(∇L(w + r·ĝ) − g) / r``, ``ĝ = g / ‖g‖``.

    ``∇‖∇L‖ = H·ĝ`` and ``H·ĝ ≈ (∇L(w + r·ĝ) − ∇L(w)) / r``, so the direction is the gradient of
    ``L + s·γ·‖∇L‖`` with a forward-difference Hessian-vector product (exact for a quadratic loss). ``s = +1``
    (``sign="min"``: penalize the gradient norm) or ``−1`` (``"max"``: reward it). It equals
    ``sam(rho=r, lamb=γ/r, sign=sign)``.

    Defaults and differences from Unlearn-Smooth's ``NPO_FT_GNR``: the weight ``γ = 0.01`` is theirs (hard-coded
    there; their ``gnr_rho`` option is not used by that class) and the penalty is their unsquared norm of the
    forget-loss gradient, but their code sums the squared norms with ``.item()``, which detaches the penalty:
    its gradient there is zero and the method trains as plain NPO. Here the penalty's gradient is applied, to the
    gradient of the whole phase loss that ``grad_fn`` evaluates, by a finite difference with ``r = 0.01`` (the
    radius their CR code uses) instead of double backpropagation.

    Cost: two gradients per step (the caller's ``g`` and one ``grad_fn`` call), i.e. SAM's. ``γ >= 0``, ``r > 0``
    (finite; one-line errors otherwise). Put it FIRST in an ``optax.chain``.

    Example:
        >>> g_fn = jax.grad(lambda p: jax.numpy.sum(p ** 4))
        >>> w = jax.numpy.array([1.0, 0.5])
        >>> d, _ = gradient_norm_penalty(0.02, radius=0.01).update(g_fn(w), None, w, grad_fn=g_fn)
        >>> from jaxunlearn import transforms
        >>> s, _ = transforms.sam(0.01, lamb=2.0).update(g_fn(w), None, w, grad_fn=g_fn)
        >>> bool(jax.numpy.allclose(d, s))
        True
    """
    s = _check(gamma, radius, sign, 0.01)

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None, *, grad_fn: Callable[[PyTree], Any] | None = None, **extra):
        del extra
        _common.require("gradient_norm_penalty", params, grad_fn)
        _common.warn_composition("gradient_norm_penalty", "g + s·γ·∇‖∇L‖", "gamma")
        g = updates
        gr = _common.grad_at("gradient_norm_penalty", grad_fn, _common.axpy(radius, _unit(g), params), params, has_aux)
        coef = s * gamma / radius
        return jax.tree.map(lambda a, b: (a + coef * (b - a)).astype(a.dtype), g, gr), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def curvature_penalty(
    gamma=10.0, *, radius=0.01, sign: str = "min", has_aux: bool = False
) -> optax.GradientTransformationExtraArgs:
    """Curvature regularization: the gradient of ``L + s·γ·C`` with ``C(w) = ‖∇L(w + ε) − ∇L(w)‖``.

    ``ε = r·ĝ`` (``ĝ = g / ‖g‖``) is held fixed, so ``C ≈ r·‖H·ĝ‖`` is a finite-difference Hessian-vector
    product along the gradient (CURE-style). With ``D = ∇L(w + ε) − g`` and ``u = D / ‖D‖``,
    ``∇C = (H(w + ε) − H(w))·u``, each Hessian-vector product again by a forward difference of radius ``r``::

        direction = g + s·γ·[∇L(w + ε + r·u) − ∇L(w + ε) − ∇L(w + r·u) + g] / r

    ``s = +1`` (``sign="min"``: penalize curvature) or ``−1`` (``"max"``).

    Defaults and differences from Unlearn-Smooth's ``NPO_FT_CR``: ``r = 0.01`` and ``γ = 10`` (their ``gnr_rho``
    in the WMDP script) are theirs, and so is ``C`` (of the forget loss there, of the whole phase loss that
    ``grad_fn`` evaluates here). Their code sums the squared entries of ``∇L(w + ε) − ∇L(w)`` with ``.item()``,
    which detaches the penalty (its gradient there is zero); here ``∇C`` is applied, by finite differences
    instead of double backpropagation.

    Cost: four gradients per step (the caller's ``g`` and three ``grad_fn`` calls). ``γ >= 0``, ``r > 0`` (finite;
    one-line errors otherwise). Put it FIRST in an ``optax.chain``.

    Example:
        >>> g_fn = jax.grad(lambda p: 0.5 * jax.numpy.sum(p ** 2))     # quadratic: H constant, ∇C = 0
        >>> w = jax.numpy.array([1.0, -2.0])
        >>> d, _ = curvature_penalty(10.0).update(g_fn(w), None, w, grad_fn=g_fn)
        >>> bool(jax.numpy.allclose(d, g_fn(w), atol=1e-3))
        True
    """
    s = _check(gamma, radius, sign, 10.0)

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None, *, grad_fn: Callable[[PyTree], Any] | None = None, **extra):
        del extra
        _common.require("curvature_penalty", params, grad_fn)
        _common.warn_composition("curvature_penalty", "g + s·γ·∇C", "gamma")
        g = updates

        def grad(point):
            return _common.grad_at("curvature_penalty", grad_fn, point, params, has_aux)

        shifted = _common.axpy(radius, _unit(g), params)  # w + ε
        g_eps = grad(shifted)
        u = _unit(jax.tree.map(lambda a, b: a - b, g_eps, g))
        g_eps_u = grad(_common.axpy(radius, u, shifted))
        g_u = grad(_common.axpy(radius, u, params))
        coef = s * gamma / radius
        direction = jax.tree.map(
            lambda a, b, c, d: (a + coef * ((b - c) - (d - a))).astype(a.dtype), g, g_eps_u, g_eps, g_u
        )
        return direction, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
