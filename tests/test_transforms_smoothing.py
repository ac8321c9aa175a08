"""Unlearn-Smooth's smoothing family (randomized smoothing, gradient-norm penalty, curvature regularization,
weight averaging) against direct computations written out with plain jax."""

import warnings

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import mlp_loss

from jaxunlearn import transforms


def _close(a, b, rtol=1e-5, atol=1e-6):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=rtol, atol=atol), a, b)


def _flat(tree):
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def _grad_fn(batch):
    return lambda p: jax.grad(mlp_loss)(p, batch)


# ------------------------------------------------------------------------------------- randomized smoothing
@jax.jit(static_argnums=(3, 4))
def _direct_smoothing(params, batch, raw_key, sigma, n):
    """(1/n) Σ_i ∇L(w + σ z_i): the step key is the first half of split(state key); sample i draws one
    normal(fold_in(step_key, i), (#params,)) vector, cut into the leaves in order."""
    step_key = jax.random.split(jax.random.wrap_key_data(raw_key))[0]
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    total = None
    for i in range(n):
        z = jax.random.normal(jax.random.fold_in(step_key, i), flat.shape, jnp.float32)
        gi = jax.grad(mlp_loss)(unravel(flat + sigma * z), batch)
        total = gi if total is None else jax.tree.map(jnp.add, total, gi)
    return jax.tree.map(lambda t: t / n, total)


def test_randomized_smoothing_with_a_fixed_key_is_the_direct_average(mlp):
    params, batch = mlp
    t = transforms.randomized_smoothing(0.05, samples=3, seed=7)
    state = t.init(params)
    np.testing.assert_array_equal(state.key, jax.random.key_data(jax.random.key(7)))
    g = jax.grad(mlp_loss)(params, batch)
    step = jax.jit(lambda g, s, p: t.update(g, s, p, grad_fn=_grad_fn(batch)))
    keys = []
    for _ in range(2):  # each step: its own noise from the key carried in the state
        got, new = step(g, state, params)
        _close(got, _direct_smoothing(params, batch, state.key, 0.05, 3))
        np.testing.assert_array_equal(
            new.key, jax.random.key_data(jax.random.split(jax.random.wrap_key_data(state.key))[1])
        )
        keys.append(np.asarray(state.key))
        state = new
    assert len({k.tobytes() for k in keys}) == 2
    # the direction is not the plain gradient, and it ignores the incoming gradient
    assert float(jnp.max(jnp.abs(_flat(got) - _flat(g)))) > 1e-4
    again, _ = step(jax.tree.map(jnp.zeros_like, g), state, params)
    _close(again, step(g, state, params)[0], rtol=0, atol=0)


def test_randomized_smoothing_is_reproducible_and_seeded(mlp):
    params, batch = mlp
    g = jax.grad(mlp_loss)(params, batch)

    def first(seed):
        t = transforms.randomized_smoothing(0.1, samples=2, seed=seed)
        return _flat(t.update(g, t.init(params), params, grad_fn=_grad_fn(batch))[0])

    np.testing.assert_array_equal(first(1), first(1))
    np.testing.assert_array_equal(first(1), first(jax.random.key(1)))  # an int seed or the same typed key
    assert float(jnp.max(jnp.abs(first(1) - first(2)))) > 1e-5
    # a tiny noise scale gives the plain gradient back
    t = transforms.randomized_smoothing(1e-6, samples=1)
    _close(t.update(g, t.init(params), params, grad_fn=_grad_fn(batch))[0], g, rtol=1e-3, atol=1e-6)


def test_randomized_smoothing_under_vmap_over_sigma(mlp):
    params, batch = mlp
    g = jax.grad(mlp_loss)(params, batch)

    def direction(sigma):
        t = transforms.randomized_smoothing(sigma, samples=2, seed=3)
        return t.update(g, t.init(params), params, grad_fn=_grad_fn(batch))[0]

    batched = jax.vmap(direction)(jnp.array([0.01, 0.2]))
    _close(
        jax.tree.map(lambda x: x[1], batched),
        _direct_smoothing(params, batch, jax.random.key_data(jax.random.key(3)), 0.2, 2),
    )


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"sigma": -0.1}, ValueError, "sigma must be a finite number > 0.0, got -0.1"),
        ({"sigma": 0.0}, ValueError, "sigma must be a finite number > 0.0"),
        ({"sigma": float("nan")}, ValueError, "sigma must be a finite number > 0.0, got nan"),
        ({"samples": 0}, ValueError, "samples must be an integer >= 1, got 0"),
        ({"seed": "abc"}, TypeError, "seed must be an int or a JAX PRNG key"),
    ],
)
def test_randomized_smoothing_bad_settings_are_one_line_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match) as info:
        transforms.randomized_smoothing(**kwargs)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------ gradient-norm penalty
