"""L1-sparse: fine-tune with an L1 penalty whose weight decays linearly over the epochs.

Loss at epoch e (0-based) of E: ``CE(D_r) + γ·(1 − e/E)·‖w‖₁``.
"""

import jax.numpy as jnp

from jaxunlearn import objectives
from jaxunlearn.methods.base import Recipe, method_plan, register
from jaxunlearn.plan import Phase


def l1_loss(apply_fn, params, model_state, batch, hp, info):
    """``CE(R) + γ·(1 − epoch/epochs)·‖w‖₁``."""
    logits, new_state = apply_fn(params, model_state, batch["retain"]["x"], train=True)
    decay = 1.0 - info.epoch.astype(jnp.float32) / info.epochs.astype(jnp.float32)
    return objectives.cross_entropy(logits, batch["retain"]["y"]) + hp["gamma"] * decay * objectives.l1_norm(
        params
    ), new_state


@register("l1_sparse", "fine-tune + linearly decaying L1 penalty", {"gamma": 5e-5, "lr_scale": 1.0, "epochs": None})
def l1_sparse(ctx, opts):
    plan = method_plan(ctx, opts, "l1_sparse", Phase("retain", l1_loss), hp={"gamma": jnp.float32(opts["gamma"])})
    return Recipe(plan=plan)
