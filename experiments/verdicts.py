"""The summary of RESULTS.md: every claim × scale as a paired difference over seeds with its 95 % confidence interval
and the one verdict rule (``metrics.verdict``: "agrees" only when the interval excludes 0 in the paper's direction,
"disagrees" only when it excludes 0 the other way, otherwise "not resolved").

Reads the per-seed entries that the experiments' jobs recorded (``job*/progress.json``), computes each entry's ToW
against the Retrain of the same seed and pretraining, and pairs by seed. A comparison averaged over several cells
(memorization levels, methods) averages them per seed first. The do-nothing row (the original model's ToW) is the
floor every method should beat. Claims 4 and 5 (``exp4*/seed<k>.json``, ``exp5*/seed<k>.json``) pair their per-seed
values the same way: the Hessian selection against all parameters and a random 10 % (paper B), SAM pretraining's
forget-loss sharpness and entanglement, and Sharp MinMax's resistance to relearning against Retrain's (paper A). Claim 6
(``exp6_sharpness_family/seed<k>.json``) compares every optimizer kind with plain AdamW on ToW and on the relearning
attack's forget-accuracy AUC.

    .venv/bin/python experiments/verdicts.py          # writes experiments/results/verdicts/table.md (+ .json)
"""

import argparse
import json
import os
import re

import common
import numpy as np

from jaxunlearn import metrics  # noqa: E402

NAME = "verdicts"
#: scale -> the suffix of its results folders. "CNN fit 30" = configs/fashion_mnist_fit30.json (30 pretraining epochs,
#: ≥ 99 % training accuracy with SGD; memorization from 64 models; 5 seeds; rates tuned on validation), run with
#: ``--out experiments/results/<name>_fit30``; "CNN fit 20" = configs/fashion_mnist_fit.json, the same at 20 epochs
#: (97-99 % training accuracy), ``<name>_fit``; "CNN fit 30, every seed tuned" = configs/fashion_mnist_fit30_tune5.json
#: (the rates chosen on each seed's own validation split, ``--tune-seeds 5``), ``<name>_fit30_tune5``.
SCALES = {"CNN fit 30": "_fit30", "CNN fit 30, every seed tuned": "_fit30_tune5", "CNN fit 20": "_fit", "CNN": "_cnn",
          "MLP": ""}  # fmt: skip


def _entries(job_dir: str) -> dict:
    path = os.path.join(job_dir, "progress.json")
    if not os.path.exists(path):
        return {}
    return json.load(open(path))["entries"]


def _tow(entries: dict, seed: str, pre: str, name: str) -> float | None:
    """ToW of the entry ``seed/pre/<name>`` against ``seed/pre/retrain`` (None when missing or diverged)."""
    e, r = entries.get(f"{seed}/{pre}/{name}"), entries.get(f"{seed}/{pre}/retrain")
    if e is None or r is None or e.get("diverged"):
        return None
    return metrics.tow(e, r)


def _seeds(entries: dict) -> list[str]:
    return sorted({k.split("/")[0] for k in entries}, key=int)


def _pairs(cells: list[tuple[dict, str, str, str, str]]) -> tuple[list[float], list[float]]:
    """Per seed, the mean over ``cells`` of (a, b): each cell is (entries, pre_a, name_a, pre_b, name_b)."""
    seeds = sorted(set.intersection(*[set(_seeds(c[0])) for c in cells]), key=int)
    a, b = [], []
    for s in seeds:
        va = [_tow(e, s, pa, na) for e, pa, na, _, _ in cells]
        vb = [_tow(e, s, pb, nb) for e, _, _, pb, nb in cells]
        if None in va or None in vb:
            continue
        a.append(float(np.mean(va)))
        b.append(float(np.mean(vb)))
    return a, b


def _row(claim, scale, comparison, a, b, direction="greater", percent=True):
    """One summary row: ``mean(a) vs mean(b)`` and the paired interval of ``a − b`` with its verdict; fractions are
    shown in % (differences in points) unless ``percent=False`` (the metric's own unit, 3 significant digits)."""
    if len(a) < 2:  # a paired interval needs two seeds; a run still under way may have one
        return [claim, scale, comparison, "—", "—", "not run" if not a else "one seed so far", str(len(a))]
    d = metrics.paired_difference(a, b)
    if percent:
        value = f"{100 * np.mean(a):.1f} vs {100 * np.mean(b):.1f}"
        delta = f"{100 * d['mean']:+.1f} [{_bound(100 * d['ci_low'])}, {_bound(100 * d['ci_high'])}]"
    else:
        value = f"{np.mean(a):.3g} vs {np.mean(b):.3g}"
        delta = f"{d['mean']:+.3g} [{d['ci_low']:+.3g}, {d['ci_high']:+.3g}]"
    return [claim, scale, comparison, value, delta, metrics.verdict(d, direction), str(d["n"])]


