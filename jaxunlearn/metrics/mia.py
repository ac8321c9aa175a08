"""Membership-inference metrics: SalUn-style MIA-efficacy and the likelihood-ratio attack (LiRA).

MIA-efficacy (SalUn / RUM / sharp-unlearn): an attack classifier is fitted on the unlearned model's outputs
for retain examples (members, label 1) vs test examples (non-members, label 0) and applied to the forget set;
MIA-efficacy = fraction of forget examples predicted NON-member (higher = the forget set looks more like
unseen data = better forgetting). One attack per feature, as SalUn's ``SVC_MIA``: ``correctness``,
``confidence`` (true-class probability), ``entropy``, ``m_entropy`` (modified entropy) and ``prob`` (the
whole softmax vector); SalUn reports the ``confidence`` attack, which is the ``mia`` key here.

LiRA (Carlini et al. 2022, "Membership inference attacks from first principles"): per-example Gaussian fits of
the logit-scaled confidence φ = log(p_y / (1 − p_y)) of shadow models that did (IN) / did not (OUT) train on
the example; online score = log N(φ; μ_in, σ_in²) − log N(φ; μ_out, σ_out²), offline score = −log Pr[Z ≥ φ],
Z ~ N(μ_out, σ_out²). Higher scores = more likely a member.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.svm import SVC

from jaxunlearn import _validate
from jaxunlearn.metrics.accuracy import (
    DEFAULT_BATCH_SIZE,
    logit_confidence_stacked,
    predict,
)
from jaxunlearn.metrics.memorization import subset_masks

__all__ = [
    "MIA_FEATURES",
    "MIA_ATTACKS",
    "mia_features",
    "mia_feature_sets",
    "mia_efficacy",
    "mia_efficacy_from_logits",
    "logit_confidence",
    "lira_scores",
    "lira_scores_from_confidence",
    "lira_attack",
    "attack_auc",
    "tpr_at_fpr",
]

#: Columns of :func:`mia_features`.
MIA_FEATURES = ("correctness", "confidence", "entropy", "m_entropy", "max_prob")
#: Attacks of :func:`mia_efficacy` (SalUn's ``SVC_MIA`` keys); ``mia`` = ``confidence``.
MIA_ATTACKS = ("correctness", "confidence", "entropy", "m_entropy", "prob")

_LOG_EPS = float(np.log(1e-30))  # SalUn clips probabilities at 1e-30 inside its logs


# --------------------------------------------------------------------------------------------------------
# features
# --------------------------------------------------------------------------------------------------------
def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _feature_parts(logits: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    logp_raw = _log_softmax(logits)
    p = np.exp(logp_raw)
    logp = np.maximum(logp_raw, _LOG_EPS)
    # log(1 − p) = log(−expm1(log p)): exact even when p is within 1e-16 of 1; clipped at log(1e-30)
    with np.errstate(divide="ignore"):
        log1mp = np.maximum(np.log(-np.expm1(np.minimum(logp_raw, 0.0))), _LOG_EPS)
    n = logits.shape[0]
    rows = np.arange(n)
    p_y = p[rows, labels]
    correct = (np.argmax(logits, axis=1) == labels).astype(np.float64)
    entropy = -(p * logp).sum(axis=1)
    onehot = np.zeros_like(p, dtype=bool)
    onehot[rows, labels] = True
    m_entropy = -(1.0 - p_y) * logp[rows, labels] - np.where(onehot, 0.0, p * log1mp).sum(axis=1)
    return {
        "correctness": correct,
        "confidence": p_y,
        "entropy": entropy,
        "m_entropy": m_entropy,
        "max_prob": p.max(axis=1),
        "prob": p,
    }


def _check_logits_labels(logits, labels, logits_name="logits", labels_name="labels"):
    logits = _validate.logits(logits, logits_name)
    labels = _validate.class_labels(labels, logits.shape[0], labels_name, logits_name)
    if np.any(labels >= logits.shape[1]):
        raise ValueError(f"{labels_name} holds a class >= the {logits.shape[1]} classes of {logits_name}")
    return logits, labels


def mia_features(logits: Any, labels: Any) -> np.ndarray:
    """Per-example membership features ``[N, 5]`` (float64) from logits, columns :data:`MIA_FEATURES`:

    0. ``correctness``  ``[argmax_j z_j = y]`` ∈ {0, 1}
    1. ``confidence``   ``p_y`` (true-class softmax probability; SalUn's "confidence")
    2. ``entropy``      ``−Σ_j p_j log p_j``
    3. ``m_entropy``    Song & Mittal's modified entropy ``−(1 − p_y) log p_y − Σ_{j≠y} p_j log(1 − p_j)``
    4. ``max_prob``     ``max_j p_j`` (top-1 confidence; a 5th column distinct from ``confidence``, which
       already IS the true-class probability)

    ``p = softmax(z)`` in float64; every ``log`` argument is clipped below at 1e-30 as in SalUn, and
    ``log(1 − p_j)`` is computed as ``log(−expm1(log p_j))`` so confident predictions stay exact.
    Note: SalUn's ``m_entropy`` code indexes ``[:, labels]`` (whole columns) and takes ``log p`` where it means
    ``log(1 − p)``; this is the formula of the Song & Mittal paper, not that code.

    Example:
        >>> mia_features(np.array([[2.0, 0.0]]), np.array([0]))[0, :2].round(4).tolist()
        [1.0, 0.8808]
    """
    logits, labels = _check_logits_labels(logits, labels)
    parts = _feature_parts(logits, labels)
    return np.stack([parts[k] for k in MIA_FEATURES], axis=1)


def mia_feature_sets(logits: Any, labels: Any) -> dict[str, np.ndarray]:
    """The inputs of SalUn's per-feature attacks: ``{name: [N, d]}`` for ``name`` in :data:`MIA_ATTACKS`.

    ``correctness, confidence, entropy, m_entropy`` are the ``[N, 1]`` columns of :func:`mia_features`;
    ``prob`` is the whole softmax vector ``[N, C]``.

    Example:
        >>> mia_feature_sets(np.zeros((3, 4)), np.zeros(3, int))["prob"].shape
        (3, 4)
    """
    logits, labels = _check_logits_labels(logits, labels)
    parts = _feature_parts(logits, labels)
    return {k: (parts[k] if k == "prob" else parts[k][:, None]) for k in MIA_ATTACKS}


# --------------------------------------------------------------------------------------------------------
# SalUn-style MIA efficacy
# --------------------------------------------------------------------------------------------------------
def _binary_rule_predict(x_mem: np.ndarray, x_non: np.ndarray, x_target: np.ndarray) -> np.ndarray:
    """Bayes rule for a {0, 1} feature on balanced classes: member iff P(v | member) >= P(v | non-member)."""
    pred = np.zeros(x_target.shape[0], dtype=bool)
    for v in (0.0, 1.0):
        member = np.mean(x_mem == v) >= np.mean(x_non == v)
        pred[x_target == v] = member
    return pred


def _svc_predict(x_mem: np.ndarray, x_non: np.ndarray, x_target: np.ndarray) -> np.ndarray:
    xs = np.concatenate([x_mem, x_non], axis=0)
    ys = np.concatenate([np.ones(len(x_mem)), np.zeros(len(x_non))])
    clf = SVC(C=3, gamma="auto", kernel="rbf")
    clf.fit(xs, ys)
    return clf.predict(x_target) > 0.5


def _shadow_indices(n_retain: int, n_test: int, max_shadow: int, seed: int):
    """Balanced shadow draw: n = min(n_retain, n_test, max_shadow) sorted indices from each set, seeded."""
    if isinstance(max_shadow, bool) or not isinstance(max_shadow, (int, np.integer)) or max_shadow < 1:
        raise ValueError(f"max_shadow must be a positive integer, got {max_shadow!r}")
    n = min(n_retain, n_test, int(max_shadow))
    ri = np.sort(np.random.default_rng([seed, 0]).choice(n_retain, size=n, replace=False))
    ti = np.sort(np.random.default_rng([seed, 1]).choice(n_test, size=n, replace=False))
    return ri, ti


def mia_efficacy_from_logits(
    retain_logits: Any,
    retain_labels: Any,
    test_logits: Any,
    test_labels: Any,
    forget_logits: Any,
    forget_labels: Any,
    *,
    seed: int = 0,
    max_shadow: int = 5000,
    attacks: Sequence[str] | None = None,
) -> dict[str, float]:
    """SalUn-style MIA-efficacy from precomputed logits (see :func:`mia_efficacy`).

    Shadow set: ``n = min(|retain|, |test|, max_shadow)`` retain examples (label 1, members) and ``n`` test
    examples (label 0, non-members), each drawn without replacement (seeded by ``seed``).
    For every attack ``a`` in :data:`MIA_ATTACKS` a classifier is fitted on the shadow features and applied to
    the forget features; the result is ``efficacy_a = (1/|F|) Σ_{i∈F} [attack_a(x_i) = non-member]``.
    Attacks: ``sklearn.svm.SVC(kernel="rbf", C=3, gamma="auto")`` on the raw features, as SalUn; the binary
    ``correctness`` feature uses the equivalent exact rule (member iff the value is at least as frequent among
    members as among non-members — ties count as member, the pessimistic choice for the unlearner).

    Returns ``{"correctness", "confidence", "entropy", "m_entropy", "prob", "mia"}`` with
    ``mia = confidence`` (the number SalUn and sharp-unlearn report as MIA-efficacy), all in [0, 1].
    ``attacks`` restricts the computed attacks (``confidence`` is always run, for ``mia``): each SVC costs
    O(n²) — with the default ``max_shadow=5000`` (10 000 shadow points) all five take ~15–20 s on 2 CPU cores.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> logits = lambda n, margin: np.stack([margin + rng.normal(size=n), np.zeros(n)], 1)
        >>> y = lambda n: np.zeros(n, int)
        >>> out = mia_efficacy_from_logits(logits(200, 6.0), y(200), logits(200, 1.0), y(200),
        ...                                logits(50, 1.0), y(50))    # forget set looks like test data
        >>> out["mia"] > 0.8
        True
    """
    r_logits, r_labels = _check_logits_labels(retain_logits, retain_labels, "retain_logits", "retain_labels")
    t_logits, t_labels = _check_logits_labels(test_logits, test_labels, "test_logits", "test_labels")
    f_logits, f_labels = _check_logits_labels(forget_logits, forget_labels, "forget_logits", "forget_labels")
    c = r_logits.shape[1]
    for name, arr in (("test_logits", t_logits), ("forget_logits", f_logits)):
        if arr.shape[1] != c:
            raise ValueError(f"{name} has {arr.shape[1]} classes but retain_logits has {c}")
    wanted = _check_attacks(attacks)
    ri, ti = _shadow_indices(len(r_labels), len(t_labels), max_shadow, seed)
    mem = mia_feature_sets(r_logits[ri], r_labels[ri])
    non = mia_feature_sets(t_logits[ti], t_labels[ti])
    tgt = mia_feature_sets(f_logits, f_labels)
    out: dict[str, float] = {}
    for a in wanted:
        if a == "correctness":
            pred_member = _binary_rule_predict(mem[a][:, 0], non[a][:, 0], tgt[a][:, 0])
        else:
            pred_member = _svc_predict(mem[a], non[a], tgt[a])
        out[a] = float(1.0 - np.mean(pred_member))
    out["mia"] = out["confidence"]
    return out


def _check_attacks(attacks: Sequence[str] | None) -> tuple[str, ...]:
    if attacks is None:
        return MIA_ATTACKS
    if isinstance(attacks, str):
        attacks = [attacks]
    unknown = [a for a in attacks if a not in MIA_ATTACKS]
    if unknown:
        raise ValueError(f"attacks holds unknown attack(s) {unknown}; choose from {MIA_ATTACKS}")
    return tuple(a for a in MIA_ATTACKS if a in attacks or a == "confidence")


def _check_pair(pair: Any, name: str):
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise ValueError(f"{name} must be an (x, y) tuple")
    x = _validate.examples(pair[0], f"{name}[0]")
    y = _validate.class_labels(pair[1], int(x.shape[0]), f"{name}[1]", f"{name}[0]")
    return x, y


def mia_efficacy(
    logits_fn: Callable,
    params: Any,
    retain: tuple,
    test: tuple,
    forget: tuple,
    *,
    seed: int = 0,
    max_shadow: int = 5000,
    attacks: Sequence[str] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, float]:
    """SalUn-style MIA-efficacy of a model on its forget set (higher = better forgetting).

    ``retain``, ``test``, ``forget`` are ``(x, y)`` tuples. The model's logits on the three sets are computed
    with :func:`~jaxunlearn.metrics.accuracy.predict`, then :func:`mia_efficacy_from_logits` fits one attack
    per feature on retain (members) vs test (non-members), balanced and capped at ``max_shadow`` each, and
    returns per attack ``efficacy = |{i ∈ F : predicted non-member}| / |F|``, plus ``mia`` (= ``confidence``).
    ``attacks`` (default: all of :data:`MIA_ATTACKS`) restricts which attacks run; ``confidence`` always does.

    Example (inputs are the logits, scaled by the model's one parameter; the model is confident on the
    retain set only, and the forget set looks like the test set):
        >>> rng = np.random.default_rng(0)
        >>> def examples(n, margin):
        ...     return np.stack([margin + rng.normal(size=n), np.zeros(n)], 1).astype(np.float32), np.zeros(n, int)
        >>> res = mia_efficacy(lambda w, x: w * x, 1.0, examples(100, 6.0), examples(100, 1.0), examples(40, 1.0),
        ...                    attacks=["confidence"])
        >>> sorted(res), res["mia"] > 0.8               # most forget examples are judged non-members
        (['confidence', 'mia'], True)
    """
    _check_attacks(attacks)
    xr, yr = _check_pair(retain, "retain")
    xt, yt = _check_pair(test, "test")
    xf, yf = _check_pair(forget, "forget")
    batch_size = _validate.batch_size(batch_size)
    # only the shadow examples are needed: draw them here (same draw as mia_efficacy_from_logits, so the
    # result equals mia_efficacy_from_logits on the full logits) and evaluate the model on those only
    ri, ti = _shadow_indices(len(yr), len(yt), max_shadow, seed)
    xr, yr, xt, yt = xr[ri], yr[ri], xt[ti], yt[ti]
    zr = predict(logits_fn, params, xr, batch_size)
    zt = predict(logits_fn, params, xt, batch_size)
    zf = predict(logits_fn, params, xf, batch_size)
    return mia_efficacy_from_logits(zr, yr, zt, yt, zf, yf, seed=seed, max_shadow=max_shadow, attacks=attacks)


# --------------------------------------------------------------------------------------------------------
# LiRA
# --------------------------------------------------------------------------------------------------------
def logit_confidence(logits: Any, labels: Any) -> np.ndarray:
    """LiRA's logit-scaled confidence ``φ_i = log(p_y / (1 − p_y)) = z_y − logsumexp_{j≠y} z_j`` (float64).

    Accepts logits ``[N, C]`` or stacked ``[K, N, C]`` (then returns ``[K, N]``); ``labels`` is ``[N]``.

    Example:
        >>> logit_confidence(np.array([[2.0, 0.0]]), np.array([0]))   # log(0.8808 / 0.1192)
        array([2.])
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim not in (2, 3):
        raise ValueError(f"logits must have shape [N, C] or [K, N, C], got {z.shape}")
    if z.shape[-1] < 2 or z.shape[-2] == 0:
        raise ValueError(f"logits needs at least one example and 2 classes, got shape {z.shape}")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits contains non-finite values")
    y = _validate.class_labels(labels, z.shape[-2], "labels", "logits")
    if np.any(y >= z.shape[-1]):
        raise ValueError("labels holds a class >= the number of classes of logits")
    onehot = np.zeros(z.shape[-2:], dtype=bool)
    onehot[np.arange(len(y)), y] = True
    z_y = np.where(onehot, z, 0.0).sum(axis=-1)
    others = np.where(onehot, -np.inf, z)
    mx = others.max(axis=-1, keepdims=True)
    lse = mx[..., 0] + np.log(np.exp(others - mx).sum(axis=-1))
    return z_y - lse


def _gauss_logpdf(x, mu, sigma):
    return -0.5 * ((x - mu) / sigma) ** 2 - np.log(sigma) - 0.5 * np.log(2.0 * np.pi)


def _fit(conf: np.ndarray, mask: np.ndarray, global_variance: bool, name: str):
    """Per-example mean and std of conf[k, i] over k with mask[k, i]; std pooled over examples if global."""
    cnt = mask.sum(axis=0)
    if np.any(cnt == 0):
        raise ValueError(
            f"shadow_in_mask leaves {int((cnt == 0).sum())} example(s) without any {name} "
            "shadow model (train more shadows)"
        )
    mu = np.where(mask, conf, 0.0).sum(axis=0) / cnt
    sq = np.where(mask, (conf - mu) ** 2, 0.0)
    if global_variance:
        dof = int(cnt.sum() - cnt.size)
        if dof < 1:
            raise ValueError(f"need at least 2 {name} shadow confidences for one example to estimate a variance")
        sigma = np.full_like(mu, np.sqrt(sq.sum() / dof))
    else:
        if np.any(cnt < 2):
            raise ValueError(f"per-example variance needs >= 2 {name} shadows per example; use global_variance=True")
        sigma = np.sqrt(sq.sum(axis=0) / (cnt - 1))
    return mu, np.maximum(sigma, 1e-6)


def lira_scores_from_confidence(
    target_conf: Any, shadow_conf: Any, shadow_in_mask: Any, *, online: bool = True, global_variance: bool | None = None
) -> np.ndarray:
    """LiRA membership scores ``[N]`` from logit-scaled confidences (higher = more likely a member).

    ``target_conf``: φ of the attacked model ``[N]``; ``shadow_conf``: φ of K shadow models ``[K, N]``;
    ``shadow_in_mask``: ``bool[K, N]``, True where shadow k trained on example i. For each example,
    μ_in, σ_in (μ_out, σ_out) are the mean and std of φ over the IN (OUT) shadows, and

    * online:  ``s_i = log N(φ_i; μ_in, σ_in²) − log N(φ_i; μ_out, σ_out²)``
    * offline: ``s_i = −log Pr[Z ≥ φ_i]``, ``Z ~ N(μ_out, σ_out²)`` (one-sided test, OUT shadows only)

    ``global_variance``: ``True`` uses one σ_in and one σ_out for all examples — the pooled WITHIN-example
    variance ``Σ_i Σ_k (φ_ki − μ_i)² / Σ_i (n_i − 1)`` (Carlini et al.'s code pools raw values, which also
    counts between-example spread; the within-example pool is the unbiased version of the paper's
    "fixed variance"); ``False`` uses per-example sample stds (ddof = 1, needs ≥ 2 IN and ≥ 2 OUT shadows per
    example); ``None`` (default) picks global when K < 64, as the paper advises for few shadows.
    Stds are floored at 1e-6. Means are sample means (the reference code uses the median).

    Example:
        >>> shadows = np.array([[4.0, 0.1], [3.6, 0.3], [0.2, 3.9], [-0.1, 4.2]])   # φ of 4 shadows, 2 examples
        >>> in_mask = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], bool)
        >>> s = lira_scores_from_confidence(np.array([3.8, 0.0]), shadows, in_mask)
        >>> bool(s[0] > 0 > s[1])      # example 0 looks IN, example 1 looks OUT
        True
    """
    t = np.asarray(target_conf, dtype=np.float64)
    sc = np.asarray(shadow_conf, dtype=np.float64)
    m = np.asarray(shadow_in_mask)
    if t.ndim != 1 or t.size == 0:
        raise ValueError(f"target_conf must be a non-empty 1-D array, got shape {t.shape}")
    if sc.ndim != 2 or sc.shape[1] != t.shape[0]:
        raise ValueError(f"shadow_conf must have shape [K, {t.shape[0]}], got {sc.shape}")
    if m.shape != sc.shape:
        raise ValueError(f"shadow_in_mask has shape {m.shape} but shadow_conf has shape {sc.shape}")
    if m.dtype != bool:
        if not np.all((m == 0) | (m == 1)):
            raise ValueError("shadow_in_mask must be boolean (or 0/1)")
        m = m.astype(bool)
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(sc))):
        raise ValueError("target_conf / shadow_conf contain non-finite values")
    if global_variance is None:
        global_variance = sc.shape[0] < 64
    mu_out, sd_out = _fit(sc, ~m, bool(global_variance), "OUT")
    if online:
        mu_in, sd_in = _fit(sc, m, bool(global_variance), "IN")
        return _gauss_logpdf(t, mu_in, sd_in) - _gauss_logpdf(t, mu_out, sd_out)
    z = (t - mu_out) / sd_out
    return -np.asarray(log_ndtr(jnp.asarray(-z)), dtype=np.float64)  # −log sf(z) = −log Φ(−z)


