"""The unlearning challenge's ε-score and per-example U-LiRA (jaxunlearn.metrics.population).

The score is checked against a plain transcription of the rules of google-deepmind/unlearning_evaluation's
``metric.py`` written below with dense NumPy comparison matrices (every threshold against every model), which
shares no code with the module (the module counts with binary search).
"""

import numpy as np
import pytest

from jaxunlearn.metrics import population as pop

DELTA = 1e-5


# --------------------------------------------------------------------------------------------------------
# a direct transcription of metric.py / main.py (float64, dense)
# --------------------------------------------------------------------------------------------------------
def ref_confidence(logits, labels):
    out = []
    for z in np.asarray(logits).reshape(-1, *np.shape(logits)[-2:]):
        z = z - np.max(z, axis=1, keepdims=True)
        probs = np.array(np.exp(z), dtype=np.float64)
        probs /= np.sum(probs, axis=1, keepdims=True)
        rows = np.arange(len(labels))
        correct = probs[rows, labels].copy()
        probs[rows, labels] = 0
        wrong = probs.sum(axis=1)
        out.append(np.log(correct + 1e-45) - np.log(wrong + 1e-45))
    return np.array(out).reshape(np.shape(logits)[:-1])


def ref_rule_epsilons(tpr, fnr, fpr, tnr, delta):
    eps = np.zeros(len(tpr))
    eps[((fpr + fnr) == 0) & ((tpr + tnr) == 2)] = np.inf
    eps[(eps == 0) & ((fpr * fnr) == 0)] = np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        cand = np.clip(
            np.nanmax([np.log(1 - delta - fpr) - np.log(fnr), np.log(1 - delta - fnr) - np.log(fpr)], axis=0), 0, None
        )
    return np.where(eps == 0, cand, eps)


def ref_single(pos, neg):
    both = np.concatenate([pos, neg])
    thr = np.linspace(both.min(), both.max(), int(np.ceil((both.max() - both.min()) * 100)))
    p, n, t = pos[:, None], neg[:, None], thr[None, :]
    return (p >= t).mean(0), (p < t).mean(0), (n >= t).mean(0), (n < t).mean(0)


def ref_double(pos, neg):
    pos_diff, neg_diff = np.ptp(pos), np.ptp(neg)
    smallest = neg_diff if pos_diff > neg_diff else pos_diff
    if pos_diff >= neg_diff:
        pos, neg = neg, pos
    lo, hi = pos.min() + smallest - 2.0, pos.max() + 2.0
    rights = np.linspace(lo, hi, num=int(np.ceil((hi - lo) * 100)))
    lefts = np.concatenate([np.linspace(tr - smallest - 2.0, tr - smallest + 2.0, num=400) for tr in rights])
    rights = np.repeat(rights, 400)
    inside = lambda c: (lefts[None, :] <= c[:, None]) & (c[:, None] <= rights[None, :])
    return inside(pos).mean(0), (~inside(pos)).mean(0), inside(neg).mean(0), (~inside(neg)).mean(0)


def ref_epsilons(unlearned, retrained, delta=DELTA):
    pos_all = np.where(np.median(retrained, 0) > np.median(unlearned, 0), retrained, unlearned)
    neg_all = np.where(np.median(retrained, 0) > np.median(unlearned, 0), unlearned, retrained)
    out = []
    for i in range(unlearned.shape[1]):
        pos, neg = pos_all[:, i], neg_all[:, i]
        pd, nd = np.ptp(pos), np.ptp(neg)
        largest, smallest = (pd, nd) if pd > nd else (nd, pd)
        with np.errstate(invalid="ignore"):
            if smallest / largest < 0.01:
                out.append(50.0)
                continue
        rates = [np.concatenate(r) for r in zip(ref_double(pos, neg), ref_single(pos, neg), strict=True)]
        eps = ref_rule_epsilons(*rates, delta)
        eps = eps[~np.isnan(eps)]
        out.append(eps.max() if eps.size else 0.0)
    return np.clip(out, 0, 50)


def ref_forget_score(unlearned, retrained):
    eps = ref_epsilons(unlearned, retrained)
    max_eps = np.ceil(np.log(unlearned.shape[0] - 1))
    start, pts, buckets = 0, 1, {}
    while start + 0.5 <= max_eps:
        buckets[start] = pts
        pts /= 2
        start += 0.5
    score = 0.0
    for e in eps:
        for s, p in buckets.items():
            if e < s + 0.5:
                score += p
                break
    return score / len(eps)


