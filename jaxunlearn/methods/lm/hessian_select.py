"""Sharpness-aware parameter selection (Lee, Xiong, Malekmohammadi 2025) on a language model: score every
parameter by the Hessian diagonal of the forget tokens' mean CE (exact up to ``exact_limit`` parameters,
Hutchinson ``E_z[z ⊙ ∇²CE z]`` with ``num_probes`` probes above), keep the top ``fraction``, and run the
``base`` LM method with every phase's updates restricted to that mask. Controls: ``gradient``
(``|Σ∇CE|``), ``random``, ``all``. The curvature code is :mod:`jaxunlearn.curvature`'s, unchanged, on the
token loss :class:`~jaxunlearn.methods.lm.common.LMTokenCE`.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxunlearn import curvature, selection
from jaxunlearn.methods import options
from jaxunlearn.methods.lm.base import LM_METHODS, get_lm, register_lm
from jaxunlearn.methods.lm.common import LMTokenCE, token_gradient

SCORES = ("hessian", "gradient", "random", "all")


def lm_parameter_scores(ctx, kind: str, *, num_probes=16, exact_limit=20000, max_examples=128):
    """Scores at ``ctx.params`` from at most ``max_examples`` forget examples (seeded subset): ``hessian`` the
    diagonal of ``∇²CE`` (exact or Hutchinson), ``gradient`` ``|Σ∇CE|``; None for ``random`` / ``all``.

    Example:
        >>> from jaxunlearn.methods.lm import toy_lm_context
        >>> ctx = toy_lm_context()
        >>> h = lm_parameter_scores(ctx, "hessian", num_probes=2, exact_limit=0)
        >>> jax.tree.structure(h) == jax.tree.structure(ctx.params)
        True
    """
    idx = np.asarray(ctx.forget_idx)
    if idx.size > max_examples:
        idx = np.sort(np.random.default_rng(ctx.seed).choice(idx, max_examples, replace=False))
    if kind == "gradient":
        return jax.tree.map(jnp.abs, token_gradient(ctx.apply_fn, ctx.params, ctx.model_state, ctx.data, idx))
    if kind != "hessian":
        return None
    batch = {k: jnp.take(ctx.data[k], jnp.asarray(idx), axis=0) for k in ("x", "y", "mask")}
    batch["mask"] = batch["mask"].astype(jnp.float32)
    loss = LMTokenCE(ctx.apply_fn, ctx.model_state)
    if selection.count(ctx.params) <= exact_limit:
        return curvature.hessian_diagonal(loss, ctx.params, batch)
    return curvature.hutchinson_diagonal(loss, ctx.params, batch, key=jax.random.key(ctx.seed + 7),
                                         num_probes=int(num_probes))  # fmt: skip


def restrict(plan, mask):
    """``plan`` with every phase's updates restricted to ``mask`` (intersected with the phase's own mask).

    Example:
        >>> from jaxunlearn.methods.lm import get_lm, toy_lm_context
        >>> ctx = toy_lm_context()
        >>> plan = restrict(get_lm("graddiff").recipe(ctx).plan, selection.all_params(ctx.params))
        >>> plan.name, plan.phases[0].mask_key
        ('graddiff+select', 'select_mask_0')
    """
    hp, phases = dict(plan.hp), []
    for i, ph in enumerate(plan.phases):
        key = f"select_mask_{i}"
        hp[key] = mask if ph.mask_key is None else jax.tree.map(jnp.logical_and, mask, plan.hp[ph.mask_key])
        phases.append(dataclasses.replace(ph, mask_key=key))
    return dataclasses.replace(plan, phases=tuple(phases), hp=hp, name=f"{plan.name}+select")


def _base_rule(name):
    ok = sorted(n for n in LM_METHODS if n not in ("hessian_select", "retrain"))
    return None if str(name).partition("@")[0] in ok else "must be an LM gradient method: " + ", ".join(ok)


@register_lm(
    "hessian_select",
    "run a base LM method on the parameters with the largest Hessian diagonal",
    {
        "scores": "hessian",
        "fraction": 0.3,
        "base": "npo",
        "base_options": {"epochs": 30, "lr_scale": 2.0, "retain_weight": 30.0},
        "num_probes": 16,
        "exact_limit": 20000,
        "max_examples": 128,
    },  # fmt: skip
    checks={
        "scores": options.one_of(SCORES),
        "fraction": options.fraction(),
        "base": _base_rule,
        "base_options": options.mapping(),
        "num_probes": options.count(1),
        "exact_limit": options.count(0),
        "max_examples": options.count(1),
    },  # fmt: skip
)
def hessian_select(ctx, opts):
    """Selection's recipe: the mask of ``opts["scores"]`` (top ``opts["fraction"]``), then ``opts["base"]``'s
    plan restricted to it (:func:`restrict`).

    Example:
        >>> from jaxunlearn.methods.lm import get_lm, resolve_options, toy_lm_context
        >>> opts = resolve_options(get_lm("hessian_select"), {"num_probes": 2, "exact_limit": 0})
        >>> r = hessian_select(toy_lm_context(), opts)
        >>> r.plan.name, 0 < r.info["mask_size"] < r.info["num_params"]
        ('npo+select', True)
    """
    kind, frac = opts["scores"], float(opts["fraction"])
    if kind == "all":
        mask = selection.all_params(ctx.params)
    elif kind == "random":
        mask = selection.random_fraction(ctx.params, frac, jax.random.key(ctx.seed + 11))
    else:
        kw = {k: opts[k] for k in ("num_probes", "exact_limit", "max_examples")}
        mask = selection.top_fraction(lm_parameter_scores(ctx, kind, **kw), frac)
    base = get_lm(opts["base"])
    recipe = base.recipe(dataclasses.replace(ctx, options=dict(opts["base_options"] or {})))
    recipe.plan = restrict(recipe.plan, mask)
    recipe.info = {**recipe.info, "mask_size": selection.mask_size(mask), "num_params": selection.count(mask),
                   "scores": kind, "base": opts["base"]}  # fmt: skip
    return recipe
