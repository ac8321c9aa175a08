"""GradDiff for language models: ``L = w_r·CE(R) − w_f·CE(F)``, gradient descent on the retain tokens and
ascent on the forget tokens in one step (open-unlearning's GradDiff with an NLL retain loss; the LM
form of NegGrad+). An epoch is a pass over the forget set, each forget batch paired with a retain batch.
"""

import jax.numpy as jnp

from jaxunlearn import objectives
from jaxunlearn.methods import options
from jaxunlearn.methods.lm.base import SIGN_CHECK, Phase, Recipe, lm_plan, register_lm
from jaxunlearn.methods.lm.common import paired_nll_loss


def graddiff_loss(apply_fn, params, model_state, batch, hp, info):
    """``w_r·CE(R) − w_f·CE(F)`` with ``w_r = hp["retain_weight"]``, ``w_f = hp["forget_weight"]``.

    Example:
        >>> from jaxunlearn.engine import ArraySource
        >>> from jaxunlearn.methods.lm import toy_lm_context
        >>> from jaxunlearn.plan import StepInfo
        >>> ctx = toy_lm_context()
        >>> b = {k: ArraySource.gather(ctx.data, i[:4])
        ...      for k, i in (("retain", ctx.retain_idx), ("forget", ctx.forget_idx))}
        >>> hp = {"retain_weight": jnp.float32(1.0), "forget_weight": jnp.float32(0.0)}
        >>> loss, _ = graddiff_loss(ctx.apply_fn, ctx.params, ctx.model_state, b, hp, StepInfo.at())
        >>> logits, _ = ctx.apply_fn(ctx.params, ctx.model_state, b["retain"]["x"])
        >>> bool(abs(loss - objectives.token_cross_entropy(logits, b["retain"]["y"], b["retain"]["mask"])) < 1e-5)
        True
    """
    return paired_nll_loss(apply_fn, params, model_state, batch, hp, _forget_term)


def _forget_term(apply_fn, model_state, logits_f, f, hp):
    return -hp["forget_weight"] * objectives.token_cross_entropy(logits_f, f["y"], f["mask"])


@register_lm(
    "graddiff",
    "w_r*CE(R) - w_f*CE(F)",
    {"retain_weight": 30.0, "forget_weight": 1.0, "lr_scale": 0.5, "epochs": 30, "sign": "min"},
    checks={"retain_weight": options.nonnegative(), "forget_weight": options.nonnegative(), "sign": SIGN_CHECK},
)
def graddiff(ctx, opts):
    """GradDiff's recipe: one phase minimizing :func:`graddiff_loss` on paired forget/retain batches.

    Example:
        >>> from jaxunlearn.methods.lm import get_lm, resolve_options, toy_lm_context
        >>> plan = graddiff(toy_lm_context(), resolve_options(get_lm("graddiff"), {})).plan
        >>> plan.phases[0].uses, float(plan.hp["forget_weight"])
        (('retain', 'forget'), 1.0)
    """
    hp = {"retain_weight": jnp.float32(opts["retain_weight"]), "forget_weight": jnp.float32(opts["forget_weight"])}
    phase = Phase("graddiff", graddiff_loss, uses=("retain", "forget"), sign=opts["sign"])
    return Recipe(plan=lm_plan(ctx, opts, "graddiff", phase, hp=hp))