def gaussian_populations(k, n, shift, seed=0, scale_u=1.0):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(1, n)) * 2.0  # per-example location
    return base + shift + scale_u * rng.normal(size=(k, n)), base + rng.normal(size=(k, n))


# --------------------------------------------------------------------------------------------------------
# confidence
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_confidence_matches_the_transcription_in_the_logits_dtype(dtype):
    rng = np.random.default_rng(1)
    logits = (rng.normal(size=(3, 7, 4)) * np.array([1.0, 10.0, 40.0])[:, None, None]).astype(dtype)
    labels = rng.integers(0, 4, size=7)
    got = pop.challenge_logit_confidence(logits, labels)
    assert got.shape == (3, 7) and got.dtype == np.float64
    np.testing.assert_array_equal(got, ref_confidence(logits, labels))
    np.testing.assert_array_equal(pop.challenge_logit_confidence(logits[1], labels), got[1])


def test_confidence_saturates_where_the_float32_exponential_underflows():
    logits = np.array([[200.0, 0.0]])
    want = np.log(1.0) - np.log(1e-45)
    assert pop.challenge_logit_confidence(logits.astype(np.float32), [0])[0] == pytest.approx(want)
    assert pop.challenge_logit_confidence(logits, [1])[0] == pytest.approx(-want)


def test_confidence_from_probabilities_equals_confidence_from_logits():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(4, 5, 3)) * 3
    labels = rng.integers(0, 3, size=5)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(
        pop.challenge_logit_confidence(probs, labels, probabilities=True),
        pop.challenge_logit_confidence(logits, labels),
        rtol=1e-10,
        atol=1e-10,
    )


# --------------------------------------------------------------------------------------------------------
# ε and the score against the transcription
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "k, shift, scale_u, seed",
    [(16, 0.0, 1.0, 0), (16, 0.8, 1.0, 1), (12, 2.5, 1.0, 2), (16, 0.3, 0.3, 3), (9, -1.5, 2.0, 4)],
)
def test_epsilons_and_score_equal_the_transcription_on_gaussian_populations(k, shift, scale_u, seed):
    u, r = gaussian_populations(k, 5, shift, seed, scale_u)
    want = ref_epsilons(u, r)
    np.testing.assert_allclose(pop.challenge_epsilons(u, r), want, rtol=1e-12, atol=0)
    assert pop.challenge_forget_score(u, r) == pytest.approx(ref_forget_score(u, r), abs=1e-15)


def test_identical_populations_score_best_and_separable_ones_worst():
    u, r = gaussian_populations(16, 6, 0.0, seed=5)
    np.testing.assert_array_equal(pop.challenge_epsilons(r, r), np.zeros(6))
    assert pop.challenge_forget_score(r, r) == 1.0
    far = r + 50.0
    np.testing.assert_array_equal(pop.challenge_epsilons(far, r), np.full(6, 50.0))
    np.testing.assert_array_equal(pop.challenge_epsilons(r - 50.0, r), np.full(6, 50.0))
    assert pop.challenge_forget_score(far, r) == 0.0


def test_a_peaky_population_gets_the_cap():
    rng = np.random.default_rng(6)
    r = rng.normal(size=(10, 3))
    u = np.tile(np.median(r, 0), (10, 1)) + 1e-4 * rng.normal(size=(10, 3))  # range < 1 % of the retrained one
    np.testing.assert_array_equal(pop.challenge_epsilons(u, r), [50.0, 50.0, 50.0])
    np.testing.assert_array_equal(pop.challenge_epsilons(r, u), [50.0, 50.0, 50.0])


def test_constant_populations_one_value_give_zero_and_two_values_the_cap():
    c = np.full((5, 2), 3.0)
    np.testing.assert_array_equal(pop.challenge_epsilons(c, c), [0.0, 0.0])  # no threshold survives
    np.testing.assert_array_equal(pop.challenge_epsilons(c + 1.0, c), [50.0, 50.0])  # 0/0 ranges: not peaky


