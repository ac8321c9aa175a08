"""Data parallelism, per-device SAM, sharded curvature/evaluation, FSDP shardings and vmapped sweeps.

The mesh tests need 8 simulated CPU devices, which XLA only creates when
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` is set before jax is imported, so they run
``tests/_mp_worker.py dp`` in a subprocess and check its JSON report; the rest of the suite keeps its
single device. Budget: ~40 s (worker) + ~10 s (sweep) on 2 CPU cores.
"""

import dataclasses
import fcntl
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxunlearn import data, distributed, engine, models

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def dp_report(tmp_path_factory):
    """The worker's report, computed once per session (shared between pytest-xdist workers)."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the session's directory
    out = root / "dp.json"
    with open(root / "dp.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not out.exists():
            env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
            proc = subprocess.run(
                [sys.executable, os.path.join(HERE, "_mp_worker.py"), "dp", str(out) + ".tmp"],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert proc.returncode == 0, proc.stderr[-4000:]
            os.replace(str(out) + ".tmp", out)
    return json.loads(out.read_text())


@pytest.mark.slow
def test_data_parallel_training_matches_one_device(dp_report):
    """2 epochs of SGD and of (global) SAM on 8 devices: same parameters as on one device (the
    parameters moved by ~0.05, the runs agree to ~3e-8), and they come back replicated."""
    assert dp_report["devices"] == 8
    for sam in ("none", "sam"):
        assert dp_report[f"train_{sam}_moved"] > 1e-2
        assert dp_report[f"train_{sam}_maxdiff"] < 1e-5
        assert dp_report[f"train_{sam}_sharded_leaf"] == "P()"


@pytest.mark.slow
def test_data_parallel_unlearning_matches_one_device(dp_report):
    """Sharp MinMax (SAM, two phases, Hessian masks) on 8 devices equals the one-device run."""
    assert dp_report["unlearn_moved"] > 1e-2
    assert dp_report["unlearn_maxdiff"] < 1e-5


@pytest.mark.slow
def test_streaming_source_on_the_mesh_matches_the_gather(dp_report):
    """SAM training from a streaming source on 8 devices equals the in-device gather on 8 devices."""
    assert dp_report["stream_moved"] > 1e-3
    assert dp_report["stream_vs_gather"] < 1e-5
    assert dp_report["stream_reads"] == 8 * 64 + 32  # one process reads every row of every batch


@pytest.mark.slow
def test_per_device_sam_matches_hand_computation(dp_report):
    """One SGD step with sam_mode="per_device" equals w − lr·mean_k ∇L_k(w + e_k), e_k from shard k's
    own gradient (hand-computed over the 8 shards), and differs from global SAM, which in turn equals
    w − lr·∇L(w + e) with e from the whole batch."""
    assert dp_report["per_device_vs_hand"] < 1e-6
    assert dp_report["global_vs_hand"] < 1e-6
    assert dp_report["per_device_vs_global"] > 1e-3


@pytest.mark.slow
def test_curvature_and_evaluation_on_sharded_inputs(dp_report):
    """hvp / Hutchinson diagonal with the batch sharded over 8 devices, and evaluate(mesh=...) with
    100 rows (padded to a multiple of 8), agree with the unsharded computations."""
    assert dp_report["hvp_maxdiff"] < 1e-5
    assert dp_report["hutchinson_maxdiff"] < 1e-5 * max(1.0, dp_report["hutchinson_scale"])
    assert dp_report["eval_logits_maxdiff"] < 1e-5
    assert dp_report["eval_acc"][0] == dp_report["eval_acc"][1]


@pytest.mark.slow
def test_fsdp_shardings_on_a_2d_mesh(dp_report):
    """On a (data 4, model 2) mesh the 64x16 kernel is split over "model" along its largest axis, the
    small leaves are replicated, and a jitted gradient on the sharded parameters is unchanged."""
    specs = dp_report["fsdp_specs"]
    assert specs["k0"] == "P('model', None)"
    assert specs["b0"] == specs["b1"] == specs["k1"] == "P()"
    assert dp_report["fsdp_grad_maxdiff"] < 1e-6


@pytest.mark.slow
def test_engine_with_fsdp_parameter_sharding(dp_report):
    """param_sharding="fsdp" on the (4, 2) mesh: the biggest kernel stays split over "model" through
    training, and training (SAM) and unlearning (Sharp MinMax) equal the one-device runs."""
    assert "model" in dp_report["fsdp_train_spec"]
    assert dp_report["fsdp_train_maxdiff"] < 1e-5
    assert dp_report["fsdp_unlearn_maxdiff"] < 1e-5


@pytest.mark.slow
def test_train_many_splits_models_over_the_mesh(dp_report):
    """train_many(mesh=8 devices): one model per device, the same parameters as the one-device run."""
    assert dp_report["train_many_moved"] > 1e-3
    assert dp_report["train_many_mesh_maxdiff"] < 1e-5  # default on CPU: unrolled inside shard_map
    assert dp_report["train_many_mesh_vmap_maxdiff"] < 1e-5
    assert "data" in dp_report["train_many_spec"]  # the K axis is sharded over the mesh
    assert "multiple of that many models" in dp_report["train_many_indivisible"]


def test_helpers_on_one_device():
    mesh = distributed.make_mesh()
    assert mesh.axis_names == ("data",) and distributed.data_size(mesh) == jax.device_count()
    with pytest.raises(ValueError, match="num_devices"):
        distributed.make_mesh(jax.device_count() + 1)
    assert distributed.is_main_process()
    np.testing.assert_array_equal(
        distributed.process_local_indices(np.arange(10), process_index=1, process_count=3), [3, 4, 5]
    )
    assert distributed.process_local_indices(np.arange(4)).tolist() == [0, 1, 2, 3]
    env = {k: v for k, v in os.environ.items() if k.startswith("JAX_")}
    assert not distributed._env_requests_distributed() or env  # nothing set: no initialize
    tiny = engine.DeviceData.from_numpy(np.zeros((4, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="sam_mode"):  # checked before anything runs
        engine.train(None, {}, {}, tiny, epochs=1, progress=False, sam_mode="local")


@pytest.mark.slow  # end to end: in the second CI step
def test_vmapped_sweep_equals_separate_runs():
    """train_many over K=3 (seed, lr, rho) triples with SAM: one compiled program whose row k equals a
    separate train(..., seed=seeds[k], lr=lr[k], rho=rho[k]) run."""
    ds = data.load("digits", seed=0)
    dev = engine.DeviceData.from_numpy(ds.x_train[:128], ds.y_train[:128])
    apply_fn, params, state = models.split_model(
        models.build("mlp", num_classes=10, input_shape=(8, 8, 1), hidden=(16,), seed=0)
    )
    k = 3
    seeds, lrs, rhos = [0, 1, 2], [0.05, 0.1, 0.2], [0.05, 0.1, 0.2]
    opt = engine.OptimConfig(lr=0.1, sam="sam", rho=0.1)
    subsets = np.stack([np.random.default_rng(i).permutation(128)[:96] for i in range(k)])
    stack = jax.tree.map(lambda a: np.stack([np.asarray(a)] * k), (params, state))
    p_k, _ = engine.train_many(
        apply_fn,
        *stack,
        dev,
        subsets,
        optimizer=opt,
        epochs=2,
        batch_size=32,
        seeds=seeds,
        lr=lrs,
        rho=rhos,
        progress=False,
    )
    worst = 0.0
    for i in range(k):
        cfg = dataclasses.replace(opt, lr=lrs[i], rho=rhos[i])
        res = engine.train(
            apply_fn,
            params,
            state,
            dev,
            optimizer=cfg,
            epochs=2,
            batch_size=32,
            train_idx=subsets[i],
            seed=seeds[i],
            progress=False,
        )
        for a, b in zip(jax.tree.leaves(res.params), jax.tree.leaves(p_k)):
            worst = max(worst, float(np.max(np.abs(np.asarray(a) - np.asarray(b)[i]))))
    assert worst < 1e-5, worst
    with pytest.raises(ValueError, match="SAM optimizer"):
        engine.train_many(apply_fn, *stack, dev, subsets, epochs=1, rho=0.1, progress=False)
    with pytest.raises(ValueError, match="one positive value per model"):
        engine.train_many(apply_fn, *stack, dev, subsets, optimizer=opt, epochs=1, lr=[0.1, 0.2], progress=False)


_CPU_DEVICES_CHILD = r"""
import json, sys
from jaxunlearn import distributed
out = {"settable_before": distributed.cpu_devices_settable()}
out["first"] = distributed.cpu_devices(int(sys.argv[1]) if sys.argv[1] != "auto" else None)
import jax
out["devices"] = len(jax.devices())
out["settable_after"] = distributed.cpu_devices_settable()
out["again"] = distributed.cpu_devices(out["devices"])  # same count after the backend exists: no-op
try:
    distributed.cpu_devices(out["devices"] + 1)
    out["late"] = "no error"
