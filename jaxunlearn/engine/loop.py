"""The one epoch loop shared by pretraining, Retrain and every unlearning method: :func:`run` executes a
:class:`~jaxunlearn.plan.Plan` with the steps of :mod:`.step`, batches from a source (:mod:`.sources`) and
the hooks of :mod:`.hooks`.

Per epoch: ``steps = ⌈|pool| / B⌉`` with ``pool`` the retain or the forget indices (``plan.epoch_over``);
each step pairs one retain batch with one (cycled) forget batch, and every active phase takes one
optimizer step on the shared parameters, each phase with its own optimizer state ("two optimizers over
one model" for Sharp MinMax). Indices come from ``numpy`` generators seeded by ``(seed, epoch)``, so a
resumed run sees exactly the batches of an uninterrupted one. Steps are compiled once per (model, loss,
optimizer, ...) and reused across epochs, runs and methods; the state is donated.

Example:
    >>> import numpy as np, jax
    >>> from jaxunlearn import models
    >>> from jaxunlearn.plan import OptimConfig, Phase, Plan, supervised_loss
    >>> from jaxunlearn.engine.sources import DeviceData
    >>> apply_fn, params, state = models.split_model(models.build("mlp", num_classes=2, input_shape=(4,)))
    >>> x = np.random.default_rng(0).normal(size=(32, 4)); y = (x[:, 0] > 0).astype(int)
    >>> plan = Plan((Phase("train", supervised_loss),), optimizer=OptimConfig(lr=0.05), epochs=3, batch_size=8)
    >>> res = run(plan, apply_fn, params, state, DeviceData.from_numpy(x, y), retain_idx=np.arange(32), progress=False)
    >>> len(res.history), res.diverged is None
    (3, True)
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxunlearn import _validate, distributed
from jaxunlearn.engine.hooks import (
    COMPILE_COUNTER,
    Checkpointing,
    DivergenceGuard,
    EpochCallback,
    Progress,
    Timer,
    copy_tree,
)
from jaxunlearn.engine.sources import ArraySource, as_source, epoch_indices
from jaxunlearn.engine.step import SAM_MODES, TrainState, make_step
from jaxunlearn.plan import PRETRAIN_DEFAULT, Phase, Plan, StepInfo, build_optimizer, supervised_loss
from jaxunlearn.transforms import LookSAMState

__all__ = ["RunResult", "run", "train", "PARAM_SHARDINGS"]

PyTree = Any
PARAM_SHARDINGS = ("replicated", "fsdp")


@dataclasses.dataclass
class RunResult:
    """Output of :func:`run`: final parameters/state, per-epoch history, timing and divergence report.

    ``seconds`` is the wall time of the run; ``compile_seconds`` the part of it JAX spent tracing,
    lowering and compiling (0 when every program was already compiled; loading from the persistent
    compilation cache counts too), so ``seconds - compile_seconds`` approximates the cost of the same run
    once compiled (compilation can overlap computation already dispatched).

    Example:
        >>> RunResult(params={}, model_state={}, history=[], seconds=1.0).diverged is None
        True
    """

    params: PyTree
    model_state: PyTree
    history: list[dict]
    seconds: float
    diverged: dict | None = None
    resumed_from: int | None = None
    info: dict = dataclasses.field(default_factory=dict)
    compile_seconds: float = 0.0


def run(
    plan: Plan,
    apply_fn: Callable,
    params: PyTree,
    model_state: PyTree,
    data,
    *,
    retain_idx: np.ndarray,
    forget_idx: np.ndarray | None = None,
    seed: int = 0,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    checkpoint_every: int | None = 1,
    checkpoint_seconds: float | None = None,
    progress: bool = True,
    desc: str | None = None,
    on_epoch_end: Callable[[int, PyTree, PyTree], None] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    sam_mode: str = "global",
    param_sharding: str = "replicated",
) -> RunResult:
    """Execute ``plan`` starting from ``params`` / ``model_state``; the inputs are not modified.

    ``data``: a batch source (:class:`~jaxunlearn.engine.sources.DeviceData`, ``ArraySource``,
    ``StreamingSource``) or a dict of arrays; ``retain_idx`` / ``forget_idx`` index its examples.
    Hooks (:mod:`jaxunlearn.engine.hooks`):

    * divergence guard: a non-finite loss, parameter or output during an epoch stops the run, restores the
      parameters of the last finite epoch end and reports ``diverged = {"epoch", "reason"}``;
    * ``on_epoch_end(epoch, params, model_state)`` after each finite epoch (``epoch`` from 1), with copies
      that stay valid after the run; an exception it raises stops the run;
    * checkpoints (``checkpoint_dir``): saved at the last epoch, every ``checkpoint_every`` epochs and/or
      ``checkpoint_seconds`` after the last save (``None`` turns a rule off); ``resume=True`` restores the
      newest and continues after it. Multi-host: every process calls ``run`` (shared file system);
    * a tqdm progress bar (main process only) and the run's wall/compile seconds.

    Data parallelism (``mesh``, e.g. :func:`jaxunlearn.distributed.make_mesh`): the data are sharded over
    the mesh's ``data`` axis, the state and ``hp`` replicated, and each batch split over the devices; the
    result equals the one-device run up to float rounding. SAM perturbs with the global batch gradient
    (``sam_mode="global"``) or each device with its own shard's (``"per_device"``, m-sharpness; batch sizes
    must divide by the number of devices). ``param_sharding="fsdp"`` splits large parameter and
    optimizer-state leaves over the mesh's ``model`` axis (:func:`jaxunlearn.distributed.fsdp_shardings`).

    Example:
        >>> # see the module docstring for a runnable example
        >>> sorted(PARAM_SHARDINGS)
        ['fsdp', 'replicated']
    """
    src = as_source(data)
    r_pool, f_pool, steps = _check(plan, len(src), retain_idx, forget_idx, mesh, sam_mode, param_sharding)
    total = steps * plan.epochs
    ckpt = Checkpointing(checkpoint_dir, every=checkpoint_every, seconds=checkpoint_seconds)
    state, src, hp, fns, masks, put = _prepare(plan, apply_fn, params, model_state, src, total, mesh, sam_mode,
                                               param_sharding)  # fmt: skip
    start, restored = ckpt.restore(_tree(state, 0)) if resume else (0, None)
    if restored is not None:
        state = state._replace(params=restored["params"], model_state=restored["model_state"],
                               opt_states=tuple(restored["opt_states"]))  # fmt: skip
        for f in fns:
            if isinstance(f, HostLookSAM):
                f.sync(state)
    guard, callback, timer = DivergenceGuard(apply_fn), EpochCallback(on_epoch_end), Timer()
    guard.keep(state.params, state.model_state)
    bar = Progress(plan.epochs * steps, initial=start * steps, desc=desc or plan.name, enabled=progress)
    history, diverged, ok0 = [], None, put(jnp.array(True))
    try:
        for epoch in range(start, plan.epochs):
            active = [i for i, ph in enumerate(plan.phases) if ph.is_active(epoch)]
            rng = np.random.default_rng([seed, epoch])
            idx_r = epoch_indices(rng, r_pool, steps, plan.batch_size)
            idx_f = epoch_indices(rng, f_pool, steps, min(plan.batch_size, f_pool.size))
            info = put(StepInfo.at(epoch=epoch, epochs=plan.epochs, total_steps=total))
            ok, losses = ok0, {plan.phases[i].name: [] for i in active}
            for batch in _batches(src, idx_r, idx_f, mesh, put):
                for i in active:
                    state, ok, loss = fns[i](state, ok, hp, info, masks[i], batch)
                    losses[plan.phases[i].name].append(loss)
                bar.step()
            record = {"epoch": epoch + 1, **{f"loss/{k}": _mean(v) for k, v in losses.items()}}
            if not guard.epoch_ok(ok, state.params, state.model_state, _probe(src, idx_r[0], mesh)):
                diverged = {"epoch": epoch + 1, "reason": "non-finite loss or parameters"}
                state = state._replace(params=guard.last_good[0], model_state=guard.last_good[1])
                history.append({**record, "diverged": True})
                break
            history.append(record)
            bar.epoch_end(record)
            guard.keep(state.params, state.model_state)
            callback(epoch + 1, *guard.last_good)
            ckpt.maybe_save(epoch + 1, plan.epochs, lambda e=epoch + 1, st=state: _tree(st, e))
    finally:
        bar.close()
        ckpt.close()
    if diverged is None:  # weight averaging: the run ends at the average its optimizer kept
        state = state._replace(params=plan.final_params(state.params, state.opt_states))
    jax.block_until_ready(state.params)
    return RunResult(state.params, state.model_state, history, timer.seconds, diverged,
                     start if restored is not None else None, compile_seconds=timer.compile_seconds)  # fmt: skip


def _mean(losses: list) -> float:
    return float(jnp.mean(jnp.stack(losses))) if losses else float("nan")


def _tree(state: TrainState, epoch: int) -> dict:
    """The checkpointed pytree of a run's state after ``epoch``."""
    return {"params": state.params, "model_state": state.model_state, "opt_states": list(state.opt_states),
            "epoch": epoch}  # fmt: skip


