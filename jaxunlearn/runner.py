"""The main job: pretrain, select a forget set, unlearn with every method, evaluate, report.

:func:`run_job` is what ``jaxunlearn run`` executes; experiments call it too. A job is a grid of
*variants* (pretraining optimizer × unlearning optimizer) times seeds. For each (pretrain, seed) the
original model and Retrain are trained once; every method then starts from the same original model.
Results per variant follow the ``results.json`` contract of ``docs/CONTRACTS.md`` and DESIGN.md; the
run directory's top-level ``results.json`` holds the first variant under ``methods`` and every variant
under ``variants``.

Never lose work: each finished (variant, seed, method) entry is appended to ``progress.json``
(atomically) and models are checkpointed with Orbax, so ``--resume`` skips what is done and resumes
unfinished training from its last checkpoint: by default every ``checkpoint_seconds`` = 30 s of training
and at the end of each training run (``checkpoint_every`` = N saves every N epochs instead; neither
is part of the settings a ``--resume`` must match). ``progress.json`` is written before any checkpoint and holds
the settings, so a ``--resume`` with other settings is refused instead of mixing two runs.

Divergence: a method whose loss or parameters stop being finite is stopped by the engine (last finite
parameters kept) and its entry's ``diverged`` is ``{"epoch", "reason"}`` (``null`` otherwise; a list per
seed with several seeds); non-finite outputs of the returned parameters are clipped for the metrics and
reported there too, so ``results.json`` always holds finite numbers and the other methods still run.

Example:
    >>> cfg = JobConfig(methods=("ft", "sharp_minmax"), seeds=1, out="runs/demo")
    >>> results = run_job(cfg)
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import difflib
import functools
import json
import numbers
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxunlearn import (
    _atomic,
    _validate,
    curvature,
    data,
    distributed,
    engine,
    methods,
    metrics,
    models,
    report,
)
from jaxunlearn.methods.common import MeanCE
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
    checkpoint_every: int | None = None
    checkpoint_seconds: float | None = 30.0
    figures: bool = True
    landscape_grid: int = 11
    devices: int | None = None
    progress: bool = True

    def validate(self) -> JobConfig:
        """Check (and normalise) every field; raise ``ValueError`` naming the bad one and how to fix it.

        Types are checked first (a config file may hold ``"rho": "big"``), then values: names against
        their registries (with the closest name suggested), positivity, the forget-set size and the
        data directory. Everything that can be checked without loading data fails here, before any
        training starts.
        """
        self._check_types()
        if self.dataset.strip().lower().startswith("tfds:"):
            if not self.dataset.strip()[5:].strip():
                raise ValueError("--dataset tfds:NAME needs a dataset name, e.g. --dataset tfds:mnist.")
        else:
            key = self.dataset.strip().lower().replace("-", "_")
            local = tuple(d for d in data.DATASETS if not d.startswith("tfds:"))
            if key not in local:
                close = difflib.get_close_matches(key, local, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"--dataset must be one of {', '.join(data.DATASETS)}, got {self.dataset!r}.{hint}")
        if self.data_dir is not None and not os.path.isdir(os.path.expanduser(self.data_dir)):
            raise FileNotFoundError(
                f"--data-dir {self.data_dir}: no such directory; pass the directory that holds the data files."
            )
        if self.model is not None:
            _validate.choice("--model", self.model, models.MODELS)
        for p in self.pretrain:
            _validate.choice("--pretrain", p, PRETRAIN_CHOICES)
        for u in self.unlearn_optimizer:
            _validate.choice("--unlearn-optimizer", u, UNLEARN_CHOICES)
        if not self.methods:
            raise ValueError("--methods is empty; name at least one method, e.g. --methods ft,sharp_minmax.")
        for m in self.methods:
            if m != "retrain" and methods.get(m).base == "retrain":
                raise ValueError(
                    f"--methods {m}: Retrain is the job's reference, run once per pretraining; "
                    "variants of it are not supported in a job (use --pretrain-epochs / --option retrain.KEY=...)."
                )
        dup = sorted({m for m in self.methods if self.methods.count(m) > 1})
        if dup:
            raise ValueError(f"--methods names {dup} more than once; list each method once.")
        for name, opts in self.method_options.items():
            if methods.VARIANT_SEP in name and name not in self.methods:
                close = difflib.get_close_matches(name, self.methods, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise ValueError(
                    f"--option {name}.*: the variant {name} is not in --methods{hint}; a variant's options apply "
                    "only to that variant, so list it in --methods."
                )
            method = methods.get(name)
            methods.resolve_options(method, opts)
            for key, value in opts.items():
                _check_option_type(name, key, value, method.defaults[key])
        _validate.choice("--forget", self.forget, data.FORGET_KINDS)
        for name in ("pretrain_epochs", "unlearn_epochs", "batch_size", "seeds", "mem_models"):
            _validate.positive_int(f"--{name.replace('_', '-')}", getattr(self, name))
        for name in ("max_train", "max_test", "width"):
            if getattr(self, name) is not None:
                _validate.positive_int(f"--{name.replace('_', '-')}", getattr(self, name))
        if self.seed < 0:
            raise ValueError(f"--seed must be an integer >= 0, got {self.seed}.")
        for name in ("pretrain_lr", "unlearn_lr", "rho", "pretrain_rho"):
            _validate.positive(f"--{name.replace('_', '-')}", getattr(self, name))
        _validate.positive("--lamb", self.lamb, allow_zero=True)
        if self.forget == "class":
            if self.forget_class is None:
                raise ValueError("--forget class needs --forget-class K (the class to forget).")
            if self.forget_class < 0:
                raise ValueError(f"--forget-class must be a class id >= 0, got {self.forget_class}.")
        else:
            fs = self.forget_size
            if not (np.isfinite(fs) and (0 < fs < 1 or (fs >= 1 and float(fs).is_integer()))):
                raise ValueError(
                    f"--forget-size must be a fraction in (0, 1) of the training set or a whole count >= 1, got {fs!r}."
                )
        if self.checkpoint_every is not None:
            _validate.positive_int("--checkpoint-every", self.checkpoint_every)
        if self.checkpoint_seconds is not None:
            _validate.positive("--checkpoint-seconds", self.checkpoint_seconds, allow_zero=True)
        if self.landscape_grid < 3:
            raise ValueError(f"--landscape-grid must be >= 3, got {self.landscape_grid}.")
        if self.devices is not None:
            if self.devices > jax.device_count():
                raise ValueError(
                    f"--devices {self.devices} asks for more devices than the {jax.device_count()} available "
                    f"({jax.devices()[0].platform}); on a CPU host call "
                    "jaxunlearn.distributed.cpu_devices(N) before any JAX computation (the jaxunlearn command "
                    "does this for --devices), or set XLA_FLAGS=--xla_force_host_platform_device_count=N."
                )
            if self.batch_size % self.devices:
                raise ValueError(f"--batch-size {self.batch_size} must be a multiple of --devices {self.devices}.")
        if self.resume and self.out is None:
            raise ValueError("--resume needs --out DIR: the directory of the run to continue.")
        if self.out is not None and os.path.exists(self.out) and not os.path.isdir(self.out):
            raise ValueError(f"--out {self.out} is an existing file; choose a directory.")
        return self

    def _check_types(self) -> None:
        """Check the type of every field (command-line values are typed by argparse, config values not)."""
        for name in ("pretrain", "unlearn_optimizer", "methods"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = tuple(v.strip() for v in value.split(",") if v.strip())
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise ValueError(
                    f"--{name.replace('_', '-')} must be a comma-separated list of names (or a list of strings), "
                    f"got {value!r}."
                )
            setattr(self, name, tuple(value))
        for name in ("dataset", "forget"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"--{name.replace('_', '-')} must be a string, got {getattr(self, name)!r}.")
        for name in ("data_dir", "model", "out"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str | os.PathLike):
                raise ValueError(f"--{name.replace('_', '-')} must be a string, got {value!r}.")
        optional = ("max_train", "max_test", "width", "forget_class", "devices", "checkpoint_every")
        for name in ("max_train", "max_test", "width", "forget_class", "mem_models", "pretrain_epochs",
                     "unlearn_epochs", "batch_size", "seeds", "seed", "landscape_grid", "devices",
                     "checkpoint_every"):  # fmt: skip
            value = getattr(self, name)
            if value is None and name in optional:
                continue
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"--{name.replace('_', '-')} must be an integer, got {value!r}.")
            setattr(self, name, int(value))
        for name in ("forget_size", "pretrain_lr", "pretrain_rho", "unlearn_lr", "rho", "lamb", "checkpoint_seconds"):
            value = getattr(self, name)
            if value is None and name == "checkpoint_seconds":
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number, got {value!r}.")
            setattr(self, name, float(value))
        for name in ("resume", "figures", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}.")
        opts = self.method_options
        if not isinstance(opts, dict) or not all(isinstance(v, dict) for v in opts.values()):
            raise ValueError(
                "method_options must map method names to {option: value} tables, "
                f"e.g. {{'sharp_minmax': {{'fraction': 0.1}}}}; got {opts!r}."
            )

    def settings(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("progress")
        return d


def _check_option_type(method: str, key: str, value, default) -> None:
    """A method option must have the type of its default (numbers for numbers, ...); None defaults take anything."""
    where = f"--option {method}.{key}"
    if default is None:
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
        what = "true or false"
    elif isinstance(default, numbers.Real):
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)
        if isinstance(default, numbers.Integral) and ok:
            ok = float(value).is_integer()
        what = "an integer" if isinstance(default, numbers.Integral) else "a finite number"
    elif isinstance(default, str):
        ok, what = isinstance(value, str), "a string"
    elif isinstance(default, list | tuple):
        ok, what = isinstance(value, list | tuple), "a list"
    else:
        return
    if not ok:
        raise ValueError(f"{where} must be {what} (default {default!r}), got {value!r}.")


def variant_label(pretrain: str, unlearn: str) -> str:
    """Directory/label of a variant, e.g. ``pretrain-sam_unlearn-sgd``."""
    return f"pretrain-{pretrain}_unlearn-{unlearn}"


def optimizer_for(kind: str, base: OptimConfig, rho: float, lamb: float = 1.0) -> OptimConfig:
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
        self.checkpointing = {"checkpoint_every": cfg.checkpoint_every, "checkpoint_seconds": cfg.checkpoint_seconds}
        self.done: dict[str, Any] = {}
        ckpt_dir = os.path.join(self.out, "checkpoints")
        has_ckpt = os.path.isdir(ckpt_dir) and bool(os.listdir(ckpt_dir))
        has_progress = os.path.exists(self.progress_path)
        if cfg.resume and has_progress:
            try:
                with open(self.progress_path) as f:
                    saved = json.load(f)
                if not isinstance(saved, dict) or not isinstance(saved.get("entries", {}), dict):
                    raise ValueError("not a progress object")
            except ValueError as exc:
                raise ValueError(
                    f"--resume: {self.progress_path} is damaged ({exc}); delete {self.out} or choose another --out."
                ) from None
            if saved.get("settings_key") != self._settings_key():
                raise ValueError(
                    f"--resume: {self.out} holds a run with different settings; use another --out or the same "
                    f"settings ({self._settings_diff(saved.get('settings_key'))})."
                )
            self.done = saved.get("entries", {})
        elif cfg.resume and has_ckpt:
            raise ValueError(
                f"--resume: {self.out} has checkpoints but no progress.json, so its settings are unknown; "
                "delete it or choose another --out."
            )
        elif not cfg.resume and (has_progress or has_ckpt):
            raise ValueError(f"{self.out} already holds a run; pass --resume to continue it or choose a new --out.")
        # Written before any checkpoint, so a later --resume can always check the settings.
        self._save()

    def _settings_diff(self, saved_key) -> str:
        try:
            old, new = json.loads(saved_key), json.loads(self._settings_key())
        except (TypeError, ValueError):
            return "the saved settings are unreadable"
        diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        return "different: " + ", ".join(f"{k} was {old.get(k)!r}, now {new.get(k)!r}" for k in diff[:5])

    def _settings_key(self) -> str:
        s = self.cfg.settings()
        for k in ("resume", "out", "figures", "landscape_grid", "checkpoint_every", "checkpoint_seconds"):
            s.pop(k, None)
        return json.dumps(s, sort_keys=True, default=str)

    def record(self, key: str, entry: dict) -> None:
        self.done[key] = report.to_jsonable(entry)
        self._save()

    def _save(self) -> None:
        _atomic_json(self.progress_path, {"settings_key": self._settings_key(), "entries": self.done})

    def ckpt(self, *parts: str) -> str:
        return os.path.join(self.out, "checkpoints", *parts)


def _atomic_json(path: str, obj) -> None:
    _atomic_text(path, json.dumps(obj, indent=1, allow_nan=False))


def _atomic_text(path: str, text: str) -> None:
    """Write ``text`` atomically (``_atomic.write_text``); only process 0 writes in multi-host runs."""
    if distributed.is_main_process():
        _atomic.write_text(path, text)


def load_dataset(cfg: JobConfig, seed: int) -> data.Dataset:
    kw: dict[str, Any] = {}
    if cfg.max_test is not None:
        kw["max_test"] = cfg.max_test
    return data.load(cfg.dataset, data_dir=cfg.data_dir, seed=seed, max_train=cfg.max_train, **kw)


def _width_kwargs(name: str, width: int | None) -> dict:
    """``--width W``: the base width of the model (its first layer), the others scaled alike."""
    if not width:
        return {}
    if name == "cnn":  # default 32: conv32-conv64-dense128
        return {"channels": (width, 2 * width), "dense": 4 * width}
    if name == "mlp":  # default 256: hidden (256, 128)
        return {"hidden": (width, max(1, width // 2))}
    if name == "resnet18":  # default 64 stem channels
        return {"width": width / 64}
    if name == "theory_cnn":  # default 10 filters per class
        return {"filters": width}
    return {"width": width}  # a user-registered model


def build_model(cfg: JobConfig, ds: data.Dataset, seed: int):
    name = cfg.model or _default_model(cfg.dataset)
    kw = _width_kwargs(name, cfg.width)
    return models.build(name, num_classes=ds.num_classes, input_shape=ds.input_shape, seed=seed, **kw)


#: How :func:`vmapped_train_fn` initialises its K models (each its own initialisation); caches of
#: memorization scores key on it, so change it whenever that changes.
MODEL_INIT_SCHEME = "per-model-init"


def vmapped_train_fn(
    cfg: JobConfig, ds: data.Dataset, apply_fn, dd: engine.DeviceData, seed: int, *, desc: str = "K models"
):
    """``train_fn(masks: bool[K, N]) -> stacked params``: K models trained together with ``engine.train_many``.

    Model k starts from its own initialisation and trains on the examples ``masks[k]`` with the job's
    pretraining recipe (SGD, ``cfg.pretrain_lr``, ``cfg.pretrain_epochs``, ``cfg.batch_size``); one
    compiled program for all K. This is the trainer the memorization scores
    (``metrics.memorization_scores``) and LiRA's shadow models (``metrics.lira_attack``) take.

    Example:
        >>> train_fn = vmapped_train_fn(cfg, ds, apply_fn, dd, seed=0)
        >>> out = metrics.lira_attack(train_fn, models.logits_fn(apply_fn, state), x, y, num_shadows=8)
    """

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
        inits = [models.split_model(build_model(cfg, ds, 10_000 * (seed + 1) + k))[1:] for k in range(len(masks))]
        stacked_p = jax.tree.map(lambda *a: jnp.stack(a), *[i[0] for i in inits])
        stacked_s = jax.tree.map(lambda *a: jnp.stack(a), *[i[1] for i in inits])
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
            desc=desc,
        )
        return p

    return train_fn


def memorization_scores(cfg, ds, apply_fn, params, state, dd, seed) -> np.ndarray:
    """Feldman–Zhang scores from ``cfg.mem_models`` models trained together in one program
    (:func:`vmapped_train_fn`: each model its own initialisation and random subset). ``params`` only
    fixes the structure. Public so experiments can cache it.
    """
    train_fn = vmapped_train_fn(cfg, ds, apply_fn, dd, seed, desc="memorization models")
    logits_fn = models.logits_fn(apply_fn, state)
    return metrics.memorization_scores(
        train_fn, logits_fn, ds.x_train, ds.y_train, num_models=cfg.mem_models, seed=seed
    )[: len(ds.y_train)]


def _forget_set(cfg, ds, seed, score_fn) -> np.ndarray:
    n = len(ds.y_train)
    size = None if cfg.forget == "class" else cfg.forget_size
    if cfg.forget == "class" and cfg.forget_class is None:
        raise ValueError("--forget class needs --forget-class K (the class to forget).")
    if size is not None and size >= 1 and size > n:
        raise ValueError(
            f"--forget-size {int(size)} is larger than the training set ({n} examples after --max-train and the "
            "validation split); choose a smaller count or a fraction in (0, 1)."
        )
    if cfg.forget == "class" and not 0 <= cfg.forget_class < ds.num_classes:
        raise ValueError(
            f"--forget-class {cfg.forget_class} is not a class of {ds.name} (classes 0..{ds.num_classes - 1})."
        )
    scores = score_fn() if cfg.forget in ("high", "low", "mid", "mix") else None
    if size is not None and float(size).is_integer():
        size = int(size)
    return data.select_forget(ds.y_train, cfg.forget, size, seed=seed, scores=scores, class_id=cfg.forget_class)


def _eval_split(apply_fn, params, state, x, y, mesh=None) -> dict:
    """Logits and accuracy on one split; non-finite logits (a model blown up by a huge learning rate)
    are clipped to finite values so the metrics stay defined, and reported as ``nonfinite``."""
    out = engine.evaluate(apply_fn, params, state, x, y, mesh=mesh)
    logits = np.asarray(out["logits"], np.float32)
    finite = bool(np.isfinite(logits).all())
    if not finite:
        big = np.float32(1e30)
        logits = np.nan_to_num(logits, nan=0.0, posinf=big, neginf=-big)
    return {"logits": logits, "accuracy": float((logits.argmax(-1) == np.asarray(y)).mean()), "finite": finite}


def _divergence(res, nonfinite_outputs: bool) -> dict | None:
    """The engine's divergence report, extended when the returned parameters give non-finite outputs."""
    div = dict(res.diverged) if res.diverged else None
    if nonfinite_outputs:
        note = "the parameters it returns give non-finite outputs (they were clipped for the metrics)"
        if div is None:
            div = {"epoch": len(res.history), "reason": note}
        else:
            div["reason"] = f"{div.get('reason', 'diverged')}; {note}"
    return div


