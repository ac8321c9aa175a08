"""The main job: pretrain, select a forget set, unlearn with every method, evaluate, report.

:func:`run_job` is what ``jaxunlearn run`` executes; experiments call it too. A job is a grid of
*variants* (pretraining optimizer × unlearning optimizer) times seeds. For each (pretrain, seed) the
original model and Retrain are trained once; every method then starts from the same original model.
Results per variant follow the ``results.json`` contract of ``docs/CONTRACTS.md`` and DESIGN.md; the
run directory's top-level ``results.json`` holds the first variant under ``methods`` and every variant
under ``variants``.

Each setting of a job is one :class:`JobConfig` field whose metadata holds its help text, choices, command-line
flag and check; :func:`job_options` reads them, and the ``jaxunlearn run`` parser is generated from it.

Never lose work: each finished (variant, seed, method) entry is appended to ``progress.json``
(atomically, by :class:`Progress`) and models are checkpointed with Orbax, so ``--resume`` skips what is
done and resumes unfinished training from its last checkpoint: by default every ``checkpoint_seconds`` = 30 s
of training and at the end of each training run (``checkpoint_every`` = N saves every N epochs instead;
neither is part of the settings a ``--resume`` must match). ``progress.json`` is written before any checkpoint
and holds the settings, so a ``--resume`` with other settings is refused instead of mixing two runs.

Divergence: a method whose loss or parameters stop being finite is stopped by the engine (last finite
parameters kept) and its entry's ``diverged`` is ``{"epoch", "reason"}`` (``null`` otherwise; a list per
seed with several seeds); non-finite outputs of the returned parameters are clipped for the metrics and
reported there too, so ``results.json`` always holds finite numbers and the other methods still run. Those
numbers are not results: the tables show a diverged entry's cells as ``diverged`` and the bar chart leaves it out.
Collapse: a method whose retain accuracy falls more than :data:`COLLAPSE_DROP` (20 points) below the original
model's is marked ``"collapsed": true`` (a list per seed with several seeds) and ``†`` in the tables
(:func:`collapsed`).

Populations (``population=N``, ``jaxunlearn run --population N``): for the first seed and each pretraining, N
original models, N Retrain models, a second independent Retrain population and N unlearned models per (unlearning
optimizer, method), each model from its own initialisation and seed, trained as batches of models
(:mod:`jaxunlearn.population`); each population is recorded in ``progress.json`` with its forget-set confidences
and accuracies in ``OUT/population/*.npz`` (so ``--resume`` skips it; one still training resumes from its
checkpoints), then scored against Retrain with the unlearning challenge's ε-score and U-LiRA
(:func:`jaxunlearn.metrics.population.population_scores`). ``results.json`` gets a ``population`` entry per variant
(``{"models", "seed", "methods": {NAME: scores}}``), ``table.md`` its table and ``VARIANT/population_epsilons.png``
the per-example ε of each population.

A caller can pass the memorization scores and the unlearning of each method in (``run_job(cfg,
memorization_fn=..., unlearn_fn=...)``), e.g. to cache the scores across jobs or to count compilations per method.

Example (the settings of a small job and its variants; ``run_job(cfg)`` would train them and write ``runs/demo``):
    >>> cfg = JobConfig(methods=("ft", "sharp_minmax"), pretrain=("sam",), out="runs/demo").validate()
    >>> [variant_label(pre, un) for pre in cfg.pretrain for un in cfg.unlearn_optimizer]
    ['pretrain-sam_unlearn-sgd', 'pretrain-sam_unlearn-sam']
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as _dt
import difflib
import functools
import json
import numbers
import os
import typing
import warnings
from collections.abc import Callable
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
    population,
    presets,
    report,
    tuning,
)
from jaxunlearn import plan as plan_lib
from jaxunlearn.methods.common import MeanCE
from jaxunlearn.plan import OptimConfig
from jaxunlearn.record import Progress

__all__ = [
    "JobConfig",
    "JobOption",
    "Progress",
    "COLLAPSE_DROP",
    "collapsed",
    "job_options",
    "run_job",
    "variant_label",
    "UNLEARN_CHOICES",
    "PRETRAIN_CHOICES",
]

PRETRAIN_CHOICES = ("sgd", "sam", "asam")
UNLEARN_CHOICES = tuple(plan_lib.OPTIMIZER_KINDS)  # sgd (plain AdamW), SAM / ASAM and the sharpness family
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


# ------------------------------------------------------------------------------------- per-setting checks
# ``check(flag, value)`` of a setting: run by JobConfig.validate on a value of the right type (never on None).


def _check_dataset(flag: str, value: str) -> None:
    if value.strip().lower().startswith("tfds:"):
        if not value.strip()[5:].strip():
            raise ValueError(f"{flag} tfds:NAME needs a dataset name, e.g. {flag} tfds:mnist.")
        return
    key = value.strip().lower().replace("-", "_")
    local = tuple(d for d in data.DATASETS if not d.startswith("tfds:"))
    if key not in local:
        close = difflib.get_close_matches(key, local, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{flag} must be one of {', '.join(data.DATASETS)}, got {value!r}.{hint}")


def _check_directory(flag: str, value) -> None:
    if not os.path.isdir(os.path.expanduser(value)):
        raise FileNotFoundError(f"{flag} {value}: no such directory; pass the directory that holds the data files.")


def _check_methods(flag: str, names: tuple[str, ...]) -> None:
    if not names:
        raise ValueError(f"{flag} is empty; name at least one method, e.g. {flag} ft,sharp_minmax.")
    for m in names:
        if m != "retrain" and methods.get(m).base == "retrain":
            raise ValueError(
                f"{flag} {m}: Retrain is the job's reference, run once per pretraining; "
                "variants of it are not supported in a job (use --pretrain-epochs / --option retrain.KEY=...)."
            )
    dup = sorted({m for m in names if names.count(m) > 1})
    if dup:
        raise ValueError(f"{flag} names {dup} more than once; list each method once.")


def _at_least(low: int) -> Callable[[str, int], None]:
    def check(flag: str, value: int) -> None:
        if value < low:
            raise ValueError(f"{flag} must be an integer >= {low}, got {value}.")

    return check


def _at_most(high: int, low: int = 0, why: str = "") -> Callable[[str, int], None]:
    def check(flag: str, value: int) -> None:
        if value < low:
            raise ValueError(f"{flag} must be an integer >= {low}, got {value}.")
        if value > high:
            raise ValueError(f"{flag} must be an integer <= {high}{why}, got {value}.")

    return check


def _check_devices(flag: str, value: int) -> None:
    _validate.positive_int(flag, value)
    cores = distributed.usable_cores()
    if value > jax.device_count() and jax.devices()[0].platform == "cpu" and value > cores:
        raise ValueError(
            f"{flag} {value} asks for more devices than this CPU host has cores ({cores}); "
            f"use {flag} {cores} or fewer (one device per core)."
        )
    if value > jax.device_count():
        raise ValueError(
            f"{flag} {value} asks for more devices than the {jax.device_count()} available "
            f"({jax.devices()[0].platform}); on a CPU host call "
            "jaxunlearn.distributed.cpu_devices(N) before any JAX computation (the jaxunlearn command "
            "does this for --devices), or set XLA_FLAGS=--xla_force_host_platform_device_count=N."
        )


def _check_out(flag: str, value) -> None:
    if os.path.exists(value) and not os.path.isdir(value):
        raise ValueError(f"{flag} {value} is an existing file; choose a directory.")


_positive_int = _validate.positive_int
_positive = _validate.positive
_non_negative = functools.partial(_validate.positive, allow_zero=True)


def _setting(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    group: str,
    flag: str | None = None,
    choices: tuple[str, ...] | Callable[[], Any] | None = None,
    check: Callable[[str, Any], None] | None = None,
    metavar: str | None = None,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
) -> Any:
    """A :class:`JobConfig` field with everything about the setting in its metadata (read by :func:`job_options`)."""
    meta = {"help": help, "group": group, "flag": flag, "choices": choices, "check": check, "metavar": metavar}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


_DATA, _TRAIN, _UNLEARN, _RUN = "data", "model and training", "unlearning", "run"
#: The largest --population (each population's seeds are spaced by this much; see ``_population_seeds``).
MAX_POPULATION = 10_000
#: The largest --seed: seeds (and the seeds derived from them) must fit JAX's 32-bit PRNG seeds.
MAX_SEED = 10**9
#: The largest --landscape-grid: the forget-loss landscape evaluates grid^2 points (101^2 = 10,201).
MAX_LANDSCAPE_GRID = 101
#: The collapse guard: a method whose retain accuracy is more than this far (a fraction, 0.20 = 20 points) below
#: the original model's is marked ``"collapsed": true`` in ``results.json`` and ``†`` in the tables: it forgot
#: by destroying the model, and its forget accuracy and ToW are not results. See :func:`collapsed`.
COLLAPSE_DROP = 0.20
_FORGET_SIZE_DEFAULT = 0.1


def _check_population(flag: str, value: int) -> None:
    if value < 2:
        raise ValueError(
            f"{flag} must be an integer >= 2 (a population compares distributions of models), got {value}."
        )
    if value > MAX_POPULATION:
        raise ValueError(f"{flag} must be at most {MAX_POPULATION}, got {value}.")


@dataclasses.dataclass
class JobConfig:
    """Settings of a job; every field is a ``jaxunlearn run`` option, defined once here.

    A field's metadata holds the option's help text (``{choices}`` / ``{default}`` are filled in), its group in
    ``--help``, its flag when that is not ``--`` + the field name with dashes, its choices (a name, or each name
    of a comma list, must be one of them) and its check ``check(flag, value)``. The type is the annotation: a
    ``tuple[str, ...]`` setting is a comma list on the command line, a ``bool`` one a switch that sets the
    opposite of its default. :meth:`validate` runs the type checks, the per-setting checks, then the checks
    that involve several settings.

    Example:
        >>> cfg = JobConfig(methods="ft,neggrad", pretrain=["sgd"], rho=0.05).validate()
        >>> cfg.methods, cfg.pretrain, cfg.rho
        (('ft', 'neggrad'), ('sgd',), 0.05)
        >>> JobConfig(rho=0).validate()
        Traceback (most recent call last):
        ValueError: --rho must be a finite number > 0, got 0.0.
    """

    dataset: str = _setting(
        "digits",
        "{choices}; or facts: the language-model job on a generated corpus of fictitious people (--model gpt, "
        "jaxunlearn.lm_job)",
        group=_DATA,
        choices=lambda: data.DATASETS,
        check=_check_dataset,
    )
    data_dir: str | None = _setting(
        None, "directory with the data (Fashion-MNIST IDX files, TFDS data_dir)", group=_DATA, check=_check_directory
    )
    max_train: int | None = _setting(None, "use at most this many training examples", group=_DATA, check=_positive_int)
    max_test: int | None = _setting(None, "use at most this many test examples", group=_DATA, check=_positive_int)
    model: str | None = _setting(
        None,
        "{choices} (default: cnn; theory_cnn for synthetic)",
        group=_TRAIN,
        choices=lambda: tuple(sorted(models.MODELS)),
    )
    width: int | None = _setting(
        None,
        "base width: cnn first conv channels (32), mlp first hidden layer (256), resnet18 stem channels (64), "
        "theory_cnn filters (10)",
        group=_TRAIN,
        check=_positive_int,
    )
    forget: str = _setting(
        "random",
        "forget set: {choices}; high, low, mid and mix rank by memorization",
        group=_DATA,
        choices=lambda: data.FORGET_KINDS,
    )
    forget_size: float = _setting(_FORGET_SIZE_DEFAULT, "whole count >= 1, or fraction in (0, 1)", group=_DATA)
    forget_class: int | None = _setting(None, "the class to forget with --forget class", group=_DATA)
    mem_models: int = _setting(
        8,
        "models for memorization scores (>= 2: each example needs a model that saw it and one that did not)",
        group=_DATA,
        check=_at_least(2),
    )
    pretrain: tuple[str, ...] = _setting(
        ("sgd", "sam"), "comma list of {choices}", group=_TRAIN, choices=PRETRAIN_CHOICES
    )
    pretrain_lr: float = _setting(0.05, "SGD learning rate for pretraining", group=_TRAIN, check=_positive)
    pretrain_epochs: int = _setting(15, "pretraining (and Retrain) epochs", group=_TRAIN, check=_positive_int)
    pretrain_rho: float = _setting(0.1, "SAM/ASAM radius when pretraining", group=_TRAIN, check=_positive)
    unlearn_optimizer: tuple[str, ...] = _setting(
        ("sgd", "sam"),
        "comma list of {choices}; sgd is plain AdamW, looksam / gsam / rs (randomized smoothing) / gnp "
        "(gradient-norm penalty) / cr (curvature regularization) / wa (weight averaging) the sharpness family",
        group=_UNLEARN,
        choices=UNLEARN_CHOICES,
    )
    unlearn_lr: float = _setting(0.01, "AdamW learning rate for unlearning", group=_UNLEARN, check=_positive)
    unlearn_epochs: int = _setting(5, "unlearning epochs", group=_UNLEARN, check=_positive_int)
    rho: float = _setting(0.1, "SAM/ASAM radius when unlearning", group=_UNLEARN, check=_positive)
    lamb: float = _setting(1.0, "lambda in g + s*lambda*(g' - g)", group=_UNLEARN, check=_non_negative)
    batch_size: int = _setting(64, "batch size", group=_TRAIN, check=_positive_int)
    methods: tuple[str, ...] = _setting(
        DEFAULT_METHODS, "comma list of methods (see `jaxunlearn methods`)", group=_UNLEARN, check=_check_methods
    )
    method_options: dict = _setting(
        help="method option, e.g. sharp_minmax.fraction=0.1 (repeatable; see `jaxunlearn methods`); a variant "
        "METHOD@TAG in --methods takes its own options, e.g. --methods ft,ft@long --option ft@long.epochs=10",
        group=_UNLEARN,
        flag="--option",
        metavar="METHOD.KEY=VALUE",
        default_factory=dict,
    )
    tune: bool = _setting(
        False,
        "choose each method's learning rate (lr_scale) on the validation split with jaxunlearn.tuning, by a "
        "criterion that needs neither Retrain nor the test set (Retrain is not tuned)",
        group=_UNLEARN,
    )
    tune_seeds: int | None = _setting(
        None,
        "with --tune, tune on the job's first N seeds only: each later seed runs every cell at the setting chosen "
        "most often for that cell on those seeds (ties: the earlier seed's), still chosen on validation data; "
        "default: tune every seed",
        group=_UNLEARN,
        metavar="N",
        check=_positive_int,
    )
    preset: str = _setting(
        "default",
        "reference: the official sharp-unlearn code's algorithms wherever they differ from ours (ASAM without "
        "eta, Sharp MinMax's mask and learning rate; docs/REFERENCE.md); --option values still win",
        group=_UNLEARN,
        choices=tuple(presets.PRESETS),
    )
    seeds: int = _setting(1, "number of seeds; tables show mean ± std", group=_RUN, check=_positive_int)
    seed: int = _setting(0, "first seed", group=_RUN, check=_at_most(MAX_SEED))
    out: str | None = _setting(None, "output directory (default runs/<timestamp>)", group=_RUN, check=_check_out)
    resume: bool = _setting(False, "continue an interrupted run in --out", group=_RUN)
    originals: str | None = _setting(
        None,
        "a folder of original models shared by jobs that differ only in what they forget or how they unlearn: an "
        "original one job pretrained there is read back by the next (same data, model and pretraining recipe)",
        group=_RUN,
        check=_check_out,
    )
    overwrite: bool = _setting(
        False,
        "write into a non-empty --out that holds no run (its files of the same names are replaced); without it "
        "such an --out is refused",
        group=_RUN,
    )
    checkpoint_every: int | None = _setting(
        None,
        "checkpoint every N epochs instead (with --checkpoint-seconds too: whichever comes first)",
        group=_RUN,
        check=_positive_int,
    )
    checkpoint_seconds: float | None = _setting(
        30.0,
        "checkpoint a training run after the epoch that ends this many seconds after its last save, and at "
        "its end (default {default}; 0 = after every epoch)",
        group=_RUN,
        check=_non_negative,
    )
    figures: bool = _setting(True, "skip the figures", group=_RUN, flag="--no-figures")
    landscape_grid: int = _setting(
        11,
        "loss-landscape grid points per axis",
        group=_RUN,
        check=_at_most(MAX_LANDSCAPE_GRID, 3, " (the landscape costs grid^2 forward passes)"),
    )
    devices: int | None = _setting(
        None,
        "data-parallel over this many devices (one mesh; all processes' devices in multi-host runs)",
        group=_RUN,
        check=_check_devices,
    )
    progress: bool = _setting(True, "no progress bars", group=_RUN, flag="--quiet")
    population: int | None = _setting(
        None,
        "also train N models per population (originals, two independent Retrain populations, each method x "
        "unlearning optimizer; own initialisation and seed each, trained as batches of models) and score "
        "forgetting with the unlearning challenge's epsilon-score and U-LiRA (first seed only; N >= 2)",
        group=_RUN,
        metavar="N",
        check=_check_population,
    )
    population_chunk: int | None = _setting(
        None,
        "models trained per program in --population runs (default: all on accelerators, 4 per device on CPU)",
        group=_RUN,
        metavar="K",
        check=_positive_int,
    )

    def validate(self) -> JobConfig:
        """Check (and normalise) every field; raise ``ValueError`` naming the bad one and how to fix it.

        Types are checked first (a config file may hold ``"rho": "big"``), then each setting's own check
        (names against their registries with the closest name suggested, positivity, the data directory), then
        the rules that involve several settings (method options against ``methods``, the forget set,
        ``devices`` against ``batch_size``, ``resume`` needs ``out``). Everything that can be checked without
        loading data fails here, before any training starts.
        """
        self._check_types()
        for opt in job_options():
            value = getattr(self, opt.name)
            if value is None:
                continue
            if opt.check is not None:
                opt.check(opt.flag, value)
            elif opt.choices is not None:
                if isinstance(value, tuple) and not value:
                    raise ValueError(
                        f"{opt.flag} is empty; name at least one of {' | '.join(opt.choices)}, "
                        f"e.g. {opt.flag} {opt.choices[0]}."
                    )
                for v in value if isinstance(value, tuple) else (value,):
                    _validate.choice(opt.flag, v, opt.choices)
        for name, opts in self.method_options.items():
            if methods.VARIANT_SEP in name and name not in self.methods:
                close = difflib.get_close_matches(name, self.methods, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise ValueError(
                    f"--option {name}.*: the variant {name} is not in --methods{hint}; a variant's options apply "
                    "only to that variant, so list it in --methods."
                )
            method = methods.get(name)
            if set(opts) - set(method.defaults):
                methods.resolve_options(method, opts)  # names the unknown options and lists the known ones
            for key, value in opts.items():
                _check_option_type(name, key, value, method.defaults[key])
            try:
                methods.resolve_options(method, opts)
            except methods.OptionError as err:
                raise ValueError(f"--option {name}.{err.option}={err.value!r}: {err.problem}.") from None
        if self.forget == "class":
            if self.forget_class is None:
                raise ValueError("--forget class needs --forget-class K (the class to forget).")
            if self.forget_class < 0:
                raise ValueError(f"--forget-class must be a class id >= 0, got {self.forget_class}.")
            if self.forget_size != _FORGET_SIZE_DEFAULT:
                raise ValueError(
                    f"--forget-size {self.forget_size:g} does not apply with --forget class (the whole class "
                    f"{self.forget_class} is forgotten); drop --forget-size, or choose another --forget."
                )
        elif self.forget_class is not None:
            raise ValueError(
                f"--forget-class {self.forget_class} applies only with --forget class (here --forget "
                f"{self.forget}); add --forget class, or drop --forget-class."
            )
        else:
            fs = self.forget_size
            if not (np.isfinite(fs) and (0 < fs < 1 or (fs >= 1 and float(fs).is_integer()))):
                raise ValueError(
                    f"--forget-size must be a fraction in (0, 1) of the training set or a whole count >= 1, got {fs!r}."
                )
        if self.devices is not None and self.batch_size % self.devices:
            raise ValueError(f"--batch-size {self.batch_size} must be a multiple of --devices {self.devices}.")
        if self.devices is not None and self.population is not None:
            for flag, v in (("--population", self.population), ("--population-chunk", self.population_chunk)):
                if v is not None and v % self.devices:
                    raise ValueError(f"{flag} {v} must be a multiple of --devices {self.devices} (models per device).")
        if self.tune_seeds is not None and not self.tune:
            raise ValueError("--tune-seeds N needs --tune (it says on how many seeds to tune); add --tune or drop it.")
        if self.tune and self.population is not None:
            raise ValueError("--tune does not apply to --population (each model would be tuned on its own); drop one.")
        if self.population_chunk is not None and self.population is None:
            raise ValueError("--population-chunk needs --population N.")
        if self.resume and self.out is None:
            raise ValueError("--resume needs --out DIR: the directory of the run to continue.")
        return self

    def _check_types(self) -> None:
        """Check (and normalise) the type of every field against its annotation: command-line values are typed
        by argparse, values from a config file or a caller are not."""
        for opt in job_options():
            value = getattr(self, opt.name)
            if value is None and opt.optional:
                continue
            setattr(self, opt.name, _typed(opt, value))

    def settings(self) -> dict:
        """The job's settings as written to ``results.json`` (every field but ``progress``)."""
        d = dataclasses.asdict(self)
        d.pop("progress")
        return d

    def resume_settings(self) -> dict:
        """The settings a ``--resume`` must match: all but where the run goes, its figures and checkpoint schedule.

        Example:
            >>> cfg = JobConfig()
            >>> sorted(set(cfg.settings()) - set(cfg.resume_settings()))
            ['checkpoint_every', 'checkpoint_seconds', 'figures', 'landscape_grid', 'originals', 'out', 'overwrite',
             'resume']
        """
        s = self.settings()
        skip = ("resume", "overwrite", "out", "originals", "figures", "landscape_grid", "checkpoint_every",
                "checkpoint_seconds")  # fmt: skip
        for k in skip:
            s.pop(k, None)
        return s


