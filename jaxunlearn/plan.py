"""Plans: what the engine runs. Optimizers, phases (a loss, its batches, a mask, a SAM sign), step facts.

A method (``jaxunlearn.methods``) describes itself as a :class:`Plan`; the engine
(``jaxunlearn.engine``) executes plans. This module sits below both, so methods never import the engine.

Wherever an optimizer is accepted (:class:`Plan`, :class:`Phase`, ``methods.Context``, ``engine.run`` /
``train`` / ``train_many``), it may be an :class:`OptimConfig`, any ``optax.GradientTransformation``, or a
factory ``total_steps -> GradientTransformation``; :func:`as_optim_config` turns the last two into an
``OptimConfig`` whose ``base`` is the user's optimizer, so SAM, ASAM and sharpness maximization wrap it
through :func:`jaxunlearn.transforms.sam` exactly as they wrap the built-in ones.

Example:
    >>> import optax
    >>> plan = Plan(phases=(Phase("train", supervised_loss),), optimizer=OptimConfig(sam="sam"), epochs=5)
    >>> plan.optimizer.sam
    'sam'
    >>> Plan(phases=(Phase("train", supervised_loss),), optimizer=optax.sgd(0.1)).optimizer.base is not None
    True
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
import optax

from jaxunlearn import _validate, objectives, transforms

__all__ = [
    "OptimConfig",
    "StepInfo",
    "as_optim_config",
    "Phase",
    "Plan",
    "build_optimizer",
    "supervised_loss",
    "PRETRAIN_DEFAULT",
    "UNLEARN_DEFAULT",
    "OPTIMIZERS",
    "SAM_KINDS",
    "AVERAGES",
    "OPTIMIZER_KINDS",
    "MAX_KINDS",
    "optimizer_kind",
    "final_params",
]

PyTree = Any

OPTIMIZERS = ("sgd", "adamw", "adam")
SAM_KINDS = ("none", "sam", "asam", "looksam", "gsam", "rs", "gnp", "cr")
AVERAGES = ("none", "uniform", "ema")
#: kinds with a sharpness-maximization form (a phase with ``sign="max"``, e.g. Sharp MinMax's forget phase)
MAX_KINDS = ("none", "sam", "asam", "looksam", "gnp", "cr")
#: the variant defaults of ``alpha`` and ``penalty`` (None in an OptimConfig): LookSAM's α, GSAM's α, γ of GNP / CR
_ALPHA_DEFAULT = {"looksam": 0.7, "gsam": 0.1}
_PENALTY_DEFAULT = {"gnp": 0.01, "cr": 10.0}
#: optimizer names of a job (``--unlearn-optimizer``) -> the OptimConfig fields they set on the base optimizer
OPTIMIZER_KINDS = {
    "sgd": {},
    "sam": {"sam": "sam"},
    "asam": {"sam": "asam"},
    "looksam": {"sam": "looksam"},
    "gsam": {"sam": "gsam"},
    "rs": {"sam": "rs"},
    "gnp": {"sam": "gnp"},
    "cr": {"sam": "cr"},
    "wa": {"average": "uniform"},
}
SCHEDULES = ("cosine", "constant")
MASK_READINGS = ("strict", "reference")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimizer settings: a base Optax optimizer, optionally wrapped in SAM or one of its relatives, optionally
    averaging the weights.

    ``name``: ``sgd`` (momentum, coupled weight decay as in PyTorch), ``adamw`` or ``adam``;
    ``schedule``: ``cosine`` decay to 0 over the run, or ``constant``; ``sam`` (the gradient transform put
    first, :mod:`jaxunlearn.transforms`; gradients per step in brackets):

    * ``none`` [1]; ``sam`` (T = 1) or ``asam`` (T = |w| + η) [2]: ``rho``, ``lamb`` (λ of
      ``g + s·λ·(g' − g)``), ``eta`` (:func:`~jaxunlearn.transforms.sam`);
    * ``looksam`` [1 + 1/k]: ``rho``, ``lamb``, ``k`` (SAM every k-th step), ``alpha`` (default 0.7)
      (:func:`~jaxunlearn.transforms.looksam`);
    * ``gsam`` [2]: ``rho``, ``alpha`` (default 0.1) (:func:`~jaxunlearn.transforms.gsam`, constant ρ; no
      ``sign="max"``);
    * ``rs`` [1 + samples]: randomized smoothing, ``sigma``, ``samples``, ``seed``
      (:func:`~jaxunlearn.transforms.randomized_smoothing`; no ``sign="max"``);
    * ``gnp`` [2]: gradient-norm penalty, ``penalty`` γ (default 0.01), ``fd_radius``
      (:func:`~jaxunlearn.transforms.gradient_norm_penalty`);
    * ``cr`` [4]: curvature regularization, ``penalty`` γ (default 10), ``fd_radius``
      (:func:`~jaxunlearn.transforms.curvature_penalty`).

    ``average``: ``none``, ``uniform`` or ``ema`` weight averaging (:func:`~jaxunlearn.transforms.weight_average`,
    put last): snapshots every ``average_every`` updates from ``ceil(average_start · total_steps)`` on
    (defaults 5 and 0.8, Unlearn-Smooth's 100 of 125 steps), EMA decay ``average_decay``. The average lives in
    the optimizer state; :func:`final_params` reads it at the end of a run.

    Defaults are the papers' pretraining recipe (SGD lr 0.1, momentum 0.9, wd 5e-4, cosine);
    :data:`UNLEARN_DEFAULT` is the unlearning one (AdamW lr 0.01, wd 5e-4).

    ``base``: a user's optimizer instead of the built-in one: an ``optax.GradientTransformation``, or a
    factory ``total_steps -> GradientTransformation`` (called with the run's schedule length, a Python
    int, so a schedule such as ``optax.cosine_decay_schedule(lr, total_steps)`` can be built; each run
    length then compiles its own step). With ``base`` set, ``name``, ``lr``, ``momentum``,
    ``weight_decay`` and ``schedule`` are unused; the SAM fields apply as usual and ``scale`` multiplies
    the base's updates (``scaled`` sets it: for optimizers whose last step multiplies by the learning rate,
    as Optax's SGD, Adam and AdamW, that is the same as scaling the learning rate). Passing the same
    ``base`` object again reuses compiled steps; a fresh ``optax.adamw(...)`` per call compiles anew.

    Example:
        >>> OptimConfig(sam="sam", rho=0.1).with_sam("asam").sam
        'asam'
        >>> import optax
        >>> OptimConfig(base=optax.adamw(1e-3), sam="sam", rho=0.05).uses_base
        True
        >>> OptimConfig(sam="looksam", k=4).alpha_value, OptimConfig(sam="cr").penalty_value
        (0.7, 10.0)
    """

    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    sam: str = "none"
    rho: float = 0.1
    lamb: float = 1.0
    eta: float = 0.01
    base: Any = None
    scale: float = 1.0
    k: int = 5
    alpha: float | None = None
    sigma: float = 0.01
    samples: int = 3
    seed: int = 0
    penalty: float | None = None
    fd_radius: float = 0.01
    average: str = "none"
    average_start: float = 0.8
    average_every: int = 5
    average_decay: float = 0.9

    def __post_init__(self):
        if self.base is not None and not (_is_transform(self.base) or callable(self.base)):
            raise ValueError(
                f"OptimConfig(base=...) must be an optax.GradientTransformation or a function total_steps -> "
                f"GradientTransformation, got {type(self.base).__name__}."
            )
        _validate.positive("scale", self.scale)
        _validate.choice("optimizer", self.name, OPTIMIZERS)
        _validate.choice("sam", self.sam, SAM_KINDS)
        _validate.choice("schedule", self.schedule, SCHEDULES)
        _validate.positive("lr", self.lr, hint="Use a learning rate such as 0.01.")
        _validate.positive("rho", self.rho, hint="SAM's radius must be positive, e.g. 0.05 or 0.1.")
        _validate.positive("weight_decay", self.weight_decay, allow_zero=True)
        _validate.positive("momentum", self.momentum, allow_zero=True)
        _validate.positive("lamb", self.lamb, allow_zero=True)
        _validate.positive("eta", self.eta, allow_zero=True)
        _validate.positive_int("k", self.k)
        if self.alpha is not None:
            _validate.positive("alpha", self.alpha, allow_zero=True, hint="LookSAM's / GSAM's α, e.g. 0.7 / 0.1.")
        _validate.positive("sigma", self.sigma, hint="The noise scale of randomized smoothing, e.g. 0.01.")
        _validate.positive_int("samples", self.samples)
        _validate.non_negative_int("seed", self.seed)
        if self.penalty is not None:
            _validate.positive("penalty", self.penalty, allow_zero=True, hint="The weight γ of GNP / CR, e.g. 0.01.")
        _validate.positive("fd_radius", self.fd_radius, hint="The finite-difference radius, e.g. 0.01.")
        _validate.choice("average", self.average, AVERAGES)
        _validate.unit_interval("average_start", self.average_start, hint="A fraction of the run's steps, e.g. 0.8.")
        _validate.positive_int("average_every", self.average_every)
        _validate.unit_interval("average_decay", self.average_decay, open_right=True)

    @property
    def alpha_value(self) -> float:
        """``alpha``, or the variant's default when it is None: 0.7 for ``looksam``, 0.1 for ``gsam`` (0.0
        otherwise, unused)."""
        return float(self.alpha) if self.alpha is not None else _ALPHA_DEFAULT.get(self.sam, 0.0)

    @property
    def penalty_value(self) -> float:
        """``penalty``, or the variant's default when it is None: 0.01 for ``gnp``, 10.0 for ``cr`` (0.0
        otherwise, unused)."""
        return float(self.penalty) if self.penalty is not None else _PENALTY_DEFAULT.get(self.sam, 0.0)

    def with_sam(self, kind: str, **kw) -> OptimConfig:
        """A copy with ``sam=kind`` (and e.g. ``rho=``)."""
        return dataclasses.replace(self, sam=kind, **kw)

    @property
    def uses_base(self) -> bool:
        """Whether the optimizer is the user's ``base`` rather than the built-in ``name``."""
        return self.base is not None

    @property
    def static_total(self) -> bool:
        """Whether building the optimizer needs the schedule length as a Python int (a ``base`` factory):
        the engine then compiles one step per run length instead of tracing the length."""
        return self.base is not None and not _is_transform(self.base)


