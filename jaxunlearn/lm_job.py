"""The language-model job: pretrain a small GPT on the generated facts corpus until it memorizes it, retrain
without the forget people (the reference), unlearn with each LM method × unlearning optimizer, evaluate and
attack with relearning, and write ``results.json`` + ``table.md``.

``run(LMJobConfig(...))`` (or ``run(dict)``, plain settings, so ``jaxunlearn run --dataset facts --model gpt``
is a one-line dispatch) returns ``{"settings", "methods", "variants", "relearn", "pretrain", "environment"}``
(``environment``: :func:`jaxunlearn.report.environment`):

* ``variants[opt][method]``, for each unlearning optimizer kind (``sgd`` = plain AdamW, ``sam``, ``asam``,
  ``max`` = SAM with the phase's sign set to sharpness maximization, any :data:`jaxunlearn.plan.OPTIMIZER_KINDS`),
  holds ``forget_acc`` (forget answer exact-match), ``retain_acc`` (retain answer exact-match), ``test_acc``
  (next-token accuracy on held-out text), ``mia`` (Min-K % MIA AUC, forget vs held-out), ``tow`` (against
  Retrain), ``seconds``, and every metric of :func:`jaxunlearn.metrics.lm.evaluate_lm` plus the relearning
  attack's ``relearn_auc`` / ``relearn_final``; ``methods`` is the first variant; ``original`` and ``retrain``
  are in every variant. With ``seeds > 1`` each number is ``{"mean", "std"}`` over the seeds.
* ``relearn[opt][method]``: the relearning curves (exact-match per step), per seed.
* ``pretrain``: steps, epochs, wall seconds and final exact-match of the pretraining.

Every finished entry is recorded in ``DIR/progress.json`` (:class:`jaxunlearn.record.Progress`, as the image
job does); ``resume=True`` skips them and restores the pretrained / retrained models from their Orbax checkpoints
under ``DIR/checkpoints``. A resume with other settings is refused, a new run into a ``DIR`` that holds one
asks for ``resume=True`` or another ``DIR`` (and a non-empty ``DIR`` without a run for ``overwrite=True``), a run
that fails before its first entry leaves ``DIR`` as it was, and ``settings.wall_seconds`` is summed over every
invocation.

Example:
    >>> cfg = LMJobConfig(people=12, templates=1, dim=16, heads=2, pretrain_epochs=2, unlearn_epochs=1,
    ...                   methods=("graddiff",), optimizers=("sgd",), relearn_steps=2, relearn_every=1,
    ...                   batch_size=16, progress=False)
    >>> cfg.methods, cfg.optimizers
    (('graddiff',), ('sgd',))
    >>> res = run(cfg)  # doctest: +SKIP
    >>> sorted(res["methods"]), "forget_em" in res["methods"]["graddiff"]  # doctest: +SKIP
    (['graddiff', 'original', 'retrain'], True)

    (about a minute on 2 CPU cores, mostly compilation: ``tests/test_lm_job.py`` runs it.)
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np

from jaxunlearn import _atomic, engine, models, record, report
from jaxunlearn.data.facts import make_facts
from jaxunlearn.methods import lm as lm_methods
from jaxunlearn.metrics import lm as lm_metrics
from jaxunlearn.metrics.accuracy import aggregate_seeds, tow
from jaxunlearn.plan import OPTIMIZER_KINDS, optimizer_kind

__all__ = ["LMJobConfig", "run", "DEFAULT_METHODS", "LM_OPTIMIZERS", "table"]

DEFAULT_METHODS = ("grad_ascent", "graddiff", "npo", "simnpo", "rmu", "sharp_minmax", "hessian_select")
#: unlearning optimizer kinds of the job: the plan's kinds plus ``max`` (SAM, sharpness maximization)
LM_OPTIMIZERS = (*OPTIMIZER_KINDS, "max")


@dataclasses.dataclass
class LMJobConfig:
    """Settings of the LM job (checked when built; a bad value raises a one-line ``ValueError``).

    Corpus: ``people`` (with a ``heldout`` fraction never trained on), ``templates`` paraphrases per fact,
    ``corpus_seed``; ``forget``: the fraction of training people to forget (0.01, 0.05, 0.1, ...).
    Model: ``dim``, ``depth``, ``heads``, ``positions`` (``learned`` | ``rotary``). Pretraining / Retrain:
    ``pretrain_epochs`` of AdamW at ``pretrain_lr`` (cosine), ``batch_size``. Unlearning: ``methods`` (LM
    registry names), ``optimizers`` (:data:`LM_OPTIMIZERS`), ``unlearn_lr`` (AdamW, constant), ``rho``
    (SAM's radius), ``unlearn_epochs`` (passes over the forget set for every method; None: each method's own
    default, the recipes tuned on this corpus, ``jaxunlearn.methods.lm.get_lm(name).defaults``), ``method_options``
    ``{method: {option: value}}`` over those defaults. Relearning:
    ``relearn_steps`` Adam steps at ``relearn_lr`` on ``relearn_examples`` forget sentences, exact-match of the
    forget questions whose facts those sentences do not state, every ``relearn_every`` steps.
    ``forget_tokens``: which tokens of a forget sentence the unlearning losses target: ``facts`` (the value and
    the rest of the sentence, ``emask``, as TOFU forgets answers; the default) or ``all`` (every token,
    templates included, which also unlearns the shared phrasing). ``seeds`` runs seeds ``seed, seed+1, …``
    (model init, forget people, batches). ``out``: a directory for results (None: nothing written).

    Example:
        >>> LMJobConfig(forget=0.1).forget
        0.1
        >>> LMJobConfig(optimizers=("sgd", "adam"))
        Traceback (most recent call last):
        ValueError: unknown unlearning optimizer(s) ['adam']; choose from sgd, sam, asam, ...
    """

    people: int = 200
    heldout: float = 0.1
    templates: int = 3
    corpus_seed: int = 0
    forget: float = 0.05
    dim: int = 64
    depth: int = 2
    heads: int = 4
    positions: str = "learned"
    pretrain_epochs: int = 40
    pretrain_lr: float = 3e-3
    batch_size: int = 64
    methods: tuple = DEFAULT_METHODS
    optimizers: tuple = ("sgd", "sam")
    unlearn_lr: float = 1e-3
    rho: float = 0.05
    unlearn_epochs: int | None = None
    method_options: dict = dataclasses.field(default_factory=dict)
    relearn_steps: int = 30
    relearn_every: int = 5
    relearn_lr: float = 1e-3
    relearn_examples: int = 8
    forget_tokens: str = "facts"
    seed: int = 0
    seeds: int = 1
    out: str | None = None
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self):
        self.methods = tuple(self.methods.split(",") if isinstance(self.methods, str) else self.methods)
        self.optimizers = tuple(self.optimizers.split(",") if isinstance(self.optimizers, str) else self.optimizers)
        if self.unlearn_epochs is not None and int(self.unlearn_epochs) < 1:
            raise ValueError(f"unlearn_epochs must be a positive integer or None, got {self.unlearn_epochs}.")
        for name in ("people", "templates", "dim", "depth", "heads", "pretrain_epochs", "batch_size",
                     "relearn_every", "relearn_examples", "seeds"):  # fmt: skip
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        for name in ("relearn_steps", "seed", "corpus_seed"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {getattr(self, name)}.")
        for name in ("pretrain_lr", "unlearn_lr", "rho", "relearn_lr"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        if self.forget_tokens not in ("facts", "all"):
            raise ValueError(f"forget_tokens must be 'facts' or 'all', got {self.forget_tokens!r}.")
        if not 0.0 < float(self.forget) < 1.0:
            raise ValueError(f"forget must be a fraction of the people in (0, 1), e.g. 0.05; got {self.forget}.")
        bad = [m for m in self.methods if m.partition("@")[0] not in lm_methods.LM_METHODS or m.startswith("retrain")]
        if bad:
            known = ", ".join(sorted(set(lm_methods.LM_METHODS) - {"retrain"}))
            raise ValueError(f"unknown LM method(s) {bad}; choose from {known} (retrain always runs).")
        bad = [o for o in self.optimizers if o not in LM_OPTIMIZERS]
        if bad:
            raise ValueError(f"unknown unlearning optimizer(s) {bad}; choose from {', '.join(LM_OPTIMIZERS)}.")
        if not self.optimizers or not self.methods:
            raise ValueError("methods and optimizers must each name at least one entry.")
        unknown = set(self.method_options) - set(self.methods)
        if unknown:
            raise ValueError(f"method_options names methods that do not run: {sorted(unknown)}.")

    def settings(self) -> dict:
        """The settings as a plain dict (for results.json)."""
        return dataclasses.asdict(self)

    def resume_settings(self) -> dict:
        """The settings a ``resume`` must match: all but where the run goes, ``resume``, ``overwrite`` and
        ``progress``, marked ``"job": "lm"`` (so ``jaxunlearn show`` knows which command continues the run).

        Example:
            >>> cfg = LMJobConfig(out="runs/lm")
            >>> sorted(set(cfg.settings()) - set(cfg.resume_settings())), cfg.resume_settings()["job"]
            (['out', 'overwrite', 'progress', 'resume'], 'lm')
        """
        kept = {k: v for k, v in self.settings().items() if k not in ("out", "resume", "overwrite", "progress")}
        return {"job": "lm", **kept}


def _optimizer(kind: str, cfg: LMJobConfig):
    base = dataclasses.replace(lm_methods.LM_UNLEARN_DEFAULT, lr=cfg.unlearn_lr)
    if kind == "max":
        return optimizer_kind("sam", base, rho=cfg.rho), "max"
    return optimizer_kind(kind, base, rho=cfg.rho), "min"


def _method_options(name: str, sign: str, cfg: LMJobConfig) -> dict:
    """The options the job passes to ``name``: ``cfg.method_options[name]`` over the method's defaults, with
    ``unlearn_epochs`` and the ``max`` optimizer's sign applied (to ``hessian_select``'s base method too)."""
    base = name.partition("@")[0]
    opts = dict(cfg.method_options.get(name, {}))
    if cfg.unlearn_epochs is not None:
        opts["epochs"] = cfg.unlearn_epochs
    defaults = lm_methods.get_lm(name).defaults
    if sign == "max" and "sign" in defaults:
        opts["sign"] = "max"
    if base == "hessian_select":
        inner = opts.get("base", defaults["base"])
        own = dict(defaults["base_options"] or {}) if inner == defaults["base"] else {}  # tuned for the default base
        base_opts = {**own, **dict(opts.pop("base_options", None) or {})}
        if cfg.unlearn_epochs is not None:
            base_opts["epochs"] = cfg.unlearn_epochs
        if sign == "max" and "sign" in lm_methods.get_lm(inner).defaults:
            base_opts["sign"] = "max"
        opts["base_options"] = base_opts
    return {k: v for k, v in opts.items() if k in defaults}


class _Entries:
    """The job's finished entries by key: a :class:`jaxunlearn.record.Progress` in ``cfg.out`` (so a resume with
    other settings is refused and the wall time is summed over invocations), or a dict in memory without ``out``."""

    def __init__(self, cfg: LMJobConfig):
        self.rec = None
        self.done: dict = {}
        self._opened = time.perf_counter()
        if cfg.out:
            _refuse_unversioned_record(cfg.out)
            self.rec = record.Progress(cfg.out, cfg.resume_settings(), resume=cfg.resume, overwrite=cfg.overwrite)
            self.done = self.rec.done

    def get(self, key):
        return self.done.get(key)

    def put(self, key, value):
        if self.rec is not None:
            self.rec.record(key, value)
        else:
            self.done[key] = report.to_jsonable(value)

    def save(self):
        if self.rec is not None:
            self.rec.save()

    def discard(self):
        if self.rec is not None:
            self.rec.discard()

    @property
    def seconds(self) -> float:
        return self.rec.seconds if self.rec is not None else time.perf_counter() - self._opened


def _refuse_unversioned_record(out: str) -> None:
    """A ``progress.json`` of an older version holds the entries alone, without the settings they were made with,
    so a resume could not check them: refuse it in one line (with or without ``resume``) instead of mixing two
    runs or overwriting it."""
    path = os.path.join(out, record.Progress.FILE)
    try:
        with open(path, encoding="utf-8") as fh:
            saved = json.load(fh)
    except (OSError, ValueError):
        return  # missing or damaged: record.Progress says what to do
    if isinstance(saved, dict) and "settings_key" not in saved and "entries" not in saved:
        raise ValueError(
            f"{path} was written by an older version without its settings, so a run cannot continue it (its "
            "settings cannot be checked); choose a new --out (its entries are then computed again)."
        )


def _entry(metrics: dict, seconds: float, compile_seconds: float = 0.0, diverged=None) -> dict:
    return {"forget_acc": metrics["forget_em"], "retain_acc": metrics["retain_em"], "test_acc": metrics["utility_acc"],
            "mia": metrics["mia_min_k"], "tow": 0.0, "seconds": float(seconds),
            "compile_seconds": float(compile_seconds), "diverged": diverged, **metrics}  # fmt: skip


def _one_seed(cfg: LMJobConfig, seed: int, corpus, arrays, prog: _Entries, say) -> dict:
    split = corpus.split(cfg.forget, seed=seed)
    t = arrays["x"].shape[1]

    def build(s):
        m = models.build("gpt", num_classes=corpus.tokenizer.vocab_size, input_shape=(t,), seed=s, dim=cfg.dim,
                         depth=cfg.depth, heads=cfg.heads, positions=cfg.positions)  # fmt: skip
        return models.split_model(m)

    apply_fn, params0, state = build(seed)
    data = {k: np.asarray(v) for k, v in arrays.items()}
    train_idx = np.sort(np.concatenate([split.retain_idx, split.forget_idx]))
    pre_opt = dataclasses.replace(lm_methods.LM_PRETRAIN_DEFAULT, lr=cfg.pretrain_lr)
    ckpt = (lambda name: os.path.join(cfg.out, "checkpoints", f"seed{seed}", name)) if cfg.out else (lambda n: None)
    kw = {"progress": cfg.progress, "checkpoint_every": None, "resume": cfg.resume}

    def evaluate(p):
        return lm_metrics.evaluate_lm(apply_fn, p, state, data, forget_idx=split.forget_idx,
                                      retain_idx=split.retain_idx, heldout_idx=split.heldout_idx)  # fmt: skip

    forget_q = split.forget_idx[data["kind"][split.forget_idx] == 1]
    forget_s = split.forget_idx[data["kind"][split.forget_idx] == 0]
    relearn_idx = np.sort(np.random.default_rng([seed, 99]).permutation(forget_s)[: cfg.relearn_examples])
    # the attack is scored on the forget questions whose fact is NOT in the relearn sentences: what comes back
    # there was hidden, not relearned (Retrain stays at chance on them)
    taught = {(int(data["person"][i]), int(data["attr"][i])) for i in relearn_idx}
    unseen_q = np.array([i for i in forget_q if (int(data["person"][i]), int(data["attr"][i])) not in taught])
    forget_q = unseen_q if unseen_q.size else forget_q

    def relearn(p):
        return lm_metrics.relearn_lm(apply_fn, p, state, data, relearn_idx, forget_q, steps=cfg.relearn_steps,
                                     lr=cfg.relearn_lr, eval_every=cfg.relearn_every)  # fmt: skip

    say(f"seed {seed}: pretraining on {len(train_idx)} examples ({models.num_params(params0)} parameters)")
    pre = engine.train(apply_fn, params0, state, data, optimizer=pre_opt, epochs=cfg.pretrain_epochs,
                       batch_size=cfg.batch_size, train_idx=train_idx, loss=lm_methods.lm_loss, seed=seed,
                       checkpoint_dir=ckpt("pretrain"), name="pretrain", **kw)  # fmt: skip
    params = pre.params
    steps_per_epoch = int(np.ceil(len(train_idx) / cfg.batch_size))
    info = prog.get(f"{seed}/pretrain") or {"epochs": cfg.pretrain_epochs,
            "steps": steps_per_epoch * cfg.pretrain_epochs, "seconds": pre.seconds,
            "compile_seconds": pre.compile_seconds,
            "final_loss": pre.history[-1].get("loss/train") if pre.history else None}  # fmt: skip
    prog.put(f"{seed}/pretrain", info)  # a resumed job restores the model from its checkpoint, not these facts
    out = {"variants": {}, "relearn": {}, "pretrain": dict(info)}
    fixed = {}
    for name, p, seconds, comp in (("original", params, pre.seconds, pre.compile_seconds),):
        fixed[name] = prog.get(f"{seed}/{name}") or {**_entry(evaluate(p), seconds, comp), "relearn": relearn(p)}
        prog.put(f"{seed}/{name}", fixed[name])
    out["pretrain"]["forget_em"] = fixed["original"]["forget_em"]
    out["pretrain"]["retain_em"] = fixed["original"]["retain_em"]
    udata = dict(data)  # the unlearning losses' view: forget rows score only their facts (forget_tokens)
    if cfg.forget_tokens == "facts":
        udata["mask"] = data["mask"].copy()
        udata["mask"][split.forget_idx] = data["emask"][split.forget_idx]
    ctx = lm_methods.LMContext(apply_fn, params, state, udata, split.retain_idx, split.forget_idx,
                               epochs=cfg.unlearn_epochs or 5, batch_size=min(cfg.batch_size, 32), seed=seed,
                               init_fn=lambda s: build(s)[1:], pretrain_optimizer=pre_opt,
                               pretrain_epochs=cfg.pretrain_epochs)  # fmt: skip
    if prog.get(f"{seed}/retrain") is None:
        say(f"seed {seed}: retrain")
        rt = lm_methods.unlearn("retrain", dataclasses.replace(ctx, batch_size=cfg.batch_size),
                                checkpoint_dir=ckpt("retrain"), **kw)  # fmt: skip
        prog.put(f"{seed}/retrain", {**_entry(evaluate(rt.params), rt.seconds, rt.compile_seconds),
                                     "relearn": relearn(rt.params)})  # fmt: skip
    fixed["retrain"] = prog.get(f"{seed}/retrain")
    ref = {k: fixed["retrain"][k] for k in ("forget_acc", "retain_acc", "test_acc")}
    for kind in cfg.optimizers:
        opt, sign = _optimizer(kind, cfg)
        variant = {k: dict(v) for k, v in fixed.items()}
        for name in cfg.methods:
            key = f"{seed}/{kind}/{name}"
            if prog.get(key) is None:
                say(f"seed {seed}: {name} with {kind}")
                mctx = dataclasses.replace(ctx, optimizer=opt, options=_method_options(name, sign, cfg))
                res = lm_methods.unlearn(name, mctx, progress=cfg.progress)
                entry = _entry(evaluate(res.params), res.seconds, res.compile_seconds, res.diverged)
                entry["relearn"] = relearn(res.params)
                entry["info"] = {k: v for k, v in res.info.items() if isinstance(v, int | float | str)}
                prog.put(key, entry)
            variant[name] = dict(prog.get(key))
        for name, entry in variant.items():
            entry["tow"] = tow({k: entry[k] for k in ref}, ref)
            curve = entry.pop("relearn")
            entry["relearn_auc"], entry["relearn_final"] = curve["auc"], curve["final_forget_acc"]
            out["relearn"].setdefault(kind, {})[name] = curve
        out["variants"][kind] = variant
    return out


def _aggregate(per_seed: list[dict]) -> dict:
    if len(per_seed) == 1:
        return per_seed[0]
    variants = {}
    for kind in per_seed[0]["variants"]:
        variants[kind] = {}
        for name in per_seed[0]["variants"][kind]:
            entries = [s["variants"][kind][name] for s in per_seed]
            agg = aggregate_seeds([{k: v for k, v in e.items() if k not in ("diverged", "info")} for e in entries])
            agg["diverged"] = [e.get("diverged") for e in entries]
            variants[kind][name] = agg
    relearn = {kind: {name: [s["relearn"][kind][name] for s in per_seed] for name in per_seed[0]["relearn"][kind]}
               for kind in per_seed[0]["relearn"]}  # fmt: skip
    pretrain = aggregate_seeds([s["pretrain"] for s in per_seed])
    return {"variants": variants, "relearn": relearn, "pretrain": pretrain}


#: the table's columns and headers
TABLE_COLUMNS = ("forget_acc", "retain_acc", "forget_extraction", "mia", "test_acc", "utility_ppl", "relearn_auc",
                 "relearn_final", "tow", "seconds")  # fmt: skip
TABLE_HEADERS = {"forget_acc": "Forget EM (%)", "retain_acc": "Retain EM (%)", "forget_extraction": "Forget extr.",
                 "mia": "MIA min-k (%)", "test_acc": "Held-out acc (%)", "utility_ppl": "Held-out ppl",
                 "relearn_auc": "Relearn AUC", "relearn_final": "Relearn final EM", "tow": "ToW (%)"}  # fmt: skip


def table(results: dict) -> str:
    """The markdown tables of a result (one per unlearning optimizer), via :func:`jaxunlearn.report.markdown_table`.

    Example:
        >>> e = {"forget_acc": 0.1, "retain_acc": 0.9, "test_acc": 0.5, "mia": 0.5, "tow": 0.9, "seconds": 1.0}
        >>> print(table({"variants": {"sgd": {"retrain": e}}}).splitlines()[0])
        ### unlearning optimizer: sgd
    """
    parts = []
    for kind, methods in results["variants"].items():
        parts.append(f"### unlearning optimizer: {kind}\n")
        parts.append(report.markdown_table(methods, TABLE_COLUMNS, headers=TABLE_HEADERS))
    return "\n".join(parts)


def run(config: LMJobConfig | dict | None = None, **overrides) -> dict:
    """Run the LM job (module docstring) and return its results; with ``config.out`` also write
    ``results.json`` (validated like the image job's: ``report.validate_results``) and ``table.md`` there (the
    relearning curves are in ``results.json``'s ``relearn``).

    Example:
        >>> run({"people": 1})
        Traceback (most recent call last):
        ValueError: num_people must be >= 2 (one to forget, one to retain), got 1.
    """
    if config is None:
        config = LMJobConfig(**overrides)
    elif isinstance(config, dict):
        config = LMJobConfig(**{**config, **overrides})
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    cfg = config
    corpus = make_facts(cfg.people, heldout=cfg.heldout, templates=cfg.templates, seed=cfg.corpus_seed)
    arrays = corpus.arrays()
    say = print if cfg.progress else (lambda *_: None)
    created = cfg.out if cfg.out and not os.path.exists(cfg.out) else None
    prog = _Entries(cfg)
    try:
        per_seed = [_one_seed(cfg, cfg.seed + i, corpus, arrays, prog, say) for i in range(cfg.seeds)]
    except Exception:
        # a failure before any finished entry leaves the folder as it was (as the image job does), so the
        # corrected command needs neither resume=True nor another out
        prog.discard()
        if created is not None and os.path.isdir(created) and not os.listdir(created):
            os.rmdir(created)
        raise
    agg = _aggregate(per_seed)
    first = next(iter(agg["variants"]))
    settings = {**cfg.settings(), "dataset": "facts", "model": "gpt", "vocab_size": corpus.tokenizer.vocab_size,
                "context": int(arrays["x"].shape[1]), "examples": len(corpus), "wall_seconds": prog.seconds,
                "num_params": models.num_params(models.build("gpt", num_classes=corpus.tokenizer.vocab_size,
                                                             input_shape=(int(arrays["x"].shape[1]),), dim=cfg.dim,
                                                             depth=cfg.depth, heads=cfg.heads,
                                                             positions=cfg.positions))}  # fmt: skip
    results = {"settings": settings, "methods": agg["variants"][first], "variants": agg["variants"],
               "relearn": agg["relearn"], "pretrain": agg["pretrain"], "environment": report.environment()}  # fmt: skip
    results = report.to_jsonable(results)
    if cfg.out:
        report.validate_results({"settings": results["settings"], "methods": results["methods"]})
        for kind in results["variants"]:
            report.validate_results({"settings": {}, "methods": results["variants"][kind]})
        _atomic.write_text(os.path.join(cfg.out, "results.json"), json.dumps(results, indent=2) + "\n")
        _atomic.write_text(os.path.join(cfg.out, "table.md"), table(results))
    prog.save()
    return results
