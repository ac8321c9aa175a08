"""Reliability of a ``jaxunlearn run``: the divergence guard, resuming after an interruption, reproducibility.

* A method driven to non-finite values (gradient ascent with a huge learning rate) is stopped, its last
  finite parameters are kept, the report says so, and the other methods of the run finish normally.
* A run interrupted in the middle of a method (in-process, deterministically) or killed with SIGKILL
  (a real ``python -m jaxunlearn.cli`` process) and continued with ``--resume`` ends with exactly the
  numbers of an uninterrupted run (everything but wall-clock times).
* The same seed gives the same numbers.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from jaxunlearn import cli, engine, methods, report

TINY = ["--max-train", "200", "--max-test", "100", "--model", "mlp", "--width", "16"]
TINY += ["--pretrain-epochs", "2", "--unlearn-epochs", "1", "--pretrain", "sgd", "--unlearn-optimizer", "sgd"]
TINY += ["--no-figures", "--quiet"]
#: ft runs 4 epochs (checkpointed after each), so a run can be stopped in the middle of it.
RESUME_ARGS = ["run", *TINY, "--methods", "neggrad,ft", "--option", "ft.epochs=4", "--checkpoint-every", "1"]
VARIANT = "pretrain-sgd_unlearn-sgd"
#: values that depend on wall-clock time or on the output directory
_TIMING = {"seconds", "speedup", "compile_seconds"}
_RUN_LOCAL = {"out", "resume", "seconds", "checkpoint_every", "checkpoint_seconds"}


def _numbers(results: dict) -> dict:
    """The results without wall-clock times and run-local settings (what must be reproducible)."""

    def strip(obj, drop=_TIMING):
        if isinstance(obj, dict):
            return {k: strip(v, _RUN_LOCAL if k == "settings" else _TIMING) for k, v in obj.items() if k not in drop}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    return strip(results)


def _read(out: str) -> dict:
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


def _progress(out: str) -> dict:
    try:
        with open(os.path.join(out, "progress.json")) as f:
            return json.load(f)["entries"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return {}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of RESUME_ARGS."""
    out = str(tmp_path_factory.mktemp("reference") / "run")
    assert cli.main([*RESUME_ARGS, "--out", out]) == 0
    return _read(out)


def test_divergence_is_guarded_reported_and_the_run_goes_on(tmp_path):
    out = str(tmp_path / "run")
    argv = ["run", *TINY, "--methods", "ga,ft", "--option", "ga.lr_scale=1e30", "--option", "ga.epochs=3"]
    assert cli.main([*argv, "--out", out]) == 0
    results = report.read_results(out)  # valid JSON that matches the contract
    ga, ft = results["methods"]["ga"], results["methods"]["ft"]
    assert isinstance(ga["diverged"], dict)
    assert 1 <= ga["diverged"]["epoch"] <= 3 and "non-finite" in ga["diverged"]["reason"]
    assert ft["diverged"] is None and results["methods"]["original"]["diverged"] is None
    for name, entry in results["methods"].items():
        for key in report.REQUIRED_KEYS:
            assert isinstance(entry[key], float) and math.isfinite(entry[key]), (name, key, entry[key])
    # the method after the diverged one ran to its end
    with open(os.path.join(out, "progress.json")) as f:
        assert set(json.load(f)["entries"]) == {"0/sgd/original", "0/sgd/retrain", "0/sgd/sgd/ga", "0/sgd/sgd/ft"}
    with open(os.path.join(out, "results.json")) as f:
        assert "NaN" not in f.read()
    # the diverged entry's numbers (the last finite parameters) are not shown as results
    with open(os.path.join(out, "table.md")) as f:
        table = f.read()
    assert "| ga (diverged) | diverged | diverged | diverged | diverged | diverged |" in table
    assert "diverged: the method's training hit non-finite values" in table