def _batches(src, idx_r: np.ndarray, idx_f: np.ndarray, mesh, put):
    """Per step, the arguments the compiled step reads its batch from: ``(arrays, retain idx, forget idx)``
    for an in-device source (gathered inside the step), or the loaded ``{"retain", "forget"}`` batch."""
    if src.streaming:
        for batch in src.batches(idx_r, idx_f, mesh):
            yield (batch,)
        return
    ir, if_ = put((jnp.asarray(idx_r), jnp.asarray(idx_f)))
    for s in range(idx_r.shape[0]):
        yield (src.arrays, ir[s], if_[s])


def _probe(src, idx: np.ndarray, mesh) -> dict:
    """The divergence guard's probe batch: the epoch's first retain batch."""
    if src.streaming:
        return src.put(idx, mesh)
    return ArraySource.gather(src.arrays, jnp.asarray(idx) if mesh is None else distributed.replicate(idx, mesh))


def _check(plan, n, retain_idx, forget_idx, mesh, sam_mode, param_sharding):
    """Validate a run's inputs; return the retain and forget pools and the steps per epoch."""
    if not isinstance(plan, Plan):
        raise ValueError(f"run needs a jaxunlearn.plan.Plan, got {type(plan).__name__}.")
    retain_idx = check_indices("retain_idx", retain_idx, n, allow_empty=plan.epoch_over == "forget")
    forget_idx = check_indices("forget_idx", forget_idx if forget_idx is not None else [], n, allow_empty=True)
    uses = {u for ph in plan.phases for u in ph.uses} | {plan.epoch_over}
    if "forget" in uses and forget_idx.size == 0:
        raise ValueError(f"{plan.name}: the forget set is empty; choose a forget set with at least one example.")
    if "retain" in uses and retain_idx.size == 0:
        raise ValueError(f"{plan.name}: the retain set is empty; unlearning everything leaves nothing to keep.")
    if retain_idx.size and forget_idx.size and np.intersect1d(retain_idx, forget_idx).size:
        raise ValueError("retain_idx and forget_idx overlap; an example cannot be both retained and forgotten.")
    _validate.choice("sam_mode", sam_mode, SAM_MODES)
    _validate.choice("param_sharding", param_sharding, PARAM_SHARDINGS)
    if param_sharding == "fsdp" and (mesh is None or distributed.MODEL not in mesh.axis_names):
        raise ValueError("param_sharding='fsdp' needs a mesh with a 'model' axis, e.g. "
                         "distributed.make_mesh(8, ('data', 'model'), model=2).")  # fmt: skip
    if param_sharding == "fsdp" and sam_mode == "per_device":
        raise ValueError("sam_mode='per_device' needs replicated parameters; use param_sharding='replicated'.")
    pool = retain_idx if plan.epoch_over == "retain" else forget_idx
    if "retain" in uses and plan.batch_size > retain_idx.size:
        raise ValueError(
            f"{plan.name}: batch_size {plan.batch_size} is larger than the {retain_idx.size} retained examples "
            f"(each batch would repeat them); use batch_size <= {retain_idx.size}."
        )
    steps = max(1, math.ceil(pool.size / plan.batch_size))
    r_pool = retain_idx if retain_idx.size else forget_idx
    f_pool = forget_idx if forget_idx.size else retain_idx
    if mesh is not None and sam_mode == "per_device":
        k, f_bs = distributed.data_size(mesh), min(plan.batch_size, f_pool.size)
        if plan.batch_size % k or f_bs % k:
            raise ValueError(
                f"sam_mode='per_device' needs batch sizes divisible by the {k} devices of the data axis; got "
                f"retain batch {plan.batch_size} and forget batch {f_bs}. Change batch_size (or the forget set size)."
            )
    return r_pool, f_pool, steps


