"""Populations of models trained together: :func:`train_many` runs K models in one compiled program.

Each model takes the engine's one-phase step (:func:`jaxunlearn.engine.step.make_step` with the
cross-entropy loss); the K steps are batched with ``vmap`` (fills an accelerator) or unrolled one after
another in the same program (XLA:CPU runs them side by side on its cores), optionally split over the
devices of a mesh.

Example:
    >>> import jax, numpy as np
    >>> from jaxunlearn import models
    >>> from jaxunlearn.engine.sources import DeviceData
    >>> apply_fn, p, s = models.split_model(models.build("mlp", num_classes=2, input_shape=(3,)))
    >>> stack = lambda t: jax.tree.map(lambda a: np.stack([a, a]), t)
    >>> x = np.random.default_rng(0).normal(size=(20, 3)); y = (x[:, 0] > 0).astype(int)
    >>> ps, ss = train_many(apply_fn, stack(p), stack(s), DeviceData.from_numpy(x, y), np.stack([np.arange(10),
    ...                     np.arange(10, 20)]), epochs=1, batch_size=5, progress=False)
    >>> jax.tree.leaves(ps)[0].shape[0]
    2
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxunlearn import _validate, distributed
from jaxunlearn.engine.hooks import COMPILE_COUNTER, copy_tree
from jaxunlearn.engine.sources import ArraySource, DeviceData, epoch_indices
from jaxunlearn.engine.step import TrainState, make_step
from jaxunlearn.plan import PRETRAIN_DEFAULT, OptimConfig, StepInfo, as_optim_config, build_optimizer, supervised_loss

__all__ = ["train_many", "MODEL_MODES", "MAX_UNROLL_MODELS", "default_model_mode"]

PyTree = Any


def train_many(
    apply_fn: Callable,
    params: PyTree,
    model_state: PyTree,
    data: DeviceData,
    index_sets: np.ndarray,
    *,
    optimizer=PRETRAIN_DEFAULT,
    epochs: int,
    batch_size: int = 64,
    seed: int = 0,
    seeds=None,
    lr=None,
    rho=None,
    progress: bool = True,
    desc: str = "train x K",
    mesh: jax.sharding.Mesh | None = None,
    model_mode: str | None = None,
) -> tuple[PyTree, PyTree]:
    """Train K models at once: one compiled program per step for K parameter sets.

    ``params`` / ``model_state`` carry a leading axis K (e.g. from ``jax.vmap(init)(keys)``), and
    ``index_sets`` is ``[K, m]``: model k trains on examples ``index_sets[k]`` (equal sizes, e.g.
    random 70 % subsets for memorization scores or LiRA shadow models). Model k's batches are drawn
    from a generator seeded by ``(seed, k, epoch)``; with ``seeds`` (K ints) by ``(seeds[k], epoch)``
    instead, exactly the batches of ``train(..., train_idx=index_sets[k], seed=seeds[k])``, so row k
    then reproduces that separate run (up to float rounding of the vmapped program).
    ``lr`` / ``rho`` (K values, or one): per-model learning rate / SAM radius, traced inside the one
    compiled program (``rho`` needs ``optimizer.sam != "none"``), so row k equals
    ``train(..., optimizer=dataclasses.replace(optimizer, lr=lr[k], rho=rho[k]))``.
    ``mesh``: the K models are split over the mesh's ``data`` axis (K must be a multiple of its size):
    each device trains K / d whole models, with no communication between devices (e.g. the cores of a
    CPU host after :func:`jaxunlearn.distributed.cpu_devices`). The results equal the one-device run.
    ``model_mode``: ``"vmap"`` batches the K models into one vmapped step (fills an accelerator);
    ``"unroll"`` writes the K (per device: K / d) model steps one after another into the same program, each
    the plain single-model step, which XLA:CPU runs side by side on its cores (digits CNN, batch 64,
    2 cores: 1.6 ms per model step against 3.1 ms vmapped and 2.3 ms for one model alone,
    benchmarks/RESULTS.md). ``None`` picks ``"unroll"`` on CPU for up to ``MAX_UNROLL_MODELS`` models per
    device (longer programs compile slowly) and ``"vmap"`` otherwise. Both give the same models up to
    float rounding.
    Returns the stacked ``(params, model_state)``.

    Example:
        >>> from jaxunlearn import models
        >>> inits = [models.split_model(models.build("mlp", num_classes=2, input_shape=(3,), seed=k)) for k in range(4)]
        >>> apply_fn = inits[0][0]
        >>> stacked = [jax.tree.map(lambda *a: np.stack(a), *[m[i] for m in inits]) for i in (1, 2)]
        >>> x = np.random.default_rng(0).normal(size=(40, 3)); y = (x[:, 0] > 0).astype(int)
        >>> subsets = np.stack([np.random.default_rng(k).permutation(40)[:28] for k in range(4)])  # 70 % each
        >>> p, s = train_many(apply_fn, *stacked, DeviceData.from_numpy(x, y), subsets, epochs=2, progress=False)
        >>> jax.tree.leaves(p)[0].shape[0]
        4
    """
    optimizer = as_optim_config(optimizer)
    index_sets = np.asarray(index_sets)
    if index_sets.ndim != 2 or index_sets.shape[1] == 0:
        raise ValueError(
            f"index_sets must be [K, m] with m >= 1 (one row of indices per model), got {index_sets.shape}."
        )
    k_models, m = index_sets.shape
    if not np.issubdtype(index_sets.dtype, np.integer) or index_sets.min() < 0 or index_sets.max() >= len(data):
        raise ValueError(f"index_sets must hold integer indices in [0, {len(data)}) (the training set's size).")
    if seeds is not None:
        seeds = [int(s) for s in np.asarray(seeds).reshape(-1)]
        if len(seeds) != k_models:
            raise ValueError(f"seeds must hold one seed per model (K={k_models}), got {len(seeds)}.")
    lead = {np.shape(x)[0] for x in jax.tree.leaves(params)}
    if lead != {k_models}:
        raise ValueError(f"params must have a leading axis of size K={k_models} (one set per model), got {lead}.")
    steps = max(1, math.ceil(m / batch_size))
    total = steps * epochs
    hyper = {}
    for name, value in (("lr", lr), ("rho", rho)):
        if value is None:
            continue
        value = np.asarray(value, np.float32).reshape(-1)
        if value.size == 1:
            value = np.repeat(value, k_models)
        if value.size != k_models or not np.all(value > 0):
            raise ValueError(f"{name} must hold one positive value per model (K={k_models}), got {value.tolist()}.")
        hyper[name] = jnp.asarray(value)
    if hyper and optimizer.uses_base and "lr" in hyper:
        raise ValueError("an lr sweep needs an OptimConfig optimizer (a user's optax optimizer has its own rate).")
    if optimizer.static_total:
        raise ValueError("train_many needs an OptimConfig or an optax.GradientTransformation, not a factory.")
    if "rho" in hyper and optimizer.sam == "none":
        raise ValueError("a rho sweep needs a SAM optimizer: pass optimizer=OptimConfig(sam='sam' or 'asam').")
    if mesh is not None and k_models % distributed.data_size(mesh):
        raise ValueError(
            f"train_many with a mesh splits the K={k_models} models over its {distributed.data_size(mesh)} "
            "'data' devices: pass a multiple of that many models (or a smaller mesh)."
        )

    per_device = k_models // (1 if mesh is None else distributed.data_size(mesh))
    if model_mode is None:
        model_mode = default_model_mode(per_device)
    else:
        _validate.choice("model_mode", model_mode, MODEL_MODES)

    step = _many_step(apply_fn, optimizer, tuple(sorted(hyper)), model_mode, mesh if model_mode == "unroll" else None)
    params, model_state = copy_tree(params), copy_tree(model_state)
    if mesh is not None:  # model k (and everything of it) on one device; the data on every device
        params, model_state, hyper = jax.device_put((params, model_state, hyper), distributed.batch_sharding(mesh))
    opt_state = jax.vmap(lambda p, h: build_optimizer(_with_hyper(optimizer, h), total).init(p))(params, hyper)
    data_x, data_y = (data.x, data.y) if mesh is None else distributed.replicate((data.x, data.y), mesh)
    total_arr = np.int32(total) if mesh is None else distributed.replicate(jnp.int32(total), mesh)
    bar = tqdm(total=epochs * steps, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for epoch in range(epochs):
        per_model = [
            epoch_indices(
                np.random.default_rng([seed, k, epoch] if seeds is None else [seeds[k], epoch]),
                index_sets[k],
                steps,
                batch_size,
            )
            for k in range(k_models)
        ]
        idx = np.stack(per_model, axis=1)  # [steps, K, B]
        if mesh is None:
            idx = jnp.asarray(idx)
        else:  # model k's batches live on the device that trains model k
            spec = jax.sharding.PartitionSpec(None, distributed.data_axis(mesh))
            idx = jax.device_put(idx, jax.sharding.NamedSharding(mesh, spec))
        for s in range(steps):
            params, model_state, opt_state, _ = step(
                params, model_state, opt_state, data_x, data_y, idx[s], hyper, total_arr
            )
            bar.update(1)
    bar.close()
    return params, model_state


def _with_hyper(optimizer: OptimConfig, h: dict) -> OptimConfig:
    """The optimizer of one model of a sweep, with its (traced) ``lr`` / ``rho``."""
    return dataclasses.replace(optimizer, **h) if h else optimizer


MODEL_MODES = ("vmap", "unroll")
MAX_UNROLL_MODELS = 16


def default_model_mode(per_device: int) -> str:
    """``"unroll"`` on CPU for up to ``MAX_UNROLL_MODELS`` models per device, ``"vmap"`` otherwise and on
    accelerators (where one batched program fills the device).

    Example:
        >>> default_model_mode(MAX_UNROLL_MODELS + 1)
        'vmap'
    """
    return "unroll" if jax.default_backend() == "cpu" and per_device <= MAX_UNROLL_MODELS else "vmap"


@functools.lru_cache(maxsize=64)
def _many_step(apply_fn, optimizer: OptimConfig, hyper_keys: tuple[str, ...], mode: str = "vmap", mesh=None):
    """The step of :func:`train_many` over the stacked K models, compiled once per (model, optimizer, swept
    keys, mode, mesh); the schedule's length ``total`` is a run-time argument (shared by the K models).

    ``mode="vmap"``: ``vmap`` of the one-model step. ``mode="unroll"``: the one-model step written once per
    model (a Python loop at trace time), inside ``shard_map`` over ``mesh``'s data axis when given, so
    each device unrolls only its own models."""
    del hyper_keys  # part of the cache key: the swept hyperparameters change the traced program

    def one(p, s, o, x, y, ir, h, total):
        update = make_step(apply_fn, supervised_loss, _with_hyper(optimizer, h))
        batch = {"retain": ArraySource.gather({"x": x, "y": y}, ir)}
        state, loss = update(TrainState(p, s, (o,), jnp.zeros((), jnp.int32)), batch, {}, StepInfo(0, 1, total))
        return state.params, state.model_state, state.opt_states[0], loss

    def unrolled(p, s, o, x, y, ir, h, total):
        outs = []
        for k in range(ir.shape[0]):
            p_k, s_k, o_k, ir_k, h_k = jax.tree.map(lambda a, k=k: a[k], (p, s, o, ir, h))
            outs.append(one(p_k, s_k, o_k, x, y, ir_k, h_k, total))
        return jax.tree.map(lambda *a: jnp.stack(a), *outs)

    if mode == "vmap":
        body = jax.vmap(one, in_axes=(0, 0, 0, None, None, 0, 0, None))
    elif mesh is None:
        body = unrolled
    else:
        from jax.sharding import PartitionSpec

        k_spec, rep = PartitionSpec(distributed.data_axis(mesh)), PartitionSpec()
        in_specs = (k_spec, k_spec, k_spec, rep, rep, k_spec, k_spec, rep)
        body = jax.shard_map(unrolled, mesh=mesh, in_specs=in_specs, out_specs=k_spec, check_vma=False)

    def step(p, s, o, x, y, ir, h, total):
        COMPILE_COUNTER.count += 1
        return body(p, s, o, x, y, ir, h, total)

    return jax.jit(step, donate_argnums=(0, 1, 2))
