"""What every unlearning method receives (:class:`Context`) and returns (:class:`Recipe`), and the registry.

A method is a small function ``recipe(ctx) -> Recipe``. Gradient methods return a
:class:`~jaxunlearn.plan.Plan` that the shared engine runs; methods that edit the weights directly
(SSD, the closed-form feature/label updates) return the new parameters. Methods import only the core,
``plan``, ``selection`` and ``objectives``, never the engine.

Example:
    >>> from jaxunlearn import methods
    >>> sorted(methods.METHODS)[:3]
    ['ft', 'ga', 'hessian_select']
    >>> recipe = methods.get("neggrad").recipe(methods.toy_context())
    >>> recipe.plan.name, [phase.name for phase in recipe.plan.phases], recipe.params is None
    ('neggrad', ['neggrad'], True)
    >>> methods.get("ssd").recipe(methods.toy_context()).plan is None  # a direct edit of the weights
    True
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxunlearn.methods import options as _options
from jaxunlearn.plan import PRETRAIN_DEFAULT, UNLEARN_DEFAULT, OptimConfig, Plan, as_optim_config

__all__ = [
    "Context",
    "Recipe",
    "Method",
    "METHODS",
    "VARIANT_SEP",
    "register",
    "get",
    "resolve_options",
    "method_plan",
    "scaled",
    "toy_context",
]

PyTree = Any


@dataclasses.dataclass
class Context:
    """Everything a method may use.

    Attributes:
        apply_fn: ``apply_fn(params, model_state, x, *, train, features) -> (out, new_state)``.
        params, model_state: the trained (original) model.
        x, y: all training inputs/labels, on the device (``x[retain_idx]`` is the retain set).
        retain_idx, forget_idx: disjoint 1-D integer index arrays into ``x``.
        num_classes: number of classes.
        optimizer: the unlearning optimizer (plain, SAM or ASAM), default AdamW(0.01, wd 5e-4): an
            ``OptimConfig``, an ``optax.GradientTransformation`` or a factory ``total_steps -> tx``.
        epochs, batch_size, seed: unlearning schedule.
        options: method-specific settings overriding the method's defaults.
        init_fn: ``seed -> (params, model_state)`` fresh initialisation (for Retrain).
        pretrain_optimizer, pretrain_epochs: the recipe Retrain repeats on the retain set (any optimizer, as
            ``optimizer``).
        corrected: for feature/label unlearning, ``(x_tilde, y_tilde)``: the corrected versions of the
            forget examples ``x[forget_idx]`` (same order), or None for plain sample deletion.

    The fields are checked when the context is built (labels in ``[0, num_classes)``, finite inputs,
    disjoint index sets inside ``[0, N)``); a bad one raises ``ValueError``.

    Example:
        >>> import numpy as np
        >>> from jaxunlearn import models
        >>> apply_fn, params, state = models.split_model(
        ...     models.build("mlp", num_classes=2, input_shape=(3,), hidden=(4,)))
        >>> x = np.random.default_rng(0).normal(size=(10, 3)).astype("float32")
        >>> y = (x[:, 0] > 0).astype("int32")
        >>> ctx = Context(apply_fn, params, state, x, y, retain_idx=np.arange(8), forget_idx=np.arange(8, 10),
        ...               num_classes=2)
        >>> ctx.optimizer.name, ctx.epochs, ctx.batch_size
        ('adamw', 10, 64)
        >>> Context(apply_fn, params, state, x, y, np.arange(8), np.arange(7, 10), 2)
        Traceback (most recent call last):
        ValueError: retain_idx and forget_idx overlap; an example cannot be both retained and forgotten.
    """

    apply_fn: Callable
    params: PyTree
    model_state: PyTree
    x: Any
    y: Any
    retain_idx: np.ndarray
    forget_idx: np.ndarray
    num_classes: int
    optimizer: Any = UNLEARN_DEFAULT
    epochs: int = 10
    batch_size: int = 64
    seed: int = 0
    options: dict = dataclasses.field(default_factory=dict)
    init_fn: Callable[[int], tuple[PyTree, PyTree]] | None = None
    pretrain_optimizer: Any = PRETRAIN_DEFAULT
    pretrain_epochs: int = 30
    corrected: tuple[Any, Any] | None = None

    def __post_init__(self):
        self.optimizer = as_optim_config(self.optimizer, name="Context.optimizer")
        self.pretrain_optimizer = as_optim_config(self.pretrain_optimizer, name="Context.pretrain_optimizer")
        n = int(np.shape(self.x)[0]) if np.ndim(self.x) else 0
        if n == 0 or np.shape(self.y) != (n,):
            raise ValueError(
                f"ctx.x must have a leading example axis and ctx.y shape [N]; got x {np.shape(self.x)}, "
                f"y {np.shape(self.y)}."
            )
        if int(self.num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}.")
        y = np.asarray(self.y)
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"ctx.y must hold integer class labels, got dtype {y.dtype}.")
        if y.min() < 0 or y.max() >= self.num_classes:
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}); found {int(y.min())}..{int(y.max())}. "
                "Check num_classes or remap the labels."
            )
        if not bool(jnp.all(jnp.isfinite(jnp.asarray(self.x)))):
            raise ValueError("ctx.x contains NaN or inf; clean or impute the inputs before unlearning.")
        self.retain_idx = np.asarray(self.retain_idx)
        self.forget_idx = np.asarray(self.forget_idx)
        for name, idx in (("retain_idx", self.retain_idx), ("forget_idx", self.forget_idx)):
            if idx.size and (idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer)):
                raise ValueError(f"{name} must be a 1-D integer index array, got shape {idx.shape} {idx.dtype}.")
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise ValueError(f"{name} has indices outside [0, {n}).")
        if self.forget_idx.size == 0:
            raise ValueError(
                "forget_idx is empty: there is nothing to unlearn; give the indices of the examples to forget."
            )
        if self.retain_idx.size == 0:
            raise ValueError(
                "retain_idx is empty: the methods need retained examples (they fine-tune and evaluate on them)."
            )
        if np.intersect1d(self.retain_idx, self.forget_idx).size:
            raise ValueError("retain_idx and forget_idx overlap; an example cannot be both retained and forgotten.")
        self._check_model()

    def _check_model(self):
        """Trace (no compute) one eval and one train call of the model on two examples: the call must work
        and give logits ``[2, num_classes]``."""
        if not callable(self.apply_fn):
            raise TypeError(
                f"ctx.apply_fn must be callable apply_fn(params, model_state, x, *, train), got {self.apply_fn!r}"
            )
        x2 = jax.ShapeDtypeStruct((min(2, len(self.y)), *np.shape(self.x)[1:]), jnp.asarray(self.x[:1]).dtype)
        for train in (False, True):
            try:
                out = jax.eval_shape(
                    lambda p, s, x, t=train: self.apply_fn(p, s, x, train=t), self.params, self.model_state, x2
                )
            except Exception as err:  # noqa: BLE001 - any failure of the user's model is reported in one line
                msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise ValueError(
                    f"the model cannot be called as apply_fn(params, model_state, x, train={train}) on inputs of "
                    f"shape {x2.shape}: {type(err).__name__}: {msg}"
                ) from None
            logits = out[0] if isinstance(out, tuple) and len(out) == 2 else None
            if logits is None or getattr(logits, "shape", None) != (x2.shape[0], int(self.num_classes)):
                got = getattr(logits, "shape", type(out).__name__)
                raise ValueError(
                    f"apply_fn(params, model_state, x, train={train}) must return (logits [B, num_classes], "
                    f"model_state); with num_classes={self.num_classes} and B={x2.shape[0]} it gave {got}. "
                    "Set num_classes to the model's number of outputs."
                )

    @property
    def key(self) -> jax.Array:
        """``jax.random.key(seed)``: the PRNG key of the context's seed."""
        return jax.random.key(self.seed)