def lira_scores(
    target_logits: Any,
    target_labels: Any,
    shadow_logits: Any,
    shadow_in_mask: Any,
    *,
    online: bool = True,
    global_variance: bool | None = None,
) -> np.ndarray:
    """LiRA scores ``[N]`` from logits: ``target_logits [N, C]``, ``shadow_logits [K, N, C]``, labels ``[N]``.

    ``φ = logit_confidence(·, target_labels)`` (``z_y − logsumexp_{j≠y} z_j``) for the target and every shadow,
    then :func:`lira_scores_from_confidence` (online: ``log N(φ; μ_in, σ_in²) − log N(φ; μ_out, σ_out²)``;
    offline: ``−log Pr_{Z~N(μ_out, σ_out²)}[Z ≥ φ]``).

    Example (8 shadows; each example is IN for 4 of them, which are more confident on it):
        >>> rng = np.random.default_rng(0)
        >>> in_mask = np.arange(8)[:, None] % 2 == np.arange(2)[None]              # bool[K=8, N=2]
        >>> margin = np.where(in_mask, 3.0, 0.5) + 0.1 * rng.normal(size=(8, 2))
        >>> shadow_logits = np.stack([margin, np.zeros_like(margin)], -1)          # [K, N, C=2]
        >>> target_logits = np.array([[3.0, 0.0], [0.5, 0.0]])                    # trained on example 0 only
        >>> scores = lira_scores(target_logits, np.array([0, 0]), shadow_logits, in_mask)
        >>> bool(scores[0] > 0 > scores[1])                                        # member, non-member
        True
    """
    zt = np.asarray(target_logits)
    zs = np.asarray(shadow_logits)
    if zt.ndim != 2:
        raise ValueError(f"target_logits must have shape [N, C], got {zt.shape}")
    if zs.ndim != 3 or zs.shape[1:] != zt.shape:
        raise ValueError(f"shadow_logits must have shape [K, {zt.shape[0]}, {zt.shape[1]}], got {zs.shape}")
    phi_t = logit_confidence(zt, target_labels)
    phi_s = logit_confidence(zs, target_labels)
    return lira_scores_from_confidence(phi_t, phi_s, shadow_in_mask, online=online, global_variance=global_variance)


