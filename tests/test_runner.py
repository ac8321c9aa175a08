"""The job's entry points: the progress record, the functions a caller passes in, the settings table."""

from __future__ import annotations

import dataclasses
import json
import os
import re

import jax
import numpy as np
import pytest

from jaxunlearn import data, engine, runner
from jaxunlearn.runner import JobConfig, Progress, job_options

#: A job small enough for seconds: one pretraining, two unlearning optimizers, Retrain and two methods.
TINY = dict(max_train=200, max_test=100, model="mlp", width=16, pretrain_epochs=1, unlearn_epochs=1,
            pretrain=("sgd",), unlearn_optimizer=("sgd", "sam"), methods=("retrain", "ft", "neggrad"),
            figures=False, progress=False)  # fmt: skip

# ------------------------------------------------------------------------------ functions passed in


def _noop_unlearn(calls):
    """An ``unlearn_fn`` that records each call and returns the original model unchanged."""

    def unlearn_fn(method, ctx, **kw):
        calls.append({"method": method, "sam": ctx.optimizer.sam, "options": dict(ctx.options),
                      "forget_idx": np.asarray(ctx.forget_idx), "checkpoint_dir": kw["checkpoint_dir"]})  # fmt: skip
        return engine.RunResult(ctx.params, ctx.model_state, history=[], seconds=1.0, info={"call": len(calls)})

    return unlearn_fn


def test_memorization_models_checkpoint_under_the_job_and_resume(tmp_path, monkeypatch):
    """With ``cfg.out`` the memorization models checkpoint under OUT/checkpoints/memorization/seed<s>-K<k>, in
    groups (here of 2, as on CPU beyond MAX_UNROLL_MODELS); a second call finds them and trains nothing again."""
    from jaxunlearn import models
    from jaxunlearn.engine import many

    monkeypatch.setattr(many, "MAX_UNROLL_MODELS", 2)
    monkeypatch.setattr(many.jax, "default_backend", lambda: "cpu")
    cfg = JobConfig(**{**TINY, "max_train": 80}, mem_models=3, out=str(tmp_path / "job"))
    ds = runner.load_dataset(cfg, seed=0)
    apply_fn, params, state = models.split_model(runner.build_model(cfg, ds, seed=0))
    dd = engine.DeviceData.from_numpy(ds.x_train, ds.y_train)
    first = runner.memorization_scores(cfg, ds, apply_fn, params, state, dd, seed=0)
    where = tmp_path / "job" / "checkpoints" / "memorization" / "seed0-K3"
    assert sorted(os.listdir(where)) == ["models0-1", "models2-2"]
    stamps = {f: os.stat(f).st_mtime_ns for f in where.rglob("*") if f.is_file()}
    again = runner.memorization_scores(cfg, ds, apply_fn, params, state, dd, seed=0)
    np.testing.assert_array_equal(first, again)
    assert {f: os.stat(f).st_mtime_ns for f in stamps} == stamps


def test_memorization_cache_computes_once_reads_old_score_caches_first_and_never_leaves_a_partial_file(tmp_path):
    """``memorization_cache``: the first call computes and writes ``.npz`` (scores and held-out accuracies), a
    second reads it without computing; an old scores-only ``.npy`` beside it wins (held-out None); a failing
    computation caches nothing, so the next call computes again."""
    calls = []

    def compute():
        calls.append(1)
        return np.array([0.5, -0.25, 0.0]), np.array([0.25, 1.0, 0.5])

    base = str(tmp_path / "cache" / "seed0")
    first = runner.memorization_cache(base, compute)
    again = runner.memorization_cache(base, compute)
    assert len(calls) == 1 and sorted(os.listdir(tmp_path / "cache")) == ["seed0.npz"]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(again[1], [0.25, 1.0, 0.5])

    np.save(base + ".npy", np.array([1.0, 0.0, 0.0]))
    scores, heldout = runner.memorization_cache(base, compute)
    assert heldout is None and scores.tolist() == [1.0, 0.0, 0.0] and len(calls) == 1

    def broken():
        raise RuntimeError("killed")

    other = str(tmp_path / "other" / "seed1")
    with pytest.raises(RuntimeError, match="killed"):
        runner.memorization_cache(other, broken)
    assert not os.path.exists(other + ".npz")  # nothing cached from a failed computation: the next call computes
    np.testing.assert_array_equal(runner.memorization_cache(other, compute)[0], [0.5, -0.25, 0.0])
    assert len(calls) == 2


