"""SSD, selective synaptic dampening (Foster et al. 2024): no training, one edit of the weights.

With Fisher diagonals ``I_F`` (forget set) and ``I_D`` (training data), every parameter with
``I_F > α·I_D`` is scaled by ``β = min(λ·I_D / I_F, 1)``; the others are unchanged. The paper uses
α = 10 for ResNets; on the small CNNs here α = 5 forgets a whole class (forget accuracy 0) while a
random forget set keeps test accuracy (digits), so 5 is the default. After SAM pretraining a random
forget set loses up to 5–15 points of test accuracy at α = 5 (``benchmarks/RESULTS-recipes.md``), which is
why ``jaxunlearn.tuning.tune`` (``--tune``) searches α ∈ {2, 5, 10, 20} for it.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxunlearn import curvature
from jaxunlearn.methods import options
from jaxunlearn.methods.base import Recipe, register
from jaxunlearn.methods.common import MeanCE


def _fisher(ctx, idx, chunk):
    x = jnp.take(ctx.x, jnp.asarray(idx), axis=0)
    y = jnp.take(ctx.y, jnp.asarray(idx), axis=0)
    loss = MeanCE(ctx.apply_fn, ctx.model_state)  # equal across calls: the compiled program is reused
    return curvature.fisher_diagonal(loss, ctx.params, {"x": x, "y": y}, chunk_size=chunk)


@register(
    "ssd",
    "dampen parameters far more important to F than to D (Fisher)",
    {"alpha": 5.0, "lam": 1.0, "max_examples": 2000, "chunk_size": 64},
    gradient_based=False,
    tune_options={"alpha": (2.0, 5.0, 10.0, 20.0)},
    checks={
        "alpha": options.positive(),
        "lam": options.positive(),
        "max_examples": options.count(1),
        "chunk_size": options.count(1),
    },
)
def ssd(ctx, opts):
    """SSD's recipe, a direct edit: Fisher diagonals ``I_D`` (at most ``opts["max_examples"]`` training
    examples) and ``I_F`` (forget set), then ``w ← w·min(λ·I_D/I_F, 1)`` wherever ``I_F > α·I_D``
    (``α, λ = opts["alpha"], opts["lam"]``); ``info["dampened"]`` counts the dampened parameters.

    Example:
        >>> from jaxunlearn.methods import get, resolve_options, toy_context
        >>> ctx = toy_context()
        >>> recipe = ssd(ctx, resolve_options(get("ssd"), {"alpha": 1.0}))
        >>> recipe.plan is None, recipe.info["dampened"] > 0
        (True, True)
        >>> ssd(ctx, resolve_options(get("ssd"), {"alpha": 1e9})).info  # no parameter that important to F
        {'dampened': 0}
    """
    rng = np.random.default_rng(ctx.seed)
    all_idx = np.concatenate([ctx.retain_idx, ctx.forget_idx])
    d_idx = rng.choice(all_idx, min(len(all_idx), int(opts["max_examples"])), replace=False)
    f_idx = ctx.forget_idx
    if len(f_idx) > int(opts["max_examples"]):
        f_idx = rng.choice(f_idx, int(opts["max_examples"]), replace=False)
    i_d = _fisher(ctx, np.sort(d_idx), int(opts["chunk_size"]))
    i_f = _fisher(ctx, np.sort(f_idx), int(opts["chunk_size"]))
    # Python floats: traced as weakly typed scalars, so bf16/f16 parameters keep their dtype
    params, changed = _dampen(ctx.params, i_d, i_f, float(opts["alpha"]), float(opts["lam"]))
    return Recipe(params=params, model_state=ctx.model_state, info={"dampened": sum(int(c) for c in changed)})


@jax.jit
def _dampen(params, i_d, i_f, alpha, lam):
    """``w ← w·min(λ·I_D/I_F, 1)`` where ``I_F > α·I_D``; also the number of dampened parameters per leaf.
    One program for the whole tree (eager per-leaf ops would compile once per leaf shape)."""

    def one(w, d, f):
        beta = jnp.minimum(lam * d / jnp.maximum(f, 1e-30), 1.0)
        return jnp.where(f > alpha * d, w * beta, w)

    changed = [jnp.sum(f > alpha * d) for d, f in zip(jax.tree.leaves(i_d), jax.tree.leaves(i_f))]
    return jax.tree.map(one, params, i_d, i_f), changed