@dataclasses.dataclass(frozen=True)
class JobOption:
    """One job setting as the command line and the checks see it (read from a :class:`JobConfig` field).

    ``type`` is ``str``, ``int``, ``float``, ``bool``, ``tuple`` (a comma list of names) or ``dict`` (method
    options, ``METHOD.KEY=VALUE`` on the command line); ``optional`` means ``None`` is allowed. ``help`` has its
    choices and default filled in; ``choices`` is resolved (registries that grow are read when asked).

    Example:
        >>> opt = next(o for o in job_options() if o.name == "unlearn_epochs")
        >>> opt.flag, opt.type, opt.default, opt.group, opt.help
        ('--unlearn-epochs', <class 'int'>, 5, 'unlearning', 'unlearning epochs (default 5)')
        >>> opt.check(opt.flag, 0)
        Traceback (most recent call last):
        ValueError: --unlearn-epochs must be an integer >= 1, got 0.
    """

    name: str
    type: type
    optional: bool
    default: Any
    flag: str
    help: str
    group: str
    choices: tuple[str, ...] | None
    check: Callable[[str, Any], None] | None
    metavar: str | None


def job_options() -> list[JobOption]:
    """Every :class:`JobConfig` setting as a :class:`JobOption`, in field order (the ``jaxunlearn run`` options).

    Read afresh on each call from the fields, so the defaults and the registries (models, datasets) in the
    help are always the current ones.

    Example:
        >>> opts = {o.name: o for o in job_options()}
        >>> opts["max_train"].flag, opts["max_train"].type, opts["max_train"].optional
        ('--max-train', <class 'int'>, True)
        >>> opts["figures"].flag, opts["method_options"].flag
        ('--no-figures', '--option')
        >>> opts["pretrain"].help
        'comma list of sgd | sam | asam (default sgd,sam)'
    """
    hints = typing.get_type_hints(JobConfig)
    out = []
    for f in dataclasses.fields(JobConfig):
        meta = f.metadata
        args = [a for a in typing.get_args(hints[f.name]) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hints[f.name]))
        kind = typing.get_origin(hints[f.name]) or hints[f.name]
        kind = args[0] if optional else kind
        choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        text = meta["help"].replace("{choices}", " | ".join(choices or ()))
        shown = _default_text(default)
        if "{default}" in text:
            text = text.replace("{default}", shown)
        elif "default" not in text and default is not None and not isinstance(default, bool | dict):
            text += f" (default {shown})"
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        out.append(JobOption(f.name, kind, optional, default, flag, text, meta["group"], choices, meta["check"],
                             meta["metavar"]))  # fmt: skip
    return out


