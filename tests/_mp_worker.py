"""Subprocess worker for the distributed tests (XLA's device count must be set before jax is imported).

Usage::

    python tests/_mp_worker.py dp OUT.json                      # 8 simulated CPU devices, one process
    python tests/_mp_worker.py mp OUT.json PORT PROCESS_ID N    # one of N processes (2 devices each)
    python tests/_mp_worker.py single OUT.json DEVICES          # the mp job in one process

Writes a JSON dict of numbers (max abs differences, checksums) to OUT.json.
"""

from __future__ import annotations

import json
import os
import sys
import time

MODE = sys.argv[1]
OUT = sys.argv[2]
DEVICES = {"dp": 8, "mp": 2, "single": int(sys.argv[3]) if MODE == "single" else 0}[MODE]
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES}"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

if MODE == "mp":
    port, pid, nproc = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=nproc, process_id=pid)

from jaxunlearn import curvature, data, distributed, engine, methods, models  # noqa: E402


def maxdiff(a, b) -> float:
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


def host(tree):
    """Host copy of (possibly multi-process replicated) arrays."""
    return jax.tree.map(lambda a: np.array(a.addressable_data(0) if isinstance(a, jax.Array) else a), tree)


def mlp(seed=0):
    return models.split_model(models.build("mlp", num_classes=10, input_shape=(8, 8, 1), hidden=(16,), seed=seed))


def digits(n):
    ds = data.load("digits", seed=0)
    return ds.x_train[:n], ds.y_train[:n]


