"""SAM variants and the smoothing family: step cost relative to the plain unlearning step (one process run).

    .venv/bin/python benchmarks/sam_variants.py            # digits + Fashion-MNIST CNN
    .venv/bin/python benchmarks/sam_variants.py --quick    # digits, few variants, seconds (the smoke test)

For each optimizer kind of :class:`jaxunlearn.plan.OptimConfig` (``sam``, ``asam``, ``looksam``, ``gsam``,
``rs``, ``gnp``, ``cr``) and weight averaging (``wa``) on the unlearning default (AdamW, lr 0.01, constant),
the engine's own jitted update (``engine.make_step`` on the retain cross-entropy with the in-device gather, as
``benchmarks/run.py``'s steps section) of the small CNN, one XLA CPU device. Contenders are interleaved
(A, B, A, B, ...); each timing is the median over ``--repeats`` rounds of ``--inner`` consecutive steps (a
multiple of LookSAM's k, so its rounds hold the same share of SAM steps); compile (first call) is timed
separately. Ratios are to the plain step of the same dataset in the same run.

Two more rows check that LookSAM's ``lax.cond`` does not evaluate the second gradient on skipped steps: the
same LookSAM step timed with its state frozen at a SAM step (``count = 0``) and at a reuse step (``count = 1``).

Results: ``--json`` (default ``benchmarks/results-sam-variants.json``) and the section between the markers
``<!-- sam_variants:begin -->`` / ``<!-- sam_variants:end -->`` of ``--md`` (default
``benchmarks/RESULTS-sam-variants.md``; appended when the markers are missing).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from benchmarks._timing import interleaved  # noqa: E402
from benchmarks.run import environment, equivalent_step  # noqa: E402
from jaxunlearn import data, engine, models  # noqa: E402
from jaxunlearn.plan import UNLEARN_DEFAULT, StepInfo, build_optimizer, supervised_loss  # noqa: E402

BEGIN, END = "<!-- sam_variants:begin -->", "<!-- sam_variants:end -->"
GOAL = 1.3  # the target: a variant at <= 1.3x the plain step cost

# name -> (OptimConfig fields on the unlearning default, gradients per step in theory, what it is)
VARIANTS = {
    "plain": ({}, 1.0, "AdamW on g"),
    "sam": ({"sam": "sam", "rho": 0.1}, 2.0, "SAM, ρ = 0.1"),
    "asam": ({"sam": "asam", "rho": 0.1}, 2.0, "ASAM, ρ = 0.1, η = 0.01"),
    "looksam_k5": ({"sam": "looksam", "rho": 0.1, "k": 5}, 1.2, "LookSAM, k = 5, α = 0.7"),
    "looksam_k10": ({"sam": "looksam", "rho": 0.1, "k": 10}, 1.1, "LookSAM, k = 10, α = 0.7"),
    "gsam": ({"sam": "gsam", "rho": 0.1}, 2.0, "GSAM, ρ = 0.1, α = 0.1"),
    "rs": ({"sam": "rs"}, 4.0, "randomized smoothing, σ = 0.01, n = 3"),
    "rs_n1": ({"sam": "rs", "samples": 1}, 2.0, "randomized smoothing, σ = 0.01, n = 1"),
    "gnp": ({"sam": "gnp"}, 2.0, "gradient-norm penalty, γ = 0.01, r = 0.01"),
    "cr": ({"sam": "cr"}, 4.0, "curvature regularization, γ = 10, r = 0.01"),
    "wa": ({"average": "uniform"}, 1.0, "plain + uniform weight averaging"),
}
EXTRA_ROWS = {  # LookSAM k = 5 measured three more ways
    "looksam_k5_sam_branch": (2.0, "LookSAM (lax.cond) with its state frozen at a SAM step (count 0)"),
    "looksam_k5_reuse_branch": (1.0, "LookSAM (lax.cond) with its state frozen at a reuse step (count 1)"),
    "looksam_k5_host": (1.2, "LookSAM, k = 5, branch chosen in Python (`sam_step=`), two compiled steps"),
}
QUICK_VARIANTS = ("plain", "sam", "looksam_k5", "gsam", "rs_n1", "gnp", "cr", "wa")
DATASETS = {"digits": (8, 8, 1), "fashion_mnist": (28, 28, 1)}


class Stepper:
    """One contender: its params / model state / optimizer state, stepped by each call (``inner`` steps).
    ``frozen=True`` keeps the optimizer state (and the parameters) as they were, so every call runs the same
    branch of a stateful transform."""

    def __init__(self, tx, step, params, state, arrays, idx, inner, frozen_count=None):
        self.step, self.inner = step, inner
        self.params, self.state = params, state
        self.opt = tx.init(params)
        if frozen_count is not None:
            self.opt = _with_count(self.opt, frozen_count)
        self.frozen = frozen_count is not None
        self.args = (*arrays, idx, idx, {})

    def __call__(self):
        for _ in range(self.inner):
            out = self.step(self.params, self.state, self.opt, *self.args)
            if not self.frozen:
                self.params, self.state, self.opt, loss = out
            else:
                loss = out[3]
        return jax.block_until_ready(loss)


class HostLookSAM:
    """LookSAM with the branch chosen in Python: two compiled steps (``sam_step=True`` / ``False``), the loop
    passes ``t % k == 0``. The step is ``engine.make_step``'s update written out (value_and_grad, the chain with
    ``grad_fn``, apply_updates, in-device gather), since ``make_step`` does not forward ``sam_step``."""

    def __init__(self, apply_fn, cfg, params, state, arrays, idx, inner):
        self.inner, self.k, self.t = inner, cfg.k, 0
        tx = build_optimizer(cfg, 10_000)
        info = StepInfo.at(epochs=1, total_steps=10_000)

        def step(params, model_state, opt_state, x, y, idx, sam_step):
            batch = {"retain": engine.ArraySource.gather({"x": x, "y": y}, idx)}

            def lf(p):
                return supervised_loss(apply_fn, p, model_state, batch, {}, info)

            (loss, new_state), g = jax.value_and_grad(lf, has_aux=True)(params)
            grad_fn = lambda p: jax.grad(lf, has_aux=True)(p)[0]  # noqa: E731
            upd, opt_state = tx.update(g, opt_state, params, grad_fn=grad_fn, sam_step=sam_step)
            return optax.apply_updates(params, upd), new_state, opt_state, loss

        self.step = jax.jit(step, static_argnames="sam_step")
        self.params, self.state, self.opt = params, state, tx.init(params)
        self.args = (*arrays, idx)

    def __call__(self):
        for _ in range(self.inner):
            self.params, self.state, self.opt, loss = self.step(
                self.params, self.state, self.opt, *self.args, sam_step=self.t % self.k == 0
            )
            self.t += 1
        return jax.block_until_ready(loss)


def _with_count(opt_state, count):
    """The LookSAM state inside a chain's state with its counter set to ``count``."""
    from jaxunlearn.transforms import LookSAMState

    def fix(s):
        return s._replace(count=jnp.asarray(count, jnp.int32)) if isinstance(s, LookSAMState) else s

    return jax.tree.map(fix, opt_state, is_leaf=lambda s: isinstance(s, LookSAMState))


