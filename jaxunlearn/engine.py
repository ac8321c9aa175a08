"""The one training/unlearning loop shared by pretraining, Retrain and every unlearning method.

A run is described by a :class:`Plan`: one or more :class:`Phase` objects (each a loss, the batches it
reads, an optional parameter mask and the SAM sign), an optimizer configuration, the number of epochs
and the hyperparameters ``hp`` (a pytree of arrays passed at run time, so changing a value never
recompiles). Each step pairs one retain batch with one (cycled) forget batch; every active phase takes
one optimizer step on the shared parameters, each phase with its own optimizer state ("two optimizers
over one model" for Sharp MinMax). An epoch is one pass over the retain set (``epoch_over="retain"``)
or the forget set (``"forget"``, e.g. gradient ascent).

The data live on the device once; batches are gathered by index inside the compiled step (no Python
work per example). Steps are jit-compiled once per (model, loss, optimizer) and reused across epochs,
methods and runs; parameters and optimizer states are donated.

SAM in a step: ``optax.chain(transforms.sam(...), base)`` with ``grad_fn`` re-evaluating the same batch
at the perturbed point; the loss value and the batch-norm statistics come from the unperturbed pass.

Example:
    >>> plan = Plan(phases=(Phase("train", supervised_loss),), optimizer=OptimConfig(), epochs=5)
    >>> result = run(plan, apply_fn, params, model_state, data, retain_idx=np.arange(n))
    >>> result.params, result.history
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxunlearn import _validate, distributed, objectives, sharpness
from jaxunlearn.checkpoint import Checkpointer
from jaxunlearn.plan import (
    PRETRAIN_DEFAULT,
    UNLEARN_DEFAULT,
    OptimConfig,
    Phase,
    Plan,
    build_optimizer,
    supervised_loss,
)

__all__ = [
    "unlearn",
    "OptimConfig",
    "Phase",
    "Plan",
    "PRETRAIN_DEFAULT",
    "UNLEARN_DEFAULT",
    "RunResult",
    "DeviceData",
    "build_optimizer",
    "supervised_loss",
    "run",
    "train",
    "train_many",
    "evaluate",
    "COMPILE_COUNTER",
]

PyTree = Any


@dataclasses.dataclass
class RunResult:
    """Output of :func:`run`: final parameters/state, per-epoch history, timing and divergence report.

    ``seconds`` is the wall time of the run; ``compile_seconds`` the part of it JAX spent tracing,
    lowering and compiling (0 when every program was already compiled; loading from the persistent
    compilation cache counts too), so ``seconds - compile_seconds`` approximates the cost of the same run
    once compiled (compilation can overlap computation already dispatched).
    """

    params: PyTree
    model_state: PyTree
    history: list[dict]
    seconds: float
    diverged: dict | None = None
    resumed_from: int | None = None
    info: dict = dataclasses.field(default_factory=dict)
    compile_seconds: float = 0.0


@dataclasses.dataclass
class DeviceData:
    """Training arrays placed on the device once: ``x`` [N, ...], ``y`` [N]."""

    x: jax.Array
    y: jax.Array

    @classmethod
    def from_numpy(cls, x, y, sharding=None) -> DeviceData:
        x = np.asarray(x, np.float32)
        y = np.asarray(y, np.int32)
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y must have the same number of examples, got {x.shape[0]} and {y.shape[0]}.")
        put = (lambda a: jax.device_put(a, sharding)) if sharding is not None else jnp.asarray
        return cls(put(x), put(y))

    def __len__(self) -> int:
        return int(self.y.shape[0])


class _CompileCounter:
    """Counts the engine's step-function traces (``count``), every XLA compilation (``compiles``) and the
    seconds spent tracing, lowering and compiling (``seconds``).

    ``count`` grows when an engine step is (re)traced; ``compiles`` counts backend compilations of any
    function in the process, from JAX's own monitoring events, so it also catches recompilations that
    need no retrace (e.g. the same trace with differently placed inputs). ``seconds`` sums the durations
    JAX reports for jaxpr tracing, lowering to MLIR and backend compilation of any function in the process
    (``RunResult.compile_seconds`` is its growth during one run).

    Example:
        >>> COMPILE_COUNTER.reset(); run(...); COMPILE_COUNTER.count, COMPILE_COUNTER.compiles
    """

    _DURATIONS = (
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    )

    _KEEP = 4096  # recent spans kept for merging nested events

    def __init__(self, listen: bool = True):
        self.count = 0
        self.compiles = 0
        self.seconds = 0.0
        self._spans: list[list[float]] = []  # disjoint (start, end) of the counted time, by end
        self._lock = threading.Lock()  # JAX may report events from other threads
        if listen:
            jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event: str, duration: float, **kwargs) -> None:
        if event in self._DURATIONS:
            with self._lock:
                self._add_span(time.perf_counter(), float(duration))
        if event == "/jax/core/compile/backend_compile_duration":
            self.compiles += 1

    def _add_span(self, end: float, duration: float) -> None:
        """Count the time in ``[end - duration, end]`` not counted yet: an event is reported when it ends,
        so a jit traced inside another one's trace arrives first and lies inside the outer span."""
        start = end - duration
        while self._spans and self._spans[-1][1] > start:
            s0, e0 = self._spans.pop()
            self.seconds -= e0 - s0
            start = min(start, s0)
            end = max(end, e0)
        self._spans.append([start, end])
        self.seconds += end - start
        if len(self._spans) > self._KEEP:
            del self._spans[: len(self._spans) - self._KEEP]

    def reset(self):
        self.count = 0
        self.compiles = 0
        self.seconds = 0.0
        self._spans = []