def test_epsilon_grows_and_the_score_falls_as_the_populations_separate():
    rng = np.random.default_rng(7)
    noise_u, noise_r = rng.normal(size=(24, 12)), rng.normal(size=(24, 12))
    shifts = [0.0, 0.5, 1.0, 2.0, 3.0, 6.0]
    eps = [pop.challenge_epsilons(noise_u + s, noise_r).mean() for s in shifts]
    scores = [pop.challenge_forget_score(noise_u + s, noise_r) for s in shifts]
    assert all(a <= b for a, b in zip(eps, eps[1:], strict=False)), eps
    assert all(a >= b for a, b in zip(scores, scores[1:], strict=False)), scores
    assert eps[-1] == 50.0 and scores[-1] == 0.0


def test_points_follow_the_bucket_loop():
    assert pop.challenge_points([0.0, 5.0], 2).tolist() == [0.0, 0.0]  # ceil(log 1) = 0: no bucket
    assert pop.challenge_points([0.0, 0.4999, 0.5, 0.99, 1.0, 50.0], 3).tolist() == [1, 1, 0.5, 0.5, 0, 0]
    e = np.linspace(0, 8, 161)
    got = pop.challenge_points(e, 512)
    assert got[e < 0.5].tolist() == [1.0] * int((e < 0.5).sum())
    assert got[(e >= 6.5) & (e < 7.0)].min() == 2.0**-13 and np.all(got[e >= 7.0] == 0)
    for k in (3, 8, 64, 512):  # against the transcription's score on one-example forget sets
        for x in (0.0, 0.7, 1.6, 3.2, 4.9):
            pts, max_eps = None, np.ceil(np.log(k - 1))
            start, p = 0.0, 1.0
            while start + 0.5 <= max_eps:
                if x < start + 0.5:
                    pts = p
                    break
                p /= 2
                start += 0.5
            assert pop.challenge_points([x], k)[0] == (pts or 0.0)


def test_final_score_is_forget_score_times_the_accuracy_ratios():
    u, r = gaussian_populations(8, 4, 0.7, seed=8)
    out = pop.challenge_score_from_confidence(
        u,
        r,
        unlearned_retain_acc=[0.9, 0.7],
        retrained_retain_acc=1.0,
        unlearned_test_acc=0.6,
        retrained_test_acc=np.array([0.8, 0.8, 0.8]),
    )
    assert out["forget_score"] == pytest.approx(ref_forget_score(u, r))
    assert out["retain_ratio"] == pytest.approx(0.8) and out["test_ratio"] == pytest.approx(0.75)
    assert out["final_score"] == pytest.approx(out["forget_score"] * 0.8 * 0.75)
    np.testing.assert_allclose(out["epsilons"], ref_epsilons(u, r), rtol=1e-12)


def test_score_from_logits_uses_the_challenge_confidence():
    rng = np.random.default_rng(9)
    labels = rng.integers(0, 3, size=4)
    r_logits = rng.normal(size=(6, 4, 3))
    u_logits = r_logits + 0.5 * rng.normal(size=(6, 4, 3))
    accs = dict(unlearned_retain_acc=1.0, retrained_retain_acc=1.0, unlearned_test_acc=1.0, retrained_test_acc=1.0)
    out = pop.challenge_score(u_logits, r_logits, labels, **accs)
    u, r = ref_confidence(u_logits, labels), ref_confidence(r_logits, labels)
    assert out["final_score"] == pytest.approx(ref_forget_score(u, r))


# --------------------------------------------------------------------------------------------------------
# U-LiRA
# --------------------------------------------------------------------------------------------------------
def test_ulira_scores_are_the_gaussian_log_likelihood_ratio():
    u, r = gaussian_populations(10, 4, 1.0, seed=10, scale_u=0.5)
    target = np.random.default_rng(11).normal(size=(3, 4))

    def logpdf(x, m, s):
        return -0.5 * ((x - m) / s) ** 2 - np.log(s * np.sqrt(2 * np.pi))

    want = logpdf(target, u.mean(0), u.std(0, ddof=1)) - logpdf(target, r.mean(0), r.std(0, ddof=1))
    np.testing.assert_allclose(pop.ulira_scores(target, u, r), want, rtol=1e-10)
    np.testing.assert_allclose(pop.ulira_scores(target[0], u, r), want[0], rtol=1e-10)


