"""engine.run_many: one plan for K models at once (jaxunlearn.engine.many).

Row k of a many-model run must equal the separate ``engine.run`` of model k's plan with seed ``seeds[k]``: for
multi-phase plans with per-model masks (Sharp MinMax), phases active in some epochs only (SCRUB's max steps),
plans that pass over the forget set (GA) and per-model random labels (RL), vmapped and unrolled.
"""

import dataclasses
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxunlearn import engine, methods, models, objectives
from jaxunlearn.engine import many as many_mod
from jaxunlearn.plan import OptimConfig, Phase, Plan, supervised_loss

K = 3
SEEDS = [5, 6, 7]


def _stack(trees):
    return jax.tree.map(lambda *a: jnp.stack(a), *trees)


def _row(tree, k):
    return jax.tree.map(lambda a: a[k], tree)


def _contexts(method_options=None, **kw):
    """K toy contexts on the same data: model k starts from its own (briefly trained) MLP, seed SEEDS[k]."""
    base = methods.toy_context(n=80, seed=0, epochs=2, batch_size=16, **kw)
    data = engine.DeviceData(base.x, base.y)
    ctxs = []
    for k in range(K):
        _, p, s = models.split_model(models.build("mlp", num_classes=3, input_shape=(4,), seed=100 + k, hidden=(8,)))
        p = engine.train(base.apply_fn, p, s, data, optimizer=OptimConfig(lr=0.1), epochs=2, batch_size=16,
                         seed=k, progress=False).params  # fmt: skip
        ctxs.append(dataclasses.replace(base, params=p, model_state=s, seed=SEEDS[k], options=method_options or {}))
    return ctxs, data


def _assert_rows_equal(stacked, separate, rtol=1e-5, atol=1e-6):
    for k, tree in enumerate(separate):
        for a, b in zip(jax.tree.leaves(stacked), jax.tree.leaves(tree)):
            np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b), rtol=rtol, atol=atol)


@pytest.mark.parametrize(
    "method,mode",
    [("sharp_minmax", "vmap"), ("sharp_minmax", "unroll"), ("scrub", "vmap"), ("ga", "unroll"), ("rl", "vmap")],
)
def test_run_many_rows_equal_separate_runs(method, mode):
    """K plans of one method (each model's own mask / teacher / random labels in hp) run together equal the K
    separate runs of engine.run with seeds[k]; the models really moved and differ from each other."""
    opts = {"epochs": 3, "msteps": 1} if method == "scrub" else {}
    ctxs, data = _contexts(method_options=opts, optimizer=OptimConfig(name="adamw", lr=0.01, sam="sam",
                                                                       schedule="constant"))  # fmt: skip
    recipes = [methods.get(method).recipe(c) for c in ctxs]
    plans = [r.plan for r in recipes]
    if method == "scrub":  # the max phase runs in epoch 0 only: the active pattern is part of the shared plan
        assert [plans[0].phases[0].is_active(e) for e in range(3)] == [True, False, False]
    params = _stack([c.params for c in ctxs])
    state = _stack([c.model_state for c in ctxs])
    kw = dict(retain_idx=ctxs[0].retain_idx, forget_idx=ctxs[0].forget_idx)
    res = engine.run_many(plans, ctxs[0].apply_fn, params, state, data, seeds=SEEDS, progress=False,
                          model_mode=mode, **kw)  # fmt: skip
    assert res.diverged is None and len(res.history) == plans[0].epochs and res.info["models"] == K
    separate = []
    for c, plan in zip(ctxs, plans):
        r = engine.run(plan, c.apply_fn, c.params, c.model_state, data, seed=c.seed, progress=False, **kw)
        separate.append(r.params)
        np.testing.assert_allclose(  # the per-model losses of the history are the separate runs' losses
            [h[f"loss/{plans[0].phases[-1].name}"] for h in r.history],
            [h[f"model_loss/{plans[0].phases[-1].name}"][len(separate) - 1] for h in res.history],
            rtol=1e-4,
            atol=1e-6,
        )
    _assert_rows_equal(res.params, separate)
    moved = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(res.params), jax.tree.leaves(params))]
    assert max(moved) > 1e-4  # (GA: learning rate 1e-4)
    assert not np.allclose(np.asarray(jax.tree.leaves(res.params)[0][0]), np.asarray(jax.tree.leaves(res.params)[0][1]))