COMPILE_COUNTER = _CompileCounter()


def _gather(data_x, data_y, idx):
    return jnp.take(data_x, idx, axis=0), jnp.take(data_y, idx, axis=0)


@functools.partial(jax.jit, static_argnums=0)
def _outputs_finite(apply_fn, params, model_state, x, idx) -> jax.Array:
    out, _ = apply_fn(params, model_state, jnp.take(x, idx, axis=0), train=False)
    return jnp.all(jnp.isfinite(out))


@jax.jit
def _finite_jit(tree) -> jax.Array:
    return _finite(tree)


def _finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


SAM_MODES = ("global", "per_device")


def _constrain_batch(batch, mesh):
    """Shard each batch array's first axis over the mesh's ``data`` axis (when it divides evenly)."""
    k = distributed.data_size(mesh)
    s = distributed.batch_sharding(mesh)
    return {key: jax.lax.with_sharding_constraint(v, s) if v.shape[0] % k == 0 else v for key, v in batch.items()}


def _per_device_sam_grads(apply_fn, phase_loss, cfg, mesh, params, model_state, batch, hp):
    """m-sharpness: each device perturbs with ITS shard's gradient. Returns ``(mean_k g_k, mean_k g'_k)``
    with ``g_k = ∇L_k(w)``, ``e_k = perturbation(g_k)``, ``g'_k = ∇L_k(w + e_k)`` on shard k."""
    axis = distributed.DATA if distributed.DATA in mesh.axis_names else mesh.axis_names[0]
    asam = cfg.sam == "asam"
    P = jax.sharding.PartitionSpec

    def per_shard(p, st, b, h):
        # mark w as device-varying: the gradient of an invariant input would be psum-ed over devices
        p = jax.tree.map(lambda a: jax.lax.pcast(a, axis, to="varying"), p)

        def lf(q):
            return phase_loss(apply_fn, q, st, b, h)[0]

        g = jax.grad(lf)(p)
        e = sharpness.perturbation(g, p, cfg.rho, adaptive=asam, eta=cfg.eta if asam else 0.0)
        gp = jax.grad(lf)(jax.tree.map(jnp.add, p, e))
        return jax.lax.pmean(g, axis), jax.lax.pmean(gp, axis)

    fn = jax.shard_map(per_shard, mesh=mesh, in_specs=(P(), P(), P(axis), P()), out_specs=(P(), P()))
    return fn(params, model_state, batch, hp)