@dataclasses.dataclass
class Recipe:
    """A method's output: a plan to run (from ``start`` or the original parameters), or final parameters.

    ``retain_idx``/``forget_idx`` override the context's index sets for the run; ``corrected``
    ``(x̃, ỹ)``: examples that join the retain set for the run (feature or label unlearning; filled from
    ``ctx.corrected`` when a plan leaves it unset); ``info`` is copied into the results (mask sizes, ...).

    Example:
        >>> Recipe(params={"w": 0.0}).plan is None
        True
    """

    plan: Plan | None = None
    start: tuple[PyTree, PyTree] | None = None
    params: PyTree | None = None
    model_state: PyTree | None = None
    retain_idx: np.ndarray | None = None
    forget_idx: np.ndarray | None = None
    corrected: tuple[Any, Any] | None = None
    info: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if (self.plan is None) == (self.params is None):
            raise ValueError("a Recipe has either a plan to run or final params, not both or neither.")


@dataclasses.dataclass(frozen=True)
class Method:
    """A registered method: its name, a one-line summary, its recipe builder and default options.

    ``gradient_based`` is False for methods that edit the weights directly (no plan, no optimizer).
    ``tune_options`` (``{option: values}``) is the grid :func:`jaxunlearn.tuning.tune` searches by default for a
    method without a learning rate (SSD's ``alpha``); ``tune_factors`` (None: the common
    ``tuning.GRID_FACTORS``) the factors of its default ``lr_scale`` grid (GA's reaches 10× up).

    Example:
        >>> m = get("ga")
        >>> m.name, m.gradient_based, m.defaults
        ('ga', True, {'lr_scale': 0.003, 'epochs': 5})
        >>> m.recipe(toy_context()).plan.epochs  # the method's default of 5 epochs, not the context's 1
        5
        >>> m.recipe(toy_context(options={"epochs": 3})).plan.epochs
        3
        >>> get("ft@long").base
        'ft'
    """

    name: str
    summary: str
    recipe_fn: Callable[[Context, dict], Recipe]
    defaults: dict = dataclasses.field(default_factory=dict)
    gradient_based: bool = True
    checks: dict = dataclasses.field(default_factory=dict)
    tune_options: dict = dataclasses.field(default_factory=dict)
    tune_factors: tuple[float, ...] | None = None

    def recipe(self, ctx: Context) -> Recipe:
        """The method's recipe for ``ctx`` (its options merged over the defaults); a plan's ``corrected``
        examples default to ``ctx.corrected``."""
        recipe = self.recipe_fn(ctx, resolve_options(self, ctx.options))
        if recipe.plan is not None and recipe.corrected is None and ctx.corrected is not None:
            recipe = dataclasses.replace(recipe, corrected=ctx.corrected)
        return recipe

    @property
    def base(self) -> str:
        """The registered method this is: ``name`` without a variant's ``@tag`` (``get("ft@e3").base == "ft"``)."""
        return self.name.partition(VARIANT_SEP)[0]


