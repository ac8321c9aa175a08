"""Retrain: train from scratch on the retain set with the pretraining recipe (the gold standard).

Every metric is compared with Retrain. It repeats the original training (optimizer, epochs) from a
fresh initialisation, on ``D_r`` only.
"""

from jaxunlearn.methods.base import Recipe, register
from jaxunlearn.plan import Phase, Plan, supervised_loss


@register("retrain", "train from scratch on the retain set (the reference)", {"init_seed": None})
def retrain(ctx, opts):
    if ctx.init_fn is None:
        raise ValueError("retrain needs ctx.init_fn (seed -> fresh params, model_state) to start from scratch.")
    seed = ctx.seed + 1000 if opts["init_seed"] is None else int(opts["init_seed"])
    plan = Plan(
        phases=(Phase("retain", supervised_loss),),
        optimizer=ctx.pretrain_optimizer,
        epochs=ctx.pretrain_epochs,
        batch_size=ctx.batch_size,
        name="retrain",
    )
    return Recipe(plan=plan, start=ctx.init_fn(seed))
