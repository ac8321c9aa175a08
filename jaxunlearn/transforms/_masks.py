"""Element-wise masks: :func:`mask_updates` (``u ↦ M ⊙ u``) and :func:`masked` (an inner optimizer on ``M ⊙ g``).

Example:
    >>> import jax.numpy as jnp, optax
    >>> opt = masked(optax.sgd(1.0), {"w": jnp.array([True, False])})
    >>> opt.update({"w": jnp.ones(2)}, opt.init({"w": jnp.ones(2)}))[0]["w"].tolist()
    [-1.0, 0.0]
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxunlearn import _validate

__all__ = ["mask_updates", "masked"]

PyTree = Any


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
