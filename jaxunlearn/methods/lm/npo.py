"""NPO for language models (Zhang, Lin, Bai, Mei 2024, "Negative Preference Optimization: From Catastrophic
Collapse to Effective Unlearning"):

``L = (2/β) · mean_{i∈F} log(1 + (π_θ(y_i|x_i) / π_ref(y_i|x_i))^β) + w_r · CE(R)``

with sequence log-likelihoods over the masked tokens (:func:`jaxunlearn.objectives.npo_loss`), ``π_ref`` the
model before unlearning (held in ``hp["ref_params"]``, no gradient), ``β = 0.1`` and the retain NLL of
open-unlearning's NPO (``w_r = 1``).
"""

import jax
import jax.numpy as jnp

from jaxunlearn import objectives
from jaxunlearn.methods import options
from jaxunlearn.methods.lm.base import SIGN_CHECK, Phase, Recipe, forward, lm_plan, register_lm
from jaxunlearn.methods.lm.common import paired_nll_loss


def npo_phase_loss(apply_fn, params, model_state, batch, hp, info):
    """``(2/β)·mean softplus(β(log π_θ(y_f|x_f) − log π_ref(y_f|x_f))) + w_r·CE(R)``, ``β = hp["beta"]``,
    ``w_r = hp["retain_weight"]``, ``π_ref`` the model of ``hp["ref_params"]`` in eval mode.

    Example:
        >>> from jaxunlearn.engine import ArraySource
        >>> from jaxunlearn.methods.lm import toy_lm_context
        >>> from jaxunlearn.plan import StepInfo
        >>> ctx = toy_lm_context()
        >>> b = {k: ArraySource.gather(ctx.data, i[:4])
        ...      for k, i in (("retain", ctx.retain_idx), ("forget", ctx.forget_idx))}
        >>> hp = {"beta": jnp.float32(0.1), "retain_weight": jnp.float32(0.0), "ref_params": ctx.params}
        >>> loss, _ = npo_phase_loss(ctx.apply_fn, ctx.params, ctx.model_state, b, hp, StepInfo.at())
        >>> round(float(loss), 4)      # π_θ = π_ref: (2/β)·log 2
        13.8629
    """
    return paired_nll_loss(apply_fn, params, model_state, batch, hp, _forget_term)


def _forget_term(apply_fn, model_state, logits_f, f, hp):
    ref_logits, _ = forward(apply_fn, hp["ref_params"], model_state, f, train=False)
    ll = objectives.sequence_log_likelihood(logits_f, f["y"], f["mask"])
    ref_ll = jax.lax.stop_gradient(objectives.sequence_log_likelihood(ref_logits, f["y"], f["mask"]))
    return objectives.npo_loss(ll, ref_ll, hp["beta"])


@register_lm(
    "npo",
    "(2/b) log(1 + (pi/pi_ref)^b) on F + CE(R)",
    {"beta": 0.1, "retain_weight": 30.0, "lr_scale": 1.0, "epochs": 30, "sign": "min"},
    checks={"beta": options.positive(), "retain_weight": options.nonnegative(), "sign": SIGN_CHECK},
)
def npo(ctx, opts):
    """NPO's recipe: one phase minimizing :func:`npo_phase_loss`, the reference being ``ctx.params``.

    Example:
        >>> from jaxunlearn.methods.lm import get_lm, resolve_options, toy_lm_context
        >>> plan = npo(toy_lm_context(), resolve_options(get_lm("npo"), {"beta": 0.5})).plan
        >>> float(plan.hp["beta"]), sorted(plan.hp)
        (0.5, ['beta', 'ref_params', 'retain_weight'])
    """
    hp = {"beta": jnp.float32(opts["beta"]), "retain_weight": jnp.float32(opts["retain_weight"]),
          "ref_params": ctx.params}  # fmt: skip
    phase = Phase("npo", npo_phase_loss, uses=("retain", "forget"), sign=opts["sign"])
    return Recipe(plan=lm_plan(ctx, opts, "npo", phase, hp=hp))
