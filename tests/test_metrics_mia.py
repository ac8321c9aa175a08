"""Tests for jaxunlearn.metrics.mia: SalUn-style MIA-efficacy and LiRA.

The training callable is test scaffolding from ``tests/_vmapped_mlp.py``: a one-hidden-layer MLP trained full-batch with
Adam, vmapped over K inclusion masks, standing in for the engine's vmapped trainer.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _vmapped_mlp import make_train_fn, mlp_logits
from sklearn.datasets import load_digits

from jaxunlearn.metrics import accuracy as A
from jaxunlearn.metrics import mia as M
from jaxunlearn.metrics.memorization import subset_masks


def digits():
    d = load_digits()
    perm = np.random.default_rng(0).permutation(len(d.target))
    return (d.data[perm] / 16.0).astype(np.float32), d.target[perm].astype(np.int32)


def _softmax64(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


# ---------------------------------------------------------------------------------------------------------
# features
# ---------------------------------------------------------------------------------------------------------
def test_mia_features_match_a_direct_numpy_computation():
    rng = np.random.default_rng(0)
    z = rng.normal(scale=3.0, size=(200, 7))
    y = rng.integers(0, 7, 200)
    f = M.mia_features(z, y)
    p = _softmax64(z)
    py = p[np.arange(200), y]
    m_ent = np.array(
        [
            -(1 - py[i]) * np.log(py[i]) - sum(p[i, j] * np.log(1 - p[i, j]) for j in range(7) if j != y[i])
            for i in range(200)
        ]
    )
    assert f.shape == (200, 5)
    np.testing.assert_array_equal(f[:, 0], (z.argmax(1) == y).astype(float))
    np.testing.assert_allclose(f[:, 1], py, rtol=1e-12)
    np.testing.assert_allclose(f[:, 2], -(p * np.log(p)).sum(1), rtol=1e-10)
    np.testing.assert_allclose(f[:, 3], m_ent, rtol=1e-10)
    np.testing.assert_allclose(f[:, 4], p.max(1), rtol=1e-12)
    sets = M.mia_feature_sets(z, y)
    assert list(sets) == list(M.MIA_ATTACKS)
    np.testing.assert_allclose(sets["prob"], p, rtol=1e-12)
    for i, k in enumerate(M.MIA_FEATURES[:4]):
        np.testing.assert_array_equal(sets[k][:, 0], f[:, i])


def test_mia_features_are_finite_and_clipped_for_saturated_logits():
    z = np.array([[1000.0, 0.0, 0.0], [0.0, 1000.0, 0.0]])
    f = M.mia_features(z, np.array([0, 0]))
    assert np.all(np.isfinite(f))
    np.testing.assert_allclose(f[0, 1:4], [1.0, 0.0, 0.0], atol=1e-12)  # confident and right
    # confident and wrong: p_y = 0 -> log clipped at 1e-30; p_1 = 1 -> log(1 − p_1) clipped at 1e-30
    np.testing.assert_allclose(f[1, 3], -2 * np.log(1e-30), rtol=1e-12)


def test_mia_features_validation():
    with pytest.raises(ValueError, match="labels has 2 labels but logits has 3"):
        M.mia_features(np.zeros((3, 4)), np.zeros(2, int))
    with pytest.raises(ValueError, match="labels holds a class"):
        M.mia_features(np.zeros((2, 4)), np.array([0, 4]))
    with pytest.raises(ValueError, match="logits is empty"):
        M.mia_features(np.zeros((0, 4)), np.zeros(0, int))
    with pytest.raises(ValueError, match="non-finite"):
        M.mia_features(np.array([[np.nan, 0.0]]), np.array([0]))


# ---------------------------------------------------------------------------------------------------------
# MIA-efficacy
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def overfit_model():
    """An MLP that memorizes 200 points of a weakly separated 10-class Gaussian mixture (random-ish data)."""
    rng = np.random.default_rng(0)
    d, c = 32, 10
    mu = rng.normal(size=(c, d)) * 1.5 / np.sqrt(d)

    def sample(n):
        yy = rng.integers(0, c, n).astype(np.int32)
        return (mu[yy] + rng.normal(size=(n, d))).astype(np.float32), yy

    (xt, yt), (xh, yh) = sample(200), sample(200)
    params = jax.tree_util.tree_map(lambda a: a[0], make_train_fn(xt, yt, steps=500)(jnp.ones((1, 200), bool)))
    return params, (xt, yt), (xh, yh)


def test_mia_efficacy_separates_trained_from_unseen_examples(overfit_model):
    params, (xt, yt), (xh, yh) = overfit_model
    assert A.accuracy(mlp_logits, params, xt, yt) == 1.0
    retain, test = (xt[:100], yt[:100]), (xh[:100], yh[:100])
    trained = M.mia_efficacy(mlp_logits, params, retain, test, (xt[100:], yt[100:]))
    unseen = M.mia_efficacy(mlp_logits, params, retain, test, (xh[100:], yh[100:]))
    assert set(trained) == {*M.MIA_ATTACKS, "mia"}
    assert trained["mia"] == trained["confidence"] and unseen["mia"] == unseen["confidence"]
    # trained examples the attack never saw are called members; unseen ones mostly non-members
    assert trained["mia"] <= 0.1
    for k in ("correctness", "confidence", "entropy", "m_entropy"):
        assert unseen[k] > trained[k] + 0.4, (k, trained[k], unseen[k])
    assert all(0.0 <= v <= 1.0 for v in (*trained.values(), *unseen.values()))


def test_mia_efficacy_equals_from_logits_and_respects_max_shadow(overfit_model):
    params, (xt, yt), (xh, yh) = overfit_model
    zr, zt, zf = (A.predict(mlp_logits, params, a) for a in (xt[:100], xh[:150], xh[150:]))
    direct = M.mia_efficacy(
        mlp_logits, params, (xt[:100], yt[:100]), (xh[:150], yh[:150]), (xh[150:], yh[150:]), seed=3, max_shadow=60
    )
    from_logits = M.mia_efficacy_from_logits(zr, yt[:100], zt, yh[:150], zf, yh[150:], seed=3, max_shadow=60)
    assert direct == pytest.approx(from_logits)
    only = M.mia_efficacy_from_logits(
        zr, yt[:100], zt, yh[:150], zf, yh[150:], seed=3, max_shadow=60, attacks=["entropy"]
    )
    assert set(only) == {"entropy", "confidence", "mia"}
    assert only["entropy"] == from_logits["entropy"] and only["mia"] == from_logits["mia"]
    with pytest.raises(ValueError, match="unknown attack"):
        M.mia_efficacy(mlp_logits, params, (xt, yt), (xh, yh), (xt, yt), attacks=["loss"])


def test_mia_efficacy_validation(overfit_model):
    params, (xt, yt), (xh, yh) = overfit_model
    with pytest.raises(ValueError, match="forget must be an"):
        M.mia_efficacy(mlp_logits, params, (xt, yt), (xh, yh), xt)
    with pytest.raises(ValueError, match=r"test\[1\] has 5 labels"):
        M.mia_efficacy(mlp_logits, params, (xt, yt), (xh, yh[:5]), (xt, yt))
    with pytest.raises(ValueError, match="forget_logits has 3 classes"):
        M.mia_efficacy_from_logits(
            np.zeros((4, 2)), np.zeros(4, int), np.zeros((4, 2)), np.zeros(4, int), np.zeros((4, 3)), np.zeros(4, int)
        )
    with pytest.raises(ValueError, match="max_shadow"):
        M.mia_efficacy(mlp_logits, params, (xt, yt), (xh, yh), (xt, yt), max_shadow=0)


# ---------------------------------------------------------------------------------------------------------
# LiRA primitives
# ---------------------------------------------------------------------------------------------------------
def test_logit_confidence_matches_log_odds_and_stacked_jax_version():
    rng = np.random.default_rng(1)
    z = rng.normal(scale=2.0, size=(3, 50, 6))
    y = rng.integers(0, 6, 50)
    p = _softmax64(z.reshape(-1, 6)).reshape(3, 50, 6)
    py = p[:, np.arange(50), y]
    phi = M.logit_confidence(z, y)
    np.testing.assert_allclose(phi, np.log(py / (1 - py)), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(M.logit_confidence(z[0], y), phi[0])
    stacked = {"z": jnp.asarray(z, jnp.float32)}
    jax_phi = A.logit_confidence_stacked(lambda prm, idx: prm["z"][idx], stacked, np.arange(50), y)
    np.testing.assert_allclose(jax_phi, phi, rtol=1e-4, atol=1e-4)
    assert M.logit_confidence(np.array([[80.0, 0.0, 0.0]]), np.array([0]))[0] == pytest.approx(80 - np.log(2))


def test_lira_scores_match_hand_gaussian_fits():
    shadow = np.array([[1.0, 0.0], [3.0, 1.0], [-1.0, 2.0], [0.0, 4.0]])
    mask = np.array([[1, 0], [1, 1], [0, 1], [0, 0]], bool)
    target = np.array([2.0, 1.5])

    # example 0: IN {1, 3} mean 2 std √2; OUT {-1, 0} mean -.5 std √.5
    # example 1: IN {1, 2} mean 1.5 std √.5; OUT {0, 4} mean 2 std √8
    def lpdf(x, m, s):
        return -0.5 * ((x - m) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)

    want = [lpdf(2.0, 2.0, 2**0.5) - lpdf(2.0, -0.5, 0.5**0.5), lpdf(1.5, 1.5, 0.5**0.5) - lpdf(1.5, 2.0, 8**0.5)]
    got = M.lira_scores_from_confidence(target, shadow, mask, global_variance=False)
    np.testing.assert_allclose(got, want, rtol=1e-10)

    # offline: −log Pr[Z >= φ], Z ~ N(μ_out, σ_out²)
    def neg_log_sf(x, m, s):
        return -math.log(0.5 * math.erfc((x - m) / s / math.sqrt(2)))

    off = M.lira_scores_from_confidence(target, shadow, mask, online=False, global_variance=False)
    np.testing.assert_allclose(off, [neg_log_sf(2.0, -0.5, 0.5**0.5), neg_log_sf(1.5, 2.0, 8**0.5)], rtol=1e-4)
    # global variance: pooled within-example std for IN = sqrt((2 + .5) / 2), for OUT sqrt((.5 + 8) / 2)
    s_in, s_out = math.sqrt(2.5 / 2), math.sqrt(8.5 / 2)
    want_g = [lpdf(2.0, 2.0, s_in) - lpdf(2.0, -0.5, s_out), lpdf(1.5, 1.5, s_in) - lpdf(1.5, 2.0, s_out)]
    np.testing.assert_allclose(
        M.lira_scores_from_confidence(target, shadow, mask, global_variance=True), want_g, rtol=1e-10
    )
    assert np.allclose(M.lira_scores_from_confidence(target, shadow, mask), want_g)  # K < 64 -> global


def test_lira_scores_from_logits_equal_confidence_version():
    rng = np.random.default_rng(2)
    zs, zt = rng.normal(size=(8, 30, 4)), rng.normal(size=(30, 4))
    y = rng.integers(0, 4, 30)
    mask = subset_masks(8, 30, 0.5, seed=0)
    got = M.lira_scores(zt, y, zs, mask)
    want = M.lira_scores_from_confidence(M.logit_confidence(zt, y), M.logit_confidence(zs, y), mask)
    np.testing.assert_allclose(got, want)


def test_lira_validation():
    shadow = np.zeros((4, 3))
    with pytest.raises(ValueError, match="without any OUT shadow"):
        M.lira_scores_from_confidence(np.zeros(3), shadow, np.ones((4, 3), bool))
    with pytest.raises(ValueError, match="shadow_in_mask has shape"):
        M.lira_scores_from_confidence(np.zeros(3), shadow, np.ones((4, 2), bool))
    with pytest.raises(ValueError, match="per-example variance needs"):
        M.lira_scores_from_confidence(np.zeros(3), shadow, np.eye(4, 3, dtype=bool), global_variance=False)
    with pytest.raises(ValueError, match="shadow_logits must have shape"):
        M.lira_scores(np.zeros((3, 2)), np.zeros(3, int), np.zeros((4, 3, 5)), np.zeros((4, 3), bool))
    with pytest.raises(ValueError, match="num_shadows"):
        M.lira_attack(lambda m: None, mlp_logits, np.zeros((4, 2)), np.zeros(4, int), num_shadows=1)


def test_attack_auc_and_tpr_at_fpr_hand_values():
    assert M.attack_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    scores = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    member = np.array([1, 1, 0, 1, 1, 0, 1, 0, 0, 0], bool)
    # thresholds: τ=.9 -> TPR 2/5, FPR 0; τ=.8 -> FPR 1/5; τ=.6 -> TPR 4/5, FPR 1/5; τ=.4 -> TPR 1, FPR 2/5
    assert M.tpr_at_fpr(scores, member, fpr=0.0) == pytest.approx(0.4)
    assert M.tpr_at_fpr(scores, member, fpr=0.1) == pytest.approx(0.4)
    assert M.tpr_at_fpr(scores, member, fpr=0.2) == pytest.approx(0.8)
    assert M.tpr_at_fpr(scores, member, fpr=0.4) == pytest.approx(1.0)
    assert M.attack_auc(scores, member) == pytest.approx(21 / 25)
    with pytest.raises(ValueError, match="both members and non-members"):
        M.attack_auc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="is_member has shape"):
        M.tpr_at_fpr([0.1, 0.2], [1, 0, 1])
    with pytest.raises(ValueError, match="fpr must lie"):
        M.tpr_at_fpr([0.1, 0.2], [1, 0], fpr=2.0)


# ---------------------------------------------------------------------------------------------------------
# LiRA end to end on digits canaries
# ---------------------------------------------------------------------------------------------------------
NUM_SHADOWS = 16


@pytest.fixture(scope="module")
def canary_attack():
    """300 digits, 30 of them mislabelled canaries; 17 MLPs, each trained on a random half."""
    x, y = digits()
    xs, ys = x[:300], y[:300].copy()
    rng = np.random.default_rng(1)
    canaries = rng.choice(300, 30, replace=False)
    ys[canaries] = (ys[canaries] + rng.integers(1, 10, 30)) % 10
    is_canary = np.zeros(300, bool)
    is_canary[canaries] = True
    train_fn = make_train_fn(xs, ys, steps=300)
    loo = M.lira_attack(train_fn, mlp_logits, xs, ys, num_shadows=NUM_SHADOWS, target_index=None, seed=0)
    return train_fn, xs, ys, is_canary, loo, (x[1000:1300], y[1000:1300])


def test_lira_detects_membership_of_canaries(canary_attack):
    _, _, _, is_canary, loo, _ = canary_attack
    k = NUM_SHADOWS + 1
    sel = np.tile(is_canary, k)
    assert loo["scores"].shape == loo["is_member"].shape == (k * 300,)
    assert loo["masks"].shape == loo["confidence"].shape == (k, 300)
    canary_auc = M.attack_auc(loo["scores"][sel], loo["is_member"][sel])
    print(
        f"LiRA online leave-one-out AUC: all {loo['auc']:.3f}, canaries {canary_auc:.3f}, "
        f"TPR@1%FPR {loo['tpr_at_1fpr']:.3f}"
    )
    assert canary_auc > 0.9
    assert loo["auc"] > 0.7
    assert loo["tpr_at_1fpr"] > 0.05  # far above the 1% of a chance attack


def test_lira_single_target_and_offline_variant(canary_attack):
    train_fn, xs, ys, is_canary, _, _ = canary_attack
    one = M.lira_attack(train_fn, mlp_logits, xs, ys, num_shadows=NUM_SHADOWS, seed=0)
    assert one["scores"].shape == (300,)
    np.testing.assert_array_equal(one["is_member"], one["masks"][0])
    assert M.attack_auc(one["scores"][is_canary], one["is_member"][is_canary]) > 0.9
    off = M.lira_attack(train_fn, mlp_logits, xs, ys, num_shadows=NUM_SHADOWS, target_index=None, seed=0, online=False)
    sel = np.tile(is_canary, NUM_SHADOWS + 1)
    assert M.attack_auc(off["scores"][sel], off["is_member"][sel]) > 0.9


def test_lira_is_at_chance_on_examples_no_model_saw(canary_attack):
    train_fn, _, _, _, loo, (xf, yf) = canary_attack
    params = train_fn(jnp.asarray(loo["masks"]))  # the same 17 models (jit cache hit)
    phi = A.logit_confidence_stacked(mlp_logits, params, xf, yf)  # [K, 300] on fresh examples
    k = NUM_SHADOWS + 1
    fake = subset_masks(k, len(yf), 0.5, seed=5)  # IN/OUT labels assigned at random
    scores, member = [], []
    for t in range(k):
        others = np.arange(k) != t
        scores.append(M.lira_scores_from_confidence(phi[t], phi[others], fake[others]))
        member.append(fake[t])
    auc = M.attack_auc(np.concatenate(scores), np.concatenate(member))
    print(f"LiRA AUC on fresh examples with random IN/OUT labels: {auc:.3f}")
    assert abs(auc - 0.5) < 0.15


def test_lira_attack_checks_train_fn_output():
    x, y = np.zeros((6, 3), np.float32), np.zeros(6, np.int32)
    with pytest.raises(ValueError, match="returned 2 models for 5 masks"):
        M.lira_attack(lambda m: {"w": jnp.zeros((2, 3, 2))}, lambda p, x: x @ p["w"], x, y, num_shadows=4)