def test_memorization_cache_is_written_by_the_main_process_only(tmp_path, monkeypatch):
    """In a multi-host job every process computes the scores, but only process 0 writes the cache file."""
    monkeypatch.setattr(runner.distributed, "is_main_process", lambda: False)
    base = str(tmp_path / "seed0")
    scores, heldout = runner.memorization_cache(base, lambda: (np.array([0.5, 0.0]), np.array([0.25, 1.0])))
    assert scores.tolist() == [0.5, 0.0] and heldout.tolist() == [0.25, 1.0]
    assert not os.path.exists(base + ".npz")
    monkeypatch.setattr(runner.distributed, "is_main_process", lambda: True)
    runner.memorization_cache(base, lambda: (np.array([0.5, 0.0]), np.array([0.25, 1.0])))
    assert os.path.exists(base + ".npz")


def test_jobs_share_their_originals_through_a_folder(tmp_path, monkeypatch):
    """Two jobs that differ only in the forget set share one original per (seed, pretraining): the second reads
    it back (resumed at its last epoch, no training) and records the same test accuracy for it; a job with
    another pretraining recipe is refused with one line naming the setting."""
    pretrains = []
    real = runner.engine.train

    def train(*a, **k):
        res = real(*a, **k)
        if k.get("desc", "").startswith("pretrain"):
            pretrains.append((k["checkpoint_dir"], res.resumed_from))
        return res

    monkeypatch.setattr(runner.engine, "train", train)
    shared = str(tmp_path / "originals")
    base = {**TINY, "methods": ("retrain", "ft"), "unlearn_optimizer": ("sgd",), "originals": shared}
    runner.run_job(JobConfig(forget="random", out=str(tmp_path / "a"), **base))
    runner.run_job(JobConfig(forget="class", forget_class=3, out=str(tmp_path / "b"), **base))
    where = os.path.join(shared, "seed0", "pretrain-sgd")
    assert pretrains == [(where, None), (where, TINY["pretrain_epochs"])]
    acc = [Progress.read(str(tmp_path / job)) for job in ("a", "b")]
    key = Progress.key(0, "sgd", "original")
    assert acc[0][key]["test_acc"] == acc[1][key]["test_acc"]
    assert acc[0][key]["forget_acc"] != acc[1][key]["forget_acc"]  # each job scores its own forget set
    with pytest.raises(ValueError, match="--originals .* pretrained with pretrain_epochs=1, not 2"):
        runner.run_job(JobConfig(forget="random", out=str(tmp_path / "c"), **{**base, "pretrain_epochs": 2}))


def test_run_job_uses_the_memorization_and_unlearning_functions_passed_in(tmp_path):
    """The scores choose the forget set; every method runs once per unlearning optimizer through ``unlearn_fn``
    (Retrain once) and its result is what gets evaluated; a resume calls it for nothing already recorded."""
    seen_seeds, calls = [], []

    def memorization_fn(cfg, ds, apply_fn, params, model_state, data, seed):
        seen_seeds.append(seed)
        return np.arange(len(ds.y_train), dtype=np.float64)  # the last examples score highest

    out = str(tmp_path / "run")
    cfg = JobConfig(forget="high", forget_size=20, out=out, method_options={"ft": {"lr_scale": 0.5}}, **TINY)
    res = runner.run_job(cfg, memorization_fn=memorization_fn, unlearn_fn=_noop_unlearn(calls))

    assert seen_seeds == [0]
    assert [(c["method"], c["sam"]) for c in calls] == [
        ("retrain", "none"), ("ft", "none"), ("neggrad", "none"), ("ft", "sam"), ("neggrad", "sam"),
    ]  # fmt: skip
    assert [c["options"] for c in calls] == [{}, {"lr_scale": 0.5}, {}, {"lr_scale": 0.5}, {}]
    n = len(runner.load_dataset(cfg, 0).y_train)
    for c in calls:
        assert sorted(c["forget_idx"].tolist()) == list(range(n - 20, n))  # the 20 highest scores
    assert calls[3]["checkpoint_dir"] == os.path.join(out, "checkpoints", "seed0", "pretrain-sgd_unlearn-sam", "ft")

    # a no-op unlearning leaves every method with the original model's accuracies; methods carry its info
    for variant in res["variants"].values():
        entries = variant["methods"]
        for name in ("retrain", "ft", "neggrad"):
            for key in ("forget_acc", "retain_acc", "test_acc", "mia"):
                assert entries[name][key] == entries["original"][key], (name, key)
        assert entries["ft"]["info_call"] in (2, 4) and "info_call" not in entries["retrain"]
    assert set(Progress.read(out)) == {
        "0/sgd/original", "0/sgd/retrain", "0/sgd/sgd/ft", "0/sgd/sgd/neggrad", "0/sgd/sam/ft", "0/sgd/sam/neggrad",
    }  # fmt: skip

    again = []
    res2 = runner.run_job(
        dataclasses.replace(cfg, resume=True), memorization_fn=memorization_fn, unlearn_fn=_noop_unlearn(again)
    )
    assert again == [] and seen_seeds == [0, 0]
    assert res2["variants"].keys() == res["variants"].keys()
    # the job's wall time covers both invocations, not only the resume that found everything done
    assert res2["settings"]["seconds"] >= res["settings"]["seconds"] > 0
    # what the numbers were computed with is kept beside them
    on_disk = json.loads(open(os.path.join(out, "results.json")).read())
    assert on_disk["environment"]["packages"]["jax"] == jax.__version__
    assert on_disk["environment"]["backend"] == jax.default_backend()
    for label, variant in res["variants"].items():
        assert res2["variants"][label]["methods"] == variant["methods"]


