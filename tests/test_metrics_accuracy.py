"""Tests for jaxunlearn.metrics.accuracy: batched evaluation, ToW family, seed aggregation."""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxunlearn.metrics import accuracy as A

RNG = np.random.default_rng(0)
X = RNG.normal(size=(2500, 5)).astype(np.float32)
W = RNG.normal(size=(5, 4)).astype(np.float32)
Y = RNG.integers(0, 4, size=2500).astype(np.int32)


def linear_logits(p, x):
    return x @ p["w"] + p["b"]


PARAMS = {"w": jnp.asarray(W), "b": jnp.asarray([0.1, -0.2, 0.0, 0.3])}


def _np_logits(w, b, x):
    return x.astype(np.float64) @ np.asarray(w, np.float64) + np.asarray(b, np.float64)


# ---------------------------------------------------------------------------------------------------------
# batched evaluation
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch_size", [1000, 4096, 7])
def test_predict_matches_direct_computation_across_padded_batches(batch_size):
    x = X[:503] if batch_size == 7 else X
    got = A.predict(linear_logits, PARAMS, x, batch_size=batch_size)
    want = _np_logits(PARAMS["w"], PARAMS["b"], x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_accuracy_correctness_and_loss_match_numpy():
    z = _np_logits(PARAMS["w"], PARAMS["b"], X)
    pred = z.argmax(1)
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    loss = lse - z[np.arange(len(Y)), Y]
    assert A.accuracy(linear_logits, PARAMS, X, Y, batch_size=1000) == pytest.approx(np.mean(pred == Y))
    np.testing.assert_array_equal(A.correctness(linear_logits, PARAMS, X, Y, batch_size=1000), pred == Y)
    np.testing.assert_allclose(
        A.per_example_loss(linear_logits, PARAMS, X, Y, batch_size=1000), loss, rtol=1e-5, atol=1e-5
    )


def test_one_compilation_per_logits_fn_and_batch_shape():
    traces = []

    def counting_logits(p, x):
        traces.append(x.shape)
        return x @ p["w"]

    params = {"w": jnp.asarray(W)}
    A.predict(counting_logits, params, X, batch_size=1000)  # 3 batches, last one padded
    A.predict(counting_logits, params, X[:2100], batch_size=1000)  # same batch shape: no retrace
    A.accuracy(counting_logits, params, X, Y, batch_size=1000)  # another statistic: one more trace
    assert traces == [(1000, 5), (1000, 5)]


def test_stacked_evaluation_matches_a_loop_over_models():
    ws = np.stack([W, -W, 2 * W]).astype(np.float32)
    bs = np.stack([np.zeros(4), np.ones(4), np.arange(4)]).astype(np.float32)
    stacked = {"w": jnp.asarray(ws), "b": jnp.asarray(bs)}
    logits = A.predict_stacked(linear_logits, stacked, X, batch_size=1000)
    correct = A.correctness_stacked(linear_logits, stacked, X, Y, batch_size=1000)
    phi = A.logit_confidence_stacked(linear_logits, stacked, X, Y, batch_size=1000)
    assert logits.shape == (3, 2500, 4) and correct.shape == phi.shape == (3, 2500)
    for k in range(3):
        z = _np_logits(ws[k], bs[k], X)
        np.testing.assert_allclose(logits[k], z, rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(correct[k], z.argmax(1) == Y)
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        py = p[np.arange(len(Y)), Y]
        np.testing.assert_allclose(phi[k], np.log(py) - np.log1p(-py), rtol=1e-4, atol=1e-3)


def test_logit_confidence_is_finite_for_saturated_predictions():
    stacked = {"w": jnp.asarray([[[300.0, 0.0], [0.0, 300.0]]]), "b": jnp.zeros((1, 2))}
    phi = A.logit_confidence_stacked(linear_logits, stacked, np.eye(2, dtype=np.float32), np.array([0, 1]))
    np.testing.assert_allclose(phi, [[300.0, 300.0]])  # log(p/(1−p)) although p rounds to 1 in float32


def test_input_validation_names_the_argument():
    with pytest.raises(ValueError, match="y has 3 labels but x has 4"):
        A.accuracy(linear_logits, PARAMS, X[:4], Y[:3])
    with pytest.raises(ValueError, match="x is empty"):
        A.predict(linear_logits, PARAMS, X[:0])
    with pytest.raises(ValueError, match="x is empty"):
        A.accuracy(linear_logits, PARAMS, X[:0], Y[:0])
    with pytest.raises(ValueError, match="y must be a 1-D array"):
        A.accuracy(linear_logits, PARAMS, X[:2], Y[:2, None])
    with pytest.raises(ValueError, match="batch_size"):
        A.predict(linear_logits, PARAMS, X, batch_size=0)
    with pytest.raises(ValueError, match="y must hold integer"):
        A.accuracy(linear_logits, PARAMS, X[:2], np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="logits_fn"):
        A.predict("not a function", PARAMS, X)
    with pytest.raises(ValueError, match="stacked_params"):
        A.predict_stacked(linear_logits, {"w": jnp.zeros((2, 5, 4)), "b": jnp.zeros((3, 4))}, X)


# ---------------------------------------------------------------------------------------------------------
# ToW family
# ---------------------------------------------------------------------------------------------------------
REF = {"forget_acc": 0.92, "retain_acc": 0.99, "test_acc": 0.90, "mia": 0.15}


def test_tow_of_a_result_against_itself_is_one():
    assert A.tow(REF, REF) == 1.0
    assert A.tow(REF, REF, signed=True) == 1.0
    assert A.tow_mia(REF, REF) == 1.0
    assert A.average_gap(REF, REF) == 0.0


def test_tow_matches_hand_computation():
    res = {"forget_acc": 0.70, "retain_acc": 0.95, "test_acc": 0.86}
    # |ΔFA| = .22, |ΔRA| = .04, |ΔTA| = .04
    assert A.tow(res, REF) == pytest.approx(0.78 * 0.96 * 0.96)
    # reference code: (1 − (FA − FA_ref))(1 − (RA_ref − RA))(1 − (TA_ref − TA))
    assert A.tow(res, REF, signed=True) == pytest.approx(1.22 * 0.96 * 0.96)


def test_signed_tow_signs_follow_the_reference_code():
    # a result that is worse in every expected direction: signed == absolute
    worse = {"forget_acc": 0.97, "retain_acc": 0.95, "test_acc": 0.85}
    assert A.tow(worse, REF, signed=True) == pytest.approx(A.tow(worse, REF))
    assert A.tow(worse, REF) == pytest.approx(0.95 * 0.96 * 0.95)
    # forgetting MORE than Retrain (FA below ref) is rewarded by the signed score, penalized by the absolute
    more_forgetting = {"forget_acc": 0.82, "retain_acc": 0.99, "test_acc": 0.90}
    assert A.tow(more_forgetting, REF) == pytest.approx(0.90)
    assert A.tow(more_forgetting, REF, signed=True) == pytest.approx(1.10)
    # higher retain / test accuracy than Retrain likewise
    better_ra = {"forget_acc": 0.92, "retain_acc": 1.0, "test_acc": 0.93}
    assert A.tow(better_ra, REF, signed=True) == pytest.approx(1.01 * 1.03)
    assert A.tow(better_ra, REF) == pytest.approx(0.99 * 0.97)


def test_tow_mia_average_gap_and_speedup_hand_values():
    res = {"forget_acc": 0.80, "retain_acc": 0.97, "test_acc": 0.88, "mia": 0.35}
    assert A.tow_mia(res, REF) == pytest.approx(0.80 * 0.98 * 0.98)
    assert A.average_gap(res, REF) == pytest.approx((0.12 + 0.02 + 0.02 + 0.20) / 4)
    assert A.average_gap(res, REF, keys=["forget_acc"]) == pytest.approx(0.12)
    assert A.speedup(4.0, 100.0) == 25.0


def test_tow_validation():
    with pytest.raises(ValueError, match=r"acc\['forget_acc'\] must lie in \[0, 1\]"):
        A.tow({"forget_acc": 92.0, "retain_acc": 0.9, "test_acc": 0.9}, REF)
    with pytest.raises(ValueError, match=r"ref\['test_acc'\]"):
        A.tow(REF, {"forget_acc": 0.9, "retain_acc": 0.9, "test_acc": -0.1})
    with pytest.raises(ValueError, match="lacks the key 'retain_acc'"):
        A.tow({"forget_acc": 0.9, "test_acc": 0.9}, REF)
    with pytest.raises(ValueError, match="lacks the key 'mia'"):
        A.tow_mia({"forget_acc": 0.9, "retain_acc": 0.9, "test_acc": 0.9}, REF)
    with pytest.raises(ValueError, match="seconds"):
        A.speedup(0.0, 10.0)
    with pytest.raises(ValueError, match="share none"):
        A.average_gap({"x": 0.1}, {"y": 0.2})


# ---------------------------------------------------------------------------------------------------------
# seeds
# ---------------------------------------------------------------------------------------------------------
def test_mean_std_uses_sample_std():
    out = A.mean_std([0.2, 0.4, 0.9])
    assert out["mean"] == pytest.approx(0.5)
    assert out["std"] == pytest.approx(np.sqrt(((0.3) ** 2 + 0.1**2 + 0.4**2) / 2))
    assert A.mean_std([0.7]) == {"mean": 0.7, "std": 0.0}
    with pytest.raises(ValueError, match="values is empty"):
        A.mean_std([])


def test_aggregate_seeds_nested_and_non_numeric():
    seeds = [
        {"tow": 0.9, "method": "ft", "ok": True, "ft": {"forget_acc": 0.5, "seconds": 2}},
        {"tow": 0.7, "method": "ft", "ok": False, "ft": {"forget_acc": 0.7, "seconds": 4}},
    ]
    out = A.aggregate_seeds(seeds)
    assert out["tow"]["mean"] == pytest.approx(0.8)
    assert out["tow"]["std"] == pytest.approx(np.std([0.9, 0.7], ddof=1))
    assert out["method"] == "ft" and out["ok"] is True
    assert out["ft"]["seconds"] == {"mean": 3.0, "std": pytest.approx(np.sqrt(2.0))}
    assert out["ft"]["forget_acc"]["mean"] == pytest.approx(0.6)
    assert A.aggregate_seeds([{"a": np.float32(0.5)}])["a"] == {"mean": 0.5, "std": 0.0}
    with pytest.raises(ValueError, match="results is empty"):
        A.aggregate_seeds([])
    with pytest.raises(ValueError, match=r"results\[1\]"):
        A.aggregate_seeds([{"a": 1}, 3])


def test_jax_scalars_are_accepted_as_accuracies():
    res = {"forget_acc": jnp.float32(0.5), "retain_acc": np.float64(1.0), "test_acc": jax.numpy.array(0.9)}
    assert A.tow(res, res) == 1.0


@pytest.mark.parametrize("module", ["accuracy", "mia", "memorization"])
def test_docstring_examples_run(module):
    import importlib

    mod = importlib.import_module(f"jaxunlearn.metrics.{module}")
    result = doctest.testmod(mod, extraglobs={"np": np, "jnp": jnp}, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
