"""Fine-tune (FT): minimize ``CE(D_r)`` starting from the original model (catastrophic forgetting of F)."""

from jaxunlearn.methods.base import Recipe, method_plan, register
from jaxunlearn.plan import Phase, supervised_loss


@register("ft", "fine-tune on the retain set: min CE(R)", {"lr_scale": 1.0, "epochs": None})
def ft(ctx, opts):
    plan = method_plan(ctx, opts, "ft", Phase("retain", supervised_loss))
    return Recipe(plan=plan)
