"""LiRA with shadow models trained by the library's vmapped trainer (``runner.vmapped_train_fn``:
``engine.train_many``, one compiled program for K models) on digits with mislabelled canaries."""

import numpy as np
import pytest

from jaxunlearn import data, engine, metrics, models
from jaxunlearn.runner import JobConfig, build_model, vmapped_train_fn


@pytest.mark.slow
def test_lira_with_vmapped_shadow_models_separates_canaries():
    ds = data.load("digits", seed=0, max_train=300)
    y = ds.y_train.copy()
    canaries = np.arange(20)
    y[canaries] = (y[canaries] + 1 + np.arange(20) % 9) % 10  # wrong labels: only memorization fits them
    cfg = JobConfig(model="mlp", pretrain_epochs=30, pretrain_lr=0.05, batch_size=32, progress=False)
    apply_fn, _, state = models.split_model(build_model(cfg, ds, 0))
    dd = engine.DeviceData.from_numpy(ds.x_train, y)
    train_fn = vmapped_train_fn(cfg, ds, apply_fn, dd, seed=0)
    out = metrics.lira_attack(
        train_fn, models.logits_fn(apply_fn, state), ds.x_train, y, num_shadows=8, target_index=None, seed=0
    )
    k, n = out["masks"].shape
    assert (k, n) == (9, len(y))
    is_canary = np.tile(np.isin(np.arange(n), canaries), k)
    canary_auc = metrics.attack_auc(out["scores"][is_canary], out["is_member"][is_canary])
    assert canary_auc > 0.9  # trained-on canaries are recognised
    assert out["auc"] > 0.5
