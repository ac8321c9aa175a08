"""Accuracy-type metrics: batched prediction, accuracy, per-example loss, ToW, gaps, seed aggregation.

Every function here takes ``logits_fn(params, x) -> logits`` (pure, jit-able) and evaluates in batches of
``batch_size`` examples with ONE jitted function per ``logits_fn`` (``logits_fn`` is a static argument of a
module-level ``jax.jit``, so repeated calls with the same function object reuse the compiled code). The last
partial batch is padded to ``batch_size`` (:func:`jaxunlearn.batching.batched_map`) so a dataset costs at most
one compilation per shape.

Functions ending in ``_stacked`` evaluate K models at once: ``stacked_params`` is a pytree whose leaves have
a leading model axis K (what a vmapped trainer returns) and the models are mapped with ``jax.vmap``.

Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from numbers import Number
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxunlearn import _validate, batching

__all__ = [
    "predict",
    "accuracy",
    "per_example_loss",
    "correctness",
    "predict_stacked",
    "correctness_stacked",
    "logit_confidence_stacked",
    "tow",
    "tow_mia",
    "average_gap",
    "speedup",
    "mean_std",
    "aggregate_seeds",
    "ACC_KEYS",
]

ACC_KEYS = ("forget_acc", "retain_acc", "test_acc")
DEFAULT_BATCH_SIZE = 1024


# --------------------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------------------
def _check_unit(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (Number, np.number, np.ndarray, jax.Array)):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if np.ndim(value) != 0:
        raise ValueError(f"{name} must be a scalar in [0, 1], got an array of shape {np.shape(value)}")
    v = float(value)
    if not (0.0 <= v <= 1.0):
        raise ValueError(f"{name} must lie in [0, 1] (accuracies are fractions, not percent), got {v}")
    return v


# --------------------------------------------------------------------------------------------------------
# jitted kernels (logits_fn and the statistic are static: one compilation per function and shape)
# --------------------------------------------------------------------------------------------------------
def _phi(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Logit-scaled confidence z_y - logsumexp_{j != y} z_j = log(p_y / (1 - p_y)), computed stably."""
    onehot = jax.nn.one_hot(y, logits.shape[-1], dtype=bool)
    z_y = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
    others = jnp.where(onehot, -jnp.inf, logits)
    return z_y - jax.nn.logsumexp(others, axis=-1)


def _stat(logits: jax.Array, y: jax.Array | None, stat: str) -> jax.Array:
    logits = logits.astype(jnp.float32)
    if stat == "logits":
        return logits
    if stat == "correct":
        return jnp.argmax(logits, axis=-1) == y
    if stat == "loss":
        return optax.softmax_cross_entropy_with_integer_labels(logits, y)
    if stat == "phi":
        return _phi(logits, y)
    raise ValueError(f"unknown statistic {stat!r}")


@functools.partial(jax.jit, static_argnums=(0, 1))
def _single_kernel(logits_fn: Callable, stat: str, params: Any, x: jax.Array, y: jax.Array | None):
    return _stat(logits_fn(params, x), y, stat)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _stacked_kernel(logits_fn: Callable, stat: str, stacked_params: Any, x: jax.Array, y: jax.Array | None):
    return jax.vmap(lambda p: _stat(logits_fn(p, x), y, stat))(stacked_params)


def _run_batched(
    kernel: Callable, logits_fn: Callable, stat: str, params: Any, x: Any, y: Any, batch_size: int, axis: int
) -> np.ndarray:
    """``kernel`` over chunks of ``(x, y)`` (``y`` may be None), the rows of its output on ``axis``."""
    fn = lambda xy: kernel(logits_fn, stat, params, *xy)
    return batching.batched_map(fn, (x, y), batch_size=batch_size, out_axis=axis)


def _single(logits_fn, stat, params, x, y, batch_size):
    if not callable(logits_fn):
        raise ValueError(f"logits_fn must be callable, got {type(logits_fn).__name__}")
    batch_size = _validate.batch_size(batch_size)
    x = _validate.examples(x)
    yy = None if y is None else _validate.class_labels(y, int(x.shape[0]))
    return _run_batched(_single_kernel, logits_fn, stat, params, x, yy, batch_size, axis=0)


def _stacked(logits_fn, stat, stacked_params, x, y, batch_size):
    if not callable(logits_fn):
        raise ValueError(f"logits_fn must be callable, got {type(logits_fn).__name__}")
    batch_size = _validate.batch_size(batch_size)
    _validate.num_models(stacked_params)
    x = _validate.examples(x)
    yy = None if y is None else _validate.class_labels(y, int(x.shape[0]))
    return _run_batched(_stacked_kernel, logits_fn, stat, stacked_params, x, yy, batch_size, axis=1)


