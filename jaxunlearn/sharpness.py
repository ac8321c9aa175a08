"""SAM / ASAM perturbations, SAM gradients and sharpness maximization (framework-free).

Notation (all norms over the WHOLE parameter pytree):

* ``g = ∇L(w)``;
* perturbation ``e = ρ · T(w)² ⊙ g / (‖T(w) ⊙ g‖₂ + 1e-12)`` with ``T(w) = 1`` (SAM) or
  ``T(w) = |w| + η`` (adaptive SAM, ASAM; η = 0.01 is the usual choice);
* ``g' = ∇L(w + e)`` with ``e`` held fixed (no gradient flows through ``e``);
* SAM-family update direction ``g + s·λ·(g' − g)``, ``s = +1`` ("min") or ``−1`` ("max").

``sign="min", lamb=1`` is plain SAM (the gradient at the perturbed point). ``sign="max"`` gives
``(1+λ)g − λg'``, the gradient of ``L(w) − λ·[L(w+e) − L(w)]`` with ``e`` fixed: sharpness
*maximization*, used by Sharp MinMax on the forget set.

Everything here is pure and works under ``jax.jit``, ``jax.vmap`` (e.g. over ``rho`` or ``lamb``) and
sharded jit. Only ``jax`` is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxunlearn import _validate

__all__ = ["perturbation", "sam_direction", "value_and_sam_grad", "sam_grad", "sharpness", "tree_norm", "SIGNS"]

PyTree = Any
_EPS = 1e-12
SIGNS = {"min": 1.0, "max": -1.0}  # sign -> s in the direction g + s·λ·(g' − g)


def tree_norm(tree: PyTree) -> jax.Array:
    """Global Euclidean norm ``sqrt(Σ_leaves Σ x²)`` of a pytree.

    Example:
        >>> float(tree_norm({"a": jnp.array([3.0]), "b": jnp.array([4.0])}))
        5.0
    """
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros(())
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def perturbation(grads: PyTree, params: PyTree, rho, *, adaptive: bool = False, eta=0.0) -> PyTree:
    """SAM/ASAM ascent perturbation ``e = ρ · T(w)² ⊙ g / (‖T(w) ⊙ g‖₂ + 1e-12)``.

    ``T(w) = 1`` for SAM and ``|w| + η`` for ASAM (``adaptive=True``); the norm runs over the whole
    pytree. A zero gradient gives ``e = 0`` (never NaN). ``e`` is wrapped in ``stop_gradient``.

    Args:
        grads: gradient pytree ``g`` (same structure as ``params``).
        params: parameters ``w``; only used when ``adaptive=True``.
        rho: radius ρ > 0 (may be a traced value, e.g. under ``vmap``).
        adaptive: use ASAM's scale ``T(w) = |w| + η``.
        eta: ASAM offset η >= 0.

    Example:
        >>> g = {"w": jnp.array([3.0, 4.0])}
        >>> perturbation(g, g, 0.5)["w"]          # 0.5 * g / 5
        Array([0.3, 0.4], dtype=float32)
    """
    _validate.sam_settings(rho, eta, "min", SIGNS)
    _validate.same_structure("grads", grads, "params", params)
    if adaptive:
        scale = jax.tree.map(lambda w: jnp.abs(w) + eta, params)
        scaled = jax.tree.map(lambda t, g: t * g, scale, grads)
        norm = tree_norm(scaled)
        e = jax.tree.map(lambda t, g: rho * t * t * g / (norm + _EPS), scale, grads)
    else:
        norm = tree_norm(grads)
        e = jax.tree.map(lambda g: rho * g / (norm + _EPS), grads)
    return jax.lax.stop_gradient(jax.tree.map(lambda x, g: x.astype(g.dtype), e, grads))


def sam_direction(grads: PyTree, perturbed_grads: PyTree, *, lamb=1.0, sign: str = "min") -> PyTree:
    """Combine the two gradients: ``g + s·λ·(g' − g)`` with ``s = +1`` (min) or ``−1`` (max).

    Example:
        >>> g, gp = {"w": jnp.array(1.0)}, {"w": jnp.array(3.0)}
        >>> float(sam_direction(g, gp, sign="max")["w"])   # (1+1)*1 - 1*3
        -1.0
    """
    s = SIGNS[_validate.choice("sign", sign, SIGNS)]
    return jax.tree.map(lambda g, gp: g + (s * lamb) * (gp - g), grads, perturbed_grads)


def value_and_sam_grad(
    loss_fn: Callable[..., Any],
    rho,
    *,
    adaptive: bool = False,
    eta=0.0,
    lamb=1.0,
    sign: str = "min",
    has_aux: bool = False,
) -> Callable[..., tuple[Any, PyTree]]:
    """Like ``jax.value_and_grad`` but returns the SAM-family direction ``g + s·λ·(g' − g)``.

    The returned function ``f(params, *args)`` computes ``g = ∇L(w)`` (the value and ``aux`` come from
    this UNPERTURBED pass, so batch-norm statistics are updated once), the perturbation ``e`` (see
    :func:`perturbation`), ``g' = ∇L(w + e)`` and returns ``(value, g + s·λ·(g' − g))``, where
    ``value`` is ``loss`` or ``(loss, aux)`` when ``has_aux``.

    * ``sign="min", lamb=1``: SAM (ASAM with ``adaptive=True``), i.e. ``g'``.
    * ``sign="max"``: sharpness maximization ``(1+λ)g − λg'`` = ∇[L(w) − λ(L(w+e) − L(w))], e fixed.

    Example:
        >>> loss = lambda w, x: jnp.sum((w * x) ** 2)
        >>> f = jax.jit(value_and_sam_grad(loss, rho=0.05))
        >>> value, grads = f(jnp.ones(3), jnp.arange(3.0))     # g = 2wx² = [0, 2, 8]; g' = ∇L(w + e)
        >>> float(value), [round(v, 3) for v in grads.tolist()]
        (5.0, [0.0, 2.024, 8.388])
    """
    _validate.sam_settings(rho, eta, sign, SIGNS)
    vg = jax.value_and_grad(loss_fn, has_aux=has_aux)
    g_only = jax.grad(loss_fn, has_aux=has_aux)

    def f(params, *args, **kwargs):
        value, g = vg(params, *args, **kwargs)
        e = perturbation(g, params, rho, adaptive=adaptive, eta=eta)
        gp = g_only(jax.tree.map(jnp.add, params, e), *args, **kwargs)
        if has_aux:
            gp = gp[0]
        return value, sam_direction(g, gp, lamb=lamb, sign=sign)

    return f


def sam_grad(loss_fn: Callable[..., Any], rho, **kwargs) -> Callable[..., PyTree]:
    """Like ``jax.grad``: the direction of :func:`value_and_sam_grad` without the value.

    Example:
        >>> g = sam_grad(lambda w: jnp.sum(w ** 2), rho=0.1)(jnp.ones(2))   # 2(w + 0.1·g/‖g‖)
        >>> [round(v, 4) for v in g.tolist()]
        [2.1414, 2.1414]
    """
    has_aux = kwargs.get("has_aux", False)
    vsg = value_and_sam_grad(loss_fn, rho, **kwargs)

    def f(params, *args, **kw):
        value, g = vsg(params, *args, **kw)
        return (g, value[1]) if has_aux else g

    return f


def sharpness(
    loss_fn: Callable[..., Any],
    params: PyTree,
    batch: Any,
    rho,
    *,
    adaptive: bool = False,
    eta=0.0,
    has_aux: bool = False,
) -> jax.Array:
    """SAM sharpness ``L(w + e) − L(w)`` with ``e`` the (A)SAM perturbation at ``w``.

    Example:
        >>> sharpness(lambda w, b: jnp.sum(w ** 2), jnp.ones(2), None, 0.1) > 0
        Array(True, dtype=bool)
    """
    _validate.sam_settings(rho, eta, "min", SIGNS)
    value, g = jax.value_and_grad(loss_fn, has_aux=has_aux)(params, batch)
    loss = value[0] if has_aux else value
    e = perturbation(g, params, rho, adaptive=adaptive, eta=eta)
    pert = loss_fn(jax.tree.map(jnp.add, params, e), batch)
    pert = pert[0] if has_aux else pert
    return pert - loss
