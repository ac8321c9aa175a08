"""SimNPO for language models (Fan, Liu, Lin, Jia, Zhang, Mei, Liu 2024, "Simplicity Prevails: Rethinking
Negative Preference Optimization for LLM Unlearning"), reference-free and length-normalized:

``L = −(2/β) · mean_{i∈F} log σ(−(β/|y_i|) · log π_θ(y_i|x_i) − γ) + w_r · CE(R)``

(:func:`jaxunlearn.objectives.simnpo_loss`), ``β = 2.5``, ``γ = 0``, ``|y_i|`` the number of masked tokens.
"""

import jax.numpy as jnp

from jaxunlearn import objectives
from jaxunlearn.methods import options
from jaxunlearn.methods.lm.base import SIGN_CHECK, Phase, Recipe, lm_plan, register_lm
from jaxunlearn.methods.lm.common import paired_nll_loss


def simnpo_phase_loss(apply_fn, params, model_state, batch, hp, info):
    """``(2/β)·mean softplus((β/|y_f|)·log π_θ(y_f|x_f) + γ) + w_r·CE(R)`` with ``β, γ, w_r`` from ``hp``.

    Example:
        >>> from jaxunlearn.engine import ArraySource
        >>> from jaxunlearn.methods.lm import toy_lm_context
        >>> from jaxunlearn.plan import StepInfo
        >>> ctx = toy_lm_context()
        >>> b = {k: ArraySource.gather(ctx.data, i[:4])
        ...      for k, i in (("retain", ctx.retain_idx), ("forget", ctx.forget_idx))}
        >>> hp = {"beta": jnp.float32(2.5), "gamma": jnp.float32(0.0), "retain_weight": jnp.float32(0.0)}
        >>> loss, _ = simnpo_phase_loss(ctx.apply_fn, ctx.params, ctx.model_state, b, hp, StepInfo.at())
        >>> bool(0.0 < loss < 0.8 * 0.6931)   # below (2/β)·log 2: the mean log-likelihood is negative
        True
    """
    return paired_nll_loss(apply_fn, params, model_state, batch, hp, _forget_term)


def _forget_term(apply_fn, model_state, logits_f, f, hp):
    ll = objectives.sequence_log_likelihood(logits_f, f["y"], f["mask"])
    return objectives.simnpo_loss(ll, jnp.sum(f["mask"], axis=-1), hp["beta"], hp["gamma"])


@register_lm(
    "simnpo",
    "-(2/b) log sigmoid(-(b/|y|) log pi - g) on F + CE(R)",
    {"beta": 2.5, "gamma": 0.0, "retain_weight": 5.0, "lr_scale": 1.0, "epochs": 20, "sign": "min"},
    checks={
        "beta": options.positive(),
        "gamma": options.nonnegative(),
        "retain_weight": options.nonnegative(),
        "sign": SIGN_CHECK,
    },  # fmt: skip
)
def simnpo(ctx, opts):
    """SimNPO's recipe: one phase minimizing :func:`simnpo_phase_loss`.

    Example:
        >>> from jaxunlearn.methods.lm import get_lm, resolve_options, toy_lm_context
        >>> plan = simnpo(toy_lm_context(), resolve_options(get_lm("simnpo"), {})).plan
        >>> float(plan.hp["beta"]), float(plan.hp["gamma"])
        (2.5, 0.0)
    """
    hp = {k: jnp.float32(opts[k]) for k in ("beta", "gamma", "retain_weight")}
    phase = Phase("simnpo", simnpo_phase_loss, uses=("retain", "forget"), sign=opts["sign"])
    return Recipe(plan=lm_plan(ctx, opts, "simnpo", phase, hp=hp))
