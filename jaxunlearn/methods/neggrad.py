"""NegGrad (NegGrad+ in RUM): minimize ``α·CE(D_r) − (1−α)·CE(D_f)`` on paired batches.

Default recipe: α = 0.999 at 0.3 × the unlearning rate (AdamW 3e-3). With Adam-type optimizers the loss scale
barely changes the step, so only the ratio (1−α)/α of forget to retain weight sets how hard the forget term
pushes; RUM tunes α per setting, and paper A's code uses α = 0.99 at the full rate (the ``reference`` preset).
At α = 0.99 a whole forgotten class wrecks the other classes (digits class 3: test accuracy 76 points below
Retrain's); at 0.999 and 0.3× it forgets the class and stays within 2.2 points, and within 1.4 on a random
10 % forget set (``benchmarks/RESULTS-recipes.md``).

The retain and the forget batch go through the model in two forward passes, as in the reference code:
with batch normalization each set is normalized by its own batch statistics and the running averages are
updated twice per step (retain, then forget). A model without state (no batch statistics, no RNG
streams) gives the same loss from one pass over the two batches concatenated, which is faster: that is
what runs then.
"""

import jax
import jax.numpy as jnp

from jaxunlearn import objectives
from jaxunlearn.methods import options
from jaxunlearn.methods.base import Recipe, method_plan, register
from jaxunlearn.plan import Phase


def neggrad_loss(apply_fn, params, model_state, batch, hp, info):
    """``α·CE(R) − (1−α)·CE(F)`` with ``α = hp["alpha"]``.

    Two forward passes, ``f(x_R; s) → s'`` then ``f(x_F; s') → s''`` (the model state threaded through
    both, so batch-norm statistics are per set); one pass over ``[x_R; x_F]`` when the model has no state.

    Example:
        >>> from jaxunlearn.engine import ArraySource
        >>> from jaxunlearn.methods import toy_context
        >>> from jaxunlearn.plan import StepInfo
        >>> ctx = toy_context()
        >>> data = {"x": ctx.x, "y": ctx.y}
        >>> batch = {"retain": ArraySource.gather(data, ctx.retain_idx[:16]),
        ...          "forget": ArraySource.gather(data, ctx.forget_idx[:8])}
        >>> hp = {"alpha": jnp.float32(0.9)}
        >>> loss, _ = neggrad_loss(ctx.apply_fn, ctx.params, ctx.model_state, batch, hp, StepInfo.at())
        >>> def ce(part):
        ...     logits, _ = ctx.apply_fn(ctx.params, ctx.model_state, batch[part]["x"])
        ...     return objectives.cross_entropy(logits, batch[part]["y"])
        >>> bool(jnp.isclose(loss, 0.9 * ce("retain") - 0.1 * ce("forget"), atol=1e-6))
        True
    """
    r, f = batch["retain"], batch["forget"]
    if jax.tree.leaves(model_state):  # batch statistics / RNG streams: one pass per set, state threaded
        logits_r, state = apply_fn(params, model_state, r["x"], train=True)
        logits_f, new_state = apply_fn(params, state, f["x"], train=True)
    else:  # stateless: the concatenated pass computes the same logits
        n_r = r["x"].shape[0]
        logits, new_state = apply_fn(params, model_state, jnp.concatenate([r["x"], f["x"]]), train=True)
        logits_r, logits_f = logits[:n_r], logits[n_r:]
    ce_r = objectives.cross_entropy(logits_r, r["y"])
    ce_f = objectives.cross_entropy(logits_f, f["y"])
    a = hp["alpha"]
    return a * ce_r - (1.0 - a) * ce_f, new_state


@register(
    "neggrad",
    "alpha*CE(R) - (1-alpha)*CE(F)",
    {"alpha": 0.999, "lr_scale": 0.3, "epochs": None},
    checks={"alpha": options.unit_interval()},
)
def neggrad(ctx, opts):
    """NegGrad's recipe: one phase minimizing :func:`neggrad_loss` on paired retain/forget batches, an epoch
    being a pass over the retain set, ``hp["alpha"] = opts["alpha"]``.

    Example:
        >>> from jaxunlearn.methods import toy_context
        >>> plan = neggrad(toy_context(), {"alpha": 0.99, "lr_scale": 1.0, "epochs": None}).plan
        >>> plan.phases[0].uses, plan.epoch_over, round(float(plan.hp["alpha"]), 4)
        (('retain', 'forget'), 'retain', 0.99)
    """
    plan = method_plan(
        ctx,
        opts,
        "neggrad",
        Phase("neggrad", neggrad_loss, uses=("retain", "forget")),
        hp={"alpha": jnp.float32(opts["alpha"])},
    )
    return Recipe(plan=plan)
