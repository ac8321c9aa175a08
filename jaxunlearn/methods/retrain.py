"""Retrain: train from scratch on the retain set with the pretraining recipe (the gold standard).

Every metric is compared with Retrain. It repeats the original training (optimizer, epochs) from a
fresh initialisation, on ``D_r`` only.
"""

from jaxunlearn.methods import options
from jaxunlearn.methods.base import Recipe, register
from jaxunlearn.plan import Phase, Plan, supervised_loss


@register(
    "retrain",
    "train from scratch on the retain set (the reference)",
    {"init_seed": None},
    checks={"init_seed": options.optional_seed()},
)
def retrain(ctx, opts):
    """Retrain's recipe: minimize ``CE(R)`` from ``ctx.init_fn(seed)`` (``opts["init_seed"]``, default
    ``ctx.seed + 1000``) with ``ctx.pretrain_optimizer`` for ``ctx.pretrain_epochs`` epochs.

    Example:
        >>> from jaxunlearn.methods import toy_context
        >>> ctx = toy_context(pretrain_epochs=2)
        >>> recipe = retrain(ctx, {"init_seed": None})
        >>> recipe.plan.epochs, recipe.plan.optimizer.name, recipe.plan.phases[0].loss is supervised_loss
        (2, 'sgd', True)
        >>> fresh, _ = recipe.start
        >>> bool((fresh["head"]["kernel"] != ctx.params["head"]["kernel"]).any())  # not the original model
        True
        >>> retrain(toy_context(init_fn=None), {"init_seed": None})
        Traceback (most recent call last):
        ValueError: retrain needs ctx.init_fn (seed -> fresh params, model_state) to start from scratch.
    """
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
