"""Run one registered method on a :class:`~jaxunlearn.methods.base.Context`: build its recipe, run its plan
with the engine (or take its direct edit), and time it.

Example:
    >>> from jaxunlearn import methods
    >>> callable(methods.unlearn)
    True
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxunlearn import engine
from jaxunlearn.engine.hooks import Checkpointing, Timer, all_finite
from jaxunlearn.methods.base import Context, get

__all__ = ["unlearn"]

_finite = jax.jit(all_finite)


def unlearn(
    method: str,
    ctx: Context,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    checkpoint_every: int | None = 1,
    checkpoint_seconds: float | None = None,
    progress: bool = True,
    mesh: jax.sharding.Mesh | None = None,
    sam_mode: str = "global",
    param_sharding: str = "replicated",
) -> engine.RunResult:
    """Run the registered unlearning ``method`` (or a variant ``name@tag``) on ``ctx``.

    The method's recipe is built (masks, teachers, scores: counted in ``seconds``) and its plan run by
    :func:`jaxunlearn.engine.run` over ``D = (ctx.x, ctx.y) ∪ Z̃``, where ``Z̃ = recipe.corrected`` (feature
    or label unlearning: the corrected examples join the retain set, so gradient methods learn them while
    unlearning the affected examples). Methods that edit the weights directly return at once; non-finite
    edited parameters are reported in ``diverged`` with ``epoch`` 0 and the input parameters returned, as
    a diverged run returns its last finite ones. ``checkpoint_*`` / ``mesh`` / ``sam_mode`` /
    ``param_sharding``: as in :func:`jaxunlearn.engine.run`.

    Example:
        >>> from jaxunlearn.methods import toy_context
        >>> res = unlearn("ft", toy_context(), progress=False)
        >>> res.diverged is None, res.seconds > 0, len(res.history)
        (True, True, 1)
        >>> edit = unlearn("ssd", toy_context(options={"alpha": 1.0}), progress=False)  # a direct edit: no epochs
        >>> edit.history, edit.info["dampened"] > 0
        ([], True)
    """
    m = get(method)
    Checkpointing.validate(checkpoint_every, checkpoint_seconds)  # fail before any work
    timer = Timer()
    recipe = m.recipe(ctx)
    if recipe.plan is None:
        params = jax.block_until_ready(recipe.params)
        state = recipe.model_state if recipe.model_state is not None else ctx.model_state
        diverged = None
        if not bool(_finite((params, state))):  # as a run does: keep the last finite parameters
            params, state = ctx.params, ctx.model_state
            diverged = {"epoch": 0, "reason": f"{method}'s direct edit gave non-finite parameters"}
        return engine.RunResult(params, state, [], timer.seconds, diverged=diverged, info=dict(recipe.info),
                                compile_seconds=timer.compile_seconds)  # fmt: skip
    params, state = recipe.start if recipe.start is not None else (ctx.params, ctx.model_state)
    x, y = ctx.x, ctx.y
    retain_idx = np.asarray(ctx.retain_idx if recipe.retain_idx is None else recipe.retain_idx)
    forget_idx = np.asarray(ctx.forget_idx if recipe.forget_idx is None else recipe.forget_idx)
    if recipe.corrected is not None:
        x_t, y_t = recipe.corrected
        n = int(np.shape(x)[0])
        x = jnp.concatenate([jnp.asarray(x), jnp.asarray(x_t, jnp.float32)])
        y = jnp.concatenate([jnp.asarray(y), jnp.asarray(y_t, jnp.int32)])
        retain_idx = np.concatenate([retain_idx, n + np.arange(len(y_t))])
    res = engine.run(
        recipe.plan,
        ctx.apply_fn,
        params,
        state,
        engine.DeviceData(jnp.asarray(x), jnp.asarray(y)),
        retain_idx=retain_idx,
        forget_idx=forget_idx,
        seed=ctx.seed,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        checkpoint_every=checkpoint_every,
        checkpoint_seconds=checkpoint_seconds,
        progress=progress,
        desc=method,
        mesh=mesh,
        sam_mode=sam_mode,
        param_sharding=param_sharding,
    )
    res.seconds = timer.seconds
    res.compile_seconds = timer.compile_seconds
    res.info = dict(recipe.info)
    return res
