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
    assert "--resume" in capsys.readouterr().err
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