def _is_transform(x) -> bool:
    return isinstance(x, optax.GradientTransformation)


def as_optim_config(optimizer, *, name: str = "optimizer") -> OptimConfig:
    """The :class:`OptimConfig` of any accepted optimizer: an ``OptimConfig`` as is; an
    ``optax.GradientTransformation`` or a factory ``total_steps -> GradientTransformation`` as
    ``OptimConfig(base=optimizer)`` (no SAM; add it with ``.with_sam("sam", rho=...)``).

    Any other type raises a one-line ``ValueError`` naming what is accepted.

    Example:
        >>> import optax
        >>> cfg = as_optim_config(optax.adamw(1e-3)).with_sam("sam", rho=0.05)
        >>> cfg.sam, cfg.uses_base
        ('sam', True)
        >>> as_optim_config(lambda total: optax.sgd(optax.cosine_decay_schedule(0.1, total))).static_total
        True
    """
    if isinstance(optimizer, OptimConfig):
        return optimizer
    if _is_transform(optimizer) or (callable(optimizer) and not isinstance(optimizer, type)):
        return OptimConfig(base=optimizer)
    raise ValueError(
        f"{name} must be an OptimConfig, an optax.GradientTransformation or a function total_steps -> "
        f"GradientTransformation, got {type(optimizer).__name__}."
    )


