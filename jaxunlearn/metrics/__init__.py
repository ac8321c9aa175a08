"""Evaluation metrics (a leaf layer: imports only jax, numpy, optax and scikit-learn).

* :mod:`~jaxunlearn.metrics.accuracy` — batched prediction, accuracy, per-example loss, ToW / ToW-MIA,
  average gap, speed-up, mean ± std over seeds.
* :mod:`~jaxunlearn.metrics.mia` — SalUn-style MIA-efficacy (per-feature SVC attacks) and LiRA.
* :mod:`~jaxunlearn.metrics.memorization` — Feldman–Zhang subsampled memorization scores.
* :mod:`~jaxunlearn.metrics.entanglement` — RUM's entanglement score on penultimate features.
* :mod:`~jaxunlearn.metrics.features` — 2-D projections and before/after feature plots.
* :mod:`~jaxunlearn.metrics.landscape` — filter-normalized loss landscapes and their sharpness summary.
* :mod:`~jaxunlearn.metrics.relearn` — the relearning attack.
* :mod:`~jaxunlearn.metrics.stats` — paired differences over seeds with confidence intervals, the verdict rule.
* :mod:`~jaxunlearn.metrics.population` — over populations of unlearned and retrained models: the NeurIPS 2023
  unlearning challenge's forgetting-quality ε-score and the per-example U-LiRA attack.

Convention: ``logits_fn(params, x) -> logits`` (pure, jit-able); anything that needs training takes a
``train_fn(masks: bool[K, N]) -> stacked params`` supplied by the engine.
"""

from jaxunlearn.metrics import (  # noqa: I001
    accuracy,
    entanglement,
    features,
    landscape,
    memorization,
    mia,
    population,
    relearn,
    stats,
)
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
from jaxunlearn.metrics.entanglement import entanglement_from_features, entanglement_score
from jaxunlearn.metrics.features import plot_features, project_2d
from jaxunlearn.metrics.landscape import loss_surface, plot_surface, random_directions, sharpness_summary
from jaxunlearn.metrics.memorization import (
    heldout_accuracy,
    memorization_from_correctness,
    memorization_scores,
    subset_masks,
)
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
from jaxunlearn.metrics.population import (
    challenge_epsilons,
    challenge_forget_score,
    challenge_logit_confidence,
    challenge_points,
    challenge_score,
    challenge_score_from_confidence,
    ulira_attack,
    ulira_scores,
)
from jaxunlearn.metrics.relearn import recovery_summary, relearn_attack, relearn_protocol
from jaxunlearn.metrics.stats import paired_difference, verdict

__all__ = [
    "accuracy",
    "entanglement",
    "features",
    "landscape",
    "memorization",
    "mia",
    "population",
    "relearn",
    "challenge_epsilons",
    "challenge_forget_score",
    "challenge_logit_confidence",
    "challenge_points",
    "challenge_score",
    "challenge_score_from_confidence",
    "ulira_attack",
    "ulira_scores",
    "entanglement_from_features",
    "entanglement_score",
    "plot_features",
    "project_2d",
    "loss_surface",
    "plot_surface",
    "random_directions",
    "sharpness_summary",
    "recovery_summary",
    "relearn_attack",
    "relearn_protocol",
    "stats",
    "paired_difference",
    "verdict",
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
    "heldout_accuracy",
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

from jaxunlearn.metrics import lm  # noqa: E402,F401  (language-model metrics: metrics.lm.evaluate_lm, ...)
