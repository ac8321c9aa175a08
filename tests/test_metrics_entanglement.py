"""Tests for jaxunlearn.metrics.entanglement (RUM's entanglement score)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxunlearn.metrics import entanglement


def _es_by_hand(fr, ff):
    """Literal transcription of the formula with explicit loops (independent of the implementation)."""
    fr, ff = np.asarray(fr, np.float64), np.asarray(ff, np.float64)
    mu_r = sum(fr) / len(fr)
    mu_f = sum(ff) / len(ff)
    allf = list(fr) + list(ff)
    mu = sum(allf) / len(allf)
    intra_r = sum(float(np.dot(v - mu_r, v - mu_r)) for v in fr) / len(fr)
    intra_f = sum(float(np.dot(v - mu_f, v - mu_f)) for v in ff) / len(ff)
    inter = 0.5 * (float(np.dot(mu_r - mu, mu_r - mu)) + float(np.dot(mu_f - mu, mu_f - mu)))
    return (intra_r + intra_f) / inter


def _clusters(sep, *, n_r=200, n_f=50, d=8, seed=0):
    rng = np.random.default_rng(seed)
    center = np.zeros(d)
    center[0] = sep
    fr = rng.normal(size=(n_r, d)) + center
    ff = rng.normal(size=(n_f, d)) - center
    return fr, ff


def test_matches_hand_computation():
    rng = np.random.default_rng(1)
    fr = rng.normal(size=(37, 5)) + 0.5
    ff = rng.normal(size=(11, 5)) * 2.0 - 0.3
    got = entanglement.entanglement_from_features(fr, ff)
    assert got == pytest.approx(_es_by_hand(fr, ff), rel=1e-10)


def test_separated_clusters_small_overlapping_large():
    far = entanglement.entanglement_from_features(*_clusters(20.0))
    near = entanglement.entanglement_from_features(*_clusters(0.05))
    # Far apart: intra-set variance (about 2·d) is tiny next to the squared distance of the centres.
    assert far < 1.0
    # Overlapping: centres almost coincide, so the denominator vanishes relative to the spread.
    assert near > 100.0 * far
    # Monotone in the separation.
    seps = [0.1, 0.5, 2.0, 8.0]
    scores = [entanglement.entanglement_from_features(*_clusters(s)) for s in seps]
    assert all(a > b for a, b in zip(scores, scores[1:]))


def test_invariant_to_translation_and_global_scale():
    fr, ff = _clusters(1.5, seed=3)
    base = entanglement.entanglement_from_features(fr, ff)
    shift = np.linspace(-3, 3, fr.shape[1])
    assert entanglement.entanglement_from_features(fr + shift, ff + shift) == pytest.approx(base, rel=1e-9)
    assert entanglement.entanglement_from_features(7.0 * fr, 7.0 * ff) == pytest.approx(base, rel=1e-9)


def test_l2_normalize_matches_manual_normalization_and_ignores_row_scale():
    fr, ff = _clusters(1.0, seed=4)
    nr = fr / np.linalg.norm(fr, axis=1, keepdims=True)
    nf = ff / np.linalg.norm(ff, axis=1, keepdims=True)
    got = entanglement.entanglement_from_features(fr, ff, l2_normalize=True)
    assert got == pytest.approx(_es_by_hand(nr, nf), rel=1e-10)
    scale = np.random.default_rng(0).uniform(0.5, 3.0, size=(fr.shape[0], 1))
    assert entanglement.entanglement_from_features(fr * scale, ff, l2_normalize=True) == pytest.approx(got)


def test_class_wise_is_weighted_average_over_common_classes():
    rng = np.random.default_rng(5)
    fr, ff = rng.normal(size=(60, 4)), rng.normal(size=(30, 4)) + 0.7
    lr = rng.integers(0, 3, size=60)
    lf = rng.integers(0, 2, size=30)  # class 2 only in retain: excluded
    got = entanglement.entanglement_from_features(fr, ff, labels_retain=lr, labels_forget=lf)
    num = den = 0.0
    for c in (0, 1):
        n_c = np.sum(lr == c) + np.sum(lf == c)
        num += n_c * _es_by_hand(fr[lr == c], ff[lf == c])
        den += n_c
    assert got == pytest.approx(num / den, rel=1e-10)


def test_entanglement_score_with_features_fn_in_batches():
    key = jax.random.key(0)
    k1, k2, k3 = jax.random.split(key, 3)
    params = {"w": jax.random.normal(k1, (6, 4)), "b": jnp.zeros(4)}
    features_fn = lambda p, x: jax.nn.relu(x @ p["w"] + p["b"])
    x_r = np.asarray(jax.random.normal(k2, (23, 6)))
    x_f = np.asarray(jax.random.normal(k3, (9, 6))) + 1.0
    got = entanglement.entanglement_score(features_fn, params, x_r, x_f, batch_size=5)
    fr = np.asarray(features_fn(params, x_r))
    ff = np.asarray(features_fn(params, x_f))
    assert got == pytest.approx(_es_by_hand(fr, ff), rel=1e-5)


def test_degenerate_and_invalid_inputs():
    same = np.ones((4, 3))
    assert np.isnan(entanglement.entanglement_from_features(same, same))
    # Equal means, nonzero spread: maximally entangled.
    fr = np.array([[1.0, 0.0], [-1.0, 0.0]])
    assert entanglement.entanglement_from_features(fr, -fr) == float("inf")
    with pytest.raises(ValueError, match="f_retain"):
        entanglement.entanglement_from_features(np.zeros((0, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="feature dim"):
        entanglement.entanglement_from_features(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="f_forget"):
        entanglement.entanglement_from_features(np.ones((2, 3)), np.array([[np.nan, 0, 0]]))
    with pytest.raises(ValueError, match="labels_forget"):
        entanglement.entanglement_from_features(np.ones((2, 3)), np.ones((2, 3)), labels_retain=[0, 1])
    with pytest.raises(ValueError, match="labels_retain"):
        entanglement.entanglement_from_features(
            np.ones((2, 3)), np.ones((2, 3)), labels_retain=[0], labels_forget=[0, 1]
        )
    with pytest.raises(ValueError, match="x_forget"):
        entanglement.entanglement_score(lambda p, x: x, None, np.ones((3, 2)), np.ones((0, 2)))
