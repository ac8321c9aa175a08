"""Random label (RL): give every forget example a fixed random WRONG label and train on ``D_f ∪ D_r``.

Each step's loss is the mean cross-entropy over the union of the retain batch (true labels) and the
forget batch (random labels).
"""

import jax
import jax.numpy as jnp

from jaxunlearn import objectives
from jaxunlearn.methods.base import Recipe, register, scaled
from jaxunlearn.plan import Phase, Plan


def rl_loss(apply_fn, params, model_state, batch, hp):
    """``CE`` over ``[x_r; x_f]`` with labels ``[y_r; ỹ_f]``, ``ỹ`` the fixed random labels."""
    x = jnp.concatenate([batch["x_r"], batch["x_f"]])
    y = jnp.concatenate([batch["y_r"], jnp.take(hp["random_labels"], batch["i_f"])])
    logits, new_state = apply_fn(params, model_state, x, train=True)
    return objectives.cross_entropy(logits, y), new_state


def random_label_table(ctx, seed_offset: int = 17):
    """Array over all training indices holding a random wrong label at the forget indices."""
    y = jnp.asarray(ctx.y)
    idx = jnp.asarray(ctx.forget_idx)
    wrong = objectives.random_wrong_labels(jax.random.key(ctx.seed + seed_offset), y[idx], ctx.num_classes)
    return y.at[idx].set(wrong)


@register("rl", "random wrong labels on F, train on F and R", {"lr_scale": 1.0, "epochs": None})
def rl(ctx, opts):
    plan = Plan(
        phases=(Phase("rl", rl_loss, uses=("retain", "forget")),),
        optimizer=scaled(ctx.optimizer, opts["lr_scale"]),
        epochs=opts["epochs"] or ctx.epochs,
        batch_size=ctx.batch_size,
        hp={"random_labels": random_label_table(ctx)},
        name="rl",
    )
    return Recipe(plan=plan)
