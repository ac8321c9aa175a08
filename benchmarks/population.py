"""Population training throughput: K models trained together against the same K models one after another.

    .venv/bin/python benchmarks/population.py              # K = 8, 32, 64 on the digits CNN (minutes on 2 cores)
    .venv/bin/python benchmarks/population.py --width 16   # the CNN of the population experiment (jaxunlearn --width)
    .venv/bin/python benchmarks/population.py --quick      # tiny sizes (the slow smoke test runs this)

Writes ``benchmarks/RESULTS-population.md`` and ``benchmarks/results-population.json`` (with ``--width W``:
``RESULTS-population-widthW.md`` / ``results-population-widthW.json``; ``--out`` / ``--json`` override).

Workload: NegGrad unlearning (paired retain / forget batches, plain AdamW, one epoch over the retain set, batch
64) of the digits CNN (the job's default model and data), from K original models with their own
initialisations and seeds. Contenders, for each K, in ONE process run:

* ``sequential``: ``methods.unlearn("neggrad", ctx_k)`` for k = 1 … K, one after another (the engine's loop;
  the compiled step is reused by every model after the first);
* ``population``: ``population.unlearn_population("neggrad", ctx, originals)`` with its defaults (on CPU: chunks
  of ``CPU_MODELS_PER_DEVICE`` models per device, unrolled, the models split over the XLA CPU devices);
* ``population_vmap``: the same chunks, vmapped (``model_mode="vmap"``);
* ``population_vmap_all``: all K models in one vmapped program (``chunk=K, model_mode="vmap"``), what an
  accelerator runs.

Each contender's first call (compilation included) is timed separately; then ``--repeats`` interleaved rounds
(A, B, C, A, B, C, …) and the median. Throughput = K / median seconds (models per second); ratios are within this
run. Row k of the population equals the sequential model k (max |Δparam| reported).

The physical limit (``bound``): one jitted training step of one model at batch B against the same step at batch
K·B (the FLOPs of K models' steps in one program, the best case for batching K models): when K·B costs K times B,
the step is compute-bound and no way of batching models can beat running them one after another by more than
what it saves outside the step (dispatch, the Python loop).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from benchmarks._timing import interleaved, machine  # noqa: E402
from jaxunlearn import distributed  # noqa: E402

MESH = None


def _setup_devices(num: int | None) -> None:
    """One XLA CPU device per core (must run before the first JAX operation), and a mesh over them."""
    global MESH
    import jax

    try:
        n = distributed.cpu_devices(num)
    except RuntimeError:  # a process that already ran JAX (the smoke test): keep its devices
        n = len(jax.devices("cpu"))
    MESH = distributed.make_mesh(n) if n > 1 and jax.default_backend() == "cpu" else None


def _block(x):
    import jax

    return jax.block_until_ready(x)


def _workload(cfg):
    """The data, the K_max original models (initialisations) and the Context of the NegGrad unlearning."""
    import numpy as np

    from jaxunlearn import data, engine, methods, models
    from jaxunlearn.plan import UNLEARN_DEFAULT

    ds = data.load("digits", seed=0, max_train=256 if cfg.quick else None)
    w = 4 if cfg.quick else cfg.width
    kw = {} if w is None else {"channels": (w, 2 * w), "dense": 4 * w}  # as runner.build_model's --width

    def build(seed):
        return models.split_model(
            models.build("cnn", num_classes=ds.num_classes, input_shape=ds.input_shape, seed=seed, **kw)
        )

    apply_fn, params, state = build(0)
    dd = engine.DeviceData.from_numpy(ds.x_train, ds.y_train)
    n = len(ds.y_train)
    forget = np.arange(0, n, 10)
    retain = np.setdiff1d(np.arange(n), forget)
    ctx = methods.Context(
        apply_fn, params, state, dd.x, dd.y, retain, forget, ds.num_classes,
        optimizer=dataclasses.replace(UNLEARN_DEFAULT), epochs=1, batch_size=64, seed=0,
        init_fn=lambda s: build(s)[1:],
    )  # fmt: skip
    inits = [build(1000 + k)[1:] for k in range(max(cfg.ks))]
    return ds, ctx, inits


def bench_population(cfg) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxunlearn import engine, methods, population

    ds, ctx, inits = _workload(cfg)
    rows = []
    for k in cfg.ks:
        stacked = [jax.tree.map(lambda *a: jnp.stack(a), *[m[i] for m in inits[:k]]) for i in (0, 1)]
        originals = population.Population(*stacked, seeds=tuple(range(k)))
        mesh = MESH if MESH is not None and k % distributed.data_size(MESH) == 0 else None

        def sequential(k=k):
            out = []
            for i in range(k):
                c = dataclasses.replace(ctx, params=inits[i][0], model_state=inits[i][1], seed=i)
                out.append(methods.unlearn("neggrad", c, progress=False).params)
            return _block(out)

        def pop(k=k, mesh=mesh, originals=originals, **kw):
            out = population.unlearn_population("neggrad", ctx, originals, mesh=mesh, progress=False, **kw)
            _block(out.params)
            return out

        contenders = {
            "sequential": sequential,
            "population": pop,
            "population_vmap": lambda pop=pop: pop(model_mode="vmap"),
            "population_vmap_all": lambda k=k, pop=pop: pop(chunk=k, model_mode="vmap"),
        }
        c0 = engine.COMPILE_COUNTER.count
        t = interleaved(contenders, cfg.repeats)
        many = pop().params
        seq = sequential()
        diff = max(
            float(jnp.max(jnp.abs(a[i] - b)))
            for i in range(k)
            for a, b in zip(jax.tree.leaves(many), jax.tree.leaves(seq[i]))
        )
        row = {
            "K": k,
            "devices": 1 if mesh is None else distributed.data_size(mesh),
            "chunk": population.default_chunk(k, mesh),
            "timings": t,
            "models_per_s": {name: k / v["median_s"] for name, v in t.items()},
            "ratio": t["sequential"]["median_s"] / t["population"]["median_s"],
            "ratio_vmap": t["sequential"]["median_s"] / t["population_vmap"]["median_s"],
            "ratio_vmap_all": t["sequential"]["median_s"] / t["population_vmap_all"]["median_s"],
            "ratio_with_compile": t["sequential"]["first_s"] / t["population"]["first_s"],
            "max_abs_diff": diff,
            "engine_compilations": engine.COMPILE_COUNTER.count - c0,
        }
        rows.append(row)
        print(f"[population] K={k}: ratio {row['ratio']:.2f}x (vmap, all K: {row['ratio_vmap_all']:.2f}x)", flush=True)
    return {"rows": rows, "bound": _bound(cfg, ctx), "train_examples": len(ds.y_train), "epochs": ctx.epochs,
            "retain": len(ctx.retain_idx), "forget": len(ctx.forget_idx),
            "width": 4 if cfg.quick else cfg.width}  # fmt: skip


def _bound(cfg, ctx) -> dict:
    """Seconds of one jitted NegGrad step of one model at batch B and at batch K·B (same program, K× the FLOPs)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxunlearn import engine
    from jaxunlearn.methods.neggrad import neggrad_loss
    from jaxunlearn.plan import StepInfo

    step = jax.jit(engine.make_step(ctx.apply_fn, neggrad_loss, ctx.optimizer), donate_argnums=0)
    hp = {"alpha": jnp.float32(0.99)}
    out = {}
    rng = np.random.default_rng(0)
    for k in (1,) + tuple(cfg.ks):
        b = 64 * k
        batch = {
            "retain": engine.ArraySource.gather({"x": ctx.x, "y": ctx.y}, jnp.asarray(rng.choice(ctx.retain_idx, b))),
            "forget": engine.ArraySource.gather(
                {"x": ctx.x, "y": ctx.y}, jnp.asarray(rng.choice(ctx.forget_idx, k * 13))
            ),
        }
        box = [engine.init_state(jax.tree.map(jnp.copy, ctx.params), ctx.model_state, ctx.optimizer)]

        def call(box=box, batch=batch):
            box[0], loss = step(box[0], batch, hp, StepInfo.at(total_steps=100))
            return loss

        _block(call())
        times = []
        for _ in range(max(3, cfg.repeats)):
            t0 = time.perf_counter()
            for _ in range(3):
                loss = call()
            _block(loss)
            times.append((time.perf_counter() - t0) / 3)
        out[str(k)] = statistics.median(times)
    return {"step_s": out, "per_model": {k: v / int(k) / out["1"] for k, v in out.items()}}