def test_the_reference_preset_reaches_every_method_and_optimizer(tmp_path):
    """``preset="reference"``: ASAM without η for pretraining and unlearning, Sharp MinMax with the official mask
    and one learning rate; the user's --option still wins; the default preset changes nothing."""
    seen = []

    def unlearn_fn(method, ctx, **kw):
        seen.append((method, ctx.optimizer.sam, ctx.optimizer.eta, dict(ctx.options), ctx.pretrain_optimizer.eta))
        return engine.RunResult(ctx.params, ctx.model_state, history=[], seconds=1.0)

    base = {**TINY, "pretrain": ("asam",), "unlearn_optimizer": ("asam",), "methods": ("sharp_minmax", "ft")}
    opts = {"sharp_minmax": {"fraction": 0.1}}
    runner.run_job(JobConfig(preset="reference", method_options=opts, out=str(tmp_path / "a"), **base),
                   unlearn_fn=unlearn_fn)  # fmt: skip
    by = {m: rest for m, *rest in seen}
    assert by["retrain"][1] == 0.0 and by["ft"][:2] == ["asam", 0.0] and by["ft"][2] == {} and by["ft"][3] == 0.0
    assert by["sharp_minmax"][2] == {"largest": False, "mask_reading": "reference", "forget_lr_scale": 1.0,
                                      "rounding": "floor", "saliency": "batch_mean", "fraction": 0.1}  # fmt: skip
    seen.clear()
    runner.run_job(JobConfig(method_options=opts, out=str(tmp_path / "b"), **base), unlearn_fn=unlearn_fn)
    by = {m: rest for m, *rest in seen}
    assert by["ft"][1] == 0.01 and by["sharp_minmax"][2] == {"fraction": 0.1}
    with pytest.raises(ValueError, match="--preset must be one of"):
        JobConfig(preset="official").validate()


@pytest.mark.parametrize("kind", [k for k in runner.UNLEARN_CHOICES if k not in ("sgd", "sam", "asam")])
def test_every_sharpness_family_kind_is_an_unlearning_optimizer_of_the_job(kind):
    cfg = runner.optimizer_for(kind, engine.UNLEARN_DEFAULT, rho=0.2, lamb=0.5)
    assert cfg.sam == ("none" if kind == "wa" else kind) and cfg.lr == engine.UNLEARN_DEFAULT.lr
    if kind in ("looksam", "gsam"):
        assert cfg.rho == 0.2
    if kind == "wa":
        assert cfg.average == "uniform"
    JobConfig(unlearn_optimizer=("sgd", kind)).validate()


# ---------------------------------------------------------------------------------------- settings


