"""``benchmarks/recipes.py``: the cells it writes, and ``--resume`` after an interrupted run.

Tiny settings (digits, one pretraining epoch, one unlearning epoch, two methods): only the bookkeeping is
tested here; the recipes themselves are measured in ``benchmarks/RESULTS-recipes.md``.
"""

import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import recipes  # noqa: E402

TINY = [
    *("--max-train", "400", "--pretrain", "sgd", "--unlearn", "sgd"),
    *("--pretrain-epochs", "1", "--unlearn-epochs", "1"),
]


def test_resume_keeps_finished_cells_and_runs_only_the_missing_methods(tmp_path, capsys):
    out = tmp_path / "r.json"
    recipes.main([*TINY, "--methods", "ft", "--out", str(out)])
    first = json.loads(out.read_text())["cells"]
    assert [c["method"] for c in first] == ["original", "retrain", "ft"]

    recipes.main([*TINY, "--methods", "ft,rl", "--out", str(out), "--resume"])
    cells = json.loads(out.read_text())["cells"]
    # no duplicated rows: original, retrain and ft are kept as written, rl is added
    assert [c["method"] for c in cells] == ["original", "retrain", "ft", "rl"]
    assert cells[:3] == first
    # the deterministic pipeline: the resumed rl row equals rl in a fresh run
    fresh = tmp_path / "fresh.json"
    recipes.main([*TINY, "--methods", "rl", "--out", str(fresh)])
    rl_fresh = next(c for c in json.loads(fresh.read_text())["cells"] if c["method"] == "rl")
    for key in ("forget_acc", "retain_acc", "test_acc"):
        assert abs(cells[3][key] - rl_fresh[key]) < 1e-6, key

    # nothing left to do: a second resume changes nothing
    recipes.main([*TINY, "--methods", "ft,rl", "--out", str(out), "--resume"])
    assert json.loads(out.read_text())["cells"] == cells
    assert "| rl |" in capsys.readouterr().out


def test_tune_adds_a_tuned_row_for_ssd_over_its_registered_alpha_grid(tmp_path):
    out = tmp_path / "t.json"
    recipes.main([*TINY, "--methods", "ssd", "--tune", "--out", str(out)])
    cells = {c["method"]: c for c in json.loads(out.read_text())["cells"]}
    assert set(cells) == {"original", "retrain", "ssd", "ssd (tuned)"}
    tuned = cells["ssd (tuned)"]
    assert sorted(c["options"]["alpha"] for c in tuned["candidates"]) == [2.0, 5.0, 10.0, 20.0]
    assert tuned["chosen"]["alpha"] in (2.0, 5.0, 10.0, 20.0)
    chosen = next(c for c in tuned["candidates"] if c["chosen"])
    assert chosen["options"]["alpha"] == tuned["chosen"]["alpha"]
    # the table names what was tuned: SSD's alpha, not a learning rate it does not have
    assert f"alpha [{tuned['chosen']['alpha']}]" in recipes.table(json.loads(out.read_text()))


def test_memorization_kinds_train_the_scoring_models_once_per_seed(tmp_path, monkeypatch):
    from jaxunlearn import runner

    calls = []
    real = runner.memorization_details

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(runner, "memorization_details", counted)
    tiny = [*TINY, "--methods", "ft", "--mem-models", "2"]
    high, low = tmp_path / "high.json", tmp_path / "low.json"
    recipes.main([*tiny, "--forget", "high", "--out", str(high)])
    recipes.main([*tiny, "--forget", "low", "--out", str(low)])
    assert len(calls) == 1  # the second kind read the cached scores
    (cached,) = (tmp_path / "memorization_cache").glob("*.npz")  # beside --out
    with np.load(cached) as z:
        scores, heldout = z["scores"], z["heldout"]
    assert scores.shape == heldout.shape == (360,) and ((scores >= -1) & (scores <= 1)).all()
    assert ((heldout >= 0) & (heldout <= 1)).all()
    for path in (high, low):
        cells = {c["method"]: c for c in json.loads(path.read_text())["cells"]}
        assert set(cells) == {"original", "retrain", "ft"}


