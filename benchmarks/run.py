"""jaxunlearn performance benchmarks: one command, one process run, writes ``benchmarks/RESULTS.md``.

    .venv/bin/python benchmarks/run.py            # full run (tens of minutes on a loaded 2-core CPU)
    .venv/bin/python benchmarks/run.py --quick    # tiny sizes, seconds per section (used by the smoke test)

Sections (``--sections`` picks a subset): ``steps`` (SGD / SAM / Sharp MinMax / NegGrad+SAM steps, and the
same through ``engine.train``), ``torch`` (two-pass SAM step vs PyTorch on the small CNN and ResNet-18),
``hutchinson`` (16-probe Hessian diagonal in gradient equivalents, chunking strategies, vs PyTorch),
``train_many`` (K models trained together vs K sequential runs), ``memory`` (peak RSS of the curvature
functions in subprocesses, two model sizes), ``job`` (the default ``jaxunlearn run`` job end to end in a
subprocess: wall time, peak RSS, per-method seconds vs Retrain, compile counts, steady-state re-runs, and
the same job at the papers' 200 pretraining epochs),
``limits`` (the physical limit: measured f32 matmul rate and XLA's FLOP counts of the benchmarked programs;
the report turns them into achieved GFLOP/s, share of peak and the time floor of each target).

Method: contenders are interleaved (A, B, A, B, ...) and each timing is the median over ``--repeats``
rounds; the first call of every jitted function is timed separately as "compile" (trace + XLA compile +
first run). Ratios are computed within this run only. PyTorch runs with ``torch.set_num_threads(T)`` where
T = the number of CPUs of this process. JAX gets the same cores as T XLA CPU devices
(``distributed.cpu_devices``, before the first JAX operation; ``--cpu-devices 1`` turns it off): the JAX
steps, the Hutchinson diagonal and ``train_many`` run data-parallel (or model-parallel) over them, as
``engine.run(mesh=...)`` does, and one-device references (``*_1dev``) are timed in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from benchmarks._timing import interleaved, machine  # noqa: E402
from jaxunlearn import curvature, distributed, engine, models, objectives  # noqa: E402
from jaxunlearn.methods import neggrad as neggrad_mod  # noqa: E402
from jaxunlearn.methods import sharp_minmax as smm  # noqa: E402
from jaxunlearn.plan import OptimConfig, StepInfo, build_optimizer, supervised_loss  # noqa: E402

SECTIONS = ("steps", "torch", "hutchinson", "train_many", "memory", "job", "limits")
MESH = None  # the ("data",) mesh over the CPU cores (distributed.cpu_devices), set by main()


# ----------------------------------------------------------------------------------------------- helpers


def _block(x):
    return jax.block_until_ready(x)


def _run_child(script: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """``python -c script args...`` in a fresh process from the repository root, output captured."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        cwd=os.path.dirname(HERE),
        timeout=timeout,
    )


def _random_data(n, shape, seed=0, classes=10):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *shape)).astype(np.float32), rng.integers(0, classes, n).astype(np.int32)


def _ce(apply_fn, state, train=False):
    def loss(p, b):
        logits, _ = apply_fn(p, state, b["x"], train=train)
        return objectives.cross_entropy(logits, b["y"])

    return loss


def equivalent_step(apply_fn, phase_loss, cfg: OptimConfig, sign="min", mask=None, mesh=None):
    """The engine's own single-phase update (``engine.make_step``: value_and_grad, the phase's Optax chain
    with SAM's ``grad_fn``, apply_updates) with the loop's in-device gather, jitted. With ``mesh`` the
    gathered batch is sharded over the mesh's ``data`` axis exactly as in ``engine.run(mesh=...)``."""
    tx = build_optimizer(cfg, 10_000, sign=sign, mask=mask)
    update = engine.make_step(
        apply_fn, phase_loss, cfg, sign=sign, masked=mask is not None, total_steps=10_000, mesh=mesh
    )
    info = StepInfo.at(epochs=1, total_steps=10_000)

    @jax.jit
    def step(params, model_state, opt_state, x, y, idx_r, idx_f, hp):
        arrays = {"x": x, "y": y}
        batch = {"retain": engine.ArraySource.gather(arrays, idx_r), "forget": engine.ArraySource.gather(arrays, idx_f)}
        state = engine.TrainState(params, model_state, (opt_state,), jnp.zeros((), jnp.int32))
        state, loss = update(state, batch, hp, info, mask)
        return state.params, state.model_state, state.opt_states[0], loss

    return tx, step


class _Stepper:
    """Holds params/states of one contender so repeated calls keep stepping (realistic, no donation
    aliasing between contenders)."""

    def __init__(self, phases, params, state, data, idx_r, idx_f, hp, mesh=None):
        self.phases = phases  # [(tx, step)]
        if mesh is not None:  # everything replicated; the step shards the gathered batch over "data"
            params, state, data, idx_r, idx_f, hp = distributed.replicate(
                (params, state, tuple(data), idx_r, idx_f, hp), mesh
            )
        self.params, self.state = params, state
        self.opt = [tx.init(params) for tx, _ in phases]
        self.args = (data[0], data[1], idx_r, idx_f, hp)

    def __call__(self):
        for i, (_, step) in enumerate(self.phases):
            self.params, self.state, self.opt[i], loss = step(self.params, self.state, self.opt[i], *self.args)
        return _block(loss)


def flops_of(fn, *args) -> float | None:
    """FLOPs of one call of ``fn(*args)`` as XLA's cost analysis counts them in the compiled program (one
    device: pass unsharded arguments); ``None`` where the backend gives no count."""
    jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
    try:
        cost = jitted.lower(*args).compile().cost_analysis()
    except Exception:  # pragma: no cover - backends without cost analysis
        return None
    if isinstance(cost, (list, tuple)):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    value = (cost or {}).get("flops")
    return float(value) if value else None


def _torch_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# ----------------------------------------------------------------------------------------------- sections


def bench_steps(cfg) -> dict:
    shape, b = ((8, 8, 1), 16) if cfg.quick else ((28, 28, 1), 128)
    model = models.build("cnn", num_classes=10, input_shape=shape, seed=0)
    apply_fn, params, state = models.split_model(model)
    x, y = _random_data(4 * b, shape)
    data = (jnp.asarray(x), jnp.asarray(y))
    idx_r, idx_f = jnp.arange(b, dtype=jnp.int32), jnp.arange(b, 2 * b, dtype=jnp.int32)
    sgd, sam = OptimConfig(), OptimConfig(sam="sam")
    ucfg = dataclasses.replace(engine.UNLEARN_DEFAULT, sam="sam")
    mask = jax.tree.map(lambda a: jnp.arange(a.size).reshape(a.shape) % 3 == 0, params)
    inv = jax.tree.map(jnp.logical_not, mask)
    hp = {"alpha": jnp.float32(0.99)}
    mesh = MESH
    mk = lambda phases, m=mesh: _Stepper(phases, params, state, data, idx_r, idx_f, hp, m)  # noqa: E731
    contenders = {
        "sgd_step": mk([equivalent_step(apply_fn, supervised_loss, sgd, mesh=mesh)]),
        "sam_step": mk([equivalent_step(apply_fn, supervised_loss, sam, mesh=mesh)]),
        "sharp_minmax_iter": mk(
            [
                equivalent_step(apply_fn, smm.retain_loss, ucfg, "min", inv, mesh=mesh),
                equivalent_step(apply_fn, smm.forget_loss, ucfg, "max", mask, mesh=mesh),
            ]
        ),
        "neggrad_sam_iter": mk([equivalent_step(apply_fn, neggrad_mod.neggrad_loss, ucfg, mesh=mesh)]),
    }
    if mesh is not None:  # the same steps on one XLA device, for reference
        contenders["sgd_step_1dev"] = mk([equivalent_step(apply_fn, supervised_loss, sgd)], None)
        contenders["sam_step_1dev"] = mk([equivalent_step(apply_fn, supervised_loss, sam)], None)
    t = interleaved(contenders, cfg.repeats, inner=cfg.inner)
    base = t["sgd_step"]["median_s"]
    res = {"batch": b, "shape": shape, "timings": t, "ratios": {k: v["median_s"] / base for k, v in t.items()}}
    if mesh is not None:
        res["ratio_sam_sgd_1dev"] = t["sam_step_1dev"]["median_s"] / t["sgd_step_1dev"]["median_s"]

    # the same through the real engine (engine.train: Python loop, gathers, divergence guard); the
    # second call of an identical run hits the compile cache, so its seconds are steady state.
    dd = engine.DeviceData.from_numpy(x, y)
    eng = {}
    for name in ("sgd", "sam"):
        eng[name] = {"runs_s": [], "compiles": []}
    for _ in range(2):
        for name, opt in (("sgd", sgd), ("sam", sam)):
            c0 = engine.COMPILE_COUNTER.count
            r = engine.train(
                apply_fn, params, state, dd, optimizer=opt, epochs=2, batch_size=b, progress=False, mesh=mesh
            )
            eng[name]["runs_s"].append(r.seconds)
            eng[name]["compiles"].append(engine.COMPILE_COUNTER.count - c0)
    steps = 2 * int(np.ceil(len(y) / b))
    for v in eng.values():
        v["steady_step_s"] = v["runs_s"][-1] / steps
    eng["ratio_sam_sgd"] = eng["sam"]["steady_step_s"] / eng["sgd"]["steady_step_s"]
    res["engine"] = eng
    return res