@pytest.mark.parametrize("sign", ["min", "max"])
def test_gradient_norm_penalty_equals_its_finite_difference_formula(mlp, sign):
    params, batch = mlp
    gamma, r = 0.05, 0.01
    s = 1.0 if sign == "min" else -1.0
    g = jax.grad(mlp_loss)(params, batch)
    norm = jnp.linalg.norm(_flat(g))
    g_r = jax.grad(mlp_loss)(jax.tree.map(lambda w, x: w + r * x / norm, params, g), batch)
    want = jax.tree.map(lambda a, b: a + s * gamma * (b - a) / r, g, g_r)
    t = transforms.gradient_norm_penalty(gamma, radius=r, sign=sign)
    got, _ = t.update(g, t.init(params), params, grad_fn=_grad_fn(batch))
    _close(got, want, rtol=1e-5, atol=1e-6)


def test_gradient_norm_penalty_approximates_the_exact_penalty_gradient(mlp):
    """(d − g)/γ ≈ ∇‖∇L‖ = H·ĝ (exact by double differentiation) for a small radius."""
    params, batch = mlp
    gamma = 0.1
    exact = jax.grad(lambda p: jnp.linalg.norm(_flat(jax.grad(mlp_loss)(p, batch))))(params)
    g = jax.grad(mlp_loss)(params, batch)
    t = transforms.gradient_norm_penalty(gamma, radius=1e-3)
    got, _ = t.update(g, t.init(params), params, grad_fn=_grad_fn(batch))
    fd = (_flat(got) - _flat(g)) / gamma
    err = float(jnp.linalg.norm(fd - _flat(exact)) / jnp.linalg.norm(_flat(exact)))
    assert err < 2e-2, err


# ------------------------------------------------------------------------------------ curvature penalty
def test_curvature_penalty_equals_its_finite_difference_formula(mlp):
    params, batch = mlp
    gamma, r = 10.0, 0.01
    grad = _grad_fn(batch)
    g = grad(params)
    add = lambda p, v, c: jax.tree.map(lambda a, b: a + c * b, p, v)  # noqa: E731
    eps_dir = jax.tree.map(lambda x: x / jnp.linalg.norm(_flat(g)), g)
    shifted = add(params, eps_dir, r)
    g_eps = grad(shifted)
    diff = jax.tree.map(jnp.subtract, g_eps, g)
    u = jax.tree.map(lambda x: x / jnp.linalg.norm(_flat(diff)), diff)
    hvp_shifted = jax.tree.map(lambda a, b: (a - b) / r, grad(add(shifted, u, r)), g_eps)  # H(w + ε)·u
    hvp_here = jax.tree.map(lambda a, b: (a - b) / r, grad(add(params, u, r)), g)  # H(w)·u
    want = jax.tree.map(lambda a, b, c: a + gamma * (b - c), g, hvp_shifted, hvp_here)
    t = transforms.curvature_penalty(gamma, radius=r)
    got, _ = t.update(g, t.init(params), params, grad_fn=grad)
    _close(got, want, rtol=1e-4, atol=1e-5)
    mx = transforms.curvature_penalty(gamma, radius=r, sign="max")
    got_max, _ = mx.update(g, mx.init(params), params, grad_fn=grad)
    _close(got_max, jax.tree.map(lambda a, b, c: a - gamma * (b - c), g, hvp_shifted, hvp_here), rtol=1e-4, atol=1e-5)


def test_curvature_penalty_approximates_the_exact_gradient_of_the_penalty(mlp):
    """(d − g)/γ ≈ ∇_w ‖∇L(w + ε) − ∇L(w)‖ with ε = r·ĝ held fixed, differentiated exactly (float64)."""
    params, batch = mlp
    with jax.enable_x64(True):
        params64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
        batch64 = (jnp.asarray(batch[0], jnp.float64), batch[1])
        r = 1e-3
        grad = lambda p: jax.grad(mlp_loss)(p, batch64)  # noqa: E731
        g = grad(params64)
        eps = jax.lax.stop_gradient(jax.tree.map(lambda x: r * x / jnp.linalg.norm(_flat(g)), g))

        def penalty(p):
            shifted = jax.tree.map(jnp.add, p, eps)
            return jnp.linalg.norm(_flat(grad(shifted)) - _flat(grad(p)))

        exact = _flat(jax.jit(jax.grad(penalty))(params64))
        t = transforms.curvature_penalty(1.0, radius=r)
        got, _ = jax.jit(lambda g, p: t.update(g, t.init(p), p, grad_fn=grad))(g, params64)
        fd = _flat(got) - _flat(g)
        err = float(jnp.linalg.norm(fd - exact) / jnp.linalg.norm(exact))
    assert err < 2e-2, err


def test_curvature_penalty_of_a_quadratic_is_the_plain_gradient():
    h = jnp.array([[2.0, 0.5], [0.5, 1.0]])
    grad = jax.grad(lambda w: 0.5 * w @ h @ w)
    w = jnp.array([1.0, -1.0])
    t = transforms.curvature_penalty(10.0)
    got, _ = t.update(grad(w), t.init(w), w, grad_fn=grad)
    np.testing.assert_allclose(got, grad(w), atol=2e-3)  # constant Hessian: ∇C = 0 (float32 rounding / r)