def _phase_update(apply_fn, phase_loss, cfg, total_steps, sign, mask_reading, has_mask, mesh=None, sam_mode="global"):
    """Pure (unjitted) single-phase update: used by the jitted step and by the vmapped sweep.

    With a ``mesh`` the gathered batch is sharded over ``data`` (params stay replicated) and XLA's
    SPMD partitioner all-reduces the gradients: SAM then perturbs with the GLOBAL batch gradient.
    ``sam_mode="per_device"`` computes each device's perturbation from its own shard instead and
    averages the per-device SAM gradients (the loss value and model state still come from the
    unperturbed global pass). ``total_steps=None``: the schedule's length is read from
    ``hp["_total_steps"]`` at run time (as ``run`` does), so one compiled step serves runs of any length.
    """
    per_device = sam_mode == "per_device" and cfg.sam != "none" and mesh is not None

    def update(params, model_state, opt_state, x, y, idx_r, idx_f, hp, mask):
        total = hp["_total_steps"] if total_steps is None else total_steps  # None: the run's length is traced
        x_r, y_r = _gather(x, y, idx_r)
        x_f, y_f = _gather(x, y, idx_f)
        batch = {"x_r": x_r, "y_r": y_r, "i_r": idx_r, "x_f": x_f, "y_f": y_f, "i_f": idx_f}
        if mesh is not None:
            batch = _constrain_batch(batch, mesh)

        def lf(p):
            return phase_loss(apply_fn, p, model_state, batch, hp)

        if per_device:
            loss, new_state = lf(params)
            g, gp = _per_device_sam_grads(apply_fn, phase_loss, cfg, mesh, params, model_state, batch, hp)
            grad_fn = lambda p: gp  # noqa: E731  (the transform combines g + s·λ·(M ⊙ mean g'_k − g))
        else:
            (loss, new_state), g = jax.value_and_grad(lf, has_aux=True)(params)
            grad_fn = lambda p: jax.grad(lf, has_aux=True)(p)[0]  # noqa: E731
        tx = build_optimizer(cfg, total, sign=sign, mask=mask if has_mask else None, mask_reading=mask_reading)
        updates, opt_state = tx.update(g, opt_state, params, grad_fn=grad_fn)
        params = optax.apply_updates(params, updates)
        return params, new_state, opt_state, loss

    return update


@functools.lru_cache(maxsize=256)
def _jitted_step(apply_fn, phase_loss, cfg, sign, mask_reading, has_mask, mesh=None, sam_mode="global"):
    # the schedule's length is read from hp["_total_steps"] at run time: not part of the compiled step
    update = _phase_update(apply_fn, phase_loss, cfg, None, sign, mask_reading, has_mask, mesh, sam_mode)

    def step(params, model_state, opt_state, ok, x, y, idx_r, idx_f, hp, mask):
        COMPILE_COUNTER.count += 1  # runs only while tracing
        params, new_state, opt_state, loss = update(params, model_state, opt_state, x, y, idx_r, idx_f, hp, mask)
        ok = ok & jnp.isfinite(loss)  # the parameters are checked once per epoch
        return params, new_state, opt_state, ok, loss

    return jax.jit(step, donate_argnums=(0, 1, 2))


def _epoch_indices(rng: np.random.Generator, pool: np.ndarray, steps: int, batch: int) -> np.ndarray:
    """``steps × batch`` indices: shuffled passes over ``pool`` (wrapping around), as int32."""
    need = steps * batch
    reps = math.ceil(need / max(1, len(pool)))
    idx = np.concatenate([rng.permutation(pool) for _ in range(reps)])[:need]
    return idx.reshape(steps, batch).astype(np.int32)


def _copy(tree):
    return jax.tree.map(lambda a: jnp.array(a, copy=True), tree)


def _phase_cfg(plan: Plan, phase: Phase) -> OptimConfig:
    return phase.optimizer or plan.optimizer