def evaluate_split_metrics(apply_fn, params, state, ds, forget_idx, retain_idx, seed, mesh=None) -> dict:
    """Forget/retain/test accuracy and MIA-efficacy (SalUn confidence attack, retain vs test shadows)."""
    ev = functools.partial(_eval_split, mesh=mesh)
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
    return {
        "forget_acc": f["accuracy"],
        "retain_acc": r["accuracy"],
        "test_acc": t["accuracy"],
        "mia": mia["mia"],
        "nonfinite_outputs": not (f["finite"] and r["finite"] and t["finite"]),
    }


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
    mesh = distributed.make_mesh(cfg.devices) if cfg.devices else None
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
            ds = load_dataset(cfg, seed)
            dd = engine.DeviceData.from_numpy(ds.x_train, ds.y_train)
            apply_fn, init_params, init_state = models.split_model(build_model(cfg, ds, seed))

            def init_fn(k, _cfg=cfg, _ds=ds):
                _, p, st = models.split_model(build_model(_cfg, _ds, k))
                return p, st

            # The forget set depends only on the data and the initial model (memorization scores), so it
            # is chosen before any training: a bad --forget-size fails at once.
            forget_idx = _forget_set(
                cfg,
                ds,
                seed,
                functools.partial(memorization_scores, cfg, ds, apply_fn, init_params, init_state, dd, seed),
            )
            retain_idx = data.retain_indices(len(ds.y_train), forget_idx)
            if retain_idx.size == 0:
                raise ValueError(
                    f"the forget set holds all {len(ds.y_train)} training examples, so nothing is left to retain; "
                    "choose a smaller --forget-size."
                )
            for pre in cfg.pretrain:
                pre_cfg = optimizer_for(pre, pre_base, cfg.pretrain_rho)
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
                    **job.checkpointing,
                    mesh=mesh,
                    progress=cfg.progress,
                    desc=f"pretrain ({pre})",
                )
                bar.update(1)
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
                    entry = evaluate_split_metrics(
                        apply_fn, orig.params, orig.model_state, ds, forget_idx, retain_idx, seed, mesh
                    )
                    entry.update(_timing(orig))
                    entry["diverged"] = _divergence(orig, entry.pop("nonfinite_outputs"))
                    job.record(key_o, entry)
                key_r = f"{seed}/{pre}/retrain"
                retrain_res = None
                if key_r not in job.done:
                    ctx = methods.Context(
                        optimizer=un_base, options=dict(cfg.method_options.get("retrain", {})), **ctx_common
                    )
                    retrain_res = engine.unlearn(
                        "retrain",
                        ctx,
                        checkpoint_dir=job.ckpt(f"seed{seed}", f"pretrain-{pre}", "retrain"),
                        resume=True,
                        **job.checkpointing,
                        progress=cfg.progress,
                        mesh=mesh,
                    )
                    entry = evaluate_split_metrics(
                        apply_fn, retrain_res.params, retrain_res.model_state, ds, forget_idx, retain_idx, seed, mesh
                    )
                    entry.update(_timing(retrain_res))
                    entry["diverged"] = _divergence(retrain_res, entry.pop("nonfinite_outputs"))
                    job.record(key_r, entry)
                bar.update(1)
                ref = job.done[key_r]
                for un in cfg.unlearn_optimizer:
                    label = variant_label(pre, un)
                    un_cfg = optimizer_for(un, un_base, cfg.rho, cfg.lamb)
                    for name in method_list:
                        key = f"{seed}/{pre}/{un}/{name}"
                        bar.set_postfix_str(f"seed {seed} {label} {name}")
                        wants_figure = (
                            cfg.figures
                            and s == 0
                            and pre == cfg.pretrain[0]
                            and un == cfg.unlearn_optimizer[0]
                            and name == _figure_method(method_list)
                        )
                        if key not in job.done or wants_figure:
                            # Resumes from the method's last checkpoint; a method finished before an
                            # interruption is restored from its final checkpoint (for the figures).
                            ctx = methods.Context(
                                optimizer=un_cfg, options=dict(cfg.method_options.get(name, {})), **ctx_common
                            )
                            res = engine.unlearn(
                                name,
                                ctx,
                                checkpoint_dir=job.ckpt(f"seed{seed}", label, name),
                                resume=True,
                                **job.checkpointing,
                                progress=cfg.progress,
                                mesh=mesh,
                            )
                            if key not in job.done:
                                entry = evaluate_split_metrics(
                                    apply_fn, res.params, res.model_state, ds, forget_idx, retain_idx, seed, mesh
                                )
                                entry.update(_timing(res))
                                entry["diverged"] = _divergence(res, entry.pop("nonfinite_outputs"))
                                entry.update({f"info_{k}": v for k, v in res.info.items()})
                                job.record(key, entry)
                            if wants_figure:
                                extras[label] = {"params": res.params, "state": res.model_state, "name": name}
                        bar.update(1)
                    per_variant.setdefault(label, []).append(variant_entries(job.done, seed, pre, un, method_list, ref))
                if cfg.figures and s == 0 and pre == cfg.pretrain[0]:
                    label0 = variant_label(pre, cfg.unlearn_optimizer[0])
                    fig = extras.get(label0)
                    if fig is not None and distributed.is_main_process():
                        _figures(cfg, ds, apply_fn, orig, fig, forget_idx, retain_idx, os.path.join(cfg.out, "figures"))
    finally:
        bar.close()
    return _write_all(cfg, per_variant, time.perf_counter() - t_job)