METHODS: dict[str, Method] = {}

#: ``base@tag`` names a variant of the registered method ``base``: the same method under its own name, so
#: one job can run it several times with different options (``--option sharp_minmax@f0.3.fraction=0.3``).
VARIANT_SEP = "@"
_TAG_RE = re.compile(r"[A-Za-z0-9_.+-]+")


def register(
    name: str,
    summary: str,
    defaults: dict | None = None,
    *,
    gradient_based: bool = True,
    overwrite: bool = False,
    checks: dict | None = None,
    tune_options: dict | None = None,
    tune_factors: Sequence[float] | None = None,
):
    """Decorator registering ``fn(ctx, options) -> Recipe`` under ``name``.

    Registering a taken name raises ``ValueError`` unless ``overwrite=True`` (re-running a notebook cell
    that defines a method). ``checks``: ``{option: rule}`` (:mod:`jaxunlearn.methods.options`), checked with
    the common rules whenever options are resolved, so a bad value fails before any training. ``tune_options``:
    ``{option: values}``, the grid ``tuning.tune`` searches when it is given none for a method that edits the
    weights directly (no learning rate to tune). ``tune_factors``: the factors of the default ``lr_scale`` grid
    ``tuning.tune`` searches around the method's rate (default ``tuning.GRID_FACTORS``). A method is a
    recipe builder: compose the pieces exported here (:class:`~jaxunlearn.plan.Phase`, :func:`method_plan`,
    :class:`Recipe`, :mod:`jaxunlearn.objectives`).

    Example:
        >>> from jaxunlearn.plan import Phase, supervised_loss
        >>> @register("my_ft", "fine-tune", {"lr_scale": 1.0})
        ... def my_ft(ctx, opts):
        ...     return Recipe(plan=method_plan(ctx, opts, "my_ft", Phase("retain", supervised_loss)))
        >>> get("my_ft").recipe(toy_context()).plan.name
        'my_ft'
        >>> _ = register("my_ft", "fine-tune, half rate", {"lr_scale": 0.5}, overwrite=True)(my_ft)
        >>> get("my_ft").defaults
        {'lr_scale': 0.5}
        >>> del METHODS["my_ft"]  # registered for this example only
    """

    unknown = sorted(set(tune_options or {}) - set(defaults or {}))
    if unknown:
        raise ValueError(f"register({name!r}): tune_options names {unknown}, which are not among its defaults.")
    if tune_factors is not None:
        tune_factors = tuple(float(f) for f in tune_factors)
        if not tune_factors or not all(math.isfinite(f) and f > 0 for f in tune_factors):
            raise ValueError(f"register({name!r}): tune_factors must be finite numbers > 0, got {tune_factors}.")

    def deco(fn):
        if name in METHODS and not overwrite:
            raise ValueError(
                f"method {name!r} is already registered; pass register(..., overwrite=True) to replace it "
                "(e.g. when re-running a notebook cell) or choose another name."
            )
        if VARIANT_SEP in name:
            raise ValueError(
                f"method names cannot contain {VARIANT_SEP!r} (it marks a variant NAME{VARIANT_SEP}TAG of a registered "
                f"method, which needs no registration), got {name!r}."
            )
        METHODS[name] = Method(name, summary, fn, dict(defaults or {}), gradient_based, dict(checks or {}),
                               {k: tuple(v) for k, v in (tune_options or {}).items()}, tune_factors)  # fmt: skip
        return fn

    return deco


