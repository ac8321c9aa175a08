"""The functional adapter: an NNX module <-> ``(apply_fn, params, model_state)``.

This is the only place where the rest of jaxunlearn meets Flax. ``params`` and ``model_state`` are
plain nested dicts of arrays (string keys), so they work with ``jax.grad``, ``jax.tree.map``, Optax,
Optax masks and Orbax without any Flax types.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx

PyTree = Any


def _pure(tree: PyTree) -> PyTree:
    """``nnx.State`` -> nested dict of arrays; anything else unchanged."""
    return tree.to_pure_dict() if isinstance(tree, nnx.State) else tree


class ApplyFn:
    """Pure apply function of a split NNX model (returned by `split_model`).

    ``apply_fn(params, model_state, x, *, train=False, features=False) -> (out, new_model_state)``

    * ``out``: logits ``[B, num_classes]``, or the penultimate features ``[B, D]`` (the input of the
      last dense layer) when ``features=True``. ``x`` may also be one example without the batch axis,
      then ``out`` has no batch axis either.
    * ``train=True``: batch norm normalizes with the batch statistics and ``new_model_state`` holds the
      updated running averages. ``train=False``: batch norm uses the running averages and
      ``new_model_state`` *is* the ``model_state`` passed in.

    The call is pure (``nnx.merge`` of the closed-over graphdef with the given arrays, then the module)
    and is itself wrapped in ``jax.jit`` (``train``/``features`` static), so eager calls are compiled
    and it composes with ``jax.jit``, ``jax.grad``, ``jax.vmap`` and sharded jits (inner jits inline).
    Attributes ``graphdef`` (the ``nnx.GraphDef``), ``input_shape`` and ``num_classes``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxunlearn import models
        >>> apply_fn, params, state = models.split_model(
        ...     models.build("mlp", num_classes=3, input_shape=(4,), hidden=(8,)))
        >>> logits, _ = apply_fn(params, state, jnp.ones((2, 4)))
        >>> logits.shape
        (2, 3)
        >>> grads = jax.grad(lambda p: apply_fn(p, state, jnp.ones((2, 4)))[0].sum())(params)
    """

    def __init__(self, graphdef: nnx.GraphDef, *, input_shape=None, num_classes=None, name=None):
        self.graphdef = graphdef
        self.name = name
        self.input_shape = input_shape
        self.num_classes = num_classes
        self._eval = jax.jit(self._eval_impl, static_argnames=("features",))
        self._train = jax.jit(self._train_impl, static_argnames=("features",))

    def _key(self):
        return (self.graphdef, self.input_shape, self.num_classes)

    def __eq__(self, other):
        """Equal when the models have the same structure (graphdef): they compute the same function of
        ``(params, model_state, x)``, so compiled programs keyed on an ``ApplyFn`` are shared between
        models built separately (every seed of a sweep, Retrain's fresh model, ...)."""
        return isinstance(other, ApplyFn) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def _eval_impl(self, params, model_state, x, *, features):
        model = nnx.merge(self.graphdef, params, model_state)
        return model(x, train=False, features=features)

    def _train_impl(self, params, model_state, x, *, features):
        model = nnx.merge(self.graphdef, params, model_state)
        out = model(x, train=True, features=features)
        _, _, new_state = nnx.split(model, nnx.Param, ...)
        return out, new_state.to_pure_dict()

    def __call__(self, params, model_state, x, *, train: bool = False, features: bool = False):
        if not isinstance(train, bool | np.bool_) or not isinstance(features, bool | np.bool_):
            raise TypeError(
                "train and features must be Python bools: they select the computation, so they are static "
                "(under jax.jit pass them via static_argnames=('train', 'features') or close over them); "
                f"got train={train!r}, features={features!r}"
            )
        train, features = bool(train), bool(features)
        if train:
            return self._train(_pure(params), _pure(model_state), x, features=features)
        return self._eval(_pure(params), _pure(model_state), x, features=features), model_state

    def __repr__(self) -> str:
        return f"ApplyFn({self.name}, input_shape={self.input_shape}, num_classes={self.num_classes})"


def split_model(model: nnx.Module) -> tuple[ApplyFn, PyTree, PyTree]:
    """Split an NNX model into ``(apply_fn, params, model_state)``.

    ``params`` holds the ``nnx.Param`` leaves and ``model_state`` everything else (batch-norm
    ``BatchStat`` running averages; ``{}`` for models without batch norm), both as nested dicts of
    arrays. See `ApplyFn` for the calling convention. The model itself is left untouched.

    Example (a model of one's own: any NNX module called as ``model(x, train=..., features=...)``):
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> class Net(nnx.Module):
        ...     def __init__(self, rngs):
        ...         self.bn, self.head = nnx.BatchNorm(3, rngs=rngs), nnx.Linear(3, 2, rngs=rngs)
        ...     def __call__(self, x, train=False, features=False):
        ...         h = self.bn(x, use_running_average=not train)
        ...         return h if features else self.head(h)
        >>> apply_fn, params, state = split_model(Net(nnx.Rngs(0)))
        >>> sorted(params), sorted(state["bn"])
        (['bn', 'head'], ['mean', 'var'])
        >>> logits, new_state = apply_fn(params, state, jnp.ones((4, 3)), train=True)
        >>> logits.shape, [round(m, 4) for m in new_state["bn"]["mean"].tolist()]   # (1 − 0.99) · batch mean
        ((4, 2), [0.01, 0.01, 0.01])
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"split_model expects a flax.nnx.Module, got {type(model).__name__}")
    graphdef, params, state = nnx.split(model, nnx.Param, ...)
    apply_fn = ApplyFn(
        graphdef,
        input_shape=getattr(model, "input_shape", None),
        num_classes=getattr(model, "num_classes", None),
        name=type(model).__name__,
    )
    return apply_fn, params.to_pure_dict(), state.to_pure_dict()


def merge_model(apply_fn_or_graphdef: ApplyFn | nnx.GraphDef, params: PyTree, model_state: PyTree = None):
    """Rebuild an ``nnx.Module`` from ``(apply_fn or graphdef, params, model_state)``; inverse of `split_model`.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxunlearn import models
        >>> apply_fn, params, state = models.split_model(
        ...     models.build("mlp", num_classes=3, input_shape=(4,), hidden=(8,)))
        >>> model = models.merge_model(apply_fn, params, state)
        >>> model(jnp.ones((2, 4))).shape
        (2, 3)
    """
    graphdef = getattr(apply_fn_or_graphdef, "graphdef", apply_fn_or_graphdef)
    if not isinstance(graphdef, nnx.GraphDef):
        raise TypeError(
            "merge_model expects the apply_fn returned by split_model or an nnx.GraphDef, "
            f"got {type(apply_fn_or_graphdef).__name__}"
        )
    return nnx.merge(graphdef, _pure(params), {} if model_state is None else _pure(model_state))


def logits_fn(apply_fn: Callable, model_state: PyTree) -> Callable[[PyTree, jax.Array], jax.Array]:
    """Eval-mode closure ``f(params, x) = apply_fn(params, model_state, x)[0]`` (logits), for metrics.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxunlearn import models
        >>> apply_fn, params, state = models.split_model(
        ...     models.build("mlp", num_classes=3, input_shape=(4,), hidden=(8,)))
        >>> models.logits_fn(apply_fn, state)(params, jnp.ones((2, 4))).shape
        (2, 3)
    """

    def f(params, x):
        return apply_fn(params, model_state, x, train=False)[0]

    return f


def features_fn(apply_fn: Callable, model_state: PyTree) -> Callable[[PyTree, jax.Array], jax.Array]:
    """Eval-mode closure ``f(params, x) = apply_fn(params, model_state, x, features=True)[0]``: the
    penultimate features ``[B, D]`` (input of the last dense layer).

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxunlearn import models
        >>> apply_fn, params, state = models.split_model(
        ...     models.build("mlp", num_classes=3, input_shape=(4,), hidden=(8,)))
        >>> models.features_fn(apply_fn, state)(params, jnp.ones((2, 4))).shape
        (2, 8)
    """

    def f(params, x):
        return apply_fn(params, model_state, x, train=False, features=True)[0]

    return f


def num_params(params: PyTree | nnx.Module) -> int:
    """Total number of scalar parameters, ``Σ_leaves size(leaf)``; a module counts its ``nnx.Param`` s.

    Example:
        >>> from jaxunlearn import models
        >>> models.num_params(models.build("mlp", num_classes=3, input_shape=(4,), hidden=(8,)))
        67
    """
    if isinstance(params, nnx.Module):
        params = nnx.state(params, nnx.Param)
    return int(sum(math.prod(getattr(leaf, "shape", ())) for leaf in jax.tree.leaves(params)))