class StepInfo(NamedTuple):
    """Facts about the current step that a phase loss may read (int32 scalars, traced: changing them never
    recompiles): ``epoch`` (from 0), ``epochs`` (of the run) and ``total_steps`` (the schedule's length,
    ``epochs · steps per epoch``). The number of updates applied so far is ``TrainState.step``.

    Example:
        >>> info = StepInfo.at(epoch=1, epochs=4, total_steps=40)
        >>> int(info.epoch), int(info.total_steps)
        (1, 40)
    """

    epoch: Any
    epochs: Any
    total_steps: Any

    @classmethod
    def at(cls, *, epoch: int = 0, epochs: int = 1, total_steps: int = 1) -> StepInfo:
        """A ``StepInfo`` of int32 numpy scalars."""
        return cls(*(np.int32(v) for v in (epoch, epochs, total_steps)))


PRETRAIN_DEFAULT = OptimConfig()
UNLEARN_DEFAULT = OptimConfig(name="adamw", lr=0.01, momentum=0.0, weight_decay=5e-4, schedule="constant")


def cosine_schedule(lr: float, total_steps) -> optax.Schedule:
    """``η_t = lr · ½(1 + cos(π · min(t, T) / T))`` with ``T = max(1, total_steps)``.

    The same values as ``optax.cosine_decay_schedule(lr, T)``, but ``total_steps`` may be a traced array:
    the engine passes the run's length at run time, so runs of different lengths (pretraining and Retrain,
    another number of epochs) share one compiled step.

    Example:
        >>> [round(float(cosine_schedule(1.0, 4)(t)), 6) for t in (0, 2, 4, 6)]
        [1.0, 0.5, 0.0, 0.0]
    """

    def schedule(count):
        total = jnp.maximum(jnp.asarray(total_steps, jnp.float32), 1.0)
        frac = jnp.minimum(jnp.asarray(count, jnp.float32), total) / total
        return lr * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))

    return schedule