def test_divergence_guard_keeps_finite_parameters():
    """The engine's guard itself: gradient ascent with a huge learning rate stops and returns finite params."""
    import jax
    import numpy as np

    from jaxunlearn import data, models

    ds = data.load("digits", max_train=200)
    apply_fn, params, state = models.split_model(
        models.build("mlp", num_classes=10, input_shape=ds.input_shape, hidden=(16,))
    )
    dd = engine.DeviceData.from_numpy(ds.x_train, ds.y_train)
    forget = np.arange(20)
    ctx = methods.Context(
        apply_fn, params, state, dd.x, dd.y, np.arange(20, len(ds.y_train)), forget, 10,
        options={"lr_scale": 1e30, "epochs": 4}, batch_size=16,
    )  # fmt: skip
    res = methods.unlearn("ga", ctx, progress=False)
    assert res.diverged is not None and res.diverged["epoch"] <= 4
    assert all(bool(np.isfinite(np.asarray(a)).all()) for a in jax.tree.leaves(res.params))
    assert res.history[-1].get("diverged") is True


def _interrupt_during(monkeypatch, method: str, after_epoch: int, calls: list):
    """Make ``engine.run`` raise KeyboardInterrupt at the end of ``after_epoch`` of ``method`` (before that
    epoch's checkpoint is written), and record ``(desc, resumed_from)`` of every run."""
    real = getattr(engine.run, "real", engine.run)

    def run(plan, *args, **kwargs):
        if after_epoch and kwargs.get("desc") == method:

            def stop(epoch, params, model_state):
                if epoch == after_epoch:
                    raise KeyboardInterrupt

            kwargs["on_epoch_end"] = stop
        res = real(plan, *args, **kwargs)
        calls.append((kwargs.get("desc"), res.resumed_from))
        return res

    run.real = real
    from jaxunlearn.engine import loop

    monkeypatch.setattr(engine, "run", run)  # methods.unlearn's runs
    monkeypatch.setattr(loop, "run", run)  # engine.train's (pretraining, Retrain)


def test_interrupted_method_resumes_to_the_same_numbers(tmp_path, monkeypatch, reference, capsys):
    out = str(tmp_path / "run")
    calls: list = []
    _interrupt_during(monkeypatch, "ft", 3, calls)
    assert cli.main([*RESUME_ARGS, "--out", out]) == 130
    err = capsys.readouterr().err
    assert err.startswith("jaxunlearn: interrupted; continue with: jaxunlearn run ") and err.count("\n") == 1
    assert "--methods neggrad,ft --option ft.epochs=4" in err and f"--out {out} --resume" in err
    done = _progress(out)
    assert "0/sgd/sgd/neggrad" in done and "0/sgd/sgd/ft" not in done  # stopped inside ft
    steps = sorted(int(d) for d in os.listdir(os.path.join(out, "checkpoints", "seed0", VARIANT, "ft")) if d.isdigit())
    assert steps[-1] == 2  # epochs 1 and 2 are checkpointed, epoch 3 was lost
    assert not os.path.exists(os.path.join(out, "results.json"))

    calls.clear()
    _interrupt_during(monkeypatch, "ft", 0, calls)
    assert cli.main([*RESUME_ARGS, "--out", out, "--resume"]) == 0
    by_desc = dict(calls)
    assert by_desc["ft"] == 2  # ft continued after its last checkpoint
    assert by_desc["pretrain (sgd)"] == 2  # the original model was restored, not retrained
    assert "neggrad" not in by_desc and "retrain" not in by_desc  # finished entries are skipped (progress.json)
    assert _numbers(_read(out)) == _numbers(reference)


