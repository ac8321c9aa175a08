"""Forgetting quality over model populations: the NeurIPS 2023 unlearning challenge's ε-score and U-LiRA.

Both metrics compare two populations of models on each forget example: K unlearned models and K models
retrained without the forget set. Their input is the logit-scaled confidence of every model on every forget
example, ``[K, N_forget]``.

**The challenge's score** (repository google-deepmind/unlearning_evaluation, file ``metric.py`` for the
forget score and ``main.py`` for the final score; commit ffae0fff4c3e9523b22618c47df6c26e4eebe0df). For
each forget example, every threshold rule of two families (one threshold; an interval of two thresholds)
is a test "unlearned vs retrained"; its false-positive and false-negative rates FPR, FNR over the two
populations give ``ε = max(log(1 − δ − FPR) − log FNR, log(1 − δ − FNR) − log FPR)`` at δ = 1e-5, the
per-example ε is the largest over the rules, and it is turned into points (1 for ε < 0.5, halved for each
further 0.5) averaged over the forget set:

* :func:`challenge_logit_confidence` — ``log(p_y + 1e-45) − log(Σ_{j≠y} p_j + 1e-45)``;
* :func:`challenge_epsilons` — per-example ε ∈ [0, :data:`EPSILON_CAP`];
* :func:`challenge_points` — ε → points by 0.5-wide buckets, up to ``ceil(log(K − 1))``;
* :func:`challenge_forget_score` — mean points over the forget set (1 = best, 0 = worst);
* :func:`challenge_score` / :func:`challenge_score_from_confidence` — forget score × RA_u/RA_r × TA_u/TA_r.

Where this code differs from ``metric.py`` (each is also said where it applies):

1. ``metric.py`` ends each example with ``assert thr_eps`` on a NumPy array, which raises whenever more than
   one threshold survives (and when the only survivor has ε = 0); it is read here as "at least one threshold
   survives", and an example where none survives (both populations within the 0.01-wide threshold grid of
   one value) gets ε = 0, where ``metric.py`` stops with an error.
2. Rates and ε are float64 here; ``metric.py`` computes the rates as float32 means on the GPU and builds the
   single-threshold grid with ``torch.linspace`` in float32. Per-threshold ε agree to float32 rounding
   (≈ 1e-7 relative), so a bucket can differ only when an ε lies that close to a multiple of 0.5, and a count
   only when a confidence lies within float32 rounding of a single-threshold grid point.
3. Threshold counts use sorted confidences and binary search instead of the ``[K, thresholds]`` comparison
   matrices; the counts are the same numbers.
4. Inputs are checked (see :func:`challenge_epsilons`); ``metric.py`` assumes two equal populations.

**U-LiRA** (Hayes et al. 2024, "Inexact unlearning needs more careful evaluations to avoid a false sense of
privacy", arXiv:2403.01218): a per-example likelihood-ratio attack that tells whether a model unlearned an
example (trained on it, then removed it) or never saw it. Per example, Gaussians are fitted to the
confidences of shadow unlearned and shadow retrained models, and a target model's confidence φ is scored
``log N(φ; μ_u, σ_u²) − log N(φ; μ_r, σ_r²)`` (:func:`ulira_scores`); :func:`ulira_attack` makes every model
of both populations the target in turn and reports the attack's AUC and TPR at 1 % FPR. The Gaussian fits and
ROC summaries are those of :mod:`~jaxunlearn.metrics.mia` (LiRA).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxunlearn import _validate
from jaxunlearn.metrics.mia import attack_auc, lira_scores_from_confidence, tpr_at_fpr

__all__ = [
    "DELTA",
    "EPSILON_CAP",
    "NUM_THRESHOLDS_PER_UNIT",
    "BUCKET_SIZE",
    "DOUBLE_THRESHOLD_BUFFER",
    "PEAKY_RATIO",
    "CONFIDENCE_OFFSET",
    "challenge_logit_confidence",
    "challenge_epsilons",
    "challenge_points",
    "challenge_forget_score",
    "challenge_score",
    "challenge_score_from_confidence",
    "ulira_scores",
    "ulira_attack",
    "population_scores",
]

#: δ of the (ε, δ) test (``metric.DELTA``).
DELTA = 1e-5
#: Largest per-example ε; perfectly separated and "peaky" examples get it (``metric.EPSILON_CAP``).
EPSILON_CAP = 50.0
#: Threshold grid density: thresholds per unit of logit-scaled confidence (``metric.NUM_THRESHOLDS_PER_UNIT``).
NUM_THRESHOLDS_PER_UNIT = 100
#: Width of the ε buckets of the score (``bucket_size`` in ``compute_forget_score_from_confs``).
BUCKET_SIZE = 0.5
#: How far the double-threshold grid reaches beyond the peakier population (``buffer`` in ``metric.py``).
DOUBLE_THRESHOLD_BUFFER = 2.0
#: Range ratio below which an example gets ε = :data:`EPSILON_CAP` directly (the 1 % test of ``_get_epsilons``).
PEAKY_RATIO = 0.01
#: Added to both probabilities inside the logs of the logit-scaled confidence (``1e-45`` in ``metric.py``).
CONFIDENCE_OFFSET = 1e-45


# --------------------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------------------
def _population(conf: Any, name: str) -> np.ndarray:
    c = np.asarray(conf)
    if c.ndim != 2:
        raise ValueError(f"{name} must have shape [N_models, N_forget], got {c.shape}")
    if c.shape[0] < 2:
        raise ValueError(f"{name} holds {c.shape[0]} model(s); a population needs at least 2")
    if c.shape[1] == 0:
        raise ValueError(f"the forget set is empty ({name} has shape {c.shape})")
    if not (np.issubdtype(c.dtype, np.floating) or np.issubdtype(c.dtype, np.integer)):
        raise ValueError(f"{name} must hold real numbers, got dtype {c.dtype}")
    c = c.astype(np.float64)
    if not np.all(np.isfinite(c)):
        raise ValueError(f"{name} contains NaN or infinite confidences")
    return c


def _two_populations(unlearned_conf: Any, retrained_conf: Any, *, same_size: bool = True):
    u = _population(unlearned_conf, "unlearned_conf")
    r = _population(retrained_conf, "retrained_conf")
    if u.shape[1] != r.shape[1]:
        raise ValueError(
            f"the populations differ in forget-set size: unlearned_conf has {u.shape[1]} examples, "
            f"retrained_conf has {r.shape[1]}"
        )
    if same_size and u.shape[0] != r.shape[0]:
        raise ValueError(
            f"the populations differ in size: {u.shape[0]} unlearned vs {r.shape[0]} retrained models "
            "(the score compares equal populations)"
        )
    return u, r


def _outputs_labels(outputs: Any, labels: Any, name: str):
    a = np.asarray(outputs)
    if a.ndim not in (2, 3):
        raise ValueError(f"{name} must have shape [N_forget, C] or [N_models, N_forget, C], got {a.shape}")
    if a.shape[-2] == 0:
        raise ValueError(f"the forget set is empty ({name} has shape {a.shape})")
    if a.shape[-1] < 2:
        raise ValueError(f"{name} needs at least 2 classes, got shape {a.shape}")
    if a.dtype == bool or a.dtype.kind not in "fiuV":  # kind "V": ml_dtypes floats such as bfloat16
        raise ValueError(f"{name} must hold real numbers, got dtype {a.dtype}")
    if not np.all(np.isfinite(a.astype(np.float64))):
        raise ValueError(f"{name} contains NaN or infinite values")
    y = _validate.class_labels(labels, a.shape[-2], "labels", name)
    c = a.shape[-1]
    if np.any(y >= c):
        raise ValueError(f"labels holds class {int(y.max())} but {name} has {c} classes (labels must be in [0, {c}))")
    return a, y


def _mean_accuracy(acc: Any, name: str) -> float:
    a = np.asarray(acc, dtype=np.float64)
    if a.ndim > 1 or a.size == 0:
        raise ValueError(f"{name} must be a number or a non-empty 1-D array of per-model accuracies, got {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError(f"{name} must hold finite accuracies >= 0")
    return float(np.mean(a))


# --------------------------------------------------------------------------------------------------------
# the unlearning challenge's score
# --------------------------------------------------------------------------------------------------------
def challenge_logit_confidence(outputs: Any, labels: Any, *, probabilities: bool = False) -> np.ndarray:
    """The challenge's logit-scaled confidence ``φ = log(p_y + 1e-45) − log(Σ_{j≠y} p_j + 1e-45)`` (float64).

    ``outputs``: logits (or, with ``probabilities=True``, class probabilities) ``[N_forget, C]`` or
    ``[N_models, N_forget, C]``; ``labels``: ``[N_forget]``. Returns ``[N_forget]`` or ``[N_models, N_forget]``.

    As ``compute_logit_scaled_confidence`` of ``metric.py``: ``z − max_j z_j``, its exponential in the logits'
    own dtype (float32 logits stay float32 up to the exponential, so confidences saturate at
    ``log(1e45) ≈ 103.6`` where the float32 exponential underflows, exactly as there; other dtypes use float64),
    then float64 ``p = e / Σ e``, ``p_y`` and the sum of the other classes. Probabilities are renormalized,
    ``p / Σ_j p_j``, and then enter the same formula. Unlike :func:`~jaxunlearn.metrics.mia.logit_confidence`
    (LiRA's exact ``z_y − logsumexp_{j≠y} z_j``), the offsets bound φ to about ±103.6, as in the challenge.

    Example:
        >>> float(challenge_logit_confidence(np.array([[2.0, 0.0]]), np.array([0]))[0].round(6))   # log(e²/1)
        2.0
        >>> challenge_logit_confidence(np.array([[0.9, 0.1]]), np.array([1]), probabilities=True).round(4)
        array([-2.1972])
    """
    a, y = _outputs_labels(outputs, labels, "outputs")
    n, c = a.shape[-2:]
    if probabilities:
        p = a.astype(np.float64)
        if np.any(p < 0):
            raise ValueError("outputs holds negative probabilities")
        total = p.sum(axis=-1, keepdims=True)
        if np.any(total <= 0):
            raise ValueError("outputs holds a row of probabilities that sums to 0")
        p = p / total
    else:
        z = a if a.dtype in (np.float32, np.float64) else a.astype(np.float64)
        z = z - np.max(z, axis=-1, keepdims=True)
        p = np.asarray(np.exp(z), dtype=np.float64)
        p /= np.sum(p, axis=-1, keepdims=True)
    rows = np.arange(n)
    p_correct = p[..., rows, y]
    onehot = np.arange(c)[None, :] == y[:, None]
    p_wrong = np.sum(np.where(onehot, 0.0, p), axis=-1)
    return np.log(p_correct + CONFIDENCE_OFFSET) - np.log(p_wrong + CONFIDENCE_OFFSET)


def _threshold_epsilons(fpr: np.ndarray, fnr: np.ndarray, delta: float) -> np.ndarray:
    """ε of each threshold as in ``_get_epsilons``: inf where FPR = FNR = 0, NaN (discarded) where exactly one
    of them is 0, else ``max(0, nanmax(log(1 − δ − FPR) − log FNR, log(1 − δ − FNR) − log FPR))``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.log(1 - delta - fpr) - np.log(fnr)
        b = np.log(1 - delta - fnr) - np.log(fpr)
    eps = np.clip(np.fmax(a, b), 0.0, None)  # fmax = nanmax of the pair; NaN only if both are NaN
    perfect = (fpr + fnr) == 0
    one_zero = ~perfect & ((fpr * fnr) == 0)
    return np.where(perfect, np.inf, np.where(one_zero, np.nan, eps))


def _count_in(sorted_conf: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``#{c : lo ≤ c ≤ hi}`` for each (lo, hi) pair."""
    k = np.searchsorted(sorted_conf, hi, side="right") - np.searchsorted(sorted_conf, lo, side="left")
    return np.maximum(k, 0)


def _single_threshold_rates(pos: np.ndarray, neg: np.ndarray):
    """FPR, FNR of "positive iff c ≥ t" for t on ``linspace(min, max, ceil((max − min) · 100))`` of both."""
    both = np.concatenate([pos, neg])
    lo, hi = both.min(), both.max()
    t = np.linspace(lo, hi, int(np.ceil((hi - lo) * NUM_THRESHOLDS_PER_UNIT)))
    n = pos.shape[0]
    k_pos = n - np.searchsorted(np.sort(pos), t, side="left")  # #{pos ≥ t}
    k_neg = neg.shape[0] - np.searchsorted(np.sort(neg), t, side="left")  # #{neg ≥ t}
    return k_neg / neg.shape[0], (n - k_pos) / n


def _double_threshold_rates(pos: np.ndarray, neg: np.ndarray):
    """FPR, FNR of "positive iff l ≤ c ≤ r", the positive class being the population of smaller range P.

    Right thresholds ``r ∈ linspace(min P + w − 2, max P + 2, ceil(·100))`` with ``w = range(P)``; for each r,
    400 left thresholds ``l ∈ linspace(r − w − 2, r − w + 2, 400)``.
    """
    pos_diff = pos.max() - pos.min()
    neg_diff = neg.max() - neg.min()
    width = neg_diff if pos_diff > neg_diff else pos_diff
    if pos_diff >= neg_diff:
        pos, neg = neg, pos
    buffer = DOUBLE_THRESHOLD_BUFFER
    lo = pos.min() + width - buffer
    hi = pos.max() + buffer
    right = np.linspace(lo, hi, num=int(np.ceil((hi - lo) * NUM_THRESHOLDS_PER_UNIT)))
    num_left = int(np.ceil(2 * buffer * NUM_THRESHOLDS_PER_UNIT))
    left = np.linspace(right - width - buffer, right - width + buffer, num=num_left, axis=1)  # [R, L]
    right = np.broadcast_to(right[:, None], left.shape)
    n_pos, n_neg = pos.shape[0], neg.shape[0]
    k_pos = _count_in(np.sort(pos), left, right)
    k_neg = _count_in(np.sort(neg), left, right)
    return (k_neg / n_neg).ravel(), ((n_pos - k_pos) / n_pos).ravel()


def _example_epsilon(u: np.ndarray, r: np.ndarray, delta: float) -> float:
    if np.median(r) > np.median(u):
        pos, neg = r, u
    else:
        pos, neg = u, r
    pos_diff = pos.max() - pos.min()
    neg_diff = neg.max() - neg.min()
    largest = pos_diff if pos_diff > neg_diff else neg_diff
    smallest = neg_diff if pos_diff > neg_diff else pos_diff
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.float64(smallest) / np.float64(largest)  # 0/0 = NaN: not "peaky", as in metric.py
    if ratio < PEAKY_RATIO:
        return EPSILON_CAP
    best = -np.inf
    for fpr, fnr in (_double_threshold_rates(pos, neg), _single_threshold_rates(pos, neg)):
        eps = _threshold_epsilons(fpr, fnr, delta)
        eps = eps[~np.isnan(eps)]
        if eps.size:
            best = max(best, float(eps.max()))
    if best == -np.inf:  # no threshold survives: metric.py stops on an assertion; no evidence → ε = 0
        return 0.0
    return float(np.clip(best, 0.0, EPSILON_CAP))


def challenge_epsilons(unlearned_conf: Any, retrained_conf: Any, *, delta: float = DELTA) -> np.ndarray:
    """Per-example ε ``[N_forget]`` of the unlearning challenge (``_get_epsilons`` of ``metric.py``).

    ``unlearned_conf``, ``retrained_conf``: logit-scaled confidences ``[K, N_forget]`` of two populations of the
    same size K ≥ 2 (see :func:`challenge_logit_confidence`). For each example i, with ``U``, ``R`` its K
    unlearned and K retrained confidences:

    1. the positive population ``P`` is ``R`` if ``median R > median U`` (strictly), else ``U``; the other is
       ``Q``;
    2. "peaky" test: if ``min(range P, range Q) / max(range P, range Q) < 0.01`` (``range = max − min``),
       ``ε_i = 50`` (:data:`EPSILON_CAP`) and the rest is skipped (0/0 is not < 0.01);
    3. single-threshold rules "positive iff c ≥ t", ``t ∈ linspace(m, M, ceil((M − m)·100))`` with m, M the
       min and max of ``P ∪ Q``: ``FPR = #{Q ≥ t}/K``, ``FNR = #{P < t}/K``;
    4. double-threshold rules "positive iff l ≤ c ≤ r", positive = the population of smaller range ``S`` (the
       peakier, Q on ties), ``w = range S``: ``r ∈ linspace(min S + w − 2, max S + 2, ceil(·100))`` and for each
       r, ``l ∈ linspace(r − w − 2, r − w + 2, 400)``; FPR, FNR as above with inclusive ends;
    5. per rule: ``ε = inf`` if FPR = FNR = 0 (perfect separation); discarded if exactly one of them is 0 (too
       few samples); else ``ε = max(0, nanmax(log(1 − δ − FPR) − log FNR, log(1 − δ − FNR) − log FPR))``,
       discarded if both terms are NaN;
    6. ``ε_i = clip(max over the kept rules of both families, 0, 50)``.

    δ = 1e-5 (:data:`DELTA`). If no rule survives step 5 (both populations within the 0.01-wide grid of one
    value), ``ε_i = 0``; ``metric.py`` stops there with an assertion error. Rates are float64 here, float32 there.

    Example (3 models per population; example 0 identical, example 1 perfectly separated):
        >>> u = np.array([[0.0, 5.0], [1.0, 6.0], [2.0, 7.0]])
        >>> r = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
        >>> challenge_epsilons(u, r).tolist()
        [0.0, 50.0]
    """
    u, r = _two_populations(unlearned_conf, retrained_conf)
    if not (0.0 < float(delta) < 1.0):
        raise ValueError(f"delta must lie in (0, 1), got {delta!r}")
    return np.array([_example_epsilon(u[:, i], r[:, i], float(delta)) for i in range(u.shape[1])])


def challenge_points(epsilons: Any, num_models: int) -> np.ndarray:
    """Per-example points of the challenge's forget score, from ε (``compute_forget_score_from_confs``).

    With ``E = ceil(log(K − 1))`` (K models per population) there are ``B = 2E`` buckets ``[0.5j, 0.5(j + 1))``,
    ``j = 0 … B − 1``, worth ``2^{−j}`` points; an ε at or beyond ``E`` earns 0:

        ``points(ε) = 2^{−⌊2ε⌋}`` if ``ε < E``, else 0.

    K = 2 gives ``E = 0``: no bucket, every example earns 0 (as in ``metric.py``). K = 512 (the challenge's
    population) gives E = 7 and 14 buckets.

    Example:
        >>> challenge_points([0.0, 0.49, 0.5, 1.2, 6.9, 7.0, 50.0], num_models=512).tolist()
        [1.0, 1.0, 0.5, 0.25, 0.0001220703125, 0.0, 0.0]
    """
    e = np.asarray(epsilons, dtype=np.float64)
    if e.ndim != 1:
        raise ValueError(f"epsilons must be a 1-D array, got shape {e.shape}")
    if np.any(np.isnan(e)) or np.any(e < 0):
        raise ValueError("epsilons must be >= 0 and not NaN")
    if isinstance(num_models, bool) or not isinstance(num_models, (int, np.integer)) or num_models < 2:
        raise ValueError(f"num_models must be an integer >= 2, got {num_models!r}")
    max_epsilon = np.ceil(np.log(int(num_models) - 1))
    upper, points = [], []  # the bucket loop of metric.py: buckets [start, start + 0.5) while start + 0.5 ≤ E
    start, value = 0.0, 1.0
    while start + BUCKET_SIZE <= max_epsilon:
        upper.append(start + BUCKET_SIZE)
        points.append(value)
        value /= 2
        start += BUCKET_SIZE
    table = np.array(points + [0.0])
    return table[np.searchsorted(np.array(upper), e, side="right")]  # first bucket with ε < its upper edge


def challenge_forget_score(unlearned_conf: Any, retrained_conf: Any, *, delta: float = DELTA) -> float:
    """The challenge's forget score: ``(1/N_forget) Σ_i points(ε_i)`` ∈ [0, 1] (1 = indistinguishable).

    ``ε_i`` from :func:`challenge_epsilons`, ``points`` from :func:`challenge_points` with K = the number of
    unlearned models (``compute_forget_score_from_confs`` of ``metric.py``).

    Only the very same confidences score 1: two independent samples of one distribution do not, since each
    ε is the largest of ~160 000 noisy rate ratios, driven by the populations' tails (for two Gaussian
    populations of one law, ε ≈ 1.4–1.7 per example and the score ≈ 0.2, at K = 8 as at K = 512).
    Why, and why not with K: a rule that catches j models of one population and a single one of the other has
    ``ε = log(j)`` (e.g. the threshold just above the lowest positive: FNR = 1/K, 1 − FPR = j/K). A rule can
    always move to the tails, where the counts are small whatever K is, and the tail counts of two samples of
    one law fluctuate the same at every K: the best single threshold gives ε ≈ log 3 = 1.10 (median), the best
    interval ε ≈ log 4 – log 5 (1.4–1.6), at K = 8, 64 and 512 alike. Buckets [1, 1.5) and [1.5, 2) earn 0.25
    and 0.125 points, hence ≈ 0.19. K enters the points only through the cap ``E = ceil(log(K − 1))``
    (:func:`challenge_points`; K = 8: E = 2, K = 512: E = 7), which ε ≈ 1.6 does not reach: the ≈ 0.19 is not
    an effect of bucketing by K. So ≈ 0.19 is what a perfect unlearning method (its population drawn from
    Retrain's law) scores in expectation, and an independent Retrain population is the reference to read a
    method's score against.

    Example (two populations of 8 models drawn from the same distribution, and far apart):
        >>> rng = np.random.default_rng(0)
        >>> r = rng.normal(size=(8, 5))
        >>> challenge_forget_score(r, r), challenge_forget_score(r + 20.0, r)
        (1.0, 0.0)
    """
    u, r = _two_populations(unlearned_conf, retrained_conf)
    eps = challenge_epsilons(u, r, delta=delta)
    return float(np.mean(challenge_points(eps, u.shape[0])))


def challenge_score_from_confidence(
    unlearned_conf: Any,
    retrained_conf: Any,
    *,
    unlearned_retain_acc: Any,
    retrained_retain_acc: Any,
    unlearned_test_acc: Any,
    retrained_test_acc: Any,
    delta: float = DELTA,
) -> dict[str, Any]:
    """The challenge's final score from confidences ``[K, N_forget]`` and per-model accuracies.

    ``final = forget_score × (RA_u / RA_r) × (TA_u / TA_r)`` (``main.py``), where RA, TA are the mean retain and
    test accuracies over the models of the unlearned (u) and retrained (r) populations (each accuracy argument
    is a number or a per-model array; any consistent scale, e.g. fractions or percent).

    Returns ``{"epsilons": [N_forget], "points": [N_forget], "forget_score", "retain_ratio", "test_ratio",
    "final_score"}``.

    Example:
        >>> r = np.random.default_rng(0).normal(size=(4, 3))
        >>> out = challenge_score_from_confidence(r, r, unlearned_retain_acc=0.9, retrained_retain_acc=1.0,
        ...                                       unlearned_test_acc=[0.8, 0.8], retrained_test_acc=0.8)
        >>> out["forget_score"], round(out["final_score"], 4)
        (1.0, 0.9)
    """
    u, r = _two_populations(unlearned_conf, retrained_conf)
    ra_u = _mean_accuracy(unlearned_retain_acc, "unlearned_retain_acc")
    ra_r = _mean_accuracy(retrained_retain_acc, "retrained_retain_acc")
    ta_u = _mean_accuracy(unlearned_test_acc, "unlearned_test_acc")
    ta_r = _mean_accuracy(retrained_test_acc, "retrained_test_acc")
    if ra_r == 0 or ta_r == 0:
        raise ValueError("the retrained population's mean retain and test accuracies must be > 0 (ratio denominators)")
    eps = challenge_epsilons(u, r, delta=delta)
    points = challenge_points(eps, u.shape[0])
    forget = float(np.mean(points))
    retain_ratio, test_ratio = ra_u / ra_r, ta_u / ta_r
    return {
        "epsilons": eps,
        "points": points,
        "forget_score": forget,
        "retain_ratio": retain_ratio,
        "test_ratio": test_ratio,
        "final_score": forget * retain_ratio * test_ratio,
    }


def challenge_score(
    unlearned_outputs: Any,
    retrained_outputs: Any,
    labels: Any,
    *,
    unlearned_retain_acc: Any,
    retrained_retain_acc: Any,
    unlearned_test_acc: Any,
    retrained_test_acc: Any,
    probabilities: bool = False,
    delta: float = DELTA,
) -> dict[str, Any]:
    """The challenge's final score from the two populations' outputs on the forget set.

    ``unlearned_outputs``, ``retrained_outputs``: logits (or probabilities, ``probabilities=True``)
    ``[K, N_forget, C]``; ``labels``: ``[N_forget]``. Confidences by :func:`challenge_logit_confidence`
    (``log(p_y + 1e-45) − log(Σ_{j≠y} p_j + 1e-45)``), then :func:`challenge_score_from_confidence`:
    ``final = forget_score × (RA_u / RA_r) × (TA_u / TA_r)``.

    Example (the unlearned models are still sure of the forget labels; the retrained ones are not):
        >>> rng = np.random.default_rng(0)
        >>> labels = np.zeros(4, int)
        >>> retrained = np.stack([rng.normal(size=(8, 4)), np.zeros((8, 4))], -1)    # [K=8, N=4, C=2]
        >>> unlearned = retrained + np.array([9.0, 0.0])
        >>> out = challenge_score(unlearned, retrained, labels, unlearned_retain_acc=1.0, retrained_retain_acc=1.0,
        ...                       unlearned_test_acc=0.9, retrained_test_acc=0.9)
        >>> out["epsilons"].tolist(), out["final_score"]
        ([50.0, 50.0, 50.0, 50.0], 0.0)
    """
    u_out, _ = _outputs_labels(unlearned_outputs, labels, "unlearned_outputs")
    r_out, _ = _outputs_labels(retrained_outputs, labels, "retrained_outputs")
    for name, a in (("unlearned_outputs", u_out), ("retrained_outputs", r_out)):
        if a.ndim != 3:
            raise ValueError(f"{name} must have shape [N_models, N_forget, C], got {a.shape}")
    if u_out.shape[-1] != r_out.shape[-1]:
        raise ValueError(f"unlearned_outputs has {u_out.shape[-1]} classes but retrained_outputs has {r_out.shape[-1]}")
    u = challenge_logit_confidence(u_out, labels, probabilities=probabilities)
    r = challenge_logit_confidence(r_out, labels, probabilities=probabilities)
    return challenge_score_from_confidence(
        u,
        r,
        unlearned_retain_acc=unlearned_retain_acc,
        retrained_retain_acc=retrained_retain_acc,
        unlearned_test_acc=unlearned_test_acc,
        retrained_test_acc=retrained_test_acc,
        delta=delta,
    )


# --------------------------------------------------------------------------------------------------------
# U-LiRA
# --------------------------------------------------------------------------------------------------------
def ulira_scores(
    target_conf: Any, unlearned_conf: Any, retrained_conf: Any, *, global_variance: bool = False
) -> np.ndarray:
    """Per-example U-LiRA scores of target models (higher = looks unlearned rather than never trained on).

    ``unlearned_conf [K_u, N]``, ``retrained_conf [K_r, N]``: confidences of the shadow populations (models
    that trained on the forget set and unlearned it; models that never saw it), K_u, K_r ≥ 2;
    ``target_conf``: ``[N]`` or ``[T, N]``. Per example i, Gaussians are fitted to each shadow population:
    sample means ``μ_u,i``, ``μ_r,i`` and stds ``σ_u,i``, ``σ_r,i`` (ddof = 1; with ``global_variance=True`` one
    pooled within-example std per population), floored at 1e-6, and

        ``s_ti = log N(φ_ti; μ_u,i, σ_u,i²) − log N(φ_ti; μ_r,i, σ_r,i²)``

    (the online LiRA score of :func:`~jaxunlearn.metrics.mia.lira_scores_from_confidence` with the unlearned
    shadows as IN, the retrained ones as OUT). Returns the shape of ``target_conf``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> unlearned, retrained = 3.0 + rng.normal(size=(16, 2)), rng.normal(size=(16, 2))
        >>> s = ulira_scores(np.array([[3.0, 3.0], [0.0, 0.0]]), unlearned, retrained)
        >>> bool(np.all(s[0] > 0)), bool(np.all(s[1] < 0))
        (True, True)
    """
    u, r = _two_populations(unlearned_conf, retrained_conf, same_size=False)
    t = np.asarray(target_conf, dtype=np.float64)
    single = t.ndim == 1
    t2 = t[None] if single else t
    if t2.ndim != 2 or t2.shape[0] == 0 or t2.shape[1] != u.shape[1]:
        raise ValueError(f"target_conf must have shape [{u.shape[1]}] or [T, {u.shape[1]}], got {t.shape}")
    if not np.all(np.isfinite(t2)):
        raise ValueError("target_conf contains NaN or infinite confidences")
    shadows = np.concatenate([u, r], axis=0)
    is_unlearned = np.zeros(shadows.shape, dtype=bool)
    is_unlearned[: u.shape[0]] = True
    out = np.stack(
        [
            lira_scores_from_confidence(row, shadows, is_unlearned, online=True, global_variance=bool(global_variance))
            for row in t2
        ]
    )
    return out[0] if single else out


def ulira_attack(unlearned_conf: Any, retrained_conf: Any, *, global_variance: bool = False) -> dict[str, Any]:
    """Per-example U-LiRA over two populations, each model the target in turn (leave-one-out).

    For each of the ``K_u + K_r`` models m, the other models are the shadows (the unlearned ones as the
    "unlearned" population, the retrained ones as "never trained on") and :func:`ulira_scores` scores m on
    every forget example: ``s_mi = log N(φ_mi; μ_u,i, σ_u,i²) − log N(φ_mi; μ_r,i, σ_r,i²)`` with the Gaussians
    fitted without m. The ``(K_u + K_r) · N`` pairs (score, "m is unlearned") give the attack's ROC:
    ``auc`` (:func:`~jaxunlearn.metrics.mia.attack_auc`; 0.5 = the unlearned models look retrained) and
    ``tpr_at_1fpr`` (:func:`~jaxunlearn.metrics.mia.tpr_at_fpr` at FPR 1 %).

    Needs ≥ 3 models per population (2 shadows besides the target). With few models, leaving the target out
    of its own population's fit pulls the AUC of two populations of one law below 0.5 (≈ 0.42 at 8 + 8
    models, ≈ 0.5 from 16 + 16 on, for Gaussian populations). Returns ``{"scores": [K_u + K_r, N],
    "is_unlearned": bool[K_u + K_r, N], "auc", "tpr_at_1fpr"}``; rows are the unlearned models, then the
    retrained ones.

    Example (unlearned models still more confident on the forget set than retrained ones):
        >>> rng = np.random.default_rng(0)
        >>> out = ulira_attack(3.0 + rng.normal(size=(8, 10)), rng.normal(size=(8, 10)))
        >>> round(out["auc"], 3), round(out["tpr_at_1fpr"], 3), out["scores"].shape
        (0.989, 0.9, (16, 10))
    """
    u, r = _two_populations(unlearned_conf, retrained_conf, same_size=False)
    for name, pop in (("unlearned_conf", u), ("retrained_conf", r)):
        if pop.shape[0] < 3:
            raise ValueError(
                f"{name} holds {pop.shape[0]} models; leave-one-out U-LiRA needs at least 3 per population"
            )
    k_u = u.shape[0]
    every = np.concatenate([u, r], axis=0)
    scores = np.empty_like(every)
    for m in range(every.shape[0]):
        shadow_u = np.delete(u, m, axis=0) if m < k_u else u
        shadow_r = np.delete(r, m - k_u, axis=0) if m >= k_u else r
        scores[m] = ulira_scores(every[m], shadow_u, shadow_r, global_variance=global_variance)
    is_unlearned = np.zeros(every.shape, dtype=bool)
    is_unlearned[:k_u] = True
    flat_s, flat_m = scores.ravel(), is_unlearned.ravel()
    return {
        "scores": scores,
        "is_unlearned": is_unlearned,
        "auc": attack_auc(flat_s, flat_m),
        "tpr_at_1fpr": tpr_at_fpr(flat_s, flat_m, 0.01),
    }


# --------------------------------------------------------------------------------------------------------
# both, for one unlearned population against the retrained one
# --------------------------------------------------------------------------------------------------------
def population_scores(
    unlearned_conf: Any,
    retrained_conf: Any,
    *,
    unlearned_retain_acc: Any,
    retrained_retain_acc: Any,
    unlearned_test_acc: Any,
    retrained_test_acc: Any,
    delta: float = DELTA,
) -> dict[str, Any]:
    """The challenge's score and U-LiRA of one unlearned population against the retrained one.

    Inputs as :func:`challenge_score_from_confidence` (confidences ``[K, N_forget]`` of two populations of the
    same size K ≥ 2, per-model or mean accuracies). Returns its ``epsilons``, ``points``, ``forget_score``,
    ``retain_ratio`` = RA_u / RA_r, ``test_ratio`` = TA_u / TA_r and ``final_score`` = forget score × both
    ratios, plus :func:`ulira_attack`'s ``ulira_auc`` and ``ulira_tpr_at_1fpr`` (None below 3 models per
    population, where leave-one-out U-LiRA is undefined), and ``num_models`` = K.

    Example (the unlearned population is the retrained one shifted up: the attack sees it, the score drops):
        >>> rng = np.random.default_rng(0)
        >>> r = rng.normal(size=(16, 6))
        >>> same = population_scores(r, r, unlearned_retain_acc=1.0, retrained_retain_acc=1.0, unlearned_test_acc=0.9,
        ...                          retrained_test_acc=0.9)
        >>> far = population_scores(r + 5.0, r, unlearned_retain_acc=1.0, retrained_retain_acc=1.0,
        ...                         unlearned_test_acc=0.9, retrained_test_acc=0.9)
        >>> same["final_score"], round(same["ulira_auc"], 2) < 0.6, far["final_score"], far["ulira_auc"] > 0.99
        (1.0, True, 0.0, True)
    """
    out = challenge_score_from_confidence(
        unlearned_conf,
        retrained_conf,
        unlearned_retain_acc=unlearned_retain_acc,
        retrained_retain_acc=retrained_retain_acc,
        unlearned_test_acc=unlearned_test_acc,
        retrained_test_acc=retrained_test_acc,
        delta=delta,
    )
    u, r = _two_populations(unlearned_conf, retrained_conf)
    out["num_models"] = int(u.shape[0])
    if u.shape[0] >= 3:
        attack = ulira_attack(u, r)
        out["ulira_auc"], out["ulira_tpr_at_1fpr"] = attack["auc"], attack["tpr_at_1fpr"]
    else:
        out["ulira_auc"] = out["ulira_tpr_at_1fpr"] = None
    return out