def test_ulira_attack_is_chance_on_one_distribution_and_perfect_on_separated_ones():
    same_u, same_r = gaussian_populations(24, 40, 0.0, seed=12)
    out = pop.ulira_attack(same_u, same_r)
    assert abs(out["auc"] - 0.5) < 0.06, out["auc"]
    assert out["scores"].shape == (48, 40) and out["is_unlearned"][:24].all() and not out["is_unlearned"][24:].any()
    far = pop.ulira_attack(*gaussian_populations(12, 10, 8.0, seed=13))
    assert far["auc"] == 1.0 and far["tpr_at_1fpr"] == 1.0
    mid = pop.ulira_attack(*gaussian_populations(24, 40, 1.0, seed=14))
    assert 0.6 < mid["auc"] < 0.99


def test_ulira_attack_leaves_the_target_out_of_the_fit():
    u, r = gaussian_populations(5, 3, 0.5, seed=15)
    out = pop.ulira_attack(u, r)
    np.testing.assert_allclose(out["scores"][1], pop.ulira_scores(u[1], np.delete(u, 1, 0), r))
    np.testing.assert_allclose(out["scores"][5 + 2], pop.ulira_scores(r[2], u, np.delete(r, 2, 0)))


# --------------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------------
_OK = np.zeros((4, 3)) + np.arange(4)[:, None]


@pytest.mark.parametrize(
    "u, r, match",
    [
        (_OK[:1], _OK[:1], "unlearned_conf holds 1 model.*at least 2"),
        (_OK, _OK[:, :2], "differ in forget-set size: unlearned_conf has 3 examples, retrained_conf has 2"),
        (_OK, _OK[:3], "differ in size: 4 unlearned vs 3 retrained"),
        (np.where(np.eye(4, 3) > 0, np.nan, _OK), _OK, "unlearned_conf contains NaN or infinite"),
        (_OK, np.where(np.eye(4, 3) > 0, np.inf, _OK), "retrained_conf contains NaN or infinite"),
        (np.zeros((4, 0)), np.zeros((4, 0)), "forget set is empty"),
        (_OK[0], _OK, r"shape \[N_models, N_forget\]"),
    ],
)
def test_bad_populations_raise_one_line_errors(u, r, match):
    for fn in (pop.challenge_epsilons, pop.challenge_forget_score):
        with pytest.raises(ValueError, match=match) as info:
            fn(u, r)
        assert "\n" not in str(info.value)


def test_bad_outputs_and_labels_raise():
    logits = np.zeros((4, 3, 2))
    with pytest.raises(ValueError, match=r"labels holds class 2 but outputs has 2 classes"):
        pop.challenge_logit_confidence(logits, [0, 1, 2])
    with pytest.raises(ValueError, match="labels holds negative labels"):
        pop.challenge_logit_confidence(logits, [0, -1, 0])
    with pytest.raises(ValueError, match="labels has 2 labels but outputs has 3 examples"):
        pop.challenge_logit_confidence(logits, [0, 1])
    with pytest.raises(ValueError, match="forget set is empty"):
        pop.challenge_logit_confidence(np.zeros((4, 0, 2)), [])
    with pytest.raises(ValueError, match="outputs contains NaN or infinite values"):
        pop.challenge_logit_confidence(np.full((3, 2), np.nan), [0, 0, 0])
    with pytest.raises(ValueError, match="negative probabilities"):
        pop.challenge_logit_confidence(np.array([[1.2, -0.2]]), [0], probabilities=True)
    accs = dict(unlearned_retain_acc=1.0, retrained_retain_acc=1.0, unlearned_test_acc=1.0, retrained_test_acc=1.0)
    with pytest.raises(ValueError, match="unlearned_outputs has 2 classes but retrained_outputs has 3"):
        pop.challenge_score(logits, np.zeros((4, 3, 3)), [0, 0, 0], **accs)
    with pytest.raises(ValueError, match="unlearned_outputs has 3 labels|labels has 2 labels"):
        pop.challenge_score(logits, logits, [0, 0], **accs)
    with pytest.raises(ValueError, match="differ in size: 4 unlearned vs 5 retrained"):
        pop.challenge_score(logits, np.zeros((5, 3, 2)), [0, 0, 0], **accs)