def test_table_marks_the_seeds_where_the_collapse_guard_fired():
    def cell(seed, method, ra, unlearn="sgd"):
        return {"seed": seed, "pretrain": "sgd", "unlearn": unlearn, "method": method, "forget_acc": 0.5,
                "retain_acc": ra, "test_acc": 0.9, "seconds": 1.0, "tow": 0.5}  # fmt: skip

    cells = [cell(s, m, 0.99, None) for s in (0, 1) for m in ("original", "retrain")]
    cells += [cell(0, "ssd", 0.30), cell(1, "ssd", 0.95), cell(0, "ft", 0.80), cell(1, "ft", 0.98)]
    rows = {line.split(" | ")[2]: line for line in recipes.table({"cells": cells}).splitlines()[2:]}
    assert "ssd † collapsed (1/2)" in rows  # RA 30 % is 69 points below the original's 99 %
    assert "ft" in rows  # 19 points below: not a collapse (the guard's threshold is 20)


def test_targets_names_the_methods_that_miss_and_why():
    def cell(method, fa, ta, unlearn="sgd", seed=0):
        return {"seed": seed, "pretrain": "sgd", "unlearn": unlearn, "method": method, "forget_acc": fa,
                "retain_acc": 1.0, "test_acc": ta}  # fmt: skip

    ref = [cell("original", 1.0, 0.98, None), cell("retrain", 0.0, 0.88, None)]
    out = {
        "cells": [*ref, cell("ft", 0.03, 0.86), cell("ga", 1.0, 0.95), cell("rl", 0.0, 0.80), cell("scrub", 0.6, 0.9)]
    }
    line = recipes.targets(out)
    assert line.startswith("- sgd / sgd: 2 of 4 meet it;")  # ft and scrub (part of the way) meet it
    assert "ga (FA 100.0, Retrain 0.0, original 100.0; ΔTA +7.0)" in line and "rl (ΔTA -8.0)" in line
    # a generalized forget set: the original is already at Retrain's; staying within 5 points of it meets it
    gen = [cell("original", 1.0, 0.98, None), cell("retrain", 1.0, 0.98, None), cell("ft", 0.96, 0.97)]
    assert recipes.targets({"cells": gen}) == "- sgd / sgd: 1 of 1 meet it"
    # seed means: one seed that misses is averaged with one that meets
    two = [*ref, *[dict(c, seed=1) for c in ref], cell("ga", 1.0, 0.9), cell("ga", 0.0, 0.9, seed=1)]
    assert recipes.targets({"cells": two}) == "- sgd / sgd: 1 of 1 meet it"


def test_paired_compares_the_tuned_choice_with_the_current_default_over_seeds():
    """``--paired``: per method, the tuned candidate against the candidate at the method's registered default (FT:
    lr_scale 1, its own epochs), ToW against Retrain from the same tune, with the paired interval and verdict."""

    def cand(lr, fa, chosen):
        return {"lr_scale": lr, "epochs": None, "options": {}, "forget_acc": fa, "retain_acc": 1.0, "test_acc": 0.9,
                "chosen": chosen}  # fmt: skip

    cells = []
    for seed, (fa_default, fa_tuned) in enumerate([(0.2, 0.0), (0.3, 0.05), (0.25, 0.0)]):
        cells.append({"seed": seed, "pretrain": "sgd", "unlearn": None, "method": "retrain", "forget_acc": 0.0,
                      "retain_acc": 1.0, "test_acc": 0.9})  # fmt: skip
        cands = [cand(1.0, fa_default, False), cand(3.0, fa_tuned, True), cand(0.3, 0.9, False)]
        cells.append({"seed": seed, "pretrain": "sgd", "unlearn": "sgd", "method": "ft (tuned)", "candidates": cands})
    (row,) = recipes.paired({"cells": cells}).splitlines()[2:]
    cols = [c.strip() for c in row.strip("|").split("|")]
    assert cols[:4] == ["sgd", "sgd", "ft", "3"]
    # ToW = 1 - FA here: default 80 / 70 / 75, tuned 100 / 95 / 100: differences 20, 25, 25
    assert cols[4] == "75.0 ± 4.1" and cols[5] == "98.3 ± 2.4"
    assert cols[6].startswith("+23.3 [") and cols[7] == "agrees"
