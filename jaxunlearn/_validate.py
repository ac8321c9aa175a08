"""Small input checks shared by the public functions (internal).

The checks only look at concrete Python values, so they never break tracing: a traced ``rho`` (for
instance under ``jax.vmap`` over ρ) is accepted as it is. Every failure is a ``ValueError`` of one line.
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Iterable

import jax
import numpy as np


def is_concrete_number(x) -> bool:
    """True for Python/NumPy scalars and concrete 0-d arrays (not tracers).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> is_concrete_number(0.5), is_concrete_number(jnp.float32(2)), is_concrete_number(jnp.ones(2))
        (True, True, False)
        >>> jax.jit(lambda r: jnp.float32(is_concrete_number(r)))(1.0)    # traced: not concrete
        Array(0., dtype=float32)
    """
    if isinstance(x, numbers.Number):
        return True
    if isinstance(x, jax.core.Tracer):
        return False
    return isinstance(x, np.ndarray | jax.Array) and np.ndim(x) == 0


def positive(name: str, value, *, allow_zero: bool = False, hint: str = "") -> None:
    """Raise ``ValueError`` when a concrete ``value`` is not > 0 (or >= 0); traced values pass.

    Example:
        >>> positive("rho", 0.05)
        >>> positive("rho", 0.0, hint="e.g. rho=0.05.")
        Traceback (most recent call last):
        ...
        ValueError: rho must be a finite number > 0, got 0.0. e.g. rho=0.05.
    """
    if not is_concrete_number(value):
        return
    v = float(value)
    ok = v >= 0 if allow_zero else v > 0
    if not ok or not np.isfinite(v):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}.{(' ' + hint) if hint else ''}")


def fraction(name: str, value) -> float:
    """Return ``value`` as float after checking it lies in (0, 1].

    Example:
        >>> fraction("fraction", 0.25)
        0.25
        >>> fraction("fraction", 30)
        Traceback (most recent call last):
        ...
        ValueError: fraction must be in (0, 1] (a fraction of all parameters), got 30.
    """
    if isinstance(value, jax.core.Tracer):
        raise ValueError(f"{name} must be a concrete Python number in (0, 1], got a traced value.")
    if not is_concrete_number(value):
        raise TypeError(f"{name} must be a number in (0, 1], got {type(value).__name__} {value!r}.")
    v = float(value)
    if not (0.0 < v <= 1.0):
        raise ValueError(f"{name} must be in (0, 1] (a fraction of all parameters), got {value!r}.")
    return v


def positive_int(name: str, value) -> int:
    """Return ``value`` as int after checking it is an integer >= 1 (``True`` is not an integer here).

    Example:
        >>> positive_int("chunk_size", 8)
        8
        >>> positive_int("chunk_size", 2.0)
        Traceback (most recent call last):
        ...
        ValueError: chunk_size must be an integer >= 1, got 2.0.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    return int(value)


def choice(name: str, value, options: Iterable[str]) -> str:
    """Check ``value`` is one of ``options``; suggest the closest on failure.

    Example:
        >>> choice("sign", "max", ["min", "max"])
        'max'
        >>> choice("sign", "maxx", ["min", "max"])
        Traceback (most recent call last):
        ...
        ValueError: sign must be one of ['min', 'max'], got 'maxx'. Did you mean 'max'?
    """
    options = list(options)
    if value in options:
        return value
    close = difflib.get_close_matches(str(value), options, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"{name} must be one of {options}, got {value!r}.{hint}")


def sam_settings(rho, eta, sign: str, signs: Iterable[str]) -> None:
    """Check the settings every SAM-family function takes: ``rho > 0``, ``eta >= 0``, ``sign`` in ``signs``.

    Example:
        >>> sam_settings(0.05, 0.01, "min", ("min", "max"))
        >>> sam_settings(-1.0, 0.0, "min", ("min", "max"))
        Traceback (most recent call last):
        ...
        ValueError: rho must be a finite number > 0, got -1.0. SAM's neighbourhood radius ρ must be positive, ...
    """
    positive("rho", rho, hint="SAM's neighbourhood radius ρ must be positive, e.g. rho=0.05.")
    positive("eta", eta, allow_zero=True)
    choice("sign", sign, signs)


