"""Run a compiled function over N examples in fixed-size chunks: map (one output row per example) or sum.

Every chunk has the same number of rows B, so one compiled program serves all of them:

    k = the data-axis size of ``mesh`` (1 without a mesh)
    B = min(max(k, ⌊batch_size / k⌋·k), ⌈N / k⌉·k)

Chunk ``c`` holds examples ``c·B .. c·B + B − 1``; rows past the end (only in the last chunk) repeat the
last example and carry weight 0. :func:`batched_map` trims them from the outputs and concatenates;
:func:`batched_sum` passes the weights to the function, which multiplies each example's term by its
weight, so padding adds exactly nothing. With ``N ≤ batch_size`` (and no mesh) the data goes through
whole, unpadded.

``data`` is a pytree of arrays sharing a leading example axis. NumPy leaves are sliced on the host and
travel to the device one chunk at a time (a dataset larger than device memory is fine); ``jax.Array``
leaves stay on the device (each chunk is gathered by one compiled program, whatever its offset).
With ``mesh``, each chunk is split over the mesh's data axis (``"data"`` unless ``axis`` says otherwise)
and ``batched_map`` gives every process all the outputs. Imports only jax, numpy and the package's input
checks.

Example:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> from jaxunlearn import batching
    >>> batching.chunk_size(5, 2), batching.chunk_size(5, 8), batching.chunk_size(5, 8, multiple=4)
    (2, 5, 8)
    >>> batching.batched_map(jax.jit(lambda x: 2 * x), np.arange(5.0), batch_size=2)
    array([0., 2., 4., 6., 8.], dtype=float32)
    >>> float(batching.batched_sum(jax.jit(lambda x, w: jnp.sum(w * x**2)), np.arange(5.0), batch_size=2))
    30.0
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxunlearn import _validate

__all__ = ["chunk_size", "batched_map", "batched_sum"]

PyTree = Any


def chunk_size(n: int, batch_size: int, multiple: int = 1) -> int:
    """Rows per chunk for ``n`` examples: ``B = min(max(k, ⌊batch_size / k⌋·k), ⌈n / k⌉·k)``, ``k = multiple``.

    ``B`` is a multiple of ``k`` (the data-axis size of a mesh), at most ``batch_size`` rounded down to one
    (but at least ``k``), and no larger than ``n`` rounded up to one.

    Example:
        >>> chunk_size(1000, 256), chunk_size(100, 256), chunk_size(100, 256, multiple=8)
        (256, 100, 104)
        >>> chunk_size(3, 2, multiple=4)       # never below the data-axis size
        4
    """
    n = _validate.positive_int("n", n)
    batch_size = _validate.positive_int("batch_size", batch_size)
    k = _validate.positive_int("multiple", multiple)
    return min(max(k, batch_size // k * k), math.ceil(n / k) * k)


def batched_map(
    fn: Callable[[PyTree], PyTree],
    data: PyTree,
    *,
    batch_size: int,
    out_axis: int = 0,
    mesh: jax.sharding.Mesh | None = None,
    axis: str | None = None,
) -> PyTree:
    """``concat_c fn(data[c·B : c·B + B])`` over the chunks of ``data``, padded rows dropped, as numpy.

    ``fn(chunk) -> out`` (ideally jitted: every call has the same shapes, so it compiles once) gets a
    chunk with ``data``'s structure and returns an array, or a pytree of arrays, with the chunk's rows
    on ``out_axis`` (e.g. ``[K, B]`` for K stacked models: ``out_axis=1``). The result has ``N`` rows on
    that axis; row ``i`` is ``fn``'s output for example ``i``. Chunk size ``B``: see :func:`chunk_size`.
    Runs on the host (the outputs come back as numpy arrays chunk by chunk), so not under ``jax.jit``.

    Args:
      fn: function of one chunk.
      data: pytree of arrays (numpy or jax) sharing a leading example axis of size N >= 1.
      batch_size: rows per call (>= 1); rounded down to a multiple of the data-axis size with ``mesh``.
      out_axis: the axis of ``fn``'s outputs that holds the rows.
      mesh: split each chunk over this mesh's data axis (its devices share the chunk).
      axis: the data axis of ``mesh`` (default ``"data"``, or the mesh's first axis).
    Returns:
      numpy array (or pytree of them) with N rows on ``out_axis``.

    Example:
        >>> import jax, jax.numpy as jnp, numpy as np
        >>> w = np.array([[1.0], [2.0]], np.float32)
        >>> linear = jax.jit(lambda xy: xy[0] @ w + xy[1][:, None])
        >>> x, y = np.ones((5, 2), np.float32), np.arange(5.0)
        >>> batched_map(linear, (x, y), batch_size=2)[:, 0]
        array([3., 4., 5., 6., 7.], dtype=float32)
        >>> two_models = jax.jit(lambda x: jnp.stack([x.sum(-1), -x.sum(-1)]))     # rows on axis 1: [2, B]
        >>> batched_map(two_models, x, batch_size=4, out_axis=1)
        array([[ 2.,  2.,  2.,  2.,  2.],
               [-2., -2., -2., -2., -2.]], dtype=float32)
    """
    _check_fn(fn)
    n = _num_examples(data)
    out_axis = _check_int("out_axis", out_axis)
    outs = []
    for chunk, _, valid in _chunks(data, n, batch_size, mesh, axis):
        out = fn(chunk)
        if mesh is not None and jax.process_count() > 1:  # every process gets all the outputs
            from jax.experimental import multihost_utils

            out = multihost_utils.process_allgather(out, tiled=True)
        outs.append(jax.tree.map(lambda o, v=valid: _trim(np.asarray(o), v, out_axis), out))
    if len(outs) == 1:
        return outs[0]
    return jax.tree.map(lambda *os_: np.concatenate(os_, axis=out_axis), *outs)


def batched_sum(
    fn: Callable[..., PyTree],
    data: PyTree,
    *,
    batch_size: int,
    carry: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    axis: str | None = None,
) -> PyTree:
    """``Σ_c fn(data[c·B : c·B + B], w_c)`` over the chunks of ``data``, where ``w_c[j] = 1`` for a real
    example and ``0`` for a padded row.

    ``fn(chunk, weights) -> pytree`` must weight each example's term by ``weights`` (float32 ``[B]``), e.g.
    ``jax.grad(lambda p: jnp.sum(weights * per_example_loss(p, chunk)))``; the result is then exactly
    ``Σ_i term_i`` over the N examples. The chunk results are added by one compiled tree addition.
    With ``carry=True`` the function adds them itself, inside its own program:
    ``fn(chunk, weights, total) -> total + Σ_j weights_j term_j``, with ``total=None`` for the first chunk.
    Works under ``jax.jit`` (the loop unrolls; data leaves may be traced). Chunk size ``B``: see
    :func:`chunk_size`; ``mesh`` / ``axis`` as in :func:`batched_map`.

    Returns:
      the pytree ``fn`` returns, summed over all chunks (jax arrays).

    Example:
        >>> import jax, jax.numpy as jnp, numpy as np
        >>> x = np.array([1.0, 2.0, 3.0], np.float32)
        >>> def grad_sum(xs, w):                            # Σ_i ∇_a (a·x_i)² at a = 1: Σ_i 2·x_i²
        ...     return jax.grad(lambda a: jnp.sum(w * (a * xs) ** 2))(1.0)
        >>> float(batched_sum(jax.jit(grad_sum), x, batch_size=2))
        28.0
        >>> add = jax.jit(lambda xs, w, t: jnp.sum(w * xs) + (0.0 if t is None else t))
        >>> float(batched_sum(add, x, batch_size=2, carry=True))
        6.0
    """
    _check_fn(fn)
    n = _num_examples(data)
    if not isinstance(carry, bool):
        raise ValueError(f"carry must be True or False, got {carry!r}")
    total = None
    for chunk, weights, _ in _chunks(data, n, batch_size, mesh, axis):
        if carry:
            total = fn(chunk, weights, total)
        else:
            part = fn(chunk, weights)
            total = part if total is None else _tree_add(total, part)
    return total


# --------------------------------------------------------------------------------------------------------
# the one chunk loop
# --------------------------------------------------------------------------------------------------------
def _chunks(data, n, batch_size, mesh, axis) -> Iterator[tuple[PyTree, np.ndarray, int]]:
    """Yield ``(chunk, weights, valid)`` for every chunk: B rows each, the first ``valid`` of them real."""
    sharding = None
    k = 1
    if mesh is not None:
        axis = _data_axis(mesh, axis)
        k = int(mesh.shape[axis])
        sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis))
    bs = chunk_size(n, batch_size, k)
    data = jax.tree.map(lambda a: a if isinstance(a, np.ndarray | jax.Array) else np.asarray(a), data)
    for start in range(0, n, bs):
        valid = min(bs, n - start)
        weights = np.zeros(bs, np.float32)
        weights[:valid] = 1.0
        chunk = data if (start == 0 and bs == n) else jax.tree.map(lambda a, s=start: _rows(a, s, bs), data)
        if sharding is not None:
            chunk, weights = _place((chunk, weights), sharding)
        yield chunk, weights, valid


def _rows(a, start: int, size: int):
    """Rows ``start .. start + size − 1`` of ``a``; rows past the end repeat its last row."""
    n = a.shape[0]
    if isinstance(a, jax.Array):  # device arrays and tracers: one gather program for every offset
        return _gather_rows(a, np.int32(start), size)
    stop = min(start + size, n)
    part = a[start:stop]
    if stop - start < size:
        part = np.concatenate([part, np.repeat(a[n - 1 : n], size - (stop - start), axis=0)], axis=0)
    return part


@functools.partial(jax.jit, static_argnames=("size",))
def _gather_rows(a, start, size):
    return jnp.take(a, jnp.minimum(start + jnp.arange(size), a.shape[0] - 1), axis=0)


@jax.jit
def _tree_add(a, b):
    return jax.tree.map(jnp.add, a, b)


def _trim(o: np.ndarray, valid: int, axis: int) -> np.ndarray:
    if o.shape[axis] == valid:
        return o
    return o[(slice(None),) * (axis % o.ndim) + (slice(0, valid),)]


def _place(tree, sharding):
    """Put every leaf on ``sharding``: host values are split by position (each process holds them all)."""

    def put(x):
        if jax.process_count() > 1 and not sharding.is_fully_addressable:
            if not isinstance(x, jax.Array) or x.is_fully_addressable:
                x = np.asarray(x)
                return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
        return jax.device_put(x, sharding)

    return jax.tree.map(put, tree)


def _data_axis(mesh, axis):
    if axis is None:
        return "data" if "data" in mesh.axis_names else mesh.axis_names[0]
    if axis not in mesh.axis_names:
        raise ValueError(f"axis {axis!r} is not an axis of the mesh (its axes: {', '.join(mesh.axis_names)})")
    return axis


# --------------------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------------------
def _check_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _check_fn(fn) -> None:
    if not callable(fn):
        raise ValueError(f"fn must be callable, got {type(fn).__name__}")


def _num_examples(data) -> int:
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError("data must hold at least one array with a leading example axis")
    shapes = [np.shape(a) for a in leaves]
    if any(len(s) == 0 for s in shapes) or len({s[0] for s in shapes}) != 1:
        raise ValueError(f"data's arrays must share a leading example axis, got shapes {shapes}")
    n = shapes[0][0]
    if n == 0:
        raise ValueError("data holds no examples (its leading axis has size 0)")
    return int(n)
