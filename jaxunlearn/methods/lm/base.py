"""What a language-model unlearning method receives (:class:`LMContext`), the LM registry and the runner.

The classification :class:`jaxunlearn.methods.Context` checks labels ``y [N]`` in ``[0, num_classes)`` and
logits ``[B, num_classes]``, and the image job runs every entry of ``methods.METHODS`` (``hessian_select``'s
``base`` option lists them too). A token batch (``x``, ``y`` ``[N, T]``, a loss ``mask``) fits neither, so
the LM methods live in their own registry, :data:`LM_METHODS`, built from the same pieces: a method is a
recipe builder ``fn(ctx, opts) -> Recipe`` (:class:`jaxunlearn.methods.Recipe`) whose
:class:`~jaxunlearn.plan.Plan` the shared engine runs, options are resolved and checked by
:func:`jaxunlearn.methods.resolve_options`, and the context's optimizer (plain, SAM, ASAM, any
:data:`~jaxunlearn.plan.OPTIMIZER_KINDS` kind, or an Optax optimizer) applies unchanged. Phase losses
read ``batch = {"retain": R, "forget": F}`` with ``R``/``F`` the token arrays of the source
(:meth:`jaxunlearn.data.facts.FactsCorpus.arrays`): ``x`` inputs, ``y`` targets, ``mask`` the scored
targets, ``valid`` the non-pad inputs.

Example:
    >>> from jaxunlearn.methods import lm
    >>> ctx = lm.toy_lm_context()
    >>> res = lm.unlearn("grad_ascent", ctx, progress=False)   # GradAscent's default: 3 epochs
    >>> len(res.history), res.diverged is None
    (3, True)
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxunlearn import engine, objectives
from jaxunlearn.methods import options
from jaxunlearn.methods.base import VARIANT_SEP, Method, Recipe, resolve_options
from jaxunlearn.plan import OptimConfig, Phase, Plan, as_optim_config

__all__ = [
    "LMContext",
    "LM_METHODS",
    "LM_KEYS",
    "register_lm",
    "get_lm",
    "lm_plan",
    "lm_loss",
    "forward",
    "unlearn",
    "toy_lm_context",
    "LM_PRETRAIN_DEFAULT",
    "LM_UNLEARN_DEFAULT",
    "SIGN_CHECK",
    "Phase",
    "Recipe",
    "resolve_options",
]

PyTree = Any
#: the arrays a token batch must hold
LM_KEYS = ("x", "y", "mask")
#: pretraining / Retrain recipe for the small transformer: AdamW 3e-3, cosine, no weight decay
LM_PRETRAIN_DEFAULT = OptimConfig(name="adamw", lr=3e-3, momentum=0.0, weight_decay=0.0, schedule="cosine")
#: unlearning optimizer: AdamW 1e-3 (constant)
LM_UNLEARN_DEFAULT = OptimConfig(name="adamw", lr=1e-3, momentum=0.0, weight_decay=0.0, schedule="constant")


def forward(apply_fn, params, model_state, part: dict, *, train: bool = True, features: bool = False):
    """``apply_fn(params, model_state, part["x"], train=train, features=features)``: logits ``[B, T, V]``
    (or hidden states ``[B, L + 1, T, D]``) and the new model state.

    Example:
        >>> ctx = toy_lm_context()
        >>> logits, _ = forward(ctx.apply_fn, ctx.params, ctx.model_state, {"x": ctx.data["x"][:2]})
        >>> logits.shape[:2]
        (2, 14)
    """
    return apply_fn(params, model_state, part["x"], train=train, features=features)


def lm_loss(apply_fn, params, model_state, batch, hp, info):
    """Next-token cross-entropy on the retain batch's masked targets, ``CE(R) = −Σ m log p(y) / Σ m``:
    pretraining, Retrain and fine-tuning of a language model (the LM form of
    :func:`jaxunlearn.plan.supervised_loss`).

    Example:
        >>> from jaxunlearn.plan import StepInfo
        >>> ctx = toy_lm_context()
        >>> part = engine.ArraySource.gather(ctx.data, ctx.retain_idx[:4])
        >>> loss, _ = lm_loss(ctx.apply_fn, ctx.params, ctx.model_state, {"retain": part}, {}, StepInfo.at())
        >>> bool(jnp.abs(loss - jnp.log(ctx.apply_fn.num_classes)) < 0.5)   # an untrained model: about log V
        True
    """
    r = batch["retain"]
    logits, new_state = forward(apply_fn, params, model_state, r)
    return objectives.token_cross_entropy(logits, r["y"], r["mask"]), new_state


@dataclasses.dataclass
class LMContext:
    """Everything an LM unlearning method may use.

    Attributes:
        apply_fn: ``apply_fn(params, model_state, x, *, train, features) -> (out, new_state)`` with ``out`` the
            logits ``[B, T, V]`` (``features=True``: hidden states ``[B, L + 1, T, D]``, for RMU).
        params, model_state: the trained (original) model.
        data: the token arrays ``{"x", "y", "mask", ...}`` (``[N, T]`` each) or an ``engine.ArraySource`` of them.
        retain_idx, forget_idx: disjoint, non-empty 1-D index arrays into ``data``.
        optimizer: the unlearning optimizer (:data:`LM_UNLEARN_DEFAULT`; any optimizer
            :func:`jaxunlearn.plan.as_optim_config` accepts, e.g. ``optimizer_kind("sam", LM_UNLEARN_DEFAULT)``).
        epochs, batch_size, seed, options: the schedule and method options, as in ``methods.Context``; ``epochs``
            applies where a method's ``epochs`` option is None (the tuned LM methods carry their own).
        init_fn, pretrain_optimizer, pretrain_epochs: Retrain's fresh initialisation and recipe.

    Bad inputs raise one-line ``ValueError`` s: missing arrays, an empty retain or forget set, overlapping or
    out-of-range indices, sequences longer than the model's context.

    Example:
        >>> ctx = toy_lm_context()
        >>> ctx.optimizer.name, len(ctx.forget_idx) > 0
        ('adamw', True)
        >>> dataclasses.replace(ctx, retain_idx=np.array([], int))
        Traceback (most recent call last):
        ValueError: the retain set is empty: the LM methods need retained examples ...
    """

    apply_fn: Callable
    params: PyTree
    model_state: PyTree
    data: Any
    retain_idx: np.ndarray
    forget_idx: np.ndarray
    optimizer: Any = LM_UNLEARN_DEFAULT
    epochs: int = 5
    batch_size: int = 32
    seed: int = 0
    options: dict = dataclasses.field(default_factory=dict)
    init_fn: Callable[[int], tuple[PyTree, PyTree]] | None = None
    pretrain_optimizer: Any = LM_PRETRAIN_DEFAULT
    pretrain_epochs: int = 30
    corrected: None = None  # what methods.Method.recipe reads; no corrected examples for language models

    def __post_init__(self):
        self.optimizer = as_optim_config(self.optimizer, name="LMContext.optimizer")
        self.pretrain_optimizer = as_optim_config(self.pretrain_optimizer, name="LMContext.pretrain_optimizer")
        arrays = self.data.arrays if isinstance(self.data, engine.ArraySource) else self.data
        if not isinstance(arrays, dict) or any(k not in arrays for k in LM_KEYS):
            have = sorted(arrays) if isinstance(arrays, dict) else type(arrays).__name__
            raise ValueError(f"LMContext.data must hold the token arrays {list(LM_KEYS)} ([N, T] each), got {have}.")
        self.data = {k: jnp.asarray(v) for k, v in arrays.items()}
        n, t = self.data["x"].shape[:2]
        context = getattr(self.apply_fn, "input_shape", None)
        if context and t > int(context[0]):
            raise ValueError(
                f"the sequences have {t} tokens, longer than the model's context of {int(context[0])}; pad the "
                f"corpus to at most {int(context[0])} tokens or build the model with input_shape=({t},)."
            )
        self.retain_idx = engine.check_indices("retain_idx", self.retain_idx, n, allow_empty=True)
        self.forget_idx = engine.check_indices("forget_idx", self.forget_idx, n, allow_empty=True)
        if self.forget_idx.size == 0:
            raise ValueError("the forget set is empty: there is nothing to unlearn; give the examples to forget.")
        if self.retain_idx.size == 0:
            raise ValueError(
                "the retain set is empty: the LM methods need retained examples "
                "(they keep and evaluate utility on them)."
            )
        if np.intersect1d(self.retain_idx, self.forget_idx).size:
            raise ValueError("retain_idx and forget_idx overlap; an example cannot be both retained and forgotten.")

    @property
    def key(self) -> jax.Array:
        """``jax.random.key(seed)``."""
        return jax.random.key(self.seed)


#: option rule of ``sign``: ``"min"`` (plain / SAM descent) or ``"max"`` (sharpness maximization of the phase)
SIGN_CHECK = options.one_of(("min", "max"))


#: name -> :class:`jaxunlearn.methods.Method` for language models
LM_METHODS: dict[str, Method] = {}


def register_lm(name: str, summary: str, defaults: dict | None = None, *, overwrite: bool = False, checks=None):
    """Decorator registering an LM method ``fn(ctx: LMContext, opts) -> Recipe`` in :data:`LM_METHODS` (the
    same contract as :func:`jaxunlearn.methods.register`).

    Example:
        >>> @register_lm("my_ft", "fine-tune on R", {"epochs": None})
        ... def my_ft(ctx, opts):
        ...     return Recipe(plan=lm_plan(ctx, opts, "my_ft", Phase("retain", lm_loss)))
        >>> get_lm("my_ft").recipe(toy_lm_context()).plan.phases[0].name
        'retain'
        >>> del LM_METHODS["my_ft"]
    """

    def deco(fn):
        if name in LM_METHODS and not overwrite:
            raise ValueError(f"LM method {name!r} is already registered; pass overwrite=True to replace it.")
        LM_METHODS[name] = Method(name, summary, fn, dict(defaults or {}), True, dict(checks or {}))
        return fn

    return deco


def get_lm(name: str) -> Method:
    """The LM method ``name`` (or a variant ``name@tag``); unknown names raise ``ValueError`` with the closest.

    Example:
        >>> get_lm("npo").defaults["beta"]
        0.1
        >>> get_lm("npo@b1").base
        'npo'
    """
    if name in LM_METHODS:
        return LM_METHODS[name]
    base, sep, tag = str(name).partition(VARIANT_SEP)
    if sep and base in LM_METHODS and tag:
        m = LM_METHODS[base]
        return dataclasses.replace(m, name=name, summary=f"{m.summary} [{tag}]")
    close = difflib.get_close_matches(base, LM_METHODS, n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(f"unknown LM method {name!r}.{hint} Known LM methods: {', '.join(sorted(LM_METHODS))}.")


def lm_plan(ctx: LMContext, opts: dict, name: str, *phases, **kw) -> Plan:
    """A :class:`~jaxunlearn.plan.Plan` with an LM method's usual schedule: the context's optimizer (rate times
    ``opts["lr_scale"]`` when given), ``opts["epochs"]`` (or the context's) passes over the forget set (each
    step pairs a forget batch with a retain batch), the context's batch size.

    Example:
        >>> from jaxunlearn.plan import Phase
        >>> plan = lm_plan(toy_lm_context(), {"epochs": 3}, "ft", Phase("retain", lm_loss))
        >>> plan.epochs, plan.epoch_over
        (3, 'forget')
    """
    from jaxunlearn.methods.base import scaled

    kw.setdefault("optimizer", scaled(ctx.optimizer, opts.get("lr_scale", 1.0)))
    kw.setdefault("epoch_over", "forget")
    return Plan(phases=tuple(phases), epochs=opts.get("epochs") or ctx.epochs,
                batch_size=min(ctx.batch_size, len(ctx.retain_idx)), name=name, **kw)  # fmt: skip


def unlearn(name: str, ctx: LMContext, **run_kw) -> engine.RunResult:
    """Run the LM method ``name`` on ``ctx`` with the shared engine (``engine.run``); ``run_kw`` go to it
    (``progress``, ``mesh``, ``param_sharding``, ``checkpoint_dir``, ...). The result's ``info`` holds the
    recipe's (mask sizes, ...).

    Example:
        >>> res = unlearn("graddiff", toy_lm_context(), progress=False)
        >>> sorted(res.history[0])
        ['epoch', 'loss/graddiff']
    """
    method = get_lm(name)
    recipe = method.recipe(ctx)
    if recipe.plan is None:
        return engine.RunResult(recipe.params, recipe.model_state, [], 0.0, info=dict(recipe.info))
    params, state = recipe.start or (ctx.params, ctx.model_state)
    retain = ctx.retain_idx if recipe.retain_idx is None else recipe.retain_idx
    forget = ctx.forget_idx if recipe.forget_idx is None else recipe.forget_idx
    run_kw.setdefault("seed", ctx.seed)
    run_kw.setdefault("desc", name)
    res = engine.run(recipe.plan, ctx.apply_fn, params, state, ctx.data, retain_idx=retain,
                     forget_idx=forget if recipe.plan.epoch_over == "forget" or forget.size else None,
                     **run_kw)  # fmt: skip
    res.info.update(recipe.info)
    return res


def toy_lm_context(num_people: int = 8, seed: int = 0, **kw) -> LMContext:
    """A tiny untrained :class:`LMContext` for examples and tests: a 2-layer GPT (width 16) on a generated
    facts corpus of ``num_people`` people (2 templates), forgetting one person; one epoch, batch 8.

    Example:
        >>> ctx = toy_lm_context()
        >>> ctx.data["x"].shape, len(ctx.forget_idx)
        ((96, 14), 12)
    """
    from jaxunlearn import models
    from jaxunlearn.data.facts import make_facts

    corpus = make_facts(num_people, heldout=0.0, templates=2, seed=seed)
    arrays = corpus.arrays()
    t = arrays["x"].shape[1]

    def build(s):
        m = models.build("gpt", num_classes=corpus.tokenizer.vocab_size, input_shape=(t,), seed=s, dim=16, heads=2)
        return models.split_model(m)

    apply_fn, params, state = build(seed)
    split = corpus.split([0])
    fields = {"epochs": 1, "batch_size": 8, "seed": seed, "pretrain_epochs": 1, "init_fn": lambda s: build(s)[1:]}
    fields.update(kw)
    return LMContext(apply_fn, params, state, arrays, split.retain_idx, split.forget_idx, **fields)
