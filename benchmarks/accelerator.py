"""Accelerator check: the library's main costs measured on whatever backend JAX finds (CPU, GPU or TPU).

    python benchmarks/accelerator.py                 # full sizes (under 8 minutes on one GPU)
    python benchmarks/accelerator.py --smoke         # tiny sizes, well under a minute on a CPU
    python benchmarks/accelerator.py --out PATH.md   # report path (the JSON goes beside it, PATH.json)

It writes ``benchmarks/RESULTS-<backend>.md`` (``cpu``, ``gpu`` or ``tpu``: the backend the run actually
used, not the one that was hoped for) and the raw numbers as ``benchmarks/RESULTS-<backend>.json``. Four
sections, every ratio measured within this one run:

(a) **SAM step vs SGD step** on the small CNN (28×28×1) and ResNet-18 (32×32×3), batch 128: one jitted
    training step each (``jax.value_and_grad``, ``plan.build_optimizer``: SGD with momentum, and the same
    chained after ``transforms.sam``, whose ``grad_fn`` takes the second gradient at the perturbed point),
    compiled ahead of time; median over interleaved repeats of a few consecutive steps, each repeat ended
    with ``jax.block_until_ready``. Also XLA's FLOP ratio of the two programs (≈ 2: two forward/backward
    passes), the floor the time ratio approaches once the step fills the device.
(b) **Hutchinson Hessian diagonal** (``curvature.hutchinson_diagonal``, 16 probes, library defaults: on
    GPU/TPU vmapped chunks of 16 probes, on CPU unrolled chunks of 4) in gradient equivalents: its time over
    one jitted gradient of the same loss on the same batch, for both models.
(c) **K models at once**: ``engine.train_many`` with K = 1, 8, 32 digits CNNs (the default job's model,
    70 % subsets, 3 epochs) against K sequential ``engine.train`` runs with the same batches; the speed-up
    is the sequential time over the ``train_many`` time (steady state: both compiled), and row k of
    ``train_many`` is compared with run k.
(d) **The default job**: ``runner.run_job(JobConfig())`` with every default (``jaxunlearn run``), its wall
    time and every method's speed-up over Retrain, with and without the time spent compiling.

``--smoke`` runs the same four sections at tiny sizes (K = 1, 2, 4; Hutchinson on the small CNN only; a
one-epoch job with Retrain and FT), compiled with XLA's lowest backend optimization level unless
``XLA_FLAGS`` is set: it checks that everything runs on the backend and that the report is complete; its
ratios say little about the hardware. On a CPU without ``--smoke`` the full sizes take tens of minutes on
a few cores, and the report is marked as CPU numbers.

On a GPU machine (CUDA 12): install JAX with its CUDA plugin first, then the library, which keeps that
JAX (its requirement is only ``jax>=0.6``), and check that JAX sees the device before the run::

    pip install "jax[cuda12]"            # skip where a CUDA-enabled jax is already installed
    pip install -e .
    python -c "import jax; print(jax.devices())"     # must list CudaDevice(id=0), not CpuDevice
    python benchmarks/accelerator.py                 # -> benchmarks/RESULTS-gpu.md and RESULTS-gpu.json

On a TPU VM the same with ``pip install "jax[tpu]"`` (-> ``RESULTS-tpu.md``). The report is rewritten after
every section, so a run stopped early still leaves the finished sections; a section that fails is
reported with its error and the others still run (exit status 1).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks._timing import interleaved, machine  # noqa: E402

PROG = "python benchmarks/accelerator.py"
SECTIONS = {
    "sam_step": "(a) SAM step vs SGD step",
    "hutchinson": "(b) Hutchinson diagonal in gradient equivalents",
    "train_many": "(c) K models at once (engine.train_many) vs K sequential runs",
    "job": "(d) The default job",
}

# Sizes per mode. Full: sized for one GPU (the whole run in under 8 minutes); smoke: tiny, for a CPU.
FULL = {
    "step_models": [
        ("cnn", (28, 28, 1), 128, {}, 10),  # (model, input shape, batch, model kwargs, steps per repeat)
        ("resnet18", (32, 32, 3), 128, {}, 5),
    ],
    "repeats": 7,
    "hutchinson_models": ("cnn", "resnet18"),
    "probes": 16,
    "hutchinson_repeats": 5,
    "many_ks": (1, 8, 32),
    "many_epochs": 3,
    "many_batch": 64,
    "many_max_train": None,
    "many_model": {},
    "many_repeats": 3,
    "job": {},
}
SMOKE = {
    "step_models": [
        ("cnn", (8, 8, 1), 16, {"channels": (8, 16), "dense": 32}, 2),
        ("resnet18", (8, 8, 3), 4, {"width": 0.125}, 2),
    ],
    "repeats": 3,
    "hutchinson_models": ("cnn",),
    "probes": 4,
    "hutchinson_repeats": 3,
    "many_ks": (1, 2, 4),
    "many_epochs": 1,
    "many_batch": 32,
    "many_max_train": 160,
    "many_model": {"channels": (4, 8), "dense": 16},
    "many_repeats": 2,
    "job": {
        "max_train": 200,
        "max_test": 100,
        "pretrain_epochs": 1,
        "unlearn_epochs": 1,
        "methods": ("retrain", "ft"),
        "pretrain": ("sgd",),
        "unlearn_optimizer": ("sgd",),
        "figures": False,
        "mem_models": 2,
    },
}

# Smoke programs run a few times each, so compiling dominates: XLA's lowest backend optimization level
# about halves the smoke run's CPU time (unless XLA_FLAGS is set).
SMOKE_XLA_FLAGS = "--xla_backend_optimization_level=0"


class _Parser(argparse.ArgumentParser):
    """Bad flags end the run with one line on stderr (and exit status 2), not a usage block."""

    def error(self, message):
        self.exit(2, f"{PROG}: error: {message} (usage: {PROG} [--smoke] [--out PATH.md])\n")


def parse_args(argv=None) -> argparse.Namespace:
    ap = _Parser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: every section, well under a minute on a CPU")
    ap.add_argument(
        "--out",
        default=None,
        help="markdown report path, ending in .md (default benchmarks/RESULTS-<backend>.md); the JSON is "
        "written beside it with the suffix .json",
    )
    args = ap.parse_args(argv)
    if args.out is not None:
        if not args.out.endswith(".md"):
            ap.error(f"--out must name a markdown file ending in .md, got {args.out!r}")
        folder = os.path.dirname(os.path.abspath(args.out))
        if not os.path.isdir(folder):
            ap.error(f"--out: the folder {folder} does not exist")
        if not os.access(folder, os.W_OK):
            ap.error(f"--out: the folder {folder} is not writable")
    return args


def log(msg: str) -> None:
    print(f"[accelerator] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- helpers
# (heavy imports happen in main(), after the flags are checked)

jax = jnp = np = optax = None
curvature = data_lib = engine = models = plan = runner = None


def _import_library() -> None:
    global jax, jnp, np, optax, curvature, data_lib, engine, models, plan, runner
    sys.path.insert(0, ROOT)
    import jax as _jax
    import jax.numpy as _jnp
    import numpy as _np
    import optax as _optax

    from jaxunlearn import curvature as _curvature
    from jaxunlearn import data as _data
    from jaxunlearn import engine as _engine
    from jaxunlearn import models as _models
    from jaxunlearn import plan as _plan
    from jaxunlearn import runner as _runner

    jax, jnp, np, optax = _jax, _jnp, _np, _optax
    curvature, data_lib, engine, models, plan, runner = _curvature, _data, _engine, _models, _plan, _runner


def random_data(n, shape, seed=0, classes=10):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *shape)).astype(np.float32), rng.integers(0, classes, n).astype(np.int32)


def mean_ce(logits, y):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def xla_flops(compiled) -> float | None:
    """FLOPs of a compiled program as XLA's cost analysis counts them (None where the backend gives none)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # backends without cost analysis
        return None
    if isinstance(cost, list | tuple):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    value = (cost or {}).get("flops")
    return float(value) if value else None