def check_indices(name: str, idx, n: int, *, allow_empty: bool) -> np.ndarray:
    """``idx`` as int64 after checking it is a 1-D array of distinct integers in ``[0, n)``.

    Example:
        >>> check_indices("retain_idx", [3, 1], 5, allow_empty=False).tolist()
        [3, 1]
    """
    idx = np.asarray(idx)
    if idx.size == 0:
        if not allow_empty:
            raise ValueError(f"{name} is empty; it must select at least one training example.")
        return idx.astype(np.int64).reshape(0)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D array of integer indices, got shape {idx.shape} dtype {idx.dtype}.")
    if idx.min() < 0 or idx.max() >= n:
        raise ValueError(f"{name} has indices outside [0, {n}) (the training set has {n} examples).")
    if np.unique(idx).size != idx.size:
        raise ValueError(f"{name} contains duplicate indices.")
    return idx.astype(np.int64)


def _prepare(plan, apply_fn, params, model_state, src, total, mesh, sam_mode, param_sharding):
    """Place everything (on the mesh when given), initialise one optimizer state per phase and fetch each
    phase's compiled step. Returns ``(state, src, hp, step_fns, masks, put)``; ``put`` places small
    per-epoch inputs (replicated on the mesh)."""
    params, model_state, hp = copy_tree(params), copy_tree(model_state), plan.hp
    cfgs = [ph.optimizer or plan.optimizer for ph in plan.phases]
    put = (lambda t: t) if mesh is None else (lambda t: distributed.replicate(t, mesh))
    fsdp = param_sharding == "fsdp"

    def place(tree):
        if mesh is None:
            return tree
        return jax.device_put(tree, distributed.fsdp_shardings(tree, mesh)) if fsdp else put(tree)

    if mesh is not None and not src.streaming:
        src = distributed.shard_data(src, mesh)
    model_state, hp, params = put(model_state), put(hp), place(params)
    masks = [hp[ph.mask_key] if ph.mask_key else None for ph in plan.phases]
    opt_states = [
        build_optimizer(c, total, sign=ph.sign, mask=m, mask_reading=plan.mask_reading).init(params)
        for c, ph, m in zip(cfgs, plan.phases, masks)
    ]
    state = TrainState(params, model_state, tuple(place(opt_states)), put(jnp.zeros((), jnp.int32)))
    fns = []
    for i, (ph, c, m) in enumerate(zip(plan.phases, cfgs, masks)):
        args = (apply_fn, ph.loss, c, ph.sign, plan.mask_reading, m is not None, mesh, sam_mode,
                total if c.static_total else None, i, src.streaming)  # fmt: skip
        if c.sam == "looksam" and c.k > 1:  # the branch chosen on the host: no lax.cond in the program
            fns.append(HostLookSAM(compiled_step(*args, sam_step=True), compiled_step(*args, sam_step=False), c.k, i))
        else:
            fns.append(compiled_step(*args))
    return state, src, hp, fns, masks, put


