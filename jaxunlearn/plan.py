"""Plans: what the engine runs. Optimizer settings, phases (a loss, its batches, a mask, a SAM sign).

A method (``jaxunlearn.methods``) describes itself as a :class:`Plan`; the engine
(``jaxunlearn.engine``) executes plans. This module sits below both, so methods never import the engine.

Example:
    >>> plan = Plan(phases=(Phase("train", supervised_loss),), optimizer=OptimConfig(sam="sam"), epochs=5)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import optax

from jaxunlearn import _validate, objectives, transforms

__all__ = [
    "OptimConfig",
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

    Example:
        >>> OptimConfig(sam="sam", rho=0.1).with_sam("asam").sam
        'asam'
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

    def __post_init__(self):
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


PRETRAIN_DEFAULT = OptimConfig()
UNLEARN_DEFAULT = OptimConfig(name="adamw", lr=0.01, momentum=0.0, weight_decay=5e-4, schedule="constant")


def cosine_schedule(lr: float, total_steps) -> optax.Schedule:
    """``η_t = lr · ½(1 + cos(π · min(t, T) / T))`` with ``T = max(1, total_steps)``.

    The same values as ``optax.cosine_decay_schedule(lr, T)``, but ``total_steps`` may be a traced array:
    the engine passes the run's length at run time, so runs of different lengths (pretraining and Retrain,
    another number of epochs) share one compiled step.

    Example:
        >>> [float(cosine_schedule(1.0, 4)(t)) for t in (0, 2, 4, 6)]
        [1.0, 0.5, 0.0, 0.0]
    """

    def schedule(count):
        total = jnp.maximum(jnp.asarray(total_steps, jnp.float32), 1.0)
        frac = jnp.minimum(jnp.asarray(count, jnp.float32), total) / total
        return lr * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))

    return schedule


def _base_optimizer(cfg: OptimConfig, total_steps) -> optax.GradientTransformation:
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
        >>> opt = build_optimizer(OptimConfig(sam="sam"), 100)
        >>> state = opt.init(params)
        >>> upd, state = opt.update(g, state, params, grad_fn=lambda p: jax.grad(loss)(p, batch))
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


def supervised_loss(apply_fn, params, model_state, batch, hp):
    """Cross-entropy on the retain batch, ``CE(f(x_r), y_r)``: pretraining, Retrain and fine-tuning.

    Every phase loss has this signature:
    ``loss(apply_fn, params, model_state, batch, hp) -> (loss, new_model_state)`` with ``batch`` a dict
    of ``x_r, y_r, i_r`` (retain inputs, labels, train indices) and ``x_f, y_f, i_f`` (forget).

    Example:
        >>> loss, state = supervised_loss(apply_fn, params, state, {"x_r": x, "y_r": y}, {})
    """
    logits, new_state = apply_fn(params, model_state, batch["x_r"], train=True)
    return objectives.cross_entropy(logits, batch["y_r"]), new_state


@dataclasses.dataclass(frozen=True)
class Phase:
    """One optimizer step per engine step.

    Attributes:
        name: shown in histories.
        loss: ``loss(apply_fn, params, model_state, batch, hp) -> (loss, new_model_state)``; a
            module-level function, so compiled steps are shared between runs.
        uses: which batches the loss reads: ``("retain",)``, ``("forget",)`` or both.
        sign: ``"min"`` (SAM) or ``"max"`` (sharpness maximization) when the optimizer uses SAM.
        mask_key: name of a boolean mask pytree in ``hp`` restricting this phase's updates, or None.
        active: ``epoch -> bool`` (e.g. SCRUB's max steps only in the first epochs); None = always.
        optimizer: overrides the plan's optimizer for this phase.
    """

    name: str
    loss: Callable
    uses: tuple[str, ...] = ("retain",)
    sign: str = "min"
    mask_key: str | None = None
    active: Callable[[int], bool] | None = None
    optimizer: OptimConfig | None = None

    def is_active(self, epoch: int) -> bool:
        return True if self.active is None else bool(self.active(epoch))


@dataclasses.dataclass
class Plan:
    """What :func:`run` executes. See the module docstring."""

    phases: tuple[Phase, ...]
    optimizer: OptimConfig = UNLEARN_DEFAULT
    epochs: int = 10
    batch_size: int = 64
    epoch_over: str = "retain"
    hp: dict = dataclasses.field(default_factory=dict)
    mask_reading: str = "strict"
    name: str = "run"

    def __post_init__(self):
        if not self.phases:
            raise ValueError("a Plan needs at least one Phase.")
        _validate.positive_int("epochs", self.epochs)
        _validate.positive_int("batch_size", self.batch_size)
        _validate.choice("epoch_over", self.epoch_over, ("retain", "forget"))
        _validate.choice("mask_reading", self.mask_reading, MASK_READINGS)
        for ph in self.phases:
            _validate.choice("phase sign", ph.sign, ("min", "max"))
            if ph.mask_key is not None and ph.mask_key not in self.hp:
                raise ValueError(f"phase {ph.name!r} uses mask {ph.mask_key!r}, which is missing from hp.")
