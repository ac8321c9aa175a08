import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxunlearn import selection


def _scores():
    k1, k2 = jax.random.split(jax.random.key(0))
    return {"a": jax.random.normal(k1, (7, 3)), "b": {"c": jax.random.normal(k2, (11,))}}


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("largest", [True, False])
def test_top_fraction_selects_exactly_k_by_global_rank(fraction, largest):
    scores = _scores()
    mask = selection.top_fraction(scores, fraction, largest=largest)
    flat_s = np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(scores)])
    flat_m = np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(mask)])
    k = math.ceil(fraction * flat_s.size)
    assert flat_m.sum() == k == selection.mask_size(mask)
    if k < flat_s.size:
        if largest:
            assert flat_s[flat_m].min() > flat_s[~flat_m].max()
        else:
            assert flat_s[flat_m].max() < flat_s[~flat_m].min()
    assert jax.tree.structure(mask) == jax.tree.structure(scores)
    assert all(m.dtype == jnp.bool_ for m in jax.tree.leaves(mask))


def test_ties_broken_deterministically_by_position():
    scores = {"a": jnp.ones(4), "b": jnp.ones(4)}
    mask = selection.top_fraction(scores, 0.25)
    assert mask["a"].tolist() == [True, True, False, False]
    assert not mask["b"].any()
    again = selection.top_fraction(scores, 0.25)
    assert jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.all(x == y)), mask, again))


def test_random_fraction_and_helpers():
    params = {"w": jnp.zeros((10, 10)), "head": {"k": jnp.zeros(5)}}
    m = selection.random_fraction(params, 0.2, jax.random.key(1))
    assert selection.mask_size(m) == 21
    m2 = selection.random_fraction(params, 0.2, jax.random.key(2))
    assert not all(bool(jnp.all(a == b)) for a, b in zip(jax.tree.leaves(m), jax.tree.leaves(m2)))
    inv = selection.invert(m)
    assert selection.mask_size(inv) == selection.count(params) - 21
    last = selection.by_path(params, lambda p: p.startswith("head"))
    assert selection.mask_size(last) == 5 and bool(last["head"]["k"].all())
    masked = selection.apply_mask(jax.tree.map(jnp.ones_like, params), m)
    assert float(sum(jnp.sum(x) for x in jax.tree.leaves(masked))) == 21


def test_mask_works_with_optax_masked_leafwise_and_elementwise():
    params = {"w": jnp.ones(4), "b": jnp.ones(2)}
    mask = selection.top_fraction({"w": jnp.arange(4.0), "b": jnp.zeros(2)}, 0.5)
    grads = jax.tree.map(jnp.ones_like, params)
    # element-wise: zero gradients outside the mask
    out = selection.apply_mask(grads, mask)
    assert out["w"].tolist() == [0.0, 1.0, 1.0, 1.0]  # 3 of 6 entries: the 3 largest scores
    assert out["b"].tolist() == [0.0, 0.0]
    # leaf-wise with optax.masked: a leaf is updated when any of its entries is selected
    leaf_mask = jax.tree.map(lambda m: bool(m.any()), mask)
    opt = optax.masked(optax.sgd(1.0), leaf_mask)
    upd, _ = opt.update(grads, opt.init(params), params)
    assert upd["w"].tolist() == [-1.0] * 4


def test_under_jit_with_static_fraction():
    scores = _scores()
    f = jax.jit(lambda s: selection.top_fraction(s, 0.3))
    a, b = f(scores), selection.top_fraction(scores, 0.3)
    assert all(bool(jnp.all(x == y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan")])
def test_fraction_outside_unit_interval_raises(fraction):
    with pytest.raises(ValueError, match="fraction"):
        selection.top_fraction(_scores(), fraction)


def test_nan_scores_raise():
    with pytest.raises(ValueError, match="NaN"):
        selection.top_fraction({"a": jnp.array([1.0, jnp.nan])}, 0.5)


def test_apply_mask_mismatch_raises():
    with pytest.raises(ValueError, match="mask"):
        selection.apply_mask({"a": jnp.ones(2)}, {"b": jnp.ones(2, bool)})


def test_top_fraction_compiles_once_per_score_structure():
    """The fraction is a run-time value of one compiled program: SalUn, Sharp MinMax and Hessian selection
    with other fractions on the same model reuse it."""
    from jaxunlearn import engine

    scores = {"a": jnp.arange(30.0).reshape(5, 6), "b": jnp.linspace(-1.0, 1.0, 7), "c": jnp.ones((2, 2, 3))}
    selection.top_fraction(scores, 0.5)
    before = engine.COMPILE_COUNTER.compiles
    for frac in (0.1, 0.3, 0.77, 1.0):
        mask = selection.top_fraction(scores, frac, largest=True)
        assert selection.mask_size(mask) == math.ceil(frac * 49 - 1e-9)
    assert engine.COMPILE_COUNTER.compiles == before