def same_structure(name_a: str, a, name_b: str, b) -> None:
    """Raise ``ValueError`` unless pytrees ``a`` and ``b`` have the same structure and leaf shapes.

    Example:
        >>> import numpy as np
        >>> same_structure("params", {"w": np.ones(2)}, "v", {"w": np.zeros(2)})
        >>> same_structure("params", {"w": np.ones(2)}, "v", {"w": np.zeros(3)})
        Traceback (most recent call last):
        ...
        ValueError: params and v must have leaves of the same shapes; got (2,) vs (3,).
    """
    ta, tb = jax.tree.structure(a), jax.tree.structure(b)
    if ta != tb:
        raise ValueError(f"{name_a} and {name_b} must be pytrees of the same structure; got {ta} and {tb}.")
    for la, lb in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if np.shape(la) != np.shape(lb):
            raise ValueError(
                f"{name_a} and {name_b} must have leaves of the same shapes; got {np.shape(la)} vs {np.shape(lb)}."
            )


def batch_size(value) -> int:
    """Return a batch size as int after checking it is an integer >= 1.

    Example:
        >>> batch_size(256)
        256
        >>> batch_size(0)
        Traceback (most recent call last):
        ...
        ValueError: batch_size must be a positive integer, got 0
    """
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
        raise ValueError(f"batch_size must be a positive integer, got {value!r}")
    return int(value)


