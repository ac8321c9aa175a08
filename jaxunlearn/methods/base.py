"""What every unlearning method receives (:class:`Context`) and returns (:class:`Recipe`), and the registry.

A method is a small function ``recipe(ctx) -> Recipe``. Gradient methods return a
:class:`~jaxunlearn.plan.Plan` that the shared engine runs; methods that edit the weights directly
(SSD, the closed-form feature/label updates) return the new parameters. Methods import only the core,
``plan``, ``selection`` and ``objectives``, never the engine.

Example:
    >>> from jaxunlearn import methods
    >>> sorted(methods.METHODS)[:3]
    ['ft', 'ga', 'hessian_select']
    >>> recipe = methods.get("neggrad").recipe(ctx)
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

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
        if np.intersect1d(self.retain_idx, self.forget_idx).size:
            raise ValueError("retain_idx and forget_idx overlap; an example cannot be both retained and forgotten.")

    @property
    def key(self) -> jax.Array:
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
    """A registered method: its name, a one-line summary, its recipe builder and default options."""

    name: str
    summary: str
    recipe_fn: Callable[[Context, dict], Recipe]
    defaults: dict = dataclasses.field(default_factory=dict)
    gradient_based: bool = True

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


def register(name: str, summary: str, defaults: dict | None = None, *, gradient_based: bool = True):
    """Decorator registering ``fn(ctx, options) -> Recipe`` under ``name``.

    Example:
        >>> @register("my_ft", "fine-tune", {"lr_scale": 1.0})
        ... def my_ft(ctx, opts): ...
    """

    def deco(fn):
        if name in METHODS:
            raise ValueError(f"method {name!r} is already registered.")
        if VARIANT_SEP in name:
            raise ValueError(
                f"method names cannot contain {VARIANT_SEP!r} (it marks a variant NAME{VARIANT_SEP}TAG of a registered "
                f"method, which needs no registration), got {name!r}."
            )
        METHODS[name] = Method(name, summary, fn, dict(defaults or {}), gradient_based)
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
    """Merge ``options`` over the method's defaults; unknown option names raise ``ValueError``."""
    unknown = set(options) - set(method.defaults)
    if unknown:
        raise ValueError(
            f"{method.name} has no option(s) {sorted(unknown)}; its options are "
            f"{', '.join(f'{k}={v!r}' for k, v in method.defaults.items()) or 'none'}."
        )
    return {**method.defaults, **options}


def method_plan(ctx: Context, opts: dict, name: str, *phases, **kw) -> Plan:
    """A :class:`Plan` with a method's usual schedule: the context's unlearning optimizer with its rate times
    ``opts["lr_scale"]``, ``opts["epochs"]`` (or the context's) epochs, the context's batch size.

    Example:
        >>> plan = method_plan(ctx, {"lr_scale": 0.1}, "ft", Phase("retain", supervised_loss))
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