def build(name, shape, seed=0, **kw):
    return models.split_model(models.build(name, num_classes=10, input_shape=shape, seed=seed, **kw))


# ----------------------------------------------------------------------------------------------- sections


def train_step(apply_fn, cfg, total_steps: int = 10_000):
    """One supervised training step from public pieces: cross-entropy in train mode (batch-norm statistics
    from the unperturbed pass), the phase optimizer of ``plan.build_optimizer`` (with SAM its ``grad_fn``
    re-evaluates the batch at the perturbed point), ``optax.apply_updates``. Params, model state and
    optimizer state are donated, as in the engine."""
    tx = plan.build_optimizer(cfg, total_steps)
    uses_sam = cfg.sam != "none"

    def loss(params, state, x, y):
        logits, new_state = apply_fn(params, state, x, train=True)
        return mean_ce(logits, y), new_state

    def step(params, state, opt_state, x, y):
        (value, new_state), g = jax.value_and_grad(loss, has_aux=True)(params, state, x, y)
        extra = {"grad_fn": lambda p: jax.grad(loss, has_aux=True)(p, state, x, y)[0]} if uses_sam else {}
        updates, opt_state = tx.update(g, opt_state, params, **extra)
        return optax.apply_updates(params, updates), new_state, opt_state, value

    return tx, jax.jit(step, donate_argnums=(0, 1, 2))


