"""Evaluation metrics (a leaf layer: imports only jax, numpy, optax and scikit-learn).

* :mod:`~jaxunlearn.metrics.accuracy` — batched prediction, accuracy, per-example loss, ToW / ToW-MIA,
  average gap, speed-up, mean ± std over seeds.
* :mod:`~jaxunlearn.metrics.mia` — SalUn-style MIA-efficacy (per-feature SVC attacks) and LiRA.
* :mod:`~jaxunlearn.metrics.memorization` — Feldman–Zhang subsampled memorization scores.

Convention: ``logits_fn(params, x) -> logits`` (pure, jit-able); anything that needs training takes a
``train_fn(masks: bool[K, N]) -> stacked params`` supplied by the engine.
"""

from jaxunlearn.metrics import accuracy, memorization, mia
from jaxunlearn.metrics.accuracy import (
    accuracy as accuracy_score,
)
from jaxunlearn.metrics.accuracy import (
    aggregate_seeds,
    average_gap,
    correctness,
    correctness_stacked,
    logit_confidence_stacked,
    mean_std,
    per_example_loss,
    predict,
    predict_stacked,
    speedup,
    tow,
    tow_mia,
)
from jaxunlearn.metrics.memorization import memorization_from_correctness, memorization_scores, subset_masks
from jaxunlearn.metrics.mia import (
    attack_auc,
    lira_attack,
    lira_scores,
    lira_scores_from_confidence,
    logit_confidence,
    mia_efficacy,
    mia_efficacy_from_logits,
    mia_feature_sets,
    mia_features,
    tpr_at_fpr,
)

__all__ = [
    "accuracy",
    "memorization",
    "mia",
    "accuracy_score",
    "aggregate_seeds",
    "average_gap",
    "correctness",
    "correctness_stacked",
    "logit_confidence_stacked",
    "mean_std",
    "per_example_loss",
    "predict",
    "predict_stacked",
    "speedup",
    "tow",
    "tow_mia",
    "memorization_from_correctness",
    "memorization_scores",
    "subset_masks",
    "attack_auc",
    "lira_attack",
    "lira_scores",
    "lira_scores_from_confidence",
    "logit_confidence",
    "mia_efficacy",
    "mia_efficacy_from_logits",
    "mia_feature_sets",
    "mia_features",
    "tpr_at_fpr",
]
