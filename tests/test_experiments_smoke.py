"""Each experiment script runs end to end in its tiny ``--smoke`` mode (digits, 1 seed, 1 epoch) and
writes its table (markdown + json). All scripts run in this one process so that the engine's
compiled steps are shared between them."""

import importlib.util
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXP = os.path.join(ROOT, "experiments")

CASES = {
    "exp1_neggrad_sam_memorization": ["--levels", "high", "--optimizers", "sgd"],
    "exp2_sam_pretrain_vs_unlearn": ["--methods", "ft"],
    "exp3_sharp_minmax": ["--fractions", "0.1", "--baselines", "neggrad", "--reference-fraction", "0"],
    "exp4_hessian_selection": ["--tasks", "feature", "--selections", "hessian,last_layer", "--updates", "first_order"],
    "exp5_analysis": ["--grid", "3", "--relearn-steps", "5"],
    "exp6_sharpness_family": ["--kinds", "sgd,sam,wa"],
}


def _load(name):
    if EXP not in sys.path:
        sys.path.insert(0, EXP)
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", os.path.join(EXP, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_experiment_smoke(name, tmp_path):
    out = tmp_path / name
    _load(name).main(["--smoke", "--out", str(out), *CASES[name]])
    table = (out / "table.md").read_text()
    assert table.startswith("## ") and "|---|" in table
    obj = json.loads((out / "table.json").read_text())
    assert obj["rows"] and all(len(r) == len(obj["header"]) for r in obj["rows"])


def test_verdicts_summarize_the_recorded_runs_with_the_paired_rule(tmp_path):
    """experiments/verdicts.py reads the committed jobs' per-seed entries: every row has a verdict of the rule, and
    a verdict other than "not resolved" only where the interval excludes 0."""
    _load("verdicts").main(["--out", str(tmp_path)])
    obj = json.loads((tmp_path / "table.json").read_text())
    assert len(obj["rows"]) >= 10
    for row in obj["rows"]:
        verdict, ci = row[5], row[4]
        assert verdict in ("agrees", "disagrees", "not resolved", "not run", "one seed so far", "under way")
        if verdict in ("agrees", "disagrees"):
            lo, hi = (float(v) for v in ci[ci.index("[") + 1 : ci.index("]")].split(","))
            assert lo > 0 or hi < 0
    top = json.loads((tmp_path / "headline" / "table.json").read_text())["rows"]  # the summary's first table
    assert top and all(r in obj["rows"] for r in top)
    assert not any(r[0].startswith("1: …") for r in top)
    claim = lambda r: (r[0].split(":")[0], r[1])  # noqa: E731
    assert {claim(r) for r in top} == {claim(r) for r in obj["rows"]}  # every claim × scale keeps a row
    assert {"4", "5"} <= {r[0].split(":")[0] for r in top}  # claims 4 and 5 from their seed<k>.json
    # a bound that one decimal would print as 0 keeps its sign, so the printed interval shows the verdict
    bound = _load("verdicts")._bound
    assert [bound(x) for x in (-1.74, -0.04, 0.0, 0.049, 12.25)] == ["-1.7", "-0.04", "+0.0", "+0.049", "+12.2"]


def test_verdicts_of_claims_4_and_5_pair_the_per_seed_files_by_seed(tmp_path):
    """Claims 4 and 5 read ``seed<k>.json``: a difference that is consistent over seeds resolves in the paper's
    direction (SAM's sharpness(F) lower by 0.1 nats ± 0.01), one that flips sign does not, and a comparison
    whose model diverged in a seed leaves that seed out and says so."""
    verdicts = _load("verdicts")
    folder = tmp_path / "exp5_analysis_cnn"
    folder.mkdir()
    for seed, noise in enumerate((0.0, 0.01, -0.01)):
        entries = {
            "sgd / original": {"sharpness_F": 0.3 + noise, "entanglement": 5.0 + (-1) ** seed, "relearn_steps": 10},
            "sam / original": {"sharpness_F": 0.2, "entanglement": 5.0, "relearn_steps": 12},
            "retrain": {"relearn_steps": 10.0 + seed},
            "sgd / sharp_minmax": {"relearn_steps": 20.0, "diverged": seed == 2},
        }
        (folder / f"seed{seed}.json").write_text(json.dumps({"seed": seed, "entries": entries}))
    (folder / "seed0.bak.json").write_text("not a seed file")  # only seed<k>.json is read
    rows = {r[0].split("(")[0].strip(): r for r in verdicts.claim5(str(tmp_path))}
    flat = rows["5: SAM pretraining flattens the forget loss"]
    assert flat[1:3] == ["CNN", "random F: SAM − SGD original"] and flat[5:] == ["agrees", "3"]
    assert flat[3] == "0.2 vs 0.3" and flat[4].startswith("-0.1 [")
    assert rows["5: SAM pretraining lowers entanglement"][5] == "not resolved"  # ±1 flips sign between seeds
    relearn = rows["5: Sharp MinMax resists relearning at least as well as Retrain"]  # diverged in seed 2: left out
    assert "1 of 3 seeds left out" in relearn[2] and relearn[3:] == ["20 vs 10.5", "+9.5 [+3.15, +15.9]", "agrees", "2"]
    assert rows["5: Sharp MinMax leaves a flatter forget loss than NegGrad"][5] == "not run"  # no sharpness recorded
    assert verdicts.claim4(str(tmp_path)) == []  # no claim 4 run in this folder: no rows


