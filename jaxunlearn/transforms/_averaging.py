"""``weight_average``: a uniform or exponential average of the parameters over a run, kept in the optimizer
state (Unlearn-Smooth's weight averaging, ``WeightAveragingCallback``), and :func:`averaged_params` to read it.

Example:
    >>> import jax.numpy as jnp, optax
    >>> opt = optax.chain(optax.sgd(1.0), weight_average())
    >>> w = jnp.zeros(1); state = opt.init(w)
    >>> for _ in range(3):                           # w: 1, 2, 3
    ...     u, state = opt.update(-jnp.ones(1), state, w); w = optax.apply_updates(w, u)
    >>> float(averaged_params(state, w)[0])          # (1 + 2 + 3) / 3
    2.0
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxunlearn import _validate
from jaxunlearn.transforms import _common

__all__ = ["weight_average", "averaged_params", "WeightAverageState", "AVERAGE_KINDS"]

PyTree = Any
AVERAGE_KINDS = ("uniform", "ema")


class WeightAverageState(NamedTuple):
    """State of :func:`weight_average`: ``count`` (int32, updates seen), ``n`` (int32, snapshots in the average)
    and ``average`` (the parameters' average, float32 or wider; zeros before the first snapshot, which
    overwrites them: :func:`averaged_params` returns the parameters themselves until then).

    Example:
        >>> s = weight_average().init({"w": jnp.ones(2)})
        >>> int(s.count), int(s.n), s.average["w"].tolist()
        (0, 0, [0.0, 0.0])
    """

    count: jax.Array
    n: jax.Array
    average: PyTree


def _check_step(name: str, value, minimum: int) -> None:
    if isinstance(value, jax.core.Tracer):
        return
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok and isinstance(value, jax.Array) and value.ndim == 0:
        ok = jnp.issubdtype(value.dtype, jnp.integer)
    if not ok or int(value) < minimum:
        raise ValueError(f"weight_average: {name} must be an integer >= {minimum} (a step number), got {value!r}.")


def weight_average(kind: str = "uniform", *, start=0, every=1, decay=0.9) -> optax.GradientTransformation:
    """Pass the updates through unchanged and average the parameters they lead to.

    The update ``t`` (``t = 1, 2, ...``) moves the parameters to ``w_t = params + updates``; it is a *snapshot*
    when ``t >= start`` and ``t mod every = 0``. With ``n`` snapshots so far and average ``a``:

    * ``kind="uniform"``: ``a ← a + (w_t − a) / (n + 1)``, the mean of the snapshots (stochastic weight averaging);
    * ``kind="ema"``: ``a ← w_t`` for the first snapshot, then ``a ← decay·a + (1 − decay)·w_t``.

    Read the result with :func:`averaged_params` at the end of the run (the final parameters when there was no
    snapshot). ``start`` may be a traced integer (e.g. a fraction of a traced run length). Put it LAST in an
    ``optax.chain`` (it warns otherwise): it must see the final update. Memory: one float32 copy of the
    parameters. Cost: O(#params) per step, no gradient.

    Defaults and differences from Unlearn-Smooth's ``WeightAveragingCallback``: theirs is uniform from global step
    100, every 5 steps, over a 125-step run, and loads the average into the model when training ends (over the
    whole ``state_dict``, buffers included); here ``start=0, every=1`` (:class:`jaxunlearn.plan.OptimConfig` sets
    ``start`` to a fraction of the run, 0.8 by default, and ``every = 5``), the average covers the optimized
    parameters only, and replacing the parameters is the caller's (or the engine's) step.

    Example:
        >>> opt = optax.chain(optax.sgd(1.0), weight_average("ema", decay=0.5, start=2))
        >>> w = jnp.zeros(1); state = opt.init(w)
        >>> for _ in range(3):                       # w: 1, 2 (first snapshot), 3
        ...     u, state = opt.update(-jnp.ones(1), state, w); w = optax.apply_updates(w, u)
        >>> float(averaged_params(state, w)[0]), int(state[1].n)      # 0.5·2 + 0.5·3
        (2.5, 2)
    """
    _validate.choice("kind", kind, AVERAGE_KINDS)
    _check_step("start", start, 0)
    _check_step("every", every, 1)
    _validate.real_number("decay", decay, minimum=0.0, hint="The EMA decay is in [0, 1), e.g. 0.9.")
    if _validate.is_concrete_number(decay) and not float(decay) < 1.0:
        raise ValueError(f"weight_average: decay must be in [0, 1), got {decay!r}.")

    def init_fn(params):
        # zeros, not a view of params (the first snapshot overwrites it): a jitted loop that donates both the
        # parameters and the optimizer state must not get one buffer twice
        average = jax.tree.map(
            lambda p: jnp.zeros(jnp.shape(p), jnp.promote_types(jnp.result_type(p), jnp.float32)), params
        )
        return WeightAverageState(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), average)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("transforms.weight_average needs params: call opt.update(grads, state, params).")
        _common.warn_not_last()
        t = state.count + 1
        snap = (t >= start) & (t % every == 0)
        new = optax.apply_updates(params, updates)
        n = state.n.astype(jnp.float32)
        if kind == "uniform":
            weight = 1.0 / (n + 1.0)
        else:
            weight = jnp.where(state.n == 0, 1.0, 1.0 - decay)
        weight = jnp.where(snap, weight, 0.0)
        average = jax.tree.map(lambda a, w: (a + weight * (w.astype(a.dtype) - a)).astype(a.dtype), state.average, new)
        return updates, WeightAverageState(t, state.n + snap.astype(jnp.int32), average)

    return optax.GradientTransformation(init_fn, update_fn)


def averaged_params(opt_state, params: PyTree) -> PyTree:
    """The average kept by the :func:`weight_average` inside ``opt_state`` (any nesting: a chain's state, a
    ``TrainState``'s ``opt_states``), cast to ``params``' dtypes; ``params`` itself when no snapshot was taken yet.

    Raises a one-line ``ValueError`` when ``opt_state`` holds no (or more than one) ``weight_average`` state.

    Example:
        >>> opt = optax.chain(optax.sgd(0.5), weight_average(start=5))
        >>> w = jnp.ones(2); state = opt.init(w)
        >>> u, state = opt.update(jnp.ones(2), state, w)
        >>> averaged_params(state, optax.apply_updates(w, u)).tolist()   # no snapshot before step 5: params
        [0.5, 0.5]
    """
    found = [
        s
        for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, WeightAverageState))
        if isinstance(s, WeightAverageState)
    ]
    if len(found) != 1:
        raise ValueError(
            f"averaged_params: the optimizer state must hold exactly one transforms.weight_average state, "
            f"found {len(found)}."
        )
    state = found[0]
    _validate.same_structure("the averaged parameters", state.average, "params", params)
    have = state.n > 0  # a leading model axis too when the states are stacked (train_many)

    def pick(a, p):
        h = jnp.reshape(have, jnp.shape(have) + (1,) * (jnp.ndim(p) - jnp.ndim(have)))
        return jnp.where(h, a.astype(jnp.result_type(p)), p)

    return jax.tree.map(pick, state.average, params)
