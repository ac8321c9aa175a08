"""Loss terms vs direct NumPy computations (float64 references)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxunlearn import objectives


def _log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(17, 6)).astype(np.float32)
    labels = rng.integers(0, 6, size=17).astype(np.int32)
    return logits, labels


def test_per_example_cross_entropy(batch):
    logits, labels = batch
    want = -_log_softmax(logits)[np.arange(len(labels)), labels]
    got = objectives.per_example_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    assert got.shape == (17,)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def test_per_example_cross_entropy_is_stable_for_large_logits():
    logits = jnp.array([[1000.0, 0.0], [0.0, -1000.0], [88.0, 89.0]])
    got = np.asarray(objectives.per_example_cross_entropy(logits, jnp.array([1, 0, 0])))
    np.testing.assert_allclose(got, [1000.0, 0.0, 1.0 + np.log1p(np.exp(-1.0))], rtol=1e-6)
    # bfloat16 logits are computed in float32
    bf = objectives.per_example_cross_entropy(jnp.zeros((2, 4), jnp.bfloat16), jnp.array([0, 3]))
    assert bf.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(bf), np.log(4.0), rtol=1e-6)


def test_cross_entropy_mean_and_weighted(batch):
    logits, labels = batch
    ell = -_log_softmax(logits)[np.arange(len(labels)), labels]
    got = objectives.cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(float(got), ell.mean(), rtol=1e-5)
    w = np.random.default_rng(1).random(17).astype(np.float32)
    got_w = objectives.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(w))
    np.testing.assert_allclose(float(got_w), (w * ell).sum() / w.sum(), rtol=1e-5)
    # 0/1 weights select a subset; all-zero weights give 0, not NaN
    sel = (np.arange(17) % 3 == 0).astype(np.float32)
    got_sel = objectives.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(sel))
    np.testing.assert_allclose(float(got_sel), ell[sel > 0].mean(), rtol=1e-5)
    zero = objectives.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), jnp.zeros(17))
    assert float(zero) == 0.0


def test_cross_entropy_gradient_is_softmax_minus_onehot(batch):
    logits, labels = batch
    g = jax.grad(lambda z: objectives.cross_entropy(z, jnp.asarray(labels)))(jnp.asarray(logits))
    p = np.exp(_log_softmax(logits))
    want = (p - np.eye(6)[labels]) / len(labels)
    np.testing.assert_allclose(np.asarray(g), want, rtol=1e-4, atol=1e-7)


def test_negated_cross_entropy(batch):
    logits, labels = batch
    ell = -_log_softmax(logits)[np.arange(len(labels)), labels]
    got = objectives.negated_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(float(got), -ell.mean(), rtol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kl_distillation(batch, temperature):
    student, _ = batch
    teacher = np.random.default_rng(2).normal(scale=2.0, size=student.shape).astype(np.float32)
    t = temperature
    log_ps, log_pt = _log_softmax(student / t), _log_softmax(teacher / t)
    want = (np.exp(log_pt) * (log_pt - log_ps)).sum(axis=1).mean() * t * t
    got = objectives.kl_distillation(jnp.asarray(student), jnp.asarray(teacher), temperature=t)
    np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-6)
    same = objectives.kl_distillation(jnp.asarray(teacher), jnp.asarray(teacher), t)
    assert float(same) == pytest.approx(0, abs=1e-6)
    # the teacher is a constant: no gradient flows into it
    g_teacher = jax.grad(lambda z: objectives.kl_distillation(jnp.asarray(student), z, t))(jnp.asarray(teacher))
    assert not np.any(np.asarray(g_teacher))
    # gradient w.r.t. the student logits: T · (softmax(s/T) − softmax(t/T)) / n
    g = jax.grad(lambda z: objectives.kl_distillation(z, jnp.asarray(teacher), t))(jnp.asarray(student))
    want_g = t * (np.exp(log_ps) - np.exp(log_pt)) / len(student)
    np.testing.assert_allclose(np.asarray(g), want_g, rtol=1e-4, atol=1e-6)


def test_l1_norm():
    rng = np.random.default_rng(3)
    tree = {"a": rng.normal(size=(3, 4)), "b": [rng.normal(size=5), {"c": np.float32(-2.5)}]}
    want = sum(np.abs(x).sum() for x in jax.tree.leaves(tree))
    got = objectives.l1_norm(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree))
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    g = jax.grad(objectives.l1_norm)({"w": jnp.array([-2.0, 3.0, 0.5])})
    np.testing.assert_array_equal(np.asarray(g["w"]), [-1.0, 1.0, 1.0])


@pytest.mark.parametrize("num_classes", [2, 3, 10])
def test_random_wrong_labels_never_true_and_cover_all_others(num_classes):
    n = 4000
    labels = jnp.asarray(np.arange(n) % num_classes, jnp.int32)
    wrong = np.asarray(objectives.random_wrong_labels(jax.random.key(0), labels, num_classes))
    y = np.asarray(labels)
    assert wrong.dtype == y.dtype and wrong.shape == y.shape
    assert np.all(wrong != y)
    assert np.all((wrong >= 0) & (wrong < num_classes))
    for c in range(num_classes):
        drawn = wrong[y == c]
        others = [k for k in range(num_classes) if k != c]
        assert set(np.unique(drawn).tolist()) == set(others)
        # roughly uniform over the C - 1 other classes
        counts = np.array([(drawn == k).sum() for k in others])
        expected = len(drawn) / len(others)
        assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))
    # deterministic in the key, different across keys
    again = np.asarray(objectives.random_wrong_labels(jax.random.key(0), labels, num_classes))
    other = np.asarray(objectives.random_wrong_labels(jax.random.key(1), labels, num_classes))
    np.testing.assert_array_equal(wrong, again)
    if num_classes > 2:
        assert np.any(wrong != other)


def test_random_wrong_labels_rejects_single_class():
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        objectives.random_wrong_labels(jax.random.key(0), jnp.zeros(3, jnp.int32), 1)


def test_weighted_sum():
    terms = {"r": jnp.array(1.5), "f": jnp.array(-2.0), "unused": jnp.array(100.0)}
    got = objectives.weighted_sum(terms, {"r": 0.99, "f": -0.01})
    np.testing.assert_allclose(float(got), 0.99 * 1.5 + (-0.01) * (-2.0), rtol=1e-6)
    with pytest.raises(ValueError, match=r"\['kl'\]"):
        objectives.weighted_sum(terms, {"r": 1.0, "kl": 0.5})