class HostLookSAM:
    """A LookSAM phase's step that picks the full-SAM or the reuse program on the host: SAM on the phase's
    updates ``t`` with ``t mod k = 0``, as LookSAM's own counter would (its state still counts), without
    ``lax.cond`` (on XLA:CPU a convolution gradient inside a ``cond`` branch runs several times slower).
    :meth:`sync` reads the counter from a (restored) state once.

    Example:
        >>> calls = []
        >>> f = HostLookSAM(lambda *a: calls.append("sam"), lambda *a: calls.append("reuse"), k=3, phase=0)
        >>> for _ in range(4):
        ...     _ = f(None, None, None, None, None, None)
        >>> calls
        ['sam', 'reuse', 'reuse', 'sam']
    """

    def __init__(self, sam_fn: Callable, reuse_fn: Callable, k: int, phase: int):
        self.sam_fn, self.reuse_fn, self.k, self.phase, self.count = sam_fn, reuse_fn, int(k), int(phase), 0

    def sync(self, state: TrainState) -> None:
        """Take LookSAM's update counter from ``state.opt_states[phase]`` (after a checkpoint restore)."""
        found = [
            s
            for s in jax.tree.leaves(state.opt_states[self.phase], is_leaf=lambda x: isinstance(x, LookSAMState))
            if isinstance(s, LookSAMState)
        ]
        if found:
            self.count = int(np.asarray(found[0].count).reshape(-1)[0])

    def __call__(self, state, ok, hp, info, mask, batch_args):
        fn = self.sam_fn if self.count % self.k == 0 else self.reuse_fn
        self.count += 1
        return fn(state, ok, hp, info, mask, batch_args)