def test_bad_accuracies_points_and_ulira_inputs_raise():
    u, r = gaussian_populations(4, 2, 0.0)
    accs = dict(unlearned_retain_acc=1.0, retrained_retain_acc=0.0, unlearned_test_acc=1.0, retrained_test_acc=1.0)
    with pytest.raises(ValueError, match="retrained population's mean retain and test accuracies must be > 0"):
        pop.challenge_score_from_confidence(u, r, **accs)
    with pytest.raises(ValueError, match="unlearned_test_acc must hold finite accuracies"):
        pop.challenge_score_from_confidence(u, r, **{**accs, "retrained_retain_acc": 1.0, "unlearned_test_acc": np.nan})
    with pytest.raises(ValueError, match="num_models must be an integer >= 2"):
        pop.challenge_points([0.1], 1)
    with pytest.raises(ValueError, match="epsilons must be >= 0 and not NaN"):
        pop.challenge_points([np.nan], 8)
    with pytest.raises(ValueError, match="delta must lie in"):
        pop.challenge_epsilons(u, r, delta=0.0)
    with pytest.raises(ValueError, match="leave-one-out U-LiRA needs at least 3"):
        pop.ulira_attack(u[:2], r)
    with pytest.raises(ValueError, match=r"target_conf must have shape \[2\] or \[T, 2\]"):
        pop.ulira_scores(np.zeros(3), u, r)
    with pytest.raises(ValueError, match="target_conf contains NaN"):
        pop.ulira_scores(np.array([0.0, np.inf]), u, r)
    with pytest.raises(ValueError, match="retrained_conf holds 1 model"):
        pop.ulira_scores(np.zeros(2), u, r[:1])


# --------------------------------------------------------------------------------------------------------
# population_scores: both metrics of one unlearned population against the retrained one
# --------------------------------------------------------------------------------------------------------
def test_population_scores_combine_the_challenge_score_and_ulira():
    u, r = gaussian_populations(12, 9, shift=1.0, seed=3)
    acc = dict(
        unlearned_retain_acc=[0.9] * 12, retrained_retain_acc=1.0, unlearned_test_acc=0.8, retrained_test_acc=0.9
    )
    out = pop.population_scores(u, r, **acc)
    ref = pop.challenge_score_from_confidence(u, r, **acc)
    attack = pop.ulira_attack(u, r)
    for key in ("forget_score", "final_score", "retain_ratio", "test_ratio"):
        assert out[key] == ref[key]
    np.testing.assert_array_equal(out["epsilons"], ref["epsilons"])
    assert out["ulira_auc"] == attack["auc"] and out["ulira_tpr_at_1fpr"] == attack["tpr_at_1fpr"]
    assert out["num_models"] == 12
    two = pop.population_scores(u[:2], r[:2], **{**acc, "unlearned_retain_acc": 0.9})
    assert two["ulira_auc"] is None and two["ulira_tpr_at_1fpr"] is None  # leave-one-out needs 3 per population


@pytest.mark.parametrize(
    "u_rows,r_rows,nan,match",
    [
        (1, 1, False, "holds 1 model"),  # N < 2
        (4, 5, False, "differ in size: 4 unlearned vs 5 retrained"),
        (4, 4, True, "contains NaN or infinite confidences"),
    ],
)
def test_population_scores_reject_bad_populations(u_rows, r_rows, nan, match):
    u, r = gaussian_populations(5, 3, shift=0.0)
    u = u[:u_rows].copy()
    if nan:
        u[0, 0] = np.nan
    acc = dict(unlearned_retain_acc=1.0, retrained_retain_acc=1.0, unlearned_test_acc=1.0, retrained_test_acc=1.0)
    with pytest.raises(ValueError, match=match) as info:
        pop.population_scores(u, r[:r_rows], **acc)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("k", [8, 64])
def test_two_samples_of_one_law_score_far_below_one_whatever_k(k):
    """The documented reading of the score: a rule catching j models of one population and one of the other has
    ε = log j, and the tails always offer small counts, so two independent samples of one law get ε between
    log 3 and log 7 (not ≈ 0) at small and large K alike, earning 1/4 to 1/8 point per example."""
    rng = np.random.default_rng(11)
    u, r = rng.normal(size=(k, 40)), rng.normal(size=(k, 40))
    eps = pop.challenge_epsilons(u, r)
    assert np.log(3) - 1e-9 <= np.median(eps) < np.log(7)
    assert 1 / 8 - 0.05 < pop.challenge_forget_score(u, r) < 1 / 4 + 0.05