# --------------------------------------------------------------------------------------------------------
# single-model evaluation
# --------------------------------------------------------------------------------------------------------
def predict(logits_fn: Callable, params: Any, x: Any, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """Logits of one model on ``x``, evaluated in jitted batches.

    Computes ``logits[i] = logits_fn(params, x[i])`` (float32 numpy array ``[N, C]``).

    Example:
        >>> logits = predict(lambda p, x: x @ p["w"], {"w": jnp.eye(3)}, np.eye(3, dtype=np.float32))
        >>> logits.shape
        (3, 3)
    """
    return _single(logits_fn, "logits", params, x, None, batch_size)


def correctness(logits_fn: Callable, params: Any, x: Any, y: Any, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """Per-example correctness ``c_i = [argmax_j logits_fn(params, x_i)_j == y_i]`` as a bool array ``[N]``.

    Example:
        >>> correctness(lambda p, x: x, None, np.eye(3, dtype=np.float32), np.array([0, 1, 0]))
        array([ True,  True, False])
    """
    return _single(logits_fn, "correct", params, x, y, batch_size)


def accuracy(logits_fn: Callable, params: Any, x: Any, y: Any, batch_size: int = DEFAULT_BATCH_SIZE) -> float:
    """Top-1 accuracy in [0, 1]: ``(1/N) Σ_i [argmax_j logits_i,j == y_i]``.

    Raises ValueError when ``x``/``y`` are empty or their lengths differ.

    Example:
        >>> accuracy(lambda p, x: x, None, np.eye(3, dtype=np.float32), np.array([0, 1, 0]))
        0.6666666666666666
    """
    return float(np.mean(correctness(logits_fn, params, x, y, batch_size)))


def per_example_loss(
    logits_fn: Callable, params: Any, x: Any, y: Any, batch_size: int = DEFAULT_BATCH_SIZE
) -> np.ndarray:
    """Per-example cross-entropy ``ℓ_i = logsumexp_j z_ij − z_{i,y_i}`` (float32 ``[N]``), ``z = logits_fn(params, x)``.

    Example:
        >>> per_example_loss(lambda p, x: x, None, np.zeros((2, 4), np.float32), np.array([0, 3])).round(4)   # log 4
        array([1.3863, 1.3863], dtype=float32)
    """
    return _single(logits_fn, "loss", params, x, y, batch_size)


# --------------------------------------------------------------------------------------------------------
# K stacked models (vmap over the leading axis of every params leaf)
# --------------------------------------------------------------------------------------------------------
def predict_stacked(
    logits_fn: Callable, stacked_params: Any, x: Any, batch_size: int = DEFAULT_BATCH_SIZE
) -> np.ndarray:
    """Logits of K models at once: ``out[k, i] = logits_fn(stacked_params[k], x[i])``, shape ``[K, N, C]``.

    ``stacked_params`` has a leading model axis K on every leaf; the models are mapped with ``jax.vmap``.
    Memory grows as K·N·C; prefer :func:`correctness_stacked` / :func:`logit_confidence_stacked`, which
    reduce on the device, when only a per-example statistic is needed.

    Example:
        >>> ws = {"w": jnp.stack([jnp.eye(2), -jnp.eye(2)])}
        >>> predict_stacked(lambda p, x: x @ p["w"], ws, np.eye(2, dtype=np.float32)).shape
        (2, 2, 2)
    """
    return _stacked(logits_fn, "logits", stacked_params, x, None, batch_size)


def correctness_stacked(
    logits_fn: Callable, stacked_params: Any, x: Any, y: Any, batch_size: int = DEFAULT_BATCH_SIZE
) -> np.ndarray:
    """Correctness of K models: ``c[k, i] = [argmax_j logits_fn(stacked_params[k], x_i)_j == y_i]``, ``[K, N]``.

    Example:
        >>> ws = {"w": jnp.stack([jnp.eye(2), -jnp.eye(2)])}
        >>> correctness_stacked(lambda p, x: x @ p["w"], ws, np.eye(2, dtype=np.float32), np.array([0, 1]))
        array([[ True,  True],
               [False, False]])
    """
    return _stacked(logits_fn, "correct", stacked_params, x, y, batch_size)


def logit_confidence_stacked(
    logits_fn: Callable, stacked_params: Any, x: Any, y: Any, batch_size: int = DEFAULT_BATCH_SIZE
) -> np.ndarray:
    """LiRA's logit-scaled confidence of K models, ``[K, N]``.

    ``φ[k, i] = log(p_y / (1 − p_y)) = z_y − logsumexp_{j≠y} z_j`` with ``z = logits_fn(stacked_params[k], x_i)``
    (computed from the logits, so it stays finite where ``p_y`` rounds to 0 or 1).

    Example:
        >>> ws = {"w": jnp.stack([jnp.eye(2)])}
        >>> logit_confidence_stacked(lambda p, x: x @ p["w"], ws, np.eye(2, dtype=np.float32), np.array([0, 0]))
        array([[ 1., -1.]], dtype=float32)
    """
    return _stacked(logits_fn, "phi", stacked_params, x, y, batch_size)


# --------------------------------------------------------------------------------------------------------
# trade-off scores
# --------------------------------------------------------------------------------------------------------
def _get(d: Mapping, key: str, name: str) -> float:
    if not isinstance(d, Mapping):
        raise ValueError(f"{name} must be a dict of metrics, got {type(d).__name__}")
    if key not in d:
        raise ValueError(f"{name} lacks the key {key!r} (has {sorted(d)})")
    return _check_unit(d[key], f"{name}[{key!r}]")


def tow(acc: Mapping[str, float], ref: Mapping[str, float], *, signed: bool = False) -> float:
    """Tug-of-War score of a result ``acc`` against a reference (normally Retrain) ``ref``.

    Both dicts hold ``forget_acc`` (FA), ``retain_acc`` (RA), ``test_acc`` (TA) as fractions in [0, 1].

    * ``signed=False`` (RUM's definition, the default)::

          ToW = (1 − |FA − FA_ref|) · (1 − |RA − RA_ref|) · (1 − |TA − TA_ref|)  ∈ [0, 1], 1 = identical.

    * ``signed=True`` reproduces the sharp-unlearn reference code exactly (``main_forget.py``, with its
      percentages divided by 100)::

          ToW_signed = (1 − (FA − FA_ref)) · (1 − (RA_ref − RA)) · (1 − (TA_ref − TA))

      i.e. each difference is signed so that it is POSITIVE when the result is worse in the expected
      direction (forget accuracy above the reference, retain / test accuracy below it) and NEGATIVE when it
      is better; a better-than-reference term exceeds 1, so ToW_signed can exceed 1 (range [0, 8]).
      ``tow(a, r, signed=True) == tow(a, r)`` whenever FA ≥ FA_ref, RA ≤ RA_ref and TA ≤ TA_ref.

    Raises ValueError when a key is missing or a value lies outside [0, 1].

    Example:
        >>> ref = {"forget_acc": 0.90, "retain_acc": 1.0, "test_acc": 0.95}
        >>> res = {"forget_acc": 0.80, "retain_acc": 0.98, "test_acc": 0.93}
        >>> round(tow(res, ref), 6)                # (1 − .10)(1 − .02)(1 − .02)
        0.86436
        >>> round(tow(res, ref, signed=True), 6)   # (1 + .10)(1 − .02)(1 − .02)
        1.05644
    """
    fa, ra, ta = (_get(acc, k, "acc") for k in ACC_KEYS)
    fa_r, ra_r, ta_r = (_get(ref, k, "ref") for k in ACC_KEYS)
    if signed:
        return float((1.0 - (fa - fa_r)) * (1.0 - (ra_r - ra)) * (1.0 - (ta_r - ta)))
    return float((1.0 - abs(fa - fa_r)) * (1.0 - abs(ra - ra_r)) * (1.0 - abs(ta - ta_r)))


def tow_mia(acc: Mapping[str, float], ref: Mapping[str, float]) -> float:
    """ToW-MIA (RUM): ToW with the forget-accuracy term replaced by the MIA-efficacy term::

        ToW-MIA = (1 − |MIA − MIA_ref|) · (1 − |RA − RA_ref|) · (1 − |TA − TA_ref|)

    ``acc`` / ``ref`` need ``mia``, ``retain_acc`` and ``test_acc``, all in [0, 1].

    Example:
        >>> ref = {"mia": 0.20, "retain_acc": 1.0, "test_acc": 0.95}
        >>> round(tow_mia({"mia": 0.10, "retain_acc": 1.0, "test_acc": 0.95}, ref), 6)
        0.9
    """
    terms = 1.0
    for k in ("mia", "retain_acc", "test_acc"):
        terms *= 1.0 - abs(_get(acc, k, "acc") - _get(ref, k, "ref"))
    return float(terms)


def average_gap(acc: Mapping[str, float], ref: Mapping[str, float], keys: Sequence[str] | None = None) -> float:
    """Average gap (SalUn's "Avg. Gap"): mean absolute difference ``(1/|K|) Σ_{k∈K} |acc[k] − ref[k]|``.

    ``keys=None`` uses those of ``forget_acc, retain_acc, test_acc, mia`` present in BOTH dicts (SalUn's
    unlearning accuracy UA = 1 − FA has the same absolute gap as FA). Explicit ``keys`` must all be present.
    Values must be in [0, 1].

    Example:
        >>> round(average_gap({"forget_acc": .8, "retain_acc": 1.}, {"forget_acc": .9, "retain_acc": .9}), 6)
        0.1
    """
    if keys is None:
        if not isinstance(acc, Mapping) or not isinstance(ref, Mapping):
            raise ValueError("acc and ref must be dicts of metrics")
        keys = [k for k in (*ACC_KEYS, "mia") if k in acc and k in ref]
        if not keys:
            raise ValueError(f"acc and ref share none of the keys {(*ACC_KEYS, 'mia')}")
    else:
        keys = list(keys)
        if not keys:
            raise ValueError("keys is empty")
    gaps = [abs(_get(acc, k, "acc") - _get(ref, k, "ref")) for k in keys]
    return float(np.mean(gaps))


def speedup(seconds: float, retrain_seconds: float) -> float:
    """Run-time speed-up over retraining: ``retrain_seconds / seconds`` (> 1 means faster than Retrain).

    Example:
        >>> speedup(2.0, 100.0)
        50.0
    """
    for name, v in (("seconds", seconds), ("retrain_seconds", retrain_seconds)):
        if (
            isinstance(v, bool)
            or not isinstance(v, (Number, np.number))
            or not math.isfinite(float(v))
            or float(v) <= 0
        ):
            raise ValueError(f"{name} must be a positive finite number, got {v!r}")
    return float(retrain_seconds) / float(seconds)


# --------------------------------------------------------------------------------------------------------
# seeds
# --------------------------------------------------------------------------------------------------------
def _is_number(v: Any) -> bool:
    if isinstance(v, (bool, np.bool_)):
        return False
    if isinstance(v, (Number, np.number)):
        return True
    return isinstance(v, (np.ndarray, jax.Array)) and np.ndim(v) == 0 and np.issubdtype(np.asarray(v).dtype, np.number)


def mean_std(values: Iterable[float]) -> dict[str, float]:
    """Mean and SAMPLE standard deviation over seeds: ``{"mean": m, "std": s}``.

    ``m = (1/n) Σ v_i``; ``s = sqrt(Σ (v_i − m)² / (n − 1))`` (ddof = 1, the unbiased-variance convention
    of papers reporting "mean ± std over seeds") for n > 1, and ``s = 0`` for a single value.

    Example:
        >>> mean_std([0.5, 0.7])
        {'mean': 0.6, 'std': 0.14142135623730948}
    """
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"values must be a flat sequence of numbers, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("values is empty")
    std = float(np.std(arr, ddof=1)) if arr.size > 1 else 0.0
    return {"mean": float(np.mean(arr)), "std": std}


def aggregate_seeds(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Turn per-seed result dicts into one dict of ``{"mean", "std"}`` per numeric key (see :func:`mean_std`).

    * numeric values (int/float/numpy scalars, not bools) -> ``mean_std`` over the seeds that have the key;
    * nested dicts are aggregated recursively (so a whole ``results.json`` ``methods`` block works);
    * anything else (strings, bools, lists, None, a key holding mixed types) is kept from the first seed
      that has it.
    Key order follows the first dict, then keys first seen later.

    Example:
        >>> aggregate_seeds([{"tow": .9, "name": "ft"}, {"tow": .7, "name": "ft"}])["tow"]["mean"]
        0.8
    """
    if isinstance(results, Mapping) or not isinstance(results, Sequence):
        raise ValueError("results must be a list of per-seed dicts")
    if len(results) == 0:
        raise ValueError("results is empty")
    for i, r in enumerate(results):
        if not isinstance(r, Mapping):
            raise ValueError(f"results[{i}] must be a dict, got {type(r).__name__}")
    keys: list[str] = []
    for r in results:
        keys.extend(k for k in r if k not in keys)
    out: dict[str, Any] = {}
    for k in keys:
        vals = [r[k] for r in results if k in r]
        if all(_is_number(v) for v in vals):
            out[k] = mean_std([float(v) for v in vals])
        elif all(isinstance(v, Mapping) for v in vals):
            out[k] = aggregate_seeds(vals)
        else:
            out[k] = vals[0]
    return out
