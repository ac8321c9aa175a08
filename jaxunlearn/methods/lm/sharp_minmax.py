"""Sharp MinMax (Tang & Khanna, ICLR 2026) on a language model: the image method's two optimizers over one
model split by a saliency mask ``M``, with token-level losses:

* retain step: SAM-min on ``α·CE(R)`` (next-token CE of the retain tokens), updates restricted to ``1 − M``;
* forget step: sharpness maximization (SAM, ``sign="max"``) on ``−(1−α)·CE(F)``, restricted to ``M``, at
  ``forget_lr_scale`` times the retain step's rate;

``M`` = the top ``fraction`` of ``|Σ_{i∈F} ∇(−CE_i)|`` ranked globally (:func:`jaxunlearn.selection.top_fraction`).
The plan is the image method's (same phases, signs, masks and ``mask_reading``); only the losses read tokens.
"""

import dataclasses

import jax
import jax.numpy as jnp

from jaxunlearn import selection
from jaxunlearn.methods import options
from jaxunlearn.methods.base import scaled
from jaxunlearn.methods.lm.base import Phase, Recipe, register_lm
from jaxunlearn.methods.lm.common import part_ce, token_gradient
from jaxunlearn.plan import MASK_READINGS, Plan


def lm_retain_loss(apply_fn, params, model_state, batch, hp, info):
    """``α·CE(R)`` over the retain batch's masked tokens, ``α = hp["alpha"]``.

    Example:
        >>> from jaxunlearn.engine import ArraySource
        >>> from jaxunlearn.methods.lm import toy_lm_context
        >>> from jaxunlearn.methods.lm.base import lm_loss
        >>> from jaxunlearn.plan import StepInfo
        >>> ctx = toy_lm_context()
        >>> b = {"retain": ArraySource.gather(ctx.data, ctx.retain_idx[:4])}
        >>> hp = {"alpha": jnp.float32(0.5)}
        >>> a, _ = lm_retain_loss(ctx.apply_fn, ctx.params, ctx.model_state, b, hp, StepInfo.at())
        >>> ce, _ = lm_loss(ctx.apply_fn, ctx.params, ctx.model_state, b, {}, StepInfo.at())
        >>> bool(jnp.isclose(a, 0.5 * ce))
        True
    """
    ce, new_state = part_ce(apply_fn, params, model_state, batch, "retain")
    return hp["alpha"] * ce, new_state


def lm_forget_loss(apply_fn, params, model_state, batch, hp, info):
    """``−(1−α)·CE(F)`` over the forget batch's masked tokens.

    Example:
        >>> from jaxunlearn.engine import ArraySource
        >>> from jaxunlearn.methods.lm import toy_lm_context
        >>> from jaxunlearn.plan import StepInfo
        >>> ctx = toy_lm_context()
        >>> b = {"forget": ArraySource.gather(ctx.data, ctx.forget_idx)}
        >>> hp = {"alpha": jnp.float32(1.0)}
        >>> loss, _ = lm_forget_loss(ctx.apply_fn, ctx.params, ctx.model_state, b, hp, StepInfo.at())
        >>> float(loss) == 0.0
        True
    """
    ce, new_state = part_ce(apply_fn, params, model_state, batch, "forget")
    return -(1.0 - hp["alpha"]) * ce, new_state


@register_lm(
    "sharp_minmax",
    "SAM-min on R outside M, sharpness maximization on F inside M",
    {
        "fraction": 0.3,
        "largest": True,
        "alpha": 0.5,
        "mask_reading": "strict",
        "lr_scale": 1.0,
        "forget_lr_scale": 0.25,
        "epochs": 32,
    },  # fmt: skip
    checks={
        "largest": options.boolean(),
        "alpha": options.unit_interval(),
        "fraction": options.fraction(),
        "mask_reading": options.one_of(MASK_READINGS),
    },  # fmt: skip
)
def sharp_minmax(ctx, opts):
    """Sharp MinMax's recipe on token batches (module docstring); the optimizer's SAM flavour is used, SAM when
    the context's optimizer is plain (the method is sharpness-aware by definition).

    Example:
        >>> from jaxunlearn.methods.lm import get_lm, resolve_options, toy_lm_context
        >>> recipe = sharp_minmax(toy_lm_context(), resolve_options(get_lm("sharp_minmax"), {}))
        >>> [(p.name, p.sign, p.mask_key) for p in recipe.plan.phases], recipe.plan.optimizer.sam
        ([('retain', 'min', 'mask_retain'), ('forget', 'max', 'mask_forget')], 'sam')
    """
    g = token_gradient(ctx.apply_fn, ctx.params, ctx.model_state, ctx.data, ctx.forget_idx)
    mask = selection.top_fraction(jax.tree.map(jnp.abs, g), float(opts["fraction"]), largest=bool(opts["largest"]))
    cfg = scaled(ctx.optimizer, opts["lr_scale"])
    if cfg.sam == "none":
        cfg = dataclasses.replace(cfg, sam="sam")
    plan = Plan(
        phases=(
            Phase("retain", lm_retain_loss, uses=("retain",), sign="min", mask_key="mask_retain"),
            Phase(
                "forget",
                lm_forget_loss,
                uses=("forget",),
                sign="max",
                mask_key="mask_forget",
                optimizer=scaled(cfg, opts["forget_lr_scale"]),
            ),  # fmt: skip
        ),
        optimizer=cfg,
        epochs=opts["epochs"] or ctx.epochs,
        batch_size=min(ctx.batch_size, len(ctx.retain_idx)),
        epoch_over="forget",
        hp={"alpha": jnp.float32(opts["alpha"]), "mask_forget": mask, "mask_retain": selection.invert(mask)},
        mask_reading=opts["mask_reading"],
        name="sharp_minmax",
    )
    return Recipe(plan=plan, info={"mask_size": selection.mask_size(mask), "num_params": selection.count(mask)})
