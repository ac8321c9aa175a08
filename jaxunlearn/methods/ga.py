"""Gradient ascent (GA): minimize ``−CE(D_f)``; an epoch is one pass over the forget set.

GA diverges by design if run long; the defaults use a small learning rate and few epochs, and the
engine's divergence guard stops it when the loss or the weights stop being finite.
"""

from jaxunlearn import objectives
from jaxunlearn.methods.base import Recipe, method_plan, register
from jaxunlearn.plan import Phase


def ga_loss(apply_fn, params, model_state, batch, hp, info):
    """``−CE(f(x_f), y_f)``."""
    logits, new_state = apply_fn(params, model_state, batch["forget"]["x"], train=True)
    return objectives.negated_cross_entropy(logits, batch["forget"]["y"]), new_state


@register("ga", "gradient ascent on the forget set: min -CE(F)", {"lr_scale": 0.01, "epochs": 2})
def ga(ctx, opts):
    plan = method_plan(ctx, opts, "ga", Phase("forget", ga_loss, uses=("forget",)), epoch_over="forget")
    return Recipe(plan=plan)
