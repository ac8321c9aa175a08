"""L1-sparse: fine-tune with an L1 penalty whose weight decays linearly over the epochs.

Loss at epoch e (0-based) of E: ``CE(D_r) + γ·(1 − e/E)·‖w‖₁``.
"""

import jax.numpy as jnp

from jaxunlearn import objectives
from jaxunlearn.methods import options
from jaxunlearn.methods.base import Recipe, method_plan, register
from jaxunlearn.plan import Phase


def l1_loss(apply_fn, params, model_state, batch, hp, info):
    """``CE(R) + γ·(1 − epoch/epochs)·‖w‖₁`` with ``γ = hp["gamma"]`` and ``epoch`` counted from 0.

    Example:
        >>> from jaxunlearn.engine import ArraySource
        >>> from jaxunlearn.methods import toy_context
        >>> from jaxunlearn.plan import StepInfo
        >>> ctx = toy_context()
        >>> batch = {"retain": ArraySource.gather({"x": ctx.x, "y": ctx.y}, ctx.retain_idx[:16])}
        >>> args = (ctx.apply_fn, ctx.params, ctx.model_state, batch, {"gamma": jnp.float32(0.01)})
        >>> first, _ = l1_loss(*args, StepInfo.at(epoch=0, epochs=2))
        >>> second, _ = l1_loss(*args, StepInfo.at(epoch=1, epochs=2))  # half the penalty
        >>> bool(jnp.isclose(first - second, 0.5 * 0.01 * objectives.l1_norm(ctx.params), atol=1e-6))
        True
    """
    logits, new_state = apply_fn(params, model_state, batch["retain"]["x"], train=True)
    decay = 1.0 - info.epoch.astype(jnp.float32) / info.epochs.astype(jnp.float32)
    return objectives.cross_entropy(logits, batch["retain"]["y"]) + hp["gamma"] * decay * objectives.l1_norm(
        params
    ), new_state


@register(
    "l1_sparse",
    "fine-tune + linearly decaying L1 penalty",
    {"gamma": 5e-5, "lr_scale": 1.0, "epochs": None},
    checks={"gamma": options.nonnegative()},
)
def l1_sparse(ctx, opts):
    """L1-sparse's recipe: one phase minimizing :func:`l1_loss` on the retain set, ``hp["gamma"] = opts["gamma"]``.

    Example:
        >>> from jaxunlearn.methods import toy_context
        >>> plan = l1_sparse(toy_context(), {"gamma": 1e-4, "lr_scale": 1.0, "epochs": 3}).plan
        >>> plan.phases[0].loss is l1_loss, plan.epochs, round(float(plan.hp["gamma"]), 8)
        (True, 3, 0.0001)
    """
    plan = method_plan(ctx, opts, "l1_sparse", Phase("retain", l1_loss), hp={"gamma": jnp.float32(opts["gamma"])})
    return Recipe(plan=plan)