def environment() -> dict:
    import jax

    return {
        **machine(),
        "jax": jax.__version__,
        "jax_devices": f"{jax.device_count()} x {jax.default_backend()}",
        "jax_mesh": "none (one device)" if MESH is None else f"data={distributed.data_size(MESH)}",
    }


def _fmt_s(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def write_report(results: dict, path: str, cfg) -> str:
    env, sec = results["env"], results["population"]
    goal = next((r for r in sec["rows"] if r["K"] == 64), None)
    L = ["# jaxunlearn population benchmark", ""]
    L.append(
        f"Generated by `benchmarks/population.py{' --quick' if cfg.quick else ''}` in one process run "
        f"({results['total_s']:.0f} s), {env['date']}. Ratios are within this run. The machine was shared with "
        "another session's jobs (see the load averages): absolute times are noisy, the interleaved ratios less so."
    )
    L += ["", "## Target", "", "| target | measured | status |", "|---|---|---|"]
    if goal is not None:
        best = max(goal["ratio"], goal["ratio_vmap"], goal["ratio_vmap_all"])
        ok = best >= 3.0
        L.append(f"| K = 64 population >= 3x sequential throughput | {best:.2f}x | **{'met' if ok else 'not met'}** |")
    else:
        L.append("| K = 64 population >= 3x sequential throughput | (K = 64 not run: --quick) | — |")
    L += ["", "## Machine", ""]
    L += [f"- {k}: {v}" for k, v in env.items()]
    L += [
        "",
        f"## NegGrad unlearning of the digits CNN (width {sec.get('width') or 32}: conv channels w, 2w, dense 4w; "
        f"{sec['retain']} retain / {sec['forget']} forget examples, "
        f"{sec['epochs']} epoch, batch 64)",
        "",
        "| K | devices | chunk | contender | first call (compile) | median | models / s | vs sequential |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sec["rows"]:
        for name, t in r["timings"].items():
            ratio = r["timings"]["sequential"]["median_s"] / t["median_s"]
            chunk = {"population": r["chunk"], "population_vmap": r["chunk"], "population_vmap_all": r["K"]}.get(
                name, 1
            )
            L.append(
                f"| {r['K']} | {r['devices']} | {chunk} | {name} | {_fmt_s(t['first_s'])} | {_fmt_s(t['median_s'])} "
                f"| {r['models_per_s'][name]:.2f} | {ratio:.2f}x |"
            )
    L.append("")
    L.append(
        "Row k of the population equals the sequential model k: max |Δparam| "
        + ", ".join(f"K={r['K']}: {r['max_abs_diff']:.1e}" for r in sec["rows"])
        + ". With compilation (first calls): "
        + ", ".join(f"K={r['K']}: {r['ratio_with_compile']:.2f}x" for r in sec["rows"])
        + "."
    )
    b = sec["bound"]
    L += [
        "",
        "## Physical limit: one step at batch B vs K·B",
        "",
        "| batch | step | per model-step, relative to batch 64 |",
        "|---|---|---|",
    ]
    for k, s in b["step_s"].items():
        L.append(f"| 64 × {k} | {_fmt_s(s)} | {b['per_model'][k]:.2f} |")
    L += [
        "",
        "A per-model cost near 1.0 at batch 64·K means the step is compute-bound on this machine: K models cost K "
        "times one model however they are batched, and a population can only save what the sequential runs spend "
        "outside the step (Python loop, dispatch, per-run setup) or gain from filling idle cores.",
    ]
    if os.path.exists(NOTES_FILE) and not cfg.quick:
        with open(NOTES_FILE) as f:
            L += ["", f.read().strip()]
    text = "\n".join(L) + "\n"
    with open(path, "w") as f:
        f.write(text)
    return path


NOTES_FILE = os.path.join(HERE, "NOTES-population.md")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny data and model, K = 2, 4, 8 (smoke test)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved rounds per timing (default 3; quick 1)")
    ap.add_argument("--width", type=int, default=None, help="CNN base width (default 32, the job's default model)")
    ap.add_argument("--out", default=None, help="markdown report path (default benchmarks/RESULTS-population*.md)")
    ap.add_argument("--json", default=None, help="raw results (default benchmarks/results-population*.json)")
    ap.add_argument("--cpu-devices", type=int, default=None, help="XLA CPU devices (default: one per core)")
    ap.add_argument("--from-json", default=None, help="re-render --out from an earlier run's JSON; runs nothing")
    cfg = ap.parse_args(argv)
    suffix = "" if cfg.width is None else f"-width{cfg.width}"
    cfg.out = cfg.out or os.path.join(HERE, f"RESULTS-population{suffix}.md")
    cfg.json = cfg.json or os.path.join(HERE, f"results-population{suffix}.json")
    if cfg.from_json:
        with open(cfg.from_json) as f:
            results = json.load(f)
        write_report(results, cfg.out, cfg)
        print(f"[population] wrote {cfg.out} from {cfg.from_json}", flush=True)
        return results
    _setup_devices(cfg.cpu_devices)
    cfg.repeats = cfg.repeats or (1 if cfg.quick else 3)
    cfg.ks = (2, 4, 8) if cfg.quick else (8, 32, 64)
    t0 = time.perf_counter()
    results = {"env": environment()}
    results["population"] = bench_population(cfg)
    results["env"]["load_end"] = os.getloadavg()
    results["total_s"] = time.perf_counter() - t0
    write_report(results, cfg.out, cfg)
    with open(cfg.json, "w") as f:
        json.dump(results, f, indent=1, default=str)
    print(f"[population] wrote {cfg.out}", flush=True)
    return results


if __name__ == "__main__":
    main()