@pytest.mark.parametrize("fn", [transforms.gradient_norm_penalty, transforms.curvature_penalty])
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"gamma": float("nan")}, "gamma must be a finite number >= 0.0, got nan"),
        ({"gamma": -1.0}, "gamma must be a finite number >= 0.0"),
        ({"radius": 0.0}, "radius must be a finite number > 0.0"),
        ({"radius": float("inf")}, "radius must be a finite number > 0.0"),
        ({"sign": "up"}, "sign must be one of"),
    ],
)
def test_penalty_bad_settings_are_one_line_errors(fn, kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        fn(**kwargs)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------ weight averaging
def _run_averaged(opt, params, batch, steps):
    state = opt.init(params)
    seen = []
    p = params
    for _ in range(steps):
        upd, state = opt.update(jax.grad(mlp_loss)(p, batch), state, p)
        p = optax.apply_updates(p, upd)
        seen.append(p)
    return p, state, seen


def test_uniform_weight_average_is_the_mean_of_the_snapshots(mlp):
    params, batch = mlp
    opt = optax.chain(optax.sgd(0.3), transforms.weight_average("uniform", start=3, every=2))
    p, state, seen = _run_averaged(opt, params, batch, 8)
    snaps = [seen[t - 1] for t in range(1, 9) if t >= 3 and t % 2 == 0]  # t = 4, 6, 8
    want = jax.tree.map(lambda *xs: sum(xs) / len(xs), *snaps)
    _close(transforms.averaged_params(state, p), want)
    assert int(state[1].n) == 3 and int(state[1].count) == 8
    # the updates pass through: the trajectory is plain SGD's
    plain, _, _ = _run_averaged(optax.sgd(0.3), params, batch, 8)
    _close(p, plain, rtol=0, atol=0)


def test_ema_weight_average_against_the_recursion(mlp):
    params, batch = mlp
    decay = 0.7
    opt = optax.chain(optax.sgd(0.3), transforms.weight_average("ema", decay=decay))
    p, state, seen = _run_averaged(opt, params, batch, 5)
    a = seen[0]
    for w in seen[1:]:
        a = jax.tree.map(lambda x, y: decay * x + (1 - decay) * y, a, w)
    _close(transforms.averaged_params(state, p), a)


def test_weight_average_start_may_be_traced_and_no_snapshot_gives_params(mlp):
    params, batch = mlp

    @jax.jit
    def run(start):
        opt = optax.chain(optax.sgd(0.3), transforms.weight_average(start=start))
        state, p = opt.init(params), params
        for _ in range(4):
            upd, state = opt.update(jax.grad(mlp_loss)(p, batch), state, p)
            p = optax.apply_updates(p, upd)
        return transforms.averaged_params(state, p), p, state[1].n

    avg, p, n = run(jnp.int32(4))  # only the last step
    _close(avg, p)
    assert int(n) == 1
    avg, p, n = run(jnp.int32(100))  # no snapshot: the final parameters
    _close(avg, p, rtol=0, atol=0)
    assert int(n) == 0


def test_weight_average_warns_when_not_last_and_averaged_params_needs_one_state(mlp):
    params, batch = mlp
    g = jax.grad(mlp_loss)(params, batch)
    opt = optax.chain(transforms.weight_average(), optax.sgd(0.1))
    with pytest.warns(transforms.SAMUsageWarning, match="weight_average is not the last transform"):
        opt.update(g, opt.init(params), params)
    with warnings.catch_warnings():
        warnings.simplefilter("error", transforms.SAMUsageWarning)
        last = optax.chain(transforms.sam(0.1), optax.sgd(0.1), transforms.weight_average())
        last.update(g, last.init(params), params, grad_fn=_grad_fn(batch))
    with pytest.raises(ValueError, match="exactly one transforms.weight_average state, found 0"):
        transforms.averaged_params(optax.sgd(0.1).init(params), params)
    two = optax.chain(transforms.weight_average(), transforms.weight_average())
    with pytest.raises(ValueError, match="found 2"):
        transforms.averaged_params(two.init(params), params)
    with pytest.raises(ValueError, match="weight_average needs params"):
        transforms.weight_average().update(g, transforms.weight_average().init(params))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kind": "mean"}, "kind must be one of"),
        ({"every": 0}, "every must be an integer >= 1"),
        ({"start": -1}, "start must be an integer >= 0"),
        ({"start": 2.5}, "start must be an integer >= 0"),
        ({"decay": 1.0}, r"decay must be in \[0, 1\)"),
        ({"decay": float("nan")}, "decay must be a finite number"),
    ],
)
def test_weight_average_bad_settings_are_one_line_errors(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        transforms.weight_average(**kwargs)
    assert "\n" not in str(info.value)
