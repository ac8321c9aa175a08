"""A registered method taken apart for the user's own loop: its phase losses and their Optax transforms.

``parts(name, ctx)`` builds the method's recipe for ``ctx`` and returns, for every phase, the loss
``loss(apply_fn, params, model_state, batch, hp, info) -> (loss, new_model_state)``, which batches it reads
(``batch = {"retain": {"x", "y", "index"}, "forget": {...}}``), when it is active, and the Optax transform
the engine would step it with (SAM / sharpness maximization and masks included, so ``update`` needs
``grad_fn``). One engine step is one update per active phase, in order, each on the current parameters:

    for phase in p.phases:                                   # one engine step
        lf = lambda w: phase.loss(apply_fn, w, state, batch, p.hp, info)
        (l, state), g = jax.value_and_grad(lf, has_aux=True)(params)
        upd, opt[phase.name] = phase.optimizer.update(g, opt[phase.name], params,
                                                      grad_fn=lambda w: jax.grad(lf, has_aux=True)(w)[0])
        params = optax.apply_updates(params, upd)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import optax

from jaxunlearn.methods.base import Context, Recipe, get

__all__ = ["PhasePart", "MethodParts", "parts"]


@dataclasses.dataclass(frozen=True)
class PhasePart:
    """One phase of a method: ``loss``, the batches it ``uses``, ``active(epoch)`` (None: always), and the
    Optax ``optimizer`` (``update(g, state, params, grad_fn=...)``).

    Example:
        >>> from jaxunlearn.methods import toy_context
        >>> part = parts("neggrad", toy_context()).phases[0]
        >>> part.name, part.uses, part.is_active(0)
        ('neggrad', ('retain', 'forget'), True)
    """

    name: str
    loss: Callable
    uses: tuple[str, ...]
    optimizer: optax.GradientTransformationExtraArgs
    active: Callable[[int], bool] | None = None

    def is_active(self, epoch: int) -> bool:
        return True if self.active is None else bool(self.active(epoch))


@dataclasses.dataclass(frozen=True)
class MethodParts:
    """A method's pieces: ``phases`` (:class:`PhasePart`), ``hp`` (the run-time hyperparameters and masks
    the losses read), ``start`` (``(params, model_state)`` to start from: the context's, or a fresh model for
    Retrain), ``retain_idx`` / ``forget_idx``, ``epochs``, ``batch_size``, ``epoch_over``, ``steps_per_epoch``
    and ``recipe`` (the method's :class:`~jaxunlearn.methods.base.Recipe`).

    Example:
        >>> from jaxunlearn.methods import toy_context
        >>> p = parts("sharp_minmax", toy_context())
        >>> [ph.name for ph in p.phases], sorted(p.hp)
        (['retain', 'forget'], ['alpha', 'mask_forget', 'mask_retain'])
    """

    phases: tuple[PhasePart, ...]
    hp: dict
    start: tuple[Any, Any]
    retain_idx: np.ndarray
    forget_idx: np.ndarray
    epochs: int
    batch_size: int
    epoch_over: str
    steps_per_epoch: int
    recipe: Recipe

    @property
    def total_steps(self) -> int:
        """``epochs · steps_per_epoch``: the length of the optimizers' schedules."""
        return self.epochs * self.steps_per_epoch


def parts(method: str, ctx: Context) -> MethodParts:
    """Take the registered ``method`` apart on ``ctx``: its phases' losses and Optax transforms.

    The transforms are those :func:`jaxunlearn.engine.run` steps the phases with, their schedules spanning
    ``epochs · ⌈|pool| / batch_size⌉`` steps (``pool`` = the retain or forget set the plan's epochs pass
    over). Methods that edit the weights directly (``ssd``) have no phases: they raise ``ValueError``; use
    ``methods.unlearn`` for them.

    Example (NegGrad in a hand-written loop, one step):
        >>> import jax, optax
        >>> from jaxunlearn.engine import ArraySource
        >>> from jaxunlearn.methods import toy_context
        >>> from jaxunlearn.plan import StepInfo
        >>> ctx = toy_context()
        >>> p = parts("neggrad", ctx)
        >>> params, state = p.start
        >>> data = {"x": ctx.x, "y": ctx.y}
        >>> batch = {"retain": ArraySource.gather(data, p.retain_idx[:16]),
        ...          "forget": ArraySource.gather(data, p.forget_idx[:16])}
        >>> ph = p.phases[0]
        >>> info = StepInfo.at(epoch=0, epochs=p.epochs, total_steps=p.total_steps)
        >>> lf = lambda w: ph.loss(ctx.apply_fn, w, state, batch, p.hp, info)
        >>> (loss, state), g = jax.value_and_grad(lf, has_aux=True)(params)
        >>> upd, _ = ph.optimizer.update(g, ph.optimizer.init(params), params,
        ...                              grad_fn=lambda w: jax.grad(lf, has_aux=True)(w)[0])
        >>> params = optax.apply_updates(params, upd)
    """
    m = get(method)
    recipe = m.recipe(ctx)
    if recipe.plan is None:
        raise ValueError(
            f"{m.name} edits the weights directly (no training phases to take apart); run it with "
            f"methods.unlearn({m.name!r}, ctx)."
        )
    plan = recipe.plan
    retain = ctx.retain_idx if recipe.retain_idx is None else np.asarray(recipe.retain_idx)
    forget = ctx.forget_idx if recipe.forget_idx is None else np.asarray(recipe.forget_idx)
    pool = retain if plan.epoch_over == "retain" else forget
    steps = max(1, math.ceil(len(pool) / plan.batch_size))
    total = steps * plan.epochs
    phases = tuple(
        PhasePart(ph.name, ph.loss, tuple(ph.uses), plan.phase_optimizer(i, total), ph.active)
        for i, ph in enumerate(plan.phases)
    )
    start = recipe.start if recipe.start is not None else (ctx.params, ctx.model_state)
    return MethodParts(
        phases=phases,
        hp=dict(plan.hp),
        start=start,
        retain_idx=retain,
        forget_idx=forget,
        epochs=plan.epochs,
        batch_size=plan.batch_size,
        epoch_over=plan.epoch_over,
        steps_per_epoch=steps,
        recipe=recipe,
    )