class Stepper:
    """A compiled step and the state it keeps stepping (each contender its own copy: donation-safe)."""

    def __init__(self, apply_fn, cfg, params, state, x, y):
        tx, jitted = train_step(apply_fn, cfg)
        copy = lambda t: jax.tree.map(jnp.array, t)  # noqa: E731
        self.params, self.state = copy(params), copy(state)
        self.opt = tx.init(self.params)
        self.x, self.y = x, y
        t = time.perf_counter()
        self.step = jitted.lower(self.params, self.state, self.opt, x, y).compile()
        self.compile_s = time.perf_counter() - t
        self.flops = xla_flops(self.step)

    def __call__(self):
        self.params, self.state, self.opt, loss = self.step(self.params, self.state, self.opt, self.x, self.y)
        return loss


def bench_sam_step(sz) -> dict:
    out = {"models": []}
    for name, shape, b, kw, inner in sz["step_models"]:
        apply_fn, params, state = build(name, shape, **kw)
        x, y = random_data(b, shape)
        x, y = jnp.asarray(x), jnp.asarray(y)
        steppers = {
            "sgd": Stepper(apply_fn, plan.OptimConfig(), params, state, x, y),
            "sam": Stepper(apply_fn, plan.OptimConfig(sam="sam"), params, state, x, y),
        }
        t = interleaved(steppers, sz["repeats"], inner)
        f_sgd, f_sam = steppers["sgd"].flops, steppers["sam"].flops
        out["models"].append(
            {
                "model": name,
                "input_shape": list(shape),
                "batch": b,
                "model_kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()},
                "params": models.num_params(params),
                "steps_per_repeat": inner,
                "repeats": sz["repeats"],
                "timings": t,
                "compile_s": {k: s.compile_s for k, s in steppers.items()},
                "flops": {"sgd": f_sgd, "sam": f_sam},
                "flop_ratio": f_sam / f_sgd if f_sam and f_sgd else None,
                "ratio": t["sam"]["median_s"] / t["sgd"]["median_s"],
            }
        )
    return out


def bench_hutchinson(sz) -> dict:
    out = {"probes": sz["probes"], "models": []}
    key = jax.random.key(0)
    for name, shape, b, kw, _ in sz["step_models"]:
        if name not in sz["hutchinson_models"]:
            continue
        apply_fn, params, state = build(name, shape, **kw)
        x, y = random_data(b, shape)
        batch = {"x": jnp.asarray(x), "y": jnp.asarray(y)}

        def loss(p, bt, apply_fn=apply_fn, state=state):  # eval mode, as the library's curvature scores
            return mean_ce(apply_fn(p, state, bt["x"], train=False)[0], bt["y"])

        grad = jax.jit(jax.grad(loss))
        t = interleaved(
            {
                "gradient": lambda grad=grad, params=params, batch=batch: grad(params, batch),
                "hutchinson": lambda loss=loss, params=params, batch=batch: curvature.hutchinson_diagonal(
                    loss, params, batch, key, sz["probes"]
                ),
            },
            sz["hutchinson_repeats"],
        )
        out["models"].append(
            {
                "model": name,
                "input_shape": list(shape),
                "batch": b,
                "timings": t,
                "grad_equiv": t["hutchinson"]["median_s"] / t["gradient"]["median_s"],
            }
        )
    return out