def dp() -> dict:
    out: dict = {"devices": jax.device_count()}
    mesh = distributed.make_mesh()
    x, y = digits(256)
    dev = engine.DeviceData.from_numpy(x, y)
    apply_fn, params, state = mlp()

    # 1. training: one device vs the 8-device data-parallel mesh (plain SGD and global SAM)
    for sam in ("none", "sam"):
        opt = engine.OptimConfig(lr=0.05, sam=sam, rho=0.1)
        kw = dict(optimizer=opt, epochs=1, batch_size=64, progress=False)
        r1 = engine.train(apply_fn, params, state, dev, **kw)
        r8 = engine.train(apply_fn, params, state, dev, mesh=mesh, **kw)
        out[f"train_{sam}_maxdiff"] = maxdiff(r1.params, r8.params)
        out[f"train_{sam}_moved"] = maxdiff(r1.params, params)
        out[f"train_{sam}_sharded_leaf"] = str(jax.tree.leaves(r8.params)[0].sharding.spec)

    # 2. unlearning (Sharp MinMax with SAM: two phases, masks, forget batches)
    ctx_kw = dict(num_classes=10, optimizer=engine.UNLEARN_DEFAULT.with_sam("sam"), epochs=1, batch_size=32)
    ctx = methods.Context(apply_fn, params, state, x, y, np.arange(32, 256), np.arange(32), **ctx_kw)
    u1 = methods.unlearn("sharp_minmax", ctx, progress=False)
    u8 = methods.unlearn("sharp_minmax", ctx, progress=False, mesh=mesh)
    out["unlearn_maxdiff"] = maxdiff(u1.params, u8.params)
    out["unlearn_moved"] = maxdiff(u1.params, params)

    # 3. per-device SAM (m-sharpness) vs global SAM vs a hand computation, one SGD step
    rho, lr, bs = 0.5, 0.1, 64
    opt = engine.OptimConfig(name="sgd", lr=lr, momentum=0.0, weight_decay=0.0, schedule="constant", sam="sam", rho=rho)
    pool = np.arange(bs)
    kw = dict(optimizer=opt, epochs=1, batch_size=bs, train_idx=pool, progress=False, seed=3)
    glob = engine.train(apply_fn, params, state, dev, mesh=mesh, **kw).params
    perdev = engine.train(apply_fn, params, state, dev, mesh=mesh, sam_mode="per_device", **kw).params
    idx = engine.epoch_indices(np.random.default_rng([3, 0]), pool, 1, bs)[0]

    def loss(p, xb, yb):
        logits, _ = apply_fn(p, state, xb, train=True)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), yb[:, None], axis=1))

    def sam_grad(p, xb, yb):
        g = jax.grad(loss)(p, xb, yb)
        norm = jnp.sqrt(sum(jnp.sum(v**2) for v in jax.tree.leaves(g)))
        return jax.grad(loss)(jax.tree.map(lambda w, gi: w + rho * gi / (norm + 1e-12), p, g), xb, yb)

    xb, yb = jnp.asarray(x[idx]), jnp.asarray(y[idx])
    shards = [sam_grad(params, xb[k * 8 : (k + 1) * 8], yb[k * 8 : (k + 1) * 8]) for k in range(8)]
    d_per = jax.tree.map(lambda *gs: sum(gs) / 8, *shards)
    hand_per = jax.tree.map(lambda w, d: w - lr * d, params, d_per)
    hand_glob = jax.tree.map(lambda w, d: w - lr * d, params, sam_grad(params, xb, yb))
    out["per_device_vs_hand"] = maxdiff(perdev, hand_per)
    out["global_vs_hand"] = maxdiff(glob, hand_glob)
    out["per_device_vs_global"] = maxdiff(perdev, glob)

    # 4. curvature on a sharded batch
    def closs(p, batch):
        return loss(p, *batch)

    batch = (jnp.asarray(x[:64]), jnp.asarray(y[:64]))
    sbatch = distributed.shard_batch(batch, mesh)
    v = jax.tree.map(jnp.ones_like, params)
    out["hvp_maxdiff"] = maxdiff(curvature.hvp(closs, params, batch, v), curvature.hvp(closs, params, sbatch, v))
    key = jax.random.key(0)
    h1 = curvature.hutchinson_diagonal(closs, params, batch, key, num_probes=8)
    h8 = curvature.hutchinson_diagonal(closs, distributed.replicate(params, mesh), sbatch, key, num_probes=8)
    out["hutchinson_maxdiff"] = maxdiff(h1, h8)
    out["hutchinson_scale"] = float(max(np.max(np.abs(np.asarray(a))) for a in jax.tree.leaves(h1)))

    # 5. evaluation sharded over the mesh (100 rows: padded to a multiple of 8)
    e1 = engine.evaluate(apply_fn, params, state, x[:100], y[:100])
    e8 = engine.evaluate(apply_fn, params, state, x[:100], y[:100], mesh=mesh, batch_size=36)
    out["eval_logits_maxdiff"] = maxdiff(e1["logits"], e8["logits"])
    out["eval_acc"] = [e1["accuracy"], e8["accuracy"]]

    # 6. FSDP-style shardings on a (4, 2) mesh: the big kernel is split over "model"; a jitted grad agrees
    mesh2 = distributed.make_mesh(8, ("data", "model"), model=2)
    shard = distributed.fsdp_shardings(params, mesh2, min_size=256)
    out["fsdp_specs"] = {k: str(s.spec) for k, s in zip(["b0", "k0", "b1", "k1"], jax.tree.leaves(shard))}
    p_fsdp = jax.device_put(params, shard)
    g_fsdp = jax.jit(jax.grad(closs))(p_fsdp, distributed.shard_batch(batch, mesh2))
    out["fsdp_grad_maxdiff"] = maxdiff(g_fsdp, jax.grad(closs)(params, batch))

    # 7. the engine with FSDP parameter sharding on the (4, 2) mesh: training and unlearning as on one device
    big_apply, big_params, big_state = models.split_model(
        models.build("mlp", num_classes=10, input_shape=(8, 8, 1), hidden=(256,), seed=0)
    )  # its 64x256 kernel has 2**14 entries: large enough to be split
    opt = engine.OptimConfig(lr=0.05, sam="sam", rho=0.1)
    kw = dict(optimizer=opt, epochs=1, batch_size=64, progress=False)
    f1 = engine.train(big_apply, big_params, big_state, dev, **kw)
    f8 = engine.train(big_apply, big_params, big_state, dev, mesh=mesh2, param_sharding="fsdp", **kw)
    out["fsdp_train_maxdiff"] = maxdiff(f1.params, f8.params)
    out["fsdp_train_spec"] = str(max(jax.tree.leaves(f8.params), key=lambda a: a.size).sharding.spec)
    bctx = methods.Context(big_apply, big_params, big_state, x, y, np.arange(32, 256), np.arange(32), **ctx_kw)
    ub1 = methods.unlearn("sharp_minmax", bctx, progress=False)
    ubf = methods.unlearn("sharp_minmax", bctx, progress=False, mesh=mesh2, param_sharding="fsdp")
    out["fsdp_unlearn_maxdiff"] = maxdiff(ub1.params, ubf.params)

    # 8. train_many with its K = 8 models split over the 8 devices (one model each) vs one device
    k_models = 8
    sets = np.stack([np.random.default_rng(i).permutation(256)[:128] for i in range(k_models)])
    stack = jax.tree.map(lambda a: np.stack([np.asarray(a)] * k_models), (params, state))
    kw = dict(optimizer=engine.OptimConfig(lr=0.05), epochs=1, batch_size=32, progress=False)
    m1, _ = engine.train_many(apply_fn, *stack, dev, sets, **kw)
    m8, _ = engine.train_many(apply_fn, *stack, dev, sets, mesh=mesh, **kw)
    v8, _ = engine.train_many(apply_fn, *stack, dev, sets, mesh=mesh, model_mode="vmap", **kw)
    out.update(streamed(mesh, apply_fn, params, state, x, y))
    out["train_many_mesh_maxdiff"] = maxdiff(m1, m8)
    out["train_many_mesh_vmap_maxdiff"] = maxdiff(m1, v8)
    out["train_many_moved"] = maxdiff(m1, stack[0])
    out["train_many_spec"] = str(jax.tree.leaves(m8)[0].sharding.spec)
    try:
        engine.train_many(apply_fn, *jax.tree.map(lambda a: a[:3], stack), dev, sets[:3], mesh=mesh, **kw)
        out["train_many_indivisible"] = "no error"
    except ValueError as exc:
        out["train_many_indivisible"] = str(exc)
    return out