def _wait_for_unfinished_checkpoint(proc, out: str, method: str, timeout: float) -> bool:
    """Poll until ``method`` has an epoch checkpoint but no finished entry; False if the run ended first."""
    ckpt = os.path.join(out, "checkpoints", "seed0", VARIANT, method)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if os.path.isdir(ckpt) and any(d.isdigit() for d in os.listdir(ckpt)):
            return f"0/sgd/sgd/{method}" not in _progress(out)
        time.sleep(0.02)
    return False


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, reference):
    out = str(tmp_path / "run")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jaxunlearn.cli", *RESUME_ARGS, "--out", out],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        mid_method = _wait_for_unfinished_checkpoint(proc, out, "ft", timeout=240)
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert mid_method, "the run was not caught in the middle of ft"
    assert "0/sgd/sgd/neggrad" in _progress(out)
    assert not os.path.exists(os.path.join(out, "results.json"))
    # progress.json was never half-written
    with open(os.path.join(out, "progress.json")) as f:
        json.load(f)

    assert cli.main([*RESUME_ARGS, "--out", out, "--resume"]) == 0
    assert _numbers(_read(out)) == _numbers(reference)
    # resuming a finished run is a no-op that rewrites the same results
    assert cli.main([*RESUME_ARGS, "--out", out, "--resume"]) == 0
    assert _numbers(_read(out)) == _numbers(reference)


def _checkpointed_epochs(out: str, *parts: str) -> list[int]:
    where = os.path.join(out, "checkpoints", "seed0", *parts)
    return sorted(int(d) for d in os.listdir(where) if d.isdigit())


def test_time_rule_checkpoints_only_at_the_end_of_short_runs(tmp_path, reference):
    """With the time rule (here an hour, so the clock never fires) a run saves only the final epoch of each
    training run (one Orbax save instead of one per epoch), gives the numbers of the run checkpointed after
    every epoch, and the schedule is not a setting a --resume must match."""
    out = str(tmp_path / "run")
    assert RESUME_ARGS[-2:] == ["--checkpoint-every", "1"]
    argv = [*RESUME_ARGS[:-2], "--checkpoint-seconds", "3600"]
    assert cli.main([*argv, "--out", out]) == 0
    assert _checkpointed_epochs(out, VARIANT, "ft") == [4]
    assert _checkpointed_epochs(out, "pretrain-sgd", "original") == [2]
    results = _read(out)
    assert _numbers(results) == _numbers(reference)
    # every entry says how much of its wall time went to tracing and compiling
    for name, entry in results["methods"].items():
        assert 0 <= entry["compile_seconds"] <= entry["seconds"], name
    # the schedule can change on --resume (here to every epoch); a finished run stays as it was
    assert cli.main([*argv[:-2], "--out", out, "--resume", "--checkpoint-seconds", "0"]) == 0
    assert _numbers(_read(out)) == _numbers(reference)


def test_same_seed_gives_the_same_numbers(tmp_path, reference):
    out = str(tmp_path / "again")
    assert cli.main([*RESUME_ARGS, "--out", out]) == 0
    again = _read(out)
    assert _numbers(again) == _numbers(reference)
    assert again["methods"]["ft"]["seconds"] >= 0  # timings are present, just not compared


# ------------------------------------------------------------------ never overwrite, never leave a stub
# (the issue "Reliability: never overwrite, check everything before training, no crash on any accepted input")

QUICK = ["--max-train", "200", "--pretrain-epochs", "1", "--unlearn-epochs", "1", "--methods", "ft", "--model", "mlp"]
QUICK += ["--width", "8", "--pretrain", "sgd", "--unlearn-optimizer", "sgd", "--no-figures", "--quiet"]


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    """Two jobs without --out in the same second (the clock is frozen): each gets a folder of its own."""
    import datetime as dt

    from jaxunlearn import runner

    class Frozen(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 1, 2, 3, 4, 5)

    monkeypatch.setattr(runner._dt, "datetime", Frozen)
    monkeypatch.chdir(tmp_path)
    first, second = runner._new_run_dir(), runner._new_run_dir()
    assert (first, second) == (os.path.join("runs", "20260102-030405"), os.path.join("runs", "20260102-030405-2"))
    # a job without --out takes the next free one (its own folder), however far it gets
    cfg = runner.JobConfig(max_train=200, batch_size=5000, methods=("ft",), progress=False)
    with pytest.raises(ValueError, match="--batch-size 5000"):
        runner.run_job(cfg)
    assert cfg.out == os.path.join("runs", "20260102-030405-3")
    assert not os.path.exists(cfg.out)  # it failed before any work: its folder is gone again
    assert sorted(os.listdir("runs")) == ["20260102-030405", "20260102-030405-2"]  # the others' folders untouched


