"""models.nnx_loop: SAM and curvature inside a user's own nnx.Optimizer loop (BatchNorm, Dropout)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxunlearn import curvature, models, sharpness, transforms


class Net(nnx.Module):
    def __init__(self, rngs, dropout=0.0):
        self.lin = nnx.Linear(4, 6, rngs=rngs)
        self.bn = nnx.BatchNorm(6, rngs=rngs)
        self.drop = nnx.Dropout(dropout, rngs=rngs)
        self.head = nnx.Linear(6, 3, rngs=rngs)

    def __call__(self, x):
        return self.head(self.drop(nnx.relu(self.bn(self.lin(x)))))


def _ce(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def _data():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(16, 4)), jnp.float32)
    return x, jnp.asarray(rng.integers(0, 3, 16), jnp.int32)


def _leaves(t):
    def arr(a):
        return np.asarray(jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else a)

    return [arr(a) for a in jax.tree.leaves(t)]


def test_sam_in_an_nnx_optimizer_equals_functional_sam_and_keeps_one_pass_batch_stats():
    x, y = _data()
    model = Net(nnx.Rngs(0))
    apply_fn, params, state = models.split_model(Net(nnx.Rngs(0)))  # the same weights, split
    rho, lr = 0.05, 0.1

    opt = nnx.Optimizer(model, optax.chain(transforms.sam(rho), optax.sgd(lr)), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, opt, x, y):
        grads = nnx.grad(_ce)(model, x, y)
        opt.update(model, grads, grad_fn=models.sam_grad_fn(model, _ce, x, y))

    train_step(model, opt, x, y)

    def loss(p):
        logits, new_state = apply_fn(p, state, x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_state

    (_, new_state), direction = sharpness.value_and_sam_grad(loss, rho, has_aux=True)(params)
    expected = jax.tree.map(lambda w, d: w - lr * d, params, direction)
    got = nnx.state(model, nnx.Param).to_pure_dict()
    for a, b in zip(_leaves(got), _leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # the running averages moved once, by the unperturbed pass
    np.testing.assert_allclose(
        np.asarray(model.bn.mean[...]), np.asarray(new_state["bn"]["mean"]), rtol=1e-6, atol=1e-7
    )


def test_dropout_streams_advance_in_both_passes_and_training_lowers_the_loss():
    x, y = _data()
    model = Net(nnx.Rngs(0, dropout=1), dropout=0.2)
    opt = nnx.Optimizer(model, optax.chain(transforms.sam(0.05), optax.adam(1e-2)), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, opt, x, y):
        loss, grads = nnx.value_and_grad(_ce)(model, x, y)
        opt.update(model, grads, grad_fn=models.sam_grad_fn(model, _ce, x, y))
        return loss

    def count():
        return sum(int(c) for c in jax.tree.leaves(nnx.state(model, nnx.RngCount)))

    count0 = count()
    losses = [float(train_step(model, opt, x, y)) for _ in range(30)]
    assert count() == count0 + 2 * 30  # a fresh mask for each of the two passes
    model.eval()
    assert float(_ce(model, x, y)) < losses[0]


def test_sam_grad_fn_checks_the_loss():
    x, y = _data()
    model = Net(nnx.Rngs(0))
    params = nnx.as_pure(nnx.state(model, nnx.Param))
    with pytest.raises(TypeError, match="pass has_aux=True"):
        models.sam_grad_fn(model, lambda m, x, y: (_ce(m, x, y), 0.0), x, y)(params)
    g = models.sam_grad_fn(model, lambda m, x, y: (_ce(m, x, y), 0.0), x, y, has_aux=True)(params)
    assert jax.tree.structure(g) == jax.tree.structure(params)
    with pytest.raises(TypeError, match="must return a scalar"):
        models.sam_grad_fn(model, lambda m, x, y: m(x), x, y)(params)
    with pytest.raises(TypeError, match="expects the flax.nnx.Module being trained"):
        models.sam_grad_fn({"w": 1}, _ce, x, y)


def test_pure_loss_curvature_equals_the_split_model_curvature():
    x, y = _data()
    model = Net(nnx.Rngs(0))
    model.eval()
    f, params = models.pure_loss(model, _ce)
    h_nnx = curvature.hessian_diagonal(f, params, x, y)

    apply_fn, p, s = models.split_model(Net(nnx.Rngs(0)))

    def loss(q, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(apply_fn(q, s, x)[0], y).mean()

    h_fn = curvature.hessian_diagonal(lambda q, b: loss(q, *b), p, (x, y))
    for a, b in zip(_leaves(h_nnx), _leaves(h_fn)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    before = _leaves(nnx.state(model))
    f(params, x, y)
    assert all(np.array_equal(a, b) for a, b in zip(before, _leaves(nnx.state(model))))  # never mutated
