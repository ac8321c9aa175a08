"""``methods.toy_context``: the tiny untrained context of the examples."""

import jax
import numpy as np
import pytest

from jaxunlearn import methods


def test_toy_context_is_a_small_valid_context():
    ctx = methods.toy_context()
    assert isinstance(ctx, methods.Context)
    assert ctx.x.shape == (60, 4) and ctx.y.shape == (60,)
    np.testing.assert_array_equal(ctx.retain_idx, np.arange(48))
    np.testing.assert_array_equal(ctx.forget_idx, np.arange(48, 60))
    assert 0 <= int(ctx.y.min()) and int(ctx.y.max()) < ctx.num_classes == 3
    assert (ctx.epochs, ctx.batch_size, ctx.pretrain_epochs, ctx.seed) == (1, 16, 1, 0)
    assert sum(leaf.size for leaf in jax.tree.leaves(ctx.params)) == 4 * 8 + 8 + 8 * 3 + 3


def test_toy_context_follows_its_arguments_and_seed():
    a, b = methods.toy_context(seed=1), methods.toy_context(seed=1)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    c = methods.toy_context(seed=2)
    assert not np.array_equal(a.x, c.x)
    ctx = methods.toy_context(num_classes=4, n=25, epochs=3, options={"alpha": 0.5})
    assert ctx.num_classes == 4 and ctx.x.shape == (25, 4) and len(ctx.forget_idx) == 5
    assert ctx.epochs == 3 and ctx.options == {"alpha": 0.5}
    # init_fn gives fresh parameters of the same structure (Retrain starts from them)
    params, state = ctx.init_fn(7)
    assert jax.tree.structure(params) == jax.tree.structure(ctx.params)
    assert not np.array_equal(params["head"]["kernel"], ctx.params["head"]["kernel"])


@pytest.mark.parametrize("name", ["ft", "retrain"])
def test_methods_run_on_the_toy_context(name):
    ctx = methods.toy_context()
    res = methods.unlearn(name, ctx, progress=False)
    assert res.diverged is None and len(res.history) == 1
    moved = jax.tree.map(lambda a, b: bool((a != b).any()), res.params, ctx.params)
    assert any(jax.tree.leaves(moved))