def _base_optimizer(cfg: OptimConfig, total_steps) -> optax.GradientTransformation:
    if cfg.base is not None:
        tx = cfg.base if _is_transform(cfg.base) else cfg.base(total_steps)
        if not _is_transform(tx):
            raise ValueError(
                f"the optimizer factory must return an optax.GradientTransformation, got {type(tx).__name__}."
            )
        return tx if cfg.scale == 1.0 else optax.chain(tx, optax.scale(cfg.scale))
    lr = cosine_schedule(cfg.lr, total_steps) if cfg.schedule == "cosine" else cfg.lr
    if cfg.name == "sgd":
        parts = []
        if cfg.weight_decay:
            parts.append(optax.add_decayed_weights(cfg.weight_decay))
        parts.append(optax.sgd(lr, momentum=cfg.momentum or None))
        return optax.chain(*parts)
    if cfg.name == "adamw":
        return optax.adamw(lr, weight_decay=cfg.weight_decay)
    return optax.adam(lr)


def _sam_transform(cfg: OptimConfig, sign: str, perturbed_mask) -> optax.GradientTransformationExtraArgs:
    """The gradient transform of ``cfg.sam`` (not ``none``) for a phase of ``sign``."""
    kind = cfg.sam
    if kind in ("sam", "asam"):
        asam = kind == "asam"
        return transforms.sam(
            cfg.rho, adaptive=asam, eta=cfg.eta if asam else 0.0, lamb=cfg.lamb, sign=sign,
            perturbed_mask=perturbed_mask,
        )  # fmt: skip
    if kind == "looksam":
        return transforms.looksam(cfg.rho, k=cfg.k, alpha=cfg.alpha_value, lamb=cfg.lamb, sign=sign)
    if kind == "gsam":
        return transforms.gsam(cfg.rho, alpha=cfg.alpha_value)
    if kind == "rs":
        return transforms.randomized_smoothing(cfg.sigma, samples=cfg.samples, seed=cfg.seed)
    if kind == "gnp":
        return transforms.gradient_norm_penalty(cfg.penalty_value, radius=cfg.fd_radius, sign=sign)
    return transforms.curvature_penalty(cfg.penalty_value, radius=cfg.fd_radius, sign=sign)


def _average_start(fraction: float, total_steps):
    """``ceil(fraction · total_steps)`` (a Python int, or an int32 array for a traced run length)."""
    if isinstance(total_steps, int | np.integer):
        return int(math.ceil(fraction * int(total_steps)))
    return jnp.ceil(fraction * jnp.asarray(total_steps, jnp.float32)).astype(jnp.int32)


