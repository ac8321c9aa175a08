"""The ``jaxunlearn`` command end to end on a tiny setting (run in-process through ``cli.main``)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys

import pytest

from jaxunlearn import cli, methods, report

#: Tiny but complete: digits, a small MLP, one pretraining and one unlearning optimizer.
TINY = ["--max-train", "200", "--max-test", "100", "--model", "mlp", "--width", "16"]
TINY += ["--pretrain-epochs", "2", "--unlearn-epochs", "1", "--pretrain", "sgd", "--unlearn-optimizer", "sgd"]
TINY += ["--no-figures", "--quiet"]
REQUIRED = ("forget_acc", "retain_acc", "test_acc", "mia", "tow", "seconds")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cli") / "run")
    status = cli.main(["run", *TINY, "--methods", "ft,neggrad", "--out", out])
    assert status == 0
    return out


def _check_contract(results, names, *, seeds=1):
    report.validate_results(results)
    assert isinstance(results["settings"], dict)
    assert set(results["methods"]) == {"original", "retrain", *names}
    for name, entry in results["methods"].items():
        for key in REQUIRED:
            value = entry[key]
            if seeds > 1:
                assert isinstance(value, dict) and set(value) == {"mean", "std"}, (name, key, value)
                assert value["std"] >= 0
                value = value["mean"]
            assert isinstance(value, float) and math.isfinite(value), (name, key, value)
            if key in ("forget_acc", "retain_acc", "test_acc", "mia"):
                assert 0.0 <= value <= 1.0, (name, key, value)
            else:
                assert value >= 0.0
        assert "diverged" in entry


def test_run_writes_results_matching_the_contract(run_dir):
    with open(os.path.join(run_dir, "results.json")) as f:
        results = json.load(f)
    _check_contract(results, ("ft", "neggrad"))
    s = results["settings"]
    assert s["methods"] == ["ft", "neggrad"] and s["max_train"] == 200 and s["model"] == "mlp"
    assert s["variants"] == ["pretrain-sgd_unlearn-sgd"]
    assert results["methods"]["retrain"]["tow"] == pytest.approx(1.0)
    assert results["methods"]["ft"]["diverged"] is None
    # the variant's own results file and the tables
    variant = report.read_results(os.path.join(run_dir, "pretrain-sgd_unlearn-sgd"))
    assert variant["methods"] == results["methods"]
    for path in ("table.md", "progress.json", "pretrain-sgd_unlearn-sgd/table.md"):
        assert os.path.exists(os.path.join(run_dir, path)), path
    assert not [f for f in os.listdir(run_dir) if ".tmp" in f]  # atomic writes leave no temporaries


def test_show_prints_one_row_per_method(run_dir, capsys):
    assert cli.main(["show", run_dir]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| Method")]
    assert [r.split("|")[1].strip() for r in rows] == ["original", "retrain", "ft", "neggrad"]
    assert "FA (%)" in out and "ToW (%)" in out
    assert cli.main(["show", os.path.join(run_dir, "results.json")]) == 0
    assert capsys.readouterr().out == out


@pytest.mark.slow  # end to end: in the second CI step
def test_toml_config_with_two_seeds_and_flag_override(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        'methods = ["ft"]\nseeds = 2\nmax-train = 300\nmax_test = 100\nmodel = "mlp"\nwidth = 16\n'
        'pretrain = ["sgd"]\nunlearn_optimizer = ["sgd"]\npretrain_epochs = 2\nunlearn_epochs = 1\n'
        "figures = false\nprogress = false\n[method_options.ft]\nlr_scale = 0.5\n"
    )
    out = str(tmp_path / "run")
    assert cli.main(["run", "--config", str(cfg), "--max-train", "150", "--out", out]) == 0
    results = report.read_results(out)
    _check_contract(results, ("ft",), seeds=2)
    s = results["settings"]
    assert s["max_train"] == 150  # the flag overrides the file
    assert s["seeds"] == 2 and s["method_options"] == {"ft": {"lr_scale": 0.5}} and s["figures"] is False


def _config(argv):
    return cli._job_config(cli.build_parser().parse_args(["run", *argv]))


@pytest.mark.parametrize("kind", ["json", "toml"])
def test_config_file_is_read_and_flags_override_it(tmp_path, kind):
    if kind == "json":
        text = json.dumps({"methods": ["ft", "ga"], "rho": 0.3, "seeds": 3, "data-dir": None,
                           "method_options": {"ga": {"lr_scale": 0.1}}, "option": ["ft.epochs=4"]})  # fmt: skip
    else:
        text = (
            'methods = "ft,ga"\nrho = 0.3\nseeds = 3\noption = ["ft.epochs=4"]\n[method_options.ga]\nlr_scale = 0.1\n'
        )
    path = tmp_path / f"c.{kind}"
    path.write_text(text)
    cfg = _config(["--config", str(path)]).validate()
    assert cfg.methods == ("ft", "ga") and cfg.rho == 0.3 and cfg.seeds == 3
    assert cfg.method_options == {"ga": {"lr_scale": 0.1}, "ft": {"epochs": 4}}
    cfg = _config(["--config", str(path), "--rho", "0.05", "--methods", "neggrad", "--option", "ga.lr_scale=0.2"])
    cfg.validate()
    assert cfg.rho == 0.05 and cfg.methods == ("neggrad",) and cfg.seeds == 3
    assert cfg.method_options["ga"] == {"lr_scale": 0.2}


@pytest.mark.parametrize(
    ("args", "config", "expected"),
    [([], None, (None, 30.0)), (["--checkpoint-every", "2"], None, (2, None)),
     (["--checkpoint-seconds", "0"], None, (None, 0.0)),
     (["--checkpoint-every", "2", "--checkpoint-seconds", "10"], None, (2, 10.0)),
     ([], {"checkpoint_every": 3}, (3, None)), (["--checkpoint-every", "2"], {"checkpoint_seconds": 60}, (2, 60.0))],
)  # fmt: skip
def test_checkpoint_schedule_options(tmp_path, args, config, expected):
    """Checkpoints every 30 s of training by default; N epochs alone (flag or config file) replaces the time
    rule, both together apply both, and a flag keeps what the config file says about the other."""
    if config is not None:
        (tmp_path / "c.json").write_text(json.dumps(config))
        args = [*args, "--config", str(tmp_path / "c.json")]
    cfg = _config(args).validate()
    assert (cfg.checkpoint_every, cfg.checkpoint_seconds) == expected


def test_run_help_mentions_every_option_group_and_option(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["run", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for group in ("data:", "model and training:", "unlearning:", "run:"):
        assert group in text, group
    run_parser = cli.build_parser()._subparsers._group_actions[0].choices["run"]
    for action in run_parser._actions:
        for opt in action.option_strings:
            assert opt in text, opt
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    top = capsys.readouterr().out
    for cmd in ("run", "show", "methods", "theory"):
        assert cmd in top


def test_run_help_states_the_job_defaults_and_never_none(capsys, monkeypatch):
    """Each ``run`` option defaults to None on the command line (config files merge under it); the help must
    show the job's real default, read from JobConfig, so a changed default cannot leave a stale help text."""
    from jaxunlearn.runner import JobConfig

    monkeypatch.setenv("COLUMNS", "400")  # argparse wraps long words mid-word otherwise
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = capsys.readouterr().out
    assert "(default: None)" not in text and "(default: False)" not in text
    # One segment per option: the help text re-wrapped onto one line, split before each "  --flag".
    segments = re.split(r"\n\s{2}(?=--)", text)
    lines = {seg.split()[0]: " ".join(seg.split()) for seg in segments if seg.startswith("--")}
    defaults = JobConfig()
    for flag, field in [
        ("--pretrain-epochs", "pretrain_epochs"),
        ("--unlearn-epochs", "unlearn_epochs"),
        ("--batch-size", "batch_size"),
        ("--pretrain-lr", "pretrain_lr"),
        ("--mem-models", "mem_models"),
    ]:
        assert f"(default {getattr(defaults, field)})" in lines[flag], lines[flag]
    assert f"(default {','.join(defaults.methods)})" in lines["--methods"]
    assert f"(default {','.join(defaults.unlearn_optimizer)})" in lines["--unlearn-optimizer"]
    monkeypatch.setattr(JobConfig.__dataclass_fields__["pretrain_epochs"], "default", 123)
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    assert "(default 123)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["theory", "--help"])
    theory = capsys.readouterr().out
    assert "(default: None)" not in theory and "(default: 300)" in theory