def run(
    plan: Plan,
    apply_fn: Callable,
    params: PyTree,
    model_state: PyTree,
    data: DeviceData,
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

    Per epoch: ``steps = ⌈|pool| / B⌉`` with ``pool`` the retain or forget indices; the retain and the
    forget batches are shuffled passes (forget cycled) drawn from ``numpy`` generators seeded by
    ``(seed, epoch)``, so a resumed run sees exactly the batches of an uninterrupted one.

    Divergence guard: a non-finite loss or parameter during an epoch stops the run, restores the
    parameters of the last finite epoch end and reports ``diverged = {"epoch", "reason"}``.

    ``on_epoch_end(epoch, params, model_state)`` runs after each finite epoch (``epoch`` counts from 1)
    with copies of the parameters and state, which stay valid after the run (the live arrays are
    donated to the next step). An exception it raises stops the run.

    Checkpoints (``checkpoint_dir``): the state after epoch ``e`` is saved with Orbax when ``e`` is the
    last epoch, when ``checkpoint_every`` divides ``e``, or when ``checkpoint_seconds`` have passed since
    the last save (or the start); ``None`` turns either rule off. ``checkpoint_every=None,
    checkpoint_seconds=30`` loses at most 30 s plus one epoch of training to a crash (the rule is checked
    at epoch ends) and skips most saves of short epochs (one save of a small CNN with its optimizer state
    takes ~50 ms). With ``resume=True`` the
    newest checkpoint is restored and the run continues after it. Multi-host: every process calls the
    same ``run`` and Orbax coordinates the writes (use a shared file system); the time rule is decided on
    the main process's clock, so all processes save the same epochs.

    Data parallelism (``mesh``, e.g. :func:`jaxunlearn.distributed.make_mesh`): the data are sharded
    over the mesh's ``data`` axis, parameters, optimizer states and ``hp`` replicated, and each global
    batch (gathered by index) is split over the devices; the result equals the one-device run up to
    float rounding. SAM perturbs with the global batch gradient (``sam_mode="global"``) or, with
    ``sam_mode="per_device"``, each device with its own shard's gradient (m-sharpness, m = B / devices;
    batch sizes must then divide by the number of devices).

    Parameter sharding (``param_sharding="fsdp"``, for models that do not fit one device): on a mesh
    with a ``model`` axis (``distributed.make_mesh(n, ("data", "model"), model=k)``) every large
    parameter and optimizer-state leaf is split along its largest divisible axis over ``model``
    (:func:`jaxunlearn.distributed.fsdp_shardings`); XLA inserts the gathers. The result equals the
    replicated run up to float rounding.

    Example:
        >>> plan = Plan((Phase("train", supervised_loss),), optimizer=PRETRAIN_DEFAULT, epochs=3)
        >>> res = run(plan, apply_fn, params, state, DeviceData.from_numpy(x, y), retain_idx=np.arange(len(y)))
    """
    n = len(data)
    retain_idx = _check_indices("retain_idx", retain_idx, n, allow_empty=plan.epoch_over == "forget")
    forget_idx = _check_indices("forget_idx", forget_idx if forget_idx is not None else [], n, allow_empty=True)
    uses_forget = plan.epoch_over == "forget" or any("forget" in ph.uses for ph in plan.phases)
    if uses_forget and forget_idx.size == 0:
        raise ValueError(f"{plan.name}: the forget set is empty; choose a forget set with at least one example.")
    uses_retain = plan.epoch_over == "retain" or any("retain" in ph.uses for ph in plan.phases)
    if uses_retain and retain_idx.size == 0:
        raise ValueError(f"{plan.name}: the retain set is empty; unlearning everything leaves nothing to keep.")
    if retain_idx.size and forget_idx.size and np.intersect1d(retain_idx, forget_idx).size:
        raise ValueError("retain_idx and forget_idx overlap; an example cannot be both retained and forgotten.")

    _validate.choice("sam_mode", sam_mode, SAM_MODES)
    checkpoint_every, checkpoint_seconds = _checkpoint_schedule(checkpoint_every, checkpoint_seconds)
    pool = retain_idx if plan.epoch_over == "retain" else forget_idx
    bs = plan.batch_size
    steps = max(1, math.ceil(pool.size / bs))
    total_steps = steps * plan.epochs
    r_pool = retain_idx if retain_idx.size else forget_idx
    f_pool = forget_idx if forget_idx.size else retain_idx

    if mesh is not None and sam_mode == "per_device":
        k = distributed.data_size(mesh)
        f_bs = min(bs, f_pool.size)
        if bs % k or f_bs % k:
            raise ValueError(
                f"sam_mode='per_device' needs batch sizes divisible by the {k} devices of the data axis; "
                f"got retain batch {bs} and forget batch {f_bs}. Change batch_size (or the forget set size)."
            )

    params = _copy(params)
    model_state = _copy(model_state)
    hp = plan.hp
    if param_sharding not in ("replicated", "fsdp"):
        raise ValueError(f"param_sharding must be 'replicated' or 'fsdp', got {param_sharding!r}.")
    fsdp = param_sharding == "fsdp"
    if fsdp and (mesh is None or distributed.MODEL not in mesh.axis_names):
        raise ValueError(
            "param_sharding='fsdp' needs a mesh with a 'model' axis, e.g. "
            "distributed.make_mesh(8, ('data', 'model'), model=2)."
        )
    if fsdp and sam_mode == "per_device":
        raise ValueError("sam_mode='per_device' needs replicated parameters; use param_sharding='replicated'.")

    def place_params(tree):
        return (
            jax.device_put(tree, distributed.fsdp_shardings(tree, mesh)) if fsdp else distributed.replicate(tree, mesh)
        )

    if mesh is not None:
        data = distributed.shard_data(data, mesh)
        model_state, hp = distributed.replicate((model_state, hp), mesh)
        params = place_params(params)
    opt_states = [
        build_optimizer(
            _phase_cfg(plan, ph),
            total_steps,
            sign=ph.sign,
            mask=hp[ph.mask_key] if ph.mask_key else None,
            mask_reading=plan.mask_reading,
        ).init(params)
        for ph in plan.phases
    ]
    steps_fns = [
        _jitted_step(
            apply_fn,
            ph.loss,
            _phase_cfg(plan, ph),
            ph.sign,
            plan.mask_reading,
            ph.mask_key is not None,
            mesh,
            sam_mode,
        )
        for ph in plan.phases
    ]
    if mesh is not None:
        opt_states = place_params(opt_states)

    start_epoch = 0
    history: list[dict] = []
    ckpt = Checkpointer(checkpoint_dir) if checkpoint_dir is not None else None
    resumed_from = None
    if ckpt is not None and resume:
        template = {"params": params, "model_state": model_state, "opt_states": opt_states, "epoch": 0}
        try:
            step_, restored = ckpt.restore_latest(template)
        except BaseException:
            ckpt.close()
            raise
        if step_ is not None:
            params, model_state, opt_states = restored["params"], restored["model_state"], restored["opt_states"]
            start_epoch = int(restored["epoch"])
            resumed_from = start_epoch
            opt_states = list(opt_states)

    ok0 = jnp.array(True) if mesh is None else distributed.replicate(jnp.array(True), mesh)
    last_good = (_copy(params), _copy(model_state))
    diverged = None
    t0 = last_save = time.perf_counter()
    c0 = COMPILE_COUNTER.seconds
    bar = tqdm(
        total=plan.epochs * steps,
        initial=start_epoch * steps,
        desc=desc or plan.name,
        disable=not progress or not distributed.is_main_process(),
        leave=False,
        dynamic_ncols=True,
    )
    try:
        for epoch in range(start_epoch, plan.epochs):
            active = [i for i, ph in enumerate(plan.phases) if ph.is_active(epoch)]
            rng = np.random.default_rng([seed, epoch])
            idx_r = _epoch_indices(rng, r_pool, steps, bs)
            idx_f = _epoch_indices(rng, f_pool, steps, min(bs, f_pool.size))
            ok = ok0
            losses = {plan.phases[i].name: [] for i in active}
            hp_epoch = {
                **hp,
                "_epoch": np.int32(epoch),
                "_epochs": np.int32(plan.epochs),
                "_total_steps": np.int32(total_steps),
            }
            if mesh is not None:  # every input of the step on the mesh (needed across processes)
                idx_r, idx_f = distributed.replicate((jnp.asarray(idx_r), jnp.asarray(idx_f)), mesh)
                hp_epoch = distributed.replicate(hp_epoch, mesh)
            for s in range(steps):
                for i in active:
                    ph = plan.phases[i]
                    mask = hp[ph.mask_key] if ph.mask_key else None
                    params, model_state, opt_states[i], ok, loss = steps_fns[i](
                        params, model_state, opt_states[i], ok, data.x, data.y, idx_r[s], idx_f[s], hp_epoch, mask
                    )
                    losses[ph.name].append(loss)
                bar.update(1)
            # Finite weights can still give infinite outputs (e.g. after gradient ascent): check the
            # outputs on one batch too, so the parameters kept as "last good" are usable.
            ok = ok & _finite_jit(params) & _outputs_finite(apply_fn, params, model_state, data.x, idx_r[0])
            record = {"epoch": epoch + 1}
            for name, ls in losses.items():
                record[f"loss/{name}"] = float(jnp.mean(jnp.stack(ls))) if ls else float("nan")
            if not bool(ok):
                diverged = {"epoch": epoch + 1, "reason": "non-finite loss or parameters"}
                params, model_state = last_good
                record["diverged"] = True
                history.append(record)
                break
            history.append(record)
            bar.set_postfix({k.split("/")[-1]: f"{v:.3f}" for k, v in record.items() if k.startswith("loss/")})
            last_good = (_copy(params), _copy(model_state))
            if on_epoch_end is not None:  # copies: ``params`` itself is donated to the next step
                on_epoch_end(epoch + 1, *last_good)
            if ckpt is not None and _save_now(epoch + 1, plan.epochs, checkpoint_every, checkpoint_seconds, last_save):
                ckpt.save(
                    epoch + 1,
                    {"params": params, "model_state": model_state, "opt_states": opt_states, "epoch": epoch + 1},
                )
                last_save = time.perf_counter()
    finally:
        bar.close()
        if ckpt is not None:
            ckpt.close()
    jax.block_until_ready(params)
    return RunResult(
        params, model_state, history, time.perf_counter() - t0, diverged, resumed_from,
        compile_seconds=COMPILE_COUNTER.seconds - c0,
    )  # fmt: skip


def _checkpoint_schedule(every, seconds) -> tuple[int | None, float | None]:
    """Validate ``checkpoint_every`` (epochs) and ``checkpoint_seconds``; either may be ``None``."""
    if every is not None:
        every = _validate.positive_int("checkpoint_every", every)
    if seconds is not None:
        if isinstance(seconds, bool) or not _validate.is_concrete_number(seconds):
            raise ValueError(f"checkpoint_seconds must be a number of seconds >= 0 or None, got {seconds!r}.")
        _validate.positive("checkpoint_seconds", seconds, allow_zero=True)
        seconds = float(seconds)
    return every, seconds


def _save_now(epoch: int, epochs: int, every: int | None, seconds: float | None, last_save: float) -> bool:
    """Whether the state after ``epoch`` (from 1) is checkpointed: the last epoch, every ``every`` epochs,
    or ``seconds`` after the last save. The time rule is read on the main process and shared, so every
    process of a multi-host run saves the same epochs (Orbax's save is collective)."""
    if epoch == epochs or (every is not None and epoch % every == 0):
        return True
    if seconds is None:
        return False
    return distributed.main_process_flag(time.perf_counter() - last_save >= seconds)


def _check_indices(name: str, idx, n: int, *, allow_empty: bool) -> np.ndarray:
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


def train(
    apply_fn: Callable,
    params: PyTree,
    model_state: PyTree,
    data: DeviceData,
    *,
    optimizer: OptimConfig = PRETRAIN_DEFAULT,
    epochs: int,
    batch_size: int = 64,
    train_idx: np.ndarray | None = None,
    seed: int = 0,
    **kwargs,
) -> RunResult:
    """Supervised training with cross-entropy (pretraining, Retrain): :func:`run` with one phase.

    Example:
        >>> res = train(apply_fn, params, state, data, optimizer=OptimConfig(sam="sam"), epochs=10)
    """
    idx = np.arange(len(data)) if train_idx is None else train_idx
    plan = Plan(
        phases=(Phase("train", supervised_loss),),
        optimizer=optimizer,
        epochs=epochs,
        batch_size=batch_size,
        name=kwargs.pop("name", "train"),
    )
    return run(plan, apply_fn, params, model_state, data, retain_idx=idx, seed=seed, **kwargs)


def train_many(
    apply_fn: Callable,
    params: PyTree,
    model_state: PyTree,
    data: DeviceData,
    index_sets: np.ndarray,
    *,
    optimizer: OptimConfig = PRETRAIN_DEFAULT,
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
        >>> keys = jax.random.split(jax.random.key(0), 8)
        >>> stacked = jax.vmap(lambda k: init(k))(keys)
        >>> p, s = train_many(apply_fn, *stacked, data, subsets, epochs=5)
    """
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
    if "rho" in hyper and optimizer.sam == "none":
        raise ValueError("a rho sweep needs a SAM optimizer: pass optimizer=OptimConfig(sam='sam' or 'asam').")
    if mesh is not None and k_models % distributed.data_size(mesh):
        raise ValueError(
            f"train_many with a mesh splits the K={k_models} models over its {distributed.data_size(mesh)} "
            "'data' devices: pass a multiple of that many models (or a smaller mesh)."
        )

    per_device = k_models // (1 if mesh is None else distributed.data_size(mesh))
    if model_mode is None:
        model_mode = _default_model_mode(per_device)
    else:
        _validate.choice("model_mode", model_mode, MODEL_MODES)

    step = _many_step(apply_fn, optimizer, tuple(sorted(hyper)), model_mode, mesh if model_mode == "unroll" else None)
    params, model_state = _copy(params), _copy(model_state)
    if mesh is not None:  # model k (and everything of it) on one device; the data on every device
        params, model_state, hyper = jax.device_put((params, model_state, hyper), distributed.batch_sharding(mesh))
    opt_state = jax.vmap(lambda p, h: build_optimizer(_with_hyper(optimizer, h), total).init(p))(params, hyper)
    data_x, data_y = (data.x, data.y) if mesh is None else distributed.replicate((data.x, data.y), mesh)
    total_arr = np.int32(total) if mesh is None else distributed.replicate(jnp.int32(total), mesh)
    bar = tqdm(total=epochs * steps, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for epoch in range(epochs):
        per_model = [
            _epoch_indices(
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
            spec = jax.sharding.PartitionSpec(None, distributed._data_axis(mesh))
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


def _default_model_mode(per_device: int) -> str:
    """``"unroll"`` on CPU for up to ``MAX_UNROLL_MODELS`` models per device, ``"vmap"`` otherwise and on
    accelerators (where one batched program fills the device)."""
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
        update = _phase_update(apply_fn, supervised_loss, _with_hyper(optimizer, h), None, "min", "strict", False)
        return update(p, s, o, x, y, ir, ir, {"_total_steps": total}, None)

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

        k_spec, rep = PartitionSpec(distributed._data_axis(mesh)), PartitionSpec()
        body = _shard_map(unrolled, mesh, (k_spec, k_spec, k_spec, rep, rep, k_spec, k_spec, rep), k_spec)

    def step(p, s, o, x, y, ir, h, total):
        COMPILE_COUNTER.count += 1
        return body(p, s, o, x, y, ir, h, total)

    return jax.jit(step, donate_argnums=(0, 1, 2))


def _shard_map(f, mesh, in_specs, out_specs):
    """``jax.shard_map`` (``jax.experimental.shard_map`` on older jax) with replication checks off: ``f``
    runs on each device's block of the K models, with no communication."""
    if hasattr(jax, "shard_map"):
        try:
            return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
        except TypeError:  # pragma: no cover - jax without check_vma
            return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs)
    from jax.experimental.shard_map import shard_map  # pragma: no cover - older jax

    return shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False)  # pragma: no cover


