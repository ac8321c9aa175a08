"""models.linen: a Linen module + variables in the functional convention, through the engine and the methods."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxunlearn import data, engine, methods, models


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Dense(32)(x)))
        x = nn.Dropout(0.2, deterministic=not train)(x)
        return nn.Dense(10)(x)


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", seed=0)


def _wrapped():
    net = LinenNet()
    variables = net.init(jax.random.key(0), jnp.ones((1, 8, 8, 1)))
    return net, variables, *models.from_linen(net, variables, num_classes=10)


def test_eval_and_train_calls_match_module_apply(digits):
    net, variables, apply_fn, params, state = _wrapped()
    x = jnp.asarray(digits.x_train[:32])
    np.testing.assert_allclose(
        np.asarray(apply_fn(params, state, x)[0]), np.asarray(net.apply(variables, x)), rtol=1e-5, atol=1e-5
    )
    out, new_state = apply_fn(params, state, x, train=True)
    key = jax.random.wrap_key_data(state["rngs"]["dropout"])
    _, use = jax.random.split(key)
    ref, upd = net.apply(variables, x, train=True, rngs={"dropout": use}, mutable=["batch_stats"])
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(new_state["batch_stats"]["BatchNorm_0"]["mean"]),
        np.asarray(upd["batch_stats"]["BatchNorm_0"]["mean"]),
    )
    assert not np.array_equal(np.asarray(new_state["rngs"]["dropout"]), np.asarray(state["rngs"]["dropout"]))
    back = models.to_linen_variables(params, new_state)
    assert sorted(back) == ["batch_stats", "params"]
    assert net.apply(back, x).shape == (32, 10)


def test_a_linen_model_trains_and_unlearns_through_the_engine(digits):
    _, _, apply_fn, params, state = _wrapped()
    n = 600
    res = engine.train(
        apply_fn, params, state, engine.DeviceData.from_numpy(digits.x_train[:n], digits.y_train[:n]),
        epochs=4, batch_size=64, progress=False,
    )  # fmt: skip
    acc0 = float(
        jnp.mean(jnp.argmax(apply_fn(res.params, res.model_state, jnp.asarray(digits.x_test))[0], -1) == digits.y_test)
    )
    assert acc0 > 0.8
    ctx = methods.Context(
        apply_fn, res.params, res.model_state, digits.x_train[:n], digits.y_train[:n],
        np.arange(60, n), np.arange(60), num_classes=10, epochs=2,
    )  # fmt: skip
    out = methods.unlearn("sharp_minmax", ctx, progress=False)
    assert out.diverged is None
    assert jax.tree.structure(out.model_state) == jax.tree.structure(res.model_state)


def test_linen_signature_and_variables_errors():
    class NeedsMask(nn.Module):
        @nn.compact
        def __call__(self, x, mask):
            return nn.Dense(2)(x * mask)

    with pytest.raises(TypeError, match=r"needs argument\(s\) \['mask'\] besides the input"):
        models.from_linen(NeedsMask(), {"params": {}})
    with pytest.raises(ValueError, match="a dict with a 'params' collection; got dict with keys \\['batch_stats'\\]"):
        models.from_linen(LinenNet(), {"batch_stats": {}})
    _, _, apply_fn, params, state = _wrapped()
    with pytest.raises(TypeError, match="has no features= argument"):
        apply_fn(params, state, jnp.ones((2, 8, 8, 1)), features=True)
