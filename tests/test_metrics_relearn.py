"""Tests for jaxunlearn.metrics.relearn (relearning attack)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxunlearn.metrics import relearn


def _logits(params, x):
    return x @ params["w"] + params["b"]


def _loss(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(_logits(params, x), y).mean()


@pytest.fixture(scope="module")
def toy():
    """Two Gaussian blobs; an 'unlearned' linear model that predicts the wrong class on everything."""
    rng = np.random.default_rng(0)
    n = 80
    y = rng.integers(0, 2, size=n).astype(np.int32)
    centers = np.array([[-1.5, 0.0], [1.5, 0.0]])
    x = (centers[y] + 0.7 * rng.normal(size=(n, 2))).astype(np.float32)
    params = {"w": jnp.array([[1.0, -1.0], [0.0, 0.0]], jnp.float32), "b": jnp.zeros(2)}  # inverted
    return params, x, y


def test_forget_accuracy_recovers_and_steps_to_recover(toy):
    params, x, y = toy
    r0 = relearn.relearn_attack(_loss, _logits, params, x[:10], y[:10], x, y, steps=60, lr=0.5, eval_every=5)
    assert r0["steps"] == list(range(0, 61, 5))
    accs = np.asarray(r0["forget_acc"])
    assert accs.shape == (13,) and np.all((0 <= accs) & (accs <= 1))
    assert accs[0] < 0.2 and accs[-1] > 0.8  # relearning restores the forgotten decision
    assert accs[-1] > accs[0] and np.max(accs[: len(accs) // 2]) <= accs[-1] + 1e-9
    assert r0["steps_to_recover"] is None  # no threshold given
    thr = 0.5 * (accs[0] + accs[-1])
    r = relearn.relearn_attack(
        _loss, _logits, params, x[:10], y[:10], x, y, steps=60, lr=0.5, eval_every=5, threshold=thr
    )
    first = next(t for t, a in zip(r["steps"], r["forget_acc"]) if a >= thr)
    assert r["steps_to_recover"] == first and first > 0
    assert all(a < thr for t, a in zip(r["steps"], r["forget_acc"]) if t < first)
    assert r["auc"] == pytest.approx(np.trapezoid(accs, r["steps"]) / 60)
    assert len(r["train_loss"]) == 12 and r["train_loss"][-1] < r["train_loss"][0]
    never = relearn.relearn_attack(
        _loss, _logits, params, x[:10], y[:10], x, y, steps=10, lr=1e-4, eval_every=5, threshold=1.0
    )
    assert never["steps_to_recover"] is None


def test_minibatch_adam_and_custom_optimizer(toy):
    params, x, y = toy
    kw = dict(steps=12, eval_every=5, batch_size=4, optimizer="adam", lr=0.1)
    a = relearn.relearn_attack(_loss, _logits, params, x[:20], y[:20], x, y, key=jax.random.key(1), **kw)
    b = relearn.relearn_attack(_loss, _logits, params, x[:20], y[:20], x, y, key=jax.random.key(1), **kw)
    assert a["steps"] == [0, 5, 10, 12] and a["forget_acc"] == b["forget_acc"]
    assert a["forget_acc"][-1] > a["forget_acc"][0]
    c, p = relearn.relearn_attack(
        _loss,
        _logits,
        params,
        x[:20],
        y[:20],
        x,
        y,
        steps=6,
        eval_every=3,
        optimizer=optax.sgd(0.5, momentum=0.9),
        return_params=True,
    )
    assert jax.tree_util.tree_structure(p) == jax.tree_util.tree_structure(params)
    assert c["final_forget_acc"] == pytest.approx(float(np.mean(np.argmax(_logits(p, x), -1) == y)))
    z = relearn.relearn_attack(_loss, _logits, params, x[:20], y[:20], x, y, steps=0)
    assert z["steps"] == [0] and z["auc"] == z["forget_acc"][0]


def test_recovery_summary_and_generic_curve():
    s = relearn.recovery_summary([0, 5, 10], [0.1, 0.6, 0.9], threshold=0.5)
    assert s["steps_to_recover"] == 5
    assert s["auc"] == pytest.approx(((0.1 + 0.6) / 2 * 5 + (0.6 + 0.9) / 2 * 5) / 10)
    assert s["initial_forget_acc"] == 0.1 and s["final_forget_acc"] == 0.9 and s["max_forget_acc"] == 0.9
    assert relearn.recovery_summary([0, 5], [0.1, 0.2], threshold=0.5)["steps_to_recover"] is None
    assert relearn.recovery_summary([0], [0.3], threshold=0.3)["steps_to_recover"] == 0
    total = 12
    curve, state = relearn.relearn_curve(
        lambda s, k: s + k, lambda s: s / total, 0, steps=total, eval_every=5, threshold=0.8
    )
    assert curve["steps"] == [0, 5, 10, 12] and state == total
    assert curve["forget_acc"] == [t / total for t in curve["steps"]]
    assert curve["steps_to_recover"] == 10


def test_validation(toy):
    params, x, y = toy
    with pytest.raises(ValueError, match="steps"):
        relearn.relearn_attack(_loss, _logits, params, x, y, x, y, steps=-1)
    with pytest.raises(ValueError, match="eval_every"):
        relearn.relearn_attack(_loss, _logits, params, x, y, x, y, eval_every=0)
    with pytest.raises(ValueError, match="y_relearn"):
        relearn.relearn_attack(_loss, _logits, params, x, y[:5], x, y)
    with pytest.raises(ValueError, match="x_relearn"):
        relearn.relearn_attack(_loss, _logits, params, x[:0], y[:0], x, y)
    with pytest.raises(ValueError, match="y_forget"):
        relearn.relearn_attack(_loss, _logits, params, x, y, x, y[:3])
    with pytest.raises(ValueError, match="batch_size"):
        relearn.relearn_attack(_loss, _logits, params, x[:4], y[:4], x, y, batch_size=5)
    with pytest.raises(ValueError, match="optimizer"):
        relearn.relearn_attack(_loss, _logits, params, x, y, x, y, optimizer="lbfgs")
    with pytest.raises(ValueError, match="lr"):
        relearn.relearn_attack(_loss, _logits, params, x, y, x, y, lr=0.0)
    with pytest.raises(ValueError, match="threshold"):
        relearn.recovery_summary([0, 1], [0.1, 0.2], threshold=1.5)
    with pytest.raises(ValueError, match="threshold"):  # checked before any training
        relearn.relearn_attack(_loss, _logits, params, x, y, x, y, threshold=97.0)
    with pytest.raises(ValueError, match="increasing"):
        relearn.recovery_summary([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="forget_acc"):
        relearn.recovery_summary([0, 1], [0.1])


def _three_blobs():
    """Forget set: class 2 at (0, 3), which the 'unlearned' model sends to class 0; retain: classes 0 and 1."""
    rng = np.random.default_rng(1)
    xf = (np.array([0.0, 3.0]) + 0.3 * rng.normal(size=(30, 2))).astype(np.float32)
    yf = np.full(30, 2, np.int32)
    yr = rng.integers(0, 2, size=60).astype(np.int32)
    xr = (np.array([[-3.0, 0.0], [3.0, 0.0]])[yr] + 0.3 * rng.normal(size=(60, 2))).astype(np.float32)
    params = {"w": jnp.array([[-1.0, 1.0, 0.0], [1.0, 0.0, 0.0]], jnp.float32), "b": jnp.zeros(3)}
    return params, xf, yf, xr, yr


def test_relearn_protocol_sweeps_sizes_and_rates_every_step_with_a_retain_probe():
    params, xf, yf, xr, yr = _three_blobs()
    out = relearn.relearn_protocol(_loss, _logits, params, xf, yf, num_samples=(3, 10), lrs=(0.05, 0.5), steps=12,
                                   x_retain=xr, y_retain=yr, seed=3)  # fmt: skip
    curves = out["curves"]
    assert [(c["source"], c["num_samples"], c["lr"]) for c in curves] == [
        ("forget", 3, 0.05), ("forget", 3, 0.5), ("forget", 10, 0.05), ("forget", 10, 0.5),
        ("retain", 10, 0.05), ("retain", 10, 0.5),
    ]  # fmt: skip
    assert all(c["steps"] == list(range(13)) for c in curves)  # evaluated at every step
    # each attack is relearn_attack on the first n examples of the seed's permutation (nested subsets)
    order = np.random.default_rng(3).permutation(30)
    direct = relearn.relearn_attack(_loss, _logits, params, xf[order[:10]], yf[order[:10]], xf, yf, steps=12,
                                    lr=0.5, eval_every=1, key=jax.random.key(3))  # fmt: skip
    np.testing.assert_allclose(curves[3]["forget_acc"], direct["forget_acc"])
    # relearning on forget data brings the class back, and faster with more samples / a larger rate;
    # fine-tuning on retain data alone never does (the model did remove the class here)
    assert curves[3]["final_forget_acc"] == 1.0 and curves[0]["auc"] < curves[3]["auc"]
    assert max(c["max_forget_acc"] for c in curves if c["source"] == "retain") == 0.0
    s = out["summary"]
    assert s["forget_auc_max"] == max(c["auc"] for c in curves[:4]) and s["retain_probe_auc_mean"] == 0.0
    assert (
        relearn.relearn_protocol(_loss, _logits, params, xf, yf, num_samples=(3,), lrs=(0.1,), steps=2)["summary"][
            "retain_probe_auc_mean"
        ]
        is None
    )


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"num_samples": (0,)}, r"num_samples must lie in \[1, 30\]"),
        ({"num_samples": (31,)}, r"num_samples must lie in \[1, 30\]"),
        ({"lrs": (0.0,)}, "lrs must be finite numbers > 0"),
        ({"lrs": (float("nan"),)}, "lrs must be finite numbers > 0"),
        ({"lrs": ()}, "at least one entry"),
        ({"x_retain": np.zeros((2, 2), np.float32)}, "both x_retain and y_retain"),
    ],
)
def test_relearn_protocol_bad_input(kw, match):
    params, xf, yf, _, _ = _three_blobs()
    with pytest.raises(ValueError, match=match):
        relearn.relearn_protocol(_loss, _logits, params, xf, yf, steps=2, **{"num_samples": (5,), **kw})