def examples(x, name: str = "x"):
    """Return ``x`` (as an array) after checking it has a non-empty leading example axis.

    Example:
        >>> examples([[1.0, 2.0]]).shape
        (1, 2)
        >>> examples(np.zeros((0, 3)))
        Traceback (most recent call last):
        ...
        ValueError: x is empty (shape (0, 3))
    """
    if not hasattr(x, "shape"):
        x = np.asarray(x)
    if x.ndim < 1:
        raise ValueError(f"{name} must have a leading example axis, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    return x


def class_labels(y, n: int, name: str = "y", x_name: str = "x") -> np.ndarray:
    """Return ``n`` integer class labels as int32 ``[n]``; integral floats are accepted.

    Example:
        >>> class_labels([0.0, 2.0], 2)
        array([0, 2], dtype=int32)
        >>> class_labels([0, 1, 1], 2)
        Traceback (most recent call last):
        ...
        ValueError: y has 3 labels but x has 2 examples
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of integer labels, got shape {y.shape}")
    if y.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if y.shape[0] != n:
        raise ValueError(f"{name} has {y.shape[0]} labels but {x_name} has {n} examples")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise ValueError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    if np.any(y < 0):
        raise ValueError(f"{name} holds negative labels")
    return y.astype(np.int32)


def logits(value, name: str = "logits") -> np.ndarray:
    """Return finite logits ``[N, C]`` (N >= 1, C >= 2) as a numpy array.

    Example:
        >>> logits([[0.5, -0.5]]).shape
        (1, 2)
        >>> logits([[0.5]])
        Traceback (most recent call last):
        ...
        ValueError: logits needs at least 2 classes, got shape (1, 1)
    """
    value = np.asarray(value)
    if value.ndim != 2:
        raise ValueError(f"{name} must have shape [N, C], got {value.shape}")
    if value.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if value.shape[1] < 2:
        raise ValueError(f"{name} needs at least 2 classes, got shape {value.shape}")
    if not np.all(np.isfinite(value)):
        raise ValueError(f"{name} contains non-finite values")
    return value


def num_models(stacked_params, name: str = "stacked_params") -> int:
    """The number K of models stacked on the leading axis of every leaf (the same K on all leaves).

    Example:
        >>> num_models({"w": np.zeros((3, 4, 2)), "b": np.zeros((3, 2))})
        3
        >>> num_models({"w": np.zeros((3, 4)), "b": np.zeros((2,))})
        Traceback (most recent call last):
        ...
        ValueError: every leaf of stacked_params needs the same leading model axis K, got leading sizes {2, 3}
    """
    leaves = jax.tree_util.tree_leaves(stacked_params)
    if not leaves:
        raise ValueError(f"{name} has no array leaves")
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) >= 1 else None for leaf in leaves}
    if None in sizes or len(sizes) != 1:
        raise ValueError(f"every leaf of {name} needs the same leading model axis K, got leading sizes {sizes}")
    k = sizes.pop()
    if k < 1:
        raise ValueError(f"{name} holds zero models")
    return int(k)


def real_number(name: str, value, *, minimum: float | None = None, strict: bool = False, hint: str = "") -> None:
    """Check a hyperparameter is a real number (finite, ``>= minimum``, or ``> minimum`` when ``strict``).

    Python and NumPy numbers and concrete 0-d arrays are checked; traced values (under ``jit`` / ``vmap``)
    pass unchecked. A string, ``None``, a bool, an array of more than one number or another type is a
    ``TypeError``; a non-finite or out-of-range value a ``ValueError``. Both are one line naming ``name``.

    Example:
        >>> real_number("lamb", 0.5, minimum=0.0)
        >>> real_number("rho", "0.05", minimum=0.0, strict=True, hint="e.g. rho=0.05.")
        Traceback (most recent call last):
        ...
        TypeError: rho must be a real number, got '0.05' (str). e.g. rho=0.05.
        >>> real_number("lamb", -5, minimum=0.0)
        Traceback (most recent call last):
        ...
        ValueError: lamb must be a finite number >= 0.0, got -5.
    """
    tail = f" {hint}" if hint else ""
    if isinstance(value, jax.core.Tracer):
        return
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real | np.ndarray | jax.Array):
        raise TypeError(f"{name} must be a real number, got {_short(value)} ({type(value).__name__}).{tail}")
    arr = np.asarray(value)
    if arr.ndim != 0:
        raise TypeError(f"{name} must be a scalar number, got an array of shape {arr.shape}.{tail}")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"{name} must be a real number, got dtype {arr.dtype}.{tail}")
    v = float(arr)
    ok = np.isfinite(v)
    if ok and minimum is not None:
        ok = v > minimum if strict else v >= minimum
    if not ok:
        bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum}"
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}.{tail}")


def sam_hyperparams(rho, eta, lamb, sign: str, signs: Iterable[str]) -> None:
    """Check every SAM-family setting: ``rho > 0``, ``eta >= 0``, ``lamb >= 0`` (finite real numbers; traced
    values pass) and ``sign`` in ``signs``.

    Example:
        >>> sam_hyperparams(0.05, 0.0, 1.0, "min", ("min", "max"))
        >>> sam_hyperparams(0.05, 0.0, float("nan"), "min", ("min", "max"))
        Traceback (most recent call last):
        ...
        ValueError: lamb must be a finite number >= 0.0, got nan. ...
    """
    real_number(
        "rho", rho, minimum=0.0, strict=True, hint="SAM's neighbourhood radius ρ must be positive, e.g. rho=0.05."
    )
    real_number("eta", eta, minimum=0.0, hint="ASAM's offset η is >= 0, e.g. eta=0.01.")
    real_number(
        "lamb", lamb, minimum=0.0, hint="λ weighs g' − g; for sharpness maximization use sign='max', not λ < 0."
    )
    choice("sign", sign, signs)


def loss_output(out, has_aux: bool, where: str):
    """Split what a loss function returned into ``(loss, aux)`` after checking it: a scalar when
    ``has_aux=False`` (``aux`` is then None), a pair ``(scalar, aux)`` when ``has_aux=True``.

    Example:
        >>> loss_output(np.float32(1.5), False, "f")
        (np.float32(1.5), None)
        >>> loss_output((np.float32(1.5), {"acc": 1}), False, "curvature.hvp")
        Traceback (most recent call last):
        ...
        TypeError: curvature.hvp: loss_fn returned a tuple of 2; if it returns (loss, aux), pass has_aux=True.
    """
    if has_aux:
        if not (isinstance(out, tuple | list) and len(out) == 2):
            raise TypeError(f"{where}: with has_aux=True loss_fn must return a pair (loss, aux), got {_kind(out)}.")
        loss, aux = out
    else:
        if isinstance(out, tuple | list):
            raise TypeError(
                f"{where}: loss_fn returned a {type(out).__name__} of {len(out)}; "
                "if it returns (loss, aux), pass has_aux=True."
            )
        loss, aux = out, None
    shape = getattr(loss, "shape", None)
    if shape is None and not isinstance(loss, numbers.Real):
        raise TypeError(f"{where}: loss_fn must return a scalar array, got {_kind(loss)}.")
    if shape is not None and tuple(shape) != ():
        raise ValueError(
            f"{where}: loss_fn must return a scalar, got shape {tuple(shape)}; reduce it (e.g. jnp.mean) "
            "or, to return extra outputs, return (loss, aux) and pass has_aux=True."
        )
    return loss, aux


def _short(x, limit: int = 40) -> str:
    text = repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(x) -> str:
    shape = getattr(x, "shape", None)
    if shape is not None:
        return f"an array of shape {tuple(shape)}"
    if isinstance(x, tuple | list):
        return f"a {type(x).__name__} of {len(x)}"
    return f"a {type(x).__name__}"


def is_prng_key(x) -> bool:
    """True for a JAX PRNG key: a typed key (``jax.random.key``) or a raw ``uint32`` key (``jax.random.PRNGKey``).
    Works on traced keys too (it only looks at dtype and shape).

    Example:
        >>> import jax
        >>> is_prng_key(jax.random.key(0)), is_prng_key(jax.random.PRNGKey(0)), is_prng_key(np.ones(2))
        (True, True, False)
    """
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        return False
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return True
    return dtype == np.uint32 and len(np.shape(x)) >= 1 and np.shape(x)[-1] in (2, 4)


def in_axes(value, num_args: int, where: str) -> tuple:
    """Normalize ``in_axes`` (``0`` or one ``0`` / ``None`` per positional argument, as in ``jax.vmap``) to a tuple.

    Example:
        >>> in_axes(0, 2, "f"), in_axes((0, None), 2, "f")
        ((0, 0), (0, None))
        >>> in_axes((0,), 2, "f")
        Traceback (most recent call last):
        ...
        ValueError: f: in_axes must be 0 or a tuple of 0 / None, one per argument (2 arguments), got (0,).
    """
    if isinstance(value, int) and not isinstance(value, bool) and value == 0:
        return (0,) * num_args
    if (
        isinstance(value, tuple | list)
        and len(value) == num_args
        and all(a is None or (isinstance(a, int) and not isinstance(a, bool) and a == 0) for a in value)
    ):
        return tuple(value)
    raise ValueError(
        f"{where}: in_axes must be 0 or a tuple of 0 / None, one per argument ({num_args} arguments), got {value!r}."
    )


def leading_axis(tree, what: str) -> int:
    """The size of the leading axis shared by every leaf of ``tree`` (>= 1).

    Example:
        >>> leading_axis({"x": np.zeros((4, 3)), "y": np.zeros(4)}, "micro-batches")
        4
        >>> leading_axis({"x": np.zeros((4, 3)), "y": np.zeros(2)}, "micro-batches")
        Traceback (most recent call last):
        ...
        ValueError: micro-batches: every array needs the same non-empty leading axis; got shapes [(4, 3), (2,)].
    """
    leaves = jax.tree.leaves(tree)
    if not leaves:
        raise ValueError(f"{what}: no arrays to split along a leading axis.")
    shapes = [tuple(np.shape(x)) for x in leaves]
    n = shapes[0][0] if shapes[0] else 0
    if n == 0 or any(not s or s[0] != n for s in shapes):
        raise ValueError(f"{what}: every array needs the same non-empty leading axis; got shapes {shapes}.")
    return int(n)


def non_negative_int(name: str, value) -> int:
    """Return ``value`` as int after checking it is an integer >= 0 (``True`` is not an integer here).

    Example:
        >>> non_negative_int("seed", 0)
        0
        >>> non_negative_int("seed", -1)
        Traceback (most recent call last):
        ...
        ValueError: seed must be an integer >= 0, got -1.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}.")
    return int(value)


def unit_interval(name: str, value, *, open_right: bool = False, hint: str = "") -> None:
    """Raise ``ValueError`` unless a concrete ``value`` lies in ``[0, 1]`` (``[0, 1)`` with ``open_right``);
    traced values pass.

    Example:
        >>> unit_interval("average_start", 0.8)
        >>> unit_interval("average_decay", 1.0, open_right=True)
        Traceback (most recent call last):
        ...
        ValueError: average_decay must be a number in [0, 1), got 1.0.
    """
    if not is_concrete_number(value):
        if isinstance(value, jax.core.Tracer):
            return
        raise ValueError(f"{name} must be a number in [0, 1{')' if open_right else ']'}, got {value!r}.")
    v = float(value)
    ok = np.isfinite(v) and 0.0 <= v and (v < 1.0 if open_right else v <= 1.0)
    if not ok:
        tail = f" {hint}" if hint else ""
        raise ValueError(f"{name} must be a number in [0, 1{')' if open_right else ']'}, got {value!r}.{tail}")
