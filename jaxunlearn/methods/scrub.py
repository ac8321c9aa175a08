"""SCRUB (Kurmanji et al. 2023): teacher = the original model, student = the model being unlearned.

Max steps (first ``msteps`` epochs): maximize ``KL(teacher ‖ student)`` on F, i.e. minimize its negative.
Min steps (every epoch): minimize ``γ·CE(R) + β·KL(teacher ‖ student)`` on R. Temperature ``kd_T``.
"""

import jax
import jax.numpy as jnp

from jaxunlearn import objectives
from jaxunlearn.methods.base import Recipe, method_plan, register
from jaxunlearn.plan import Phase


def scrub_max_loss(apply_fn, params, model_state, batch, hp, info):
    """``−KL_T(teacher(x_f) ‖ student(x_f))``."""
    s, new_state = apply_fn(params, model_state, batch["forget"]["x"], train=True)
    t, _ = apply_fn(hp["teacher"], hp["teacher_state"], batch["forget"]["x"], train=False)
    return -objectives.kl_distillation(s, t, hp["kd_T"]), new_state


def scrub_min_loss(apply_fn, params, model_state, batch, hp, info):
    """``γ·CE(R) + β·KL_T(teacher(x_r) ‖ student(x_r))``."""
    s, new_state = apply_fn(params, model_state, batch["retain"]["x"], train=True)
    t, _ = apply_fn(hp["teacher"], hp["teacher_state"], batch["retain"]["x"], train=False)
    kl = objectives.kl_distillation(s, t, hp["kd_T"])
    return hp["gamma"] * objectives.cross_entropy(s, batch["retain"]["y"]) + hp["beta"] * kl, new_state


@register(
    "scrub",
    "max KL(teacher||student) on F, then min CE + KL on R",
    {"msteps": 2, "kd_T": 4.0, "gamma": 0.99, "beta": 0.1, "lr_scale": 0.1, "epochs": 5},
)
def scrub(ctx, opts):
    msteps = int(opts["msteps"])
    hp = {
        "teacher": jax.tree.map(jnp.array, ctx.params),
        "teacher_state": jax.tree.map(jnp.array, ctx.model_state),
        "kd_T": jnp.float32(opts["kd_T"]),
        "gamma": jnp.float32(opts["gamma"]),
        "beta": jnp.float32(opts["beta"]),
    }
    plan = method_plan(
        ctx,
        opts,
        "scrub",
        Phase("max", scrub_max_loss, uses=("forget",), active=lambda e: e < msteps),
        Phase("min", scrub_min_loss, uses=("retain",)),
        hp=hp,
    )
    return Recipe(plan=plan)
