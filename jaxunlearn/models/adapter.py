"""The functional adapter: any NNX module <-> ``(apply_fn, params, model_state)``.

This is where the rest of jaxunlearn meets Flax NNX (Linen modules go through
:mod:`jaxunlearn.models.linen`). ``params`` and ``model_state`` are plain nested dicts of arrays (string
keys), so they work with ``jax.grad``, ``jax.tree.map``, Optax, Optax masks and Orbax without any Flax types.

Any NNX module works: its ``__call__`` signature is read when it is wrapped to decide how the train/eval
mode reaches it (a ``train=`` argument, a ``deterministic=`` argument, or else the module's own
``.train()`` / ``.eval()`` switches, which set Dropout's ``deterministic`` and BatchNorm's
``use_running_average``), and whether it can return penultimate features (a ``features=`` argument).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx

PyTree = Any

#: How the train/eval mode reaches a module's ``__call__`` (see :func:`call_convention`).
MODE_ARGS = ("train", "deterministic", "switch")


def _pure(tree: PyTree) -> PyTree:
    """``nnx.State`` -> nested dict of arrays; anything else unchanged."""
    return tree.to_pure_dict() if isinstance(tree, nnx.State) else tree


def call_convention(model: nnx.Module) -> tuple[str, bool]:
    """How to call ``model``: ``(mode, has_features)`` read from the signature of its ``__call__``.

    ``mode`` is ``"train"`` (it takes ``train=``), ``"deterministic"`` (it takes ``deterministic=``, passed
    ``not train``) or ``"switch"`` (neither: the adapter calls ``model.train()`` / ``model.eval()`` on the
    merged copy, which sets Dropout's ``deterministic`` and BatchNorm's ``use_running_average``).
    ``has_features``: it takes ``features=`` (returns penultimate features when true). The input must be
    the first positional parameter; other parameters need defaults. Anything else raises ``TypeError``
    saying what to change.

    Example:
        >>> class Plain(nnx.Module):
        ...     def __init__(self, rngs):
        ...         self.lin = nnx.Linear(3, 2, rngs=rngs)
        ...     def __call__(self, x):
        ...         return self.lin(x)
        >>> call_convention(Plain(nnx.Rngs(0)))
        ('switch', False)
        >>> class NeedsMask(Plain):
        ...     def __call__(self, x, mask):
        ...         return self.lin(x * mask)
        >>> call_convention(NeedsMask(nnx.Rngs(0)))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        TypeError: NeedsMask.__call__(x, mask) needs argument(s) ['mask'] besides the input; ...
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"expected a flax.nnx.Module, got {type(model).__name__}")
    name = type(model).__name__
    try:
        sig = inspect.signature(type(model).__call__)
    except (TypeError, ValueError) as err:  # pragma: no cover - builtins only
        raise TypeError(f"cannot read the signature of {name}.__call__: {err}") from None
    params = list(sig.parameters.values())[1:]  # drop self
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    has_var = any(p.kind == p.VAR_POSITIONAL for p in params)
    if not positional and not has_var:
        raise TypeError(
            f"{name}.__call__ takes no input argument; jaxunlearn calls model(x): add the input as its first "
            "positional parameter."
        )
    names = {p.name for p in params}
    required = [
        p.name for p in positional[1:] if p.default is p.empty and p.name not in ("train", "deterministic", "features")
    ] + [p.name for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty and p.name != "train"]
    if required:
        shown = ", ".join(p.name for p in params)
        raise TypeError(
            f"{name}.__call__({shown}) needs argument(s) {required} besides the input; jaxunlearn calls model(x) "
            "(plus train=/features= if the signature has them). Give them defaults, or wrap the module: "
            "class Wrapped(nnx.Module) whose __call__(self, x, train=False) supplies them."
        )
    mode = "train" if "train" in names else "deterministic" if "deterministic" in names else "switch"
    return mode, "features" in names


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
    Attributes ``graphdef`` (the ``nnx.GraphDef``), ``input_shape``, ``num_classes``, ``mode`` and
    ``has_features`` (see :func:`call_convention`). A model with Dropout keeps its ``nnx.Rngs`` state in
    ``model_state``; train calls advance it (a fresh mask each step), eval calls leave it alone.

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

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        *,
        input_shape=None,
        num_classes=None,
        name=None,
        mode: str = "train",
        has_features: bool = True,
    ):
        if mode not in MODE_ARGS:
            raise ValueError(f"mode must be one of {MODE_ARGS}, got {mode!r}")
        self.graphdef = graphdef
        self.name = name
        self.input_shape = input_shape
        self.num_classes = num_classes
        self.mode = mode
        self.has_features = bool(has_features)
        self._eval = jax.jit(self._eval_impl, static_argnames=("features",))
        self._train = jax.jit(self._train_impl, static_argnames=("features",))

    def _key(self):
        return (self.graphdef, self.input_shape, self.num_classes, self.mode, self.has_features)

    def _call(self, model, x, train: bool, features: bool):
        kw = {"features": True} if features else {}
        if self.mode == "train":
            return model(x, train=train, **kw)
        if self.mode == "deterministic":
            return model(x, deterministic=not train, **kw)
        model.train() if train else model.eval()
        return model(x, **kw)

    def __eq__(self, other):
        """Equal when the models have the same structure (graphdef): they compute the same function of
        ``(params, model_state, x)``, so compiled programs keyed on an ``ApplyFn`` are shared between
        models built separately (every seed of a sweep, Retrain's fresh model, ...)."""
        return isinstance(other, ApplyFn) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def _eval_impl(self, params, model_state, x, *, features):
        model = nnx.merge(self.graphdef, params, model_state)
        return self._call(model, x, False, features)

    def _train_impl(self, params, model_state, x, *, features):
        model = nnx.merge(self.graphdef, params, model_state)
        out = self._call(model, x, True, features)
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
        if features and not self.has_features:
            raise TypeError(
                f"{self.name}.__call__ has no features= argument, so its penultimate features are unavailable "
                "(the feature metrics and figures read them); add features=False to __call__ and return the "
                "input of the last layer when it is true."
            )
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

    Any NNX module: how its train/eval mode is set is read from its ``__call__`` signature (see
    :func:`call_convention`; a signature that cannot be called as ``model(x)`` raises ``TypeError`` here,
    not at the first step).

    Example (a model of one's own, called as ``model(x, train=..., features=...)``):
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

    A plain ``__call__(self, x)`` with Dropout is switched with ``.train()`` / ``.eval()``:
        >>> class Plain(nnx.Module):
        ...     def __init__(self, rngs):
        ...         self.lin, self.drop = nnx.Linear(3, 2, rngs=rngs), nnx.Dropout(0.5, rngs=rngs)
        ...     def __call__(self, x):
        ...         return self.drop(self.lin(x))
        >>> apply_fn, params, state = split_model(Plain(nnx.Rngs(0)))
        >>> apply_fn.mode
        'switch'
        >>> bool(jnp.all(apply_fn(params, state, jnp.ones((4, 3)))[0] == apply_fn(params, state, jnp.ones((4, 3)))[0]))
        True
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"split_model expects a flax.nnx.Module, got {type(model).__name__}")
    mode, has_features = call_convention(model)
    graphdef, params, state = nnx.split(model, nnx.Param, ...)
    apply_fn = ApplyFn(
        graphdef,
        input_shape=getattr(model, "input_shape", None),
        num_classes=getattr(model, "num_classes", None),
        name=type(model).__name__,
        mode=mode,
        has_features=has_features,
    )
    return apply_fn, params.to_pure_dict(), state.to_pure_dict()


