"""Gradient ascent (GA): minimize ``−CE(D_f)``; an epoch is one pass over the forget set.

GA diverges by design if run long; the defaults use a small learning rate and few epochs, and the
engine's divergence guard stops it when the loss or the weights stop being finite.

Default recipe: ``lr_scale`` 0.003 (AdamW 3e-5 with the default unlearning rate 0.01) for 5 epochs over the
forget set. Source: the GA recipe of SalUn / Sparse-Unlearn and RUM (``--unlearn GA --unlearn_lr 1e-4
--unlearn_epochs 5``, SGD), scaled down by what our data showed (``benchmarks/RESULTS-recipes.md``): at 0.01
(AdamW 1e-4) a random 10 % of Fashion-MNIST (270 examples, 25 ascent steps) collapses the CNN (test accuracy
−22 and −30 points on two seeds), while 0.003 keeps it within 1.4 points there (SGD pretraining, plain
unlearning) and within 0.6 on digits under plain and SAM unlearning after SGD and SAM pretraining. On a whole
class GA only moves forget accuracy part of the way (digits 98.5 %, Fashion-MNIST ≈ 65 %). GA cannot serve
both by nature: with no retain term its only brake is the step budget, and a class needs 3–10× the ascent that
already costs a random forget set 5–30 points of test accuracy. Use :func:`jaxunlearn.tuning.tune`
(``--tune``) for class forgetting: GA's grid reaches 10× its rate (``tune_factors``).
"""

from jaxunlearn import objectives
from jaxunlearn.methods.base import Recipe, method_plan, register
from jaxunlearn.plan import Phase


def ga_loss(apply_fn, params, model_state, batch, hp, info):
    """``−CE(f(x_f), y_f)``: minus the mean cross-entropy on the forget batch (train mode).

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxunlearn.engine import ArraySource
        >>> from jaxunlearn.methods import toy_context
        >>> from jaxunlearn.plan import StepInfo
        >>> ctx = toy_context()
        >>> batch = {"forget": ArraySource.gather({"x": ctx.x, "y": ctx.y}, ctx.forget_idx)}
        >>> loss, _ = ga_loss(ctx.apply_fn, ctx.params, ctx.model_state, batch, {}, StepInfo.at())
        >>> logits, _ = ctx.apply_fn(ctx.params, ctx.model_state, batch["forget"]["x"])
        >>> bool(jnp.isclose(loss, -objectives.cross_entropy(logits, batch["forget"]["y"])))
        True
    """
    logits, new_state = apply_fn(params, model_state, batch["forget"]["x"], train=True)
    return objectives.negated_cross_entropy(logits, batch["forget"]["y"]), new_state


@register(
    "ga",
    "gradient ascent on the forget set: min -CE(F)",
    {"lr_scale": 0.003, "epochs": 5},
    tune_factors=(0.3, 1.0, 3.0, 10.0),
)
def ga(ctx, opts):
    """GA's recipe: one phase minimizing :func:`ga_loss` ``−CE(F)``, an epoch being a pass over the forget set,
    at ``opts["lr_scale"]`` (default 0.003) times the unlearning rate for ``opts["epochs"]`` (default 5) epochs.

    Example:
        >>> from jaxunlearn.methods import toy_context
        >>> plan = ga(toy_context(), {"lr_scale": 0.01, "epochs": 2}).plan
        >>> plan.epoch_over, plan.epochs, plan.phases[0].uses, round(plan.optimizer.lr, 8)
        ('forget', 2, ('forget',), 0.0001)
    """
    plan = method_plan(ctx, opts, "ga", Phase("forget", ga_loss, uses=("forget",)), epoch_over="forget")
    return Recipe(plan=plan)