def streamed(mesh, apply_fn, params, state, x, y) -> dict:
    """The same training through the in-device gather and through a streaming source on the mesh; across
    processes each process reads only its own rows of every batch."""
    reads = []

    class Records:
        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            reads.append(int(i))
            return {"x": np.asarray(x[i], np.float32), "y": np.int32(y[i])}

    kw = dict(optimizer=engine.OptimConfig(lr=0.05, sam="sam"), epochs=1, batch_size=32, progress=False, mesh=mesh)
    gathered = engine.train(apply_fn, params, state, engine.DeviceData.from_numpy(x, y), **kw)
    stream = engine.train(apply_fn, params, state, engine.StreamingSource(Records()), **kw)
    return {
        "stream_vs_gather": maxdiff(host(gathered.params), host(stream.params)),
        "stream_moved": maxdiff(host(stream.params), host(params)),
        "stream_reads": len(reads),
    }


def checkpointed(mesh, apply_fn, params, state, x, y) -> dict:
    """Training checkpointed by the time rule (0 s: every epoch, decided on process 0 and broadcast) into
    a directory all processes share, then resumed: Orbax's collective save and restore across processes."""
    where = os.path.join(os.path.dirname(os.path.abspath(OUT)), f"ckpt-{MODE}")
    kw = dict(
        optimizer=engine.OptimConfig(lr=0.05), epochs=2, batch_size=32, progress=False, mesh=mesh,
        checkpoint_dir=where, checkpoint_every=None, checkpoint_seconds=0.0,
    )  # fmt: skip
    dev = engine.DeviceData.from_numpy(x, y)
    first = engine.train(apply_fn, params, state, dev, **kw)
    again = engine.train(apply_fn, params, state, dev, resume=True, **kw)
    return {
        # process 0's answer on every process, whatever the others say
        "flag_main_true": distributed.main_process_flag(jax.process_index() == 0),
        "flag_other_true": distributed.main_process_flag(jax.process_index() == 1),
        "ckpt_steps": sorted(int(d) for d in os.listdir(where) if d.isdigit()),
        "ckpt_resumed_from": again.resumed_from,
        "ckpt_restored_maxdiff": maxdiff(host(first.params), host(again.params)),
        "ckpt_moved": maxdiff(host(first.params), host(params)),
    }


def mp_job() -> dict:
    """The multi-process job: Sharp MinMax unlearning with per-device SAM on every device of every process."""
    mesh = distributed.make_mesh()
    x, y = digits(256)
    apply_fn, params, state = mlp()
    opt = engine.UNLEARN_DEFAULT.with_sam("sam")
    ctx = methods.Context(
        apply_fn, params, state, x, y, np.arange(32, 256), np.arange(32), 10, optimizer=opt, epochs=2, batch_size=32
    )
    t0 = time.perf_counter()
    res = methods.unlearn("sharp_minmax", ctx, progress=False, mesh=mesh, sam_mode="per_device")
    acc = engine.evaluate(apply_fn, res.params, res.model_state, x, y, mesh=mesh)["accuracy"]
    p = host(res.params)
    flat = np.concatenate([a.ravel() for a in jax.tree.leaves(p)])
    return {
        **checkpointed(mesh, apply_fn, params, state, x, y),
        **streamed(mesh, apply_fn, params, state, x, y),
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "devices": jax.device_count(),
        "local_devices": jax.local_device_count(),
        "is_main": distributed.is_main_process(),
        "local_indices": distributed.process_local_indices(np.arange(10)).tolist(),
        "checksum": float(np.sum(flat.astype(np.float64))),
        "abs_checksum": float(np.sum(np.abs(flat.astype(np.float64)))),
        "params": flat.tolist(),
        "accuracy": acc,
        "seconds": time.perf_counter() - t0,
    }


if __name__ == "__main__":
    result = dp() if MODE == "dp" else mp_job()
    with open(OUT, "w") as f:
        json.dump(result, f)
    if MODE == "mp":
        jax.distributed.shutdown()
