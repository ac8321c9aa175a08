"""Linen modules in the functional convention: ``(module, variables)`` <-> ``(apply_fn, params, model_state)``.

:func:`from_linen` wraps a ``flax.linen.Module`` and its ``variables`` (from ``module.init``) so that every
part of jaxunlearn (``methods.Context``, ``engine.train``/``run``, metrics, curvature) takes it like a
split NNX model: ``apply_fn(params, model_state, x, *, train=False, features=False) -> (out, model_state)``.

* ``params`` = ``variables["params"]``; ``model_state`` = every other collection (e.g. ``batch_stats``),
  plus, for modules with a train mode, ``model_state["rngs"]``: raw PRNG key data per RNG stream, split at every
  train call (a fresh mask each step; eval calls use none).
* The train/eval mode reaches ``__call__`` through its ``train=`` argument (or ``deterministic=`` /
  ``use_running_average=``, passed ``not train``), read from the signature when wrapping.
* :func:`to_linen_variables` turns ``(params, model_state)`` back into a ``variables`` dict for
  ``module.apply``.
"""

from __future__ import annotations

import inspect
from typing import Any

import jax
import numpy as np
from flax import linen as nn

PyTree = Any

__all__ = ["LinenApplyFn", "from_linen", "to_linen_variables"]

_MODE_ARGS = ("train", "deterministic", "use_running_average")
_RNGS = "rngs"


def _convention(module: nn.Module) -> tuple[str | None, bool]:
    name = type(module).__name__
    params = list(inspect.signature(type(module).__call__).parameters.values())[1:]
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not positional and not any(p.kind == p.VAR_POSITIONAL for p in params):
        raise TypeError(f"{name}.__call__ takes no input argument; add the input as its first positional parameter.")
    names = {p.name for p in params}
    required = [
        p.name
        for p in positional[1:] + [p for p in params if p.kind == p.KEYWORD_ONLY]
        if p.default is p.empty and p.name not in (*_MODE_ARGS, "features")
    ]
    if required:
        raise TypeError(
            f"{name}.__call__ needs argument(s) {required} besides the input; jaxunlearn calls "
            "module.apply(variables, x, train=...). Give them defaults or wrap the module in one that supplies them."
        )
    mode = next((m for m in _MODE_ARGS if m in names), None)
    return mode, "features" in names


class LinenApplyFn:
    """Pure apply function of a Linen module (returned by :func:`from_linen`).

    ``apply_fn(params, model_state, x, *, train=False, features=False) -> (out, new_model_state)``, the
    convention of :class:`jaxunlearn.models.ApplyFn`: ``out = module.apply({"params": params, **state}, x,
    train=train)``; with ``train=True`` the non-param collections are mutable and returned updated and the
    Dropout keys in ``model_state["rngs"]`` advance. Jitted (``train``/``features`` static). Equal modules
    share compiled programs.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> class Net(nn.Module):
        ...     @nn.compact
        ...     def __call__(self, x, train: bool = False):
        ...         return nn.Dense(2)(nn.Dropout(0.5, deterministic=not train)(x))
        >>> net = Net()
        >>> apply_fn, params, state = from_linen(net, net.init(jax.random.key(0), jnp.ones((1, 3))))
        >>> sorted(state)                                    # the Dropout stream's key
        ['rngs']
        >>> out, new_state = apply_fn(params, state, jnp.ones((4, 3)), train=True)
        >>> out.shape, bool((new_state["rngs"]["dropout"] != state["rngs"]["dropout"]).any())
        ((4, 2), True)
    """

    def __init__(
        self, module: nn.Module, *, mode, has_features: bool, rng_streams=(), num_classes=None, input_shape=None
    ):
        self.module = module
        self.mode = mode
        self.has_features = has_features
        self.rng_streams = tuple(rng_streams)
        self.num_classes = num_classes
        self.input_shape = input_shape
        self.name = type(module).__name__
        self._jitted = jax.jit(self._impl, static_argnames=("train", "features"))

    def _key(self):
        try:
            hash(self.module)
            module = self.module
        except TypeError:
            module = id(self.module)
        return (module, self.mode, self.has_features, self.rng_streams, self.num_classes, self.input_shape)

    def __eq__(self, other):
        return isinstance(other, LinenApplyFn) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def _impl(self, params, model_state, x, *, train, features):
        state = dict(model_state)
        keys = state.pop(_RNGS, {})
        kw = {"features": True} if features else {}
        if self.mode == "train":
            kw["train"] = train
        elif self.mode is not None:
            kw[self.mode] = not train
        variables = {"params": params, **state}
        if not train:
            return self.module.apply(variables, x, **kw), model_state
        rngs, new_keys = {}, {}
        for stream, data in keys.items():
            nxt, use = jax.random.split(jax.random.wrap_key_data(data))
            rngs[stream], new_keys[stream] = use, jax.random.key_data(nxt)
        if state:
            out, updated = self.module.apply(variables, x, rngs=rngs, mutable=list(state), **kw)
            new_state = {**state, **updated}
        else:
            out, new_state = self.module.apply(variables, x, rngs=rngs, **kw), {}
        if new_keys:
            new_state[_RNGS] = new_keys
        return out, new_state

    def __call__(self, params, model_state, x, *, train: bool = False, features: bool = False):
        if not isinstance(train, bool | np.bool_) or not isinstance(features, bool | np.bool_):
            raise TypeError(
                f"train and features must be Python bools (static), got train={train!r}, features={features!r}"
            )
        if features and not self.has_features:
            raise TypeError(
                f"{self.name}.__call__ has no features= argument, so its penultimate features are unavailable; "
                "add features: bool = False and return the input of the last layer when it is true."
            )
        return self._jitted(params, model_state, x, train=bool(train), features=bool(features))

    def __repr__(self) -> str:
        return f"LinenApplyFn({self.name}, mode={self.mode})"