def _default_text(value) -> str:
    """A default as ``--help`` shows it: lists comma-joined, whole floats without ``.0``."""
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _typed(opt: JobOption, value):
    """``value`` of the setting ``opt`` in its normal form, or a ``ValueError`` naming the setting and the type."""
    flag = opt.flag
    if opt.type is tuple:
        if isinstance(value, str):
            value = tuple(v.strip() for v in value.split(",") if v.strip())
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{flag} must be a comma-separated list of names (or a list of strings), got {value!r}.")
        return tuple(value)
    if opt.type is str:
        if not (isinstance(value, str) or (opt.optional and isinstance(value, os.PathLike))):
            raise ValueError(f"{flag} must be a string, got {value!r}.")
        return value
    if opt.type is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{opt.name} must be true or false, got {value!r}.")
        return value
    if opt.type is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{flag} must be an integer, got {value!r}.")
        return int(value)
    if opt.type is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
            raise ValueError(f"{flag} must be a finite number, got {value!r}.")
        return float(value)
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ValueError(
            f"{opt.name} must map method names to {{option: value}} tables, "
            f"e.g. {{'sharp_minmax': {{'fraction': 0.1}}}}; got {value!r}."
        )
    return value


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
    """Directory/label of a variant, e.g. ``pretrain-sam_unlearn-sgd``.

    Example:
        >>> variant_label("sam", "sgd")
        'pretrain-sam_unlearn-sgd'
    """
    return f"pretrain-{pretrain}_unlearn-{unlearn}"


def optimizer_for(kind: str, base: OptimConfig, rho: float, lamb: float = 1.0) -> OptimConfig:
    """The optimizer of a variant's ``kind`` (:data:`UNLEARN_CHOICES`): ``base`` itself for ``sgd``; SAM, ASAM or
    LookSAM with radius ``rho`` and ``lamb`` (the update ``base(g + λ·(g' − g))``); GSAM with radius ``rho``; the
    other kinds with their own defaults (:func:`jaxunlearn.plan.optimizer_kind`).

    Example:
        >>> base = OptimConfig(lr=0.05)
        >>> optimizer_for("sgd", base, rho=0.1) is base
        True
        >>> cfg = optimizer_for("asam", base, rho=0.2)
        >>> cfg.sam, cfg.rho, cfg.lamb, cfg.lr
        ('asam', 0.2, 1.0, 0.05)
        >>> optimizer_for("wa", base, rho=0.2).average, optimizer_for("gsam", base, rho=0.2).rho
        ('uniform', 0.2)
    """
    if kind == "sgd":
        return base
    if kind in ("sam", "asam", "looksam"):
        return plan_lib.optimizer_kind(kind, base, rho=rho, lamb=lamb)
    if kind == "gsam":
        return plan_lib.optimizer_kind(kind, base, rho=rho)
    return plan_lib.optimizer_kind(kind, base)


def _default_model(dataset: str) -> str:
    return "theory_cnn" if dataset == "synthetic" else "cnn"


def _atomic_json(path: str, obj) -> None:
    _atomic_text(path, json.dumps(obj, indent=1, allow_nan=False))


def _atomic_text(path: str, text: str) -> None:
    """Write ``text`` atomically (``_atomic.write_text``); only process 0 writes in multi-host runs."""
    if distributed.is_main_process():
        _atomic.write_text(path, text)


