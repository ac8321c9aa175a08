import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import mlp_loss

from jaxunlearn import selection, sharpness, transforms


def test_chain_sam_sgd_equals_manual_sam_step(mlp):
    params, batch = mlp
    lr, rho = 0.1, 0.05
    opt = optax.chain(transforms.sam(rho), optax.sgd(lr))
    state = opt.init(params)
    g = jax.grad(mlp_loss)(params, batch)
    upd, state = opt.update(g, state, params, grad_fn=lambda p: jax.grad(mlp_loss)(p, batch))
    got = optax.apply_updates(params, upd)
    _, d = sharpness.value_and_sam_grad(mlp_loss, rho)(params, batch)
    expected = jax.tree.map(lambda w, x: w - lr * x, params, d)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), got, expected)


@pytest.mark.parametrize("sign,lamb,adaptive", [("max", 1.0, False), ("max", 0.5, True), ("min", 2.0, True)])
def test_transform_equals_value_and_sam_grad(mlp, sign, lamb, adaptive):
    params, batch = mlp
    t = transforms.sam(0.2, adaptive=adaptive, eta=0.01, lamb=lamb, sign=sign)
    g = jax.grad(mlp_loss)(params, batch)
    got, _ = t.update(g, t.init(params), params, grad_fn=lambda p: jax.grad(mlp_loss)(p, batch))
    _, expected = sharpness.value_and_sam_grad(mlp_loss, 0.2, adaptive=adaptive, eta=0.01, lamb=lamb, sign=sign)(
        params, batch
    )
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), got, expected)


def test_training_loop_under_jit_with_adamw_decreases_loss(mlp):
    params, batch = mlp
    opt = optax.chain(transforms.sam(0.05), optax.adamw(1e-2))
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        loss, g = jax.value_and_grad(mlp_loss)(params, batch)
        upd, state = opt.update(g, state, params, grad_fn=lambda p: jax.grad(mlp_loss)(p, batch))
        return optax.apply_updates(params, upd), state, loss

    first = None
    for _ in range(50):
        params, state, loss = step(params, state)
        first = loss if first is None else first
    assert float(mlp_loss(params, batch)) < 0.8 * float(first)


def test_masked_adamw_keeps_unselected_parameters_bitwise(mlp):
    params, batch = mlp
    scores = jax.tree.map(jnp.abs, jax.grad(mlp_loss)(params, batch))
    mask = selection.top_fraction(scores, 0.3)
    opt = optax.chain(transforms.sam(0.1), transforms.masked(optax.adamw(1e-2, weight_decay=0.1), mask))
    state = opt.init(params)
    p = params
    for _ in range(3):
        g = jax.grad(mlp_loss)(p, batch)
        upd, state = opt.update(g, state, p, grad_fn=lambda q: jax.grad(mlp_loss)(q, batch))
        p = optax.apply_updates(p, upd)
    for new, old, m in zip(jax.tree.leaves(p), jax.tree.leaves(params), jax.tree.leaves(mask)):
        new, old, m = np.asarray(new), np.asarray(old), np.asarray(m)
        assert np.array_equal(new[~m], old[~m])
        assert np.all(new[m] != old[m])


def test_masked_without_output_mask_lets_weight_decay_act():
    params = {"w": jnp.ones(2)}
    mask = {"w": jnp.array([True, False])}
    opt = transforms.masked(optax.adamw(0.1, weight_decay=0.5), mask, mask_output=False)
    upd, _ = opt.update({"w": jnp.ones(2)}, opt.init(params), params)
    assert float(upd["w"][1]) == pytest.approx(-0.1 * 0.5)  # decoupled decay only


def test_perturbed_mask_reference_reading(mlp):
    params, batch = mlp
    mask = selection.top_fraction(jax.tree.map(jnp.abs, params), 0.5)
    t = transforms.sam(0.1, sign="max", perturbed_mask=mask)
    g = jax.grad(mlp_loss)(params, batch)
    got, _ = t.update(g, t.init(params), params, grad_fn=lambda p: jax.grad(mlp_loss)(p, batch))
    e = sharpness.perturbation(g, params, 0.1)
    gp = jax.grad(mlp_loss)(jax.tree.map(jnp.add, params, e), batch)
    expected = jax.tree.map(lambda a, b, m: 2 * a - jnp.where(m, b, 0.0), g, gp, mask)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), got, expected)
    # outside the mask the reference reading is plain (1+λ)·g: gradient ascent direction on the loss
    for a, b, m in zip(jax.tree.leaves(got), jax.tree.leaves(g), jax.tree.leaves(mask)):
        np.testing.assert_allclose(np.asarray(a)[~np.asarray(m)], 2 * np.asarray(b)[~np.asarray(m)], rtol=1e-6)


def test_missing_grad_fn_or_params_is_a_clear_error(mlp):
    params, batch = mlp
    t = transforms.sam(0.1)
    g = jax.grad(mlp_loss)(params, batch)
    with pytest.raises(ValueError, match="grad_fn"):
        t.update(g, t.init(params), params)
    with pytest.raises(ValueError, match="params"):
        t.update(g, t.init(params), None, grad_fn=lambda p: p)


@pytest.mark.parametrize("kwargs,name", [({"rho": 0}, "rho"), ({"rho": 0.1, "sign": "up"}, "sign")])
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        transforms.sam(**kwargs)