def from_linen(
    module: nn.Module,
    variables: PyTree,
    *,
    rng: jax.Array | int = 0,
    rng_streams=("dropout",),
    num_classes: int | None = None,
    input_shape: tuple | None = None,
) -> tuple[LinenApplyFn, PyTree, PyTree]:
    """``(module, variables) -> (apply_fn, params, model_state)``: a Linen model in jaxunlearn's convention.

    ``params = variables["params"]``, ``model_state = {other collections} ∪ {"rngs": {stream: key data}}``
    (one key per stream in ``rng_streams``, seeded from ``rng``, for modules with a train mode; pass
    ``rng_streams=()`` for a module without Dropout). The call signature is checked here: an input that
    cannot be passed as ``module.apply(variables, x)`` raises ``TypeError`` saying what to change.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> class Net(nn.Module):
        ...     @nn.compact
        ...     def __call__(self, x, train: bool = False):
        ...         x = nn.BatchNorm(use_running_average=not train)(nn.Dense(4)(x))
        ...         return nn.Dense(2)(x)
        >>> net = Net()
        >>> apply_fn, params, state = from_linen(net, net.init(jax.random.key(0), jnp.ones((1, 3))))
        >>> sorted(params), sorted(state)
        (['BatchNorm_0', 'Dense_0', 'Dense_1'], ['batch_stats', 'rngs'])
        >>> apply_fn(params, state, jnp.ones((5, 3)))[0].shape
        (5, 2)
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"from_linen expects a flax.linen.Module, got {type(module).__name__}")
    if not isinstance(variables, dict) or "params" not in variables:
        raise ValueError(
            "from_linen needs the module's variables as returned by module.init(key, x): a dict with a 'params' "
            f"collection; got {type(variables).__name__}"
            + (f" with keys {sorted(variables)}" if isinstance(variables, dict) else "")
        )
    mode, has_features = _convention(module)
    params = variables["params"]
    state = {k: v for k, v in variables.items() if k != "params"}
    if _RNGS in state:
        raise ValueError(f"a collection named {_RNGS!r} clashes with the Dropout keys jaxunlearn keeps; rename it.")
    used = tuple(rng_streams) if mode is not None else ()
    if used:
        base = jax.random.key(rng) if isinstance(rng, int) else rng
        keys = jax.random.split(base, len(used))
        state[_RNGS] = {s: jax.random.key_data(k) for s, k in zip(used, keys, strict=True)}
    apply_fn = LinenApplyFn(
        module, mode=mode, has_features=has_features, rng_streams=used, num_classes=num_classes, input_shape=input_shape
    )
    return apply_fn, params, state


def to_linen_variables(params: PyTree, model_state: PyTree) -> dict:
    """``(params, model_state) -> variables`` for ``module.apply``: ``{"params": params, **collections}``
    (the Dropout keys kept in ``model_state["rngs"]`` are dropped).

    Example:
        >>> sorted(to_linen_variables({"w": 1}, {"batch_stats": {}, "rngs": {}}))
        ['batch_stats', 'params']
    """
    return {"params": params, **{k: v for k, v in dict(model_state or {}).items() if k != _RNGS}}
