"""GradAscent for language models: minimize ``−CE(F)``, the next-token cross-entropy of the forget tokens
negated (gradient ascent); an epoch is a pass over the forget set.

Like GA on images it diverges if run long: the defaults are a few epochs, and the engine's divergence
guard keeps the last finite epoch. ``sign="max"`` runs the phase with sharpness maximization when the
optimizer is SAM-type (``g + λ(g' − g)`` with ``g'`` at ``w + ρ g/‖g‖``).
"""

from jaxunlearn.methods.lm.base import SIGN_CHECK, Phase, Recipe, lm_plan, register_lm
from jaxunlearn.methods.lm.common import part_ce


def grad_ascent_loss(apply_fn, params, model_state, batch, hp, info):
    """``−CE(F) = Σ m log p(y_f) / Σ m`` over the forget batch's masked tokens.

    Example:
        >>> from jaxunlearn.engine import ArraySource
        >>> from jaxunlearn.methods.lm import toy_lm_context
        >>> from jaxunlearn.methods.lm.base import lm_loss
        >>> from jaxunlearn.plan import StepInfo
        >>> ctx = toy_lm_context()
        >>> part = ArraySource.gather(ctx.data, ctx.forget_idx)
        >>> ga, _ = grad_ascent_loss(ctx.apply_fn, ctx.params, ctx.model_state, {"forget": part}, {}, StepInfo.at())
        >>> ce, _ = lm_loss(ctx.apply_fn, ctx.params, ctx.model_state, {"retain": part}, {}, StepInfo.at())
        >>> bool(abs(ga + ce) < 1e-5)
        True
    """
    ce, new_state = part_ce(apply_fn, params, model_state, batch, "forget")
    return -ce, new_state


@register_lm(
    "grad_ascent",
    "gradient ascent on the forget tokens: min -CE(F)",
    {"lr_scale": 0.5, "epochs": 3, "sign": "min"},
    checks={"sign": SIGN_CHECK},
)
def grad_ascent(ctx, opts):
    """GradAscent's recipe: one phase minimizing :func:`grad_ascent_loss` over the forget set.

    Example:
        >>> from jaxunlearn.methods.lm import get_lm, resolve_options, toy_lm_context
        >>> plan = grad_ascent(toy_lm_context(), resolve_options(get_lm("grad_ascent"), {"sign": "max"})).plan
        >>> plan.phases[0].uses, plan.phases[0].sign, plan.epoch_over
        (('forget',), 'max', 'forget')
    """
    phase = Phase("grad_ascent", grad_ascent_loss, uses=("forget",), sign=opts["sign"])
    return Recipe(plan=lm_plan(ctx, opts, "grad_ascent", phase))