def _timing(res) -> dict:
    """An entry's wall time and the part of it spent tracing and compiling."""
    return {"seconds": res.seconds, "compile_seconds": res.compile_seconds}


def _figure_method(method_list) -> str:
    for m in ("sharp_minmax", "neggrad", "ft"):
        if m in method_list:
            return m
    return method_list[0] if method_list else ""


def variant_entries(done, seed, pre, un, method_list, ref) -> dict:
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
        if len(per_seed) > 1:  # one divergence report per seed (null where the seed ran normally)
            for name in merged:
                reports = [ps[name].get("diverged") for ps in per_seed]
                merged[name]["diverged"] = reports if any(r is not None for r in reports) else None
        settings = {**cfg.settings(), "variant": label, "seeds_run": len(per_seed)}
        vdir = os.path.join(cfg.out, label)
        if distributed.is_main_process():
            report.write_results(vdir, settings, merged)
        if cfg.figures and distributed.is_main_process():
            report.plot_bars({"methods": merged}, os.path.join(vdir, "bars.png"), title=label)
        _atomic_text(os.path.join(vdir, "table.md"), report.markdown_table({"methods": merged}, columns=_TABLE_COLUMNS))
        variants[label] = {"settings": settings, "methods": merged}
    first = next(iter(variants.values()))
    top = {
        "settings": {**cfg.settings(), "variants": list(variants), "seconds": seconds},
        "methods": first["methods"],
        "variants": variants,
    }
    report.validate_results(top)
    _atomic_json(os.path.join(cfg.out, "results.json"), report.to_jsonable(top))
    _atomic_text(os.path.join(cfg.out, "table.md"), format_tables(top))
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
    """Feature plot (before/after), entanglement, and the forget-loss landscape with its top Hessian
    eigenvalue and trace at the original and the unlearned parameters (``figures/analysis.json``)."""
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
    surfaces, summary = {}, {}
    d1, d2 = metrics.random_directions(orig.params, jax.random.key(cfg.seed))
    fb = {"x": jnp.asarray(ds.x_train[forget_idx[:256]]), "y": jnp.asarray(ds.y_train[forget_idx[:256]])}
    for tag, p, st in (("original", orig.params, orig.model_state), (fig["name"], fig["params"], fig["state"])):
        # forget CE in eval mode; MeanCE compares equal for the same apply_fn and state arrays, so for a
        # model without state (the CNN, the MLP) both points share the compiled curvature programs
        ce = MeanCE(apply_fn, st)
        a, b, z = metrics.loss_surface(ce, p, d1, d2, num=cfg.landscape_grid, batch=fb)
        surfaces[f"{tag}: forget loss"] = z
        summary[tag] = {
            "landscape": metrics.sharpness_summary(z, a, b),
            "top_eigenvalue": float(curvature.top_eigenvalue(ce, p, fb, jax.random.key(cfg.seed), 20)),
            "hessian_trace": float(curvature.hessian_trace(ce, p, fb, jax.random.key(cfg.seed + 1), 16)),
        }
    metrics.plot_surface(a, b, surfaces, os.path.join(out_dir, "landscape_forget.png"))
    _atomic_json(
        os.path.join(out_dir, "analysis.json"),
        report.to_jsonable({"entanglement": ent, "forget_loss_curvature": summary}),
    )
