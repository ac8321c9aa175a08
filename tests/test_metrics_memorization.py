"""Tests for jaxunlearn.metrics.memorization (Feldman–Zhang subsampled estimator).

The training callable is test scaffolding from ``tests/_vmapped_mlp.py``: a one-hidden-layer MLP trained full-batch with
Adam, vmapped over K inclusion masks, standing in for the engine's vmapped trainer.
"""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from _vmapped_mlp import make_train_fn, mlp_logits
from sklearn.datasets import load_digits

from jaxunlearn.metrics import memorization as Z


# ---------------------------------------------------------------------------------------------------------
def test_subset_masks_are_balanced_seeded_and_about_the_right_size():
    m = Z.subset_masks(16, 500, 0.7, seed=3)
    assert m.shape == (16, 500) and m.dtype == bool
    assert np.all(m.sum(axis=0) == 11)  # round(0.7 · 16)
    assert abs(m.mean() - 11 / 16) < 1e-12
    assert np.all(np.abs(m.mean(axis=1) - 11 / 16) < 0.1)  # each model sees ≈ 70% of the data
    np.testing.assert_array_equal(m, Z.subset_masks(16, 500, 0.7, seed=3))
    assert not np.array_equal(m, Z.subset_masks(16, 500, 0.7, seed=4))
    assert np.all(Z.subset_masks(2, 10, 0.99).sum(axis=0) == 1)  # clipped so every example has an OUT model
    with pytest.raises(ValueError, match="num_models"):
        Z.subset_masks(1, 10, 0.7)
    with pytest.raises(ValueError, match="fraction"):
        Z.subset_masks(4, 10, 1.0)
    with pytest.raises(ValueError, match="num_examples"):
        Z.subset_masks(4, 0, 0.5)


def test_memorization_from_correctness_hand_toy():
    correct = np.array([[1, 1, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1], [1, 1, 1]])
    masks = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 1], [0, 1, 1], [1, 0, 0]], bool)
    # ex 0: IN {0,2,4} → 1, OUT {1,3} → 0          : 1
    # ex 1: IN {0,3}   → ½, OUT {1,2,4} → 1         : −½
    # ex 2: IN {2,3}   → ½, OUT {0,1,4} → ⅔         : −⅙
    np.testing.assert_allclose(Z.memorization_from_correctness(correct, masks), [1.0, -0.5, -1 / 6])
    np.testing.assert_allclose(
        Z.memorization_from_correctness(correct.astype(bool), masks.astype(int)), [1.0, -0.5, -1 / 6]
    )


def test_memorization_from_correctness_missing_side_warns_and_fills_zero():
    correct = np.array([[1, 1], [0, 1]])
    masks = np.array([[1, 1], [0, 1]], bool)  # example 1 is never OUT
    with pytest.warns(RuntimeWarning, match="1 example"):
        s = Z.memorization_from_correctness(correct, masks)
    np.testing.assert_array_equal(s, [1.0, 0.0])


def test_memorization_from_correctness_validation():
    with pytest.raises(ValueError, match="masks has shape"):
        Z.memorization_from_correctness(np.ones((3, 4)), np.ones((3, 5), bool))
    with pytest.raises(ValueError, match="correct must have shape"):
        Z.memorization_from_correctness(np.ones(4), np.ones(4, bool))
    with pytest.raises(ValueError, match="masks must be boolean"):
        Z.memorization_from_correctness(np.ones((2, 2)), np.full((2, 2), 2))


def test_heldout_accuracy_is_the_out_models_mean_and_completes_the_score():
    correct = np.array([[1, 1, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1], [1, 1, 1]])
    masks = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 1], [0, 1, 1], [1, 0, 0]], bool)
    # the OUT sides of test_memorization_from_correctness_hand_toy: {1,3} → 0, {1,2,4} → 1, {0,1,4} → ⅔
    h = Z.heldout_accuracy(correct, masks)
    np.testing.assert_allclose(h, [0.0, 1.0, 2 / 3])
    mean_in = (correct * masks).sum(0) / masks.sum(0)
    np.testing.assert_allclose(mean_in - h, Z.memorization_from_correctness(correct, masks))  # mem = in − out
    with pytest.raises(ValueError, match="1 example\\(s\\) were never held out"):
        Z.heldout_accuracy(np.array([[1, 1], [0, 1]]), np.array([[1, 1], [0, 1]], bool))
    with pytest.raises(ValueError, match="masks has shape"):
        Z.heldout_accuracy(np.ones((3, 4)), np.ones((3, 5), bool))


@pytest.mark.slow  # end to end: in the second CI step
def test_mislabelled_digits_are_more_memorized_than_clean_ones():
    d = load_digits()
    perm = np.random.default_rng(0).permutation(len(d.target))[:1000]
    x = (d.data[perm] / 16.0).astype(np.float32)
    y = d.target[perm].astype(np.int32)
    rng = np.random.default_rng(2)
    flipped = rng.choice(1000, 20, replace=False)
    y[flipped] = (y[flipped] + rng.integers(1, 10, 20)) % 10
    is_flipped = np.zeros(1000, bool)
    is_flipped[flipped] = True

    train_fn = make_train_fn(x, y, steps=300)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # balanced masks: every example has both sides
        scores, details = Z.memorization_scores(
            train_fn, mlp_logits, x, y, num_models=16, seed=0, batch_size=256, return_details=True
        )
    assert scores.shape == (1000,)
    assert details["masks"].shape == details["correct"].shape == (16, 1000)
    assert np.all((scores >= -1) & (scores <= 1))
    mean_flipped, mean_clean = scores[is_flipped].mean(), scores[~is_flipped].mean()
    print(f"memorization: mislabelled {mean_flipped:.3f}, clean {mean_clean:.3f}")
    assert mean_flipped > mean_clean + 0.5
    # nearly every mislabelled example is memorized; only a few (atypical) clean digits are
    assert (scores[is_flipped] > 0.5).mean() >= 0.9
    assert (scores[~is_flipped] > 0.5).mean() < 0.1
    again = Z.memorization_scores(train_fn, mlp_logits, x, y, num_models=16, seed=0)
    np.testing.assert_array_equal(scores, again)  # seeded: reproducible


def test_memorization_scores_validation():
    x, y = np.zeros((6, 3), np.float32), np.zeros(6, np.int32)
    logits = lambda p, x: x @ p["w"]
    with pytest.raises(ValueError, match="returned 2 models for 4 masks"):
        Z.memorization_scores(lambda m: {"w": jnp.zeros((2, 3, 2))}, logits, x, y, num_models=4)
    with pytest.raises(ValueError, match="num_models"):
        Z.memorization_scores(lambda m: None, logits, x, y, num_models=1)
    with pytest.raises(ValueError, match="y has 5 labels"):
        Z.memorization_scores(lambda m: None, logits, x, y[:5], num_models=4)
    with pytest.raises(ValueError, match="train_fn must be callable"):
        Z.memorization_scores(None, logits, x, y, num_models=4)
