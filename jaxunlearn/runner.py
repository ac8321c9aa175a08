"""The main job: pretrain, select a forget set, unlearn with every method, evaluate, report.

:func:`run_job` is what ``jaxunlearn run`` executes; experiments call it too. A job is a grid of
*variants* (pretraining optimizer × unlearning optimizer) times seeds. For each (pretrain, seed) the
original model and Retrain are trained once; every method then starts from the same original model.
Results per variant follow the ``results.json`` contract of ``docs/CONTRACTS.md`` and DESIGN.md; the
run directory's top-level ``results.json`` holds the first variant under ``methods`` and every variant
under ``variants``.

Never lose work: each finished (variant, seed, method) entry is appended to ``progress.json``
(atomically) and models are checkpointed with Orbax, so ``--resume`` skips what is done and resumes
unfinished training from its last epoch.

Example:
    >>> cfg = JobConfig(methods=("ft", "sharp_minmax"), seeds=1, out="runs/demo")
    >>> results = run_job(cfg)
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxunlearn import _validate, data, engine, methods, metrics, models, report
from jaxunlearn.plan import OptimConfig

__all__ = ["JobConfig", "run_job", "variant_label", "UNLEARN_CHOICES", "PRETRAIN_CHOICES"]

PRETRAIN_CHOICES = ("sgd", "sam", "asam")
UNLEARN_CHOICES = ("sgd", "sam", "asam")
DEFAULT_METHODS = (
    "retrain",
    "ft",
    "ga",
    "neggrad",
    "rl",
    "scrub",
    "salun",
    "l1_sparse",
    "sharp_minmax",
    "ssd",
    "hessian_select",
)


@dataclasses.dataclass
class JobConfig:
    """Settings of a job (every field is a ``jaxunlearn run`` option; see ``jaxunlearn run --help``)."""

    dataset: str = "digits"
    data_dir: str | None = None
    max_train: int | None = None
    max_test: int | None = None
    model: str | None = None
    width: int | None = None
    forget: str = "random"
    forget_size: float = 0.1
    forget_class: int | None = None
    mem_models: int = 8
    pretrain: tuple[str, ...] = ("sgd", "sam")
    pretrain_lr: float = 0.05
    pretrain_epochs: int = 15
    pretrain_rho: float = 0.1
    unlearn_optimizer: tuple[str, ...] = ("sgd", "sam")
    unlearn_lr: float = 0.01
    unlearn_epochs: int = 5
    rho: float = 0.1
    lamb: float = 1.0
    batch_size: int = 64
    methods: tuple[str, ...] = DEFAULT_METHODS
    method_options: dict = dataclasses.field(default_factory=dict)
    seeds: int = 1
    seed: int = 0
    out: str | None = None
    resume: bool = False
    figures: bool = True
    landscape_grid: int = 11
    progress: bool = True

    def validate(self) -> JobConfig:
        """Check every field; raise ``ValueError`` naming the bad one and how to fix it."""
        for name in ("pretrain", "unlearn_optimizer", "methods"):
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, tuple(v.strip() for v in value.split(",") if v.strip()))
        for p in self.pretrain:
            _validate.choice("--pretrain", p, PRETRAIN_CHOICES)
        for u in self.unlearn_optimizer:
            _validate.choice("--unlearn-optimizer", u, UNLEARN_CHOICES)
        if not self.methods:
            raise ValueError("--methods is empty; name at least one method, e.g. --methods ft,sharp_minmax.")
        for m in self.methods:
            methods.get(m)
        for name, opts in self.method_options.items():
            methods.resolve_options(methods.get(name), opts)
        _validate.choice("--forget", self.forget, data.FORGET_KINDS)
        for name in ("pretrain_epochs", "unlearn_epochs", "batch_size", "seeds", "mem_models"):
            _validate.positive_int(f"--{name.replace('_', '-')}", getattr(self, name))
        for name in ("pretrain_lr", "unlearn_lr", "rho", "pretrain_rho"):
            _validate.positive(f"--{name.replace('_', '-')}", getattr(self, name))
        _validate.positive("--lamb", self.lamb, allow_zero=True)
        if self.forget != "class":
            _validate.positive("--forget-size", self.forget_size)
        if self.landscape_grid < 3:
            raise ValueError(f"--landscape-grid must be >= 3, got {self.landscape_grid}.")
        return self

    def settings(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("progress")
        return d


def variant_label(pretrain: str, unlearn: str) -> str:
    """Directory/label of a variant, e.g. ``pretrain-sam_unlearn-sgd``."""
    return f"pretrain-{pretrain}_unlearn-{unlearn}"


def _optim(kind: str, base: OptimConfig, rho: float, lamb: float = 1.0) -> OptimConfig:
    if kind == "sgd":
        return base
    return dataclasses.replace(base, sam=kind, rho=rho, lamb=lamb)


def _default_model(dataset: str) -> str:
    return "theory_cnn" if dataset == "synthetic" else "cnn"


class _Job:
    """State shared by the steps of one job (internal)."""

    def __init__(self, cfg: JobConfig):
        self.cfg = cfg
        self.out = cfg.out
        os.makedirs(self.out, exist_ok=True)
        self.progress_path = os.path.join(self.out, "progress.json")
        self.done: dict[str, Any] = {}
        if cfg.resume and os.path.exists(self.progress_path):
            with open(self.progress_path) as f:
                saved = json.load(f)
            if saved.get("settings_key") != self._settings_key():
                raise ValueError(
                    f"--resume: {self.out} holds a run with different settings; use another --out or the same "
                    "settings (compare with its results/progress files)."
                )
            self.done = saved.get("entries", {})
        elif os.path.exists(self.progress_path) and not cfg.resume:
            raise ValueError(
                f"{self.out} already holds a run (progress.json); pass --resume to continue it or choose a new --out."
            )

    def _settings_key(self) -> str:
        s = self.cfg.settings()
        for k in ("resume", "out", "figures", "landscape_grid"):
            s.pop(k, None)
        return json.dumps(s, sort_keys=True, default=str)

    def record(self, key: str, entry: dict) -> None:
        self.done[key] = report.to_jsonable(entry)
        _atomic_json(self.progress_path, {"settings_key": self._settings_key(), "entries": self.done})

    def ckpt(self, *parts: str) -> str:
        return os.path.join(self.out, "checkpoints", *parts)


def _atomic_json(path: str, obj) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _load_dataset(cfg: JobConfig, seed: int) -> data.Dataset:
    kw: dict[str, Any] = {}
    if cfg.max_test is not None:
        kw["max_test"] = cfg.max_test
    return data.load(cfg.dataset, data_dir=cfg.data_dir, seed=seed, max_train=cfg.max_train, **kw)


def _build(cfg: JobConfig, ds: data.Dataset, seed: int):
    name = cfg.model or _default_model(cfg.dataset)
    kw = {"width": cfg.width} if cfg.width else {}
    return models.build(name, num_classes=ds.num_classes, input_shape=ds.input_shape, seed=seed, **kw)


def _memorization(cfg, ds, apply_fn, params, state, dd, seed) -> np.ndarray:
    """Feldman–Zhang scores from ``cfg.mem_models`` models trained together with vmap."""
    n = len(ds.y_train)

    def train_fn(masks):
        masks = np.asarray(masks, bool)
        size = int(masks.sum(1).max())
        rng = np.random.default_rng(seed + 99)
        sets = []
        for row in masks:
            idx = np.flatnonzero(row)
            if idx.size < size:  # equal sizes for vmap: top up with repeats of the model's own examples
                idx = np.concatenate([idx, rng.choice(idx, size - idx.size)])
            sets.append(idx)
        k = masks.shape[0]
        stacked_p = jax.tree.map(lambda a: jnp.stack([a] * k), params)
        stacked_s = jax.tree.map(lambda a: jnp.stack([a] * k), state)
        p, _ = engine.train_many(
            apply_fn,
            stacked_p,
            stacked_s,
            dd,
            np.stack(sets),
            optimizer=OptimConfig(lr=cfg.pretrain_lr),
            epochs=cfg.pretrain_epochs,
            batch_size=cfg.batch_size,
            seed=seed,
            progress=cfg.progress,
            desc="memorization models",
        )
        return p

    logits_fn = models.logits_fn(apply_fn, state)
    return metrics.memorization_scores(
        train_fn, logits_fn, ds.x_train, ds.y_train, num_models=cfg.mem_models, seed=seed
    )[:n]


def _forget_set(cfg, ds, seed, score_fn) -> np.ndarray:
    scores = score_fn() if cfg.forget in ("high", "low", "mid", "mix") else None
    size = None if cfg.forget == "class" else cfg.forget_size
    if cfg.forget == "class" and cfg.forget_class is None:
        raise ValueError("--forget class needs --forget-class K (the class to forget).")
    return data.select_forget(ds.y_train, cfg.forget, size, seed=seed, scores=scores, class_id=cfg.forget_class)


def _evaluate(apply_fn, params, state, ds, forget_idx, retain_idx, seed) -> dict:
    ev = engine.evaluate
    f = ev(apply_fn, params, state, ds.x_train[forget_idx], ds.y_train[forget_idx])
    r = ev(apply_fn, params, state, ds.x_train[retain_idx], ds.y_train[retain_idx])
    t = ev(apply_fn, params, state, ds.x_test, ds.y_test)
    mia = metrics.mia_efficacy_from_logits(
        r["logits"],
        ds.y_train[retain_idx],
        t["logits"],
        ds.y_test,
        f["logits"],
        ds.y_train[forget_idx],
        seed=seed,
        max_shadow=2000,
        attacks=("confidence",),
    )
    return {"forget_acc": f["accuracy"], "retain_acc": r["accuracy"], "test_acc": t["accuracy"], "mia": mia["mia"]}


def _finish_entry(entry: dict, ref: dict) -> dict:
    entry["tow"] = metrics.tow(entry, ref)
    entry["tow_signed"] = metrics.tow(entry, ref, signed=True)
    entry["tow_mia"] = metrics.tow_mia(entry, ref)
    entry["avg_gap"] = metrics.average_gap(entry, ref)
    return entry


def run_job(cfg: JobConfig) -> dict:
    """Run the whole job described by ``cfg``; return the top-level results object (also written).

    Example:
        >>> res = run_job(JobConfig(methods=("ft",), pretrain=("sgd",), unlearn_optimizer=("sgd",)))
        >>> res["methods"]["ft"]["tow"]
    """
    cfg.validate()
    if cfg.out is None:
        cfg.out = os.path.join("runs", _dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    job = _Job(cfg)
    t_job = time.perf_counter()
    method_list = [m for m in cfg.methods if m != "retrain"]
    n_tasks = cfg.seeds * len(cfg.pretrain) * (2 + len(method_list) * len(cfg.unlearn_optimizer))
    bar = tqdm(total=n_tasks, desc="jaxunlearn run", disable=not cfg.progress, dynamic_ncols=True)
    per_variant: dict[str, list[dict]] = {}
    extras: dict[str, dict] = {}
    pre_base = OptimConfig(lr=cfg.pretrain_lr)
    un_base = engine.UNLEARN_DEFAULT
    un_base = dataclasses.replace(un_base, lr=cfg.unlearn_lr)
    try:
        for s in range(cfg.seeds):
            seed = cfg.seed + s
            ds = _load_dataset(cfg, seed)
            dd = engine.DeviceData.from_numpy(ds.x_train, ds.y_train)
            apply_fn, init_params, init_state = models.split_model(_build(cfg, ds, seed))

            def init_fn(k, _cfg=cfg, _ds=ds):
                _, p, st = models.split_model(_build(_cfg, _ds, k))
                return p, st

            forget_idx = None
            for pre in cfg.pretrain:
                pre_cfg = _optim(pre, pre_base, cfg.pretrain_rho)
                bar.set_postfix_str(f"seed {seed} pretrain {pre}")
                orig = engine.train(
                    apply_fn,
                    init_params,
                    init_state,
                    dd,
                    optimizer=pre_cfg,
                    epochs=cfg.pretrain_epochs,
                    batch_size=cfg.batch_size,
                    seed=seed,
                    checkpoint_dir=job.ckpt(f"seed{seed}", f"pretrain-{pre}", "original"),
                    resume=True,
                    progress=cfg.progress,
                    desc=f"pretrain ({pre})",
                )
                bar.update(1)
                if forget_idx is None:
                    forget_idx = _forget_set(
                        cfg,
                        ds,
                        seed,
                        functools.partial(_memorization, cfg, ds, apply_fn, init_params, init_state, dd, seed),
                    )
                    retain_idx = data.retain_indices(len(ds.y_train), forget_idx)
                ctx_common = dict(
                    apply_fn=apply_fn,
                    params=orig.params,
                    model_state=orig.model_state,
                    x=dd.x,
                    y=dd.y,
                    retain_idx=retain_idx,
                    forget_idx=forget_idx,
                    num_classes=ds.num_classes,
                    epochs=cfg.unlearn_epochs,
                    batch_size=cfg.batch_size,
                    seed=seed,
                    init_fn=init_fn,
                    pretrain_optimizer=pre_cfg,
                    pretrain_epochs=cfg.pretrain_epochs,
                )
                # Original and Retrain depend only on the pretraining recipe.
                key_o = f"{seed}/{pre}/original"
                if key_o not in job.done:
                    entry = _evaluate(apply_fn, orig.params, orig.model_state, ds, forget_idx, retain_idx, seed)
                    entry["seconds"] = orig.seconds
                    job.record(key_o, entry)
                key_r = f"{seed}/{pre}/retrain"
                retrain_res = None
                if key_r not in job.done:
                    ctx = methods.Context(optimizer=un_base, **ctx_common)
                    retrain_res = engine.unlearn(
                        "retrain",
                        ctx,
                        checkpoint_dir=job.ckpt(f"seed{seed}", f"pretrain-{pre}", "retrain"),
                        resume=True,
                        progress=cfg.progress,
                    )
                    entry = _evaluate(
                        apply_fn, retrain_res.params, retrain_res.model_state, ds, forget_idx, retain_idx, seed
                    )
                    entry["seconds"] = retrain_res.seconds
                    job.record(key_r, entry)
                bar.update(1)
                ref = job.done[key_r]
                for un in cfg.unlearn_optimizer:
                    label = variant_label(pre, un)
                    un_cfg = _optim(un, un_base, cfg.rho, cfg.lamb)
                    for name in method_list:
                        key = f"{seed}/{pre}/{un}/{name}"
                        bar.set_postfix_str(f"seed {seed} {label} {name}")
                        if key not in job.done:
                            ctx = methods.Context(
                                optimizer=un_cfg, options=dict(cfg.method_options.get(name, {})), **ctx_common
                            )
                            res = engine.unlearn(
                                name,
                                ctx,
                                checkpoint_dir=job.ckpt(f"seed{seed}", label, name),
                                resume=True,
                                progress=cfg.progress,
                            )
                            entry = _evaluate(apply_fn, res.params, res.model_state, ds, forget_idx, retain_idx, seed)
                            entry["seconds"] = res.seconds
                            entry["diverged"] = res.diverged
                            entry.update({f"info_{k}": v for k, v in res.info.items()})
                            job.record(key, entry)
                            if cfg.figures and s == 0 and pre == cfg.pretrain[0] and un == cfg.unlearn_optimizer[0]:
                                if name == _figure_method(method_list):
                                    extras[label] = {"params": res.params, "state": res.model_state, "name": name}
                        bar.update(1)
                    per_variant.setdefault(label, []).append(
                        _variant_methods(job.done, seed, pre, un, method_list, ref)
                    )
                if cfg.figures and s == 0 and pre == cfg.pretrain[0]:
                    label0 = variant_label(pre, cfg.unlearn_optimizer[0])
                    fig = extras.get(label0)
                    if fig is not None:
                        _figures(cfg, ds, apply_fn, orig, fig, forget_idx, retain_idx, os.path.join(cfg.out, "figures"))
    finally:
        bar.close()
    return _write_all(cfg, per_variant, time.perf_counter() - t_job)


def _figure_method(method_list) -> str:
    for m in ("sharp_minmax", "neggrad", "ft"):
        if m in method_list:
            return m
    return method_list[0] if method_list else ""


def _variant_methods(done, seed, pre, un, method_list, ref) -> dict:
    out = {
        "original": _finish_entry(dict(done[f"{seed}/{pre}/original"]), ref),
        "retrain": _finish_entry(dict(done[f"{seed}/{pre}/retrain"]), ref),
    }
    for name in method_list:
        entry = dict(done[f"{seed}/{pre}/{un}/{name}"])
        entry = _finish_entry(entry, ref)
        entry["speedup"] = metrics.speedup(entry["seconds"], ref["seconds"])
        out[name] = entry
    return out


def _write_all(cfg: JobConfig, per_variant: dict[str, list[dict]], seconds: float) -> dict:
    variants = {}
    for label, per_seed in per_variant.items():
        merged = per_seed[0] if len(per_seed) == 1 else metrics.aggregate_seeds(per_seed)
        settings = {**cfg.settings(), "variant": label, "seeds_run": len(per_seed)}
        vdir = os.path.join(cfg.out, label)
        report.write_results(vdir, settings, merged)
        if cfg.figures:
            report.plot_bars({"methods": merged}, os.path.join(vdir, "bars.png"), title=label)
        with open(os.path.join(vdir, "table.md"), "w") as f:
            f.write(report.markdown_table({"methods": merged}, columns=_TABLE_COLUMNS))
        variants[label] = {"settings": settings, "methods": merged}
    first = next(iter(variants.values()))
    top = {
        "settings": {**cfg.settings(), "variants": list(variants), "seconds": seconds},
        "methods": first["methods"],
        "variants": variants,
    }
    report.validate_results(top)
    _atomic_json(os.path.join(cfg.out, "results.json"), report.to_jsonable(top))
    with open(os.path.join(cfg.out, "table.md"), "w") as f:
        f.write(format_tables(top))
    return top


_TABLE_COLUMNS = ("forget_acc", "retain_acc", "test_acc", "mia", "tow", "seconds")


def format_tables(results: dict) -> str:
    """Markdown tables of every variant of a run (or of a single-variant results object)."""
    variants = results.get("variants") or {"results": {"methods": results["methods"]}}
    parts = []
    for label, v in variants.items():
        parts.append(f"### {label}\n\n" + report.markdown_table({"methods": v["methods"]}, columns=_TABLE_COLUMNS))
    return "\n".join(parts)


def _figures(cfg, ds, apply_fn, orig, fig, forget_idx, retain_idx, out_dir):
    """Feature plot (before/after) and loss landscapes (original vs the figure method) on F and test."""
    os.makedirs(out_dir, exist_ok=True)
    feats = models.features_fn(apply_fn, orig.model_state)
    feats_after = models.features_fn(apply_fn, fig["state"])
    rng = np.random.default_rng(cfg.seed)
    r_sub = rng.choice(retain_idx, min(600, retain_idx.size), replace=False)
    t_sub = rng.choice(len(ds.y_test), min(400, len(ds.y_test)), replace=False)
    sets = {"retain": ds.x_train[r_sub], "forget": ds.x_train[forget_idx[:400]], "test": ds.x_test[t_sub]}
    before = {k: metrics.features.batched_apply(feats, orig.params, v) for k, v in sets.items()}
    after = {k: metrics.features.batched_apply(feats_after, fig["params"], v) for k, v in sets.items()}
    metrics.plot_features(
        before,
        after,
        os.path.join(out_dir, "features.png"),
        panel_titles=("Original model", f"After {fig['name']}"),
    )
    ent = {
        "original": metrics.entanglement_from_features(before["retain"], before["forget"]),
        fig["name"]: metrics.entanglement_from_features(after["retain"], after["forget"]),
    }
    surfaces = {}
    d1, d2 = metrics.random_directions(orig.params, jax.random.key(cfg.seed))
    xf, yf = jnp.asarray(ds.x_train[forget_idx[:256]]), jnp.asarray(ds.y_train[forget_idx[:256]])
    for tag, p, st in (("original", orig.params, orig.model_state), (fig["name"], fig["params"], fig["state"])):

        def loss(q, batch, st=st):
            logits, _ = apply_fn(q, st, batch[0], train=False)
            from jaxunlearn import objectives

            return objectives.cross_entropy(logits, batch[1])

        a, b, z = metrics.loss_surface(loss, p, d1, d2, num=cfg.landscape_grid, batch=(xf, yf))
        surfaces[f"{tag}: forget loss"] = z
    metrics.plot_surface(a, b, surfaces, os.path.join(out_dir, "landscape_forget.png"))
    with open(os.path.join(out_dir, "entanglement.json"), "w") as f:
        json.dump(ent, f, indent=1)
