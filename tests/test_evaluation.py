"""Evaluation evidence on digits: membership inference separates the original model from Retrain,
Retrain's forget accuracy on a random forget set is close to its test accuracy, ToW(Retrain, Retrain) = 1.

Setting: 200 training examples, an MLP trained without weight decay for 100 epochs (so members and
non-members differ, as in the papers' CIFAR settings), a random 20 % forget set.
"""

import numpy as np
import pytest

from jaxunlearn import data, engine, metrics, models


@pytest.fixture(scope="module", params=[0, 1])
def trained(request):
    seed = request.param
    ds = data.load("digits", seed=seed, max_train=200)
    apply_fn, p0, s0 = models.split_model(models.build("mlp", num_classes=10, input_shape=ds.input_shape, seed=seed))
    dd = engine.DeviceData.from_numpy(ds.x_train, ds.y_train)
    forget = data.select_forget(ds.y_train, "random", 0.2, seed=seed)
    retain = data.retain_indices(len(ds.y_train), forget)
    opt = engine.OptimConfig(lr=0.05, weight_decay=0.0)
    kw = dict(optimizer=opt, epochs=100, batch_size=32, progress=False)
    orig = engine.train(apply_fn, p0, s0, dd, seed=seed, **kw)
    retrain = engine.train(apply_fn, p0, s0, dd, train_idx=retain, seed=seed + 1, **kw)
    return ds, apply_fn, forget, retain, orig, retrain


def _scores(ds, apply_fn, forget, retain, res):
    def ev(x, y):
        return engine.evaluate(apply_fn, res.params, res.model_state, x, y)

    f = ev(ds.x_train[forget], ds.y_train[forget])
    r = ev(ds.x_train[retain], ds.y_train[retain])
    t = ev(ds.x_test, ds.y_test)
    mia = metrics.mia_efficacy_from_logits(
        r["logits"], ds.y_train[retain], t["logits"], ds.y_test, f["logits"], ds.y_train[forget]
    )
    return {"forget_acc": f["accuracy"], "retain_acc": r["accuracy"], "test_acc": t["accuracy"], "mia": mia["mia"]}


def test_original_model_is_detected_as_member_more_than_retrain(trained):
    ds, apply_fn, forget, retain, orig, retrain = trained
    o = _scores(ds, apply_fn, forget, retain, orig)
    r = _scores(ds, apply_fn, forget, retain, retrain)
    member_rate_orig, member_rate_retrain = 1 - o["mia"], 1 - r["mia"]
    assert member_rate_orig >= 0.95
    assert member_rate_orig - member_rate_retrain >= 0.08


def test_retrain_forget_accuracy_is_close_to_its_test_accuracy(trained):
    ds, apply_fn, forget, retain, orig, retrain = trained
    r = _scores(ds, apply_fn, forget, retain, retrain)
    o = _scores(ds, apply_fn, forget, retain, orig)
    assert abs(r["forget_acc"] - r["test_acc"]) <= 0.07
    # while the original model fits its forget set better than unseen data
    assert o["forget_acc"] - o["test_acc"] > r["forget_acc"] - r["test_acc"] - 0.02


def test_tow_of_retrain_against_itself_is_one(trained):
    ds, apply_fn, forget, retain, orig, retrain = trained
    r = _scores(ds, apply_fn, forget, retain, retrain)
    assert metrics.tow(r, r) == 1.0
    assert metrics.tow_mia(r, r) == 1.0
    o = _scores(ds, apply_fn, forget, retain, orig)
    assert metrics.tow(o, r) < 1.0
    np.testing.assert_allclose(
        metrics.tow(o, r),
        (1 - abs(o["forget_acc"] - r["forget_acc"]))
        * (1 - abs(o["retain_acc"] - r["retain_acc"]))
        * (1 - abs(o["test_acc"] - r["test_acc"])),
    )