def test_lm_facts_bad_options_fail_in_one_line_before_any_training(capsys):
    mod = _load("lm_facts")
    for bad, says in (
        (["--option", "layer=2"], "--option must look like METHOD.KEY=VALUE"),
        (["--depth", "0"], "depth"),
    ):
        with pytest.raises(SystemExit) as e:
            mod.main([*bad, "--smoke"])
        assert e.value.code == 2  # argparse's usage error, before any training
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert "error:" in last and says in last


def test_untuned_experiments_pin_the_recipes_of_their_tables_and_tuned_ones_search_the_defaults(tmp_path):
    """Untuned jobs pin paper A's NegGrad and the recipes RESULTS.md was run with (for the methods they run);
    tuned jobs keep paper A's NegGrad but tune the others around the library's current defaults; a user's
    --option still wins."""
    common = _load("common")
    import argparse

    args = argparse.Namespace(resume=False, progress=False)
    s = {"dataset": "digits", "max_train": 100}
    cfg = common.job_config(args, s, str(tmp_path / "a"), methods=("retrain", "ga", "scrub", "neggrad"))
    assert cfg.method_options == {"neggrad": common.NEGGRAD_PAPER, "ga": {"lr_scale": 0.01, "epochs": 2},
                                  "scrub": {"lr_scale": 0.1}}  # fmt: skip
    tuned = common.job_config(args, {**s, "tune": True}, str(tmp_path / "b"), methods=("retrain", "ga", "neggrad"))
    assert tuned.method_options == {"neggrad": common.NEGGRAD_PAPER}
    own = common.job_config(args, s, str(tmp_path / "c"), methods=("rl",), method_options={"rl": {"lr_scale": 0.5}})
    assert own.method_options["rl"] == {"lr_scale": 0.5}


def test_cached_memorization_keeps_the_held_out_accuracies_and_reads_score_only_caches(tmp_path, monkeypatch):
    """``common.cache_memorization`` computes a seed's memorization once, keeps scores and held-out accuracies on
    disk (``mem_<key>.npz``) and returns both; a cache from before (``mem_<key>.npy``, scores only) is read as it
    is, so the jobs that used it keep their forget sets and targets."""
    import numpy as np

    common = _load("common")
    calls = []

    def details(cfg, ds, *args):
        calls.append(args[-1])
        return np.array([0.5, -0.1, 0.2]), np.array([0.25, 1.0, 0.5])

    monkeypatch.setattr(common.runner, "memorization_details", details)
    monkeypatch.setattr(common, "_MEM_CACHE", {})
    cfg = common.JobConfig(max_train=60)
    ds = type("DS", (), {"y_train": np.zeros(3)})()
    fn = common.cache_memorization(str(tmp_path / "c"))
    scores, heldout = fn(cfg, ds, None, None, None, None, 7)
    np.testing.assert_array_equal(heldout, [0.25, 1.0, 0.5])
    (saved,) = os.listdir(tmp_path / "c")
    assert saved.endswith(".npz") and calls == [7]
    monkeypatch.setattr(common, "_MEM_CACHE", {})  # a new process: read back from disk, nothing recomputed
    again = common.cache_memorization(str(tmp_path / "c"))(cfg, ds, None, None, None, None, 7)
    np.testing.assert_array_equal(again[1], heldout)
    assert calls == [7] and common.SCORES_SEEN[7].tolist() == [0.5, -0.1, 0.2]
    np.save(tmp_path / "c" / saved.replace(".npz", ".npy"), np.array([0.9, 0.0, 0.1]))  # an older cache wins
    monkeypatch.setattr(common, "_MEM_CACHE", {})
    old = common.cache_memorization(str(tmp_path / "c"))(cfg, ds, None, None, None, None, 7)
    assert isinstance(old, np.ndarray) and old.tolist() == [0.9, 0.0, 0.1] and calls == [7]