def test_every_setting_is_a_field_with_its_metadata():
    names = [f.name for f in dataclasses.fields(JobConfig)]
    opts = job_options()
    assert [o.name for o in opts] == names
    assert len({o.flag for o in opts}) == len(opts)
    for o in opts:
        assert o.help and "{" not in o.help, o.name
        assert o.group in ("data", "model and training", "unlearning", "run"), o.name
        assert o.default == getattr(JobConfig(), o.name), o.name
    by_name = {o.name: o for o in opts}
    assert by_name["forget"].choices == ("random", "class", "high", "low", "mid", "mix")
    assert by_name["checkpoint_seconds"].help.endswith("(default 30; 0 = after every epoch)")
    assert (by_name["resume"].type, by_name["devices"].optional, by_name["seed"].optional) == (bool, True, False)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("seeds", 1.5, "--seeds must be an integer, got 1.5"), ("rho", "big", "--rho must be a finite number"),
     ("methods", ["ft", 3], "--methods must be a comma-separated list"), ("figures", "no", "figures must be true"),
     ("dataset", 3, "--dataset must be a string"), ("seed", -1, "--seed must be an integer >= 0"),
     ("landscape_grid", 2, "--landscape-grid must be an integer >= 3"), ("devices", 0, "--devices must be an integer"),
     ("pretrain", "sgd,adam", "--pretrain must be one of"), ("model", "mpl", "Did you mean 'mlp'")],
)  # fmt: skip
def test_each_setting_is_checked_by_its_field(field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        JobConfig(**{field: value}).validate()


# ------------------------------------------------------------------------------------------ populations


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"population": 1}, "--population must be an integer >= 2 (a population compares distributions of models), got 1"),
     ({"population": 0}, "--population must be an integer >= 2"),
     ({"population": 2.5}, "--population must be an integer, got 2.5"),
     ({"population_chunk": 4}, "--population-chunk needs --population N."),
     ({"population": 8, "population_chunk": 0}, "--population-chunk must be an integer >= 1"),
     ({"population": 5, "devices": 1, "population_chunk": 2}, None),
     ({"population": 20_000}, "--population must be at most 10000")],
)  # fmt: skip
def test_population_settings_are_checked(settings, message):
    if message is None:
        JobConfig(**settings).validate()
        return
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        JobConfig(**settings).validate()
    assert "\n" not in str(info.value)


def test_population_seeds_are_distinct_across_stages_and_models():
    seeds = [s for stage in range(4) for s in runner._population_seeds(3, 64, stage)]
    retrain_inits = [s + 1000 for stage in (1, 2) for s in runner._population_seeds(3, 64, stage)]
    assert len(set(seeds)) == len(seeds) and not set(retrain_inits) & set(runner._population_seeds(3, 64, 0))
    assert max(seeds) < 2**31


@pytest.mark.slow  # trains 4 populations of 4 models and an interrupted copy of the job (about a minute)
def test_population_job_records_scores_tables_and_figure_and_resumes(tmp_path, monkeypatch):
    """``run_job(population=4)``: results.json holds a population entry per variant (scores for the originals, the
    independent Retrain and each method, Retrain as the reference), the tables show it and the ε figure exists.
    The same job interrupted when it starts a method's population resumes, skips the populations it recorded and
    ends with the same scores (an interruption inside a population's training: tests/test_population.py)."""
    cfg = dict(TINY, methods=("retrain", "ft", "ssd"), unlearn_optimizer=("sgd",), population=4, figures=True)
    res = runner.run_job(JobConfig(**cfg, out=str(tmp_path / "full")))
    pop = res["population"]
    assert pop["models"] == 4 and res["variants"]["pretrain-sgd_unlearn-sgd"]["population"] == pop
    assert set(pop["methods"]) == {"original", "retrain", "retrain_independent", "ft", "ssd"}
    assert "final_score" not in pop["methods"]["retrain"]  # the reference
    lengths = set()
    for name in ("original", "retrain_independent", "ft", "ssd"):
        e = pop["methods"][name]
        assert 0.0 <= e["forget_score"] <= 1.0 and 0.0 <= e["ulira_auc"] <= 1.0 and e["models"] == 4
        lengths.add(len(e["epsilons"]))  # one ε per forget example
    assert len(lengths) == 1 and lengths.pop() > 0
    assert pop["methods"]["ssd"]["batched"] is False and pop["methods"]["ft"]["batched"] is True
    table = runner.format_tables(res)
    assert "populations of 4 models" in table and "ssd (one by one)" in table
    assert os.path.getsize(tmp_path / "full" / "pretrain-sgd_unlearn-sgd" / "population_epsilons.png") > 0
    with open(tmp_path / "full" / "results.json") as f:
        assert json.load(f)["population"]["methods"]["ft"]["final_score"] == pop["methods"]["ft"]["final_score"]

    real, started = runner.population.unlearn_population, []

    def stop_at_ft(method, *args, **kw):  # the population stages run in order: original, retrain x2, ft, ssd
        started.append(method)
        if method == "ft":
            raise KeyboardInterrupt
        return real(method, *args, **kw)

    monkeypatch.setattr(runner.population, "unlearn_population", stop_at_ft)
    with pytest.raises(KeyboardInterrupt):
        runner.run_job(JobConfig(**cfg, out=str(tmp_path / "cut")))
    monkeypatch.setattr(runner.population, "unlearn_population", real)
    assert started == ["retrain", "retrain", "ft"]
    done = Progress.read(tmp_path / "cut")
    assert "0/sgd/population/retrain_independent" in done and "0/sgd/sgd/population/ft" not in done
    again = runner.run_job(JobConfig(**cfg, out=str(tmp_path / "cut"), resume=True))
    for name, e in pop["methods"].items():
        for key in ("final_score", "forget_score", "ulira_auc", "retain_acc"):
            assert again["population"]["methods"][name].get(key) == pytest.approx(e.get(key), abs=1e-6), (name, key)