def _bound(x: float) -> str:
    """An interval bound in points with one decimal, or two significant digits where one decimal would round a
    nonzero bound to 0 (``-0.04``, not ``-0.0``), so the printed interval shows whether it excludes 0.

    Example:
        >>> _bound(-1.74), _bound(-0.04), _bound(0.0)
        ('-1.7', '-0.04', '+0.0')
    """
    return f"{x:+.2g}" if x != 0 and round(x, 1) == 0 else f"{x:+.1f}"


_SEED_FILE = re.compile(r"seed(\d+)\.json")


def _per_seed(folder: str) -> list[dict]:
    """The ``entries`` of every ``seed<k>.json`` in ``folder`` (claims 4 and 5), in seed order."""
    if not os.path.isdir(folder):
        return []
    found = sorted((int(m.group(1)), n) for n in os.listdir(folder) if (m := _SEED_FILE.fullmatch(n)))
    return [json.load(open(os.path.join(folder, n)))["entries"] for _, n in found]


def _value(entries: dict, path: tuple[str, ...], key: str) -> float | None:
    """``entries[path...][key]``; None when missing or when that model diverged."""
    e = entries
    for p in path:
        e = e.get(p) if isinstance(e, dict) else None
    if not isinstance(e, dict) or e.get("diverged") or e.get(key) is None:
        return None
    return float(e[key])


def _compare(claim, scale, comparison, per, a, b, key, direction="greater", percent=True):
    """The row of ``a − b`` on ``key`` paired by seed over the ``per``-seed entries. As in claims 1-3, a seed where
    either model is missing or diverged is left out; the comparison's text says how many were, and says so when
    every value is the same (e.g. a step count at its cap), where the interval carries no information."""
    pairs = [(x, y) for e in per if (x := _value(e, a, key)) is not None and (y := _value(e, b, key)) is not None]
    va, vb = [x for x, _ in pairs], [y for _, y in pairs]
    if len(pairs) < len(per):
        comparison += f" ({len(per) - len(pairs)} of {len(per)} seeds left out: diverged or missing)"
    if len(pairs) > 1 and len(set(va + vb)) == 1:
        comparison += " (the same value for both in every seed)"
    return _row(claim, scale, comparison, va, vb, direction, percent)


def _epochs(folder: str) -> str:
    """``"<k> epochs"`` of a claim 4 run's gradient update, from its ``table.json``."""
    path = os.path.join(folder, "table.json")
    meta = json.load(open(path)).get("meta", {}) if os.path.exists(path) else {}
    return f"{meta['unlearn_epochs']} epochs" if "unlearn_epochs" in meta else "its epochs"


#: claim 4's runs: scale -> (main table, first-order τ = 0.01 table, a second gradient-update length or None)
EXP4 = {
    "CNN": ("exp4_hessian_selection_cnn", "exp4_hessian_selection_cnn_first_order_tau0.01",
            "exp4_hessian_selection_cnn_gradient_e2"),
    "MLP": ("exp4_hessian_selection", "exp4_hessian_selection_first_order_tau0.01", None),
}  # fmt: skip


def claim4(root: str) -> list[list[str]]:
    """Paper B (exp4): the Hessian-diagonal selection (10 % of the parameters) against updating all of them and
    against a random 10 %: test accuracy kept by the gradient update on the backdoor (feature) task, where every
    one of them removes the trigger, and Z accuracy recovered by the first-order update (τ = 0.01) on the label
    task, paired by seed."""
    rows = []
    head = "4: the Hessian selection keeps more than updating all parameters"
    more = "4: … and more than a random 10 %"
    for scale, (main, tau, e2) in EXP4.items():
        for folder in (os.path.join(root, f) for f in (main, e2) if f):
            per = _per_seed(folder)
            if not per:
                continue
            feature = f"backdoor, gradient update {_epochs(folder)}: TA, Hessian − "
            for other, claim in (("all", head), ("random", more)):
                rows.append(_compare(claim, scale, feature + other, per, ("feature", "hessian / gradient"),
                                     ("feature", f"{other} / gradient"), "test_acc"))  # fmt: skip
        per = _per_seed(os.path.join(root, tau))
        if per:
            rows.append(
                _compare(
                    head,
                    scale,
                    "flipped labels, first-order τ = 0.01: Z acc, Hessian − all",
                    per,
                    ("label", "hessian / first_order"),
                    ("label", "all / first_order"),
                    "z_acc",
                )
            )
    return rows