def _check_scores_members(scores: Any, is_member: Any):
    s = np.asarray(scores, dtype=np.float64)
    m = np.asarray(is_member)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"scores must be a non-empty 1-D array, got shape {s.shape}")
    if m.shape != s.shape:
        raise ValueError(f"is_member has shape {m.shape} but scores has shape {s.shape}")
    if m.dtype != bool:
        if not np.all((m == 0) | (m == 1)):
            raise ValueError("is_member must be boolean (or 0/1)")
        m = m.astype(bool)
    if m.all() or not m.any():
        raise ValueError("is_member must contain both members and non-members")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contains non-finite values")
    return s, m


def attack_auc(scores: Any, is_member: Any) -> float:
    """Area under the ROC curve of a membership attack (``scores``: higher = member), via scikit-learn.

    ``AUC = Pr[s_member > s_nonmember] + ½ Pr[s_member = s_nonmember]``; 0.5 = chance.

    Example:
        >>> attack_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
        0.75
    """
    s, m = _check_scores_members(scores, is_member)
    return float(roc_auc_score(m, s))


def tpr_at_fpr(scores: Any, is_member: Any, fpr: float = 0.01) -> float:
    """True-positive rate at a fixed false-positive rate: ``max {TPR(τ) : FPR(τ) ≤ fpr}`` over thresholds τ
    of the rule "member iff score ≥ τ" (the ROC point Carlini et al. report, e.g. TPR at 1% FPR).

    Example:
        >>> tpr_at_fpr([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [1, 1, 0, 1, 0, 0], fpr=0.0)   # 2 of 3 members
        0.6666666666666666
    """
    if not (0.0 <= float(fpr) <= 1.0):
        raise ValueError(f"fpr must lie in [0, 1], got {fpr!r}")
    s, m = _check_scores_members(scores, is_member)
    f, t, _ = roc_curve(m, s, drop_intermediate=False)
    return float(t[f <= float(fpr) + 1e-12].max())