def bench_train_many(sz) -> dict:
    ds = data_lib.load("digits", seed=0, max_train=sz["many_max_train"])
    apply_fn, params, state = models.split_model(
        models.build("cnn", num_classes=ds.num_classes, input_shape=ds.input_shape, seed=0, **sz["many_model"])
    )
    dd = engine.DeviceData.from_numpy(ds.x_train, ds.y_train)
    n = len(ds.y_train)
    m = int(0.7 * n)
    rng = np.random.default_rng(0)
    opt = plan.OptimConfig(lr=0.05)
    epochs, bs = sz["many_epochs"], sz["many_batch"]
    rows = []
    for k in sz["many_ks"]:
        sets = np.stack([np.sort(rng.choice(n, m, replace=False)) for _ in range(k)])
        stacked = [jax.tree.map(lambda a, k=k: jnp.stack([a] * k), t) for t in (params, state)]
        last = {}

        def many(k=k, sets=sets, stacked=stacked, last=last):
            p, _ = engine.train_many(
                apply_fn, *stacked, dd, sets, optimizer=opt, epochs=epochs, batch_size=bs, seeds=list(range(k)),
                progress=False,
            )  # fmt: skip
            last["many"] = p
            return p

        def sequential(k=k, sets=sets, last=last):
            runs = [
                engine.train(
                    apply_fn, params, state, dd, optimizer=opt, epochs=epochs, batch_size=bs, train_idx=sets[i], seed=i,
                    progress=False,
                ).params
                for i in range(k)
            ]  # fmt: skip
            last["sequential"] = runs
            return runs

        t = interleaved({"train_many": many, "sequential": sequential}, sz["many_repeats"])
        diff = max(
            float(jnp.max(jnp.abs(a[i] - b)))
            for i in range(k)
            for a, b in zip(jax.tree.leaves(last["many"]), jax.tree.leaves(last["sequential"][i]))
        )
        rows.append(
            {
                "K": k,
                "timings": t,
                "speedup": t["sequential"]["median_s"] / t["train_many"]["median_s"],
                "max_abs_diff": diff,
            }
        )
    return {
        "dataset": "digits",
        "examples_per_model": m,
        "epochs": epochs,
        "batch_size": bs,
        "params": models.num_params(params),
        "repeats": sz["many_repeats"],
        "rows": rows,
    }


def bench_job(sz) -> dict:
    settings = dict(sz["job"])
    with tempfile.TemporaryDirectory() as tmp:
        cfg = runner.JobConfig(out=os.path.join(tmp, "run"), progress=False, **settings)
        t = time.perf_counter()
        res = runner.run_job(cfg)
        wall = time.perf_counter() - t
    variants = {}
    for label, v in res["variants"].items():
        ms = v["methods"]
        ret = ms["retrain"]
        ret_s, ret_c = float(ret["seconds"]), float(ret.get("compile_seconds") or 0.0)
        rows = {}
        for name, e in ms.items():
            s, c = float(e["seconds"]), float(e.get("compile_seconds") or 0.0)
            rows[name] = {"seconds": s, "compile_seconds": c}
            if name not in ("retrain", "original"):
                rows[name]["speedup"] = ret_s / s
                rows[name]["speedup_without_compile"] = max(ret_s - ret_c, 1e-9) / max(s - c, 1e-9)
        variants[label] = rows
    return {"settings": settings or "defaults", "wall_s": wall, "variants": variants}


# ----------------------------------------------------------------------------------------------- report


def fmt_s(s) -> str:
    if s is None or not math.isfinite(s):
        return "—"
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def environment(smoke: bool) -> dict:
    import flax
    import jaxlib

    devs = jax.devices()
    return {
        **machine(),
        "mode": "smoke" if smoke else "full",
        "backend": jax.default_backend(),
        "devices": repr(devs),
        "device_kind": devs[0].device_kind if devs else "?",
        "device_count": len(devs),
        "jax": jax.__version__,
        "jaxlib": getattr(jaxlib, "__version__", "?"),
        "flax": flax.__version__,
        "optax": optax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", "(unset)"),
    }


