"""Sharpness-aware parameter selection (Lee, Xiong, Malekmohammadi 2025) and its controls.

Scores per parameter, at the learned parameters, from a chosen data set (forget / retain / all):

* ``hessian``: the Hessian diagonal of the mean CE (exact when the model has at most ``exact_limit``
  parameters, Hutchinson with ``num_probes`` probes otherwise);
* controls: ``fisher`` (empirical Fisher diagonal), ``gradient`` (``|Σ ∇CE|``, SalUn-style saliency),
  ``random`` (same size, uniformly), ``last_layer`` (the head's leaves), ``all`` (no restriction).

The mask keeps the top ``fraction`` by global rank. ``update`` decides what is done with it:

* ``gradient``: run the ``base`` gradient method with every phase's updates restricted to the mask
  (intersected with the base method's own masks);
* ``first_order``: ``θ ← θ − τ·M ⊙ (∇ℓ(Z̃) − ∇ℓ(Z))`` for ``steps`` steps (Warnecke et al.), Z the
  affected (forget) examples and Z̃ their corrected versions (``ctx.corrected``);
* ``second_order``: the same with a diagonal Newton step ``Δ / (|diag H| + damping)``.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxunlearn import _validate, curvature, selection
from jaxunlearn.methods import base as base_mod
from jaxunlearn.methods import options
from jaxunlearn.methods.base import METHODS, Recipe, register
from jaxunlearn.methods.common import MeanCE, summed_gradient

SCORES = ("hessian", "hutchinson", "exact", "fisher", "gradient", "random", "last_layer", "all")
UPDATES = ("gradient", "first_order", "second_order")


def _subset(ctx, which: str, max_examples: int, seed: int) -> np.ndarray:
    pools = {
        "forget": ctx.forget_idx,
        "retain": ctx.retain_idx,
        "all": np.concatenate([ctx.retain_idx, ctx.forget_idx]),
    }
    idx = pools[_validate.choice("data", which, pools)]
    if len(idx) > max_examples:
        idx = np.random.default_rng(seed).choice(idx, max_examples, replace=False)
    return np.sort(idx)


def _mean_ce(ctx):
    return MeanCE(ctx.apply_fn, ctx.model_state)


def parameter_scores(ctx, kind: str, data: str = "forget", *, num_probes=16, exact_limit=20000, max_examples=256):
    """Score pytree for the selection ``kind`` (see the module docstring); None for ``all``, ``random`` and
    ``last_layer``, which need no scores.

    The scores are computed at ``ctx.params`` on at most ``max_examples`` examples of ``data`` (a seeded subset):
    ``hessian`` ``diag ∇²CE`` (exact for at most ``exact_limit`` parameters, else Hutchinson's
    ``E_z[z ⊙ ∇²CE z]`` with ``num_probes`` probes; ``exact`` / ``hutchinson`` force one), ``fisher``
    ``Σ_i (∇CE_i)² / n`` and ``gradient`` ``|Σ_i ∇CE_i|``.

    Example:
        >>> from jaxunlearn.methods import toy_context
        >>> ctx = toy_context()
        >>> h = parameter_scores(ctx, "hessian")  # the toy has 67 parameters: the exact diagonal
        >>> jax.tree.structure(h) == jax.tree.structure(ctx.params)
        True
        >>> g = parameter_scores(ctx, "gradient", "forget")
        >>> all(bool((np.asarray(leaf) >= 0).all()) for leaf in jax.tree.leaves(g))
        True
        >>> parameter_scores(ctx, "all") is None
        True
    """
    _validate.choice("scores", kind, SCORES)
    idx = _subset(ctx, data, max_examples, ctx.seed)
    batch = {"x": jnp.take(ctx.x, jnp.asarray(idx), axis=0), "y": jnp.take(ctx.y, jnp.asarray(idx), axis=0)}
    loss = _mean_ce(ctx)
    n = selection.count(ctx.params)
    if kind == "exact" or (kind == "hessian" and n <= exact_limit):
        return curvature.hessian_diagonal(loss, ctx.params, batch)
    if kind in ("hessian", "hutchinson"):
        return curvature.hutchinson_diagonal(loss, ctx.params, batch, jax.random.key(ctx.seed + 7), int(num_probes))
    if kind == "fisher":
        return curvature.fisher_diagonal(loss, ctx.params, batch, chunk_size=64)
    if kind == "gradient":
        g = summed_gradient(ctx.apply_fn, ctx.params, ctx.model_state, ctx.x, ctx.y, idx)
        return jax.tree.map(jnp.abs, g)
    return None


def selection_mask(ctx, kind: str, fraction: float, data: str = "forget", **kw):
    """The boolean mask for ``kind``: the top ``fraction`` of :func:`parameter_scores` by global rank; ``all``
    every parameter, ``random`` a seeded random ``fraction`` and ``last_layer`` the last layer's leaves (these
    two ignore the scores). ``kw`` goes to :func:`parameter_scores`.

    Example:
        >>> from jaxunlearn.methods import toy_context
        >>> ctx = toy_context()
        >>> [selection.mask_size(selection_mask(ctx, kind, 0.1)) for kind in ("hessian", "random", "all")]
        [7, 7, 67]
        >>> selection.mask_size(selection_mask(ctx, "last_layer", 0.1))  # the head: 8 × 3 weights and 3 biases
        27
    """
    if kind == "all":
        return selection.all_params(ctx.params)
    if kind == "random":
        return selection.random_fraction(ctx.params, fraction, jax.random.key(ctx.seed + 11))
    if kind == "last_layer":
        paths = _leaf_paths(ctx.params)
        last = paths[-1].rsplit("/", 1)[0]
        return selection.by_path(ctx.params, lambda p: p.rsplit("/", 1)[0] == last)
    scores = parameter_scores(ctx, kind, data, **kw)
    return selection.top_fraction(scores, fraction)


def _leaf_paths(params):
    out = []

    def visit(path, x):
        out.append("/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path))
        return x

    jax.tree_util.tree_map_with_path(visit, params)
    return out


def _restrict(plan, mask):
    hp = dict(plan.hp)
    phases = []
    for i, ph in enumerate(plan.phases):
        key = f"select_mask_{i}"
        hp[key] = mask if ph.mask_key is None else jax.tree.map(jnp.logical_and, mask, plan.hp[ph.mask_key])
        phases.append(dataclasses.replace(ph, mask_key=key))
    return dataclasses.replace(plan, phases=tuple(phases), hp=hp, name=f"{plan.name}+select")


def _corrected_update(ctx, mask, opts, diag):
    if ctx.corrected is None:
        raise ValueError(
            "update='first_order'/'second_order' needs the corrected examples Z̃ (ctx.corrected = (x_tilde, "
            "y_tilde)); these updates are for feature/label unlearning. Use update='gradient' for deletion."
        )
    x_t, y_t = (jnp.asarray(a) for a in ctx.corrected)
    n_f = len(ctx.forget_idx)
    if x_t.shape[0] != n_f:
        raise ValueError(
            f"ctx.corrected must hold one corrected example per forget example ({n_f}), got {x_t.shape[0]}."
        )
    params = ctx.params
    tau = float(opts["tau"])
    for _ in range(int(opts["steps"])):
        g_bad = summed_gradient(ctx.apply_fn, params, ctx.model_state, ctx.x, ctx.y, ctx.forget_idx)
        g_good = summed_gradient(ctx.apply_fn, params, ctx.model_state, x_t, y_t, np.arange(n_f))
        delta = jax.tree.map(lambda a, b: (a - b) / n_f, g_good, g_bad)
        if diag is not None:
            delta = jax.tree.map(lambda d, h: d / (jnp.abs(h) + opts["damping"]), delta, diag)
        params = jax.tree.map(lambda w, d, m: jnp.where(m, w - tau * d, w), params, delta, mask)
    return params


def _gradient_method(name) -> str | None:
    """Rule of the ``base`` option: a registered gradient method other than hessian_select."""
    ok = [n for n, m in METHODS.items() if m.gradient_based and n not in ("hessian_select", "retrain")]
    return None if name in ok else "must be a registered gradient method: " + ", ".join(sorted(ok))


@register(
    "hessian_select",
    "update only the parameters with the largest Hessian diagonal",
    {
        "scores": "hessian",
        "data": "forget",
        "fraction": 0.1,
        "base": "neggrad",
        "update": "gradient",
        "num_probes": 16,
        "exact_limit": 20000,
        "max_examples": 256,
        "tau": 1.0,
        "steps": 1,
        "damping": 1e-3,
        "base_options": None,
    },
    checks={
        "scores": options.one_of(SCORES),
        "data": options.one_of(("forget", "retain", "all")),
        "base": _gradient_method,
        "update": options.one_of(UPDATES),
        "num_probes": options.count(1),
        "exact_limit": options.count(0),
        "max_examples": options.count(1),
        "tau": options.positive(),
        "steps": options.count(1),
        "damping": options.nonnegative(),
        "base_options": options.mapping(),
    },
)
def hessian_select(ctx, opts):
    """Sharpness-aware selection's recipe: the mask ``M`` of ``opts["scores"]`` (top ``opts["fraction"]``), then
    the ``opts["base"]`` method's plan with its updates restricted to ``M`` (``update="gradient"``), or the
    direct edit ``θ ← θ − τ·M ⊙ Δ`` of the corrected examples (``first_order``: ``Δ = (∇ℓ(Z̃) − ∇ℓ(Z)) / |Z|``;
    ``second_order``: ``Δ / (|diag H| + damping)``), see the module docstring.

    Example:
        >>> from jaxunlearn.methods import get, resolve_options, toy_context
        >>> ctx = toy_context()
        >>> recipe = hessian_select(ctx, resolve_options(get("hessian_select"), {}))
        >>> recipe.plan.name, recipe.info["mask_size"], recipe.info["num_params"]
        ('neggrad+select', 7, 67)
        >>> x_f, y_f = np.asarray(ctx.x)[ctx.forget_idx], np.asarray(ctx.y)[ctx.forget_idx]
        >>> opts = resolve_options(get("hessian_select"), {"update": "first_order", "scores": "gradient"})
        >>> edit = hessian_select(toy_context(corrected=(x_f, (y_f + 1) % 3)), opts)  # label unlearning
        >>> before, after = jax.tree.leaves(ctx.params), jax.tree.leaves(edit.params)
        >>> moved = sum(int((np.asarray(a) != np.asarray(b)).sum()) for a, b in zip(before, after))
        >>> edit.plan is None, 0 < moved <= edit.info["mask_size"]
        (True, True)
    """
    _validate.choice("update", opts["update"], UPDATES)
    probe_kw = {k: opts[k] for k in ("num_probes", "exact_limit", "max_examples")}
    diag = None
    if opts["update"] == "second_order":  # the Newton step's diagonal; reused as the scores when they agree
        diag = parameter_scores(ctx, "hessian", opts["data"], **probe_kw)
    if opts["scores"] == "hessian" and diag is not None:
        mask = selection.top_fraction(diag, float(opts["fraction"]))
    else:
        kw = {} if opts["scores"] in ("random", "last_layer", "all") else probe_kw
        mask = selection_mask(ctx, opts["scores"], float(opts["fraction"]), opts["data"], **kw)
    info = {"mask_size": selection.mask_size(mask), "num_params": selection.count(mask), "scores": opts["scores"]}
    if opts["update"] == "gradient":
        base = base_mod.get(opts["base"])
        if base.base in ("hessian_select", "ssd", "retrain"):  # variants NAME@TAG count as NAME
            raise ValueError(
                f"base must be a gradient unlearning method from the original model, got {opts['base']!r}."
            )
        sub = dataclasses.replace(ctx, options=dict(opts["base_options"] or {}))
        recipe = base.recipe(sub)
        recipe.plan = _restrict(recipe.plan, mask)
        recipe.info = {**recipe.info, **info, "base": opts["base"]}
        return recipe
    params = _corrected_update(ctx, mask, opts, diag)
    return Recipe(params=params, model_state=ctx.model_state, info=info)
