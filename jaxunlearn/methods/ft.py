"""Fine-tune (FT): minimize ``CE(D_r)`` starting from the original model (catastrophic forgetting of F)."""

from jaxunlearn.methods.base import Recipe, method_plan, register
from jaxunlearn.plan import Phase, supervised_loss


@register("ft", "fine-tune on the retain set: min CE(R)", {"lr_scale": 1.0, "epochs": None})
def ft(ctx, opts):
    """FT's recipe: one phase minimizing ``CE(R)`` (:func:`~jaxunlearn.plan.supervised_loss`) from the original
    model, at ``opts["lr_scale"]`` times the unlearning rate, for ``opts["epochs"]`` (default: the context's).

    Example:
        >>> from jaxunlearn.methods import toy_context, unlearn
        >>> recipe = ft(toy_context(), {"lr_scale": 0.5, "epochs": None})
        >>> [(p.name, p.loss.__name__) for p in recipe.plan.phases], recipe.plan.epochs, recipe.plan.optimizer.lr
        ([('retain', 'supervised_loss')], 1, 0.005)
        >>> res = unlearn("ft", toy_context(), progress=False)
        >>> len(res.history), res.diverged is None
        (1, True)
    """
    plan = method_plan(ctx, opts, "ft", Phase("retain", supervised_loss))
    return Recipe(plan=plan)
