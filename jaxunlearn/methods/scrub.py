"""SCRUB (Kurmanji et al. 2023): teacher = the original model, student = the model being unlearned.

Max steps (first ``msteps`` epochs): maximize ``KL(teacher ‖ student)`` on F, i.e. minimize its negative.
Min steps (every epoch): minimize ``γ·CE(R) + β·KL(teacher ‖ student)`` on R. Temperature ``kd_T``.

Default recipe: ``msteps`` 2 max-step epochs of 5, ``kd_T`` 4, ``γ`` 0.99 (the SCRUB repository's
``--msteps 2 --kd_T 4 --gamma 0.99``), ``β`` 0.1 on the retain KL, and ``lr_scale`` 0.2 (AdamW 2e-3 with the
default unlearning rate). The repository runs SGD at 5e-4; with AdamW the rate was checked on digits
(``benchmarks/RESULTS-recipes.md``): 0.1 leaves a whole class at 79–99 % forget accuracy, 0.2 forgets it
(0 %) after SGD pretraining with test accuracy within 1.7 points of Retrain's and keeps a random forget set
within 2.2 points; 0.3 or a third max-step epoch cost the other classes up to 6–7 points. After SAM
pretraining the same rate forgets a class only part of the way (38–46 % forget accuracy, test accuracy
within 5.3 points of Retrain's); :func:`jaxunlearn.tuning.tune` (``--tune``) picks the rate per model.
"""

import jax
import jax.numpy as jnp

from jaxunlearn import objectives
from jaxunlearn.methods import options
from jaxunlearn.methods.base import Recipe, method_plan, register
from jaxunlearn.plan import Phase


def scrub_max_loss(apply_fn, params, model_state, batch, hp, info):
    """``−KL_T(teacher(x_f) ‖ student(x_f))``: :func:`~jaxunlearn.objectives.kl_distillation` at temperature
    ``T = hp["kd_T"]``, teacher ``hp["teacher"]`` (eval mode), negated.

    Example:
        >>> from jaxunlearn.engine import ArraySource
        >>> from jaxunlearn.methods import toy_context
        >>> from jaxunlearn.plan import StepInfo
        >>> ctx = toy_context()
        >>> batch = {"forget": ArraySource.gather({"x": ctx.x, "y": ctx.y}, ctx.forget_idx)}
        >>> hp = {"teacher": ctx.params, "teacher_state": ctx.model_state, "kd_T": jnp.float32(4.0)}
        >>> same, _ = scrub_max_loss(ctx.apply_fn, ctx.params, ctx.model_state, batch, hp, StepInfo.at())
        >>> moved = jax.tree.map(lambda w: 1.5 * w, ctx.params)
        >>> apart, _ = scrub_max_loss(ctx.apply_fn, moved, ctx.model_state, batch, hp, StepInfo.at())
        >>> abs(float(same)) < 1e-6, float(apart) < 0  # 0 when student = teacher, below 0 once they differ
        (True, True)
    """
    s, new_state = apply_fn(params, model_state, batch["forget"]["x"], train=True)
    t, _ = apply_fn(hp["teacher"], hp["teacher_state"], batch["forget"]["x"], train=False)
    return -objectives.kl_distillation(s, t, hp["kd_T"]), new_state


def scrub_min_loss(apply_fn, params, model_state, batch, hp, info):
    """``γ·CE(R) + β·KL_T(teacher(x_r) ‖ student(x_r))`` with ``γ, β, T = hp["gamma"], hp["beta"], hp["kd_T"]``.

    Example:
        >>> from jaxunlearn.engine import ArraySource
        >>> from jaxunlearn.methods import toy_context
        >>> from jaxunlearn.plan import StepInfo
        >>> ctx = toy_context()
        >>> batch = {"retain": ArraySource.gather({"x": ctx.x, "y": ctx.y}, ctx.retain_idx[:16])}
        >>> hp = {"teacher": ctx.params, "teacher_state": ctx.model_state, "kd_T": jnp.float32(4.0),
        ...       "gamma": jnp.float32(0.99), "beta": jnp.float32(0.1)}
        >>> loss, _ = scrub_min_loss(ctx.apply_fn, ctx.params, ctx.model_state, batch, hp, StepInfo.at())
        >>> logits, _ = ctx.apply_fn(ctx.params, ctx.model_state, batch["retain"]["x"])
        >>> ce = objectives.cross_entropy(logits, batch["retain"]["y"])
        >>> bool(jnp.isclose(loss, 0.99 * ce, atol=1e-6))  # student = teacher: the KL term is 0
        True
    """
    s, new_state = apply_fn(params, model_state, batch["retain"]["x"], train=True)
    t, _ = apply_fn(hp["teacher"], hp["teacher_state"], batch["retain"]["x"], train=False)
    kl = objectives.kl_distillation(s, t, hp["kd_T"])
    return hp["gamma"] * objectives.cross_entropy(s, batch["retain"]["y"]) + hp["beta"] * kl, new_state


@register(
    "scrub",
    "max KL(teacher||student) on F, then min CE + KL on R",
    {"msteps": 2, "kd_T": 4.0, "gamma": 0.99, "beta": 0.1, "lr_scale": 0.2, "epochs": 5},
    checks={
        "msteps": options.count(0),
        "kd_T": options.positive(),
        "gamma": options.nonnegative(),
        "beta": options.nonnegative(),
    },
)
def scrub(ctx, opts):
    """SCRUB's recipe: a max phase (:func:`scrub_max_loss` on F, active in the first ``opts["msteps"]`` epochs)
    and a min phase (:func:`scrub_min_loss` on R, every epoch), the teacher a copy of the original model.

    Example:
        >>> from jaxunlearn.methods import get, resolve_options, toy_context
        >>> plan = scrub(toy_context(), resolve_options(get("scrub"), {"epochs": 3})).plan
        >>> [(p.name, [p.is_active(e) for e in range(plan.epochs)]) for p in plan.phases]
        [('max', [True, True, False]), ('min', [True, True, True])]
    """
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
