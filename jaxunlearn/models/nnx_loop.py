"""jaxunlearn's pure functions inside a user's own NNX loop (``nnx.Optimizer``, ``nnx.jit``).

``nnx.Optimizer.update(model, grads, **kw)`` hands an Optax transform's extra arguments pure states: a
``grad_fn`` for :func:`jaxunlearn.transforms.sam` is called with an ``nnx.State`` of arrays, not the module.
:func:`sam_grad_fn` builds that ``grad_fn`` from the user's ``loss_fn(model, *args)``, and
:func:`pure_loss` turns the same loss into ``f(params, *args)`` for :mod:`jaxunlearn.curvature` and
:mod:`jaxunlearn.selection`. Both split the module into ``(graphdef, params, rest)`` and merge copies of
plain arrays inside the traced function, so BatchNorm and Dropout work under ``nnx.jit`` without
``TraceContextError``.

Example (SAM in an ``nnx.Optimizer`` loop is one line):
    >>> import jax.numpy as jnp, optax
    >>> from flax import nnx
    >>> from jaxunlearn import transforms
    >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    >>> loss_fn = lambda m, x, y: jnp.mean((m(x) - y) ** 2)
    >>> opt = nnx.Optimizer(model, optax.chain(transforms.sam(0.05), optax.sgd(0.1)), wrt=nnx.Param)
    >>> @nnx.jit
    ... def train_step(model, opt, x, y):
    ...     loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    ...     opt.update(model, grads, grad_fn=sam_grad_fn(model, loss_fn, x, y))
    ...     return loss
    >>> x, y = jnp.ones((4, 3)), jnp.zeros((4, 2))
    >>> bool(train_step(model, opt, x, y) > train_step(model, opt, x, y))
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

__all__ = ["sam_grad_fn", "pure_loss"]

PyTree = Any


def _check(model, loss_fn, name: str):
    if not isinstance(model, nnx.Module):
        raise TypeError(f"{name} expects the flax.nnx.Module being trained, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"{name} expects loss_fn(model, *args) -> loss, got {type(loss_fn).__name__}")


def _scalar_loss(loss_fn, has_aux: bool, name: str):
    def f(model, *args):
        out = loss_fn(model, *args)
        if has_aux:
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError(f"{name}: with has_aux=True loss_fn must return (loss, aux), got {type(out).__name__}")
            out = out[0]
        elif isinstance(out, tuple | list):
            raise TypeError(
                f"{name}: loss_fn returned a {type(out).__name__}; pass has_aux=True for (loss, aux) losses"
            )
        if getattr(out, "shape", ()) != ():
            raise TypeError(f"{name}: loss_fn must return a scalar, got shape {out.shape}; reduce it (e.g. .mean())")
        return out

    return f


def sam_grad_fn(model: nnx.Module, loss_fn: Callable, *args, wrt=nnx.Param, has_aux: bool = False):
    """``grad_fn(params) = ∇_params loss_fn(model[params], *args)`` for :func:`jaxunlearn.transforms.sam`
    in an ``nnx.Optimizer`` loop (``optimizer.update(model, grads, grad_fn=sam_grad_fn(model, loss_fn, *args))``).

    ``params`` is the pure ``nnx.State`` of the ``wrt`` variables that ``nnx.Optimizer`` passes; the
    gradient has the same structure. The perturbed pass runs on a merged copy of ``model`` at ``w + e``:
    its BatchNorm statistics are discarded (the running averages come from the unperturbed pass only) and
    its RNG streams (Dropout keys) advance in ``model``, so the perturbed pass draws a fresh Dropout mask,
    as a second forward pass would. ``has_aux``: ``loss_fn`` returns ``(loss, aux)``; ``aux`` is dropped.
    Call it after the unperturbed gradient (as in the module example), inside the same ``nnx.jit``.

    Example:
        >>> import jax.numpy as jnp
        >>> class Net(nnx.Module):
        ...     def __init__(self, rngs):
        ...         self.lin, self.bn = nnx.Linear(3, 2, rngs=rngs), nnx.BatchNorm(2, rngs=rngs)
        ...     def __call__(self, x):
        ...         return self.bn(self.lin(x))
        >>> model = Net(nnx.Rngs(0))
        >>> loss_fn = lambda m, x: jnp.mean(m(x) ** 2 + m(x))
        >>> grad_fn = sam_grad_fn(model, loss_fn, jnp.arange(12.0).reshape(4, 3))
        >>> g = grad_fn(nnx.state(model, nnx.Param))
        >>> sorted(g), float(model.bn.mean[...].sum())     # the running mean did not move
        (['bn', 'lin'], 0.0)
    """
    _check(model, loss_fn, "sam_grad_fn")
    scalar = _scalar_loss(loss_fn, has_aux, "sam_grad_fn")
    graphdef, _, rest = nnx.split(model, wrt, ...)
    rest = nnx.as_pure(rest)
    rng_filter = nnx.RngState

    def loss_at(params):
        m = nnx.merge(graphdef, params, rest)
        value = scalar(m, *args)
        return value, nnx.as_pure(nnx.state(m, rng_filter))

    def grad_fn(params):
        params = nnx.as_pure(params)
        grads, rng_after = jax.grad(loss_at, has_aux=True)(params)
        if jax.tree.leaves(rng_after):
            nnx.update(model, rng_after)
        return grads

    return grad_fn


def pure_loss(model: nnx.Module, loss_fn: Callable, *, wrt=nnx.Param, has_aux: bool = False):
    """``(f, params)`` with ``f(params, *args) = loss_fn(model[params], *args)``: an NNX loss for
    :mod:`jaxunlearn.curvature` / :mod:`jaxunlearn.sharpness` / :mod:`jaxunlearn.selection`.

    ``params`` is the pure ``nnx.State`` of the ``wrt`` variables (the structure ``nnx.Optimizer`` uses,
    so a mask from :func:`jaxunlearn.selection.top_fraction` on a curvature result plugs straight into
    :func:`jaxunlearn.transforms.masked`). Every call merges a fresh copy of the module, so the module is
    never mutated (BatchNorm statistics, RNG counts); put the module in the mode you want
    (``model.eval()``) first. ``has_aux``: ``f`` returns ``(loss, aux)`` as ``loss_fn`` does.

    Example (Hessian-diagonal selection on an NNX model):
        >>> import jax.numpy as jnp
        >>> from jaxunlearn import curvature, selection
        >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
        >>> f, params = pure_loss(model, lambda m, x: jnp.sum(m(x) ** 2))
        >>> h = curvature.hessian_diagonal(f, params, jnp.arange(12.0).reshape(4, 3))
        >>> mask = selection.top_fraction(h, 0.5)
        >>> [int(v.sum()) for v in jax.tree.leaves(mask)]   # the kernel rows of the largest inputs
        [0, 4]
    """
    _check(model, loss_fn, "pure_loss")
    graphdef, params, rest = nnx.split(model, wrt, ...)
    rest = nnx.as_pure(rest)
    inner = _scalar_loss(loss_fn, False, "pure_loss") if not has_aux else loss_fn

    def f(p, *args):
        return inner(nnx.merge(graphdef, nnx.as_pure(p), rest), *args)

    return f, nnx.as_pure(params)