def evaluate(
    apply_fn: Callable,
    params: PyTree,
    model_state: PyTree,
    x,
    y=None,
    *,
    batch_size: int = 1024,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, np.ndarray | float]:
    """Eval-mode logits for ``x`` (batched, jitted) and, with labels, accuracy and per-example loss.

    Returns ``{"logits", "loss", "correct", "accuracy"}`` (numpy; the last three only with ``y``).
    With ``mesh`` each chunk is split over the ``data`` axis (padded to a multiple of its size).

    Example:
        >>> evaluate(apply_fn, params, state, x_test, y_test)["accuracy"]
    """
    x = np.asarray(x, np.float32)
    if x.shape[0] == 0:
        raise ValueError("cannot evaluate on an empty set of examples.")
    outs = []
    fn = _eval_fn(apply_fn)
    if mesh is not None:
        k = distributed.data_size(mesh)
        batch_size = max(k, batch_size // k * k)
        params, model_state = distributed.replicate((params, model_state), mesh)
    for start in range(0, x.shape[0], batch_size):
        chunk = x[start : start + batch_size]
        pad = batch_size - chunk.shape[0] if x.shape[0] > batch_size else 0
        if mesh is not None:
            pad = pad or -chunk.shape[0] % k
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        if mesh is not None:
            chunk = distributed.shard_batch(chunk, mesh)
        out = fn(params, model_state, chunk)
        if mesh is not None and jax.process_count() > 1:  # every process gets all the logits
            out = _allgather(out)
        out = np.asarray(out)
        outs.append(out[: out.shape[0] - pad] if pad else out)
    logits = np.concatenate(outs)
    result: dict[str, Any] = {"logits": logits}
    if y is not None:
        y = np.asarray(y)
        result["loss"] = np.asarray(objectives.per_example_cross_entropy(jnp.asarray(logits), jnp.asarray(y)))
        result["correct"] = logits.argmax(-1) == y
        result["accuracy"] = float(result["correct"].mean())
    return result


def _allgather(x):
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(x, tiled=True)


@functools.lru_cache(maxsize=64)
def _eval_fn(apply_fn):
    return jax.jit(lambda p, s, x: apply_fn(p, s, x, train=False)[0])


def unlearn(
    method: str,
    ctx,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    checkpoint_every: int | None = 1,
    checkpoint_seconds: float | None = None,
    progress: bool = True,
    mesh: jax.sharding.Mesh | None = None,
    sam_mode: str = "global",
    param_sharding: str = "replicated",
) -> RunResult:
    """Run the registered unlearning ``method`` on the context ``ctx`` (a ``methods.Context``).

    The method's recipe is built (masks, teachers, scores: counted in ``seconds``) and its plan run by
    :func:`run`; methods that edit the weights directly return at once (non-finite edited parameters are
    reported in ``diverged`` with ``epoch`` 0, and the input parameters are returned, as a diverged run
    returns its last finite ones). With ``ctx.corrected`` (feature
    or label unlearning) the corrected examples Z̃ join the retain set, so gradient methods learn them
    while unlearning the affected examples Z. ``checkpoint_*`` / ``mesh`` / ``sam_mode`` /
    ``param_sharding``: as in :func:`run`.

    Example:
        >>> ctx = methods.Context(apply_fn, params, state, data.x, data.y, retain_idx, forget_idx, 10)
        >>> res = unlearn("sharp_minmax", ctx)
        >>> res.params, res.seconds
    """
    from jaxunlearn import methods as methods_lib  # the registry sits below the engine

    m = methods_lib.get(method)
    _checkpoint_schedule(checkpoint_every, checkpoint_seconds)  # fail before any work
    t0, c0 = time.perf_counter(), COMPILE_COUNTER.seconds
    recipe = m.recipe(ctx)
    if recipe.plan is None:
        params = jax.block_until_ready(recipe.params)
        state = recipe.model_state if recipe.model_state is not None else ctx.model_state
        diverged = None
        if not bool(_finite_jit((params, state))):  # as a run does: keep the last finite parameters
            params, state = ctx.params, ctx.model_state
            diverged = {"epoch": 0, "reason": f"{method}'s direct edit gave non-finite parameters"}
        return RunResult(
            params, state, [], time.perf_counter() - t0, diverged=diverged, info=dict(recipe.info),
            compile_seconds=COMPILE_COUNTER.seconds - c0,
        )  # fmt: skip
    params, state = recipe.start if recipe.start is not None else (ctx.params, ctx.model_state)
    x, y = ctx.x, ctx.y
    retain_idx = np.asarray(ctx.retain_idx if recipe.retain_idx is None else recipe.retain_idx)
    forget_idx = np.asarray(ctx.forget_idx if recipe.forget_idx is None else recipe.forget_idx)
    if ctx.corrected is not None:
        x_t, y_t = ctx.corrected
        n = int(np.shape(x)[0])
        x = jnp.concatenate([jnp.asarray(x), jnp.asarray(x_t, jnp.float32)])
        y = jnp.concatenate([jnp.asarray(y), jnp.asarray(y_t, jnp.int32)])
        retain_idx = np.concatenate([retain_idx, n + np.arange(len(y_t))])
    res = run(
        recipe.plan,
        ctx.apply_fn,
        params,
        state,
        DeviceData(jnp.asarray(x), jnp.asarray(y)),
        retain_idx=retain_idx,
        forget_idx=forget_idx,
        seed=ctx.seed,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        checkpoint_every=checkpoint_every,
        checkpoint_seconds=checkpoint_seconds,
        progress=progress,
        desc=method,
        mesh=mesh,
        sam_mode=sam_mode,
        param_sharding=param_sharding,
    )
    res.seconds = time.perf_counter() - t0
    res.compile_seconds = COMPILE_COUNTER.seconds - c0
    res.info = dict(recipe.info)
    return res