except RuntimeError as exc:
    out["late"] = str(exc)
try:
    distributed.cpu_devices(0)
except ValueError as exc:
    out["zero"] = str(exc)
mesh = distributed.make_mesh(out["devices"])
import jax.numpy as jnp
x = jax.device_put(jnp.arange(12.0), distributed.batch_sharding(mesh))
out["shards"] = len(x.addressable_shards)
print(json.dumps(out))
"""


def _cpu_devices_child(arg, xla_flags=None):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    if xla_flags:
        env["XLA_FLAGS"] = xla_flags
    proc = subprocess.run(
        [sys.executable, "-c", _CPU_DEVICES_CHILD, arg], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_cpu_devices_exposes_cores_as_devices_in_a_fresh_process():
    r = _cpu_devices_child("4")
    assert r["first"] == r["devices"] == r["again"] == 4
    assert r["settable_before"] and not r["settable_after"]  # the backend fixes the count once it exists
    assert r["shards"] == 4  # a batch really is split over the 4 CPU devices
    assert "before any JAX computation" in r["late"] and "5" in r["late"]
    assert "num >= 1" in r["zero"]
    auto = _cpu_devices_child("auto")
    assert auto["devices"] == distributed.usable_cores()
    forced = _cpu_devices_child("auto", "--xla_force_host_platform_device_count=3")
    assert forced["devices"] == 3  # a count requested through XLA_FLAGS is kept


def test_cpu_devices_after_backend_start_only_accepts_the_existing_count(monkeypatch):
    n = len(jax.devices("cpu"))
    assert not distributed.cpu_devices_settable()
    monkeypatch.setattr(distributed, "_backends_initialized", lambda: False)
    assert distributed.cpu_devices_settable()
    monkeypatch.setenv("JAXUNLEARN_DISTRIBUTED", "1")  # a multi-process run: the coordinator decides
    assert not distributed.cpu_devices_settable()
    monkeypatch.undo()
    assert distributed.cpu_devices(n) == n
    with pytest.raises(RuntimeError, match="already created its CPU backend"):
        distributed.cpu_devices(n + 1)


def test_main_process_flag_in_one_process():
    """With one process the main process's flag is the caller's own (the broadcast across processes is
    exercised by test_multiprocess.py's checkpointed run)."""
    assert distributed.main_process_flag(True) is True
    assert distributed.main_process_flag(np.bool_(False)) is False