def load_dataset(cfg: JobConfig, seed: int) -> data.Dataset:
    """The job's data for ``seed``: ``data.load(cfg.dataset)`` with ``cfg.data_dir``, ``cfg.max_train`` and
    ``cfg.max_test`` (a validation split of 10 % of the training examples is held out).

    Example:
        >>> ds = load_dataset(JobConfig(max_train=60, max_test=40), seed=0)
        >>> ds.name, ds.x_train.shape, len(ds.y_test), ds.num_classes
        ('digits', (54, 8, 8, 1), 40, 10)
    """
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
    """A fresh model for ``ds`` initialised from ``seed``: ``cfg.model`` (default ``cnn``, ``theory_cnn`` for
    ``synthetic``) at base width ``cfg.width``, the other layers scaled alike.

    Example:
        >>> cfg = JobConfig(max_train=60, model="mlp", width=16)
        >>> ds = load_dataset(cfg, seed=0)
        >>> model = build_model(cfg, ds, seed=0)
        >>> type(model).__name__, model.hidden, models.num_params(models.split_model(model)[1])
        ('MLP', (16, 8), 1266)
    """
    name = cfg.model or _default_model(cfg.dataset)
    kw = _width_kwargs(name, cfg.width)
    return models.build(name, num_classes=ds.num_classes, input_shape=ds.input_shape, seed=seed, **kw)


#: How :func:`vmapped_train_fn` initialises its K models (each its own initialisation); caches of
#: memorization scores key on it, so change it whenever that changes.
MODEL_INIT_SCHEME = "per-model-init"


def vmapped_train_fn(
    cfg: JobConfig,
    ds: data.Dataset,
    apply_fn,
    dd: engine.DeviceData,
    seed: int,
    *,
    desc: str = "K models",
    checkpoint_dir: str | None = None,
):
    """``train_fn(masks: bool[K, N]) -> stacked params``: K models trained together with ``engine.train_many``.

    Model k starts from its own initialisation and trains on the examples ``masks[k]`` with the job's
    pretraining recipe (SGD, ``cfg.pretrain_lr``, ``cfg.pretrain_epochs``, ``cfg.batch_size``); one
    compiled program for all K (on CPU, one per group of ``engine.MAX_UNROLL_MODELS``: see
    ``engine.train_many``). ``checkpoint_dir``: the models checkpoint there every epoch and an interrupted
    call resumes. This is the trainer the memorization scores
    (``metrics.memorization_scores``) and LiRA's shadow models (``metrics.lira_attack``) take, e.g.
    ``metrics.lira_attack(train_fn, models.logits_fn(apply_fn, state), x, y, num_shadows=8)``.

    Example (two small MLPs, one epoch on 54 digits):
        >>> cfg = JobConfig(max_train=60, model="mlp", width=8, pretrain_epochs=1, batch_size=16, progress=False)
        >>> ds = load_dataset(cfg, seed=0)
        >>> apply_fn, params, state = models.split_model(build_model(cfg, ds, seed=0))
        >>> dd = engine.DeviceData.from_numpy(ds.x_train, ds.y_train)
        >>> train_fn = vmapped_train_fn(cfg, ds, apply_fn, dd, seed=0)
        >>> masks = np.ones((2, len(ds.y_train)), bool)
        >>> masks[1, :10] = False  # model 1 never sees the first 10 examples
        >>> stacked = train_fn(masks)
        >>> stacked["head"]["kernel"].shape, params["head"]["kernel"].shape  # a leading axis K = 2
        ((2, 4, 10), (4, 10))
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
            checkpoint_dir=checkpoint_dir,
            resume=checkpoint_dir is not None,
        )
        return p

    return train_fn


def memorization_details(cfg, ds, apply_fn, params, state, dd, seed) -> tuple[np.ndarray, np.ndarray]:
    """Feldman–Zhang scores and held-out accuracies ``(mem [N], heldout [N])`` from ``cfg.mem_models`` models
    trained together in one program (:func:`vmapped_train_fn`: each model its own initialisation and random
    subset). ``params`` only fixes the structure. The default ``memorization_fn`` of :func:`run_job`.
    With ``cfg.out`` the models checkpoint every epoch under ``OUT/checkpoints/memorization/seed<s>-K<k>``, so
    an interrupted job resumes its memorization models too.
    ``mem_i = mean_{k: i ∈ S_k} [f_k(x_i) = y_i] − mean_{k: i ∉ S_k} [f_k(x_i) = y_i]`` over the models'
    training subsets ``S_k``, in [−1, 1]; ``heldout_i = mean_{k: i ∉ S_k} [f_k(x_i) = y_i]``
    (``metrics.heldout_accuracy``), whose mean over a forget set estimates Retrain's forget accuracy and is the
    target ``--tune`` aims at on memorization forget sets (``tuning.forget_target``).

    Example (two small MLPs, one epoch: a toy estimate):
        >>> cfg = JobConfig(max_train=60, model="mlp", width=8, pretrain_epochs=1, batch_size=16, mem_models=2,
        ...                 progress=False)
        >>> ds = load_dataset(cfg, seed=0)
        >>> apply_fn, params, state = models.split_model(build_model(cfg, ds, seed=0))
        >>> dd = engine.DeviceData.from_numpy(ds.x_train, ds.y_train)
        >>> scores, heldout = memorization_details(cfg, ds, apply_fn, params, state, dd, seed=0)
        >>> scores.shape, bool(((scores >= -1) & (scores <= 1)).all()), bool(((heldout >= 0) & (heldout <= 1)).all())
        ((54,), True, True)
    """
    ckpt = (
        None
        if cfg.out is None
        else os.path.join(cfg.out, "checkpoints", "memorization", f"seed{seed}-K{cfg.mem_models}")
    )
    train_fn = vmapped_train_fn(cfg, ds, apply_fn, dd, seed, desc="memorization models", checkpoint_dir=ckpt)
    logits_fn = models.logits_fn(apply_fn, state)
    scores, details = metrics.memorization_scores(
        train_fn, logits_fn, ds.x_train, ds.y_train, num_models=cfg.mem_models, seed=seed, return_details=True
    )
    n = len(ds.y_train)
    return scores[:n], metrics.heldout_accuracy(details["correct"], details["masks"])[:n]


def memorization_scores(cfg, ds, apply_fn, params, state, dd, seed) -> np.ndarray:
    """The Feldman–Zhang scores ``mem [N]`` of :func:`memorization_details` (the same models and formula), for a
    ``memorization_fn`` that returns scores only.

    Example (two tiny MLPs, one epoch, on 36 digits):
        >>> cfg = JobConfig(max_train=40, model="mlp", width=4, pretrain_epochs=1, mem_models=2, progress=False)
        >>> ds = load_dataset(cfg, seed=1)
        >>> model = models.split_model(build_model(cfg, ds, seed=1))
        >>> memorization_scores(cfg, ds, *model, engine.DeviceData.from_numpy(ds.x_train, ds.y_train), seed=1).shape
        (36,)
    """
    return memorization_details(cfg, ds, apply_fn, params, state, dd, seed)[0]


def memorization_cache(path: str, compute: Callable[[], Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """Memorization scores and held-out accuracies ``(mem [N], heldout [N])`` kept on disk at ``path``, computed
    by ``compute()`` (e.g. a call of :func:`memorization_details`) only when no file holds them.

    Read order: ``path + ".npy"`` (a cache of scores alone, written before the held-out accuracies were kept:
    ``heldout`` is then None, and ``--tune`` falls back to ``FA₀ − mean mem``), then ``path + ".npz"``
    (``scores`` and ``heldout``); otherwise ``compute()``'s ``(scores, heldout)`` are written to ``path + ".npz"``
    atomically, so a killed job leaves either the whole cache or none (in a multi-host job only process 0 writes;
    every process returns the computed arrays).

    Example:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> base = os.path.join(tmp.name, "seed0")
        >>> memorization_cache(base, lambda: (np.array([0.5, 0.0]), np.array([0.25, 1.0])))[1].tolist()
        [0.25, 1.0]
        >>> memorization_cache(base, lambda: 1 / 0)[0].tolist()  # read back: compute is not called
        [0.5, 0.0]
        >>> tmp.cleanup()
    """
    if os.path.exists(path + ".npy"):
        return np.load(path + ".npy"), None
    if os.path.exists(path + ".npz"):
        with np.load(path + ".npz") as z:
            return z["scores"], z["heldout"]
    scores, heldout = (np.asarray(a) for a in compute())
    _atomic_npz(path + ".npz", {"scores": scores, "heldout": heldout})
    return scores, heldout


def _forget_set(cfg, ds, seed, score_fn) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The forget set's indices and, for memorization kinds, every training example's memorization score and, when
    the ``memorization_fn`` gives them, held-out accuracy."""
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
    scores = heldout = None
    if cfg.forget in ("high", "low", "mid", "mix"):
        scores, heldout = _memorization_output(score_fn(), n)
    if size is not None and float(size).is_integer():
        size = int(size)
    idx = data.select_forget(ds.y_train, cfg.forget, size, seed=seed, scores=scores, class_id=cfg.forget_class)
    return idx, scores, heldout