def bench_torch(cfg) -> dict:
    import torch

    import benchmarks.torch_reference as tr

    torch.set_num_threads(_torch_threads())
    out = {"threads": torch.get_num_threads()}
    cases = (
        [("cnn", (8, 8, 1), 16, {}), ("resnet18", (8, 8, 3), 4, {"width": 0.125})]
        if cfg.quick
        else [("cnn", (28, 28, 1), 128, {}), ("resnet18", (32, 32, 3), 32, {})]
    )
    for name, shape, b, kw in cases:
        model = models.build(name, num_classes=10, input_shape=shape, seed=0, **kw)
        apply_fn, params, state = models.split_model(model)
        x, y = _random_data(2 * b, shape)
        data = (jnp.asarray(x), jnp.asarray(y))
        idx = jnp.arange(b, dtype=jnp.int32)

        def jstep(opt, mesh, apply_fn=apply_fn, params=params, state=state, data=data, idx=idx):
            step = equivalent_step(apply_fn, supervised_loss, opt, mesh=mesh)
            return _Stepper([step], params, state, data, idx, idx, {}, mesh)

        jax_contenders = {"jax_sam": jstep(OptimConfig(sam="sam"), MESH), "jax_sgd": jstep(OptimConfig(), MESH)}
        if MESH is not None:
            jax_contenders["jax_sam_1dev"] = jstep(OptimConfig(sam="sam"), None)
            jax_contenders["jax_sgd_1dev"] = jstep(OptimConfig(), None)
        torch.manual_seed(0)
        if name == "cnn":
            tm = tr.TorchCNN(shape, 10)
        else:
            tm = tr.TorchResNet18(shape[-1], 10, width=kw.get("width", 1.0))
        tm.train()
        topt = tr.make_optimizer(tm)
        tx = torch.from_numpy(np.ascontiguousarray(x[:b].transpose(0, 3, 1, 2)))
        ty = torch.from_numpy(y[:b].astype(np.int64))
        inner = cfg.inner if name == "cnn" else 1
        reps = cfg.repeats if name == "cnn" else max(2, cfg.repeats // 2)
        t = interleaved(
            {
                **jax_contenders,
                "torch_sam": lambda tm=tm, topt=topt, tx=tx, ty=ty: tr.sam_step(tm, topt, tx, ty),
                "torch_sgd": lambda tm=tm, topt=topt, tx=tx, ty=ty: tr.sgd_step(tm, topt, tx, ty),
            },
            reps,
            inner=inner,
        )
        out[name] = {
            "batch": b,
            "shape": shape,
            "timings": t,
            "ratio_torch_over_jax_sam": t["torch_sam"]["median_s"] / t["jax_sam"]["median_s"],
            "ratio_torch_over_jax_sgd": t["torch_sgd"]["median_s"] / t["jax_sgd"]["median_s"],
        }
        if MESH is not None:
            out[name]["ratio_torch_over_jax_sam_1dev"] = t["torch_sam"]["median_s"] / t["jax_sam_1dev"]["median_s"]
    return out


def _lax_map_hutchinson(loss_fn, num_probes, chunk):
    """The previous library implementation (before this benchmark): ``lax.map`` over vmapped chunks."""

    @jax.jit
    def f(params, batch, key):
        flat, unravel = ravel_pytree(params)

        def hv(v):  # flat H v through the library's HVP
            return ravel_pytree(curvature.hvp(loss_fn, params, batch, unravel(v.astype(flat.dtype))))[0]

        n_chunks = -(-num_probes // chunk)

        def chunk_sum(args):
            k, i = args
            z = jax.random.rademacher(k, (chunk, flat.size), dtype=flat.dtype)
            valid = (i * chunk + jnp.arange(chunk) < num_probes).astype(flat.dtype)[:, None]
            return jnp.sum(valid * z * jax.vmap(hv)(z), axis=0)

        parts = jax.lax.map(chunk_sum, (jax.random.split(key, n_chunks), jnp.arange(n_chunks)))
        return unravel(jnp.sum(parts, axis=0) / num_probes)

    return f


def bench_hutchinson(cfg) -> dict:
    import torch

    import benchmarks.torch_reference as tr

    torch.set_num_threads(_torch_threads())
    shape, b, probes = ((8, 8, 1), 16, 4) if cfg.quick else ((28, 28, 1), 128, 16)
    apply_fn, params, state = models.split_model(models.build("cnn", num_classes=10, input_shape=shape, seed=0))
    x, y = _random_data(b, shape)
    batch1 = {"x": jnp.asarray(x), "y": jnp.asarray(y)}
    params1 = params
    if MESH is not None:  # the batch split over the cores' devices; jit propagates it through the HVPs
        batch, params = distributed.shard_batch(batch1, MESH), distributed.replicate(params, MESH)
    else:
        batch = batch1
    loss = _ce(apply_fn, state)
    key = jax.random.key(0)
    grad = jax.jit(jax.grad(loss))

    contenders = {
        "grad": lambda: _block(grad(params, batch)),
        # the library default: on CPU chunks of 4 probes, unrolled in one program per chunk
        "library_default": lambda: _block(curvature.hutchinson_diagonal(loss, params, batch, key, probes)),
        "unroll16": lambda: _block(
            curvature.hutchinson_diagonal(loss, params, batch, key, probes, chunk_size=16, probe_mode="unroll")
        ),
        "chunk1": lambda: _block(
            curvature.hutchinson_diagonal(loss, params, batch, key, probes, chunk_size=1, probe_mode="vmap")
        ),
        "vmap_chunk4": lambda: _block(
            curvature.hutchinson_diagonal(loss, params, batch, key, probes, chunk_size=4, probe_mode="vmap")
        ),
        "one_vmap": lambda: _block(
            curvature.hutchinson_diagonal(loss, params, batch, key, probes, chunk_size=probes, probe_mode="vmap")
        ),
    }
    if MESH is not None:  # the same on one device, for reference
        contenders["grad_1dev"] = lambda: _block(grad(params1, batch1))
        contenders["library_default_1dev"] = lambda: _block(
            curvature.hutchinson_diagonal(loss, params1, batch1, key, probes)
        )
    torch.manual_seed(0)
    tm = tr.TorchCNN(shape, 10)
    tx = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    ty = torch.from_numpy(y.astype(np.int64))
    contenders["torch_grad"] = lambda: tr.gradient(tm, tx, ty)
    contenders["torch_hutchinson"] = lambda: tr.hutchinson_diagonal(tm, tx, ty, probes)
    reps = max(2, cfg.repeats // 2)
    t = interleaved(contenders, reps)
    # before/after for the lax.map -> Python-loop change: ONE chunk of 4 probes (a 1-iteration lax.map),
    # one timed call each (the old variant is very slow)
    old = _lax_map_hutchinson(loss, 4, 4)
    before = interleaved(
        {
            "old_lax_map_4probes": lambda: _block(old(params, batch, key)),
            "new_library_4probes": lambda: _block(
                curvature.hutchinson_diagonal(loss, params, batch, key, 4, chunk_size=4)
            ),
        },
        1,
    )
    jax_keys = [k for k in t if k not in ("grad", "torch_grad", "torch_hutchinson", "grad_1dev")]
    best = min((k for k in jax_keys if not k.endswith("_1dev")), key=lambda k: t[k]["median_s"])
    default_label = "library_default"
    return {
        "batch": b,
        "shape": shape,
        "probes": probes,
        "timings": t,
        "before_after": before,
        "grad_equiv": {
            k: t[k]["median_s"] / t["grad_1dev" if k.endswith("_1dev") else "grad"]["median_s"] for k in jax_keys
        },
        "torch_grad_equiv": t["torch_hutchinson"]["median_s"] / t["torch_grad"]["median_s"],
        "best": best,
        "default": default_label,
        "speedup_vs_torch_default": t["torch_hutchinson"]["median_s"] / t[default_label]["median_s"],
        "speedup_vs_torch_best": t["torch_hutchinson"]["median_s"] / t[best]["median_s"],
        "one_device_process": _hutchinson_one_device_process(cfg, probes),
    }


def bench_limits(cfg) -> dict:
    """The physical limit: the machine's measured f32 matmul rate (JAX on one device, which uses every core,
    and PyTorch with the same threads) and the FLOPs of the benchmarked programs (XLA cost analysis of the
    one-device programs; PyTorch runs the same model, so the same FLOPs). The report divides these by the
    measured times of the other sections: achieved GFLOP/s, share of the matmul peak, and the time floor
    at peak."""
    n = 512 if cfg.quick else 2048
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)).astype(np.float32))
    mm = jax.jit(lambda m: m @ m)
    contenders = {"jax_matmul": lambda: _block(mm(a))}
    try:
        import torch
    except ImportError:  # the JAX rate alone
        pass
    else:
        torch.set_num_threads(_torch_threads())
        ta = torch.from_numpy(np.array(a))  # a writable copy
        contenders["torch_matmul"] = lambda: ta @ ta
    t = interleaved(contenders, cfg.repeats, cfg.inner)
    peak = {k: 2 * n**3 / v["median_s"] / 1e9 for k, v in t.items()}
    small, b = ((8, 8, 1), 16) if cfg.quick else ((28, 28, 1), 128)
    flops: dict[str, float | None] = {}

    def step_flops(name, shape, batch, opt, **kw):
        apply_fn, params, state = models.split_model(
            models.build(name, num_classes=10, input_shape=shape, seed=0, **kw)
        )
        x, y = _random_data(batch, shape)
        tx, step = equivalent_step(apply_fn, supervised_loss, opt)
        idx = jnp.arange(batch, dtype=jnp.int32)
        args = (params, state, tx.init(params), jnp.asarray(x), jnp.asarray(y), idx, idx, {})
        return flops_of(step, *args), (apply_fn, params, state, x, y)

    flops["cnn_sgd_step"], _ = step_flops("cnn", small, b, OptimConfig())
    flops["cnn_sam_step"], (apply_fn, params, state, x, y) = step_flops("cnn", small, b, OptimConfig(sam="sam"))
    loss = _ce(apply_fn, state)
    batch = {"x": jnp.asarray(x), "y": jnp.asarray(y)}
    probes = 4 if cfg.quick else 16
    flops["cnn_grad"] = flops_of(jax.grad(loss), params, batch)
    # the library default, traced whole (its Python loop over chunks unrolls under the outer jit)
    flops["cnn_hutchinson"] = flops_of(
        lambda p, bt: curvature.hutchinson_diagonal(loss, p, bt, jax.random.key(0), probes), params, batch
    )
    flops["cnn_hvp"] = flops_of(lambda p, bt: curvature.hvp(loss, p, bt, p), params, batch)
    rshape, rb, rkw = ((8, 8, 3), 4, {"width": 0.125}) if cfg.quick else ((32, 32, 3), 32, {})
    flops["resnet18_sam_step"], _ = step_flops("resnet18", rshape, rb, OptimConfig(sam="sam"), **rkw)
    flops["resnet18_sgd_step"], _ = step_flops("resnet18", rshape, rb, OptimConfig(), **rkw)
    flops["digits_cnn_sgd_step_b64"], _ = step_flops("cnn", (8, 8, 1), 64, OptimConfig(lr=0.05))
    return {"matmul_n": n, "matmul_timings": t, "peak_gflops": peak, "flops": flops, "probes": probes}