def test_tune_seeds_tunes_the_first_seed_and_runs_the_later_ones_at_its_choice(tmp_path, monkeypatch):
    """``tune_seeds=1``: only the first seed is tuned; every later seed runs each cell with the options of the
    setting chosen for that cell on seed 0 (the rate of FT, SSD's alpha), and records it and where it came from."""
    tuned_on, ran_with = [], []
    real_tune = runner.tuning.tune

    def counting_tune(name, ctx, **kw):
        tuned_on.append((name, ctx.seed))
        return real_tune(name, ctx, **kw)

    def recording_unlearn(name, ctx, **kw):
        ran_with.append((name, ctx.seed, dict(ctx.options)))
        return runner.methods.unlearn(name, ctx, **kw)

    monkeypatch.setattr(runner.tuning, "tune", counting_tune)
    cfg = JobConfig(tune=True, tune_seeds=1, seeds=3, out=str(tmp_path / "t"),
                    **{**TINY, "unlearn_optimizer": ("sgd",), "methods": ("retrain", "ft", "ssd")})  # fmt: skip
    runner.run_job(cfg, unlearn_fn=recording_unlearn)
    assert sorted(tuned_on) == [("ft", 0), ("ssd", 0)]
    done = Progress.read(tmp_path / "t")
    for name, key in (("ft", "lr_scale"), ("ssd", "alpha")):
        first = done[f"0/sgd/sgd/{name}"]["info_tuned"]
        for seed in (1, 2):
            e = done[f"{seed}/sgd/sgd/{name}"]
            assert e["info_tuned"] == first and e["info_tuned_on_seeds"] == [0]
            (opts,) = [o for n, sd, o in ran_with if n == name and sd == seed]
            assert opts[key] == first[key]
    with pytest.raises(ValueError, match="--tune-seeds N needs --tune"):
        JobConfig(tune_seeds=1).validate()
    with pytest.raises(ValueError, match="--tune-seeds must be an integer >= 1, got 0"):
        JobConfig(tune=True, tune_seeds=0).validate()


def test_tune_on_a_memorization_set_aims_at_the_forget_accuracy_its_scores_predict(tmp_path, monkeypatch):
    """``--forget high --tune``: the runner hands the forget examples' own memorization scores to the tuner, which
    records the target it derived from them (``info_tune_forget_target``)."""
    seen = []
    real_tune = runner.tuning.tune

    def spying_tune(name, ctx, **kw):
        seen.append((np.asarray(ctx.forget_idx), kw.get("forget_scores")))
        return real_tune(name, ctx, **kw)

    def scores_fn(cfg, ds, *args):  # a stand-in for the memorization models: a known score per example
        return np.linspace(-0.9, 0.0, len(ds.y_train))

    monkeypatch.setattr(runner.tuning, "tune", spying_tune)
    cfg = JobConfig(tune=True, forget="high", out=str(tmp_path / "m"),
                    **{**TINY, "unlearn_optimizer": ("sgd",), "methods": ("retrain", "ft")})  # fmt: skip
    res = runner.run_job(cfg, memorization_fn=scores_fn)
    ((forget_idx, got),) = seen
    n = len(runner.load_dataset(cfg, 0).y_train)
    np.testing.assert_array_equal(got, np.linspace(-0.9, 0.0, n)[forget_idx])
    assert got.min() >= np.quantile(np.linspace(-0.9, 0.0, n), 0.85)  # the highest-scoring tenth
    target = res["methods"]["ft"]["info_tune_forget_target"]  # FA₀ − mean score, the original's FA₀
    assert target == pytest.approx(res["methods"]["original"]["forget_acc"] - got.mean(), abs=1e-6)
    assert res["methods"]["ft"]["info_tune_forget_target_from"] == "scores"


