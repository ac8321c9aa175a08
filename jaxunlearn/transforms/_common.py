"""Shared pieces of the SAM-family transforms (internal): the checks every ``update`` runs, pytree algebra
and the composition warnings (a transform that replaces its input gradient must come first in its chain).

Example:
    >>> import jax.numpy as jnp
    >>> float(tree_vdot({"a": jnp.array([1.0, 2.0])}, {"a": jnp.array([3.0, 4.0])}))
    11.0
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxunlearn import _validate

PyTree = Any
EPS = 1e-12  # the same guard as sharpness.perturbation: a zero vector never gives NaN
_OPTAX_DIR = os.path.dirname(os.path.abspath(optax.__file__))


class SAMUsageWarning(UserWarning):
    """A transform of the SAM family (``sam``, ``looksam``, ``gsam``, ``randomized_smoothing``,
    ``gradient_norm_penalty``, ``curvature_penalty``) or :func:`~jaxunlearn.transforms.weight_average` is
    composed so that its result is silently not what it looks like: a transform before a gradient-replacing
    transform in an ``optax.chain`` (lost), ``optax.MultiSteps`` around it (``grad_fn`` sees the last
    micro-batch only), or a transform after ``weight_average`` (the average misses its change). The message
    names the fix. Turn it into an error with ``warnings.simplefilter("error", SAMUsageWarning)``.

    Example:
        >>> issubclass(SAMUsageWarning, UserWarning)
        True
    """


ORDER_FIX = (
    "transforms.{name} is not the first transform of its optax.chain (position {{idx}}): {name} replaces its input "
    "gradient by {what}, so the transforms before it are lost (e.g. gradient clipping does not act). "
    "Put {name} first: optax.chain(transforms.{name}({args}), optax.clip_by_global_norm(c), optax.sgd(lr))."
)
MULTISTEPS_FIX = (
    "transforms.{name} runs inside optax.MultiSteps: the direction uses the mean gradient of the micro-batches "
    "but grad_fn sees only the last micro-batch, which is not the full-batch {name}. Give {name} the gradient of "
    "sharpness.accumulated_value_and_grad(loss_fn) and grad_fn=lambda p: acc(p, micro_batches)[1] over the same "
    "micro-batches, without MultiSteps."
)
_LAST_FIX = (
    "transforms.weight_average is not the last transform of its optax.chain (position {idx} of {n}): it averages "
    "params + (its input update), so a transform after it changes the step without the average seeing it. "
    "Put it last: optax.chain(..., optax.sgd(lr), transforms.weight_average())."
)


def chain_positions() -> list[tuple[str, int, int]]:
    """``(kind, index, length)`` for every optax frame around the running ``update``: ``("chain", i, n)`` for
    an ``optax.chain`` / ``named_chain`` running its element ``i`` of ``n``, ``("multisteps", k, 0)`` for an
    ``optax.MultiSteps`` accumulating ``k`` steps (``k = -1`` when unknown). Only frames of optax's own files are
    looked at (non-optax frames are skipped); any surprise (another optax version) gives fewer entries, never
    an error.

    Example:
        >>> chain_positions()          # called outside any optax update
        []
    """
    found = []
    try:
        frame = sys._getframe(1)
    except (AttributeError, ValueError):  # pragma: no cover - not CPython
        return found
    for _ in range(128):
        if frame is None:
            break
        code = frame.f_code
        if code.co_filename.startswith(_OPTAX_DIR):
            try:
                local = frame.f_locals
                if code.co_name == "update_fn" and "update_fns" in local and "fn" in local:  # optax.chain
                    fns = local["update_fns"]
                    idx = next((i for i, u in enumerate(fns) if u is local["fn"]), 0)
                    found.append(("chain", idx, len(fns)))
                elif code.co_name == "update_fn" and "transforms" in local and "tx" in local:  # optax.named_chain
                    txs = local["transforms"]
                    idx = next((i for i, (_, t) in enumerate(txs) if t is local["tx"]), 0)
                    found.append(("chain", idx, len(txs)))
                elif code.co_name == "update" and isinstance(local.get("self"), optax.MultiSteps):
                    k = local.get("k_steps")
                    found.append(("multisteps", k if isinstance(k, int) else -1, 0))
            except Exception:  # pragma: no cover - an optax whose frames look different
                pass
        frame = frame.f_back
    return found


def composition_problems(order_fix: str, multisteps_fix: str) -> list[str]:
    """The messages for a gradient-replacing transform that is not first in its chain (``order_fix`` formatted
    with ``idx``) or runs inside an ``optax.MultiSteps`` of more than one step (``multisteps_fix``).

    Example:
        >>> composition_problems("at {idx}", "multisteps")
        []
    """
    problems = []
    for kind, idx, _ in chain_positions():
        if kind == "chain" and idx:
            problems.append(order_fix.format(idx=idx))
        elif kind == "multisteps" and idx != 1:
            problems.append(multisteps_fix)
    return problems


def warn_composition(name: str, what: str, args: str) -> None:
    """Warn (:class:`SAMUsageWarning`, once per message under the default filter) when the gradient-replacing
    transform ``name`` (``what``: what it replaces the gradient by; ``args``: the arguments shown in the fix) is
    not first in its chain or runs inside ``optax.MultiSteps``.

    Example:
        >>> warn_composition("looksam", "a LookSAM direction", "rho")     # not in a chain: no warning
    """
    order = ORDER_FIX.format(name=name, what=what, args=args)
    for problem in dict.fromkeys(composition_problems(order, MULTISTEPS_FIX.format(name=name))):
        warnings.warn(problem, SAMUsageWarning, stacklevel=1)


def warn_not_last() -> None:
    """Warn when the running ``weight_average`` is not the last element of every chain around it.

    Example:
        >>> warn_not_last()          # not in a chain: no warning
    """
    for problem in dict.fromkeys(
        _LAST_FIX.format(idx=idx, n=n) for kind, idx, n in chain_positions() if kind == "chain" and idx != n - 1
    ):
        warnings.warn(problem, SAMUsageWarning, stacklevel=1)


def require(name: str, params, grad_fn) -> None:
    """The one-line errors of an ``update`` called without ``params`` or without the keyword ``grad_fn``.

    Example:
        >>> require("gsam", jnp.ones(2), None)
        Traceback (most recent call last):
        ...
        ValueError: transforms.gsam needs the keyword grad_fn (params -> gradient on the current batch), ...
    """
    if params is None:
        raise ValueError(f"transforms.{name} needs params: call opt.update(grads, state, params, grad_fn=...).")
    if grad_fn is None:
        raise ValueError(
            f"transforms.{name} needs the keyword grad_fn (params -> gradient on the current batch), "
            "e.g. opt.update(g, state, params, grad_fn=lambda p: jax.grad(loss_fn)(p, batch))."
        )


def checked_grads(name: str, out: Any, params: PyTree, has_aux: bool) -> PyTree:
    """Check ``grad_fn``'s output and return the gradient (dropping ``aux`` when ``has_aux``).

    Example:
        >>> checked_grads("gsam", (jnp.ones(2), {"acc": 1.0}), jnp.zeros(2), True).tolist()
        [1.0, 1.0]
    """
    if has_aux:
        if not (isinstance(out, tuple | list) and len(out) == 2):
            raise TypeError(f"transforms.{name}(has_aux=True): grad_fn must return a pair (grads, aux).")
        out = out[0]
    elif jax.tree.structure(out) != jax.tree.structure(params):
        if isinstance(out, tuple | list) and len(out) == 2 and jax.tree.structure(out[0]) == jax.tree.structure(params):
            raise TypeError(
                f"transforms.{name}: grad_fn returned a pair (grads, aux); pass {name}(..., has_aux=True) "
                "(aux is ignored)."
            )
    _validate.same_structure("grad_fn(params)", out, "params", params)
    return out


def grad_at(name: str, grad_fn, point: PyTree, params: PyTree, has_aux: bool) -> PyTree:
    """``∇L(point)`` through the caller's ``grad_fn``, checked.

    Example:
        >>> grad_at("gsam", lambda p: 2 * p, jnp.ones(2), jnp.zeros(2), False).tolist()
        [2.0, 2.0]
    """
    return checked_grads(name, grad_fn(point), params, has_aux)


def tree_vdot(a: PyTree, b: PyTree) -> jax.Array:
    """``Σ_leaves Σ a·b`` (in float32 or wider) over two pytrees of the same structure.

    Example:
        >>> float(tree_vdot([jnp.ones(2), jnp.ones(1)], [jnp.ones(2), 3 * jnp.ones(1)]))
        5.0
    """
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    if not la:
        return jnp.zeros(())
    dtype = jnp.promote_types(jnp.result_type(*la), jnp.float32)
    return sum(jnp.sum(x.astype(dtype) * y.astype(dtype)) for x, y in zip(la, lb, strict=True))


def add(a: PyTree, b: PyTree) -> PyTree:
    """``a + b`` leaf by leaf.

    Example:
        >>> add({"w": jnp.ones(2)}, {"w": jnp.ones(2)})["w"].tolist()
        [2.0, 2.0]
    """
    return jax.tree.map(jnp.add, a, b)


def axpy(alpha, x: PyTree, y: PyTree) -> PyTree:
    """``α·x + y`` leaf by leaf, in ``y``'s dtypes (``α`` may be a traced scalar).

    Example:
        >>> axpy(2.0, jnp.ones(2), jnp.arange(2.0)).tolist()
        [2.0, 3.0]
    """
    return jax.tree.map(lambda u, v: (alpha * u + v).astype(v.dtype), x, y)


def reject_from(g: PyTree, onto: PyTree) -> PyTree:
    """The component of ``g`` orthogonal to ``onto``: ``g − (⟨g, onto⟩ / ‖onto‖²)·onto`` (``g`` itself when
    ``onto = 0``).

    Example:
        >>> reject_from(jnp.array([1.0, 1.0]), jnp.array([2.0, 0.0])).tolist()
        [0.0, 1.0]
    """
    coef = tree_vdot(g, onto) / (tree_vdot(onto, onto) + EPS * EPS)
    return axpy(-coef, onto, g)