def build_optimizer(
    cfg: OptimConfig,
    total_steps,
    *,
    sign: str = "min",
    mask: PyTree | None = None,
    mask_reading: str = "strict",
) -> optax.GradientTransformationExtraArgs:
    """The Optax optimizer of a phase: ``[sam kind] -> [mask] -> base [-> mask] [-> weight average]``.

    * no SAM: ``g ↦ base(g)``; with ``cfg.sam`` = ``sam``/``asam``: ``g ↦ base(g + s·λ·(g' − g))``; any other
      kind puts its transform (:class:`OptimConfig` lists them) in SAM's place.
    * ``mask`` M, ``mask_reading="strict"``: the whole update is ``M ⊙ base(M ⊙ d)`` (parameters outside
      M never move). ``"reference"``: as the Sharp MinMax PyTorch code, only ``g'`` is masked inside SAM
      (``g + s·λ·(M⊙g' − g)``), or only the gradient without SAM, and AdamW's decay hits every parameter;
      it is defined for ``sam`` / ``asam`` / ``none`` only (a ``ValueError`` for the other kinds).
    * ``sign="max"`` (sharpness maximization) needs a kind with a max form: ``sam``, ``asam``, ``looksam``,
      ``gnp``, ``cr`` (``gsam`` / ``rs`` raise a ``ValueError``); without SAM the sign has no effect.
    * ``cfg.average`` != ``none`` appends :func:`jaxunlearn.transforms.weight_average` (read the result with
      :func:`final_params`).

    Example:
        >>> import jax
        >>> loss = lambda w: jnp.sum(w ** 2)
        >>> params = jnp.ones(3)
        >>> opt = build_optimizer(OptimConfig(sam="sam"), 100)
        >>> state = opt.init(params)
        >>> upd, state = opt.update(jax.grad(loss)(params), state, params, grad_fn=jax.grad(loss))
        >>> upd.shape
        (3,)
        >>> opt = build_optimizer(OptimConfig(sam="looksam", k=2, average="uniform"), 100)
        >>> upd, state = opt.update(jax.grad(loss)(params), opt.init(params), params, grad_fn=jax.grad(loss))
        >>> upd.shape
        (3,)
    """
    _validate.choice("mask_reading", mask_reading, MASK_READINGS)
    _validate.choice("sign", sign, ("min", "max"))
    if sign == "max" and cfg.sam not in MAX_KINDS:
        raise ValueError(
            f"OptimConfig(sam={cfg.sam!r}) has no sharpness-maximization form, but this phase has sign='max' "
            f"(e.g. Sharp MinMax's forget phase): use one of {list(MAX_KINDS[1:])} for it."
        )
    reference = mask is not None and mask_reading == "reference"
    if reference and cfg.sam not in ("none", "sam", "asam"):
        raise ValueError(
            f"mask_reading='reference' masks SAM's perturbed gradient and is defined for sam/asam only, got "
            f"OptimConfig(sam={cfg.sam!r}): use mask_reading='strict'."
        )
    base = _base_optimizer(cfg, total_steps)
    parts = []
    if cfg.sam != "none":
        parts.append(_sam_transform(cfg, sign, mask if reference else None))
    if mask is None:
        parts.append(base)
    elif mask_reading == "strict":
        parts.append(transforms.masked(base, mask, mask_output=True))
    elif cfg.sam == "none":
        parts.append(transforms.masked(base, mask, mask_output=False))
    else:
        parts.append(base)
    if cfg.average != "none":
        parts.append(
            transforms.weight_average(
                cfg.average,
                start=_average_start(cfg.average_start, total_steps),
                every=cfg.average_every,
                decay=cfg.average_decay,
            )
        )
    return optax.chain(*parts)


def final_params(optimizer, params: PyTree, opt_state) -> PyTree:
    """The parameters a run with ``optimizer`` ends with: the weight average kept in ``opt_state`` when the
    optimizer averages (``OptimConfig.average`` != ``none``; the final ``params`` before its first snapshot),
    else ``params``. ``optimizer``: anything :func:`as_optim_config` accepts; ``opt_state``: the state of the
    optimizer :func:`build_optimizer` made of it (a phase's ``TrainState.opt_states[i]``; in a plan of several
    phases, the state of the last phase with averaging, whose snapshots are the parameters after each full step).

    Example:
        >>> import jax
        >>> cfg = OptimConfig(name="sgd", lr=0.5, momentum=0.0, weight_decay=0.0, schedule="constant",
        ...                   average="uniform", average_start=0.0, average_every=1)
        >>> tx, w = build_optimizer(cfg, 2), jnp.array([4.0])
        >>> state = tx.init(w)
        >>> for _ in range(2):                           # w: 4 -> 2 -> 1 (loss w²/2)
        ...     u, state = tx.update(w, state, w, grad_fn=None); w = w + u
        >>> float(final_params(cfg, w, state)[0])        # (2 + 1) / 2
        1.5
    """
    cfg = as_optim_config(optimizer)
    if cfg.average == "none":
        return params
    return transforms.averaged_params(opt_state, params)