def get(name: str) -> Method:
    """The method registered as ``name``, or the variant ``base@tag`` of the registered method ``base``.

    A variant is the base method (same recipe, same defaults) under the name ``base@tag``, so results,
    checkpoints and options (``JobConfig.method_options["base@tag"]``) are kept apart from the base's; it
    does not inherit the options given to ``base``. Tags are letters, digits and ``_ . + -``.
    Unknown names raise ``ValueError`` with the closest names.

    Example:
        >>> get("neggrad").summary
        'alpha*CE(R) - (1-alpha)*CE(F)'
        >>> get("sharp_minmax@f0.3").defaults == get("sharp_minmax").defaults
        True
    """
    if name in METHODS:
        return METHODS[name]
    base, sep, tag = str(name).partition(VARIANT_SEP)
    if sep and base in METHODS:
        if not _TAG_RE.fullmatch(tag):
            raise ValueError(
                f"bad method variant {name!r}: the tag after {VARIANT_SEP!r} must be letters, digits and _ . + - "
                f"(e.g. {base}@long)."
            )
        m = METHODS[base]
        return dataclasses.replace(m, name=name, summary=f"{m.summary} [{tag}]")
    close = difflib.get_close_matches(base if sep else name, METHODS, n=3)
    hint = f" Did you mean {', '.join(repr(c + (sep + tag if sep else '')) for c in close)}?" if close else ""
    raise ValueError(
        f"unknown method {name!r}.{hint} Known methods: {', '.join(sorted(METHODS))} "
        f"(and variants NAME{VARIANT_SEP}TAG of each)."
    )


def resolve_options(method: Method, options: dict) -> dict:
    """Merge ``options`` over the method's defaults; unknown option names and values outside an option's
    range (:mod:`jaxunlearn.methods.options`) raise ``ValueError``.

    Example:
        >>> resolve_options(get("neggrad"), {"alpha": 0.9})
        {'alpha': 0.9, 'lr_scale': 0.3, 'epochs': None}
        >>> resolve_options(get("neggrad"), {"alpah": 0.9})
        Traceback (most recent call last):
        ValueError: neggrad has no option(s) ['alpah']; its options are alpha=0.999, lr_scale=0.3, epochs=None.
        >>> resolve_options(get("neggrad"), {"alpha": 5})
        Traceback (most recent call last):
        jaxunlearn.methods.options.OptionError: neggrad option alpha=5: must be a number in [0, 1].
    """
    unknown = set(options) - set(method.defaults)
    if unknown:
        raise ValueError(
            f"{method.name} has no option(s) {sorted(unknown)}; its options are "
            f"{', '.join(f'{k}={v!r}' for k, v in method.defaults.items()) or 'none'}."
        )
    return _options.check(method.name, {**method.defaults, **options}, method.checks)