def bench_dataset(name: str, variants, batch: int, repeats: int, inner: int, max_train: int | None) -> dict:
    ds = data.load(name, seed=0, max_train=max_train)
    x, y = np.asarray(ds.x_train, np.float32), np.asarray(ds.y_train, np.int32)
    apply_fn, params, state = models.split_model(
        models.build("cnn", num_classes=ds.num_classes, input_shape=x.shape[1:], seed=0)
    )
    arrays = (jnp.asarray(x), jnp.asarray(y))
    idx = jnp.arange(batch, dtype=jnp.int32)
    contenders = {}
    for v in variants:
        cfg = dataclasses.replace(UNLEARN_DEFAULT, **VARIANTS[v][0])
        tx, step = equivalent_step(apply_fn, supervised_loss, cfg)
        contenders[v] = Stepper(tx, step, params, state, arrays, idx, inner)
        if v == "looksam_k5":  # the two branches of LookSAM's lax.cond, each timed on its own, and the host choice
            contenders["looksam_k5_sam_branch"] = Stepper(tx, step, params, state, arrays, idx, inner, 0)
            contenders["looksam_k5_reuse_branch"] = Stepper(tx, step, params, state, arrays, idx, inner, 1)
            contenders["looksam_k5_host"] = HostLookSAM(apply_fn, cfg, params, state, arrays, idx, inner)
    t = interleaved(contenders, repeats)
    base = t["plain"]["median_s"]
    rows = {}
    for k, v in t.items():
        grads = VARIANTS[k][1] if k in VARIANTS else EXTRA_ROWS[k][0]
        rows[k] = {**v, "ratio": v["median_s"] / base, "gradients": grads}
    return {"dataset": name, "shape": list(x.shape[1:]), "batch": batch, "params": _count(params), "rows": rows}


def _count(params) -> int:
    return int(sum(np.size(p) for p in jax.tree.leaves(params)))


