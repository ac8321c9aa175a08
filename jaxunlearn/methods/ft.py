"""Fine-tune (FT): minimize ``CE(D_r)`` starting from the original model (catastrophic forgetting of F)."""

from jaxunlearn.methods.base import Recipe, register, scaled
from jaxunlearn.plan import Phase, Plan, supervised_loss


@register("ft", "fine-tune on the retain set: min CE(R)", {"lr_scale": 1.0, "epochs": None})
def ft(ctx, opts):
    plan = Plan(
        phases=(Phase("retain", supervised_loss),),
        optimizer=scaled(ctx.optimizer, opts["lr_scale"]),
        epochs=opts["epochs"] or ctx.epochs,
        batch_size=ctx.batch_size,
        name="ft",
    )
    return Recipe(plan=plan)