_HUTCH_CHILD = r"""
import json, statistics, sys, time
from jaxunlearn import distributed
distributed.cpu_devices(1)
import jax, jax.numpy as jnp, numpy as np
from jaxunlearn import curvature, models, objectives
quick, probes, reps = sys.argv[1] == "1", int(sys.argv[2]), int(sys.argv[3])
shape, b = ((8, 8, 1), 16) if quick else ((28, 28, 1), 128)
apply_fn, params, state = models.split_model(models.build("cnn", num_classes=10, input_shape=shape, seed=0))
rng = np.random.default_rng(0)
batch = {"x": jnp.asarray(rng.normal(size=(b, *shape)).astype(np.float32)),
         "y": jnp.asarray(rng.integers(0, 10, b).astype(np.int32))}
loss = lambda p, bt: objectives.cross_entropy(apply_fn(p, state, bt["x"])[0], bt["y"])
grad, key = jax.jit(jax.grad(loss)), jax.random.key(0)
fns = {"grad": lambda: grad(params, batch),
       "hutchinson": lambda: curvature.hutchinson_diagonal(loss, params, batch, key, probes),
       "hutchinson16": lambda: curvature.hutchinson_diagonal(loss, params, batch, key, probes, chunk_size=16)}
times = {k: [] for k in fns}
for k, f in fns.items():
    jax.block_until_ready(f())
for _ in range(reps):
    for k, f in fns.items():
        inner = 5 if k == "grad" else 1
        t = time.perf_counter()
        for _ in range(inner):
            jax.block_until_ready(f())
        times[k].append((time.perf_counter() - t) / inner)
med = {k: statistics.median(v) for k, v in times.items()}
print(json.dumps({"grad_s": med["grad"], "hutchinson_s": med["hutchinson"], "hutchinson16_s": med["hutchinson16"],
                  "grad_equiv": med["hutchinson"] / med["grad"], "grad_equiv16": med["hutchinson16"] / med["grad"]}))
"""