#: claim 5's runs: scale -> {forget set: results folder}
EXP5 = {
    "CNN": {"random F": "exp5_analysis_cnn", "class 0": "exp5_analysis_class0_cnn"},
    "MLP": {"random F": "exp5_analysis", "class 0": "exp5_analysis_class0"},
}


def claim5(root: str) -> list[list[str]]:
    """Paper A's analysis (exp5), paired by seed: SAM pretraining flattens the forget loss around the original
    (sharpness(F), lower = flatter) and lowers the retain/forget entanglement score (ES, lower); Sharp MinMax after
    SGD pretraining leaves a flatter forget loss than NegGrad (random F only: on class forgetting NegGrad collapses
    and is no reference) and resists relearning at least as well as Retrain, the model that never saw F (steps to
    relearn: fewer than Retrain's = the forgotten knowledge was hidden, not removed)."""
    rows = []
    for scale, runs in EXP5.items():
        for forget, folder in runs.items():
            per = _per_seed(os.path.join(root, folder))
            if not per:
                continue
            orig = (("sam / original",), ("sgd / original",))
            specs = [
                ("5: SAM pretraining flattens the forget loss (sharpness(F), nats)", "SAM − SGD original", *orig,
                 "sharpness_F", "less"),
                ("5: SAM pretraining lowers entanglement (ES)", "SAM − SGD original", *orig, "entanglement", "less"),
            ]  # fmt: skip
            if forget != "class 0":  # NegGrad collapses on class forgetting (sharpness ~1e8): no reference there
                flatter = "5: Sharp MinMax leaves a flatter forget loss than NegGrad (sharpness(F), nats)"
                specs += [(claim, f"Sharp MinMax − NegGrad ({pre.upper()} pretraining)", (f"{pre} / sharp_minmax",),
                           (f"{pre} / neggrad",), "sharpness_F", "less")
                          for pre, claim in (("sgd", flatter), ("sam", "5: … after SAM pretraining"))]  # fmt: skip
            specs.append(("5: Sharp MinMax resists relearning at least as well as Retrain (steps to relearn)",
                          "Sharp MinMax (SGD pretraining) − Retrain", ("sgd / sharp_minmax",), ("retrain",),
                          "relearn_steps", "greater"))  # fmt: skip
            rows += [_compare(claim, scale, f"{forget}: {what}", per, a, b, key, direction, False)
                     for claim, what, a, b, key, direction in specs]  # fmt: skip
    return rows


def _planned_seeds(root: str, name: str, level: str) -> int:
    """The number of seeds a claim 1 level job was started with (its ``settings.json``; 0 when unknown)."""
    path = os.path.join(root, name, f"job_{level}", "settings.json")
    if not os.path.exists(path):
        return 0
    return int(json.loads(json.load(open(path))["settings_key"]).get("seeds") or 0)


