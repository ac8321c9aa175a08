"""Token-level losses: masked CE, sequence log-likelihood, NPO, SimNPO, RMU, checked against hand formulas."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxunlearn import objectives


def _logits(seed=0, shape=(3, 5, 7)):
    return jax.random.normal(jax.random.key(seed), shape)


def test_token_cross_entropy_matches_a_loop():
    z, y = _logits(), jax.random.randint(jax.random.key(1), (3, 5), 0, 7)
    m = jnp.array([[1, 1, 0, 0, 0], [0, 1, 1, 1, 0], [1, 0, 0, 0, 1]], jnp.float32)
    logp, yn, mn = np.asarray(jax.nn.log_softmax(z)), np.asarray(y), np.asarray(m)  # the loop runs on the host
    want = -sum(logp[b, t, yn[b, t]] for b in range(3) for t in range(5) if mn[b, t]) / float(mn.sum())
    np.testing.assert_allclose(objectives.token_cross_entropy(z, y, m), want, rtol=1e-5)
    ll = objectives.sequence_log_likelihood(z, y, m)
    np.testing.assert_allclose(ll[1], sum(logp[1, t, yn[1, t]] for t in (1, 2, 3)), rtol=1e-5)


def test_npo_formula_and_limits():
    ll, ref = jnp.array([-2.0, -5.0]), jnp.array([-3.0, -4.0])
    beta = 0.5
    want = (2 / beta) * np.mean(np.log1p(np.exp(beta * (np.array([-2.0, -5.0]) - np.array([-3.0, -4.0])))))
    np.testing.assert_allclose(objectives.npo_loss(ll, ref, beta), want, rtol=1e-6)
    # no gradient through the reference; as β → 0 the gradient is gradient ascent's (∂L/∂ll → 1/n)
    g = jax.grad(lambda a, b: objectives.npo_loss(a, b, 1e-4), argnums=(0, 1))(ll, ref)
    np.testing.assert_allclose(g[0], [0.5, 0.5], atol=1e-3)
    np.testing.assert_allclose(g[1], [0.0, 0.0])


def test_simnpo_formula():
    ll, n = jnp.array([-2.0, -9.0]), jnp.array([2.0, 3.0])
    beta, gamma = 2.5, 0.3
    z = -beta / np.array([2.0, 3.0]) * np.array([-2.0, -9.0]) - gamma
    want = -(2 / beta) * np.mean(np.log(1 / (1 + np.exp(-z))))
    np.testing.assert_allclose(objectives.simnpo_loss(ll, n, beta, gamma), want, rtol=1e-6)


def test_rmu_loss():
    h_f = jnp.ones((1, 2, 4))
    u = jnp.array([1.0, 0.0, 0.0, 0.0])
    m = jnp.array([[1.0, 1.0]])
    h_r, h_ref = jnp.zeros((1, 2, 4)), jnp.ones((1, 2, 4))
    # forget: mean((1-3)², 1, 1, 1) = 7/4; retain: mean(1) = 1
    np.testing.assert_allclose(objectives.rmu_loss(h_f, m, u, 3.0, h_r, h_ref, m, alpha=2.0), 7 / 4 + 2.0)
    g = jax.grad(lambda r: objectives.rmu_loss(h_f, m, u, 3.0, h_r, r, m))(h_ref)
    assert float(jnp.abs(g).max()) == 0.0  # the frozen states get no gradient
