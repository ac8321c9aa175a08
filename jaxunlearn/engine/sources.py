"""Batch sources: where the engine's batches come from. Batches are pytrees; the engine only picks indices.

Every epoch the loop draws ``steps × B`` example indices (:func:`epoch_indices`) and a source turns the
indices of one step into a batch pytree:

* :class:`ArraySource` (and its classification form :class:`DeviceData`) holds arrays on the device and
  gathers ``{k: a[idx] for k, a in arrays} ∪ {"index": idx}`` INSIDE the compiled step: no host work per
  step (the default, and the fastest for data that fit on the device).
* :class:`StreamingSource` reads only the step's records from any random-access source (a Grain
  ``MapDataset`` or ``RandomAccessDataSource``, a TFDS ``data_source``, a list), stacks them on the host and
  hands the batch to the step, so data larger than device memory train; the next batch is read while
  the device computes. Across processes each process reads only the rows its devices hold.

The same indices through either source give the same batch, hence the same numbers.

Example:
    >>> import numpy as np
    >>> src = ArraySource({"x": np.arange(12.0).reshape(6, 2), "y": np.arange(6)})
    >>> b = ArraySource.gather(src.arrays, np.array([4, 1]))
    >>> b["y"].tolist(), b["index"].tolist()
    ([4, 1], [4, 1])
    >>> stream = StreamingSource([{"x": np.full(2, i, np.float32), "y": i} for i in range(6)])
    >>> stream.load(np.array([4, 1]))["x"].tolist()
    [[4.0, 4.0], [1.0, 1.0]]
"""

from __future__ import annotations

import concurrent.futures
import math
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxunlearn import distributed

__all__ = ["ArraySource", "DeviceData", "StreamingSource", "epoch_indices", "as_source"]

PyTree = Any


def epoch_indices(rng: np.random.Generator, pool: np.ndarray, steps: int, batch: int) -> np.ndarray:
    """``[steps, batch]`` int32 indices: shuffled passes over ``pool`` (``rng.permutation`` each), wrapping
    around into a new shuffled pass when ``steps · batch > |pool|``.

    Example:
        >>> idx = epoch_indices(np.random.default_rng(0), np.arange(5), steps=3, batch=2)
        >>> idx.shape, sorted(idx.reshape(-1)[:5].tolist())
        ((3, 2), [0, 1, 2, 3, 4])
    """
    need = steps * batch
    reps = math.ceil(need / max(1, len(pool)))
    idx = np.concatenate([rng.permutation(pool) for _ in range(reps)])[:need]
    return idx.reshape(steps, batch).astype(np.int32)


class ArraySource:
    """Arrays ``{name: [N, ...]}`` gathered by index inside the compiled step.

    ``gather(arrays, idx) = {name: take(a, idx, axis=0)} ∪ {"index": idx}``; the engine calls it under
    ``jit`` so each step's batch never leaves the device.

    Example:
        >>> import numpy as np
        >>> src = ArraySource({"tokens": np.zeros((8, 5), np.int32)})
        >>> len(src), ArraySource.gather(src.arrays, np.array([0, 3]))["tokens"].shape
        (8, (2, 5))
    """

    streaming = False

    def __init__(self, arrays: dict[str, Any]):
        if not isinstance(arrays, dict) or not arrays:
            raise ValueError("ArraySource needs a non-empty dict {name: array [N, ...]} of training arrays.")
        if "index" in arrays:
            raise ValueError("ArraySource: the name 'index' is reserved (each batch carries its example indices).")
        sizes = {k: int(np.shape(v)[0]) if np.ndim(v) else 0 for k, v in arrays.items()}
        if len(set(sizes.values())) != 1 or 0 in sizes.values():
            raise ValueError(f"every array of a source needs the same number N >= 1 of examples, got {sizes}.")
        self.arrays = {k: v if isinstance(v, jax.Array) else jnp.asarray(v) for k, v in arrays.items()}

    def __len__(self) -> int:
        return int(next(iter(self.arrays.values())).shape[0])

    @staticmethod
    def gather(arrays: dict, idx) -> dict:
        """The batch of examples ``idx`` (jit-able)."""
        out = {k: jnp.take(v, idx, axis=0) for k, v in arrays.items()}
        out["index"] = idx
        return out

    def load(self, idx: np.ndarray) -> dict:
        """The same batch, read on the host (numpy)."""
        idx = np.asarray(idx)
        out = {k: np.asarray(v)[idx] for k, v in self.arrays.items()}
        out["index"] = idx.astype(np.int32)
        return out

    def map(self, fn: Callable[[Any], Any]) -> ArraySource:
        """A source of the same kind with ``fn`` applied to every array (e.g. to place it on a mesh)."""
        new = object.__new__(type(self))
        new.arrays = {k: fn(v) for k, v in self.arrays.items()}
        return new


