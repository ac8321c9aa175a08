"""Retrain (the reference: training from scratch without the forget people) and fine-tuning on the retain
set, for language models."""

from jaxunlearn.methods.lm.base import Phase, Plan, Recipe, lm_loss, lm_plan, register_lm


@register_lm("retrain", "train from a fresh initialisation on the retain set only", {"epochs": None})
def retrain(ctx, opts):
    """Retrain's recipe: ``ctx.init_fn(seed + 1)``, then ``opts["epochs"]`` (default ``ctx.pretrain_epochs``)
    epochs of :func:`lm_loss` over the retain set with ``ctx.pretrain_optimizer``.

    Example:
        >>> from jaxunlearn.methods.lm import toy_lm_context
        >>> r = retrain(toy_lm_context(), {"epochs": None})
        >>> r.plan.epoch_over, r.plan.epochs, r.start is not None
        ('retain', 1, True)
    """
    if ctx.init_fn is None:
        raise ValueError("retrain needs LMContext.init_fn (seed -> (params, model_state)) for a fresh model.")
    plan = Plan((Phase("train", lm_loss),), optimizer=ctx.pretrain_optimizer,
                epochs=opts["epochs"] or ctx.pretrain_epochs, batch_size=min(ctx.batch_size, len(ctx.retain_idx)),
                epoch_over="retain", name="retrain")  # fmt: skip
    return Recipe(plan=plan, start=ctx.init_fn(ctx.seed + 1), forget_idx=ctx.forget_idx[:0])


@register_lm("finetune", "fine-tune on the retain set: min CE(R)", {"lr_scale": 1.0, "epochs": None})
def finetune(ctx, opts):
    """Fine-tuning's recipe: :func:`lm_loss` on retain batches, an epoch being a pass over the forget set's
    number of steps (as the other LM methods).

    Example:
        >>> from jaxunlearn.methods.lm import toy_lm_context
        >>> finetune(toy_lm_context(), {"lr_scale": 1.0, "epochs": None}).plan.phases[0].uses
        ('retain',)
    """
    return Recipe(plan=lm_plan(ctx, opts, "finetune", Phase("retain", lm_loss)))