def _run_parser():
    return cli.build_parser()._subparsers._group_actions[0].choices["run"]


def test_run_parser_is_generated_from_the_job_settings():
    """One flag per JobConfig field (plus --config and --help); giving a flag sets that field and no other."""
    from jaxunlearn.runner import JobConfig, job_options

    flags = {opt for action in _run_parser()._actions for opt in action.option_strings}
    assert flags == {"-h", "--help", "--config"} | {o.flag for o in job_options()}
    assert {o.name for o in job_options()} == {f.name for f in dataclasses.fields(JobConfig)}
    defaults = JobConfig()
    for o in job_options():
        if o.type is bool:
            argv, want = [o.flag], not o.default
        elif o.type is dict:
            argv, want = (
                [o.flag, "ft.epochs=2", o.flag, "ga.lr_scale=0.5"],
                {"ft": {"epochs": 2}, "ga": {"lr_scale": 0.5}},
            )
        elif o.type is tuple:
            argv, want = [o.flag, "a, b"], ("a", "b")
        elif o.type is str:
            argv, want = [o.flag, "x"], "x"
        else:
            argv, want = [o.flag, "7"], o.type(7)
        cfg = _config(argv)
        assert getattr(cfg, o.name) == want, o.flag
        changed = {f.name for f in dataclasses.fields(JobConfig) if getattr(cfg, f.name) != getattr(defaults, f.name)}
        # --checkpoint-every alone also turns the time rule off (see test_checkpoint_schedule_options)
        assert changed == ({o.name, "checkpoint_seconds"} if o.name == "checkpoint_every" else {o.name}), o.flag
    assert _config([]) == defaults  # no flag: every default


