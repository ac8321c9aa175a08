"""LookSAM and GSAM against direct computations written out with plain jax."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import mlp_loss

from jaxunlearn import sharpness, transforms


def _close(a, b, rtol=1e-5, atol=1e-6):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=rtol, atol=atol), a, b)


def _flat(tree):
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def _trajectory(params, batch, n, lr=0.3):
    """n different parameter points (plain gradient steps), so each step has its own g."""
    points = [params]
    for _ in range(n - 1):
        g = jax.grad(mlp_loss)(points[-1], batch)
        points.append(jax.tree.map(lambda w, x: w - lr * x, points[-1], g))
    return points


def _sam_point_grad(p, batch, rho):
    g = jax.grad(mlp_loss)(p, batch)
    gf = _flat(g)
    e = jax.tree.map(lambda x: rho * x / jnp.linalg.norm(gf), g)
    return g, jax.grad(mlp_loss)(jax.tree.map(jnp.add, p, e), batch)


# ------------------------------------------------------------------------------------------------- LookSAM
@pytest.mark.parametrize("sign,lamb,adaptive", [("min", 1.0, False), ("max", 0.5, False), ("min", 1.0, True)])
def test_looksam_with_k1_is_sam_at_every_step(mlp, sign, lamb, adaptive):
    params, batch = mlp
    grad_fn_of = lambda b: lambda p: jax.grad(mlp_loss)(p, b)  # noqa: E731
    look = transforms.looksam(0.1, k=1, lamb=lamb, sign=sign, adaptive=adaptive, eta=0.01)
    sam = transforms.sam(0.1, lamb=lamb, sign=sign, adaptive=adaptive, eta=0.01)
    state = look.init(params)
    for p in _trajectory(params, batch, 3):
        g = jax.grad(mlp_loss)(p, batch)
        got, state = look.update(g, state, p, grad_fn=grad_fn_of(batch))
        want, _ = sam.update(g, sam.init(p), p, grad_fn=grad_fn_of(batch))
        _close(got, want, rtol=1e-6, atol=1e-7)
    assert int(state.count) == 3


@pytest.mark.parametrize("sign", ["min", "max"])
def test_looksam_reuses_the_orthogonal_component_between_sam_steps(mlp, sign):
    params, batch = mlp
    rho, k, alpha, lamb = 0.1, 3, 0.7, 0.8
    s = 1.0 if sign == "min" else -1.0
    opt = transforms.looksam(rho, k=k, alpha=alpha, lamb=lamb, sign=sign)
    update = jax.jit(lambda g, s, p: opt.update(g, s, p, grad_fn=lambda q: jax.grad(mlp_loss)(q, batch)))
    state = opt.init(params)
    g_v = None
    for step, p in enumerate(_trajectory(params, batch, 7)):
        g = jax.grad(mlp_loss)(p, batch)
        got, state = update(g, state, p)
        gf = _flat(g)
        if step % k == 0:  # a SAM step: the SAM direction, and g_v = g_s − (⟨g_s, g⟩/‖g‖²)·g is stored
            _, g_s = _sam_point_grad(p, batch, rho)
            gsf = _flat(g_s)
            want = jax.tree.map(lambda a, b: a + s * lamb * (b - a), g, g_s)
            coef = jnp.dot(gsf, gf) / jnp.dot(gf, gf)
            g_v = jax.tree.map(lambda a, b, c=coef: a - c * b, g_s, g)
            _close(state.g_v, g_v)
            g_v = state.g_v  # what the state keeps for the next k − 1 steps
            assert abs(float(jnp.dot(_flat(state.g_v), gf))) < 1e-5 * float(jnp.linalg.norm(gsf) * jnp.linalg.norm(gf))
        else:  # in between: g + s·λ·α·(‖g‖/‖g_v‖)·g_v with the stored g_v, no second gradient
            scale = jnp.linalg.norm(gf) / jnp.linalg.norm(_flat(g_v))
            want = jax.tree.map(lambda a, v, c=scale: a + s * lamb * alpha * c * v, g, g_v)
            _close(state.g_v, g_v, rtol=0, atol=0)  # kept as is
        _close(got, want)
    assert int(state.count) == 7


def test_looksam_skipped_steps_do_not_evaluate_grad_fn_under_jit(mlp):
    """lax.cond on the counter: grad_fn runs (at run time, not only at trace time) on steps 0, k, 2k only."""
    params, batch = mlp
    calls = []

    def grad_fn(p):
        jax.debug.callback(lambda: calls.append(1))
        return jax.grad(mlp_loss)(p, batch)

    opt = transforms.looksam(0.05, k=3)

    @jax.jit
    def step(p, state):
        g = jax.grad(mlp_loss)(p, batch)
        upd, state = opt.update(g, state, p, grad_fn=grad_fn)
        return jax.tree.map(lambda w, u: w - 0.1 * u, p, upd), state

    state = opt.init(params)
    p = params
    for _ in range(7):
        p, state = step(p, state)
    jax.effects_barrier()
    assert len(calls) == 3  # steps 0, 3, 6


def test_looksam_host_side_choice_matches_the_counter_and_skips_grad_fn(mlp):
    """update(..., sam_step=bool): the branch chosen outside jit (no lax.cond) gives the counter's directions, and
    a reuse step never calls grad_fn (not even to trace it)."""
    params, batch = mlp
    k = 2
    opt = transforms.looksam(0.1, k=k)
    traced = []

    def grad_fn(p):
        traced.append(1)
        return jax.grad(mlp_loss)(p, batch)

    s_counter, s_host = opt.init(params), opt.init(params)
    for t, p in enumerate(_trajectory(params, batch, 4)):
        g = jax.grad(mlp_loss)(p, batch)
        want, s_counter = opt.update(g, s_counter, p, grad_fn=lambda q: jax.grad(mlp_loss)(q, batch))
        before = len(traced)
        got, s_host = opt.update(g, s_host, p, grad_fn=grad_fn, sam_step=t % k == 0)
        assert len(traced) - before == (1 if t % k == 0 else 0)
        _close(got, want, rtol=1e-6, atol=1e-7)
    assert int(s_host.count) == 4
    with pytest.raises(TypeError, match="sam_step must be None .* or a Python bool"):
        opt.update(g, s_host, params, grad_fn=grad_fn, sam_step=jnp.array(True))


def test_looksam_under_vmap_over_models_matches_each_model(mlp):
    params, batch = mlp
    stacked = jax.tree.map(lambda w: jnp.stack([w, 1.1 * w]), params)
    opt = transforms.looksam(0.1, k=2)

    def two_steps(p):
        state = opt.init(p)
        out = []
        for _ in range(2):
            g = jax.grad(mlp_loss)(p, batch)
            d, state = opt.update(g, state, p, grad_fn=lambda q: jax.grad(mlp_loss)(q, batch))
            out.append(d)
            p = jax.tree.map(lambda w, u: w - 0.2 * u, p, d)
        return out

    batched = jax.jit(jax.vmap(two_steps))(stacked)
    for i in range(2):
        single = two_steps(jax.tree.map(lambda w, i=i: w[i], stacked))
        for b, s in zip(batched, single):
            _close(jax.tree.map(lambda x, i=i: x[i], b), s)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"k": 0}, ValueError, "k must be an integer >= 1, got 0"),
        ({"k": 2.0}, ValueError, "k must be an integer >= 1, got 2.0"),
        ({"alpha": float("nan")}, ValueError, "alpha must be a finite number >= 0.0, got nan"),
        ({"alpha": -0.1}, ValueError, "alpha must be a finite number >= 0.0"),
        ({"rho": 0.0}, ValueError, "rho must be a finite number > 0.0"),
        ({"lamb": float("inf")}, ValueError, "lamb must be a finite number"),
        ({"sign": "maximum"}, ValueError, "sign must be one of"),
    ],
)
def test_looksam_bad_settings_are_one_line_errors(kwargs, exc, match):
    kw = {"rho": 0.1, **kwargs}
    with pytest.raises(exc, match=match) as info:
        transforms.looksam(kw.pop("rho"), **kw)
    assert "\n" not in str(info.value)


def test_looksam_and_gsam_warn_when_not_first_and_need_grad_fn(mlp):
    params, batch = mlp
    g = jax.grad(mlp_loss)(params, batch)
    for name, t in (("looksam", transforms.looksam(0.1)), ("gsam", transforms.gsam(0.1))):
        opt = optax.chain(optax.clip_by_global_norm(1.0), t, optax.sgd(0.1))
        with pytest.warns(transforms.SAMUsageWarning, match=f"transforms.{name} is not the first transform"):
            opt.update(g, opt.init(params), params, grad_fn=lambda p: jax.grad(mlp_loss)(p, batch))
        with warnings.catch_warnings():
            warnings.simplefilter("error", transforms.SAMUsageWarning)
            first = optax.chain(t, optax.sgd(0.1))
            first.update(g, first.init(params), params, grad_fn=lambda p: jax.grad(mlp_loss)(p, batch))
        with pytest.raises(ValueError, match=f"transforms.{name} needs the keyword grad_fn"):
            t.update(g, t.init(params), params)
        with pytest.raises(TypeError, match=rf"pass {name}\(\.\.\., has_aux=True\)"):
            t.update(g, t.init(params), params, grad_fn=lambda p: (jax.grad(mlp_loss)(p, batch), 0.0))


# ------------------------------------------------------------------------------------------------- GSAM
@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5])
def test_gsam_equals_the_surrogate_gap_formula(mlp, alpha):
    params, batch = mlp
    rho = 0.1
    g, g_p = _sam_point_grad(params, batch, rho)
    gf, gpf = _flat(g), _flat(g_p)
    g_perp = jax.tree.map(lambda a, b: a - (jnp.dot(gf, gpf) / jnp.dot(gpf, gpf)) * b, g, g_p)
    want = jax.tree.map(lambda a, b: a - alpha * b, g_p, g_perp)
    t = transforms.gsam(rho, alpha=alpha)
    got, state = jax.jit(lambda g, s, p: t.update(g, s, p, grad_fn=lambda q: jax.grad(mlp_loss)(q, batch)))(
        g, t.init(params), params
    )
    _close(got, want)
    assert int(state.count) == 1
    # the correction −α·g_⊥ is orthogonal to g_p, so ⟨d, g_p⟩ = ‖g_p‖² whatever α
    np.testing.assert_allclose(float(jnp.dot(_flat(got), gpf)), float(jnp.dot(gpf, gpf)), rtol=1e-5)
    if alpha == 0.0:
        s = transforms.sam(rho)
        _close(got, s.update(g, s.init(params), params, grad_fn=lambda q: jax.grad(mlp_loss)(q, batch))[0])


def test_gsam_rho_schedule_is_read_at_the_step_count(mlp):
    params, batch = mlp
    schedule = lambda count: 0.2 / (1.0 + count)  # noqa: E731
    t = transforms.gsam(schedule, alpha=0.2)
    state = t.init(params)
    for step in range(3):
        g = jax.grad(mlp_loss)(params, batch)
        got, state = t.update(g, state, params, grad_fn=lambda q: jax.grad(mlp_loss)(q, batch))
        fixed = transforms.gsam(0.2 / (1.0 + step), alpha=0.2)
        _close(got, fixed.update(g, fixed.init(params), params, grad_fn=lambda q: jax.grad(mlp_loss)(q, batch))[0])


def test_gsam_adaptive_uses_the_asam_perturbation(mlp):
    params, batch = mlp
    g = jax.grad(mlp_loss)(params, batch)
    e = sharpness.perturbation(g, params, 0.5, adaptive=True, eta=0.01)
    g_p = jax.grad(mlp_loss)(jax.tree.map(jnp.add, params, e), batch)
    gf, gpf = _flat(g), _flat(g_p)
    want = jax.tree.map(lambda a, b: b - 0.3 * (a - jnp.dot(gf, gpf) / jnp.dot(gpf, gpf) * b), g, g_p)
    t = transforms.gsam(0.5, alpha=0.3, adaptive=True, eta=0.01)
    _close(t.update(g, t.init(params), params, grad_fn=lambda q: jax.grad(mlp_loss)(q, batch))[0], want)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((0.1,), {"alpha": float("nan")}, "alpha must be a finite number >= 0.0, got nan"),
        ((0.1,), {"alpha": -1.0}, "alpha must be a finite number >= 0.0"),
        ((-0.1,), {}, "rho must be a finite number > 0.0"),
        ((0.1,), {"eta": -1.0}, "eta must be a finite number >= 0.0"),
    ],
)
def test_gsam_bad_settings_are_one_line_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        transforms.gsam(*args, **kwargs)
    assert "\n" not in str(info.value)