@functools.lru_cache(maxsize=256)
def _jitted(apply_fn, loss, cfg, sign, mask_reading, masked, mesh, sam_mode, total, streaming, sam_step=None):
    update = make_step(apply_fn, loss, cfg, sign=sign, masked=masked, mask_reading=mask_reading,
                       total_steps=total, mesh=mesh, sam_mode=sam_mode, sam_step=sam_step)  # fmt: skip

    def step(params, model_state, opt_state, count, ok, hp, info, mask, *batch_args):
        COMPILE_COUNTER.count += 1  # runs only while tracing
        batch = batch_args[0] if streaming else _gathered(*batch_args)
        state, loss_v = update(TrainState(params, model_state, (opt_state,), count), batch, hp, info, mask)
        return state.params, state.model_state, state.opt_states[0], state.step, ok & jnp.isfinite(loss_v), loss_v

    return jax.jit(step, donate_argnums=(0, 1, 2, 3))


def _gathered(arrays, idx_r, idx_f) -> dict:
    return {"retain": ArraySource.gather(arrays, idx_r), "forget": ArraySource.gather(arrays, idx_f)}


def compiled_step(apply_fn, loss, cfg, sign, mask_reading, masked, mesh, sam_mode, total, phase, streaming,
                  sam_step=None):  # fmt: skip
    """The loop's step for phase ``phase``: ``f(state, ok, hp, info, mask, batch_args) -> (state, ok, loss)``,
    with the batch gathered inside the compiled program from ``batch_args = (arrays, idx_r, idx_f)`` or
    given as ``({"retain", "forget"},)`` by a streaming source. The program (one per model, loss,
    optimizer, sign, mask use, mesh, SAM mode) is shared by every phase, run and plan that use it; the
    phase's optimizer state is updated in place of ``state.opt_states[phase]``, ``ok`` folds in
    ``isfinite(loss)``. ``sam_step``: LookSAM's branch chosen on the host (:func:`make_step`).

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxunlearn.plan import OptimConfig
        >>> f = compiled_step(lambda p, s, x, train=False: (x @ p, s), supervised_loss, OptimConfig(), "min",
        ...                   "strict", False, None, "global", None, 0, False)
        >>> callable(f)
        True
    """
    jitted = _jitted(apply_fn, loss, cfg, sign, mask_reading, masked, mesh, sam_mode, total, streaming, sam_step)

    def f(state: TrainState, ok, hp, info, mask, batch_args):
        p, s, o, c, ok, loss_v = jitted(state.params, state.model_state, state.opt_states[phase], state.step, ok, hp,
                                        info, mask, *batch_args)  # fmt: skip
        return state.with_opt_state(phase, o)._replace(params=p, model_state=s, step=c), ok, loss_v

    return f


def train(
    apply_fn: Callable,
    params: PyTree,
    model_state: PyTree,
    data,
    *,
    optimizer=PRETRAIN_DEFAULT,
    epochs: int,
    batch_size: int = 64,
    train_idx: np.ndarray | None = None,
    seed: int = 0,
    loss: Callable = supervised_loss,
    **kwargs,
) -> RunResult:
    """Training with one phase (``loss``, cross-entropy on the retain batch by default): pretraining,
    Retrain, or any objective over a batch pytree. ``optimizer``: anything
    :func:`jaxunlearn.plan.as_optim_config` accepts. Other keywords as in :func:`run`.

    Example:
        >>> import numpy as np, optax
        >>> from jaxunlearn import models
        >>> from jaxunlearn.engine.sources import DeviceData
        >>> apply_fn, params, state = models.split_model(models.build("mlp", num_classes=2, input_shape=(3,)))
        >>> x = np.random.default_rng(0).normal(size=(16, 3)); y = (x[:, 0] > 0).astype(int)
        >>> res = train(apply_fn, params, state, DeviceData.from_numpy(x, y), optimizer=optax.adam(1e-2), epochs=2,
        ...             batch_size=8, progress=False)
        >>> [r["epoch"] for r in res.history]
        [1, 2]
    """
    idx = np.arange(len(as_source(data))) if train_idx is None else train_idx
    plan = Plan(
        phases=(Phase("train", loss),),
        optimizer=optimizer,
        epochs=epochs,
        batch_size=batch_size,
        name=kwargs.pop("name", "train"),
    )
    return run(plan, apply_fn, params, model_state, data, retain_idx=idx, seed=seed, **kwargs)