def test_run_help_shows_every_default_of_the_job_settings(capsys, monkeypatch):
    """Every setting with a default to show has it in its help, written as in a command line."""
    from jaxunlearn.runner import JobConfig

    monkeypatch.setenv("COLUMNS", "400")
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = capsys.readouterr().out
    segments = re.split(r"\n\s{2}(?=--)", text)
    lines = {seg.split()[0]: " ".join(seg.split()) for seg in segments if seg.startswith("--")}
    shown = 0
    for f in dataclasses.fields(JobConfig):
        value = f.default
        if value is None or isinstance(value, bool) or value is dataclasses.MISSING:
            continue
        written = ",".join(value) if isinstance(value, tuple) else f"{value:g}" if isinstance(value, float) else value
        flag = "--" + f.name.replace("_", "-")
        assert f"(default {written}" in lines[flag], (flag, lines[flag])
        shown += 1
    assert shown > 10  # the loop saw the settings
    assert "--config" in lines and "default: None" not in text


def test_methods_lists_every_registered_method(capsys):
    assert cli.main(["methods"]) == 0
    out = capsys.readouterr().out
    listed = {line.split()[0] for line in out.splitlines() if line and not line[0].isspace()}
    assert listed == set(methods.METHODS)


def test_unknown_method_suggests_a_close_name(tmp_path, capsys):
    status = cli.main(["run", *TINY, "--methods", "ft,sharp_minmx", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("jaxunlearn: error: unknown method 'sharp_minmx'. Did you mean 'sharp_minmax'")
    assert err.count("\n") == 1


def test_method_variants_run_side_by_side_with_their_own_options(tmp_path):
    """``ft`` and ``ft@e3`` in one job: separate entries, checkpoints and options; shared pretraining/Retrain."""
    out = str(tmp_path / "o")
    args = ["run", *TINY, "--methods", "ft,ft@e3", "--option", "ft@e3.epochs=3", "--out", out]
    assert cli.main(args) == 0
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    _check_contract(results, ("ft", "ft@e3"))
    assert results["settings"]["method_options"] == {"ft@e3": {"epochs": 3}}
    ckpt = os.path.join(out, "checkpoints", "seed0", "pretrain-sgd_unlearn-sgd")
    assert os.listdir(os.path.join(ckpt, "ft")) == ["1"]  # --unlearn-epochs 1
    assert os.listdir(os.path.join(ckpt, "ft@e3")) == ["3"]  # the variant's own option


def test_retrain_receives_its_method_options(tmp_path):
    """``--option retrain.KEY=V`` reaches Retrain's context (and only Retrain's), seen by the job's ``unlearn_fn``."""
    from jaxunlearn import engine, runner

    seen = {}

    def spy(method, ctx, **kw):  # records the options, returns the original model unchanged
        seen[method] = dict(ctx.options)
        return engine.RunResult(ctx.params, ctx.model_state, history=[], seconds=1.0)

    cfg = _config([*TINY, "--methods", "ft", "--option", "retrain.init_seed=7", "--out", str(tmp_path / "o")])
    runner.run_job(cfg, unlearn_fn=spy)
    assert seen == {"retrain": {"init_seed": 7}, "ft": {}}


def test_method_variant_options_are_checked_and_tags_may_hold_dots(tmp_path, capsys):
    assert cli.parse_method_options(["sharp_minmax@f0.3.fraction=0.3"]) == {"sharp_minmax@f0.3": {"fraction": 0.3}}
    bad = ["run", *TINY, "--methods", "ft@x", "--option", "ft@x.fractoin=1", "--out", str(tmp_path / "o")]
    assert cli.main(bad) == 2
    assert "ft@x has no option(s) ['fractoin']" in capsys.readouterr().err
    assert cli.main(["run", *TINY, "--methods", "ft@a/b", "--out", str(tmp_path / "p")]) == 2
    assert "bad method variant 'ft@a/b'" in capsys.readouterr().err
    # a variant's options need the variant in --methods (a typo in the tag would otherwise be ignored)
    typo = ["run", *TINY, "--methods", "ft,ft@e3", "--option", "ft@E3.epochs=3", "--out", str(tmp_path / "q")]
    assert cli.main(typo) == 2
    assert "the variant ft@E3 is not in --methods (did you mean ft@e3?)" in capsys.readouterr().err
    # an option without a key reads the tag's last part as the key: said plainly
    with pytest.raises(ValueError, match="reads as method 'sharp_minmax@f0', option '3'"):
        cli.parse_method_options(["sharp_minmax@f0.3=0.3"])
    # Retrain is the job's reference: no variants of it
    assert cli.main(["run", *TINY, "--methods", "ft,retrain@x", "--out", str(tmp_path / "r")]) == 2
    assert "Retrain is the job's reference" in capsys.readouterr().err


@pytest.mark.slow  # a subprocess
def test_console_user_error_is_one_line_without_traceback(tmp_path):
    """The real entry point in a fresh interpreter: exit status 2 and a single stderr line."""
    proc = subprocess.run(
        [sys.executable, "-m", "jaxunlearn.cli", "run", "--methods", "neggrd", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == ["jaxunlearn: error: unknown method 'neggrd'. Did you mean 'neggrad'? Known methods: "
                     + ", ".join(sorted(methods.METHODS)) + " (and variants NAME@TAG of each)."]  # fmt: skip


@pytest.mark.slow  # a subprocess
def test_devices_flag_runs_data_parallel_on_cpu_cores_without_xla_flags(tmp_path, run_dir):
    """``--devices 2`` in a fresh interpreter (no XLA_FLAGS): the command exposes two CPU devices itself,
    runs data-parallel, and gets the one-device run's numbers up to float summation order."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = tmp_path / "dp"
    proc = subprocess.run(
        [sys.executable, "-m", "jaxunlearn.cli", "run", *TINY, "--methods", "ft,neggrad", "--devices", "2",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((out / "results.json").read_text())
    one = json.loads(open(os.path.join(run_dir, "results.json")).read())
    assert two["settings"]["devices"] == 2
    for name in ("original", "retrain", "ft", "neggrad"):
        for key in ("forget_acc", "retain_acc", "test_acc"):
            assert two["methods"][name][key] == pytest.approx(one["methods"][name][key], abs=0.03), (name, key)


def test_population_below_two_is_a_one_line_error(tmp_path, capsys):
    status = cli.main(["run", *TINY, "--methods", "ft", "--population", "1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert status == 2
    assert err == (
        "jaxunlearn: error: --population must be an integer >= 2 (a population compares distributions of models), "
        "got 1.\n"
    )
    assert not os.path.exists(tmp_path / "o")  # refused before any work


def test_population_flags_are_generated_from_the_job_settings():
    args = cli.build_parser().parse_args(["run", "--population", "64", "--population-chunk", "8"])
    assert (args.population, args.population_chunk) == (64, 8)
    assert cli._job_config(args).population == 64


def test_the_sharpness_family_and_the_reference_preset_run_from_the_command_line(tmp_path, capsys):
    """`--unlearn-optimizer looksam,gsam,wa` gives one variant each; `--preset reference` is recorded."""
    out = tmp_path / "fam"
    argv = ["run", *TINY, "--methods", "ft", "--out", str(out), "--preset", "reference"]
    argv[argv.index("--unlearn-optimizer") + 1] = "looksam,gsam,wa"
    assert cli.main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert sorted(res["variants"]) == [f"pretrain-sgd_unlearn-{k}" for k in ("gsam", "looksam", "wa")]
    assert res["settings"]["preset"] == "reference"
    for v in res["variants"].values():
        assert 0.0 <= v["methods"]["ft"]["forget_acc"] <= 1.0 and v["methods"]["ft"]["diverged"] is None


def test_dataset_facts_runs_the_language_model_job_with_the_flags_it_takes(tmp_path, monkeypatch, capsys):
    """`run --dataset facts` hands the flags that apply to jaxunlearn.lm_job.run (under its names) and refuses the
    others by name, before anything trains."""
    from jaxunlearn import lm_job

    seen = {}
    monkeypatch.setattr(lm_job, "run", lambda kw: seen.update(kw) or {"methods": {}})
    monkeypatch.setattr(lm_job, "table", lambda res: "TABLE")
    out = str(tmp_path / "lm")
    argv = ["run", "--dataset", "facts", "--model", "gpt", "--methods", "retrain,npo,rmu", "--unlearn-optimizer",
            "sgd,sam", "--seeds", "3", "--forget-size", "0.1", "--option", "npo.beta=0.2", "--quiet",
            "--out", out]  # fmt: skip
    assert cli.main(argv) == 0
    assert seen == {"methods": ("npo", "rmu"), "optimizers": ("sgd", "sam"), "seeds": 3, "forget": 0.1,
                    "method_options": {"npo": {"beta": 0.2}}, "progress": False, "out": out}  # fmt: skip
    assert "TABLE" in capsys.readouterr().out
    for extra, says in (
        (["--pretrain", "sam"], "--pretrain does not apply to --dataset facts"),
        (["--model", "cnn"], "use --model gpt"),
        (["--forget-size", "20"], "fraction of people to forget"),
        (["--resume"], "--resume needs --out"),
        (["--resume", "--out", str(tmp_path / "misspelled")], "does not exist"),
    ):
        assert cli.main(["run", "--dataset", "facts", *extra]) == 2
        assert says in capsys.readouterr().err
    assert not (tmp_path / "misspelled").exists()
    # --overwrite reaches the LM job (a non-empty --out without a run needs it there too)
    assert cli.main([*argv, "--overwrite"]) == 0 and seen["overwrite"] is True


def test_show_names_the_command_that_continues_an_interrupted_language_model_run(tmp_path, capsys):
    """An LM job's record says it is one, so the command printed to continue it is `run --dataset facts ...` with
    the options that differ from the LM job's defaults (``...`` where a setting has no option)."""
    from jaxunlearn import lm_job, record

    cfg = lm_job.LMJobConfig(methods=("npo",), seeds=3, unlearn_lr=0.01, out=str(tmp_path / "a"))
    record.Progress(cfg.out, cfg.resume_settings()).record("0/pretrain", {"epochs": 2})
    assert cli.resume_command(cfg.out) == (
        f"jaxunlearn run --dataset facts --methods npo --seeds 3 --unlearn-lr 0.01 --out {cfg.out} --resume"
    )
    assert cli.main(["show", cfg.out]) == 1 and "with: jaxunlearn run --dataset facts" in capsys.readouterr().out
    wide = lm_job.LMJobConfig(dim=32, out=str(tmp_path / "b"))  # the width has no command-line option
    record.Progress(wide.out, wide.resume_settings())
    assert cli.resume_command(wide.out).endswith(f"--dataset facts ... --out {wide.out} --resume")