def test_a_memorization_fn_with_held_out_accuracies_sets_the_tune_target_to_their_mean(tmp_path):
    """A ``memorization_fn`` may return ``(scores, heldout)``: the scores still choose the forget set and the
    tuner aims at the forget examples' mean held-out accuracy; a malformed pair fails in one line, before
    training."""

    def pair_fn(cfg, ds, *args):
        n = len(ds.y_train)
        return np.linspace(-0.9, 0.0, n), np.linspace(0.0, 1.0, n)

    cfg = JobConfig(tune=True, forget="high", out=str(tmp_path / "h"),
                    **{**TINY, "unlearn_optimizer": ("sgd",), "methods": ("retrain", "ft")})  # fmt: skip
    res = runner.run_job(cfg, memorization_fn=pair_fn)
    ds = runner.load_dataset(cfg, 0)
    scores, heldout = pair_fn(cfg, ds)
    forget_idx = data.select_forget(ds.y_train, "high", cfg.forget_size, seed=0, scores=scores)
    assert res["methods"]["ft"]["info_tune_forget_target"] == pytest.approx(heldout[forget_idx].mean())
    assert res["methods"]["ft"]["info_tune_forget_target_from"] == "heldout"
    bad = JobConfig(tune=True, forget="high", out=str(tmp_path / "b"), **TINY)
    for out, says in (
        (lambda n: (np.zeros(n), np.full(3, 0.5)), "returned 3 held-out accuracies for .* training examples"),
        (lambda n: (np.zeros(n), np.full(n, 1.5)), "held-out accuracies outside \\[0, 1\\]"),
        (lambda n: (np.zeros(n), np.zeros(n), np.zeros(n)), "a tuple of 3 items"),
        (lambda n: np.full(n, np.nan), "non-finite scores"),
    ):
        with pytest.raises(ValueError, match=says):
            runner.run_job(bad, memorization_fn=lambda cfg, ds, *a, out=out: out(len(ds.y_train)))


def test_tune_chooses_each_methods_rate_on_the_validation_split_and_records_it(tmp_path):
    """``tune=True``: every method but Retrain runs at the lr_scale jaxunlearn.tuning chooses; the entry records the
    choice; a job without validation data or with populations is refused before training."""
    cfg = JobConfig(tune=True, out=str(tmp_path / "t"), **{**TINY, "unlearn_optimizer": ("sgd",),
                                                            "methods": ("ft", "ssd")})  # fmt: skip
    res = runner.run_job(cfg)
    ft = res["methods"]["ft"]
    assert ft["info_tuned"]["lr_scale"] > 0 and ft["info_tune_candidates"] >= 2
    # a direct edit has no rate: SSD is tuned over its registered alpha grid
    ssd = res["methods"]["ssd"]
    assert ssd["info_tuned"]["alpha"] in (2.0, 5.0, 10.0, 20.0) and ssd["info_tune_candidates"] == 4
    assert isinstance(ft["info_tune_satisfied"], bool) and "info_tuned" not in res["methods"]["retrain"]
    with pytest.raises(ValueError, match="--tune does not apply to --population"):
        JobConfig(tune=True, population=4).validate()
    tiny = {**TINY, "max_train": 5, "batch_size": 2, "forget_size": 1, "methods": ("ft",)}
    with pytest.raises(ValueError, match="--tune chooses learning rates on the validation split, but digits has no"):
        runner.run_job(JobConfig(tune=True, out=str(tmp_path / "v"), **tiny))
    assert not (tmp_path / "v").exists()  # refused before any work: nothing left behind
