"""Random label (RL): give every forget example a fixed random WRONG label and train on ``D_f ∪ D_r``.

Training on the union ``D_f ∪ D_r`` is reproduced on paired batches by weighting the two batch means
with the set sizes: ``(1−w)·CE(R) + w·CE(F, ỹ)`` with ``w = |F| / (|F| + |R|)``, which is the expected
loss of a batch drawn from the union.

Default recipe: ``lr_scale`` 0.03 (AdamW 3e-4 with the default unlearning rate 0.01) for the job's epochs.
Source: SalUn's RL (``--unlearn RL --unlearn_epochs 10 --unlearn_lr 0.013``, SGD), set on our data
(``benchmarks/RESULTS-recipes.md``): at 0.1 (AdamW 1e-3) a random 10 % of Fashion-MNIST is pushed far past
Retrain's forget accuracy (34 % against 84 %: the random labels are learnt); 0.03 lands at Retrain's there
(85 %) and forgets a class (FA 0, test accuracy within 1.4 points of Retrain's) on digits and Fashion-MNIST.
"""

import jax
import jax.numpy as jnp

from jaxunlearn import objectives
from jaxunlearn.methods.base import Recipe, method_plan, register
from jaxunlearn.plan import Phase


def rl_loss(apply_fn, params, model_state, batch, hp, info):
    """``(1−w)·CE(x_r, y_r) + w·CE(x_f, ỹ_f)``, ``ỹ`` the fixed random labels, ``w = hp["forget_weight"]``.

    ``ỹ_f`` is read from ``hp["random_labels"]`` (:func:`random_label_table`) at the forget batch's indices.

    Example:
        >>> from jaxunlearn.engine import ArraySource
        >>> from jaxunlearn.methods import toy_context
        >>> from jaxunlearn.plan import StepInfo
        >>> ctx = toy_context()
        >>> data = {"x": ctx.x, "y": ctx.y}
        >>> batch = {"retain": ArraySource.gather(data, ctx.retain_idx[:16]),
        ...          "forget": ArraySource.gather(data, ctx.forget_idx[:8])}
        >>> hp = {"random_labels": random_label_table(ctx), "forget_weight": union_weight(ctx)}
        >>> loss, _ = rl_loss(ctx.apply_fn, ctx.params, ctx.model_state, batch, hp, StepInfo.at())
        >>> def ce(part, labels):
        ...     logits, _ = ctx.apply_fn(ctx.params, ctx.model_state, batch[part]["x"])
        ...     return objectives.cross_entropy(logits, labels)
        >>> wrong = hp["random_labels"][ctx.forget_idx[:8]]
        >>> bool(jnp.isclose(loss, 0.8 * ce("retain", batch["retain"]["y"]) + 0.2 * ce("forget", wrong), atol=1e-6))
        True
    """
    n_r = batch["retain"]["x"].shape[0]
    x = jnp.concatenate([batch["retain"]["x"], batch["forget"]["x"]])
    logits, new_state = apply_fn(params, model_state, x, train=True)
    ce_r = objectives.cross_entropy(logits[:n_r], batch["retain"]["y"])
    ce_f = objectives.cross_entropy(logits[n_r:], jnp.take(hp["random_labels"], batch["forget"]["index"]))
    w = hp["forget_weight"]
    return (1.0 - w) * ce_r + w * ce_f, new_state


def union_weight(ctx) -> jax.Array:
    """``|F| / (|F| + |R|)``: the forget set's share of the union.

    Example:
        >>> from jaxunlearn.methods import toy_context
        >>> round(float(union_weight(toy_context())), 6)  # 12 forget examples, 48 retained
        0.2
    """
    n_f, n_r = len(ctx.forget_idx), len(ctx.retain_idx)
    return jnp.float32(n_f / (n_f + n_r))


def random_label_table(ctx, seed_offset: int = 17):
    """Array over all training indices holding a random wrong label at the forget indices.

    ``table[i] = y[i]`` for ``i ∉ F``; ``table[i] ≠ y[i]``, uniform over the other classes, for ``i ∈ F``
    (drawn from ``ctx.seed + seed_offset``, so fixed for the whole run).

    Example:
        >>> from jaxunlearn.methods import toy_context
        >>> ctx = toy_context()
        >>> table = random_label_table(ctx)
        >>> table.shape, bool((table[ctx.forget_idx] != ctx.y[ctx.forget_idx]).all())
        ((60,), True)
        >>> bool((table[ctx.retain_idx] == ctx.y[ctx.retain_idx]).all())
        True
    """
    y = jnp.asarray(ctx.y)
    idx = jnp.asarray(ctx.forget_idx)
    wrong = objectives.random_wrong_labels(jax.random.key(ctx.seed + seed_offset), y[idx], ctx.num_classes)
    return y.at[idx].set(wrong)


@register("rl", "random wrong labels on F, train on F and R", {"lr_scale": 0.03, "epochs": None})
def rl(ctx, opts):
    """RL's recipe: one phase minimizing :func:`rl_loss` on paired retain/forget batches, with the labels of
    :func:`random_label_table` and the weight :func:`union_weight` in ``hp``.

    Example:
        >>> from jaxunlearn.methods import toy_context
        >>> plan = rl(toy_context(), {"lr_scale": 0.1, "epochs": None}).plan
        >>> plan.phases[0].loss is rl_loss, sorted(plan.hp), round(plan.optimizer.lr, 6)
        (True, ['forget_weight', 'random_labels'], 0.001)
    """
    plan = method_plan(
        ctx,
        opts,
        "rl",
        Phase("rl", rl_loss, uses=("retain", "forget")),
        hp={"random_labels": random_label_table(ctx), "forget_weight": union_weight(ctx)},
    )
    return Recipe(plan=plan)