def test_run_many_shares_one_plan_and_takes_per_model_index_rows():
    """One plan for every model (hp shared) with each model's own retain subset ([K, m] rows)."""
    ctxs, data = _contexts()
    plan = Plan((Phase("train", supervised_loss),), optimizer=OptimConfig(lr=0.05), epochs=2, batch_size=16)
    rng = np.random.default_rng(0)
    rows = np.stack([np.sort(rng.choice(len(data), 50, replace=False)) for _ in range(K)])
    params, state = _stack([c.params for c in ctxs]), _stack([c.model_state for c in ctxs])
    res = engine.run_many(plan, ctxs[0].apply_fn, params, state, data, retain_idx=rows, seeds=SEEDS, progress=False)
    separate = [
        engine.run(
            plan, c.apply_fn, c.params, c.model_state, data, retain_idx=rows[k], seed=SEEDS[k], progress=False
        ).params  # fmt: skip
        for k, c in enumerate(ctxs)
    ]
    _assert_rows_equal(res.params, separate)


def scaled_loss(apply_fn, params, model_state, batch, hp, info):
    """``hp["scale"] · CE(R)``: a huge scale makes one model of the population diverge."""
    loss, new_state = supervised_loss(apply_fn, params, model_state, batch, hp, info)
    return hp["scale"] * loss, new_state


def test_a_diverging_model_is_frozen_at_its_last_finite_epoch_and_the_others_go_on():
    ctxs, data = _contexts()
    mk = lambda s: Plan((Phase("train", scaled_loss),), optimizer=OptimConfig(lr=0.05), epochs=3, batch_size=16,
                        hp={"scale": jnp.float32(s)})  # fmt: skip
    plans = [mk(1.0), mk(1e38), mk(1.0)]
    params, state = _stack([c.params for c in ctxs]), _stack([c.model_state for c in ctxs])
    res = engine.run_many(plans, ctxs[0].apply_fn, params, state, data, retain_idx=np.arange(len(data)),
                          seeds=SEEDS, progress=False)  # fmt: skip
    assert res.diverged[0] is None and res.diverged[2] is None
    assert res.diverged[1]["epoch"] == 1 and "non-finite" in res.diverged[1]["reason"]
    assert res.history[0]["diverged_models"] == [1] and len(res.history) == 3
    for a, b in zip(jax.tree.leaves(res.params), jax.tree.leaves(params)):  # model 1: back to its start
        np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(res.params))
    for k in (0, 2):  # the others trained as if alone
        r = engine.run(plans[k], ctxs[k].apply_fn, ctxs[k].params, ctxs[k].model_state, data,
                       retain_idx=np.arange(len(data)), seed=SEEDS[k], progress=False)  # fmt: skip
        for a, b in zip(jax.tree.leaves(res.params), jax.tree.leaves(r.params)):
            np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b), rtol=1e-5, atol=1e-6)


