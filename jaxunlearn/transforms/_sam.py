"""``sam``: SAM / ASAM / sharpness maximization as an Optax transform (two gradients per step).

See the package docstring (:mod:`jaxunlearn.transforms`) for the ``grad_fn`` convention and the composition
rules; :func:`sam` documents its formula.

Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> t = sam(0.1)
    >>> d, _ = t.update(jnp.ones(2), t.init(jnp.ones(2)), jnp.ones(2), grad_fn=lambda p: 2 * p)
    >>> [round(v, 4) for v in d.tolist()]          # ∇L(w + e) = 2(w + 0.1·g/‖g‖)
    [2.1414, 2.1414]
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxunlearn import _validate, sharpness
from jaxunlearn.transforms import _common
from jaxunlearn.transforms._common import SAMUsageWarning

__all__ = ["sam", "SAMState"]

PyTree = Any


class SAMState(NamedTuple):
    """``sam`` is stateless; the state is empty.

    Example:
        >>> sam(0.05).init({"w": jnp.ones(2)})
        SAMState()
    """


_ORDER_FIX = _common.ORDER_FIX.format(name="sam", what="g + s·λ·(g' − g)", args="rho")
_MULTISTEPS_FIX = (
    "transforms.sam runs inside optax.MultiSteps: the perturbation uses the mean gradient of the micro-batches "
    "but grad_fn sees only the last micro-batch, which is not full-batch SAM. Use "
    "sharpness.accumulated_value_and_sam_grad(loss_fn, rho)(params, micro_batches), or give sam the gradient of "
    "sharpness.accumulated_value_and_grad(loss_fn) and grad_fn=lambda p: acc(p, micro_batches)[1], without MultiSteps."
)


def _tracks_varying(axis: str) -> bool:
    """True inside a ``shard_map`` over ``axis`` that tracks device-varying values (``check_vma=True``, the
    default); False under ``pmap`` or ``check_vma=False``, where every value is per-device anyway."""
    try:
        probe = jax.lax.pcast(jnp.zeros((), jnp.float32), axis, to="varying")
    except (NameError, ValueError) as exc:  # unbound axis name / not inside shard_map
        raise ValueError(
            f"transforms.sam(axis_name={axis!r}) must run inside shard_map / pmap over an axis named {axis!r} ({exc})."
        ) from None
    mat = getattr(jax.typeof(probe), "manual_axis_type", None)
    return mat is not None and axis in mat.varying


def _varying(tree: PyTree, axis: str) -> PyTree:
    """Mark the leaves device-varying over ``axis`` inside ``shard_map`` (the gradient w.r.t. an invariant input
    is summed over devices); leaves already varying stay as they are."""

    def one(x):
        return x if axis in jax.typeof(x).manual_axis_type.varying else jax.lax.pcast(x, axis, to="varying")

    return jax.tree.map(one, tree)


def _check_local(updates: PyTree, axis: str) -> None:
    """Inside ``shard_map`` the incoming gradient must vary over ``axis``: an invariant one was reduced already."""
    if any(axis not in jax.typeof(x).manual_axis_type.varying for x in jax.tree.leaves(updates)):
        raise ValueError(
            f"transforms.sam(axis_name={axis!r}) needs the device-local gradient, but the gradient passed to "
            f"update is already the same on every device of {axis!r} (a pmean/psum before sam, or a gradient "
            f"taken w.r.t. replicated params, which shard_map sums over devices): do not pmean before sam and "
            f"take the gradient at jax.lax.pcast(params, {axis!r}, to='varying')."
        )


def sam(
    rho,
    *,
    adaptive: bool = False,
    eta=0.0,
    lamb=1.0,
    sign: str = "min",
    perturbed_mask: PyTree | None = None,
    has_aux: bool = False,
    axis_name: str | None = None,
    per_device: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """SAM-family gradient transformation: ``g ↦ g + s·λ·(∇L(w + e) − g)``.

    ``e = ρ · T(w)² ⊙ g / ‖T(w) ⊙ g‖₂`` (see :func:`jaxunlearn.sharpness.perturbation`).
    ``update(g, state, params, *, grad_fn)`` needs ``params`` and ``grad_fn(params) -> gradient`` on the
    batch that gave ``g``. Cost: one call of ``grad_fn`` per step. Put ``sam`` FIRST in an ``optax.chain``.

    * ``sign="min", lamb=1``: SAM (``adaptive=True``: ASAM with ``T = |w| + η``).
    * ``sign="max"``: sharpness maximization ``(1+λ)g − λ·∇L(w+e)``.
    * ``perturbed_mask=M``: multiply only ``g'`` by ``M`` before combining, ``g + s·λ·(M ⊙ g' − g)``: the
      reading of the Sharp MinMax reference code. To mask the whole direction instead, chain
      :func:`masked` after this transform: ``optax.chain(sam(...), masked(optax.adamw(...), M))``.
    * ``has_aux=True``: ``grad_fn(params)`` returns ``(grads, aux)`` (e.g. ``jax.grad(loss, has_aux=True)``);
      ``aux`` is ignored. Without it a ``grad_fn`` returning such a pair is a ``TypeError`` naming ``has_aux``.
    * ``axis_name="data"``: per-device SAM inside the caller's ``shard_map`` / ``pmap``. ``g`` must be the
      device-LOCAL gradient ``g_k`` (do not ``pmean`` before ``sam``; inside ``shard_map`` take it at
      ``jax.lax.pcast(params, axis, to="varying")``, else shard_map sums it over devices, which ``sam``
      detects and rejects) and ``grad_fn`` evaluates the local batch.
      ``per_device=True`` (m-sharpness): ``pmean_k [g_k + s·λ·(∇L_k(w + e_k) − g_k)]`` with ``e_k`` from the
      local ``g_k``. ``per_device=False``: ``g = pmean_k g_k``, ``e`` from ``g``, ``g' = pmean_k ∇L_k(w + e)``:
      full-batch SAM (for a mean loss over equal shards). Either way the result is the same on every device.
    * Gradient accumulation: give ``g`` and ``grad_fn`` as means over the same micro-batches
      (:func:`jaxunlearn.sharpness.accumulated_value_and_grad`), never ``optax.MultiSteps`` around ``sam``.

    Settings are checked here (``rho > 0``, ``eta >= 0``, ``lamb >= 0``, finite numbers; traced values pass).

    Example:
        >>> opt = optax.chain(sam(0.1), optax.sgd(0.1))
        >>> params = jnp.ones(2); loss = lambda p: jnp.sum(p ** 2)
        >>> state = opt.init(params)
        >>> upd, state = opt.update(jax.grad(loss)(params), state, params, grad_fn=jax.grad(loss))
        >>> [round(u, 4) for u in upd.tolist()]            # −0.1 · ∇L(w + e) = −0.1 · 2(w + 0.1·g/‖g‖)
        [-0.2141, -0.2141]
    """
    _validate.sam_hyperparams(rho, eta, lamb, sign, sharpness.SIGNS)
    if axis_name is not None and not isinstance(axis_name, str):
        raise TypeError(f"axis_name must be the name of a mapped axis (a str), got {axis_name!r}.")
    if not isinstance(per_device, bool):
        raise TypeError(f"per_device must be True or False, got {per_device!r}.")

    def init_fn(params):
        del params
        return SAMState()

    def update_fn(updates, state, params=None, *, grad_fn: Callable[[PyTree], Any] | None = None, **extra):
        del extra
        _common.require("sam", params, grad_fn)
        for problem in dict.fromkeys(_common.composition_problems(_ORDER_FIX, _MULTISTEPS_FIX)):
            warnings.warn(problem, SAMUsageWarning, stacklevel=1)  # once per message (default filter)
        g = updates
        tracked = axis_name is not None and _tracks_varying(axis_name)
        if tracked:
            _check_local(g, axis_name)
        if axis_name is not None and not per_device:
            g = jax.lax.pmean(g, axis_name)
        e = sharpness.perturbation(g, params, rho, adaptive=adaptive, eta=eta)
        point = jax.tree.map(jnp.add, params, e)
        if tracked:
            point = _varying(point, axis_name)  # grad_fn must give the local gradient, not a sum over devices
        gp = _common.checked_grads("sam", grad_fn(point), params, has_aux)
        if axis_name is not None and not per_device:
            gp = jax.lax.pmean(gp, axis_name)
        if perturbed_mask is not None:
            gp = jax.tree.map(lambda x, m: jnp.where(m, x, jnp.zeros_like(x)), gp, perturbed_mask)
        direction = sharpness.sam_direction(g, gp, lamb=lamb, sign=sign)
        if axis_name is not None and per_device:
            direction = jax.lax.pmean(direction, axis_name)
        return direction, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