def merge_model(apply_fn_or_graphdef: ApplyFn | nnx.GraphDef, params: PyTree, model_state: PyTree = None):
    """Rebuild an ``nnx.Module`` from ``(apply_fn or graphdef, params, model_state)``; inverse of `split_model`.

    To write results back into a module you already hold instead, use :func:`update_model`.

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
            "merge_model rebuilds a module from the apply_fn returned by split_model (or an nnx.GraphDef); "
            f"got {type(apply_fn_or_graphdef).__name__}, which holds no module structure. With a hand-written "
            "apply_fn the (params, model_state) pytrees are the model; to write them into an NNX module you "
            "hold, use models.update_model(module, params, model_state)."
        )
    return nnx.merge(graphdef, _pure(params), {} if model_state is None else _pure(model_state))


def update_model(model: nnx.Module, params: PyTree, model_state: PyTree = None) -> nnx.Module:
    """Write ``params`` (and ``model_state``) into the user's own ``model`` in place and return it.

    ``model ← (params, model_state)`` leaf by leaf, with ``params`` / ``model_state`` as returned by
    :func:`split_model` (plain dicts or ``nnx.State``), e.g. the unlearned parameters of a
    :class:`~jaxunlearn.engine.RunResult`. Structures must match the module's ``nnx.Param`` and other
    state; a mismatch raises ``ValueError`` naming the first differing path.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxunlearn import models
        >>> model = models.build("mlp", num_classes=3, input_shape=(4,), hidden=(8,))
        >>> apply_fn, params, state = models.split_model(model)
        >>> zeros = jax.tree.map(jnp.zeros_like, params)
        >>> models.update_model(model, zeros, state) is model, float(jnp.abs(model(jnp.ones((1, 4)))).sum())
        (True, 0.0)
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"update_model expects a flax.nnx.Module, got {type(model).__name__}")
    _, cur_params, cur_state = nnx.split(model, nnx.Param, ...)
    parts = [("params", cur_params, params)]
    if model_state is not None:
        parts.append(("model_state", cur_state, model_state))
    for name, cur, new in parts:
        cur_paths = {jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(cur.to_pure_dict())}
        new_paths = {jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(_pure(new))}
        if cur_paths != new_paths:
            diff = sorted(cur_paths ^ new_paths)
            raise ValueError(
                f"{name} does not match {type(model).__name__}'s structure (first differing path {diff[0]}); "
                "pass the pytrees split_model gave for this module."
            )
        cur.replace_by_pure_dict(_pure(new))
        nnx.update(model, cur)
    return model


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