def optimizer_kind(kind: str, base: OptimConfig, **overrides) -> OptimConfig:
    """The optimizer of a job's optimizer name (``--unlearn-optimizer``, :data:`OPTIMIZER_KINDS`): ``base``
    with the kind's fields set (``sgd``: ``base`` itself; ``sam`` / ``asam`` / ``looksam`` / ``gsam`` / ``rs`` /
    ``gnp`` / ``cr``: ``sam=kind``; ``wa``: ``average="uniform"``), then ``overrides`` (e.g. ``rho=``, ``lamb=``).

    Example:
        >>> cfg = optimizer_kind("looksam", UNLEARN_DEFAULT, rho=0.05)
        >>> cfg.sam, cfg.rho, cfg.k, cfg.name
        ('looksam', 0.05, 5, 'adamw')
        >>> optimizer_kind("wa", UNLEARN_DEFAULT).average
        'uniform'
        >>> optimizer_kind("sgd", UNLEARN_DEFAULT, rho=0.05) is UNLEARN_DEFAULT
        True
    """
    _validate.choice("optimizer kind", kind, OPTIMIZER_KINDS)
    if kind == "sgd":
        return base
    return dataclasses.replace(base, **OPTIMIZER_KINDS[kind], **overrides)


def supervised_loss(apply_fn, params, model_state, batch, hp, info):
    """Cross-entropy on the retain batch, ``CE(f(x_r), y_r)``: pretraining, Retrain and fine-tuning.

    Every phase loss has this signature:
    ``loss(apply_fn, params, model_state, batch, hp, info) -> (loss, new_model_state)``, where ``batch``
    is ``{"retain": R, "forget": F}`` with R and F the batch pytrees the engine's batch source gives for
    the step's retain and forget indices (for classification arrays ``{"x", "y", "index"}``), ``hp`` the
    plan's run-time hyperparameters and ``info`` a :class:`StepInfo`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> apply_fn = lambda p, s, x, train=False: (x @ p, s)
        >>> batch = {"retain": {"x": jnp.eye(2), "y": jnp.array([0, 1])}}
        >>> loss, _ = supervised_loss(apply_fn, jnp.eye(2) * 20, {}, batch, {}, StepInfo.at())
        >>> float(loss) < 1e-6
        True
    """
    r = batch["retain"]
    logits, new_state = apply_fn(params, model_state, r["x"], train=True)
    return objectives.cross_entropy(logits, r["y"]), new_state


@dataclasses.dataclass(frozen=True)
class Phase:
    """One optimizer step per engine step.

    Attributes:
        name: shown in histories.
        loss: ``loss(apply_fn, params, model_state, batch, hp, info) -> (loss, new_model_state)`` (see
            :func:`supervised_loss`); a module-level function, so compiled steps are shared between runs.
        uses: which batches the loss reads: ``("retain",)``, ``("forget",)`` or both.
        sign: ``"min"`` (SAM) or ``"max"`` (sharpness maximization) when the optimizer uses SAM.
        mask_key: name of a boolean mask pytree in ``hp`` restricting this phase's updates, or None.
        active: ``epoch -> bool`` (e.g. SCRUB's max steps only in the first epochs); None = always.
        optimizer: overrides the plan's optimizer for this phase (any optimizer :func:`as_optim_config`
            accepts).

    Example:
        >>> Phase("forget", supervised_loss, uses=("forget",), sign="max").is_active(0)
        True
    """

    name: str
    loss: Callable
    uses: tuple[str, ...] = ("retain",)
    sign: str = "min"
    mask_key: str | None = None
    active: Callable[[int], bool] | None = None
    optimizer: Any = None

    def __post_init__(self):
        if self.optimizer is not None:
            object.__setattr__(
                self, "optimizer", as_optim_config(self.optimizer, name=f"phase {self.name!r} optimizer")
            )

    def is_active(self, epoch: int) -> bool:
        return True if self.active is None else bool(self.active(epoch))