def render(results: dict) -> str:
    env = results["env"]
    smoke = env["mode"] == "smoke"
    L = [f"# jaxunlearn accelerator check: {env['backend']}", ""]
    done = results.get("total_s") is not None
    L.append(
        f"Generated by `{PROG}{' --smoke' if smoke else ''}` on {env['date']}"
        + (f", in one run of {results['total_s']:.0f} s." if done else " (incomplete: the run has not finished).")
        + " Every ratio below is measured within this run."
    )
    L.append("")
    if smoke:
        L += [
            "**Smoke mode**: tiny models and data, few repeats. It shows that every section runs on this backend "
            "and that the report is complete; the ratios say little about the hardware.",
            "",
        ]
    if env["backend"] == "cpu" and not smoke:
        L += ["**These are CPU numbers**: JAX found no accelerator in this run (`jax.devices()` below).", ""]
    L += ["## Device and versions", ""]
    for k in ("backend", "devices", "device_kind", "device_count", "jax", "jaxlib", "flax", "optax", "python"):
        L.append(f"- {k}: `{env[k]}`")
    L.append(f"- machine: {env['machine']}, {env['cpus']} CPUs; XLA_FLAGS {env['xla_flags']}")
    L.append("")
    for key, title in SECTIONS.items():
        sec = results["sections"].get(key)
        if sec is None:
            continue
        L += [f"## {title}", ""]
        if "error" in sec:
            L += ["Failed:", "", "```", sec["error"].rstrip(), "```", ""]
            continue
        L += RENDER[key](sec)
        L += [f"Section time {sec['section_s']:.0f} s.", ""]
    return "\n".join(L)