def render(results: dict) -> str:
    L = [BEGIN, "## SAM variants and the smoothing family: step cost (`benchmarks/sam_variants.py`)", ""]
    env = results["env"]
    L.append(
        f"Generated by `benchmarks/sam_variants.py{' --quick' if results['quick'] else ''}` in one process run "
        f"({results['total_s']:.0f} s), {env['date']}; jax {env['jax']}, {env['cpus']} CPUs, one XLA CPU device, "
        f"load {env['load_start'][0]:.2f} at the start and {env['load_end'][0]:.2f} at the end. The engine's jitted "
        f"update (`engine.make_step`, retain cross-entropy, AdamW lr 0.01 = the unlearning default, in-device "
        f"gather) of the small CNN; medians of {results['repeats']} interleaved rounds of {results['inner']} "
        f"consecutive steps; ratios to the plain step of the same dataset in this run (medians, and the fastest "
        f"round of each, which a load spike on the shared machine does not raise); the ≤ {GOAL}× column reads "
        f"the median ratio. The `_branch` rows keep their optimizer state (and parameters) frozen. Raw numbers: "
        f"`benchmarks/{os.path.basename(results['json'])}`."
    )
    L.append("")
    for res in results["datasets"]:
        L.append(
            f"### {res['dataset']} (CNN, {res['params']:,} parameters, input {'×'.join(map(str, res['shape']))}, "
            f"batch {res['batch']})"
        )
        L.append("")
        L.append(
            "| variant | what | gradients / step | compile (first call) | median step | / plain | / plain (fastest "
            "rounds) | ≤ 1.3× plain |"
        )
        L.append("|---|---|---|---|---|---|---|---|")
        fastest = min(res["rows"]["plain"]["all_s"])
        for k, r in res["rows"].items():
            what = VARIANTS[k][2] if k in VARIANTS else EXTRA_ROWS[k][1]
            ok = "yes" if r["ratio"] <= GOAL else "no"
            L.append(
                f"| {k} | {what} | {r['gradients']:g} | {r['first_s'] * 1e3:.0f} ms | {r['median_s'] * 1e3:.2f} ms "
                f"| {r['ratio']:.2f} | {min(r['all_s']) / fastest:.2f} | {ok} |"
            )
        L.append("")
        cheap = [k for k, r in res["rows"].items() if k not in ("plain", "wa") and r["ratio"] <= GOAL]
        cheap = [k for k in cheap if not k.endswith("_branch")]  # the frozen-state rows are diagnostics
        L.append(
            f"Sharpness-aware variants at ≤ {GOAL}× the plain step here: "
            + (", ".join(f"`{k}` ({res['rows'][k]['ratio']:.2f}×)" for k in cheap) if cheap else "none")
            + "."
        )
        L.append("")
    L.append(END)
    return "\n".join(L) + "\n"


def write_section(path: str, section: str) -> None:
    """Replace the marked section of ``path`` (append it when the markers are missing)."""
    text = open(path).read() if os.path.exists(path) else ""
    if BEGIN in text and END in text:
        a, b = text.index(BEGIN), text.index(END) + len(END)
        text = text[:a] + section.rstrip("\n") + text[b:]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section
    with open(path, "w") as f:
        f.write(text if text.endswith("\n") else text + "\n")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="digits only, a few variants, 2 rounds (smoke test)")
    ap.add_argument(
        "--datasets", default=None, help=f"comma list of {', '.join(DATASETS)} (default: all; quick: digits)"
    )
    ap.add_argument("--batch", type=int, default=64, help="batch size (the job's default 64)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 7; quick 2)")
    ap.add_argument("--inner", type=int, default=None, help="steps per round, a multiple of 10 (default 20; quick 10)")
    ap.add_argument("--max-train", type=int, default=None, help="training examples loaded (default all; quick 256)")
    ap.add_argument("--json", default=os.path.join(HERE, "results-sam-variants.json"), help="raw results")
    ap.add_argument(
        "--md", default=os.path.join(HERE, "RESULTS-sam-variants.md"), help="markdown file holding the section"
    )
    ap.add_argument("--from-json", default=None, help="re-render the section from an earlier --json file; runs nothing")
    cfg = ap.parse_args(argv)
    if cfg.from_json:
        with open(cfg.from_json) as f:
            results = json.load(f)
        results["json"] = cfg.json
        write_section(cfg.md, render(results))
        return results
    names = (cfg.datasets or ("digits" if cfg.quick else ",".join(DATASETS))).split(",")
    for n in names:
        if n not in DATASETS:
            ap.error(f"unknown dataset {n!r}; choose from {', '.join(DATASETS)}")
    repeats = cfg.repeats or (2 if cfg.quick else 7)
    inner = cfg.inner or (10 if cfg.quick else 20)
    if inner % 10:
        ap.error(f"--inner must be a multiple of 10 (LookSAM's k = 5 and 10), got {inner}")
    variants = QUICK_VARIANTS if cfg.quick else tuple(VARIANTS)
    max_train = cfg.max_train or (256 if cfg.quick else None)
    t0 = time.perf_counter()
    results = {"env": environment(), "quick": cfg.quick, "repeats": repeats, "inner": inner, "datasets": []}
    for n in names:
        print(f"[sam_variants] {n} ...", flush=True)
        results["datasets"].append(bench_dataset(n, variants, cfg.batch, repeats, inner, max_train))
    results["env"]["load_end"] = os.getloadavg()
    results["total_s"] = time.perf_counter() - t0
    results["json"] = cfg.json
    with open(cfg.json, "w") as f:
        json.dump(results, f, indent=1, default=str)
    write_section(cfg.md, render(results))
    for res in results["datasets"]:
        summary = ", ".join(f"{k} {r['ratio']:.2f}" for k, r in res["rows"].items())
        print(f"[sam_variants] {res['dataset']}: {summary}", flush=True)
    return results


if __name__ == "__main__":
    main()