class _Interrupt(Exception):
    pass


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    """Stopped during the end of epoch 2 of 4 (an exception from the progress hook, before that epoch's save), the
    run resumes from its checkpoint of epoch 1 and ends with exactly the parameters of a run never interrupted."""
    ctxs, data = _contexts(optimizer=OptimConfig(name="adamw", lr=0.01, schedule="constant"))
    plans = [methods.get("neggrad").recipe(dataclasses.replace(c, epochs=4)).plan for c in ctxs]
    params, state = _stack([c.params for c in ctxs]), _stack([c.model_state for c in ctxs])
    kw = dict(retain_idx=ctxs[0].retain_idx, forget_idx=ctxs[0].forget_idx, seeds=SEEDS, progress=False)
    full = engine.run_many(plans, ctxs[0].apply_fn, params, state, data, **kw)

    real = many_mod.Progress.epoch_end

    def stop_after_two(self, record):
        real(self, record)
        if record["epoch"] == 2:
            raise _Interrupt

    monkeypatch.setattr(many_mod.Progress, "epoch_end", stop_after_two)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(_Interrupt):
        engine.run_many(plans, ctxs[0].apply_fn, params, state, data, checkpoint_dir=ckpt, **kw)
    monkeypatch.setattr(many_mod.Progress, "epoch_end", real)
    res = engine.run_many(plans, ctxs[0].apply_fn, params, state, data, checkpoint_dir=ckpt, resume=True, **kw)
    assert res.resumed_from == 1 and [h["epoch"] for h in res.history] == [2, 3, 4]
    for a, b in zip(jax.tree.leaves(res.params), jax.tree.leaves(full.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_run_many_validation():
    ctxs, data = _contexts()
    params, state = _stack([c.params for c in ctxs]), _stack([c.model_state for c in ctxs])
    plan = Plan((Phase("train", supervised_loss),), epochs=1, batch_size=16)
    run = lambda p=plan, **kw: engine.run_many(p, ctxs[0].apply_fn, params, state, data, progress=False, **kw)  # noqa: E731
    idx = np.arange(40)
    with pytest.raises(ValueError, match="got 2 plans for K=3"):
        run([plan, plan], retain_idx=idx)
    with pytest.raises(ValueError, match="differ in batch_size"):
        run([plan, plan, dataclasses.replace(plan, batch_size=8)], retain_idx=idx)
    with pytest.raises(ValueError, match="only hp may differ"):
        other = dataclasses.replace(plan, phases=(Phase("train", scaled_loss),))
        run([plan, plan, other], retain_idx=idx)
    with pytest.raises(ValueError, match="2 rows for K=3"):
        run(retain_idx=np.stack([idx, idx]))
    with pytest.raises(ValueError, match="batch_size 16 is larger than the 10 retained examples"):
        run(retain_idx=np.arange(10))
    with pytest.raises(ValueError, match="one seed per model"):
        run(retain_idx=idx, seeds=[1, 2])
    with pytest.raises(ValueError, match="overlap"):
        run(retain_idx=idx, forget_idx=np.arange(30, 50))
    with pytest.raises(ValueError, match="leading axis"):
        engine.run_many(plan, ctxs[0].apply_fn, _row(params, 0), _row(state, 0), data, retain_idx=idx)
    with pytest.raises(ValueError, match="in-device source"):
        stream = engine.StreamingSource([{"x": np.zeros(4, np.float32), "y": 0}] * 4)
        engine.run_many(plan, ctxs[0].apply_fn, params, state, stream, retain_idx=np.arange(4))
    with pytest.raises(ValueError, match="model_mode must be one of"):
        run(retain_idx=idx, model_mode="scan")
    with pytest.raises(ValueError, match="one-phase plan"):
        two = Plan((Phase("a", supervised_loss), Phase("b", supervised_loss)), epochs=1, batch_size=16)
        run(two, retain_idx=idx, lr=0.1)


def test_objectives_in_the_toy_contexts_are_what_the_equality_tests_train():
    """The toy contexts hold three classes and a forget set the methods read (a guard for the tests above)."""
    ctxs, data = _contexts()
    assert len(ctxs[0].forget_idx) == 16 and int(jnp.max(data.y)) == 2
    logits, _ = ctxs[0].apply_fn(ctxs[0].params, ctxs[0].model_state, data.x)
    assert float(objectives.cross_entropy(logits, data.y)) < float(jnp.log(3.0))  # briefly trained: below chance


@pytest.mark.slow
def test_run_many_on_a_mesh_equals_the_one_device_run(tmp_path):
    """K = 4 models of a two-phase masked plan split over 2 CPU devices (vmap and unroll) equal the one-device
    run (a subprocess: the device count is fixed when JAX starts)."""
    script = textwrap.dedent(
        """
        import dataclasses, json, sys
        from jaxunlearn import distributed
        distributed.cpu_devices(2)
        import jax, jax.numpy as jnp, numpy as np
        from jaxunlearn import engine, methods, models
        from jaxunlearn.plan import OptimConfig
        base = methods.toy_context(n=80, epochs=2, batch_size=16, optimizer=OptimConfig(name="adamw", lr=0.01))
        ctxs = [dataclasses.replace(base, params=models.split_model(models.build(
            "mlp", num_classes=3, input_shape=(4,), seed=k, hidden=(8,)))[1], seed=k) for k in range(4)]
        plans = [methods.get("sharp_minmax").recipe(c).plan for c in ctxs]
        stack = lambda t: jax.tree.map(lambda *a: jnp.stack(a), *t)
        params, state = stack([c.params for c in ctxs]), stack([c.model_state for c in ctxs])
        data = engine.DeviceData(base.x, base.y)
        kw = dict(retain_idx=base.retain_idx, forget_idx=base.forget_idx, seeds=[0, 1, 2, 3], progress=False)
        one = engine.run_many(plans, base.apply_fn, params, state, data, **kw).params
        mesh = distributed.make_mesh(2)
        out = {}
        for mode in ("vmap", "unroll"):
            two = engine.run_many(plans, base.apply_fn, params, state, data, mesh=mesh, model_mode=mode, **kw).params
            out[mode] = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(two)))
            out[mode + "_spec"] = str(jax.tree.leaves(two)[0].sharding.spec)
        try:
            engine.run_many(plans[:3], base.apply_fn, *(jax.tree.map(lambda a: a[:3], t) for t in (params, state)),
                            data, mesh=mesh, **kw | {"seeds": [0, 1, 2]})
            out["indivisible"] = "no error"
        except ValueError as exc:
            out["indivisible"] = str(exc)
        print(json.dumps(out))
        """
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env, cwd=root)
    assert p.returncode == 0, p.stderr[-2000:]
    import json

    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["vmap"] < 1e-5 and out["unroll"] < 1e-5
    assert "data" in out["vmap_spec"] and "data" in out["unroll_spec"]
    assert "multiple of that many models" in out["indivisible"]


def test_weight_averaging_runs_end_at_the_average_of_the_trajectory():
    """engine.run and engine.run_many return the optimizer's weight average: with one step per epoch and a
    snapshot after every step, the mean of the plain run's epoch-end parameters."""
    ctxs, data = _contexts()
    retain = ctxs[0].retain_idx
    plain_cfg = OptimConfig(name="sgd", lr=0.05, momentum=0.0, weight_decay=0.0, schedule="constant")
    avg_cfg = dataclasses.replace(plain_cfg, average="uniform", average_start=0.0, average_every=1)
    plan = Plan((Phase("train", supervised_loss),), optimizer=avg_cfg, epochs=4, batch_size=len(retain))
    plain = dataclasses.replace(plan, optimizer=plain_cfg)
    assert plan.averaging_phase == 0 and plain.averaging_phase is None
    kw = dict(retain_idx=retain, progress=False)
    averaged = []
    for k, c in enumerate(ctxs):
        seen = []
        last = engine.run(plain, c.apply_fn, c.params, c.model_state, data, seed=SEEDS[k],
                          on_epoch_end=lambda e, p, s, seen=seen: seen.append(p), **kw).params  # fmt: skip
        want = jax.tree.map(lambda *a: sum(a) / len(a), *seen)
        got = engine.run(plan, c.apply_fn, c.params, c.model_state, data, seed=SEEDS[k], **kw).params
        for a, b, z in zip(jax.tree.leaves(got), jax.tree.leaves(want), jax.tree.leaves(last)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
            assert not np.allclose(np.asarray(a), np.asarray(z))  # not the last iterate
        averaged.append(got)
    params, state = _stack([c.params for c in ctxs]), _stack([c.model_state for c in ctxs])
    res = engine.run_many(plan, ctxs[0].apply_fn, params, state, data, seeds=SEEDS, **kw)
    _assert_rows_equal(res.params, averaged)