def _memorization_output(out, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """A ``memorization_fn``'s result, ``scores [N]`` or ``(scores [N], heldout [N])``, as two arrays (the second
    None when not given), checked: one finite score per training example, held-out accuracies in [0, 1]."""
    if isinstance(out, tuple) and len(out) != 2:
        raise ValueError(
            f"memorization_fn returned a tuple of {len(out)} items; return the scores [N] alone or the tuple "
            "(scores [N], heldout accuracies [N])."
        )
    scores, heldout = out if isinstance(out, tuple) else (out, None)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if scores.size != n:
        raise ValueError(
            f"memorization_fn returned {scores.size} score(s) for {n} training examples; it must return one score "
            "per example (or the tuple (scores, heldout accuracies))."
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError("memorization_fn returned non-finite scores; every example needs a finite score.")
    if heldout is not None:
        heldout = np.asarray(heldout, np.float64).reshape(-1)
        if heldout.size != n:
            raise ValueError(
                f"memorization_fn returned {heldout.size} held-out accuracies for {n} training examples; give one "
                "per example, or return the scores alone."
            )
        if not np.all((heldout >= 0) & (heldout <= 1)):
            raise ValueError("memorization_fn returned held-out accuracies outside [0, 1] (or NaN); they are "
                             "fractions of models, each in [0, 1].")  # fmt: skip
    return scores, heldout


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
    """Forget/retain/test accuracy and MIA-efficacy (SalUn confidence attack, retain vs test shadows).

    ``mia`` is the fraction of forget examples the attack, fitted on retain (members) against test
    (non-members) confidences, calls non-members; ``nonfinite_outputs`` tells whether any logits were
    non-finite (they are clipped for the metrics).

    Example (an untrained MLP):
        >>> cfg = JobConfig(max_train=60, max_test=40, model="mlp", width=8)
        >>> ds = load_dataset(cfg, seed=0)
        >>> apply_fn, params, state = models.split_model(build_model(cfg, ds, seed=0))
        >>> forget_idx, retain_idx = np.arange(5), np.arange(5, len(ds.y_train))
        >>> m = evaluate_split_metrics(apply_fn, params, state, ds, forget_idx, retain_idx, seed=0)
        >>> sorted(m), all(0 <= m[k] <= 1 for k in ("forget_acc", "retain_acc", "test_acc", "mia"))
        (['forget_acc', 'mia', 'nonfinite_outputs', 'retain_acc', 'test_acc'], True)
    """
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


def run_job(
    cfg: JobConfig,
    *,
    memorization_fn: Callable[..., np.ndarray | tuple[np.ndarray, np.ndarray]] | None = None,
    unlearn_fn: Callable[..., engine.RunResult] | None = None,
) -> dict:
    """Run the whole job described by ``cfg``; return the top-level results object (also written to ``cfg.out``).

    For each seed the data are loaded and the forget set chosen; for each pretraining optimizer the original
    model is trained, then every cell of the grid (original, Retrain, and each unlearning optimizer × method)
    is run from it and recorded in ``progress.json`` (:class:`Progress`); recorded cells are skipped on resume.

    Args:
        cfg: the job's settings (validated here).
        memorization_fn: ``fn(cfg, ds, apply_fn, params, model_state, data, seed) -> scores [N]`` or
            ``(scores [N], heldout [N])``, the memorization score of each training example (and its accuracy when
            held out, which ``--tune`` then aims at: ``tuning.forget_target``), called once per seed when
            ``cfg.forget`` ranks by memorization (``high | low | mid | mix``); default
            :func:`memorization_details` (or a cached one).
        unlearn_fn: ``fn(method, ctx, **run_kwargs) -> RunResult``, the runner of one method from a
            ``methods.Context`` (``run_kwargs``: checkpointing, progress, mesh); called for Retrain and each
            (unlearning optimizer, method) cell not yet recorded, and for the method whose figures are drawn.
            Default: the library's method adapter.

    A job trains for minutes, e.g. ``run_job(JobConfig(methods=("ft",), pretrain=("sgd",),
    unlearn_optimizer=("sgd",)))["methods"]["ft"]["tow"]``, or, to forget the 10 % of the examples that score
    highest by one's own scores, ``run_job(JobConfig(forget="high", out="runs/mine"), memorization_fn=lambda cfg,
    ds, *rest: my_scores)``.

    Example (only the first step of a job: its settings are checked before any work):
        >>> run_job(JobConfig(methods=("ft",), resume=True))
        Traceback (most recent call last):
        ValueError: --resume needs --out DIR: the directory of the run to continue.
    """
    cfg.validate()
    created = None
    if cfg.out is None:  # a new folder of its own, even for two jobs started in the same second
        cfg.out = created = _new_run_dir()
    elif not os.path.exists(cfg.out):
        created = cfg.out
    if cfg.resume and not Progress.holds_run(cfg.out):
        warnings.warn(
            f"--resume: {cfg.out} holds no run (no progress.json, no checkpoints); starting a new run there.",
            stacklevel=2,
        )
    progress = Progress(cfg.out, cfg.resume_settings(), resume=cfg.resume, overwrite=cfg.overwrite)
    try:
        return _run_grid(cfg, progress, memorization_fn, unlearn_fn)
    except Exception:
        # a failure before any finished entry (a check on the data, the model, an error in pretraining) leaves
        # the folder as it was, so the corrected command needs neither --resume nor another --out
        progress.discard()
        if created is not None and os.path.isdir(created) and not os.listdir(created):
            os.rmdir(created)
        raise


def _new_run_dir(parent: str = "runs") -> str:
    """A new ``runs/<timestamp>`` folder (``runs/<timestamp>-2``, ... when taken; :func:`_atomic.unique_dir`)."""
    return _atomic.unique_dir(parent, _dt.datetime.now().strftime("%Y%m%d-%H%M%S"))


def _run_grid(cfg: JobConfig, progress: Progress, memorization_fn, unlearn_fn) -> dict:
    """The body of :func:`run_job` once its progress record is open."""
    mesh = distributed.make_mesh(cfg.devices) if cfg.devices else None
    job = _Job(cfg, progress, unlearn_fn or methods.unlearn, mesh)
    method_list = [m for m in cfg.methods if m != "retrain"]
    n_tasks = cfg.seeds * len(cfg.pretrain) * (2 + len(method_list) * len(cfg.unlearn_optimizer))
    if cfg.population:
        n_tasks += len(cfg.pretrain) * (3 + len(method_list) * len(cfg.unlearn_optimizer))
    bar = tqdm(total=n_tasks, desc="jaxunlearn run", disable=not cfg.progress, dynamic_ncols=True)
    per_variant: dict[str, list[dict]] = {}
    per_variant_population: dict[str, dict] = {}
    preset = presets.get(cfg.preset)
    un_base = preset.optimizer_config(dataclasses.replace(engine.UNLEARN_DEFAULT, lr=cfg.unlearn_lr))
    try:
        for s in range(cfg.seeds):
            sd = _load_seed(cfg, cfg.seed + s, memorization_fn or memorization_details)
            for pre in cfg.pretrain:
                pre_cfg = optimizer_for(pre, preset.optimizer_config(OptimConfig(lr=cfg.pretrain_lr)), cfg.pretrain_rho)
                bar.set_postfix_str(f"seed {sd.seed} pretrain {pre}")
                # Original and Retrain depend only on the pretraining recipe; the original is always needed
                # (a recorded one is restored from its final checkpoint).
                train = functools.partial(_pretrain, job, sd, pre, pre_cfg)
                orig = _run_cell(job, sd, Progress.key(sd.seed, pre, "original"), train, keep=True)
                bar.update(1)
                run = functools.partial(_unlearn, job, sd, orig, pre_cfg)
                retrain = functools.partial(run, "retrain", un_base, f"seed{sd.seed}", f"pretrain-{pre}", "retrain")
                _run_cell(job, sd, Progress.key(sd.seed, pre, "retrain"), retrain)
                bar.update(1)
                figure = None
                for un in cfg.unlearn_optimizer:
                    label, un_cfg = variant_label(pre, un), optimizer_for(un, un_base, cfg.rho, cfg.lamb)
                    for name in method_list:
                        bar.set_postfix_str(f"seed {sd.seed} {label} {name}")
                        first = s == 0 and pre == cfg.pretrain[0] and un == cfg.unlearn_optimizer[0]
                        wants_figure = cfg.figures and first and name == _figure_method(method_list)
                        cell = functools.partial(run, name, un_cfg, f"seed{sd.seed}", label, name,
                                                 reuse=_reused_tuning(job, s, pre, un, name))  # fmt: skip
                        res = _run_cell(
                            job, sd, Progress.key(sd.seed, pre, name, un), cell, keep=wants_figure, info=True
                        )
                        if wants_figure:
                            diverged = progress.done[Progress.key(sd.seed, pre, name, un)].get("diverged")
                            figure = {"params": res.params, "state": res.model_state, "name": name,
                                      "diverged": diverged is not None}  # fmt: skip
                        bar.update(1)
                    ref = progress.done[Progress.key(sd.seed, pre, "retrain")]
                    per_variant.setdefault(label, []).append(
                        variant_entries(progress.done, sd.seed, pre, un, method_list, ref)
                    )
                if figure is not None and distributed.is_main_process():
                    fig_dir = os.path.join(cfg.out, "figures")
                    _figures(cfg, sd.ds, sd.apply_fn, orig, figure, sd.forget_idx, sd.retain_idx, fig_dir)
                if cfg.population and s == 0:  # populations of the first seed
                    per_variant_population.update(_population_cells(job, sd, pre, pre_cfg, un_base, method_list, bar))
    finally:
        bar.close()
    progress.save()  # the time of the last cells and of the evaluation after them
    return _write_all(cfg, per_variant, progress.seconds, per_variant_population)


@dataclasses.dataclass
class _Job:
    """What every cell of a job shares: its settings, its progress record, the unlearning function, the mesh."""

    cfg: JobConfig
    progress: Progress
    unlearn_fn: Callable[..., engine.RunResult]
    mesh: Any

    def run_kwargs(self, *checkpoint: str) -> dict:
        """Keyword arguments of one training run: its checkpoints (resumed), progress bar and mesh."""
        return {
            "checkpoint_dir": self.progress.checkpoint_dir(*checkpoint),
            "resume": True,
            "checkpoint_every": self.cfg.checkpoint_every,
            "checkpoint_seconds": self.cfg.checkpoint_seconds,
            "progress": self.cfg.progress,
            "mesh": self.mesh,
        }


@dataclasses.dataclass
class _Seed:
    """One seed's data, initial model and forget set: what every cell of the seed shares."""

    cfg: JobConfig
    seed: int
    ds: data.Dataset
    dd: engine.DeviceData
    apply_fn: Callable
    params: Any
    model_state: Any
    forget_idx: np.ndarray
    retain_idx: np.ndarray
    #: memorization forget sets: the forget examples' memorization scores (``--tune``'s target), else None
    forget_scores: np.ndarray | None = None
    #: ... and their held-out accuracies when the memorization_fn gives them (the target itself), else None
    forget_heldout: np.ndarray | None = None

    def init_fn(self, seed: int):
        """A fresh initialisation of the job's model (Retrain starts from one)."""
        _, p, st = models.split_model(build_model(self.cfg, self.ds, seed))
        return p, st


def _load_seed(cfg: JobConfig, seed: int, memorization_fn: Callable[..., Any]) -> _Seed:
    """Load the data of ``seed``, build its model and choose its forget set."""
    ds = load_dataset(cfg, seed)
    n = len(ds.y_train)
    if n < 2:
        raise ValueError(
            f"--max-train {cfg.max_train} leaves {n} training example(s) after the validation split; a job needs "
            "a forget and a retain set: use --max-train 20 or more."
        )
    if cfg.batch_size > n:
        hint = f" (--max-train {cfg.max_train})" if cfg.max_train is not None else ""
        raise ValueError(
            f"--batch-size {cfg.batch_size} is larger than the {n} training examples{hint}, so every batch would "
            f"repeat examples; use a --batch-size well below {n}."
        )
    try:
        model = build_model(cfg, ds, seed)
    except ValueError as exc:
        name = cfg.model or _default_model(cfg.dataset)
        fits = "mlp, theory_cnn" if cfg.dataset == "synthetic" else "mlp"
        raise ValueError(
            f"--model {name} does not fit --dataset {cfg.dataset} (inputs of shape {ds.input_shape}): "
            f"{_first_sentence(exc)}; choose another --model (e.g. {fits})."
        ) from None
    if cfg.tune and len(ds.y_val) == 0:
        raise ValueError(
            f"--tune chooses learning rates on the validation split, but {ds.name} has no validation examples here "
            "(--max-train too small?); give more training data or drop --tune."
        )
    dd = engine.DeviceData.from_numpy(ds.x_train, ds.y_train)
    apply_fn, params, state = models.split_model(model)
    # The forget set depends only on the data and the initial model (memorization scores), so it
    # is chosen before any training: a bad --forget-size fails at once.
    scores = functools.partial(memorization_fn, cfg, ds, apply_fn, params, state, dd, seed)
    forget_idx, all_scores, all_heldout = _forget_set(cfg, ds, seed, scores)
    retain_idx = data.retain_indices(len(ds.y_train), forget_idx)
    if retain_idx.size == 0:
        raise ValueError(
            f"the forget set holds all {len(ds.y_train)} training examples, so nothing is left to retain; "
            "choose a smaller --forget-size."
        )
    if cfg.batch_size > retain_idx.size:
        hint = f" (--max-train {cfg.max_train})" if cfg.max_train is not None else ""
        raise ValueError(
            f"--batch-size {cfg.batch_size} is larger than the retain set ({retain_idx.size} of the {n} training "
            f"examples{hint}), so every batch would repeat examples; use --batch-size {retain_idx.size} or less."
        )
    forget_scores = None if all_scores is None else all_scores[forget_idx]
    forget_heldout = None if all_heldout is None else all_heldout[forget_idx]
    return _Seed(cfg, seed, ds, dd, apply_fn, params, state, forget_idx, retain_idx, forget_scores, forget_heldout)


def _first_sentence(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text.split(". ")[0].split("; ")[0].rstrip(".")


def _pretrain(job: _Job, sd: _Seed, pre: str, pre_cfg: OptimConfig) -> engine.RunResult:
    """Train the original model of the seed ``sd`` with the pretraining optimizer ``pre`` (``pre_cfg``); with
    ``cfg.originals`` its checkpoints live in that shared folder, so a finished one is read back."""
    cfg = job.cfg
    kwargs = job.run_kwargs(f"seed{sd.seed}", f"pretrain-{pre}", "original")
    if cfg.originals and not os.path.isdir(kwargs["checkpoint_dir"]):  # a job's own original (resumed) comes first
        kwargs["checkpoint_dir"] = shared_original_dir(cfg, sd.seed, pre)
    return engine.train(
        sd.apply_fn,
        sd.params,
        sd.model_state,
        sd.dd,
        optimizer=pre_cfg,
        epochs=cfg.pretrain_epochs,
        batch_size=cfg.batch_size,
        seed=sd.seed,
        desc=f"pretrain ({pre})",
        **kwargs,
    )


#: The settings an original model depends on: jobs that agree on them (and on the seed and the pretraining
#: optimizer) can share it through ``--originals``.
ORIGINAL_FIELDS = ("dataset", "data_dir", "max_train", "max_test", "model", "width", "pretrain_epochs",
                   "pretrain_lr", "pretrain_rho", "batch_size", "preset")  # fmt: skip


def shared_original_dir(cfg: JobConfig, seed: int, pretrain: str) -> str:
    """``ORIGINALS/seed<seed>/pretrain-<pretrain>``: where jobs with ``cfg.originals`` keep the original model of
    ``seed`` and pretraining optimizer ``pretrain``, beside a ``recipe.json`` of its :data:`ORIGINAL_FIELDS`.
    The first job to use the folder writes the recipe; a job whose recipe differs is refused with one line.

    Example:
        >>> import tempfile
        >>> root = tempfile.mkdtemp()
        >>> d = shared_original_dir(JobConfig(originals=root, max_train=60), seed=0, pretrain="sgd")
        >>> os.path.relpath(d, root), sorted(os.listdir(d))
        ('seed0/pretrain-sgd', ['recipe.json'])
        >>> shared_original_dir(JobConfig(originals=root, max_train=80), seed=0, pretrain="sgd")
        Traceback (most recent call last):
        ValueError: --originals ... holds an original pretrained with max_train=60, not 80; give this job another ...
    """
    where = os.path.join(cfg.originals, f"seed{int(seed)}", f"pretrain-{pretrain}")
    recipe = {k: getattr(cfg, k) for k in ORIGINAL_FIELDS}
    recipe.update(seed=int(seed), pretrain=pretrain, init=MODEL_INIT_SCHEME)
    recipe = json.loads(json.dumps(recipe, default=str))  # tuples and paths as JSON reads them back
    path = os.path.join(where, "recipe.json")
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        diff = [k for k in recipe if saved.get(k) != recipe[k]]
        if diff:
            k = diff[0]
            raise ValueError(
                f"--originals {cfg.originals} holds an original pretrained with {k}={saved.get(k)}, not "
                f"{recipe[k]}; give this job another --originals folder."
            )
    elif distributed.is_main_process():
        os.makedirs(where, exist_ok=True)
        _atomic.write_text(path, json.dumps(recipe, indent=1, sort_keys=True))
    return where


def _context(job: _Job, sd: _Seed, params, model_state, pre_cfg: OptimConfig, name: str, optimizer):
    """The ``methods.Context`` of method ``name`` from the original model ``(params, model_state)`` of seed ``sd``."""
    cfg = job.cfg
    return methods.Context(
        apply_fn=sd.apply_fn,
        params=params,
        model_state=model_state,
        x=sd.dd.x,
        y=sd.dd.y,
        retain_idx=sd.retain_idx,
        forget_idx=sd.forget_idx,
        num_classes=sd.ds.num_classes,
        epochs=cfg.unlearn_epochs,
        batch_size=cfg.batch_size,
        seed=sd.seed,
        init_fn=sd.init_fn,
        pretrain_optimizer=pre_cfg,
        pretrain_epochs=cfg.pretrain_epochs,
        optimizer=optimizer,
        options=presets.get(cfg.preset).method_options(methods.get(name).base, cfg.method_options.get(name, {})),
    )


def _unlearn(job: _Job, sd: _Seed, orig, pre_cfg: OptimConfig, name: str, optimizer, *checkpoint: str, reuse=None):
    """Run method ``name`` from the original model ``orig`` through the job's unlearning function; with ``--tune``
    tune it, or, given ``reuse`` (:func:`_reused_tuning`), run it at the setting chosen on earlier seeds."""
    ctx = _context(job, sd, orig.params, orig.model_state, pre_cfg, name, optimizer)
    if reuse is not None:
        chosen, seeds = reuse
        ctx = dataclasses.replace(ctx, options={**ctx.options, **tuning.chosen_options(name, ctx, chosen)})
        res = job.unlearn_fn(name, ctx, **job.run_kwargs(*checkpoint))
        info = {**(res.info or {}), "tuned": chosen, "tuned_on_seeds": seeds}
        return dataclasses.replace(res, info=info)
    if job.cfg.tune and methods.get(name).base != "retrain":
        return _tuned(job, sd, name, ctx)
    return job.unlearn_fn(name, ctx, **job.run_kwargs(*checkpoint))


def _reused_tuning(job: _Job, s: int, pre: str, un: str, name: str) -> tuple[dict, list[int]] | None:
    """``--tune-seeds N``: for the job's seed number ``s >= N``, the setting ``(chosen, seeds)`` to run cell
    ``(pre, un, name)`` at: the one chosen most often for it on the first N seeds (ties: the earliest), and those
    seeds. None when this seed tunes (or the job does not), or for Retrain.

    Example:
        >>> import types
        >>> cfg = JobConfig(tune=True, tune_seeds=1, seeds=2)
        >>> job = _Job(cfg, types.SimpleNamespace(done={"0/sgd/sam/ft": {"info_tuned": {"lr_scale": 0.3}}}), None, None)
        >>> _reused_tuning(job, 0, "sgd", "sam", "ft"), _reused_tuning(job, 1, "sgd", "sam", "ft")
        (None, ({'lr_scale': 0.3}, [0]))
    """
    cfg = job.cfg
    if not cfg.tune or cfg.tune_seeds is None or s < cfg.tune_seeds or methods.get(name).base == "retrain":
        return None
    seeds = [cfg.seed + j for j in range(cfg.tune_seeds)]
    chosen = []
    for sd in seeds:
        entry = job.progress.done.get(Progress.key(sd, pre, name, un), {})
        if not isinstance(entry.get("info_tuned"), dict):
            raise ValueError(
                f"--tune-seeds {cfg.tune_seeds}: seed {sd}'s {name} ({variant_label(pre, un)}) has no tuned setting "
                f"on record in {cfg.out}; rerun it with --tune (drop --tune-seeds) or start a new --out."
            )
        chosen.append(json.dumps(entry["info_tuned"], sort_keys=True))
    counts = collections.Counter(chosen)
    best = max(counts.values())
    pick = next(c for c in chosen if counts[c] == best)
    return json.loads(pick), seeds


def _tuned(job: _Job, sd: _Seed, name: str, ctx: methods.Context) -> engine.RunResult:
    """``--tune``: method ``name`` at the learning rate :func:`jaxunlearn.tuning.tune` chooses on the validation
    split (for memorization forget sets aiming at the forget accuracy their scores predict held out:
    :func:`jaxunlearn.tuning.forget_target`); the chosen setting, whether it met the criterion, that target and
    the tuning's cost go to the entry's ``info``."""
    res = tuning.tune(name, ctx, x_val=sd.ds.x_val, y_val=sd.ds.y_val, forget_kind=job.cfg.forget,
                      forget_scores=sd.forget_scores, forget_heldout=sd.forget_heldout)  # fmt: skip
    info = {
        "tuned": {k: v for k, v in res.chosen.items() if v is not None},
        "tune_satisfied": bool(res.satisfied),
        "tune_candidates": len(res.candidates),
    }
    if "forget_target" in res.reference:
        info["tune_forget_target"] = res.reference["forget_target"]
        # what it came from: the memorization models' held-out accuracies, or FA₀ − mean score without them
        info["tune_forget_target_from"] = "scores" if sd.forget_heldout is None else "heldout"
    return engine.RunResult(res.params, res.model_state, history=[], seconds=res.seconds, diverged=None,
                            info=info, compile_seconds=getattr(res, "compile_seconds", 0.0))  # fmt: skip


# ------------------------------------------------------------------------------------------- populations


def _population_seeds(seed: int, n: int, stage: int) -> list[int]:
    """The seeds of one population's N models: ``stage`` 0 the originals (their initialisations and batches), 1
    Retrain, 2 the independent Retrain, 3 the unlearned models (their batches and the methods' randomness; Retrain
    initialises from its seed + 1000). Distinct across stages for N <= ``MAX_POPULATION``, below 2^31.

    Example:
        >>> _population_seeds(0, 3, 0), _population_seeds(0, 2, 3)
        ([0, 1, 2], [300000000, 300000001])
    """
    return [stage * 100_000_000 + (seed % 1000) * 100_000 + k for k in range(n)]


def _population_cells(job: _Job, sd: _Seed, pre: str, pre_cfg: OptimConfig, un_base, method_list, bar) -> dict:
    """The populations of the pretraining ``pre`` (first seed): N originals, N Retrain, N independent Retrain and
    N unlearned models per (unlearning optimizer, method), each stage recorded in ``progress.json`` with its
    confidences and accuracies in ``OUT/population/*.npz`` (and checkpointed while it trains), then scored against
    Retrain. Returns ``{variant label: population entry}`` (:func:`_population_entries`)."""
    cfg = job.cfg
    n = cfg.population
    x, y = np.asarray(sd.ds.x_train), np.asarray(sd.ds.y_train)
    splits = {
        "forget": (x[sd.forget_idx], y[sd.forget_idx]),
        "retain": (x[sd.retain_idx], y[sd.retain_idx]),
        "test": (sd.ds.x_test, sd.ds.y_test),
    }
    kw = dict(chunk=cfg.population_chunk, mesh=job.mesh, resume=True, checkpoint_every=cfg.checkpoint_every,
              checkpoint_seconds=cfg.checkpoint_seconds, progress=cfg.progress)  # fmt: skip

    def where(*stage):
        return job.progress.checkpoint_dir(f"seed{sd.seed}", f"pretrain-{pre}", "population", *stage)

    def key(stage, un=None):
        return Progress.key(sd.seed, pre, f"population/{stage}", unlearn=un)

    def stage(k, build, keep=False):
        out = _population_stage(job, sd, k, splits, build, keep=keep)
        bar.update(1)
        return out

    bar.set_postfix_str(f"population ({n} models) pretrain {pre}")
    originals = stage(
        key("original"),
        lambda: population.train_population(
            sd.apply_fn,
            sd.init_fn,
            sd.dd,
            n,
            optimizer=pre_cfg,
            epochs=cfg.pretrain_epochs,
            batch_size=cfg.batch_size,
            seeds=_population_seeds(sd.seed, n, 0),
            checkpoint_dir=where("original"),
            desc=f"population: original ({pre})",
            **kw,
        ),  # fmt: skip
        keep=True,
    )
    p0, s0 = originals.model(0)

    def unlearn(name, optimizer, seeds, *ckpt):
        ctx = _context(job, sd, p0, s0, pre_cfg, name, optimizer)
        return lambda: population.unlearn_population(name, ctx, originals, seeds=seeds, checkpoint_dir=where(*ckpt),
                                                     **kw)  # fmt: skip

    stage(key("retrain"), unlearn("retrain", un_base, _population_seeds(sd.seed, n, 1), "retrain"))
    independent = _population_seeds(sd.seed, n, 2)
    stage(key("retrain_independent"), unlearn("retrain", un_base, independent, "retrain_independent"))
    for un in cfg.unlearn_optimizer:
        un_cfg = optimizer_for(un, un_base, cfg.rho, cfg.lamb)
        for name in method_list:
            bar.set_postfix_str(f"population ({n} models) {variant_label(pre, un)} {name}")
            seeds = _population_seeds(sd.seed, n, 3)
            stage(key(name, un), unlearn(name, un_cfg, seeds, f"unlearn-{un}", name))
    return {
        variant_label(pre, un): _population_entries(job, sd, pre, un, method_list, key) for un in cfg.unlearn_optimizer
    }


def _population_stage(job: _Job, sd: _Seed, key: str, splits: dict, build: Callable, *, keep: bool = False):
    """One population: ``build()`` it unless ``key`` is recorded (``keep``: also then, from its checkpoints),
    evaluate its models and record the entry; returns the :class:`~jaxunlearn.population.Population` or None."""
    if job.progress.is_done(key) and not keep:
        return None
    pop = build()
    if not job.progress.is_done(key):
        ev = population.evaluate_population(sd.apply_fn, pop, splits)
        rel = os.path.join("population", key.replace("/", "_") + ".npz")
        _atomic_npz(os.path.join(job.cfg.out, rel), ev)
        entry = {
            "file": rel,
            "models": pop.size,
            "seconds": pop.seconds,
            "compile_seconds": pop.compile_seconds,
            "batched": pop.batched,
            "diverged_models": 0 if pop.diverged is None else sum(d is not None for d in pop.diverged),
            "nonfinite_models": int(ev["nonfinite"].sum()),
            **{f"info_{k}": v for k, v in pop.info.items()},
        }
        job.progress.record(key, entry)
    return pop


def _atomic_npz(path: str, arrays: dict) -> None:
    """Write ``arrays`` as an ``.npz`` file atomically (``_atomic.save_npz``); main process only."""
    if distributed.is_main_process():
        _atomic.save_npz(path, **arrays)


def _population_entries(job: _Job, sd: _Seed, pre: str, un: str, method_list, key) -> dict:
    """The population entry of a variant: every population scored against Retrain's
    (:func:`jaxunlearn.metrics.population.population_scores`), each score recorded once in ``progress.json``.

    ``{"models": N, "seed", "methods": {"original", "retrain", "retrain_independent", METHOD...: entry}}``; an entry
    holds ``final_score``, ``forget_score``, ``retain_ratio``, ``test_ratio``, ``ulira_auc``, ``ulira_tpr_at_1fpr``,
    the median and mean per-example ε and the per-example ``epsilons``, the populations' mean ``forget_acc``,
    ``retain_acc``, ``test_acc``, and how they were trained (``seconds``, ``batched``, ``diverged_models``).
    Retrain's own entry holds no score (it is the reference)."""
    done = job.progress.done
    ref = done[key("retrain")]
    out = {"retrain": _population_summary(job, ref)}
    stages = [("original", key("original")), ("retrain_independent", key("retrain_independent"))]
    stages += [(name, key(name, un)) for name in method_list]
    for name, k in stages:
        shared = name in ("original", "retrain_independent")  # scored once per pretraining
        score_key = Progress.key(sd.seed, pre, f"population-score/{name}", unlearn=None if shared else un)
        if not job.progress.is_done(score_key):
            job.progress.record(score_key, _population_score(job, done[k], ref))
        out[name] = {**_population_summary(job, done[k]), **done[score_key]}
    return {"models": job.cfg.population, "seed": sd.seed, "methods": out}


def _load_population(job: _Job, record: dict) -> dict:
    with np.load(os.path.join(job.cfg.out, record["file"])) as f:
        return {k: f[k] for k in f.files}


def _population_summary(job: _Job, record: dict) -> dict:
    ev = _load_population(job, record)
    keep = ("models", "seconds", "compile_seconds", "batched", "diverged_models", "nonfinite_models")
    return {
        **{k: record[k] for k in keep},
        "forget_acc": float(ev["forget_acc"].mean()),
        "retain_acc": float(ev["retain_acc"].mean()),
        "test_acc": float(ev["test_acc"].mean()),
    }


def _population_score(job: _Job, record: dict, ref: dict) -> dict:
    u, r = _load_population(job, record), _load_population(job, ref)
    sc = metrics.population.population_scores(
        u["forget_conf"],
        r["forget_conf"],
        unlearned_retain_acc=u["retain_acc"],
        retrained_retain_acc=r["retain_acc"],
        unlearned_test_acc=u["test_acc"],
        retrained_test_acc=r["test_acc"],
    )
    eps = np.asarray(sc["epsilons"])
    keys = ("final_score", "forget_score", "retain_ratio", "test_ratio", "ulira_auc", "ulira_tpr_at_1fpr")
    return {**{k: sc[k] for k in keys}, "epsilon_median": float(np.median(eps)), "epsilon_mean": float(eps.mean()),
            "epsilons": eps.tolist()}  # fmt: skip


def _run_cell(job: _Job, sd: _Seed, key: str, run: Callable[[], Any], *, keep: bool = False, info: bool = False):
    """One cell of the grid: ``run()`` it unless ``key`` is recorded, evaluate its result and record the entry.

    ``keep=True`` runs a recorded cell too (its training resumes from its final checkpoint) because its result
    is needed; it is not recorded again. ``info=True`` adds the result's ``info`` (a method's own numbers) to the
    entry as ``info_*``. Returns the result, or ``None`` when the cell was skipped.
    """
    if job.progress.is_done(key) and not keep:
        return None
    res = run()
    if not job.progress.is_done(key):
        entry = evaluate_split_metrics(
            sd.apply_fn, res.params, res.model_state, sd.ds, sd.forget_idx, sd.retain_idx, sd.seed, job.mesh
        )
        entry.update(_timing(res))
        entry["diverged"] = _divergence(res, entry.pop("nonfinite_outputs"))
        if info:
            entry.update({f"info_{k}": v for k, v in res.info.items()})
        job.progress.record(key, entry)
    return res


def _timing(res) -> dict:
    """An entry's wall time and the part of it spent tracing and compiling."""
    return {"seconds": res.seconds, "compile_seconds": res.compile_seconds}


def _figure_method(method_list) -> str:
    for m in ("sharp_minmax", "neggrad", "ft"):
        if m in method_list:
            return m
    return method_list[0] if method_list else ""


def variant_entries(done, seed, pre, un, method_list, ref) -> dict:
    """One seed's entries of the variant (``pre``, ``un``) from the progress record ``done``, with the scores
    relative to Retrain's entry ``ref`` added: ``tow``, ``tow_signed``, ``tow_mia``, ``avg_gap`` and, for the
    methods, ``speedup = ref["seconds"] / seconds``.

    Example:
        >>> ref = {"forget_acc": 0.8, "retain_acc": 1.0, "test_acc": 0.85, "mia": 0.3, "seconds": 20.0}
        >>> done = {
        ...     Progress.key(0, "sgd", "original"): {**ref, "forget_acc": 1.0, "mia": 0.9},
        ...     Progress.key(0, "sgd", "retrain"): ref,
        ...     Progress.key(0, "sgd", "ft", unlearn="sam"): {**ref, "forget_acc": 0.9, "retain_acc": 0.99,
        ...                                                   "seconds": 2.0},
        ... }
        >>> out = variant_entries(done, 0, "sgd", "sam", ["ft"], ref)
        >>> sorted(out), round(out["ft"]["tow"], 4), out["ft"]["speedup"], out["retrain"]["tow"]
        (['ft', 'original', 'retrain'], 0.891, 10.0, 1.0)
    """
    original = _finish_entry(dict(done[Progress.key(seed, pre, "original")]), ref)
    out = {"original": {**original, "collapsed": False}}
    out["retrain"] = {**_finish_entry(dict(done[Progress.key(seed, pre, "retrain")]), ref), "collapsed": False}
    for name in method_list:
        entry = dict(done[Progress.key(seed, pre, name, un)])
        entry = _finish_entry(entry, ref)
        entry["speedup"] = metrics.speedup(entry["seconds"], ref["seconds"])
        entry["collapsed"] = collapsed(entry, original)
        out[name] = entry
    return out


def collapsed(entry: dict, original: dict, drop: float = COLLAPSE_DROP) -> bool:
    """The collapse guard: whether a method's retain accuracy fell more than ``drop`` (a fraction; default
    :data:`COLLAPSE_DROP` = 0.20, i.e. 20 points) below the original model's. Such a method "forgets" by
    destroying the model: its forget accuracy and ToW are not results, so the job marks its entry
    ``"collapsed": true`` and the tables mark it ``†``.

    Example:
        >>> collapsed({"retain_acc": 0.95}, {"retain_acc": 0.99}), collapsed({"retain_acc": 0.10}, {"retain_acc": 0.99})
        (False, True)
    """
    return bool(original["retain_acc"] - entry["retain_acc"] > drop)


def _write_all(cfg: JobConfig, per_variant: dict[str, list[dict]], seconds: float, populations=None) -> dict:
    variants = {}
    populations = populations or {}
    for label, per_seed in per_variant.items():
        merged = per_seed[0] if len(per_seed) == 1 else metrics.aggregate_seeds(per_seed)
        if len(per_seed) > 1:  # one divergence report per seed (null where the seed ran normally)
            for name in merged:
                reports = [ps[name].get("diverged") for ps in per_seed]
                merged[name]["diverged"] = reports if any(r is not None for r in reports) else None
                flags = [bool(ps[name].get("collapsed")) for ps in per_seed]
                merged[name]["collapsed"] = flags if any(flags) else False
        settings = {**cfg.settings(), "variant": label, "seeds_run": len(per_seed)}
        vdir = os.path.join(cfg.out, label)
        pop = populations.get(label)
        if distributed.is_main_process():
            report.write_results(vdir, settings, merged, population=pop)
        if cfg.figures and distributed.is_main_process():
            report.plot_bars({"methods": merged}, os.path.join(vdir, "bars.png"), title=label)
            if pop is not None:
                report.plot_epsilons(pop, os.path.join(vdir, "population_epsilons.png"), title=label)
        table = report.markdown_table({"methods": merged}, columns=_TABLE_COLUMNS)
        if pop is not None:
            table += "\n" + report.population_table(pop)
        _atomic_text(os.path.join(vdir, "table.md"), table)
        variants[label] = {"settings": settings, "methods": merged}
        if pop is not None:
            variants[label]["population"] = pop
    first = next(iter(variants.values()))
    top = {
        "settings": {**cfg.settings(), "variants": list(variants), "seconds": seconds},
        "methods": first["methods"],
        "variants": variants,
        "environment": report.environment(),
    }
    if "population" in first:
        top["population"] = first["population"]
    report.validate_results(top)
    _atomic_json(os.path.join(cfg.out, "results.json"), report.to_jsonable(top))
    _atomic_text(os.path.join(cfg.out, "table.md"), format_tables(top))
    return top


_TABLE_COLUMNS = ("forget_acc", "retain_acc", "test_acc", "mia", "tow", "seconds")


def format_tables(results: dict) -> str:
    """Markdown tables of every variant of a run (or of a single-variant results object).

    Example:
        >>> row = {"forget_acc": 0.5, "retain_acc": 0.9, "test_acc": 0.8, "mia": 0.3, "tow": 0.5, "seconds": 1.0}
        >>> print(format_tables({"methods": {"ft": row}}))
        ### results
        <BLANKLINE>
        | Method | FA (%) | RA (%) | TA (%) | MIA (%) | ToW (%) | Time (s) |
        |---|---:|---:|---:|---:|---:|---:|
        | ft | 50.0 | 90.0 | 80.0 | 30.0 | 50.0 | 1.0 |
    """
    variants = results.get("variants") or {
        "results": {
            "methods": results["methods"],
            **({"population": results["population"]} if "population" in results else {}),
        }  # fmt: skip
    }
    parts = []
    for label, v in variants.items():
        parts.append(f"### {label}\n\n" + report.markdown_table({"methods": v["methods"]}, columns=_TABLE_COLUMNS))
        if v.get("population"):
            parts.append(report.population_table(v["population"]))
    return "\n".join(parts)


def _figures(cfg, ds, apply_fn, orig, fig, forget_idx, retain_idx, out_dir):
    """Feature plot (before/after), entanglement, and the forget-loss landscape with its top Hessian
    eigenvalue and trace at the original and the unlearned parameters (``figures/analysis.json``)."""
    os.makedirs(out_dir, exist_ok=True)
    if fig.get("diverged"):  # the parameters the divergence guard kept are not a result: say so on every figure
        fig = {**fig, "name": f"{fig['name']} (diverged)"}
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
