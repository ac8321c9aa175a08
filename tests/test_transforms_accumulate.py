"""Accumulation-aware SAM (full-batch SAM over micro-batches) and the compositions ``sam`` warns about:
a transform before ``sam`` in an ``optax.chain`` (lost) and ``optax.MultiSteps`` around it (``g'`` from the
last micro-batch only)."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import mlp_loss
from jax.flatten_util import ravel_pytree

from jaxunlearn import sharpness, transforms

M = 4  # micro-batches of 4 examples: the fixture's 16 examples


def _micro(batch, m=M):
    return jax.tree.map(lambda a: a.reshape(m, a.shape[0] // m, *a.shape[1:]), batch)


def _maxdiff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.mark.parametrize("kw", [{}, {"sign": "max", "lamb": 0.5}, {"adaptive": True, "eta": 0.01}])
def test_accumulated_sam_equals_full_batch_sam_float32(mlp, kw):
    params, batch = mlp
    value, full = sharpness.value_and_sam_grad(mlp_loss, 0.1, **kw)(params, batch)
    acc_value, acc = jax.jit(sharpness.accumulated_value_and_sam_grad(mlp_loss, 0.1, **kw))(params, _micro(batch))
    assert float(acc_value) == pytest.approx(float(value), rel=1e-6)
    assert _maxdiff(acc, full) < 2e-6  # measured ~2e-7 (float32 summation order)
    # the python-unrolled and the rolled scan give the same direction
    rolled = sharpness.accumulated_sam_grad(mlp_loss, 0.1, unroll=1, **kw)(params, _micro(batch))
    assert _maxdiff(rolled, acc) < 1e-6


def test_accumulated_sam_equals_full_batch_sam_float64(mlp):
    params, batch = mlp
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), params)
        b64 = (jnp.asarray(np.asarray(batch[0]), jnp.float64), batch[1])
        _, full = sharpness.value_and_sam_grad(mlp_loss, 0.1)(p64, b64)
        _, acc = sharpness.accumulated_value_and_sam_grad(mlp_loss, 0.1)(p64, _micro(b64))
        assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(acc))
        assert _maxdiff(acc, full) < 1e-12


def test_has_aux_stacks_the_micro_batch_auxes_and_in_axes_passes_an_argument_whole(mlp):
    params, (x, y) = mlp

    def loss(p, x, y, scale):
        value = scale * mlp_loss(p, (x, y))
        return value, {"n": x.shape[0]}

    micro_x, micro_y = _micro((x, y))
    f = sharpness.accumulated_value_and_sam_grad(loss, 0.1, has_aux=True, in_axes=(0, 0, None))
    (value, aux), d = f(params, micro_x, micro_y, 2.0)
    assert aux["n"].shape == (M,)
    _, full = sharpness.value_and_sam_grad(lambda p, b: 2.0 * mlp_loss(p, b), 0.1)(params, (x, y))
    assert float(value) == pytest.approx(2.0 * float(mlp_loss(params, (x, y))), rel=1e-6)
    assert _maxdiff(d, full) < 2e-6
    d2, aux2 = sharpness.accumulated_sam_grad(loss, 0.1, has_aux=True, in_axes=(0, 0, None))(
        params, micro_x, micro_y, 2.0
    )
    assert _maxdiff(d2, d) == 0.0 and aux2["n"].shape == (M,)


def test_accumulated_errors_are_one_clear_line(mlp):
    params, (x, y) = mlp
    f = sharpness.accumulated_value_and_grad(mlp_loss)
    with pytest.raises(ValueError, match="same non-empty leading axis"):
        f(params, (x.reshape(4, 4, 4), y))  # y has no micro-batch axis of 4
    with pytest.raises(ValueError, match="in_axes"):
        sharpness.accumulated_value_and_grad(mlp_loss, in_axes=(0, 1))(params, x, y)
    with pytest.raises(TypeError, match="has_aux=True"):
        sharpness.accumulated_value_and_grad(lambda p, b: (mlp_loss(p, b), 0))(params, _micro((x, y)))
    with pytest.raises(ValueError, match="unroll"):
        sharpness.accumulated_value_and_grad(mlp_loss, unroll=0)


def test_sam_transform_with_accumulated_gradients_is_a_full_batch_sam_step(mlp):
    """The documented optax loop: ``g`` and ``grad_fn`` both averaged over the same micro-batches."""
    params, batch = mlp
    lr, rho = 0.1, 0.05
    opt = optax.chain(transforms.sam(rho), optax.sgd(lr))
    acc = sharpness.accumulated_value_and_grad(mlp_loss)

    @jax.jit
    def step(params, state, micro):
        _, g = acc(params, micro)
        upd, state = opt.update(g, state, params, grad_fn=lambda p: acc(p, micro)[1])
        return optax.apply_updates(params, upd), state

    got, _ = step(params, opt.init(params), _micro(batch))
    _, d = sharpness.value_and_sam_grad(mlp_loss, rho)(params, batch)
    expected = jax.tree.map(lambda w, x: w - lr * x, params, d)
    assert _maxdiff(got, expected) < 1e-6


def test_multisteps_around_sam_warns_and_is_off_full_batch_sam(mlp):
    params, batch = mlp
    lr, rho = 0.5, 0.5
    opt = optax.MultiSteps(optax.chain(transforms.sam(rho), optax.sgd(lr)), M)
    state = opt.init(params)
    micro = _micro(batch)
    p = params
    with pytest.warns(transforms.SAMUsageWarning, match="MultiSteps.*accumulated_value_and_sam_grad"):
        for m in range(M):
            mb = jax.tree.map(lambda a, m=m: a[m], micro)
            g = jax.grad(mlp_loss)(params, mb)
            upd, state = opt.update(g, state, params, grad_fn=lambda q, mb=mb: jax.grad(mlp_loss)(q, mb))
            p = optax.apply_updates(p, upd)
    _, d = sharpness.value_and_sam_grad(mlp_loss, rho)(params, batch)
    full = jax.tree.map(lambda w, x: w - lr * x, params, d)
    assert _maxdiff(p, full) > 1e-4  # what the warning is about: g' came from the last micro-batch only
    # one micro-step per update (k = 1) is plain SAM: no warning
    one = optax.MultiSteps(optax.chain(transforms.sam(rho), optax.sgd(lr)), 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", transforms.SAMUsageWarning)
        one.update(jax.grad(mlp_loss)(params, batch), one.init(params), params, grad_fn=jax.grad(lambda q: 0.0))


def test_a_transform_before_sam_in_a_chain_warns_with_the_fix(mlp):
    params, batch = mlp
    g = jax.grad(mlp_loss)(params, batch)
    grad_fn = lambda p: jax.grad(mlp_loss)(p, batch)
    bad = [
        optax.chain(optax.clip_by_global_norm(0.01), transforms.sam(0.1), optax.sgd(0.1)),
        optax.chain(optax.clip_by_global_norm(0.01), optax.chain(transforms.sam(0.1), optax.sgd(0.1))),  # nested
        optax.named_chain(("clip", optax.clip_by_global_norm(0.01)), ("sam", transforms.sam(0.1))),
    ]
    for opt in bad:
        with pytest.warns(transforms.SAMUsageWarning, match=r"Put sam first: optax\.chain\(transforms\.sam\(rho\)"):
            opt.update(g, opt.init(params), params, grad_fn=grad_fn)
    # also when traced under jit (the check runs while the update is traced)
    with pytest.warns(transforms.SAMUsageWarning, match="not the first transform"):
        jax.jit(lambda p: bad[0].update(g, bad[0].init(p), p, grad_fn=grad_fn)[0])(params)
    good = optax.chain(transforms.sam(0.1), optax.clip_by_global_norm(0.01), optax.sgd(0.1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", transforms.SAMUsageWarning)
        good.update(g, good.init(params), params, grad_fn=grad_fn)


def test_the_recommended_order_clips_and_the_wrong_order_does_not(mlp):
    params, batch = mlp
    c, lr = 0.01, 1.0
    g = jax.grad(mlp_loss)(params, batch)
    grad_fn = lambda p: jax.grad(mlp_loss)(p, batch)
    good = optax.chain(transforms.sam(0.1), optax.clip_by_global_norm(c), optax.sgd(lr))
    upd, _ = good.update(g, good.init(params), params, grad_fn=grad_fn)
    assert float(sharpness.tree_norm(upd)) == pytest.approx(lr * c, rel=1e-5)  # clipped SAM direction
    _, d = sharpness.value_and_sam_grad(mlp_loss, 0.1)(params, batch)
    np.testing.assert_allclose(
        ravel_pytree(upd)[0],
        -lr * c * ravel_pytree(d)[0] / sharpness.tree_norm(d),
        rtol=1e-5,
        atol=1e-9,
    )
    bad = optax.chain(optax.clip_by_global_norm(c), transforms.sam(0.1), optax.sgd(lr))
    with pytest.warns(transforms.SAMUsageWarning):
        upd_bad, _ = bad.update(g, bad.init(params), params, grad_fn=grad_fn)
    assert float(sharpness.tree_norm(upd_bad)) > 10 * lr * c  # clipping was lost
