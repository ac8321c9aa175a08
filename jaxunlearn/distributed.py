"""Meshes, shardings and multi-host setup: data-parallel (and FSDP-style) runs on TPU pods and GPUs.

One mesh for the whole run (as big_vision does): a 1-D ``("data",)`` mesh for data parallelism, or a
2-D ``("data", "model")`` mesh whose ``model`` axis shards the parameters FSDP-style. Batches are
sharded along their first axis over ``data``; parameters and optimizer states are replicated (or
sharded over ``model`` by :func:`fsdp_shardings`), and ``jax.jit``'s SPMD partitioner inserts the
collectives. Imports only jax/numpy.

Multi-host: call :func:`maybe_initialize` first thing (it runs ``jax.distributed.initialize()`` when
``JAX_COORDINATOR_ADDRESS``/``JAX_NUM_PROCESSES``/``JAX_PROCESS_ID`` are set, or on a TPU pod / SLURM
cluster when ``JAXUNLEARN_DISTRIBUTED=1``); every process then runs the same program, only
:func:`is_main_process` writes reports, and Orbax checkpoints are written cooperatively by all processes.

Example:
    >>> import jax.numpy as jnp
    >>> maybe_initialize()                   # False: no multi-host environment here
    False
    >>> mesh = make_mesh()                   # all devices on the "data" axis
    >>> x = shard_batch(jnp.zeros((2 * data_size(mesh), 3)), mesh)
    >>> tuple(x.sharding.spec)
    ('data',)
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "cpu_devices",
    "cpu_devices_settable",
    "usable_cores",
    "make_mesh",
    "data_axis",
    "data_size",
    "batch_sharding",
    "replicated",
    "shard_data",
    "shard_batch",
    "replicate",
    "fsdp_shardings",
    "maybe_initialize",
    "is_main_process",
    "main_process_flag",
    "process_local_indices",
    "DATA",
    "MODEL",
]

PyTree = Any
DATA = "data"
MODEL = "model"
_INITIALIZED = False


def make_mesh(num_devices: int | None = None, axis: str | tuple[str, ...] = DATA, *, model: int = 1) -> Mesh:
    """A mesh over the first ``num_devices`` devices (all by default, across every process).

    ``axis="data"`` (default) gives a 1-D data-parallel mesh; ``axis=("data", "model")`` with
    ``model=M`` a 2-D ``(num_devices // M, M)`` mesh for FSDP-style parameter sharding.

    Example:
        >>> make_mesh(1).axis_names                             # on 8 devices make_mesh() is Mesh('data': 8)
        ('data',)
        >>> dict(make_mesh(1, ("data", "model"), model=1).shape)  # make_mesh(8, ..., model=2): data 4, model 2
        {'data': 1, 'model': 1}
    """
    devices = jax.devices()
    n = len(devices) if num_devices is None else int(num_devices)
    if not 1 <= n <= len(devices):
        raise ValueError(f"num_devices must be in [1, {len(devices)}] (the devices JAX sees), got {num_devices}.")
    axes = (axis,) if isinstance(axis, str) else tuple(axis)
    if len(axes) == 1:
        shape = (n,)
    elif len(axes) == 2:
        if model < 1 or n % model:
            raise ValueError(f"the model axis size {model} must divide the number of devices {n}.")
        shape = (n // model, model)
    else:
        raise ValueError(f"axis must name one or two mesh axes, got {axes}.")
    # Auto axes: XLA's SPMD partitioner propagates shardings (jax.make_mesh defaults to Explicit ones)
    types = (jax.sharding.AxisType.Auto,) * len(axes)
    if n == len(devices):
        return jax.make_mesh(shape, axes, axis_types=types, devices=devices)
    return Mesh(np.asarray(devices[:n]).reshape(shape), axes, axis_types=types)


def data_axis(mesh: Mesh) -> str:
    """The mesh axis batches are split over: ``"data"`` when the mesh has it, else its first axis.

    Example:
        >>> data_axis(make_mesh(1))
        'data'
    """
    return DATA if DATA in mesh.axis_names else mesh.axis_names[0]


def data_size(mesh: Mesh) -> int:
    """Number of devices along the mesh's ``data`` axis (the data-parallel degree).

    Example:
        >>> data_size(make_mesh(1))
        1
    """
    return int(mesh.shape[data_axis(mesh)])


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a batch: first axis over ``data``, the rest replicated.

    Example:
        >>> tuple(batch_sharding(make_mesh(1)).spec)
        ('data',)
    """
    return NamedSharding(mesh, PartitionSpec(data_axis(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated sharding on ``mesh``.

    Example:
        >>> tuple(replicated(make_mesh(1)).spec)
        ()
    """
    return NamedSharding(mesh, PartitionSpec())


def _put(x, sharding: NamedSharding):
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    local = not isinstance(x, jax.Array) or x.is_fully_addressable
    if jax.process_count() > 1 and local and not sharding.is_fully_addressable:
        # every process holds the same value: build the global array from this process's slices
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
    return jax.device_put(x, sharding)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Place every array leaf of ``tree`` on all devices of ``mesh`` (replicated).

    Example:
        >>> tuple(replicate({"w": np.ones(3)}, make_mesh(1))["w"].sharding.spec)
        ()
    """
    s = replicated(mesh)
    return jax.tree.map(lambda x: _put(x, s) if hasattr(x, "shape") else x, tree)


def shard_batch(tree: PyTree, mesh: Mesh) -> PyTree:
    """Shard every leaf's first axis over ``data`` (it must divide evenly by the data-axis size).

    Example:
        >>> tuple(shard_batch({"x": np.ones((4, 2))}, make_mesh(1))["x"].sharding.spec)
        ('data',)
    """
    s = batch_sharding(mesh)
    return jax.tree.map(lambda x: _put(x, s), tree)


def shard_data(data, mesh: Mesh, *, process_local: bool = False):
    """A copy of ``data`` (an ``engine.ArraySource`` / ``DeviceData``, or any object with ``x``/``y``) sharded
    over ``data``.

    The example axis is split over the mesh's ``data`` axis when it divides evenly; otherwise the
    arrays are replicated (batches gathered from them are still sharded inside the step).
    With ``process_local=True`` each process passes only its own examples (e.g. the rows
    :func:`process_local_indices` picks) and the global array is assembled with
    ``jax.make_array_from_process_local_data``.

    Example:
        >>> from jaxunlearn import engine
        >>> dev = shard_data(engine.DeviceData.from_numpy(np.zeros((4, 2)), np.arange(4)), make_mesh(1))
        >>> tuple(dev.x.sharding.spec)
        ('data',)
    """
    if process_local:
        s = batch_sharding(mesh)
        place = lambda a: jax.make_array_from_process_local_data(s, np.asarray(a))  # noqa: E731
    else:
        n = int(np.shape(_first(data))[0])
        s = batch_sharding(mesh) if n % data_size(mesh) == 0 else replicated(mesh)
        place = lambda a: _put(a, s)  # noqa: E731
    if hasattr(data, "map"):
        return data.map(place)
    return type(data)(place(data.x), place(data.y))


def _first(data):
    return next(iter(data.arrays.values())) if hasattr(data, "arrays") else data.y


def fsdp_shardings(params: PyTree, mesh: Mesh, *, min_size: int = 2**14, axis: str = MODEL) -> PyTree:
    """FSDP-style shardings: each leaf with ``>= min_size`` entries is split along its largest axis
    that ``mesh.shape[axis]`` divides; smaller or indivisible leaves are replicated.

    Use as ``jax.device_put(params, fsdp_shardings(params, mesh))``; without a ``model`` axis on the
    mesh everything is replicated.

    Example:
        >>> mesh = make_mesh(1, ("data", "model"), model=1)
        >>> tuple(fsdp_shardings({"w": np.zeros((256, 128))}, mesh)["w"].spec)  # model=2: ('model', None)
        ()
    """
    k = int(mesh.shape[axis]) if axis in mesh.axis_names else 1

    def one(x):
        shape = np.shape(x)
        if k == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
            return replicated(mesh)
        for d in sorted(range(len(shape)), key=lambda i: -shape[i]):
            if shape[d] % k == 0:
                spec = [None] * len(shape)
                spec[d] = axis
                return NamedSharding(mesh, PartitionSpec(*spec))
        return replicated(mesh)

    return jax.tree.map(one, params)


def usable_cores() -> int:
    """Number of CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` elsewhere).

    Example:
        >>> usable_cores() >= 1
        True
    """
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _forced_host_devices() -> int | None:
    """The N of ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` when set (it takes precedence)."""
    for flag in os.environ.get("XLA_FLAGS", "").split():
        if flag.startswith("--xla_force_host_platform_device_count="):
            try:
                return int(flag.split("=", 1)[1])
            except ValueError:
                return None
    return None


def _backends_initialized() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # pragma: no cover - older/newer private layout
        return False


def cpu_devices(num: int | None = None) -> int:
    """Expose the host's CPU cores as ``num`` XLA devices (default: one per usable core).

    XLA:CPU runs one program on one device with limited intra-op parallelism (measured here: a small-CNN
    gradient kept 1.4 of 2 cores busy on jax 0.10). With one device per core, a batch sharded over a
    ``("data",)`` mesh (:func:`make_mesh`, the ``mesh=`` argument of ``engine.run``) runs its halves on
    both cores at once: the small-CNN gradient at batch 128 went from 60 ms to 28 ms on 2 cores.
    The arithmetic is unchanged up to float summation order (gradients are all-reduced over the mesh).

    Must run before JAX executes its first operation (it sets ``jax_num_cpu_devices``, which JAX reads
    when it creates the CPU backend). Calling it again, or after the backend exists with the same
    number of CPU devices, is a no-op. Without ``num``, a device count already requested through
    ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` is kept. Has no effect on which accelerator
    JAX uses: on a GPU/TPU host the CPU devices are not the default ones. Returns the number of CPU devices.

    Example (in a fresh process, first thing; here the backend already runs, so the call only confirms
    its device count):
        >>> import jax
        >>> n = cpu_devices(len(jax.devices("cpu")))     # in a fresh process: cpu_devices() = one per core
        >>> make_mesh(n).axis_names                       # ("data",) over the cores
        ('data',)
    """
    want = (_forced_host_devices() or usable_cores()) if num is None else int(num)
    if want < 1:
        raise ValueError(f"cpu_devices(num) needs num >= 1, got {num!r}.")
    if _backends_initialized():
        have = len(jax.devices("cpu"))
        if have == want:
            return have
        raise RuntimeError(
            f"cpu_devices({want}): JAX already created its CPU backend with {have} device(s). Call "
            "jaxunlearn.distributed.cpu_devices() right after `import jax`, before any JAX computation "
            f"(or set XLA_FLAGS=--xla_force_host_platform_device_count={want} before starting Python)."
        )
    jax.config.update("jax_num_cpu_devices", want)
    return want


def cpu_devices_settable() -> bool:
    """Whether :func:`cpu_devices` may still choose the CPU device count in this process: JAX has not
    created its backends yet and the environment does not ask for a multi-process run (where the
    coordinator decides the devices).

    Example:
        >>> from jaxunlearn import distributed
        >>> if distributed.cpu_devices_settable():
        ...     distributed.cpu_devices()
    """
    return not _env_requests_distributed() and not _backends_initialized()


def _env_requests_distributed() -> bool:
    if os.environ.get("JAXUNLEARN_DISTRIBUTED", "").lower() in ("1", "true", "yes"):
        return True
    return bool(os.environ.get("JAX_COORDINATOR_ADDRESS")) and int(os.environ.get("JAX_NUM_PROCESSES", "1")) > 1


def maybe_initialize() -> bool:
    """Call ``jax.distributed.initialize()`` once when the environment asks for a multi-process run.

    Explicit: ``JAX_COORDINATOR_ADDRESS=host:port JAX_NUM_PROCESSES=N JAX_PROCESS_ID=i`` (and optionally
    ``JAX_LOCAL_DEVICE_IDS``). Auto-detected (TPU pods, SLURM, Open MPI, ...): ``JAXUNLEARN_DISTRIBUTED=1``.
    Returns True when this call (or an earlier one) initialized the distributed runtime. Must run
    before anything touches the devices.

    Example:
        >>> maybe_initialize()   # no JAX_COORDINATOR_ADDRESS / JAXUNLEARN_DISTRIBUTED here: a single process
        False
    """
    global _INITIALIZED
    if _INITIALIZED:
        return True
    if not _env_requests_distributed():
        return False
    kwargs = {}
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        kwargs["coordinator_address"] = os.environ["JAX_COORDINATOR_ADDRESS"]
    if os.environ.get("JAX_NUM_PROCESSES"):
        kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
    if os.environ.get("JAX_PROCESS_ID"):
        kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
    jax.distributed.initialize(**kwargs)
    _INITIALIZED = True
    return True


def is_main_process() -> bool:
    """True on process 0 (the one that writes reports, figures and logs).

    Example:
        >>> is_main_process()   # a single process is the main one
        True
    """
    return jax.process_index() == 0


def main_process_flag(flag: bool) -> bool:
    """The main process's ``flag`` on every process (one broadcast; no communication in a single process).

    For host-side decisions that all processes must take together, e.g. whether to write a (collective)
    checkpoint now when that depends on a clock.

    Example:
        >>> main_process_flag(42.0 >= 30.0)   # process 0's answer, on every process
        True
    """
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(bool(flag))))


def process_local_indices(idx, *, process_index: int | None = None, process_count: int | None = None) -> np.ndarray:
    """This process's contiguous share of ``idx`` (equal sizes: the remainder ``len % count`` is dropped).

    Example:
        >>> process_local_indices(np.arange(10), process_index=1, process_count=2)
        array([5, 6, 7, 8, 9])
    """
    idx = np.asarray(idx)
    i = jax.process_index() if process_index is None else int(process_index)
    c = jax.process_count() if process_count is None else int(process_count)
    per = idx.shape[0] // c
    return idx[i * per : (i + 1) * per]
