"""NegGrad (NegGrad+ in RUM): minimize ``α·CE(D_r) − (1−α)·CE(D_f)`` on paired batches (α = 0.99)."""

import jax.numpy as jnp

from jaxunlearn import objectives
from jaxunlearn.methods.base import Recipe, method_plan, register
from jaxunlearn.plan import Phase


def neggrad_loss(apply_fn, params, model_state, batch, hp, info):
    """``α·CE(R) − (1−α)·CE(F)``; one forward pass over the concatenated batches."""
    n_r = batch["retain"]["x"].shape[0]
    logits, new_state = apply_fn(
        params, model_state, jnp.concatenate([batch["retain"]["x"], batch["forget"]["x"]]), train=True
    )
    ce_r = objectives.cross_entropy(logits[:n_r], batch["retain"]["y"])
    ce_f = objectives.cross_entropy(logits[n_r:], batch["forget"]["y"])
    a = hp["alpha"]
    return a * ce_r - (1.0 - a) * ce_f, new_state


@register("neggrad", "alpha*CE(R) - (1-alpha)*CE(F)", {"alpha": 0.99, "lr_scale": 1.0, "epochs": None})
def neggrad(ctx, opts):
    plan = method_plan(
        ctx,
        opts,
        "neggrad",
        Phase("neggrad", neggrad_loss, uses=("retain", "forget")),
        hp={"alpha": jnp.float32(opts["alpha"])},
    )
    return Recipe(plan=plan)