@dataclasses.dataclass
class Plan:
    """What ``engine.run`` executes: the phases, the optimizer (any optimizer :func:`as_optim_config` accepts),
    ``epochs`` passes over the retain set (``epoch_over="retain"``) or the forget set, the batch size, and
    ``hp``, run-time hyperparameters (arrays: changing a value never recompiles).

    Example:
        >>> Plan((Phase("train", supervised_loss),), epochs=3).optimizer.name
        'adamw'
    """

    phases: tuple[Phase, ...]
    optimizer: Any = UNLEARN_DEFAULT
    epochs: int = 10
    batch_size: int = 64
    epoch_over: str = "retain"
    hp: dict = dataclasses.field(default_factory=dict)
    mask_reading: str = "strict"
    name: str = "run"

    def phase_optimizer(self, i: int, total_steps: int) -> optax.GradientTransformationExtraArgs:
        """The Optax transform phase ``i`` steps with, as the engine builds it: :func:`build_optimizer` of
        the phase's optimizer (or the plan's), its sign and mask (``hp[mask_key]``), over ``total_steps``.

        Example:
            >>> plan = Plan((Phase("train", supervised_loss),), optimizer=OptimConfig(sam="sam"))
            >>> tx = plan.phase_optimizer(0, total_steps=10)
            >>> upd, _ = tx.update(jnp.ones(2), tx.init(jnp.ones(2)), jnp.ones(2), grad_fn=lambda p: 2 * p)
            >>> upd.shape
            (2,)
        """
        if not 0 <= int(i) < len(self.phases):
            raise ValueError(f"phase index {i} out of range: this plan has {len(self.phases)} phase(s).")
        ph = self.phases[int(i)]
        cfg = ph.optimizer or self.optimizer
        mask = self.hp[ph.mask_key] if ph.mask_key else None
        return build_optimizer(cfg, total_steps, sign=ph.sign, mask=mask, mask_reading=self.mask_reading)

    def final_params(self, params: PyTree, opt_states) -> PyTree:
        """The parameters a run of this plan ends with (the engine returns them): the weight average of the last
        phase whose optimizer averages (``OptimConfig.average``), read from ``opt_states[i]`` by
        :func:`final_params`, or ``params`` when no phase averages.

        Example:
            >>> cfg = OptimConfig(name="sgd", lr=0.5, momentum=0.0, weight_decay=0.0, schedule="constant",
            ...                   average="uniform", average_start=0.0, average_every=1)
            >>> plan = Plan((Phase("train", supervised_loss),), optimizer=cfg)
            >>> tx, w = plan.phase_optimizer(0, 2), jnp.array([4.0])
            >>> state = tx.init(w)
            >>> for _ in range(2):                           # w: 4 -> 2 -> 1 (loss w²/2)
            ...     u, state = tx.update(w, state, w, grad_fn=None); w = w + u
            >>> float(plan.final_params(w, (state,))[0]), float(Plan((Phase("t", supervised_loss),)).final_params(
            ...     w, (state,))[0])
            (1.5, 1.0)
        """
        i = self.averaging_phase
        return params if i is None else final_params(self.phases[i].optimizer or self.optimizer, params, opt_states[i])

    @property
    def averaging_phase(self) -> int | None:
        """The index of the last phase whose optimizer averages the weights, or None.

        Example:
            >>> Plan((Phase("train", supervised_loss),), optimizer=OptimConfig(average="ema")).averaging_phase
            0
        """
        found = [i for i, ph in enumerate(self.phases) if (ph.optimizer or self.optimizer).average != "none"]
        return found[-1] if found else None

    def __post_init__(self):
        if not self.phases:
            raise ValueError("a Plan needs at least one Phase.")
        self.phases = tuple(self.phases)
        self.optimizer = as_optim_config(self.optimizer, name="Plan.optimizer")
        _validate.positive_int("epochs", self.epochs)
        _validate.positive_int("batch_size", self.batch_size)
        _validate.choice("epoch_over", self.epoch_over, ("retain", "forget"))
        _validate.choice("mask_reading", self.mask_reading, MASK_READINGS)
        for ph in self.phases:
            _validate.choice("phase sign", ph.sign, ("min", "max"))
            if ph.mask_key is not None and ph.mask_key not in self.hp:
                raise ValueError(f"phase {ph.name!r} uses mask {ph.mask_key!r}, which is missing from hp.")
