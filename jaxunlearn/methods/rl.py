"""Random label (RL): give every forget example a fixed random WRONG label and train on ``D_f ∪ D_r``.

Training on the union ``D_f ∪ D_r`` is reproduced on paired batches by weighting the two batch means
with the set sizes: ``(1−w)·CE(R) + w·CE(F, ỹ)`` with ``w = |F| / (|F| + |R|)``, which is the expected
loss of a batch drawn from the union.
"""

import jax
import jax.numpy as jnp

from jaxunlearn import objectives
from jaxunlearn.methods.base import Recipe, method_plan, register
from jaxunlearn.plan import Phase


def rl_loss(apply_fn, params, model_state, batch, hp, info):
    """``(1−w)·CE(x_r, y_r) + w·CE(x_f, ỹ_f)``, ``ỹ`` the fixed random labels, ``w = hp["forget_weight"]``."""
    n_r = batch["retain"]["x"].shape[0]
    x = jnp.concatenate([batch["retain"]["x"], batch["forget"]["x"]])
    logits, new_state = apply_fn(params, model_state, x, train=True)
    ce_r = objectives.cross_entropy(logits[:n_r], batch["retain"]["y"])
    ce_f = objectives.cross_entropy(logits[n_r:], jnp.take(hp["random_labels"], batch["forget"]["index"]))
    w = hp["forget_weight"]
    return (1.0 - w) * ce_r + w * ce_f, new_state


def union_weight(ctx) -> jax.Array:
    """``|F| / (|F| + |R|)``: the forget set's share of the union."""
    n_f, n_r = len(ctx.forget_idx), len(ctx.retain_idx)
    return jnp.float32(n_f / (n_f + n_r))


def random_label_table(ctx, seed_offset: int = 17):
    """Array over all training indices holding a random wrong label at the forget indices."""
    y = jnp.asarray(ctx.y)
    idx = jnp.asarray(ctx.forget_idx)
    wrong = objectives.random_wrong_labels(jax.random.key(ctx.seed + seed_offset), y[idx], ctx.num_classes)
    return y.at[idx].set(wrong)


@register("rl", "random wrong labels on F, train on F and R", {"lr_scale": 0.1, "epochs": None})
def rl(ctx, opts):
    plan = method_plan(
        ctx,
        opts,
        "rl",
        Phase("rl", rl_loss, uses=("retain", "forget")),
        hp={"random_labels": random_label_table(ctx), "forget_weight": union_weight(ctx)},
    )
    return Recipe(plan=plan)
