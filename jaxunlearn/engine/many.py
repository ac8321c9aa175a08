"""Populations of models trained together: :func:`run_many` executes one :class:`~jaxunlearn.plan.Plan` for K
models at once, :func:`train_many` is its one-phase form.

The K models are K stacked :class:`~jaxunlearn.engine.step.TrainState` (a leading axis K on every leaf).
Each phase's update is the engine's one-model step (:func:`jaxunlearn.engine.step.make_step`), batched over
the K models with ``vmap`` (fills an accelerator) or unrolled one model after another in the same program
(XLA:CPU runs them side by side on its cores), optionally split over the devices of a mesh (each device
trains K / d whole models, no communication). The epoch loop is :func:`jaxunlearn.engine.run`'s, per
model: model k draws its batches from ``numpy`` generators seeded by ``(seeds[k], epoch)`` (retain
indices, then forget indices), so row k of :func:`run_many` equals ``run(plan_k, ..., seed=seeds[k])`` up to
float rounding; its hooks are the same (divergence guard, checkpoints, progress bar), kept per model.

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
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxunlearn import _validate, distributed
from jaxunlearn.engine.hooks import COMPILE_COUNTER, Checkpointing, Progress, Timer, all_finite, copy_tree
from jaxunlearn.engine.loop import RunResult, check_indices
from jaxunlearn.engine.sources import ArraySource, DeviceData, as_source, epoch_indices
from jaxunlearn.engine.step import TrainState, make_step
from jaxunlearn.plan import (
    PRETRAIN_DEFAULT,
    OptimConfig,
    Phase,
    Plan,
    StepInfo,
    as_optim_config,
    build_optimizer,
    supervised_loss,
)

__all__ = ["run_many", "train_many", "stack_plans", "MODEL_MODES", "MAX_UNROLL_MODELS", "default_model_mode"]

PyTree = Any

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


# ------------------------------------------------------------------------------------------------ plans


def stack_plans(plans: Plan | Sequence[Plan], num_models: int) -> tuple[Plan, PyTree, bool]:
    """One plan for K models: ``(plan, hp, stacked)``.

    A single :class:`~jaxunlearn.plan.Plan` is shared by the K models: ``hp = plan.hp``, ``stacked=False``.
    A sequence of K plans (e.g. a method's recipe built from each of K original models) must agree on
    everything but the values of ``hp`` (phases, their losses, signs, masks, optimizers and active epochs,
    the plan's optimizer, epochs, batch size, ``epoch_over``, ``mask_reading``, and ``hp``'s structure, shapes
    and dtypes); their ``hp`` are stacked along a leading axis K (``hp[key][k]`` is model k's), ``stacked=True``.
    Anything else raises a one-line ``ValueError`` naming the difference.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxunlearn.plan import Phase, supervised_loss
        >>> mk = lambda a: Plan((Phase("train", supervised_loss),), hp={"alpha": jnp.float32(a)}, epochs=2)
        >>> plan, hp, stacked = stack_plans([mk(0.75), mk(0.5)], 2)
        >>> hp["alpha"].tolist(), stacked, plan.epochs
        ([0.75, 0.5], True, 2)
        >>> stack_plans([mk(0.75), Plan((Phase("train", supervised_loss),), epochs=3)], 2)
        Traceback (most recent call last):
        ValueError: the K plans differ in epochs (2 vs 3); run_many runs one plan for K models (only hp may differ).
    """
    if isinstance(plans, Plan):
        return plans, plans.hp, False
    plans = list(plans)
    if not plans or not all(isinstance(p, Plan) for p in plans):
        raise ValueError("run_many needs a jaxunlearn.plan.Plan or a sequence of K Plans (one per model).")
    if len(plans) != num_models:
        raise ValueError(f"got {len(plans)} plans for K={num_models} models; pass one plan, or one per model.")
    base = plans[0]
    for other in plans[1:]:
        what = _plan_difference(base, other)
        if what is not None:
            raise ValueError(f"the K plans differ in {what}; run_many runs one plan for K models (only hp may differ).")
    hp = jax.tree.map(lambda *a: jnp.stack([jnp.asarray(x) for x in a]), *[p.hp for p in plans])
    return base, hp, True


def _plan_difference(a: Plan, b: Plan) -> str | None:
    """The first field two plans differ in (beyond the values of ``hp``), or None."""
    for name in ("epochs", "batch_size", "epoch_over", "mask_reading", "optimizer"):
        if getattr(a, name) != getattr(b, name):
            return f"{name} ({getattr(a, name)!r} vs {getattr(b, name)!r})"
    if len(a.phases) != len(b.phases):
        return f"their number of phases ({len(a.phases)} vs {len(b.phases)})"
    for pa, pb in zip(a.phases, b.phases):
        for name in ("name", "loss", "uses", "sign", "mask_key", "optimizer"):
            if getattr(pa, name) != getattr(pb, name):
                return f"phase {pa.name!r}'s {name}"
        if [pa.is_active(e) for e in range(a.epochs)] != [pb.is_active(e) for e in range(a.epochs)]:
            return f"phase {pa.name!r}'s active epochs"
    ta, tb = jax.tree.structure(a.hp), jax.tree.structure(b.hp)
    if ta != tb:
        return "the structure of hp"
    for x, y in zip(jax.tree.leaves(a.hp), jax.tree.leaves(b.hp)):
        if np.shape(x) != np.shape(y) or jnp.result_type(x) != jnp.result_type(y):
            return (
                f"the shapes or dtypes in hp ({np.shape(x)} {jnp.result_type(x)} vs {np.shape(y)} {jnp.result_type(y)})"
            )
    return None


# ---------------------------------------------------------------------------------------------- the run


def run_many(
    plan: Plan | Sequence[Plan],
    apply_fn: Callable,
    params: PyTree,
    model_state: PyTree,
    data,
    *,
    retain_idx: np.ndarray,
    forget_idx: np.ndarray | None = None,
    seed: int = 0,
    seeds=None,
    lr=None,
    rho=None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    checkpoint_every: int | None = 1,
    checkpoint_seconds: float | None = None,
    progress: bool = True,
    desc: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
    model_mode: str | None = None,
) -> RunResult:
    """Execute ``plan`` for K models at once, starting from the stacked ``params`` / ``model_state``.

    ``params`` / ``model_state`` carry a leading axis K (model k is ``tree[k]``; e.g. ``jax.vmap(init)(keys)``
    or K initialisations stacked). ``plan``: one :class:`~jaxunlearn.plan.Plan` shared by the K models, or K
    plans that differ only in the values of their ``hp`` (e.g. each model's own mask, teacher or random
    labels; see :func:`stack_plans`). Per epoch, as in :func:`jaxunlearn.engine.run` for each model k:
    ``steps = ⌈|pool| / B⌉`` steps, each pairing a retain batch with a (cycled) forget batch, every active
    phase taking one optimizer step with its own optimizer state:

        ``w_k ← w_k + tx_i(∇L_i(w_k; batch_k, hp_k), o_{k,i})`` for each active phase i, k = 1 … K

    in ONE compiled program per phase for the K models (:func:`~jaxunlearn.engine.step.make_step` under
    ``vmap``, or unrolled: ``model_mode``). Model k's batches come from generators seeded by
    ``(seeds[k], epoch)`` (``seeds``: K ints), else by ``(seed, k, epoch)``, so with ``seeds`` row k equals
    ``run(plan_k, ..., seed=seeds[k])`` up to float rounding.

    ``retain_idx`` / ``forget_idx``: 1-D index arrays shared by the models, or ``[K, m]`` (model k uses row k;
    rows of equal size). ``data``: an in-device source (``DeviceData``, ``ArraySource`` or a dict of arrays).
    ``lr`` / ``rho`` (K values, or one; one-phase plans with an ``OptimConfig``): per-model learning rate /
    SAM radius, traced in the same program (row k equals the run with ``dataclasses.replace(optimizer,
    lr=lr[k], rho=rho[k])``). ``mesh``: the K models are split over the mesh's ``data`` axis (K a multiple of
    its size); the data are replicated. ``model_mode``: ``"vmap"`` or ``"unroll"`` (default
    :func:`default_model_mode` of the models per device).

    Hooks, per model: a model whose loss, parameters or outputs (on its first retain batch) stop being finite
    during an epoch gets the parameters of its last finite epoch back and is frozen for the rest of the run
    (the others go on); ``diverged`` is then a list with ``{"epoch", "reason"}`` for each such model and None
    for the others (``diverged is None`` when every model stayed finite). Checkpoints (``checkpoint_dir``,
    ``checkpoint_every`` / ``checkpoint_seconds``, ``resume``) hold the K states, as in
    :func:`~jaxunlearn.engine.run`, so an interrupted run resumes after its last saved epoch with the same
    batches. ``history[e]["loss/<phase>"]`` is the mean over the models still training, and
    ``"model_loss/<phase>"`` the K per-model means.

    Example (the same plan for two models; per-model ``hp``: pass one plan per model):
        >>> import numpy as np, jax
        >>> from jaxunlearn import models
        >>> from jaxunlearn.plan import OptimConfig, Phase, Plan, supervised_loss
        >>> inits = [models.split_model(models.build("mlp", num_classes=2, input_shape=(4,), seed=k)) for k in (0, 1)]
        >>> apply_fn = inits[0][0]
        >>> params, state = (jax.tree.map(lambda *a: np.stack(a), *[m[i] for m in inits]) for i in (1, 2))
        >>> x = np.random.default_rng(0).normal(size=(32, 4)); y = (x[:, 0] > 0).astype(int)
        >>> plan = Plan((Phase("train", supervised_loss),), optimizer=OptimConfig(lr=0.05), epochs=2, batch_size=8)
        >>> res = run_many(plan, apply_fn, params, state, DeviceData.from_numpy(x, y), retain_idx=np.arange(32),
        ...                seeds=[3, 4], progress=False)
        >>> jax.tree.leaves(res.params)[0].shape[0], len(res.history), len(res.history[0]["model_loss/train"])
        (2, 2, 2)
    """
    return _run(plan, apply_fn, params, model_state, data, retain_idx=retain_idx, forget_idx=forget_idx, seed=seed,
                seeds=seeds, lr=lr, rho=rho, checkpoint_dir=checkpoint_dir, resume=resume,
                checkpoint_every=checkpoint_every, checkpoint_seconds=checkpoint_seconds, progress=progress, desc=desc,
                mesh=mesh, model_mode=model_mode, repeats_ok=False)  # fmt: skip


def _run(plan, apply_fn, params, model_state, data, *, retain_idx, forget_idx, seed, seeds, lr, rho, checkpoint_dir,
         resume, checkpoint_every, checkpoint_seconds, progress, desc, mesh, model_mode, repeats_ok,
         first_model=0):  # fmt: skip
    """:func:`run_many`; ``repeats_ok`` lets an index row repeat examples (:func:`train_many`'s topped-up subsets);
    ``first_model``: row k draws the batches of model ``first_model + k`` (:func:`train_many`'s groups)."""
    src = as_source(data)
    if src.streaming:
        raise ValueError(
            "run_many needs an in-device source (engine.DeviceData, ArraySource or a dict of arrays); a streaming "
            "source feeds one model at a time: use engine.run per model."
        )
    k_models = _num_models(params, model_state)
    plan, hp, hp_stacked = stack_plans(plan, k_models)
    r_pools, f_pools, steps = _pools(plan, len(src), retain_idx, forget_idx, k_models, repeats_ok)
    keys = _rng_keys(seed, seeds, k_models, first_model)
    hyper = _hyper(plan, lr, rho, k_models)
    Checkpointing.validate(checkpoint_every, checkpoint_seconds)
    d = 1 if mesh is None else distributed.data_size(mesh)
    if k_models % d:
        raise ValueError(
            f"run_many with a mesh splits the K={k_models} models over its {d} 'data' devices: pass a multiple of "
            "that many models (or a smaller mesh)."
        )
    if model_mode is None:
        model_mode = default_model_mode(k_models // d)
    else:
        _validate.choice("model_mode", model_mode, MODEL_MODES)
    total = steps * plan.epochs
    cfgs = [ph.optimizer or plan.optimizer for ph in plan.phases]
    if any(c.static_total for c in cfgs):
        raise ValueError("run_many needs OptimConfig or optax.GradientTransformation optimizers, not factories.")

    # placement: model k (its state, hp, batches) on the device that trains it; the data on every device
    params, model_state, hp, hyper = copy_tree(params), copy_tree(model_state), hp, hyper
    if mesh is None:
        per_model = shared = lambda t: t  # noqa: E731
    else:
        per_model = lambda t: jax.device_put(t, distributed.batch_sharding(mesh))  # noqa: E731
        shared = lambda t: distributed.replicate(t, mesh)  # noqa: E731
    params, model_state, hyper = per_model((params, model_state, hyper))
    hp = per_model(hp) if hp_stacked else shared(hp)
    arrays = shared(src.arrays)
    masks = [hp[ph.mask_key] if ph.mask_key else None for ph in plan.phases]
    opt_states = tuple(
        _init_opt(c, total, ph.sign, m, hp_stacked, plan.mask_reading, params, hyper)
        for c, ph, m in zip(cfgs, plan.phases, masks)
    )
    state = TrainState(params, model_state, opt_states, per_model(jnp.zeros((k_models,), jnp.int32)))
    fns = [
        _phase_step(
            apply_fn,
            ph.loss,
            c,
            ph.sign,
            plan.mask_reading,
            m is not None,
            tuple(sorted(hyper)),
            hp_stacked,
            model_mode,
            mesh,
        )  # fmt: skip
        for ph, c, m in zip(plan.phases, cfgs, masks)
    ]
    live = np.ones(k_models, bool)
    diverged_at = np.zeros(k_models, np.int32)  # epoch (from 1) at which model k diverged; 0 = never

    ckpt = Checkpointing(checkpoint_dir, every=checkpoint_every, seconds=checkpoint_seconds)
    timer = Timer()
    start, restored = ckpt.restore(_tree(state, live, diverged_at, 0)) if resume else (0, None)
    if restored is not None:
        state = state._replace(params=restored["params"], model_state=restored["model_state"],
                               opt_states=tuple(restored["opt_states"]))  # fmt: skip
        live, diverged_at = np.asarray(restored["live"], bool), np.asarray(restored["diverged_at"], np.int32)
    finite = _finite_fn(apply_fn, "x" in src.arrays)
    last_good = (copy_tree(state.params), copy_tree(state.model_state))
    bar = Progress(plan.epochs * steps, initial=start * steps, desc=desc or plan.name, enabled=progress)
    history = []
    try:
        for epoch in range(start, plan.epochs):
            if not live.any():
                break
            active = [i for i, ph in enumerate(plan.phases) if ph.is_active(epoch)]
            idx_r, idx_f = _epoch_batches(keys, epoch, r_pools, f_pools, steps, plan.batch_size)
            ir, if_ = _place_indices((idx_r, idx_f), mesh)
            info = shared(StepInfo.at(epoch=epoch, epochs=plan.epochs, total_steps=total))
            live_dev = per_model(jnp.asarray(live))
            ok = per_model(jnp.ones((k_models,), bool))
            losses = {plan.phases[i].name: [] for i in active}
            for s in range(steps):
                for i in active:
                    args = (state.params, state.model_state, state.opt_states[i], state.step, ok, live_dev)
                    p, ms, o, c, ok, loss = fns[i](*args, hp, masks[i], hyper, arrays, ir[s], if_[s], info)
                    state = state.with_opt_state(i, o)._replace(params=p, model_state=ms, step=c)
                    losses[plan.phases[i].name].append(loss)
                bar.step()
            fine = np.asarray(finite(state.params, state.model_state, ok, ir[0], arrays))
            bad = live & ~fine
            if bad.any():  # back to the last finite epoch end, and frozen from now on
                back = per_model(jnp.asarray(bad))
                params, mstate = (
                    _select_models(back, last_good[0], state.params),
                    _select_models(back, last_good[1], state.model_state),
                )
                state = state._replace(params=params, model_state=mstate)
                diverged_at[bad] = epoch + 1
            record = {"epoch": epoch + 1}
            for name, v in losses.items():
                per = np.asarray(jnp.mean(jnp.stack(v), axis=0), np.float64) if v else np.full(k_models, np.nan)
                use = live & ~bad
                record[f"loss/{name}"] = float(np.mean(per[use])) if use.any() else float("nan")
                record[f"model_loss/{name}"] = per.tolist()
            if bad.any():
                record["diverged_models"] = np.flatnonzero(bad).tolist()
            live = live & ~bad
            history.append(record)
            bar.epoch_end(record)
            last_good = (copy_tree(state.params), copy_tree(state.model_state))
            ckpt.maybe_save(
                epoch + 1, plan.epochs, lambda e=epoch + 1, st=state, lv=live.copy(): _tree(st, lv, diverged_at, e)
            )
    finally:
        bar.close()
        ckpt.close()
    if plan.averaging_phase is not None:  # weight averaging: live models end at their average
        avg = plan.final_params(state.params, state.opt_states)
        state = state._replace(params=_select_models(per_model(jnp.asarray(~live)), state.params, avg))
    jax.block_until_ready(state.params)
    diverged = None
    if (diverged_at > 0).any():
        reason = "non-finite loss, parameters or outputs"
        diverged = [{"epoch": int(e), "reason": reason} if e > 0 else None for e in diverged_at]
    return RunResult(
        state.params,
        state.model_state,
        history,
        timer.seconds,
        diverged,
        start if restored is not None else None,
        info={"models": k_models, "model_mode": model_mode},
        compile_seconds=timer.compile_seconds,
    )


def _num_models(params, model_state) -> int:
    leaves = jax.tree.leaves(params) + jax.tree.leaves(model_state)
    if not jax.tree.leaves(params):
        raise ValueError("params has no arrays; pass the K models' parameters stacked along a leading axis.")
    lead = {int(np.shape(x)[0]) if np.ndim(x) else None for x in leaves}
    if len(lead) != 1 or None in lead or 0 in lead:
        raise ValueError(
            f"params and model_state must carry one leading axis K >= 1 (one entry per model), got sizes {lead}."
        )
    return lead.pop()


def _rows(name: str, idx, n: int, k_models: int, allow_empty: bool, repeats_ok: bool) -> list[np.ndarray]:
    """Per-model index rows: a shared 1-D array K times, or the rows of a ``[K, m]`` array."""

    def check(label: str, row) -> np.ndarray:
        row = np.asarray(row)
        if repeats_ok and row.size:  # check_indices' checks on the distinct indices; the repeats are kept
            check_indices(label, np.unique(row) if row.ndim == 1 else row, n, allow_empty=allow_empty)
            return row.astype(np.int64)
        return check_indices(label, row, n, allow_empty=allow_empty)

    a = np.asarray([] if idx is None else idx)
    if a.ndim == 2:
        if a.shape[0] != k_models:
            raise ValueError(f"{name} has {a.shape[0]} rows for K={k_models} models; pass one row per model, or 1-D.")
        return [check(f"{name}[{k}]", row) for k, row in enumerate(a)]
    return [check(name, a)] * k_models


def _pools(plan: Plan, n: int, retain_idx, forget_idx, k_models: int, repeats_ok: bool = False):
    """Each model's retain and forget pools (as :func:`~jaxunlearn.engine.run` picks them) and the steps per epoch."""
    retain = _rows("retain_idx", retain_idx, n, k_models, plan.epoch_over == "forget", repeats_ok)
    forget = _rows("forget_idx", forget_idx, n, k_models, True, False)
    uses = {u for ph in plan.phases for u in ph.uses} | {plan.epoch_over}
    for k, (r, f) in enumerate(zip(retain, forget)):
        if "forget" in uses and f.size == 0:
            raise ValueError(f"{plan.name}: the forget set is empty; choose a forget set with at least one example.")
        if "retain" in uses and r.size == 0:
            raise ValueError(f"{plan.name}: the retain set is empty; unlearning everything leaves nothing to keep.")
        if r.size and f.size and np.intersect1d(r, f).size:
            raise ValueError(
                f"retain_idx and forget_idx overlap (model {k}); an example cannot be both retained and forgotten."
            )
    if not repeats_ok and "retain" in uses and plan.batch_size > retain[0].size:  # as engine.run refuses it
        raise ValueError(
            f"{plan.name}: batch_size {plan.batch_size} is larger than the {retain[0].size} retained examples "
            f"(each batch would repeat them); use batch_size <= {retain[0].size}."
        )
    sizes = {(r.size, f.size) for r, f in zip(retain, forget)}
    if len(sizes) != 1:
        raise ValueError("every model's retain set (and forget set) must have the same size, to share one program.")
    r_pools = [r if r.size else f for r, f in zip(retain, forget)]
    f_pools = [f if f.size else r for r, f in zip(retain, forget)]
    pool = retain[0] if plan.epoch_over == "retain" else forget[0]
    return r_pools, f_pools, max(1, math.ceil(pool.size / plan.batch_size))


def _rng_keys(seed, seeds, k_models: int, first_model: int = 0) -> list[list[int]]:
    """The seed prefix of each model's batch generators: ``[seeds[k]]`` or ``[seed, first_model + k]`` (then
    ``+ [epoch]``)."""
    if seeds is None:
        return [[int(seed), first_model + k] for k in range(k_models)]
    seeds = [int(s) for s in np.asarray(seeds).reshape(-1)]
    if len(seeds) != k_models:
        raise ValueError(f"seeds must hold one seed per model (K={k_models}), got {len(seeds)}.")
    return [[s] for s in seeds]


def _hyper(plan: Plan, lr, rho, k_models: int) -> dict:
    """Per-model ``lr`` / ``rho`` as ``[K]`` float32 arrays (checked)."""
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
    if not hyper:
        return hyper
    if len(plan.phases) != 1 or plan.phases[0].optimizer is not None:
        raise ValueError("per-model lr / rho need a one-phase plan using the plan's optimizer.")
    if "lr" in hyper and plan.optimizer.uses_base:
        raise ValueError("an lr sweep needs an OptimConfig optimizer (a user's optax optimizer has its own rate).")
    if "rho" in hyper and plan.optimizer.sam == "none":
        raise ValueError("a rho sweep needs a SAM optimizer: pass optimizer=OptimConfig(sam='sam' or 'asam').")
    return hyper


def _epoch_batches(keys, epoch, r_pools, f_pools, steps, batch_size) -> tuple[np.ndarray, np.ndarray]:
    """``[steps, K, B]`` retain and forget indices of one epoch: model k's from ``default_rng(keys[k] + [epoch])``."""
    rs, fs = [], []
    for key, r, f in zip(keys, r_pools, f_pools):
        rng = np.random.default_rng(key + [epoch])
        rs.append(epoch_indices(rng, r, steps, batch_size))
        fs.append(epoch_indices(rng, f, steps, min(batch_size, f.size)))
    return np.stack(rs, axis=1), np.stack(fs, axis=1)


def _place_indices(idx, mesh):
    if mesh is None:
        return jax.tree.map(jnp.asarray, idx)
    spec = jax.sharding.PartitionSpec(None, distributed.data_axis(mesh))
    return jax.device_put(idx, jax.sharding.NamedSharding(mesh, spec))


def _tree(state: TrainState, live: np.ndarray, diverged_at: np.ndarray, epoch: int) -> dict:
    """The checkpointed pytree of a many-model run after ``epoch``."""
    return {"params": state.params, "model_state": state.model_state, "opt_states": list(state.opt_states),
            "live": np.asarray(live), "diverged_at": np.asarray(diverged_at), "epoch": epoch}  # fmt: skip


def _with_hyper(optimizer: OptimConfig, h: dict) -> OptimConfig:
    """The optimizer of one model of a sweep, with its (traced) ``lr`` / ``rho``."""
    return dataclasses.replace(optimizer, **h) if h else optimizer


def _init_opt(cfg, total, sign, mask, mask_stacked, mask_reading, params, hyper):
    """The K optimizer states of one phase (each model's own mask and swept hyperparameters)."""

    def one(p, m, h):
        return build_optimizer(_with_hyper(cfg, h), total, sign=sign, mask=m, mask_reading=mask_reading).init(p)

    return jax.vmap(one, in_axes=(0, 0 if mask_stacked else None, 0))(params, mask, hyper)


@jax.jit
def _select_models(bad, old, new):
    """Model k of ``old`` where ``bad[k]``, else of ``new``."""
    return jax.tree.map(lambda o, n: jnp.where(bad.reshape((-1,) + (1,) * (n.ndim - 1)), o, n), old, new)


@functools.lru_cache(maxsize=32)
def _finite_fn(apply_fn, has_x: bool):
    """``f(params, state, ok, arrays, idx) -> bool[K]``: each model's step flag, parameters and eval-mode
    outputs on its batch ``idx[k]`` all finite (the divergence guard of :func:`run_many`)."""

    def one(p, s, ok, idx, arrays):
        fine = ok & all_finite(p)
        if has_x:
            out, _ = apply_fn(p, s, jnp.take(arrays["x"], idx, axis=0), train=False)
            fine = fine & all_finite(out)
        return fine

    return jax.jit(jax.vmap(one, in_axes=(0, 0, 0, 0, None)))


@functools.lru_cache(maxsize=256)
def _phase_step(apply_fn, loss, cfg, sign, mask_reading, masked, hyper_keys, hp_stacked, mode, mesh):
    """The step of one phase over the K stacked models, compiled once per (model, loss, optimizer, sign, mask use,
    swept keys, hp layout, mode, mesh) and shared by every run that uses it (the schedule's length and the
    epoch are run-time arguments).

    ``f(params, model_state, opt_state, count, ok, live, hp, mask, hyper, arrays, idx_r, idx_f, info)`` returns
    ``(params, model_state, opt_state, count, ok, loss[K])``: each model takes
    :func:`~jaxunlearn.engine.step.make_step`'s update on its batch ``{"retain": gather(idx_r[k]), "forget":
    gather(idx_f[k])}``; a model with ``live[k] = False`` keeps its state; ``ok[k]`` folds in
    ``isfinite(loss_k)``. ``mode="vmap"``: ``vmap`` of the one-model step; ``"unroll"``: the one-model step
    written once per model (a Python loop at trace time). With a mesh, inside ``shard_map`` over its data axis
    (each device runs its own models)."""
    del hyper_keys  # part of the cache key: the swept hyperparameters change the traced program
    hp_axis = 0 if hp_stacked else None

    def one(p, s, o, c, ok, live, hp, mask, h, arrays, ir, if_, info):
        update = make_step(apply_fn, loss, _with_hyper(cfg, h), sign=sign, masked=masked, mask_reading=mask_reading)
        batch = {"retain": ArraySource.gather(arrays, ir), "forget": ArraySource.gather(arrays, if_)}
        new, loss_v = update(TrainState(p, s, (o,), c), batch, hp, info, mask)
        out = (new.params, new.model_state, new.opt_states[0], new.step)
        out = jax.tree.map(lambda a, b: jnp.where(live, a, b), out, (p, s, o, c))
        return (*out, ok & (jnp.isfinite(loss_v) | ~live), loss_v)

    def unrolled(p, s, o, c, ok, live, hp, mask, h, arrays, ir, if_, info):
        outs = []
        for k in range(ir.shape[0]):
            pick = lambda t, k=k: jax.tree.map(lambda a: a[k], t)  # noqa: E731
            hp_k, mask_k = (pick(hp), pick(mask)) if hp_stacked else (hp, mask)
            outs.append(one(*pick((p, s, o, c, ok, live)), hp_k, mask_k, pick(h), arrays, ir[k], if_[k], info))
        return jax.tree.map(lambda *a: jnp.stack(a), *outs)

    if mode == "vmap":
        body = jax.vmap(one, in_axes=(0, 0, 0, 0, 0, 0, hp_axis, hp_axis, 0, None, 0, 0, None))
    else:
        body = unrolled
    if mesh is not None:
        from jax.sharding import PartitionSpec

        k_spec, rep = PartitionSpec(distributed.data_axis(mesh)), PartitionSpec()
        hp_spec = k_spec if hp_stacked else rep
        in_specs = (k_spec,) * 6 + (hp_spec, hp_spec, k_spec, rep, k_spec, k_spec, rep)
        body = jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=k_spec, check_vma=False)

    def step(p, s, o, c, ok, live, hp, mask, h, arrays, ir, if_, info):
        COMPILE_COUNTER.count += 1  # runs only while tracing
        return body(p, s, o, c, ok, live, hp, mask, h, arrays, ir, if_, info)

    return jax.jit(step, donate_argnums=(0, 1, 2, 3))


# ------------------------------------------------------------------------------------- one-phase training


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
    group_size: int | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
) -> tuple[PyTree, PyTree]:
    """Train K models at once on their own example sets: :func:`run_many` with one cross-entropy phase.

    ``params`` / ``model_state`` carry a leading axis K (e.g. from ``jax.vmap(init)(keys)``), and
    ``index_sets`` is ``[K, m]``: model k trains on examples ``index_sets[k]`` (equal sizes, e.g.
    random 70 % subsets for memorization scores or LiRA shadow models), minimizing
    ``CE(f(x_i; w_k), y_i)`` over batches of ``index_sets[k]``. Model k's batches are drawn
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
    float rounding. A model that diverges is kept at its last finite epoch (see :func:`run_many`).
    ``group_size``: train the models in groups of this many, one group after another (one program each);
    model k keeps its initialisation and its batches ``(seed, k, epoch)``, so the groups give the models of
    one run over all K up to float rounding. ``None``: on CPU with ``model_mode=None``, groups of
    ``MAX_UNROLL_MODELS`` per device when K is larger (the unrolled step; vmapped convolutions are several
    times slower on XLA:CPU: 16 width-16 CNNs on 1890 Fashion-MNIST images, 14 s per epoch unrolled against
    75 s vmapped, measured once on a shared 2-core CPU), else one
    group. ``checkpoint_dir`` / ``resume``: each group checkpoints in its own folder (``models{a}-{b}``, the
    first and last model), so an interrupted run resumes after its last saved epoch and skips finished groups.
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
    k_models = index_sets.shape[0]
    if not np.issubdtype(index_sets.dtype, np.integer) or index_sets.min() < 0 or index_sets.max() >= len(data):
        raise ValueError(f"index_sets must hold integer indices in [0, {len(data)}) (the training set's size).")
    lead = {np.shape(x)[0] for x in jax.tree.leaves(params)}
    if lead != {k_models}:
        raise ValueError(f"params must have a leading axis of size K={k_models} (one set per model), got {lead}.")
    if optimizer.static_total:
        raise ValueError("train_many needs an OptimConfig or an optax.GradientTransformation, not a factory.")
    plan = Plan((Phase("train", supervised_loss),), optimizer=optimizer, epochs=epochs, batch_size=batch_size,
                name=desc)  # fmt: skip
    if seeds is not None and np.size(seeds) != k_models:
        raise ValueError(f"seeds must hold one seed per model (K={k_models}), got {np.size(seeds)}.")
    d = 1 if mesh is None else distributed.data_size(mesh)
    if group_size is None:
        cpu_unroll = model_mode is None and jax.default_backend() == "cpu"
        group_size = MAX_UNROLL_MODELS * d if cpu_unroll and k_models > MAX_UNROLL_MODELS * d else k_models
    elif isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size < 1:
        raise ValueError(f"group_size must be a whole number of models >= 1, got {group_size!r}.")
    groups = [(a, min(a + int(group_size), k_models)) for a in range(0, k_models, int(group_size))]

    def rows(v, a, b):  # per-model values (K of them) are sliced per group; one shared value is kept
        return v if v is None or np.ndim(v) == 0 or np.size(v) != k_models else np.asarray(v).reshape(-1)[a:b]

    parts = []
    for a, b in groups:
        part = (lambda t: t) if len(groups) == 1 else (lambda t, a=a, b=b: jax.tree.map(lambda x: x[a:b], t))
        ckpt = None if checkpoint_dir is None else os.path.join(os.fspath(checkpoint_dir), f"models{a}-{b - 1}")
        label = desc if len(groups) == 1 else f"{desc} [{a}:{b}]"
        # a row may repeat examples (a subset topped up to the common size): a repeat is drawn twice per epoch
        res = _run(plan, apply_fn, part(params), part(model_state), data, retain_idx=index_sets[a:b],
                   forget_idx=None, seed=seed, seeds=rows(seeds, a, b), lr=rows(lr, a, b), rho=rows(rho, a, b),
                   checkpoint_dir=ckpt, resume=resume, checkpoint_every=1, checkpoint_seconds=None,
                   progress=progress, desc=label, mesh=mesh, model_mode=model_mode, repeats_ok=True,
                   first_model=a)  # fmt: skip
        parts.append((res.params, res.model_state))
    if len(parts) == 1:
        return parts[0]
    return tuple(jax.tree.map(lambda *x: jnp.concatenate(x), *[p[i] for p in parts]) for i in (0, 1))