def method_plan(ctx: Context, opts: dict, name: str, *phases, **kw) -> Plan:
    """A :class:`Plan` with a method's usual schedule: the context's unlearning optimizer with its rate times
    ``opts["lr_scale"]``, ``opts["epochs"]`` (or the context's) epochs, the context's batch size.

    Example:
        >>> from jaxunlearn.plan import Phase, supervised_loss
        >>> ctx = toy_context(epochs=3)
        >>> plan = method_plan(ctx, {"lr_scale": 0.1}, "ft", Phase("retain", supervised_loss))
        >>> plan.name, plan.epochs, plan.batch_size, round(plan.optimizer.lr, 6)
        ('ft', 3, 16, 0.001)
        >>> method_plan(ctx, {"epochs": 5}, "ft", Phase("retain", supervised_loss)).epochs
        5
    """
    kw.setdefault("optimizer", scaled(ctx.optimizer, opts.get("lr_scale", 1.0)))
    return Plan(
        phases=tuple(phases), epochs=opts.get("epochs") or ctx.epochs, batch_size=ctx.batch_size, name=name, **kw
    )


def scaled(cfg: OptimConfig, lr_scale: float) -> OptimConfig:
    """``cfg`` with its learning rate multiplied by ``lr_scale`` (a user's ``base`` optimizer: its updates
    multiplied by ``lr_scale``, see :class:`~jaxunlearn.plan.OptimConfig`).

    Example:
        >>> scaled(UNLEARN_DEFAULT, 0.1).lr
        0.001
    """
    if lr_scale == 1.0:
        return cfg
    if cfg.uses_base:
        return dataclasses.replace(cfg, scale=cfg.scale * lr_scale)
    return dataclasses.replace(cfg, lr=cfg.lr * lr_scale)


def toy_context(num_classes: int = 3, n: int = 60, seed: int = 0, **kw) -> Context:
    """A tiny :class:`Context` for examples and quick tests: an untrained toy, not a model worth unlearning from.

    The model is an MLP with one hidden layer of 8 units (``models.build("mlp", hidden=(8,))``), freshly
    initialised from ``seed`` and never trained; the data are ``n`` standard-normal inputs of dimension 4
    labelled by the argmax of a fixed random linear map (``num_classes`` classes, all from ``seed``). The last
    ``n // 5`` examples are the forget set, the others the retain set. One epoch of unlearning, one of
    Retrain's pretraining, batch size 16, and an ``init_fn`` (so Retrain runs); ``kw`` sets these or any other
    field (``epochs``, ``optimizer``, ``options``, ``corrected``, ...).

    Example:
        >>> ctx = toy_context()
        >>> ctx.x.shape, len(ctx.retain_idx), len(ctx.forget_idx), ctx.num_classes, ctx.epochs
        ((60, 4), 48, 12, 3, 1)
        >>> toy_context(epochs=2, options={"alpha": 0.9}).options
        {'alpha': 0.9}
        >>> from jaxunlearn.methods import unlearn
        >>> res = unlearn("ga", toy_context(), progress=False)  # GA's own default: 5 epochs over the forget set
        >>> len(res.history), res.diverged is None
        (5, True)
    """
    from jaxunlearn import models  # imported here: the methods never need a model otherwise

    def build(s):
        return models.split_model(models.build("mlp", num_classes=num_classes, input_shape=(4,), seed=s, hidden=(8,)))

    apply_fn, params, state = build(seed)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = np.argmax(x @ rng.normal(size=(4, num_classes)), axis=1).astype(np.int32)
    n_f = n // 5
    fields = {"epochs": 1, "batch_size": 16, "seed": seed, "pretrain_epochs": 1, "init_fn": lambda s: build(s)[1:]}
    fields.update(kw)
    x, y, retain_idx, forget_idx = jnp.asarray(x), jnp.asarray(y), np.arange(n - n_f), np.arange(n - n_f, n)
    return Context(apply_fn, params, state, x, y, retain_idx, forget_idx, num_classes, **fields)
