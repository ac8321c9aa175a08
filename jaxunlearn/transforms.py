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

Composition rules (``sam`` warns with :class:`SAMUsageWarning` when it sees them broken):

* **sam first.** ``sam`` replaces its input by a new gradient (``g'`` for SAM), so a transform before it in
  an ``optax.chain`` is lost: ``chain(clip_by_global_norm(c), sam(rho), sgd(lr))`` does not clip. Write
  ``chain(sam(rho), clip_by_global_norm(c), sgd(lr))``.
* **Gradient accumulation: not ``optax.MultiSteps``.** ``MultiSteps(chain(sam(rho), sgd(lr)), k)`` perturbs
  with the mean gradient of k micro-batches but evaluates ``g'`` on the last micro-batch only. For
  full-batch SAM over micro-batches, give ``sam`` the accumulated gradient and an accumulating ``grad_fn``
  over the SAME micro-batches (``jaxunlearn.sharpness.accumulated_value_and_grad``; all of it in one
  function: ``jaxunlearn.sharpness.accumulated_value_and_sam_grad``)::

      acc = sharpness.accumulated_value_and_grad(loss_fn)          # micro: leading micro-batch axis
      loss, g = acc(params, micro)
      updates, state = opt.update(g, state, params, grad_fn=lambda p: acc(p, micro)[1])

* **Per-device SAM** inside your own ``shard_map`` / ``pmap``: ``sam(rho, axis_name="data")`` takes the
  device-LOCAL gradient (do not ``pmean`` before ``sam``) and returns the direction averaged over the axis.

Relation to ``optax.contrib.sam``: with ``opaque_mode=True``, ``sync_period=2`` and the adversarial
optimizer ``chain(normalize(), sgd(rho))``, optax's SAM hands the outer optimizer ``∇L(w + ρ g/‖g‖)``,
which is our ``sam(rho)`` with ``sign="min", lamb=1`` (up to the 1e-12 in the norm). Ours adds ASAM
(``adaptive``), the interpolation ``λ`` and sharpness maximization (``sign="max"``); it is stateless,
costs one extra gradient per step, and its ``grad_fn`` takes only ``params``. ``axis_name`` plays the role
of optax's ``batch_axis_name``.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxunlearn import _validate, sharpness

__all__ = ["sam", "mask_updates", "masked", "SAMState", "SAMUsageWarning"]

PyTree = Any
_OPTAX_DIR = os.path.dirname(os.path.abspath(optax.__file__))


class SAMState(NamedTuple):
    """``sam`` is stateless; the state is empty.

    Example:
        >>> sam(0.05).init({"w": jnp.ones(2)})
        SAMState()
    """


class SAMUsageWarning(UserWarning):
    """``sam`` is composed so that its result is silently not what it looks like: a transform before it in an
    ``optax.chain`` (lost), or ``optax.MultiSteps`` around it (``g'`` from the last micro-batch only). The
    message names the fix. Turn it into an error with ``warnings.simplefilter("error", SAMUsageWarning)``.

    Example:
        >>> issubclass(SAMUsageWarning, UserWarning)
        True
    """


_ORDER_FIX = (
    "transforms.sam is not the first transform of its optax.chain (position {idx}): sam replaces its input "
    "gradient by g + s·λ·(g' − g), so the transforms before it are lost (e.g. gradient clipping does not act). "
    "Put sam first: optax.chain(transforms.sam(rho), optax.clip_by_global_norm(c), optax.sgd(lr))."
)
_MULTISTEPS_FIX = (
    "transforms.sam runs inside optax.MultiSteps: the perturbation uses the mean gradient of the micro-batches "
    "but grad_fn sees only the last micro-batch, which is not full-batch SAM. Use "
    "sharpness.accumulated_value_and_sam_grad(loss_fn, rho)(params, micro_batches), or give sam the gradient of "
    "sharpness.accumulated_value_and_grad(loss_fn) and grad_fn=lambda p: acc(p, micro_batches)[1], without MultiSteps."
)


def _composition_problems() -> list[str]:
    """Inspect the Python frames that called ``sam``'s update for an ``optax.chain`` / ``named_chain`` in which the
    running element is not the first, and for ``optax.MultiSteps`` accumulating more than one step. Only frames
    of optax's own files are looked at; any surprise (another optax version) means no warning, never an error."""
    problems = []
    try:
        frame = sys._getframe(2)
    except (AttributeError, ValueError):  # pragma: no cover - not CPython
        return problems
    for _ in range(128):
        if frame is None:
            break
        code = frame.f_code
        if code.co_filename.startswith(_OPTAX_DIR):
            try:
                local = frame.f_locals
                if code.co_name == "update_fn" and "update_fns" in local and "fn" in local:  # optax.chain
                    idx = next((i for i, u in enumerate(local["update_fns"]) if u is local["fn"]), 0)
                    if idx:
                        problems.append(_ORDER_FIX.format(idx=idx))
                elif code.co_name == "update_fn" and "transforms" in local and "tx" in local:  # optax.named_chain
                    idx = next((i for i, (_, t) in enumerate(local["transforms"]) if t is local["tx"]), 0)
                    if idx:
                        problems.append(_ORDER_FIX.format(idx=idx))
                elif code.co_name == "update" and isinstance(local.get("self"), optax.MultiSteps):
                    k = local.get("k_steps")
                    if not (isinstance(k, int) and k == 1):
                        problems.append(_MULTISTEPS_FIX)
            except Exception:  # pragma: no cover - an optax whose frames look different
                pass
        frame = frame.f_back
    return problems


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


def _perturbed_grads(out: Any, params: PyTree, has_aux: bool) -> PyTree:
    """Check ``grad_fn``'s output and return the gradient (dropping ``aux`` when ``has_aux``)."""
    if has_aux:
        if not (isinstance(out, tuple | list) and len(out) == 2):
            raise TypeError("transforms.sam(has_aux=True): grad_fn must return a pair (grads, aux).")
        out = out[0]
    elif jax.tree.structure(out) != jax.tree.structure(params):
        if isinstance(out, tuple | list) and len(out) == 2 and jax.tree.structure(out[0]) == jax.tree.structure(params):
            raise TypeError(
                "transforms.sam: grad_fn returned a pair (grads, aux); pass sam(..., has_aux=True) (aux is ignored)."
            )
    _validate.same_structure("grad_fn(params)", out, "params", params)
    return out


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
        if params is None:
            raise ValueError("transforms.sam needs params: call opt.update(grads, state, params, grad_fn=...).")
        if grad_fn is None:
            raise ValueError(
                "transforms.sam needs the keyword grad_fn (params -> gradient on the current batch), "
                "e.g. opt.update(g, state, params, grad_fn=lambda p: jax.grad(loss_fn)(p, batch))."
            )
        for problem in dict.fromkeys(_composition_problems()):
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
        gp = _perturbed_grads(grad_fn(point), params, has_aux)
        if axis_name is not None and not per_device:
            gp = jax.lax.pmean(gp, axis_name)
        if perturbed_mask is not None:
            gp = jax.tree.map(lambda x, m: jnp.where(m, x, jnp.zeros_like(x)), gp, perturbed_mask)
        direction = sharpness.sam_direction(g, gp, lamb=lamb, sign=sign)
        if axis_name is not None and per_device:
            direction = jax.lax.pmean(direction, axis_name)
        return direction, state

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