def _hutchinson_one_device_process(cfg, probes: int) -> dict:
    """The library default timed in a fresh one-device process (gradient and Hutchinson interleaved): the
    cost ratio of the configuration without a mesh, free of the multi-device process's effects."""
    p = _run_child(_HUTCH_CHILD, "1" if cfg.quick else "0", str(probes), str(max(2, cfg.repeats // 2)), timeout=1800)
    if p.returncode != 0:
        return {"error": p.stderr[-1000:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def bench_train_many(cfg) -> dict:
    from jaxunlearn import data as data_lib

    ds = data_lib.load("digits", seed=0, max_train=256 if cfg.quick else None)
    k = 2 if cfg.quick else 8
    epochs = 1 if cfg.quick else 3
    bs = 64
    built = {
        impl: models.split_model(
            models.build("cnn", num_classes=ds.num_classes, input_shape=ds.input_shape, seed=0, conv=impl)
        )
        for impl in ("xla", "im2col")
    }
    dd = engine.DeviceData.from_numpy(ds.x_train, ds.y_train)
    n = len(ds.y_train)
    m = int(0.7 * n)
    rng = np.random.default_rng(0)
    sets = np.stack([np.sort(rng.choice(n, m, replace=False)) for _ in range(k)])
    opt = OptimConfig(lr=0.05)
    mesh = MESH if MESH is not None and k % distributed.data_size(MESH) == 0 else None

    def vm(impl, mesh, mode=None):
        apply_fn, params, state = built[impl]
        stacked = [jax.tree.map(lambda a: jnp.stack([a] * k), t) for t in (params, state)]
        p, _ = engine.train_many(
            apply_fn, *stacked, dd, sets, optimizer=opt, epochs=epochs, batch_size=bs, progress=False, mesh=mesh,
            seeds=list(range(k)), model_mode=mode,
        )  # fmt: skip
        return _block(p)

    def seq(impl):
        apply_fn, params, state = built[impl]
        out = []
        for i in range(k):
            r = engine.train(
                apply_fn, params, state, dd, optimizer=opt, epochs=epochs, batch_size=bs, train_idx=sets[i], seed=i,
                progress=False,
            )  # fmt: skip
            out.append(r.params)
        return _block(out)

    contenders = {
        "train_many_K": lambda: vm("xla", mesh),
        "train_many_K_vmap_im2col": lambda: vm("im2col", mesh, "vmap"),
        "train_many_K_vmap_xla_one_device": lambda: vm("xla", None, "vmap"),
        "sequential_K": lambda: seq("xla"),
        "sequential_K_im2col": lambda: seq("im2col"),
    }
    c0 = engine.COMPILE_COUNTER.count
    reps = max(2, cfg.repeats // 3)
    t = interleaved(contenders, reps)
    # the vmapped models equal the separate runs (same seeds -> same batches)
    many, sep = vm("xla", mesh), seq("xla")
    diff = max(
        float(jnp.max(jnp.abs(a[i] - b)))
        for i in range(k)
        for a, b in zip(jax.tree.leaves(many), jax.tree.leaves(sep[i]))
    )
    best_seq = min(("sequential_K", "sequential_K_im2col"), key=lambda c: t[c]["median_s"])
    # cores kept busy (process CPU time / wall time): the bound on what running K models side by side
    # can gain when each step keeps its CPU cost
    busy = {}
    for name in (best_seq, "train_many_K"):
        w0, c0_ = time.perf_counter(), time.process_time()
        contenders[name]()
        busy[name] = (time.process_time() - c0_) / (time.perf_counter() - w0)
    return {
        "K": k,
        "epochs": epochs,
        "examples_per_model": m,
        "batch_size": bs,
        "devices": 1 if mesh is None else distributed.data_size(mesh),
        "timings": t,
        "compiles": engine.COMPILE_COUNTER.count - c0,
        "max_abs_diff_vs_sequential": diff,
        "best_sequential": best_seq,
        "cores_busy": busy,
        "cores": _torch_threads(),
        "throughput_ratio": t[best_seq]["median_s"] / t["train_many_K"]["median_s"],
        "throughput_ratio_vmap_im2col": t[best_seq]["median_s"] / t["train_many_K_vmap_im2col"]["median_s"],
        "throughput_ratio_old": t["sequential_K"]["median_s"] / t["train_many_K_vmap_xla_one_device"]["median_s"],
        "throughput_ratio_with_compile": t[best_seq]["first_s"] / t["train_many_K"]["first_s"],
    }


_MEM_CHILD = r"""
import json, resource, sys, time
import jax, jax.numpy as jnp, numpy as np, psutil
from jaxunlearn import curvature, models, objectives
fn, model, chunk, quick = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
if model.startswith("mlp"):
    sizes = {"mlp_small": (4,), "mlp_large": (8,)} if quick else {"mlp_small": (16,), "mlp_large": (64,)}
    hidden = sizes[model]
    m = models.build("mlp", num_classes=10, input_shape=(64,), hidden=hidden)
    shape = (64,)
else:
    ch = {"cnn_small": ((16, 32), 64), "cnn_large": ((32, 64), 128)}[model]
    shape = (8, 8, 1) if quick else (28, 28, 1)
    m = models.build("cnn", num_classes=10, input_shape=shape, channels=ch[0], dense=ch[1])
apply_fn, params, state = models.split_model(m)
rng = np.random.default_rng(0)
b = 16 if quick else 64
batch = {"x": jnp.asarray(rng.normal(size=(b, *shape)).astype(np.float32)),
         "y": jnp.asarray(rng.integers(0, 10, b).astype(np.int32))}
loss = lambda p, bt: objectives.cross_entropy(apply_fn(p, state, bt["x"])[0], bt["y"])
n = models.num_params(params)
if fn == "hessian_diagonal":
    jitted, args = curvature._hessian_diagonal_chunk, (loss, params, batch, jnp.int32(0), min(chunk, n))
    call = lambda: curvature.hessian_diagonal(loss, params, batch, chunk_size=chunk)
else:
    probes = 4 if quick else 16
    c = min(chunk, probes)
    jitted, args = curvature._hutchinson_chunk, (loss, params, batch, jax.random.key(0), c, c,
                                                  curvature.default_probe_mode(c))
    call = lambda: curvature.hutchinson_diagonal(loss, params, batch, jax.random.key(0), probes, chunk_size=chunk)
temp = None
try:
    ma = jitted.lower(*args).compile().memory_analysis()
    temp = int(ma.temp_size_in_bytes) if ma is not None else None
except Exception:
    pass
jax.block_until_ready(call())  # compile and warm up; then sample RSS every 2 ms during a second call
import threading
proc = psutil.Process()
base = proc.memory_info().rss
peak_box, stop = [base], threading.Event()
def sample():
    while not stop.is_set():
        peak_box[0] = max(peak_box[0], proc.memory_info().rss)
        time.sleep(0.002)
th = threading.Thread(target=sample); th.start()
t = time.perf_counter(); jax.block_until_ready(call()); sec = time.perf_counter() - t
stop.set(); th.join()
peak = max(peak_box[0], proc.memory_info().rss)
print(json.dumps({"params": n, "rss_before": base, "peak_rss": peak, "xla_temp_bytes": temp, "seconds": sec}))
"""


def bench_memory(cfg) -> dict:
    runs = []
    plan = [
        ("hessian_diagonal", "mlp_small", (16, 256) if not cfg.quick else (4, 16)),
        ("hessian_diagonal", "mlp_large", (16, 256) if not cfg.quick else (4, 16)),
        ("hutchinson_diagonal", "cnn_small", (1, 4, 16) if not cfg.quick else (1, 4)),
        ("hutchinson_diagonal", "cnn_large", (1, 4, 16) if not cfg.quick else (1, 4)),
    ]
    for fn, model, chunks in plan:
        for c in chunks:
            p = _run_child(_MEM_CHILD, fn, model, str(c), "1" if cfg.quick else "0", timeout=1800)
            if p.returncode != 0:
                runs.append({"fn": fn, "model": model, "chunk": c, "error": p.stderr[-500:]})
                continue
            r = json.loads(p.stdout.strip().splitlines()[-1])
            r.update(fn=fn, model=model, chunk=c)
            runs.append(r)
    return {"runs": runs}


_JOB_CHILD = r"""
import dataclasses, json, resource, sys, time
import numpy as np
from jaxunlearn import engine, methods, models, data, runner
from jaxunlearn.plan import OptimConfig
out, kw = sys.argv[1], json.loads(sys.argv[2])
counts = {}
orig_unlearn = methods.unlearn
def counted(method, ctx, **k):
    c0 = engine.COMPILE_COUNTER.count
    r = orig_unlearn(method, ctx, **k)
    counts.setdefault(method, []).append(engine.COMPILE_COUNTER.count - c0)
    return r
# peak RSS sampled by a thread: getrusage's ru_maxrss survives fork/exec, so in a child of the (large)
# benchmark process it would report the parent's size at spawn time, not the job's
import threading, psutil
proc, peak_box, stop = psutil.Process(), [0], threading.Event()
def sample():
    while not stop.is_set():
        peak_box[0] = max(peak_box[0], proc.memory_info().rss)
        time.sleep(0.02)
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
t = time.perf_counter()
engine.COMPILE_COUNTER.reset()
res = runner.run_job(runner.JobConfig(out=out, progress=False, **kw), unlearn_fn=counted)
wall = time.perf_counter() - t
stop.set(); sampler.join()
peak = max(peak_box[0], proc.memory_info().rss)
total_compiles = engine.COMPILE_COUNTER.count
print(json.dumps({"wall_s": wall, "peak_rss": peak, "job_compiles": total_compiles, "per_method_compiles": counts,
                  "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
sys.stdout.flush()
pick = lambda *names: next(getattr(runner, n) for n in names if hasattr(runner, n))
load_dataset, build_model = pick("load_dataset", "_load_dataset"), pick("build_model", "_build")
optimizer_for = pick("optimizer_for", "_optim")
# steady state: rebuild the job's first (pretrain sgd, unlearn sgd / sam) context with ONE apply_fn and run
# every method twice; the second run reuses all compiled steps.
cfg = runner.JobConfig(out=out + "_steady", progress=False, **kw).validate()
ds = load_dataset(cfg, cfg.seed)
dd = engine.DeviceData.from_numpy(ds.x_train, ds.y_train)
apply_fn, p0, s0 = models.split_model(build_model(cfg, ds, cfg.seed))
init_fn = lambda k: models.split_model(build_model(cfg, ds, k))[1:]
pre = OptimConfig(lr=cfg.pretrain_lr)
orig = engine.train(apply_fn, p0, s0, dd, optimizer=pre, epochs=cfg.pretrain_epochs, batch_size=cfg.batch_size,
                    progress=False)
forget_idx = data.select_forget(ds.y_train, cfg.forget, cfg.forget_size, seed=cfg.seed)
retain_idx = data.retain_indices(len(ds.y_train), forget_idx)
steady = {}
for un in cfg.unlearn_optimizer:
    ucfg = optimizer_for(un, dataclasses.replace(engine.UNLEARN_DEFAULT, lr=cfg.unlearn_lr), cfg.rho, cfg.lamb)
    for name in cfg.methods:
        if name == "retrain" and un != cfg.unlearn_optimizer[0]:
            continue
        ctx = methods.Context(apply_fn=apply_fn, params=orig.params, model_state=orig.model_state, x=dd.x, y=dd.y,
                              retain_idx=retain_idx, forget_idx=forget_idx, num_classes=ds.num_classes,
                              epochs=cfg.unlearn_epochs, batch_size=cfg.batch_size, seed=cfg.seed, init_fn=init_fn,
                              pretrain_optimizer=pre, pretrain_epochs=cfg.pretrain_epochs, optimizer=ucfg)
        secs, comp = [], []
        for _ in range(2):
            c0 = engine.COMPILE_COUNTER.count
            secs.append(orig_unlearn(name, ctx, progress=False).seconds)
            comp.append(engine.COMPILE_COUNTER.count - c0)
        steady[f"{un}/{name}"] = {"first_s": secs[0], "steady_s": secs[1], "compiles": comp}
peak2 = max(peak, proc.memory_info().rss)
print(json.dumps({"steady": steady, "peak_rss_after_steady": peak2}))
"""


# The job children's JobConfig settings with --quick (tiny data, three methods, one variant); empty otherwise.
_QUICK_JOB = dict(
    max_train=200,
    max_test=100,
    pretrain_epochs=1,
    unlearn_epochs=1,
    methods=["retrain", "ft", "neggrad"],
    pretrain=["sgd"],
    unlearn_optimizer=["sgd"],
    figures=False,
    mem_models=2,
)


def _job_settings(cfg, **override) -> str:
    """The JobConfig settings a job child runs with, as its JSON argument."""
    return json.dumps({**(_QUICK_JOB if cfg.quick else {}), **override})


# The papers pretrain for about 200 epochs and unlearn for 10: the job's speed-ups over Retrain are also
# measured at that pretraining length (everything else default), where Retrain costs what it costs in the papers.
PAPERS_PRETRAIN_EPOCHS = 200

_LONG_JOB_CHILD = r"""
import json, sys, time
from jaxunlearn import runner
out, kw = sys.argv[1], json.loads(sys.argv[2])
t = time.perf_counter()
runner.run_job(runner.JobConfig(out=out, progress=False, **kw))
print(json.dumps({"wall_s": time.perf_counter() - t}))
"""


def _job_times(results: dict) -> dict:
    """Per variant and method: ``seconds`` and ``compile_seconds`` from a job's results.json."""
    st = results["settings"]
    return {
        "variants": {
            label: {name: e["seconds"] for name, e in v["methods"].items()} for label, v in results["variants"].items()
        },
        "variants_compile": {
            label: {name: e.get("compile_seconds") for name, e in v["methods"].items()}
            for label, v in results["variants"].items()
        },
        "epochs": {"pretrain": st["pretrain_epochs"], "unlearn": st["unlearn_epochs"]},
    }


def bench_long_job(cfg) -> dict:
    """The default job with the papers' pretraining length (``PAPERS_PRETRAIN_EPOCHS``; quick: 2), figures off."""
    epochs = 2 if cfg.quick else PAPERS_PRETRAIN_EPOCHS
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "run")
        p = _run_child(_LONG_JOB_CHILD, out, _job_settings(cfg, pretrain_epochs=epochs, figures=False), timeout=7200)
        if p.returncode != 0:
            return {"error": p.stderr[-3000:]}
        r = json.loads(p.stdout.strip().splitlines()[-1])
        with open(os.path.join(out, "results.json")) as f:
            r.update(_job_times(json.load(f)))
    return r


def bench_job(cfg) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "run")
        t = time.perf_counter()
        p = _run_child(_JOB_CHILD, out, _job_settings(cfg), timeout=7200)
        total = time.perf_counter() - t
        r = {}
        for line in p.stdout.strip().splitlines():
            if line.startswith("{"):
                r.update(json.loads(line))
        if "wall_s" not in r:
            return {"error": p.stderr[-3000:]}
        if "steady" not in r:
            r["steady"] = {}
            r["steady_error"] = p.stderr[-2000:]
        with open(os.path.join(out, "results.json")) as f:
            results = json.load(f)
    r["subprocess_s"] = total
    r["child_maxrss_getrusage"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    r.update(_job_times(results))
    r["papers_length"] = bench_long_job(cfg)
    return r


# ----------------------------------------------------------------------------------------------- report


def _steady(seconds, compile_seconds):
    """Wall time without compilation (``compile_seconds`` absent in older results: unchanged)."""
    return max(seconds - (compile_seconds or 0.0), 1e-6)


def _speedups(seconds: dict, compile_seconds: dict | None) -> tuple[dict, dict]:
    """Per method (Retrain and Original excluded): Retrain's wall time over the method's, and the same
    without compilation (empty when the results predate ``compile_seconds``)."""
    ret = seconds.get("retrain", float("nan"))
    names = [k for k in seconds if k not in ("retrain", "original")]
    wall = {k: ret / seconds[k] for k in names}
    if not compile_seconds:
        return wall, {}
    r = _steady(ret, compile_seconds.get("retrain"))
    return wall, {k: r / _steady(seconds[k], compile_seconds.get(k)) for k in names}


def _speedup_lines(j: dict) -> tuple[dict, list[str]]:
    """Per variant of a job: (wall speed-ups, speed-ups without compilation) and one report line each."""
    comp = j.get("variants_compile") or {}
    speedups = {label: _speedups(v, comp.get(label)) for label, v in j["variants"].items()}
    lines = []
    for label, v in j["variants"].items():
        ret = v.get("retrain", float("nan"))
        wall, no_comp = speedups[label]
        lines.append(
            f"**{label}** (Retrain {ret:.1f} s"
            + (f" [{_steady(ret, comp[label].get('retrain')):.1f} s]" if no_comp else "")
            + "): "
            + ", ".join(
                f"{k} {v[k]:.1f} s ({x:.1f}x" + (f" [{no_comp[k]:.1f}x]" if no_comp else "") + ")"
                for k, x in wall.items()
            )
        )
        lines.append("")
    return speedups, lines


def _long_job_report(long: dict) -> tuple[list[str], str]:
    """The papers-length job's section lines, and its note for the "10x faster than Retrain" target row:
    the worst speed-ups with and without compilation and the methods below 10x without it."""
    L = [
        "At the papers' pretraining length (the same job with `--pretrain-epochs "
        f"{long.get('epochs', {}).get('pretrain', PAPERS_PRETRAIN_EPOCHS)}`, figures off; in a subprocess):",
        "",
    ]
    if "error" in long:
        return L + ["```\n" + long["error"] + "\n```", ""], ""
    speedups, lines = _speedup_lines(long)
    worst_wall = min(min(wall.values()) for wall, _ in speedups.values())
    worst: dict[str, float] = {}  # per method, over the variants, without compilation
    for _, no_comp in speedups.values():
        for k, x in no_comp.items():
            worst[k] = min(worst.get(k, x), x)
    below = sorted((x, k) for k, x in worst.items() if x < 10)
    note = (
        f"; at the papers' {long['epochs']['pretrain']} pretraining epochs ({long['wall_s']:.0f} s): "
        f"worst {worst_wall:.1f}x with compile"
        + (f", {min(worst.values()):.1f}x without" if worst else "")
        + (" (below 10x without compilation: " + ", ".join(f"{k} {x:.1f}x" for x, k in below) + ")" if below else "")
    )
    return L + [f"Wall time {long['wall_s']:.0f} s.", ""] + lines, note


def _fmt_s(s):
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def _mark(ok):
    if isinstance(ok, str):  # a qualified verdict, e.g. "met on one device"
        return f"**{ok}**"
    return "**met**" if ok else "**not met**"


def write_report(results: dict, path: str, cfg) -> str:
    env = results["env"]
    L = ["# jaxunlearn benchmark results", ""]
    L.append(
        f"Generated by `benchmarks/run.py{' --quick' if cfg.quick else ''}` in one process run "
        f"({results['total_s']:.0f} s), {env['date']}"
        + (
            " (re-rendered from its JSON with `--from-json`; the timings are that run's)."
            if results.get("rerendered")
            else "."
        )
    )
    L.append("")
    L.append("## Machine and versions")
    L.append("")
    for k in (
        "machine",
        "cpus",
        "load_start",
        "load_end",
        "python",
        "jax",
        "jaxlib",
        "flax",
        "optax",
        "torch",
        "torch_threads",
        "xla_flags",
        "jax_devices",
        "jax_mesh",
    ):
        v = env.get(k)
        if isinstance(v, (list, tuple)):  # load averages (a list after a JSON round trip)
            v = ", ".join(f"{x:.2f}" for x in v)
        L.append(f"- {k}: {v}")
    L.append("")
    L.append(
        "Timings are medians of interleaved repeats (A, B, A, B, ...); ratios are within this run. The machine "
        "is shared with other jobs (see the load averages), so absolute times are noisy; ratios are the result. "
        "PyTorch uses `torch.set_num_threads(torch_threads)`; JAX uses the same cores as `jax_devices` XLA CPU "
        "devices (one per core, `distributed.cpu_devices`) with the batch sharded over them (`jax_mesh`); "
        "`*_1dev` rows are the same JAX programs on one device."
    )
    L.append("")
    rows = []  # (target, measured, status, note)
    s = results.get("steps")
    if s:
        L += [f"## Steps (small CNN, batch {s['batch']}, {'×'.join(map(str, s['shape']))})", ""]
        L += ["| step | compile (first call) | median | / SGD step |", "|---|---|---|---|"]
        for k, v in s["timings"].items():
            L.append(f"| {k} | {_fmt_s(v['first_s'])} | {_fmt_s(v['median_s'])} | {s['ratios'][k]:.2f} |")
        e = s["engine"]
        L.append("")
        L.append(
            f"Through `engine.train` (2 epochs, same batch): steady-state step SGD "
            f"{_fmt_s(e['sgd']['steady_step_s'])}, SAM {_fmt_s(e['sam']['steady_step_s'])}, ratio "
            f"{e['ratio_sam_sgd']:.2f}; compiles per run SGD {e['sgd']['compiles']}, SAM {e['sam']['compiles']} "
            "(second identical run: 0 = no recompilation)."
        )
        L.append("")
        r = s["ratios"]["sam_step"]
        rows.append(("SAM step / SGD step <= 2.0", f"{r:.2f} (engine.train: {e['ratio_sam_sgd']:.2f})", r <= 2.0, ""))
    t = results.get("torch")
    if t:
        L += [f"## Two-pass SAM vs PyTorch (threads {t['threads']})", ""]
        L += [
            "| model | batch | JAX SAM | torch SAM | torch/JAX SAM | JAX SGD | torch SGD | torch/JAX SGD | "
            "JAX compile (SAM) | JAX SAM, one device | torch/JAX SAM, one device |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name in ("cnn", "resnet18"):
            if name not in t:
                continue
            v = t[name]
            tm = v["timings"]
            one = tm.get("jax_sam_1dev")
            tail = f"{_fmt_s(one['median_s'])} | {v['ratio_torch_over_jax_sam_1dev']:.2f} |" if one else "— | — |"
            L.append(
                f"| {name} | {v['batch']} | {_fmt_s(tm['jax_sam']['median_s'])} | "
                f"{_fmt_s(tm['torch_sam']['median_s'])} | {v['ratio_torch_over_jax_sam']:.2f} | "
                f"{_fmt_s(tm['jax_sgd']['median_s'])} | {_fmt_s(tm['torch_sgd']['median_s'])} | "
                f"{v['ratio_torch_over_jax_sgd']:.2f} | {_fmt_s(tm['jax_sam']['first_s'])} | " + tail
            )
            rows.append(
                (
                    f"torch SAM / JAX SAM >= 1.0 ({name}, batch {v['batch']})",
                    f"{v['ratio_torch_over_jax_sam']:.2f}",
                    v["ratio_torch_over_jax_sam"] >= 1.0,
                    "",
                )
            )
        L.append("")
    h = results.get("hutchinson")
    if h:
        L += [f"## Hutchinson diagonal ({h['probes']} probes, small CNN, batch {h['batch']})", ""]
        L += ["| variant | compile (first call) | median | gradient equivalents |", "|---|---|---|---|"]
        g = h["timings"]["grad"]["median_s"]
        for k, v in h["timings"].items():
            gk = h["timings"]["grad_1dev"]["median_s"] if k.endswith("_1dev") else g
            L.append(f"| {k} | {_fmt_s(v['first_s'])} | {_fmt_s(v['median_s'])} | {v['median_s'] / gk:.1f} |")
        L.append("")
        ba = h["before_after"]
        old = ba["old_lax_map_4probes"]
        L.append(
            f"Before/after the curvature.py fix (4 probes in one chunk, one call): old `lax.map` "
            f"{_fmt_s(old['median_s'])} (first call {_fmt_s(old['first_s'])}),"
            f" new Python loop over a jitted chunk {_fmt_s(ba['new_library_4probes']['median_s'])} "
            f"(first call {_fmt_s(ba['new_library_4probes']['first_s'])})."
        )
        L.append("")
        L.append(
            f"Fastest JAX variant: `{h['best']}`; library default (on CPU chunks of 4 probes, unrolled): "
            f"`{h['default']}`. PyTorch Hutchinson costs "
            f"{h['torch_grad_equiv']:.1f} of its own gradients."
        )
        one = h.get("one_device_process", {})
        if "grad_equiv" in one:
            L.append("")
            L.append(
                f"In a fresh one-device process (no mesh), the library default takes {_fmt_s(one['hutchinson_s'])} "
                f"= {one['grad_equiv']:.1f} gradients of {_fmt_s(one['grad_s'])}; with `chunk_size=16` (16 probes "
                f"unrolled in one program) {_fmt_s(one['hutchinson16_s'])} = {one['grad_equiv16']:.1f}."
            )
        L.append("")
        ge = h["grad_equiv"][h["default"]]
        one = h.get("one_device_process", {})
        ge1, ge16 = one.get("grad_equiv"), one.get("grad_equiv16")
        ok1 = [g_ for g_ in (ge1, ge16) if g_ is not None and g_ <= h["probes"]]
        rows.append(
            (
                f"Hutchinson ({h['probes']} probes) <= {h['probes']} gradient equivalents",
                f"{ge:.1f} (default, against the data-parallel gradient)"
                + (f"; one-device process: default {ge1:.1f}, chunk_size=16 {ge16:.1f}" if ge1 is not None else ""),
                True if ge <= h["probes"] else "met on one device" if ok1 else False,
                "",
            )
        )
        rows.append(
            (
                "Hutchinson >= 2x faster than PyTorch",
                f"{h['speedup_vs_torch_default']:.2f}x (best variant {h['speedup_vs_torch_best']:.2f}x)",
                h["speedup_vs_torch_default"] >= 2.0,
                "",
            )
        )
    tm = results.get("train_many")
    if tm:
        L += [
            f"## K = {tm['K']} models with vmap vs sequential (digits CNN, {tm['epochs']} epochs, "
            f"{tm['examples_per_model']} examples each)",
            "",
        ]
        L += ["| contender | first run (with compile) | median |", "|---|---|---|"]
        for k, v in tm["timings"].items():
            L.append(f"| {k} | {_fmt_s(v['first_s'])} | {_fmt_s(v['median_s'])} |")
        L.append("")
        vi = tm.get("throughput_ratio_vmap_im2col")
        L.append(
            "`train_many_K`: `engine.train_many` with its defaults (on CPU the K model steps unrolled in one "
            f'program, `model_mode="unroll"`), the K models split over {tm["devices"]} XLA CPU device(s) '
            f"(`mesh=`). Throughput ratio (fastest sequential `engine.train` runs, `{tm['best_sequential']}`, / "
            f"`train_many_K`): steady state {tm['throughput_ratio']:.2f}x, first calls (both compiling) "
            f"{tm['throughput_ratio_with_compile']:.2f}x; "
            + (f'vmapped with `conv="im2col"` {vi:.2f}x; ' if vi is not None else "")
            + "XLA convolution under vmap on one device vs sequential "
            f"{tm['throughput_ratio_old']:.2f}x. Row k of `train_many` equals the separate run with seed k "
            f"(max |Δparam| {tm['max_abs_diff_vs_sequential']:.1e}). Engine compilations during the section: "
            f"{tm['compiles']} (each program compiles once)."
        )
        if "cores_busy" in tm:
            b = tm["cores_busy"]
            L.append("")
            L.append(
                "Cores kept busy (process CPU time / wall time, one more run each): "
                + ", ".join(f"`{k}` {v:.2f}" for k, v in b.items())
                + f" of {tm['cores']}."
            )
        L.append("")
        rows.append(
            (
                f"K={tm['K']} models with vmap: throughput >= 2x sequential",
                f"{tm['throughput_ratio']:.2f}x (vmap, XLA conv, one device: {tm['throughput_ratio_old']:.2f}x)",
                tm["throughput_ratio"] >= 2.0,
                "",
            )
        )
    m = results.get("memory")
    if m:
        L += ["## Memory of the curvature functions (fresh subprocess each)", ""]
        L += [
            "| function | model | params | chunk | RSS before | peak RSS (sampled) | peak − before | XLA temp buffers "
            "(one chunk) | time |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in m["runs"]:
            if "error" in r:
                L.append(f"| {r['fn']} | {r['model']} | | {r['chunk']} | error | | | | |")
                continue
            mb = lambda b: f"{b / 2**20:.0f} MiB" if b is not None else "n/a"  # noqa: E731
            L.append(
                f"| {r['fn']} | {r['model']} | {r['params']} | {r['chunk']} | {mb(r['rss_before'])} | "
                f"{mb(r['peak_rss'])} | {mb(r['peak_rss'] - r['rss_before'])} | {mb(r['xla_temp_bytes'])} | "
                f"{_fmt_s(r['seconds'])} |"
            )
        L.append("")
    j = results.get("job")
    if j:
        L += ["## Default job (`jaxunlearn run` defaults, in a subprocess)", ""]
        if "error" in j:
            L.append("```\n" + j["error"] + "\n```")
        else:
            L.append(
                f"Wall time {j['wall_s']:.0f} s, peak RSS {j['peak_rss'] / 2**30:.2f} GiB, engine compilations "
                f"{j['job_compiles']}."
            )
            L.append("")
            if j.get("variants_compile"):
                L.append(
                    "Per method: wall time (`seconds` in results.json), its speed-up over Retrain, and in brackets "
                    "the same without the time JAX spent tracing and compiling (`compile_seconds`)."
                )
                L.append("")
            speedups, lines = _speedup_lines(j)
            L += lines
            L.append(
                "Compilations per `methods.unlearn` call in the job (one list entry per call): "
                + ", ".join(f"{k}: {v}" for k, v in j["per_method_compiles"].items())
            )
            L.append("")
            L.append(
                "Steady state (first pretraining variant, each method run twice on one apply_fn; the second run "
                "reuses the compiled steps):"
            )
            L.append("")
            L.append("| method | first run | steady-state run | Retrain steady / method steady | compiles (1st, 2nd) |")
            L.append("|---|---|---|---|---|")
            if j.get("steady_error"):
                L.append("Steady-state part failed:\n\n```\n" + j["steady_error"] + "\n```\n")
            first_un = next(iter(j["steady"]), "x/").split("/")[0]
            rs = j["steady"].get(f"{first_un}/retrain", {}).get("steady_s")
            worst = None
            for k, v in j["steady"].items():
                sp = rs / v["steady_s"] if rs else float("nan")
                if not k.endswith("/retrain"):
                    worst = sp if worst is None else min(worst, sp)
                L.append(f"| {k} | {v['first_s']:.2f} s | {v['steady_s']:.2f} s | {sp:.1f}x | {v['compiles']} |")
            L.append("")
            long_note = ""
            if j.get("papers_length"):
                long_lines, long_note = _long_job_report(j["papers_length"])
                L += long_lines
            rows.append(("default job wall time < 3 min", f"{j['wall_s']:.0f} s", j["wall_s"] < 180, ""))
            wall0, no_comp0 = next(iter(speedups.values()))
            worst_job = min(wall0.values())
            worst_nc = min(no_comp0.values()) if no_comp0 else None
            ep = j.get("epochs")
            rows.append(
                (
                    "each method >= 10x faster than Retrain",
                    f"worst {worst_job:.1f}x (results.json, with compile)"
                    + (f"; without compilation {worst_nc:.1f}x" if worst_nc is not None else "")
                    + "; worst steady "
                    + (f"{worst:.1f}x" if worst is not None else "n/a")
                    + long_note,
                    worst_job >= 10,
                    (
                        f"settings: Retrain trains {ep['pretrain']} epochs, the default one-phase recipe (FT, "
                        f"L1-sparse, ...) {ep['unlearn']} epochs over the retain set: at equal step cost "
                        f"{ep['pretrain'] / ep['unlearn']:.0f}x for one SGD step per batch, half that with SAM; "
                        "Sharp MinMax takes four gradients per retain batch (a SAM-min retain step and a SAM-max "
                        "forget step), so against SGD Retrain it needs 40 pretraining epochs per unlearning epoch "
                        "for 10x, with or without compilation"
                    )
                    if ep
                    else "",
                )
            )
            rows.append(
                ("default job peak RSS < 4 GiB", f"{j['peak_rss'] / 2**30:.2f} GiB", j["peak_rss"] < 4 * 2**30, "")
            )
            zero = bool(j["steady"]) and all(v["compiles"][1] == 0 for v in j["steady"].values())
            rows.append(
                (
                    "no recompilation when shapes are shared (second run of each method)",
                    "0 compiles in every re-run" if zero else "recompiles found",
                    zero,
                    "",
                )
            )
    limit_lines, limits = _limits_report(results)
    L += limit_lines
    L2 = [
        "## Targets",
        "",
        "| target | measured | status | physical limit (FLOPs at the measured peak) or settings |",
        "|---|---|---|---|",
    ]
    for target, meas, ok, why in rows:
        lim = next((v for k, v in limits.items() if target.startswith(k)), "") or why
        L2.append(f"| {target} | {meas} | {_mark(ok)} | {lim} |")
    L2.append("")
    notes = results.get("notes_md")
    text = "\n".join(L[: L.index("## Machine and versions")] + L2 + L[L.index("## Machine and versions") :])
    if notes:
        text += "\n" + notes
    with open(path, "w") as f:
        f.write(text)
    return text


def _limits_report(results: dict) -> tuple[list[str], dict[str, str]]:
    """The "Physical limit" section (FLOPs, achieved rate, floor at the matmul peak) and, per target row
    prefix, the limit it implies."""
    lim = results.get("limits")
    if not lim:
        return [], {}
    f, pk = lim["flops"], lim["peak_gflops"]
    peak = max(pk.values())
    torch_sec = results.get("torch") or {}
    rows = []  # (program, flops key, jax seconds, torch seconds)
    st = (results.get("steps") or {}).get("timings", {})
    tcnn = (torch_sec.get("cnn") or {}).get("timings", {})
    tres = (torch_sec.get("resnet18") or {}).get("timings", {})
    hut = (results.get("hutchinson") or {}).get("timings", {})
    gv = lambda d, k: d.get(k, {}).get("median_s")  # noqa: E731
    # JAX and PyTorch from the same interleaved section where there is one
    jsgd, jsam = (gv(tcnn, "jax_sgd"), gv(tcnn, "jax_sam")) if tcnn else (gv(st, "sgd_step"), gv(st, "sam_step"))
    rows.append(("small CNN SGD step", "cnn_sgd_step", jsgd, gv(tcnn, "torch_sgd")))
    rows.append(("small CNN SAM step", "cnn_sam_step", jsam, gv(tcnn, "torch_sam")))
    rows.append(("ResNet-18 SGD step", "resnet18_sgd_step", gv(tres, "jax_sgd"), gv(tres, "torch_sgd")))
    rows.append(("ResNet-18 SAM step", "resnet18_sam_step", gv(tres, "jax_sam"), gv(tres, "torch_sam")))
    rows.append(("small CNN gradient", "cnn_grad", gv(hut, "grad"), gv(hut, "torch_grad")))
    rows.append(
        (
            f"Hutchinson, {lim['probes']} probes",
            "cnn_hutchinson",
            gv(hut, "library_default"),
            gv(hut, "torch_hutchinson"),
        )
    )
    tm = results.get("train_many")
    if tm:
        steps = tm["K"] * tm["epochs"] * -(-tm["examples_per_model"] // tm.get("batch_size", 64))
        seq = tm["timings"][tm["best_sequential"]]["median_s"] / steps
        many = tm["timings"]["train_many_K"]["median_s"] / steps
        rows.append(("digits CNN step, batch 64 (sequential runs)", "digits_cnn_sgd_step_b64", seq, None))
        rows.append(("digits CNN step, batch 64 (train_many, per model)", "digits_cnn_sgd_step_b64", many, None))
    L = [
        "## Physical limit: FLOPs against the measured matmul rate",
        "",
        f"Measured f32 matmul ({lim['matmul_n']}², same cores): "
        + ", ".join(
            f"{k.split('_')[0].replace('jax', 'JAX').replace('torch', 'PyTorch')} {v:.0f} GFLOP/s"
            for k, v in pk.items()
        )
        + f"; peak below = {peak:.0f} GFLOP/s. FLOPs are XLA's cost analysis of the "
        "compiled one-device JAX program (PyTorch runs the same model, so the same FLOPs, except its Hutchinson "
        "loop, whose double backward does more; its column there is the rate of doing the same estimate).",
        "",
        "| program | GFLOP per call | JAX | JAX GFLOP/s | JAX % of peak | PyTorch | PyTorch GFLOP/s | floor at peak |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rate = lambda fl, t: (f"{fl / t / 1e9:.0f}", f"{100 * fl / t / 1e9 / peak:.0f} %") if fl and t else ("—", "—")  # noqa: E731
    for name, key, tj, tt in rows:
        fl = f.get(key)
        if not fl:
            continue
        jr, jp = rate(fl, tj)
        tr_, _ = rate(fl, tt)
        L.append(
            f"| {name} | {fl / 1e9:.3f} | {_fmt_s(tj) if tj else '—'} | {jr} | {jp} | "
            f"{_fmt_s(tt) if tt else '—'} | {tr_} | {_fmt_s(fl / peak / 1e9)} |"
        )
    L.append("")
    limits: dict[str, str] = {}
    if f.get("cnn_sam_step") and f.get("cnn_sgd_step"):
        limits["SAM step / SGD step"] = f"FLOP ratio {f['cnn_sam_step'] / f['cnn_sgd_step']:.2f}"
    for model, key, tt in (
        ("cnn", "cnn_sam_step", gv(tcnn, "torch_sam")),
        ("resnet18", "resnet18_sam_step", gv(tres, "torch_sam")),
    ):
        if f.get(key) and tt:
            limits[f"torch SAM / JAX SAM >= 1.0 ({model}"] = (
                f"JAX at peak would give torch/JAX {tt / (f[key] / peak / 1e9):.1f}; PyTorch itself runs at "
                f"{100 * f[key] / tt / 1e9 / peak:.0f} % of peak"
            )
    if f.get("cnn_hutchinson") and f.get("cnn_grad"):
        fe = f["cnn_hutchinson"] / f["cnn_grad"]
        limits["Hutchinson ("] = (
            f"{fe:.1f} gradient equivalents of FLOPs (one exact HVP = {f['cnn_hvp'] / f['cnn_grad']:.2f} "
            "gradients): at equal FLOP rates the target is below the work of exact HVPs"
            if f.get("cnn_hvp")
            else f"{fe:.1f} gradient equivalents of FLOPs"
        )
        th = gv(hut, "torch_hutchinson")
        if th:
            limits["Hutchinson >= 2x"] = f"at peak at most {th / (f['cnn_hutchinson'] / peak / 1e9):.1f}x PyTorch"
    if tm and f.get("digits_cnn_sgd_step_b64"):
        floor = f["digits_cnn_sgd_step_b64"] / peak / 1e9
        text = f"at peak at most {seq / floor:.1f}x the sequential runs (their step: {100 * floor / seq:.0f} % of peak)"
        busy = tm.get("cores_busy", {}).get(tm["best_sequential"])
        if busy:
            text += (
                f"; the sequential runs keep {busy:.2f} of {tm['cores']} cores busy: filling the cores alone gives "
                f"{tm['cores'] / busy:.2f}x, the rest needs a lower CPU cost per model step"
            )
        limits[f"K={tm['K']} models"] = text
    return L, limits


def environment() -> dict:
    import flax

    env = {
        **machine(),
        "cpus": _torch_threads(),
        "jax": jax.__version__,
        "jaxlib": getattr(__import__("jaxlib"), "__version__", "?"),
        "flax": flax.__version__,
        "optax": optax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", "(unset)"),
        "jax_devices": f"{jax.device_count()} x {jax.default_backend()}",
        "jax_mesh": "none (one device)" if MESH is None else f"data={distributed.data_size(MESH)}",
    }
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_threads"] = _torch_threads()
    except ImportError:
        env["torch"] = "not installed"
    return env


NOTES_FILE = os.path.join(HERE, "NOTES.md")


def _setup_devices(num: int | None) -> None:
    """One XLA CPU device per core and a ``("data",)`` mesh over them (JAX contenders run data-parallel,
    as ``engine.run(mesh=...)`` does); must run before the first JAX operation of the process."""
    global MESH
    try:
        n = distributed.cpu_devices(num)
    except RuntimeError:  # called in a process that already ran JAX (e.g. the smoke test): keep its devices
        n = len(jax.devices("cpu"))
    MESH = distributed.make_mesh(n) if n > 1 and jax.default_backend() == "cpu" else None


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (smoke test)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved rounds per timing (default 7; quick 2)")
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"), help="markdown report path")
    ap.add_argument("--json", default=None, help="also write the raw results as JSON here")
    ap.add_argument(
        "--cpu-devices",
        type=int,
        default=None,
        help="XLA CPU devices (one per core by default, see distributed.cpu_devices); 1 = one device",
    )
    ap.add_argument(
        "--from-json",
        default=None,
        help="re-render --out from the raw results of an earlier run (its --json file) with the current "
        "NOTES.md; runs nothing",
    )
    cfg = ap.parse_args(argv)
    if cfg.from_json:
        with open(cfg.from_json) as f:
            results = json.load(f)
        results["rerendered"] = True
        cfg.quick = cfg.quick or False
        if os.path.exists(NOTES_FILE):
            with open(NOTES_FILE) as f:
                results["notes_md"] = f.read()
        write_report(results, cfg.out, cfg)
        print(f"[bench] wrote {cfg.out} from {cfg.from_json}", flush=True)
        return results
    _setup_devices(cfg.cpu_devices)
    cfg.repeats = cfg.repeats or (2 if cfg.quick else 7)
    cfg.inner = 1 if cfg.quick else 3
    sections = [s.strip() for s in cfg.sections.split(",") if s.strip()]
    for s in sections:
        if s not in SECTIONS:
            ap.error(f"unknown section {s!r}; choose from {', '.join(SECTIONS)}")
    t0 = time.perf_counter()
    results: dict = {"env": environment()}
    fns = {
        "steps": bench_steps,
        "torch": bench_torch,
        "hutchinson": bench_hutchinson,
        "train_many": bench_train_many,
        "memory": bench_memory,
        "job": bench_job,
        "limits": bench_limits,
    }
    for s in sections:
        ts = time.perf_counter()
        print(f"[bench] {s} ...", flush=True)
        results[s] = fns[s](cfg)
        print(f"[bench] {s} done in {time.perf_counter() - ts:.0f} s", flush=True)
    results["env"]["load_end"] = os.getloadavg()
    results["total_s"] = time.perf_counter() - t0
    if os.path.exists(NOTES_FILE) and not cfg.quick:
        with open(NOTES_FILE) as f:
            results["notes_md"] = f.read()
    write_report(results, cfg.out, cfg)
    if cfg.json:
        with open(cfg.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    print(f"[bench] wrote {cfg.out}", flush=True)
    return results


if __name__ == "__main__":
    main()
