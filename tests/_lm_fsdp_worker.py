"""Subprocess worker of tests/test_models_gpt.py: FSDP training of the GPT on 8 simulated CPU devices.

Usage: ``python tests/_lm_fsdp_worker.py OUT.json`` (sets ``XLA_FLAGS`` before jax is imported). Writes a
JSON dict: the max abs difference between the one-device and the 8-device (data 4 × model 2, FSDP) parameters
after a few epochs of plain AdamW and of SAM through ``engine.run``, and of an unlearning method (NPO with
SAM); the same for a hand-written ``make_step`` loop over :func:`jaxunlearn.models.gpt.fsdp_shardings`; how far
training moved the parameters, and the sharding of the largest parameter.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxunlearn import distributed, engine, models  # noqa: E402
from jaxunlearn.data.facts import make_facts  # noqa: E402
from jaxunlearn.methods import lm  # noqa: E402
from jaxunlearn.models import gpt  # noqa: E402
from jaxunlearn.plan import StepInfo, optimizer_kind  # noqa: E402


def maxdiff(a, b) -> float:
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


def main(out_path):
    corpus = make_facts(12, heldout=0.0, templates=1, seed=0)
    arrays = corpus.arrays()
    t = arrays["x"].shape[1]
    apply_fn, params, state = models.split_model(
        models.build("gpt", num_classes=corpus.tokenizer.vocab_size, input_shape=(t,), dim=64, depth=1, heads=4)
    )
    mesh = distributed.make_mesh(8, ("data", "model"), model=2)
    out = {"devices": jax.device_count()}
    idx = np.arange(len(corpus))
    base = dataclasses.replace(lm.LM_PRETRAIN_DEFAULT, lr=3e-3)
    for kind in ("sgd", "sam"):
        opt = optimizer_kind(kind, base, rho=0.05)
        kw = {"optimizer": opt, "epochs": 2, "batch_size": 16, "train_idx": idx, "loss": lm.lm_loss, "progress": False}
        one = engine.train(apply_fn, params, state, arrays, **kw)
        eight = engine.train(apply_fn, params, state, arrays, mesh=mesh, param_sharding="fsdp", **kw)
        out[f"train_{kind}_moved"] = maxdiff(one.params, params)
        out[f"train_{kind}_maxdiff"] = maxdiff(one.params, eight.params)
        out[f"train_{kind}_spec"] = str(max(jax.tree.leaves(eight.params), key=lambda a: a.size).sharding.spec)
    split = corpus.split([0, 1])
    ctx = lm.LMContext(
        apply_fn,
        params,
        state,
        arrays,
        split.retain_idx,
        split.forget_idx,
        epochs=2,
        batch_size=8,
        optimizer=optimizer_kind("sam", lm.LM_UNLEARN_DEFAULT, rho=0.05),
        options={"epochs": 2, "retain_weight": 1.0},  # two short epochs, not NPO's tuned 30
    )
    u1 = lm.unlearn("npo", ctx, progress=False)
    u8 = lm.unlearn("npo", ctx, progress=False, mesh=mesh, param_sharding="fsdp")
    out["npo_moved"], out["npo_maxdiff"] = maxdiff(u1.params, params), maxdiff(u1.params, u8.params)
    # a hand-written loop over the model's own FSDP rule (every leaf of >= 1024 entries split over "model")
    shard = gpt.fsdp_shardings(params, mesh)
    out["manual_sharded_leaves"] = sum(s.spec != jax.sharding.PartitionSpec() for s in jax.tree.leaves(shard))
    opt = optimizer_kind("sam", base, rho=0.05)
    step = jax.jit(engine.make_step(apply_fn, lm.lm_loss, opt))
    batch = {"retain": {k: arrays[k][:16] for k in ("x", "y", "mask")}}
    s1 = engine.init_state(params, state, opt)
    s8 = engine.init_state(jax.device_put(params, shard), state, opt)
    info = StepInfo.at(epoch=0, epochs=1, total_steps=5)
    b8 = distributed.shard_batch(batch, mesh)
    for _ in range(5):
        s1, _ = step(s1, batch, {}, info)
        s8, _ = step(s8, b8, {}, info)
    out["manual_maxdiff"] = maxdiff(s1.params, s8.params)
    out["manual_spec"] = str(s8.params["embed"]["embedding"].sharding.spec)
    with open(out_path, "w") as fh:
        json.dump(out, fh)


if __name__ == "__main__":
    main(sys.argv[1])