def claim1(root: str) -> list[list[str]]:
    rows = []
    for scale, suffix in SCALES.items():
        name = "exp1_neggrad_sam_memorization" + ("_asam" if scale == "MLP" else suffix)
        levels = [lv for lv in ("high", "mid", "low", "mix") if os.path.isdir(os.path.join(root, name, f"job_{lv}"))]
        jobs = {lv: _entries(os.path.join(root, name, f"job_{lv}")) for lv in levels}
        if not jobs:
            continue
        done = {lv: len([s for s in _seeds(e) if f"{s}/sgd/sgd/neggrad" in e]) if e else 0 for lv, e in jobs.items()}
        if max(done.values()) < 2:  # a run under way: one row saying how far it is instead of rows of "—"
            far = ", ".join(f"{lv} {n}" for lv, n in done.items())
            n = max(done.values())
            rows.append(["1: SAM helps NegGrad (ToW)", scale, f"run under way (seeds done per level: {far})", "—",
                         "—", "under way", str(n)])  # fmt: skip
            continue
        jobs = {lv: e for lv, e in jobs.items() if done[lv] >= 2}  # levels with a paired interval so far
        want = {lv: _planned_seeds(root, name, lv) for lv in done}  # 0: a run from before settings.json
        whole = {lv: e for lv, e in jobs.items() if done[lv] >= want[lv]}  # the mean over levels: finished ones
        mean_jobs = whole or jobs
        what = f"mean of {len(mean_jobs)} memorization level{'s' if len(mean_jobs) > 1 else ''}"
        going = [f"{lv} {n} of {want[lv]}" if want[lv] else f"{lv} {n}" for lv, n in done.items()
                 if n < want[lv] or lv not in jobs]  # fmt: skip
        if going:  # a run under way: say how far each level is, and which levels have no job yet
            what += f"; run under way, seeds done: {', '.join(going)}"
            if any(want.values()):
                what += "".join(f", {lv} not started" for lv in ("high", "mid", "low", "mix") if lv not in done)
        for label, (pa, ua) in {
            "SAM pretraining (AdamW unlearning)": ("sam", "sgd"),
            "SAM unlearning (SGD pretraining)": ("sgd", "sam"),
            "SAM pretraining + SAM unlearning": ("sam", "sam"),
            "ASAM pretraining + ASAM unlearning": ("asam", "asam"),
        }.items():
            cells = [(e, pa, f"{ua}/neggrad", "sgd", "sgd/neggrad") for e in mean_jobs.values()]
            if not all(f"0/{pa}/{ua}/neggrad" in e for e, *_ in cells):
                continue
            rows.append(_row(f"1: SAM helps NegGrad (ToW, {what})", scale, f"{label} − SGD / AdamW", *_pairs(cells)))
            for lv, e in jobs.items():
                rows.append(_row(f"1: … at {lv} memorization", scale, f"{label} − SGD / AdamW",
                                 *_pairs([(e, pa, f"{ua}/neggrad", "sgd", "sgd/neggrad")])))  # fmt: skip
        floor = [(e, "sgd", "original", "sgd", "sgd/neggrad") for e in mean_jobs.values()]
        rows.append(_row("1: NegGrad beats doing nothing (the floor)", scale, "original model − NegGrad SGD / AdamW",
                         *_pairs(floor), "less"))  # fmt: skip
    return rows


def claim2(root: str) -> list[list[str]]:
    rows = []
    for scale, suffix in SCALES.items():
        e = _entries(os.path.join(root, "exp2_sam_pretrain_vs_unlearn" + suffix, "job"))
        if not e:
            continue
        names = sorted({k.split("/")[-1] for k in e if k.count("/") == 3})
        for label, (pa, ua) in {"SAM pretraining": ("sam", "sgd"), "SAM unlearning": ("sgd", "sam")}.items():
            cells = [(e, pa, f"{ua}/{m}", "sgd", f"sgd/{m}") for m in names]
            rows.append(_row(f"2: SAM helps unlearning (ToW, mean of {len(names)} methods)", scale,
                             f"{label} − SGD / AdamW", *_pairs(cells)))  # fmt: skip
    return rows


def claim3(root: str) -> list[list[str]]:
    rows = []
    for scale, suffix in SCALES.items():
        e = _entries(os.path.join(root, "exp3_sharp_minmax" + suffix, "job"))
        if not e:
            continue
        base = ["neggrad", "salun", "scrub"]
        done = [s for s in _seeds(e) if all(f"{s}/sgd/sgd/{m}" in e for m in base + ["sharp_minmax@f0.3-largest"])]
        if len(done) < 2:  # a run under way: one row saying how far it is
            rows.append(["3: Sharp MinMax beats the best baseline (ToW)", scale,
                         f"run under way (seeds done: {len(done)})", "—", "—",
                         "under way", str(len(done))])  # fmt: skip
            continue
        mean = {m: np.mean([t for s in _seeds(e) if (t := _tow(e, s, "sgd", f"sgd/{m}")) is not None]) for m in base}
        best = max(base, key=mean.get)
        for variant, label in (
            ("sharp_minmax@f0.3-largest", "t = 0.3, largest, strict (paper's text)"),
            ("sharp_minmax@f0.3-smallest-reference", "t = 0.3, smallest, reference reading (official code)"),
            ("sharp_minmax@f0.1-largest", "t = 0.1, largest, strict"),
        ):
            rows.append(_row("3: Sharp MinMax beats the best baseline (ToW)", scale,
                             f"{label} − {best} (best baseline by mean)",
                             *_pairs([(e, "sgd", f"sgd/{variant}", "sgd", f"sgd/{best}")])))  # fmt: skip
        rows.append(_row("3: the best baseline beats doing nothing (the floor)", scale,
                         f"original model − {best}", *_pairs([(e, "sgd", "original", "sgd", f"sgd/{best}")]),
                         "less"))  # fmt: skip
    return rows


