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
]

PyTree = Any

OPTIMIZERS = ("sgd", "adamw", "adam")
SAM_KINDS = ("none", "sam", "asam")
SCHEDULES = ("cosine", "constant")
MASK_READINGS = ("strict", "reference")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimizer settings: a base Optax optimizer, optionally wrapped in SAM or ASAM.

    ``name``: ``sgd`` (momentum, coupled weight decay as in PyTorch), ``adamw`` or ``adam``;
    ``schedule``: ``cosine`` decay to 0 over the run, or ``constant``; ``sam``: ``none``, ``sam``
    (T = 1) or ``asam`` (T = |w| + η); ``rho``, ``lamb`` (λ of ``g + s·λ·(g' − g)``), ``eta``.

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


def build_optimizer(
    cfg: OptimConfig,
    total_steps,
    *,
    sign: str = "min",
    mask: PyTree | None = None,
    mask_reading: str = "strict",
) -> optax.GradientTransformationExtraArgs:
    """The Optax optimizer of a phase: ``[sam] -> [mask] -> base [-> mask]``.

    * no SAM: ``g ↦ base(g)``; with SAM/ASAM: ``g ↦ base(g + s·λ·(g' − g))``.
    * ``mask`` M, ``mask_reading="strict"``: the whole update is ``M ⊙ base(M ⊙ d)`` (parameters outside
      M never move). ``"reference"``: as the Sharp MinMax PyTorch code, only ``g'`` is masked inside SAM
      (``g + s·λ·(M⊙g' − g)``), or only the gradient without SAM, and AdamW's decay hits every parameter.
    * ``sign="max"`` (sharpness maximization) needs SAM; without SAM the sign has no effect.

    Example:
        >>> import jax
        >>> loss = lambda w: jnp.sum(w ** 2)
        >>> params = jnp.ones(3)
        >>> opt = build_optimizer(OptimConfig(sam="sam"), 100)
        >>> state = opt.init(params)
        >>> upd, state = opt.update(jax.grad(loss)(params), state, params, grad_fn=jax.grad(loss))
        >>> upd.shape
        (3,)
    """
    _validate.choice("mask_reading", mask_reading, MASK_READINGS)
    base = _base_optimizer(cfg, total_steps)
    parts = []
    if cfg.sam != "none":
        parts.append(
            transforms.sam(
                cfg.rho,
                adaptive=cfg.sam == "asam",
                eta=cfg.eta if cfg.sam == "asam" else 0.0,
                lamb=cfg.lamb,
                sign=sign,
                perturbed_mask=mask if (mask is not None and mask_reading == "reference") else None,
            )
        )
    if mask is None:
        parts.append(base)
    elif mask_reading == "strict":
        parts.append(transforms.masked(base, mask, mask_output=True))
    elif cfg.sam == "none":
        parts.append(transforms.masked(base, mask, mask_output=False))
    else:
        parts.append(base)
    return optax.chain(*parts)


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