def test_a_non_empty_out_without_a_run_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.json").write_text('{"kept": true}')
    assert cli.main(["run", *QUICK, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not empty (results.json)" in err and "--overwrite" in err
    assert (out / "results.json").read_text() == '{"kept": true}'  # untouched
    # with --overwrite the job runs there (its results.json replaces the kept one)
    from jaxunlearn import runner

    runner.Progress(out, {"rho": 0.1}, overwrite=True)
    assert (out / "progress.json").exists() and (out / "results.json").read_text() == '{"kept": true}'


def test_theory_out_refuses_a_non_empty_folder_without_overwrite(tmp_path, capsys, monkeypatch):
    from jaxunlearn import theory

    out = tmp_path / "theory"
    out.mkdir()
    (out / "theory.json").write_text("{}")  # an earlier run
    argv = ["theory", "--out", str(out), "--steps", "2", "--quiet"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not empty (theory.json)" in err and "--overwrite" in err
    assert (out / "theory.json").read_text() == "{}"
    calls = []
    monkeypatch.setattr(theory, "run_theory", lambda **kw: calls.append(kw) or {"summary": "ok"})
    assert cli.main([*argv, "--overwrite"]) == 0 and calls[0]["overwrite"] is True


def test_a_failure_before_any_real_work_leaves_the_folder_as_it_was(tmp_path, monkeypatch, capsys):
    """A job that fails in pretraining (nothing finished) removes its progress.json, settings.json and
    checkpoints, so the corrected command needs neither --resume nor another --out."""
    from jaxunlearn import runner

    out = tmp_path / "run"
    out.mkdir()

    def broken(job, sd, *a):
        os.makedirs(job.progress.checkpoint_dir("seed0", "pretrain-sgd", "original", "1"))  # a partial checkpoint
        raise FloatingPointError("boom in pretraining")

    monkeypatch.setattr(runner, "_pretrain", broken)
    with pytest.raises(FloatingPointError):
        runner.run_job(runner.JobConfig(out=str(out), max_train=200, methods=("ft",), progress=False))
    assert os.listdir(out) == []  # as it was: empty


@pytest.mark.slow
def test_a_failure_after_a_finished_entry_keeps_the_run_for_resume(tmp_path):
    from jaxunlearn import runner

    out = tmp_path / "run"

    def failing_unlearn(method, ctx, **kw):
        raise FloatingPointError("boom in " + method)

    cfg = dict(max_train=200, pretrain_epochs=1, model="mlp", width=8, pretrain=("sgd",), methods=("ft",),
               progress=False, figures=False)  # fmt: skip
    with pytest.raises(FloatingPointError, match="boom in retrain"):
        runner.run_job(runner.JobConfig(out=str(out), **cfg), unlearn_fn=failing_unlearn)
    assert set(runner.Progress.read(out)) == {"0/sgd/original"}  # the original model is real work: kept
    assert runner.Progress.has_checkpoints(out)


def test_resume_refuses_an_empty_or_missing_folder_in_one_line(tmp_path, capsys):
    for out in (tmp_path, tmp_path / "rnu"):
        assert cli.main(["run", *QUICK, "--out", str(out), "--resume"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("jaxunlearn: error: --resume: ")
    assert os.listdir(tmp_path) == [] and not (tmp_path / "rnu").exists()
    # the API warns instead (a caller that always passes resume=True starts the run)
    from jaxunlearn import runner

    with pytest.warns(UserWarning, match="holds no run"):
        with pytest.raises(ValueError, match="--batch-size"):
            runner.run_job(runner.JobConfig(out=str(tmp_path / "x"), resume=True, max_train=200, batch_size=5000))


def _run_with_checkpoints(tmp_path):
    from jaxunlearn import runner
    from jaxunlearn.checkpoint import Checkpointer

    out = str(tmp_path / "run")
    rec = runner.Progress(out, {"rho": 0.1})
    rec.record("0/sgd/original", {"forget_acc": 1.0})
    ckpt = Checkpointer(rec.checkpoint_dir("seed0", "pretrain-sgd", "original"))
    import jax.numpy as jnp

    ckpt.save(1, {"w": jnp.ones(2)})
    ckpt.close()
    return out


def test_damaged_progress_advice_keeps_the_checkpoints(tmp_path):
    from jaxunlearn import runner

    out = _run_with_checkpoints(tmp_path)
    path = os.path.join(out, "progress.json")
    with open(path, "w") as f:
        f.write('{"entries": ')  # damaged
    with pytest.raises(ValueError) as info:
        runner.Progress(out, {"rho": 0.1}, resume=True)
    msg = str(info.value)
    assert "is damaged" in msg and "checkpoints are intact" in msg and f"mv {path} {path}.damaged" in msg
    assert "delete" not in msg  # nothing to throw away
    os.rename(path, path + ".damaged")  # the advice, followed
    rec = runner.Progress(out, {"rho": 0.1}, resume=True)
    assert rec.done == {} and runner.Progress.has_checkpoints(out)  # entries are redone from the checkpoints
    with pytest.raises(ValueError, match="different settings"):  # settings.json still guards the settings
        os.remove(path)
        runner.Progress(out, {"rho": 0.3}, resume=True)


def test_resume_removes_stale_temporary_files(tmp_path):
    from jaxunlearn import runner

    out = _run_with_checkpoints(tmp_path)
    variant = os.path.join(out, "pretrain-sgd_unlearn-sgd")
    os.makedirs(variant)
    stale = [os.path.join(out, ".tmp-results.tmp"), os.path.join(variant, ".tmp-x.tmp")]
    stale.append(os.path.join(out, "figures", ".tmp-fig-abc.png"))
    os.makedirs(os.path.dirname(stale[-1]))
    for p in stale:
        with open(p, "w") as f:
            f.write("half a write")
    runner.Progress(out, {"rho": 0.1}, resume=True)
    assert not any(os.path.exists(p) for p in stale)


_TRUNCATED = r"""
import os, sys
import jax.numpy as jnp
from jaxunlearn.checkpoint import Checkpointer, CheckpointError
d = sys.argv[1]
c = Checkpointer(d)
c.save(1, {"w": jnp.ones((64, 8)), "v": [jnp.ones(8) for _ in range(12)], "epoch": 1})
c.close()
with open(os.path.join(d, "1", "default", "manifest.ocdbt"), "r+b") as f:
    f.truncate(5)
try:
    Checkpointer(d).restore_latest({"w": jnp.zeros((64, 8)), "v": [jnp.zeros(8) for _ in range(12)], "epoch": 0})
except CheckpointError as exc:
    print("jaxunlearn: error:", " ".join(str(exc).split()), file=sys.stderr)
"""


def test_truncated_checkpoint_gives_one_clean_line(tmp_path):
    """A truncated Orbax checkpoint: the one line saying what to do, without the 50-110 lines of asyncio
    and TensorStore tracebacks its background tasks print."""
    proc = subprocess.run([sys.executable, "-c", _TRUNCATED, str(tmp_path / "ck")], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("jaxunlearn: error: cannot restore the checkpoint") and "damaged" in lines[0]
    assert "Traceback" not in proc.stderr and "asyncio" not in proc.stderr


_INTERRUPTED_SAVE = r"""
import os, signal, sys, threading
import jax.numpy as jnp
from jaxunlearn import cli
from jaxunlearn.checkpoint import Checkpointer
cli.watch_interrupts(grace=5.0)  # as the command line does: a Ctrl-C stuck in a native wait still ends it
c = Checkpointer(sys.argv[1])
state = {"w": jnp.ones((1500, 1500)), "v": [jnp.ones((400, 400)) for _ in range(16)]}
c.save(0, state)
threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
try:  # save until the interrupt arrives (however fast the saves are), so it lands during one
    for step in range(1, 10**6):
        c.save(step, state)
except KeyboardInterrupt:  # what the command line does
    cli.say_interrupted()
    cli.exit_interrupted()
"""


def test_ctrl_c_during_a_save_prints_only_the_clean_line(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _INTERRUPTED_SAVE, str(tmp_path / "ck")], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.stderr.strip().splitlines() == [
        "jaxunlearn: interrupted; rerun the same command with --resume to continue."
    ], proc.stderr[-3000:]
    # exit_interrupted: Orbax's threads of the interrupted save do not hold it, and the watchdog ends it when the
    # interrupt never surfaces in the main thread
    assert proc.returncode == 130


def test_show_on_an_interrupted_run_says_incomplete_and_how_to_resume(tmp_path, capsys):
    from jaxunlearn import runner

    out = str(tmp_path / "run")
    cfg = runner.JobConfig(methods=("ft", "neggrad"), rho=0.3, max_train=200).validate()
    runner.Progress(out, cfg.resume_settings()).record("0/sgd/original", {"forget_acc": 1.0})
    assert cli.main(["show", out]) == 1
    printed = capsys.readouterr().out
    assert "incomplete run (1 entries finished, no results.json yet)" in printed
    assert f"jaxunlearn run --max-train 200 --rho 0.3 --methods ft,neggrad --out {out} --resume" in printed


def test_more_devices_than_cores_is_refused_before_jax_starts(tmp_path):
    """``--devices 64`` on a small CPU host (a fresh interpreter): one line, exit 2, not an XLA abort."""
    proc = subprocess.run(
        [sys.executable, "-m", "jaxunlearn.cli", "run", *QUICK, "--devices", "4096", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "--devices 4096" in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_collapsed_and_diverged_methods_are_marked_in_a_run(tmp_path, monkeypatch):
    """A method that returns a destroyed model (all weights zero) is marked collapsed; one whose run diverged
    (returning the original model, as the guard does) has its cells shown as "diverged" in table.md, is left out
    of the bar chart, and the figures drawn for it say so."""
    import jax

    from jaxunlearn import metrics, runner

    def unlearn_fn(method, ctx, **kw):
        if method == "retrain":
            return methods.unlearn(method, ctx, **kw)
        params = jax.tree.map(lambda a: a * 0, ctx.params)
        diverged = {"epoch": 1, "reason": "non-finite loss or parameters"} if method == "neggrad" else None
        return engine.RunResult(ctx.params if diverged else params, ctx.model_state, [], 1.0, diverged=diverged)

    from jaxunlearn import curvature

    titles = []
    monkeypatch.setattr(metrics, "plot_features", lambda *a, panel_titles, **kw: titles.append(panel_titles))
    monkeypatch.setattr(curvature, "top_eigenvalue", lambda *a: 0.0)  # the figures' costly parts, not tested here
    monkeypatch.setattr(curvature, "hessian_trace", lambda *a: 0.0)
    cfg = runner.JobConfig(out=str(tmp_path / "run"), max_train=200, pretrain_epochs=6, pretrain_lr=0.3,
                           batch_size=16, unlearn_epochs=1, model="mlp", width=16, pretrain=("sgd",),
                           unlearn_optimizer=("sgd",), methods=("ft", "neggrad"), landscape_grid=3,
                           progress=False)  # fmt: skip
    results = runner.run_job(cfg, unlearn_fn=unlearn_fn)
    ms = results["methods"]
    assert [ms[k]["collapsed"] for k in ("original", "retrain", "ft", "neggrad")] == [False, False, True, False]
    assert ms["original"]["retain_acc"] - ms["ft"]["retain_acc"] > runner.COLLAPSE_DROP
    assert ms["neggrad"]["diverged"]["epoch"] == 1
    assert _read(cfg.out)["methods"]["ft"]["collapsed"] is True
    with open(os.path.join(cfg.out, "table.md")) as f:
        table = f.read()
    assert "| ft † |" in table and "| neggrad (diverged) | diverged | diverged |" in table
    assert "† collapsed:" in table
    # the figures drawn for the diverged method say so (they show the parameters the guard kept)
    assert titles == [("Original model", "After neggrad (diverged)")]
    with open(os.path.join(cfg.out, "figures", "analysis.json")) as f:
        assert "neggrad (diverged)" in json.load(f)["forget_loss_curvature"]