def lira_attack(
    train_fn: Callable[[Any], Any],
    logits_fn: Callable,
    x: Any,
    y: Any,
    *,
    num_shadows: int,
    target_index: int | None = 0,
    seed: int = 0,
    online: bool = True,
    global_variance: bool | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, Any]:
    """Run LiRA end to end with ``K = num_shadows + 1`` models trained by ``train_fn``.

    1. ``masks = subset_masks(K, N, 0.5, seed=seed)``: every example IN for exactly ``round(K/2)`` random
       models (Python rounding, e.g. 8 of 17; Carlini et al.'s balanced construction);
    2. ``stacked = train_fn(jnp.asarray(masks))`` (leading axis K on every leaf; the engine's vmapped trainer);
    3. ``φ[k, i]`` via ``jax.vmap`` over the K models (jitted batches);
    4. model ``target_index`` is the target, the other K − 1 its shadows:
       ``scores = lira_scores_from_confidence(φ[t], φ[others], masks[others])``, ``is_member = masks[t]``.
       ``target_index=None`` makes every model the target in turn (leave-one-out, as in Carlini et al.'s
       evaluation) and concatenates the K·N (score, is_member) pairs.

    Returns ``{"scores", "is_member", "auc", "tpr_at_1fpr", "masks", "confidence"}`` (confidence = φ ``[K, N]``).
    Needs ``num_shadows >= 3``; LiRA is meant for tens to hundreds of shadows (per-example variances from 64).
    All K models are trained in ONE ``train_fn`` call and evaluated in one vmap, so memory scales with K.

    Example (the lookup "model" of :func:`~jaxunlearn.metrics.memorization.memorization_scores`: it knows
    exactly the examples it trained on, so membership is plain to see):
        >>> import jax
        >>> x, y = np.eye(6, dtype=np.float32), np.array([0, 0, 0, 0, 1, 2])
        >>> def train_fn(masks):
        ...     return {"w": masks[:, :, None] * jax.nn.one_hot(y, 3) + 0.5 * jax.nn.one_hot(0, 3)}
        >>> out = lira_attack(train_fn, lambda p, x: x @ p["w"], x, y, num_shadows=5, target_index=None)
        >>> out["auc"], out["tpr_at_1fpr"], out["scores"].shape, out["confidence"].shape   # K·N pairs
        (1.0, 1.0, (36,), (6, 6))
    """
    if not callable(train_fn):
        raise ValueError(f"train_fn must be callable, got {type(train_fn).__name__}")
    if isinstance(num_shadows, bool) or not isinstance(num_shadows, (int, np.integer)) or num_shadows < 3:
        raise ValueError(
            f"num_shadows must be an integer >= 3 (every example needs IN and OUT shadows "
            f"besides the target), got {num_shadows!r}"
        )
    x = _validate.examples(x)
    n = int(x.shape[0])
    y = _validate.class_labels(y, n)
    k = int(num_shadows) + 1
    if target_index is not None and (
        isinstance(target_index, bool) or not isinstance(target_index, (int, np.integer)) or not 0 <= target_index < k
    ):
        raise ValueError(f"target_index must be None or an integer in [0, {k}), got {target_index!r}")
    masks = subset_masks(k, n, 0.5, seed=seed)
    stacked = train_fn(jnp.asarray(masks))
    got = _validate.num_models(stacked, "train_fn(masks)")
    if got != k:
        raise ValueError(f"train_fn(masks) returned {got} models for {k} masks")
    conf = logit_confidence_stacked(logits_fn, stacked, x, y, batch_size).astype(np.float64)
    targets = range(k) if target_index is None else [int(target_index)]
    scores, members = [], []
    for t in targets:
        others = np.arange(k) != t
        scores.append(
            lira_scores_from_confidence(
                conf[t], conf[others], masks[others], online=online, global_variance=global_variance
            )
        )
        members.append(masks[t])
    s = np.concatenate(scores)
    m = np.concatenate(members)
    return {
        "scores": s,
        "is_member": m,
        "auc": attack_auc(s, m),
        "tpr_at_1fpr": tpr_at_fpr(s, m, 0.01),
        "masks": masks,
        "confidence": conf,
    }
