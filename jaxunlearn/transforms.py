"""Optax gradient transformations: SAM / ASAM / sharpness maximization, and element-wise masks.

``sam(...)`` is an ``optax.GradientTransformationExtraArgs`` whose ``update`` receives the usual
gradient ``g`` plus the keyword ``grad_fn`` (``grad_fn(params) -> ∇L(params)`` for the current batch).
It returns the SAM-family direction ``g + s·λ·(g' − g)`` with ``g' = grad_fn(w + e)``, which the next
transformation in the chain (SGD, AdamW, ...) turns into an update:

    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxunlearn import transforms
    >>> loss_fn = lambda p, batch: jnp.mean((batch["x"] @ p["w"] - batch["y"]) ** 2)
    >>> params, batch = {"w": jnp.zeros(2)}, {"x": jnp.eye(2), "y": jnp.array([1.0, -1.0])}
    >>> opt = optax.chain(transforms.sam(rho=0.05), optax.adamw(1e-3))
    >>> state = opt.init(params)
    >>> loss, g = jax.value_and_grad(loss_fn)(params, batch)
    >>> updates, state = opt.update(g, state, params, grad_fn=lambda p: jax.grad(loss_fn)(p, batch))
    >>> params = optax.apply_updates(params, updates)
    >>> [round(w, 4) for w in params["w"].tolist()]     # Adam's first step: lr · sign of the direction
    [0.001, -0.001]

Relation to ``optax.contrib.sam``: with ``opaque_mode=True``, ``sync_period=2`` and the adversarial
optimizer ``chain(normalize(), sgd(rho))``, optax's SAM hands the outer optimizer ``∇L(w + ρ g/‖g‖)``,
which is our ``sam(rho)`` with ``sign="min", lamb=1`` (up to the 1e-12 in the norm). Ours adds ASAM
(``adaptive``), the interpolation ``λ`` and sharpness maximization (``sign="max"``); it is stateless,
costs one extra gradient per step, and its ``grad_fn`` takes only ``params``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxunlearn import _validate, sharpness

__all__ = ["sam", "mask_updates", "masked", "SAMState"]

PyTree = Any


class SAMState(NamedTuple):
    """``sam`` is stateless; the state is empty.

    Example:
        >>> sam(0.05).init({"w": jnp.ones(2)})
        SAMState()
    """


def sam(
    rho,
    *,
    adaptive: bool = False,
    eta=0.0,
    lamb=1.0,
    sign: str = "min",
    perturbed_mask: PyTree | None = None,
) -> optax.GradientTransformationExtraArgs:
    """SAM-family gradient transformation: ``g ↦ g + s·λ·(∇L(w + e) − g)``.

    ``e = ρ · T(w)² ⊙ g / ‖T(w) ⊙ g‖₂`` (see :func:`jaxunlearn.sharpness.perturbation`).
    ``update(g, state, params, *, grad_fn)`` needs ``params`` and ``grad_fn(params) -> gradient``.

    * ``sign="min", lamb=1``: SAM (``adaptive=True``: ASAM with ``T = |w| + η``).
    * ``sign="max"``: sharpness maximization ``(1+λ)g − λ·∇L(w+e)``.
    * ``perturbed_mask=M``: multiply only ``g'`` by ``M`` before combining, ``g + s·λ·(M ⊙ g' − g)``: the
      reading of the Sharp MinMax reference code. To mask the whole direction instead, chain
      :func:`masked` after this transform: ``optax.chain(sam(...), masked(optax.adamw(...), M))``.

    Example:
        >>> opt = optax.chain(sam(0.1), optax.sgd(0.1))
        >>> params = jnp.ones(2); loss = lambda p: jnp.sum(p ** 2)
        >>> state = opt.init(params)
        >>> upd, state = opt.update(jax.grad(loss)(params), state, params, grad_fn=jax.grad(loss))
        >>> [round(u, 4) for u in upd.tolist()]            # −0.1 · ∇L(w + e) = −0.1 · 2(w + 0.1·g/‖g‖)
        [-0.2141, -0.2141]
    """
    _validate.sam_settings(rho, eta, sign, sharpness.SIGNS)

    def init_fn(params):
        del params
        return SAMState()

    def update_fn(updates, state, params=None, *, grad_fn: Callable[[PyTree], PyTree] | None = None, **extra):
        del extra
        if params is None:
            raise ValueError("transforms.sam needs params: call opt.update(grads, state, params, grad_fn=...).")
        if grad_fn is None:
            raise ValueError(
                "transforms.sam needs the keyword grad_fn (params -> gradient on the current batch), "
                "e.g. opt.update(g, state, params, grad_fn=lambda p: jax.grad(loss_fn)(p, batch))."
            )
        e = sharpness.perturbation(updates, params, rho, adaptive=adaptive, eta=eta)
        gp = grad_fn(jax.tree.map(jnp.add, params, e))
        if perturbed_mask is not None:
            gp = jax.tree.map(lambda x, m: jnp.where(m, x, jnp.zeros_like(x)), gp, perturbed_mask)
        return sharpness.sam_direction(updates, gp, lamb=lamb, sign=sign), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def mask_updates(mask: PyTree) -> optax.GradientTransformation:
    """Element-wise mask ``u ↦ M ⊙ u`` (exact zeros outside the mask).

    Unlike ``optax.masked`` (which decides per LEAF and passes unmasked leaves through untouched),
    this zeroes individual entries, so it can select any subset of parameters.

    Example:
        >>> t = mask_updates({"w": jnp.array([True, False])})
        >>> t.update({"w": jnp.array([1.0, 2.0])}, t.init(None))[0]["w"]
        Array([1., 0.], dtype=float32)
    """

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        _validate.same_structure("updates", updates, "mask", mask)
        return jax.tree.map(lambda u, m: jnp.where(m, u, jnp.zeros_like(u)), updates, mask), state

    return optax.GradientTransformation(init_fn, update_fn)


def masked(
    inner: optax.GradientTransformation, mask: PyTree, *, mask_output: bool = True
) -> optax.GradientTransformationExtraArgs:
    """Run ``inner`` on masked gradients ``M ⊙ g`` and (by default) mask its output ``M ⊙ inner(M ⊙ g)``.

    Masking the output as well guarantees that parameters outside ``M`` do not move at all, even with
    momentum or decoupled weight decay; ``mask_output=False`` only masks the gradient, as the reference
    PyTorch code does (there AdamW's weight decay still shrinks unselected parameters).
    Put :func:`sam` BEFORE the mask, ``optax.chain(sam(rho), masked(optax.adamw(lr), M))``, so the SAM
    perturbation is computed from the full gradient.

    Example:
        >>> opt = masked(optax.sgd(1.0), {"w": jnp.array([True, False])})
        >>> opt.update({"w": jnp.ones(2)}, opt.init({"w": jnp.ones(2)}))[0]["w"].tolist()
        [-1.0, 0.0]
    """
    parts = [mask_updates(mask), inner]
    if mask_output:
        parts.append(mask_updates(mask))
    return optax.chain(*parts)
