"""Sharp MinMax (Tang & Khanna, ICLR 2026): two optimizers over one model split by a mask M.

* retain step: SAM-min on ``α·CE(R)``, updates restricted to ``1 − M``;
* forget step: sharpness maximization (SAM with ``sign="max"``) on ``−(1−α)·CE(F)``, restricted to M.

``M`` = top fraction ``t`` of ``|Σ_{i∈F} ∇(−CE_i)|`` ranked globally (``largest=True``, the paper's text)
or the smallest fraction (``largest=False``, what the reference code's ascending sort selects);
``⌈t·N⌉`` entries (``rounding="ceil"``) or the reference code's ``int(t·N)`` (``"floor"``), of the summed
per-example gradients (``saliency="sum"``) or the reference code's sum of per-batch means
(``"batch_mean"``, batches of the unlearning batch size).
``mask_reading="strict"`` masks each whole update; ``"reference"`` masks only the perturbed gradient
``g'`` inside SAM, as the reference code does (then parameters outside M still get ``(1+λ)g`` on the
forget step). The unlearning optimizer's SAM flavour is used (SAM when plain was asked: the method is
sharpness-aware by definition). GSAM and randomized smoothing have no sharpness-maximization form: with
them the retain step uses the variant and the forget step SAM (same ρ, λ).

The two optimizers have their own learning rates: with Adam-type optimizers the loss weights
``α`` and ``1−α`` barely change the step size, so the forget optimizer's rate is ``forget_lr_scale``
times the retain one's (default 0.01); without it the forget step dominates and the model collapses.
"""

import dataclasses

import jax.numpy as jnp

from jaxunlearn import objectives, selection
from jaxunlearn.methods import options
from jaxunlearn.methods.base import Recipe, register, scaled
from jaxunlearn.methods.common import forget_saliency_mask
from jaxunlearn.plan import MASK_READINGS, MAX_KINDS, Phase, Plan

SALIENCIES = ("sum", "batch_mean")


def retain_loss(apply_fn, params, model_state, batch, hp, info):
    """``α·CE(R)`` with ``α = hp["alpha"]``: the retain step's loss.

    Example:
        >>> from jaxunlearn.engine import ArraySource
        >>> from jaxunlearn.methods import toy_context
        >>> from jaxunlearn.plan import StepInfo
        >>> ctx = toy_context()
        >>> batch = {"retain": ArraySource.gather({"x": ctx.x, "y": ctx.y}, ctx.retain_idx[:16])}
        >>> hp = {"alpha": jnp.float32(0.99)}
        >>> loss, _ = retain_loss(ctx.apply_fn, ctx.params, ctx.model_state, batch, hp, StepInfo.at())
        >>> logits, _ = ctx.apply_fn(ctx.params, ctx.model_state, batch["retain"]["x"])
        >>> bool(jnp.isclose(loss, 0.99 * objectives.cross_entropy(logits, batch["retain"]["y"])))
        True
    """
    logits, new_state = apply_fn(params, model_state, batch["retain"]["x"], train=True)
    return hp["alpha"] * objectives.cross_entropy(logits, batch["retain"]["y"]), new_state


def forget_loss(apply_fn, params, model_state, batch, hp, info):
    """``−(1−α)·CE(F)`` with ``α = hp["alpha"]``: the forget step's loss.

    Example:
        >>> from jaxunlearn.engine import ArraySource
        >>> from jaxunlearn.methods import toy_context
        >>> from jaxunlearn.plan import StepInfo
        >>> ctx = toy_context()
        >>> batch = {"forget": ArraySource.gather({"x": ctx.x, "y": ctx.y}, ctx.forget_idx)}
        >>> hp = {"alpha": jnp.float32(0.99)}
        >>> loss, _ = forget_loss(ctx.apply_fn, ctx.params, ctx.model_state, batch, hp, StepInfo.at())
        >>> logits, _ = ctx.apply_fn(ctx.params, ctx.model_state, batch["forget"]["x"])
        >>> ce = objectives.cross_entropy(logits, batch["forget"]["y"])
        >>> bool(jnp.isclose(loss, -(1 - jnp.float32(0.99)) * ce))
        True
    """
    logits, new_state = apply_fn(params, model_state, batch["forget"]["x"], train=True)
    return -(1.0 - hp["alpha"]) * objectives.cross_entropy(logits, batch["forget"]["y"]), new_state


@register(
    "sharp_minmax",
    "SAM-min on R outside M, sharpness maximization on F inside M",
    {
        "fraction": 0.3,
        "largest": True,
        "alpha": 0.99,
        "mask_reading": "strict",
        "saliency": "sum",
        "rounding": "ceil",
        "lr_scale": 1.0,
        "forget_lr_scale": 0.01,
        "epochs": None,
    },
    checks={
        "largest": options.boolean(),
        "alpha": options.unit_interval(),
        "mask_reading": options.one_of(MASK_READINGS),
        "saliency": options.one_of(SALIENCIES),
        "rounding": options.one_of(selection.ROUNDINGS),
    },
)
def sharp_minmax(ctx, opts):
    """Sharp MinMax's recipe: the saliency mask ``M`` (top or bottom ``opts["fraction"]``), a retain phase
    (:func:`retain_loss`, SAM-min, masked by ``1 − M``) and a forget phase (:func:`forget_loss`, sharpness
    maximization, masked by ``M``, at ``opts["forget_lr_scale"]`` times the retain phase's rate).

    Example:
        >>> from jaxunlearn.methods import get, resolve_options, toy_context
        >>> recipe = sharp_minmax(toy_context(), resolve_options(get("sharp_minmax"), {}))
        >>> [(p.name, p.sign, p.mask_key) for p in recipe.plan.phases]
        [('retain', 'min', 'mask_retain'), ('forget', 'max', 'mask_forget')]
        >>> recipe.plan.optimizer.sam, round(recipe.plan.phases[1].optimizer.lr, 8), recipe.info
        ('sam', 0.0001, {'mask_size': 21, 'num_params': 67})
    """
    mask = forget_saliency_mask(
        ctx,
        opts["fraction"],
        largest=bool(opts["largest"]),
        batch_mean=opts["saliency"] == "batch_mean",
        rounding=opts["rounding"],
    )
    cfg = scaled(ctx.optimizer, opts["lr_scale"])
    if cfg.sam == "none":
        cfg = dataclasses.replace(cfg, sam="sam")
    forget_cfg = cfg if cfg.sam in MAX_KINDS else dataclasses.replace(cfg, sam="sam")
    plan = Plan(
        phases=(
            Phase("retain", retain_loss, uses=("retain",), sign="min", mask_key="mask_retain"),
            Phase(
                "forget",
                forget_loss,
                uses=("forget",),
                sign="max",
                mask_key="mask_forget",
                optimizer=scaled(forget_cfg, opts["forget_lr_scale"]),
            ),
        ),
        optimizer=cfg,
        epochs=opts["epochs"] or ctx.epochs,
        batch_size=ctx.batch_size,
        hp={"alpha": jnp.float32(opts["alpha"]), "mask_forget": mask, "mask_retain": selection.invert(mask)},
        mask_reading=opts["mask_reading"],
        name="sharp_minmax",
    )
    return Recipe(plan=plan, info={"mask_size": selection.mask_size(mask), "num_params": selection.count(mask)})