def render_sam_step(sec) -> list[str]:
    L = [
        "One jitted step each (SGD with momentum, and the same after `transforms.sam`: two forward/backward "
        "passes), compiled ahead of time; time per step = median over interleaved repeats of consecutive steps "
        "ended by `block_until_ready`. FLOP ratio: XLA's cost analysis of the two compiled programs.",
        "",
        "| model | input | batch | params | SGD step | SAM step | SAM / SGD | FLOP ratio | compile SGD / SAM |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sec["models"]:
        t, c = r["timings"], r["compile_s"]
        fr = f"{r['flop_ratio']:.2f}" if r["flop_ratio"] else "—"
        L.append(
            f"| {r['model']} | {'×'.join(map(str, r['input_shape']))} | {r['batch']} | {r['params']:,} | "
            f"{fmt_s(t['sgd']['median_s'])} | {fmt_s(t['sam']['median_s'])} | **{r['ratio']:.2f}** | {fr} | "
            f"{fmt_s(c['sgd'])} / {fmt_s(c['sam'])} |"
        )
    each = ", ".join(f"{r['steps_per_repeat']} steps ({r['model']})" for r in sec["models"])
    L += ["", f"Medians of {sec['models'][0]['repeats']} repeats; each repeat {each}.", ""]
    return L


def render_hutchinson(sec) -> list[str]:
    L = [
        f"`curvature.hutchinson_diagonal` with {sec['probes']} Rademacher probes and the library defaults "
        "against one jitted gradient of the same loss (cross-entropy, eval mode) on the same batch; medians of "
        "interleaved repeats. First call = trace + compile + run.",
        "",
        "| model | input | batch | gradient | Hutchinson | gradient equivalents | first call gradient / Hutchinson |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sec["models"]:
        t = r["timings"]
        L.append(
            f"| {r['model']} | {'×'.join(map(str, r['input_shape']))} | {r['batch']} | "
            f"{fmt_s(t['gradient']['median_s'])} | {fmt_s(t['hutchinson']['median_s'])} | **{r['grad_equiv']:.1f}** | "
            f"{fmt_s(t['gradient']['first_s'])} / {fmt_s(t['hutchinson']['first_s'])} |"
        )
    L.append("")
    return L


def render_train_many(sec) -> list[str]:
    L = [
        f"Digits CNN ({sec['params']:,} parameters), {sec['epochs']} epoch{'s' * (sec['epochs'] != 1)} of "
        f"{sec['examples_per_model']} examples per model, batch {sec['batch_size']}: `engine.train_many` "
        "(library defaults) against K sequential `engine.train` runs with the same batches (`seeds=range(K)`). "
        "Speed-up = sequential time / "
        f"`train_many` time, steady state (medians of {sec['repeats']} interleaved repeats after a first call "
        "that compiles; every K compiles its own `train_many` program, while the sequential runs share one "
        "step, compiled in the first row); max |Δparam| compares row k of `train_many` with run k.",
        "",
        "| K | train_many | K sequential runs | speed-up | train_many first call (compiles) | max abs Δparam |",
        "|---|---|---|---|---|---|",
    ]
    for r in sec["rows"]:
        t = r["timings"]
        L.append(
            f"| {r['K']} | {fmt_s(t['train_many']['median_s'])} | {fmt_s(t['sequential']['median_s'])} | "
            f"**{r['speedup']:.2f}x** | {fmt_s(t['train_many']['first_s'])} | {r['max_abs_diff']:.1e} |"
        )
    L.append("")
    return L


def render_job(sec) -> list[str]:
    s = sec["settings"]
    how = (
        "every setting at its default" if s == "defaults" else "settings " + ", ".join(f"{k}={v}" for k, v in s.items())
    )
    L = [
        f"`runner.run_job(JobConfig(...))` with {how}, in this process: wall time **{sec['wall_s']:.1f} s**. "
        "Per method: its `seconds` in results.json and Retrain's seconds over it (speed-up), and the same without "
        "the time spent tracing and compiling (`compile_seconds`).",
        "",
        "| variant | method | seconds | compile seconds | speed-up over Retrain | without compile |",
        "|---|---|---|---|---|---|",
    ]
    for label, rows in sec["variants"].items():
        for name, r in rows.items():
            sp = f"**{r['speedup']:.1f}x** | {r['speedup_without_compile']:.1f}x" if "speedup" in r else "— | —"
            L.append(f"| {label} | {name} | {r['seconds']:.2f} | {r['compile_seconds']:.2f} | {sp} |")
    L.append("")
    return L


RENDER = {
    "sam_step": render_sam_step,
    "hutchinson": render_hutchinson,
    "train_many": render_train_many,
    "job": render_job,
}
BENCH = {"sam_step": bench_sam_step, "hutchinson": bench_hutchinson, "train_many": bench_train_many, "job": bench_job}


def write(results: dict, md_path: str, json_path: str) -> None:
    for path, text in ((md_path, render(results)), (json_path, json.dumps(results, indent=1, default=str))):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text if text.endswith("\n") else text + "\n")
        os.replace(tmp, path)


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    if args.smoke and "XLA_FLAGS" not in os.environ:  # before JAX starts its backend
        os.environ["XLA_FLAGS"] = SMOKE_XLA_FLAGS
    _import_library()
    backend = jax.default_backend()
    print(f"jax.devices(): {jax.devices()}", flush=True)
    if backend == "cpu" and not args.smoke:
        log(
            "WARNING: JAX found no accelerator; these will be CPU numbers, and the full sizes take tens of "
            "minutes on a few cores (--smoke runs every section in well under a minute)."
        )
    md_path = args.out or os.path.join(HERE, f"RESULTS-{backend}.md")
    json_path = md_path[: -len(".md")] + ".json"
    sz = SMOKE if args.smoke else FULL
    results = {"env": environment(args.smoke), "sections": {}, "total_s": None}
    failed = []
    for key, title in SECTIONS.items():
        log(f"{title} ...")
        ts = time.perf_counter()
        try:
            sec = BENCH[key](sz)
        except Exception:  # reported, and the remaining sections still run
            sec = {"error": traceback.format_exc()[-4000:]}
            failed.append(key)
        sec["section_s"] = time.perf_counter() - ts
        results["sections"][key] = sec
        status = "FAILED (" + sec["error"].strip().splitlines()[-1][:200] + ")" if key in failed else "done"
        log(f"{title}: {status} in {sec['section_s']:.0f} s (total {time.perf_counter() - t0:.0f} s)")
        write(results, md_path, json_path)
    results["total_s"] = time.perf_counter() - t0
    write(results, md_path, json_path)
    log(f"wrote {md_path} and {json_path} ({results['total_s']:.0f} s)")
    if failed:
        log(f"failed sections: {', '.join(failed)} (their errors are in the report)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