#: claim 6: the kinds compared with plain AdamW, and whose direction is the claim (ToW up; relearning AUC down)
FAMILY = {"sam": "SAM", "asam": "ASAM", "looksam": "LookSAM (k = 5)", "gsam": "GSAM", "rs": "randomized smoothing",
          "gnp": "gradient-norm penalty", "cr": "curvature regularization", "wa": "weight averaging"}  # fmt: skip


def claim6(root: str) -> list[list[str]]:
    """The sharpness family (exp6): each kind − plain AdamW, on ToW (higher is better) and on the strongest
    relearning attack's forget-accuracy AUC (lower = resists relearning, Unlearn-Smooth's claim), paired by seed;
    a seed enters only when every model of it finished and none diverged."""
    folder = os.path.join(root, "exp6_sharpness_family")
    per = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.startswith("seed") and name.endswith(".json"):
            d = json.load(open(os.path.join(folder, name)))
            if all(k in d and "diverged" not in d[k] for k in ("original", "retrain", "sgd", *FAMILY)):
                per.append(d)
    if not per:
        return []
    tow = {k: [metrics.tow(d[k], d["retrain"]) for d in per] for k in ("original", "sgd", *FAMILY)}
    auc = {k: [d[k]["relearn"]["summary"]["forget_auc_max"] for d in per] for k in ("sgd", *FAMILY)}
    rows = [_row("6: NegGrad beats doing nothing (the floor)", "CNN", "original model − NegGrad / AdamW",
                 tow["original"], tow["sgd"], "less")]  # fmt: skip
    for k, label in FAMILY.items():
        rows.append(_row("6: a sharpness-aware optimizer helps NegGrad (ToW)", "CNN", f"{label} − AdamW",
                         tow[k], tow["sgd"]))  # fmt: skip
    for k, label in FAMILY.items():
        rows.append(_row("6: … resists relearning (forget-accuracy AUC, lower is better)", "CNN",
                         f"{label} − AdamW", auc[k], auc["sgd"], "less"))  # fmt: skip
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--results", default=common.RESULTS_ROOT, help="the experiments' results folder")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    out = args.out or os.path.join(common.RESULTS_ROOT, NAME)
    os.makedirs(out, exist_ok=True)
    rows = [r for claim in (claim1, claim2, claim3, claim4, claim5, claim6) for r in claim(args.results)]
    header = ["claim", "scale", "comparison", "value", "paired Δ [95 % CI]", "verdict", "seeds"]
    rule = {"rule": "agrees / disagrees only when the 95 % CI excludes 0"}
    common.write_table(out, "Claims: paired differences over seeds and verdicts", header, rows, rule,
                       {"rule": "paired t, 95 %"})  # fmt: skip
    top = os.path.join(out, "headline")
    os.makedirs(top, exist_ok=True)
    common.write_table(top, "Claims: the headline comparison of each claim and scale", header, headline(rows), rule,
                       {"rule": "paired t, 95 %"})  # fmt: skip


def headline(rows: list[list[str]]) -> list[list[str]]:
    """The rows of the summary's first table: each claim's main comparisons and floors per scale, without claim 1's
    per-level rows and with claim 6's plain SAM only (the full table has the rest).

    Example:
        >>> six = "6: a sharpness-aware optimizer helps NegGrad (ToW)"
        >>> rows = [["1: SAM helps NegGrad (ToW, mean of 4 memorization levels)", "CNN", "x"],
        ...         ["1: … at high memorization", "CNN", "x"], [six, "CNN", "GSAM − AdamW"],
        ...         [six, "CNN", "SAM − AdamW"]]
        >>> [r[0][:3] + r[2] for r in headline(rows)]
        ['1: x', '6: SAM − AdamW']
    """
    keep = []
    for r in rows:
        if r[0][1:4] == ": …":  # a detail row (claim 1 per level, claim 4 against random)
            continue
        if r[0].startswith("6:") and "floor" not in r[0] and r[2] != "SAM − AdamW":
            continue
        keep.append(r)
    return keep


if __name__ == "__main__":
    main()