class DeviceData(ArraySource):
    """Classification arrays on the device: ``x`` [N, ...] (float32) and ``y`` [N] (int32 labels).

    Example:
        >>> import numpy as np
        >>> d = DeviceData.from_numpy(np.zeros((4, 3)), np.array([0, 1, 0, 1]))
        >>> len(d), d.x.dtype, sorted(ArraySource.gather(d.arrays, np.array([1]))) == ["index", "x", "y"]
        (4, dtype('float32'), True)
    """

    def __init__(self, x, y):
        super().__init__({"x": x, "y": y})

    @property
    def x(self) -> jax.Array:
        return self.arrays["x"]

    @property
    def y(self) -> jax.Array:
        return self.arrays["y"]

    @classmethod
    def from_numpy(cls, x, y, sharding=None) -> DeviceData:
        """Convert to float32 inputs and int32 labels and place them (on ``sharding`` when given)."""
        x = np.asarray(x, np.float32)
        y = np.asarray(y, np.int32)
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y must have the same number of examples, got {x.shape[0]} and {y.shape[0]}.")
        put = (lambda a: jax.device_put(a, sharding)) if sharding is not None else jnp.asarray
        return cls(put(x), put(y))


class StreamingSource:
    """Records read from a random-access source only for the current batch.

    ``source``: anything with ``len()`` and ``source[i]`` (a Grain ``MapDataset`` or
    ``RandomAccessDataSource``, a TFDS ``data_source``, a list); ``transform(record) -> dict of arrays``
    (default: the record itself, which must then be a dict). ``load(idx)`` stacks the transformed
    records of ``idx`` into ``{name: [B, ...]} ∪ {"index": idx}``.

    Example:
        >>> import numpy as np, grain
        >>> ds = grain.MapDataset.source([{"image": np.full((2, 2), i, np.uint8), "label": i % 3} for i in range(10)])
        >>> src = StreamingSource(ds, lambda r: {"x": r["image"] / 255.0, "y": r["label"]})
        >>> b = src.load(np.array([7, 2]))
        >>> len(src), b["x"].shape, b["y"].tolist(), b["index"].tolist()
        (10, (2, 2, 2), [1, 2], [7, 2])
    """

    streaming = True

    def __init__(self, source, transform: Callable[[Any], dict] | None = None):
        if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
            raise ValueError(
                "StreamingSource needs a random-access source with len() and source[i] (a Grain MapDataset, a TFDS "
                f"data_source, a list), got {type(source).__name__}."
            )
        if len(source) == 0:
            raise ValueError("StreamingSource: the source is empty.")
        self.source = source
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)

    def load(self, idx: np.ndarray) -> dict:
        """Read, transform and stack the records ``idx`` (host numpy arrays)."""
        records = [self.source[int(i)] for i in np.asarray(idx)]
        if self.transform is not None:
            records = [self.transform(r) for r in records]
        if not isinstance(records[0], dict):
            raise ValueError(
                "StreamingSource: records must be dicts of arrays; pass transform=record -> {name: array}."
            )
        out = {k: np.stack([np.asarray(r[k]) for r in records]) for k in records[0]}
        out["index"] = np.asarray(idx, np.int32)
        return out

    def batches(self, idx_r: np.ndarray, idx_f: np.ndarray, mesh=None) -> Iterator[dict]:
        """``{"retain", "forget"}`` batches for the rows of ``idx_r`` / ``idx_f`` ([steps, B] each), placed on
        the device(s); the next step's records are read while the current one computes."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            nxt = pool.submit(self._pair, idx_r[0], idx_f[0], mesh)
            for s in range(idx_r.shape[0]):
                batch = nxt.result()
                if s + 1 < idx_r.shape[0]:
                    nxt = pool.submit(self._pair, idx_r[s + 1], idx_f[s + 1], mesh)
                yield batch

    def _pair(self, ir, if_, mesh):
        return {"retain": self.put(ir, mesh), "forget": self.put(if_, mesh)}

    def put(self, idx: np.ndarray, mesh=None) -> dict:
        """The batch of ``idx`` on the device; on a mesh its first axis is split over ``data`` and, across
        processes, each process reads only its own contiguous share of the rows."""
        idx = np.asarray(idx)
        if mesh is None:
            return jax.tree.map(jnp.asarray, self.load(idx))
        k = distributed.data_size(mesh)
        if idx.shape[0] % k:  # an indivisible batch is replicated, as the gather source's constraint leaves it
            return distributed.replicate(self.load(idx), mesh)
        if jax.process_count() == 1:
            return distributed.shard_batch(self.load(idx), mesh)
        local = self.load(distributed.process_local_indices(idx))
        s = distributed.batch_sharding(mesh)
        return jax.tree.map(lambda a: jax.make_array_from_process_local_data(s, a, (idx.shape[0], *a.shape[1:])), local)


def as_source(data) -> ArraySource | StreamingSource:
    """``data`` as a batch source: a source as is; a dict of arrays as an :class:`ArraySource`.

    Example:
        >>> import numpy as np
        >>> type(as_source({"x": np.zeros((3, 1))})).__name__
        'ArraySource'
    """
    if isinstance(data, (ArraySource, StreamingSource)):
        return data
    if isinstance(data, dict):
        return ArraySource(data)
    raise ValueError(
        "data must be an engine.DeviceData, ArraySource, StreamingSource or a dict {name: array [N, ...]}, "
        f"got {type(data).__name__}."
    )
