"""Bad inputs at every public boundary: each raises the right error with a message saying what is wrong.

Two tables: API calls (error type + message fragments) and ``jaxunlearn`` command lines (exit status 2,
one ``jaxunlearn: error:`` line naming the problem, no traceback). The command-line cases all fail
before any training starts.
"""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from jaxunlearn import cli, data, engine, methods, models, report, runner, selection, sharpness, transforms
from jaxunlearn.checkpoint import Checkpointer, CheckpointError
from jaxunlearn.plan import OptimConfig, Phase, Plan, supervised_loss

# --------------------------------------------------------------------------------------------- helpers


def _ds(**over):
    x = np.zeros((4, 2, 2, 1), np.float32)
    y = np.array([0, 1, 0, 1])
    kw = dict(x_train=x, y_train=y, x_val=x[:0], y_val=y[:0], x_test=x[:2], y_test=y[:2], num_classes=2)
    kw.update(over)
    return data.Dataset("toy", **kw)


def _nan_x():
    x = np.zeros((4, 2, 2, 1), np.float32)
    x[1, 0, 0, 0] = np.nan
    return x


def _inf_test():
    x = np.zeros((2, 2, 2, 1), np.float32)
    x[0, 1, 1, 0] = np.inf
    return x


def _tiny_engine_run(retain, forget, uses=("retain",)):
    apply_fn, params, state = models.split_model(models.build("mlp", num_classes=2, input_shape=(3,), hidden=(4,)))
    dd = engine.DeviceData.from_numpy(np.zeros((10, 3)), np.zeros(10, np.int32))
    plan = Plan(phases=(Phase("p", supervised_loss, uses=uses),), optimizer=OptimConfig(), epochs=1, batch_size=4)
    return engine.run(plan, apply_fn, params, state, dd, retain_idx=retain, forget_idx=forget, progress=False)


def _ckpt(tmp_path, template, *, corrupt=False):
    d = tmp_path / "ck"
    c = Checkpointer(d)
    c.save(1, {"params": {"w": jnp.ones((3, 2))}, "epoch": 1})
    c.close()
    if corrupt:  # overwrite every data file with garbage
        for root, _, files in os.walk(d / "1"):
            for f in files:
                if not f.startswith("_") and "commit" not in f:
                    with open(os.path.join(root, f), "wb") as fh:
                        fh.write(b"garbage")
    return Checkpointer(d).restore_latest(template)


def _ckpt_on_file(tmp_path):
    p = tmp_path / "afile"
    p.write_text("x")
    return Checkpointer(p)


def _results(acc):
    entry = {"forget_acc": acc, "retain_acc": 1.0, "test_acc": 0.9, "mia": 0.1, "tow": 1.0, "seconds": 1.0}
    return report.validate_results({"settings": {}, "methods": {"retrain": entry}})


def _job(**kw):
    return runner.JobConfig(**kw).validate()


def _empty_fashion(tmp_path):
    return data.load("fashion_mnist", data_dir=str(tmp_path))


_GOOD_W = {"params": {"w": jnp.ones((3, 2))}, "epoch": 0}


def _context(**over):
    """``methods.toy_context()`` (3 classes, a 3-output model) rebuilt with ``over`` changed."""
    ctx = methods.toy_context()
    kw = dict(apply_fn=ctx.apply_fn, params=ctx.params, model_state=ctx.model_state, x=ctx.x, y=ctx.y,
              retain_idx=ctx.retain_idx, forget_idx=ctx.forget_idx, num_classes=3)  # fmt: skip
    kw.update(over)
    return methods.Context(**kw)


# (id, callable taking tmp_path, exception type, message fragments)
API_CASES = [
    (
        "dataset-length-mismatch",
        lambda t: _ds(y_train=np.array([0, 1, 0])),
        ValueError,
        ["4 examples", "y_train has 3"],
    ),
    ("dataset-label-out-of-range", lambda t: _ds(y_train=np.array([0, 1, 2, 1])), ValueError, ["outside [0, 2)"]),
    ("dataset-negative-label", lambda t: _ds(y_test=np.array([-1, 0])), ValueError, ["y_test", "outside [0, 2)"]),
    ("dataset-nan-input", lambda t: _ds(x_train=_nan_x()), ValueError, ["x_train", "NaN or inf"]),
    ("dataset-inf-input", lambda t: _ds(x_test=_inf_test()), ValueError, ["x_test", "NaN or inf"]),
    ("dataset-2d-labels", lambda t: _ds(y_train=np.zeros((4, 1), int)), ValueError, ["y_train must be 1-D"]),
    ("dataset-float-labels", lambda t: _ds(y_train=np.array([0.5, 1, 0, 1])), ValueError, ["integer class labels"]),
    ("dataset-shape-mismatch", lambda t: _ds(x_test=np.zeros((2, 3, 3, 1))), ValueError, ["x_test", "shape"]),
    ("load-unknown-dataset", lambda t: data.load("digts"), ValueError, ["unknown dataset", "'digits'"]),
    ("load-max-train-zero", lambda t: data.load("digits", max_train=0), ValueError, ["max_train", "positive"]),
    ("load-data-dir-without-files", _empty_fashion, FileNotFoundError, ["train-images-idx3-ubyte", "--data-dir"]),
    ("forget-larger-than-data", lambda t: data.select_forget(np.zeros(10), "random", 20), ValueError, ["exceeds"]),
    ("forget-fraction-above-1", lambda t: data.select_forget(np.zeros(10), "random", 1.5), ValueError, ["(0, 1)"]),
    ("forget-unknown-kind", lambda t: data.select_forget(np.zeros(10), "randm", 2), ValueError, ["'random'"]),
    (
        "forget-absent-class",
        lambda t: data.select_forget(np.zeros(10), "class", class_id=3),
        ValueError,
        ["class_id 3"],
    ),
    ("model-unknown", lambda t: models.build("cnnn", num_classes=2, input_shape=(8, 8, 1)), ValueError, ["'cnn'"]),
    ("model-bad-input-shape", lambda t: models.build("cnn", num_classes=2, input_shape=(8, 8)), ValueError, ["NHWC"]),
    ("method-unknown", lambda t: methods.get("sharp_minmx"), ValueError, ["unknown method", "'sharp_minmax'"]),
    (
        "method-unknown-option",
        lambda t: methods.resolve_options(methods.get("ft"), {"lr": 1}),
        ValueError,
        ["no option"],
    ),
    ("optimizer-unknown", lambda t: OptimConfig(name="adamm"), ValueError, ["optimizer", "'adam'"]),
    ("optimizer-rho-zero", lambda t: OptimConfig(rho=0.0), ValueError, ["rho", "> 0"]),
    ("sam-grad-rho-negative", lambda t: sharpness.value_and_sam_grad(lambda p, b: p, -0.1), ValueError, ["rho", "> 0"]),
    ("sam-transform-rho-zero", lambda t: transforms.sam(0.0), ValueError, ["rho"]),
    ("top-fraction-above-1", lambda t: selection.top_fraction({"a": jnp.ones(3)}, 1.5), ValueError, ["(0, 1]"]),
    ("top-fraction-zero", lambda t: selection.top_fraction({"a": jnp.ones(3)}, 0.0), ValueError, ["(0, 1]"]),
    ("engine-overlap", lambda t: _tiny_engine_run([0, 1, 2], [2, 3]), ValueError, ["overlap"]),
    (
        "engine-empty-forget",
        lambda t: _tiny_engine_run([0, 1], [], ("retain", "forget")),
        ValueError,
        ["forget set is empty"],
    ),
    ("engine-index-out-of-range", lambda t: _tiny_engine_run([0, 10], [1]), ValueError, ["outside [0, 10)"]),
    (
        "device-data-mismatch",
        lambda t: engine.DeviceData.from_numpy(np.zeros((3, 2)), np.zeros(2)),
        ValueError,
        ["same number"],
    ),
    (
        "checkpoint-mismatched-shape",
        lambda t: _ckpt(t, {"params": {"w": jnp.ones((4, 2))}, "epoch": 0}),
        CheckpointError,
        ["different model"],
    ),
    (
        "checkpoint-mismatched-tree",
        lambda t: _ckpt(t, {"params": {"v": jnp.ones((3, 2))}, "epoch": 0}),
        CheckpointError,
        ["different model"],
    ),
    (
        "checkpoint-mismatched-dtype",
        lambda t: _ckpt(t, {"params": {"w": jnp.ones((3, 2), jnp.int32)}, "epoch": 0}),
        CheckpointError,
        ["dtype"],
    ),
    ("checkpoint-corrupt", lambda t: _ckpt(t, _GOOD_W, corrupt=True), CheckpointError, ["damaged", "another --out"]),
    ("checkpoint-dir-is-file", _ckpt_on_file, CheckpointError, ["is a file"]),
    ("results-accuracy-percent", lambda t: _results(95.0), ValueError, ["outside [0, 1]"]),
    ("results-nan", lambda t: _results(float("nan")), ValueError, ["finite"]),
    ("job-rho-zero", lambda t: _job(rho=0.0), ValueError, ["--rho", "> 0"]),
    ("job-forget-size-fraction", lambda t: _job(forget_size=2.5), ValueError, ["--forget-size", "(0, 1)"]),
    ("job-unknown-method", lambda t: _job(methods=("ft", "ftt")), ValueError, ["'ft'"]),
    (
        "job-unknown-optimizer",
        lambda t: _job(unlearn_optimizer=("sgd", "sma")),
        ValueError,
        ["--unlearn-optimizer", "'sam'"],
    ),
    ("job-string-rho", lambda t: _job(rho="big"), ValueError, ["--rho", "finite number"]),
    (
        "job-option-type",
        lambda t: _job(method_options={"ga": {"lr_scale": "big"}}),
        ValueError,
        ["ga.lr_scale", "number"],
    ),
    ("job-duplicate-method", lambda t: _job(methods=("ft", "ft")), ValueError, ["more than once"]),
    # the API cases (each a raw JAX error or a silent acceptance before)
    (
        "sam-grad-lamb-nan",
        lambda t: sharpness.value_and_sam_grad(lambda p, b: p, 0.05, lamb=float("nan")),
        ValueError,
        ["lamb must be a finite number >= 0", "nan"],
    ),
    (
        "sam-grad-lamb-negative",
        lambda t: sharpness.value_and_sam_grad(lambda p, b: p, 0.05, lamb=-5),
        ValueError,
        ["lamb must be a finite number >= 0", "-5"],
    ),
    ("sam-grad-rho-string", lambda t: sharpness.value_and_sam_grad(lambda p, b: p, "0.05"), TypeError, ["'0.05'"]),
    ("sam-grad-rho-none", lambda t: sharpness.value_and_sam_grad(lambda p, b: p, None), TypeError, ["got None"]),
    ("top-fraction-string", lambda t: selection.top_fraction({"a": jnp.ones(3)}, "0.1"), TypeError, ["str '0.1'"]),
    ("context-num-classes-mismatch", lambda t: _context(num_classes=100), ValueError, ["num_classes=100", "(2, 3)"]),
    (
        "context-batch-larger-than-retain",
        lambda t: methods.unlearn("ft", _context(batch_size=10**6), progress=False),
        ValueError,
        ["batch_size 1000000", "retained examples"],
    ),
    (
        "ssd-empty-forget",
        lambda t: methods.unlearn("ssd", _context(forget_idx=np.array([], np.int64)), progress=False),
        ValueError,
        ["forget_idx is empty"],
    ),
    ("job-seed-overflow", lambda t: _job(seed=2**63), ValueError, ["--seed must be an integer <= 1000000000"]),
    ("job-empty-pretrain", lambda t: _job(pretrain=()), ValueError, ["--pretrain is empty"]),
    (
        "job-forget-class-without-class",
        lambda t: _job(forget_class=3),
        ValueError,
        ["applies only with --forget class"],
    ),
]


@pytest.mark.parametrize(("case", "fn", "exc", "fragments"), API_CASES, ids=[c[0] for c in API_CASES])
def test_api_rejects_bad_input(case, fn, exc, fragments, tmp_path):
    with pytest.raises(exc) as info:
        fn(tmp_path)
    msg = str(info.value)
    for frag in fragments:
        assert frag in msg, f"{case}: {frag!r} not in {msg!r}"


# ------------------------------------------------------------------------------------------ the CLI

TINY = ["--max-train", "200", "--pretrain-epochs", "1", "--unlearn-epochs", "1", "--methods", "ft"]
TINY += ["--pretrain", "sgd", "--unlearn-optimizer", "sgd", "--model", "mlp", "--width", "8", "--no-figures", "--quiet"]


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def _existing_run(tmp_path, *, same_settings, corrupt_ckpt=False):
    """A run directory as an interrupted run leaves it (progress.json, maybe a checkpoint)."""
    out = str(tmp_path / "run")
    argv = ["run", *TINY, "--out", out]
    args = cli.build_parser().parse_args(argv if same_settings else argv + ["--rho", "0.3"])
    cfg = cli._job_config(args).validate()
    runner.Progress(cfg.out, cfg.resume_settings(), resume=cfg.resume)
    if corrupt_ckpt:
        step = tmp_path / "run" / "checkpoints" / "seed0" / "pretrain-sgd" / "original" / "1"
        step.mkdir(parents=True)
        (step / "junk").write_text("not a checkpoint")
    return ["--out", out, "--resume"]


# (id, extra argv (list or function of tmp_path), message fragments). Base: `run TINY --out tmp/out`.
CLI_CASES = [
    ("unknown-method", ["--methods", "neggrd"], ["unknown method", "Did you mean 'neggrad'"]),
    ("empty-methods", ["--methods", ","], ["--methods is empty"]),
    ("unknown-dataset", ["--dataset", "digts"], ["--dataset", "'digits'"]),
    ("unknown-model", ["--model", "mpl"], ["--model", "'mlp'"]),
    ("unknown-pretrain", ["--pretrain", "sgdd"], ["--pretrain", "'sgd'"]),
    ("unknown-unlearn-optimizer", ["--unlearn-optimizer", "asm"], ["--unlearn-optimizer", "Did you mean"]),
    ("rho-zero", ["--rho", "0"], ["--rho must be a finite number > 0"]),
    ("rho-negative", ["--pretrain-rho", "-0.1"], ["--pretrain-rho must be a finite number > 0"]),
    ("rho-nan", ["--rho", "nan"], ["--rho must be a finite number"]),
    ("lr-zero", ["--unlearn-lr", "0"], ["--unlearn-lr"]),
    ("forget-fraction-above-1", ["--forget-size", "1.5"], ["--forget-size", "fraction in (0, 1)"]),
    ("forget-size-zero", ["--forget-size", "0"], ["--forget-size"]),
    ("forget-larger-than-data", ["--forget-size", "5000"], ["--forget-size 5000", "larger than the training set"]),
    ("forget-everything", ["--forget-size", "180"], ["nothing is left to retain"]),
    ("forget-class-missing", ["--forget", "class"], ["--forget-class"]),
    ("forget-class-absent", ["--forget", "class", "--forget-class", "12"], ["--forget-class 12", "classes 0..9"]),
    ("forget-unknown-kind", ["--forget", "hgh"], ["--forget", "'high'"]),
    ("seeds-zero", ["--seeds", "0"], ["--seeds must be an integer >= 1"]),
    ("batch-size-zero", ["--batch-size", "0"], ["--batch-size must be an integer >= 1"]),
    ("max-train-zero", ["--max-train", "0"], ["--max-train must be an integer >= 1"]),
    ("checkpoint-every-zero", ["--checkpoint-every", "0"], ["--checkpoint-every must be an integer >= 1"]),
    (
        "checkpoint-seconds-negative",
        ["--checkpoint-seconds", "-5"],
        ["--checkpoint-seconds must be a finite number >= 0"],
    ),
    (
        "config-checkpoint-seconds-text",
        lambda t: ["--config", _write(t, "c.json", '{"checkpoint_seconds": "often"}')],
        ["--checkpoint-seconds must be a finite number"],
    ),
    ("data-dir-missing", ["--data-dir", "/nonexistent/jaxunlearn"], ["--data-dir", "no such directory"]),
    (
        "data-dir-without-files",
        lambda t: ["--dataset", "fashion_mnist", "--data-dir", str(t)],
        ["train-images-idx3-ubyte"],
    ),
    ("option-syntax", ["--option", "fraction=0.1"], ["METHOD.KEY=VALUE"]),
    ("option-unknown-key", ["--option", "ft.alpha=1"], ["ft has no option(s) ['alpha']"]),
    ("option-unknown-method", ["--option", "ftt.lr_scale=1"], ["unknown method 'ftt'", "'ft'"]),
    ("option-bad-value", ["--option", "ga.lr_scale=abc"], ["--option ga.lr_scale must be a finite number"]),
    ("config-missing", ["--config", "/nonexistent/cfg.json"], ["--config", "no such file"]),
    ("config-bad-json", lambda t: ["--config", _write(t, "c.json", "{rho: 1")], ["not valid JSON"]),
    ("config-bad-toml", lambda t: ["--config", _write(t, "c.toml", "rho = = 1")], ["not valid TOML"]),
    ("config-unknown-key", lambda t: ["--config", _write(t, "c.json", '{"rhoo": 1}')], ["unknown setting", "rhoo"]),
    (
        "config-bad-type",
        lambda t: ["--config", _write(t, "c.json", '{"rho": "big"}')],
        ["--rho must be a finite number"],
    ),
    (
        "config-switch-not-a-bool",
        lambda t: ["--config", _write(t, "c.json", '{"resume": "yes"}')],
        ["resume must be true or false", "'yes'"],
    ),
    ("devices-zero", ["--devices", "0"], ["--devices must be an integer >= 1"]),
    ("devices-more-than-cores", ["--devices", "100000"], ["--devices 100000", "cores"]),
    # the cases: option values and ranges, named as --option, before any training
    ("option-fraction-above-1", ["--option", "sharp_minmax.fraction=7"], ["--option sharp_minmax.fraction=7"]),
    ("option-negative-epochs", ["--option", "neggrad.epochs=-3"], ["--option neggrad.epochs=-3", ">= 1"]),
    ("option-negative-lr-scale", ["--option", "neggrad.lr_scale=-1"], ["--option neggrad.lr_scale=-1", "> 0"]),
    ("option-alpha-out-of-range", ["--option", "neggrad.alpha=5"], ["--option neggrad.alpha=5", "[0, 1]"]),
    # conflicting flags
    (
        "forget-class-with-random",
        ["--forget", "random", "--forget-class", "3"],
        ["--forget-class 3 applies only with --forget class"],
    ),
    (
        "forget-size-with-class",
        ["--forget", "class", "--forget-class", "3", "--forget-size", "5000"],
        ["--forget-size 5000 does not apply with --forget class"],
    ),
    # settings that do not fit the data or each other, named as such
    ("batch-larger-than-data", ["--batch-size", "5000"], ["--batch-size 5000 is larger than the 180 training"]),
    ("batch-larger-than-retain", ["--batch-size", "170"], ["--batch-size 170 is larger than the retain set (162"]),
    ("max-train-one", ["--max-train", "1"], ["--max-train 1 leaves 1 training example"]),
    ("mem-models-one", ["--mem-models", "1", "--forget", "high"], ["--mem-models must be an integer >= 2"]),
    ("model-does-not-fit-dataset", ["--dataset", "synthetic", "--model", "cnn"], ["--model cnn does not fit"]),
    # accepted before, then a crash
    ("pretrain-empty", ["--pretrain", ","], ["--pretrain is empty"]),
    ("unlearn-optimizer-empty", ["--unlearn-optimizer", ","], ["--unlearn-optimizer is empty"]),
    ("seed-overflow", ["--seed", str(2**63)], ["--seed must be an integer <= 1000000000"]),
    ("landscape-grid-huge", ["--landscape-grid", "100000"], ["--landscape-grid must be an integer <= 101"]),
    # never overwrite, never start afresh by mistake
    (
        "out-not-empty",
        lambda t: ["--out", os.path.dirname(_write(t, "results.json", "{}"))],
        ["is not empty (results.json", "--overwrite"],
    ),
    ("resume-empty-folder", lambda t: ["--out", str(t), "--resume"], ["--resume", "holds no run"]),
    ("resume-misspelled-folder", lambda t: ["--out", str(t / "rnu"), "--resume"], ["--resume", "does not exist"]),
    ("resume-without-out", lambda t: ["--out", "", "--resume"], ["--resume needs --out"]),
    ("out-is-a-file", lambda t: ["--out", _write(t, "f.txt", "x")], ["is an existing file"]),
    ("out-holds-a-run", lambda t: _existing_run(t, same_settings=True)[:2], ["already holds a run", "--resume"]),
    ("resume-other-settings", lambda t: _existing_run(t, same_settings=False), ["different settings", "rho was 0.3"]),
    (
        "resume-corrupt-checkpoint",
        lambda t: _existing_run(t, same_settings=True, corrupt_ckpt=True),
        ["checkpoint", "damaged"],
    ),
]


def _listing(root) -> dict:
    """``{relative path: size}`` of every file and folder under ``root``."""
    out = {}
    for where, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(where, name)
            out[os.path.relpath(path, root)] = os.path.getsize(path) if name in files else None
    return out


def _run_cli(argv, capsys):
    status = cli.main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize(("case", "extra", "fragments"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_rejects_bad_input(case, extra, fragments, tmp_path, capsys):
    extra = extra(tmp_path) if callable(extra) else extra
    argv = ["run", *TINY, "--out", str(tmp_path / "out"), *extra]
    if "--out" in extra:  # the case chooses its own output directory
        i = argv.index("--out")
        del argv[i : i + 2]
        if extra[extra.index("--out") + 1] == "":
            j = argv.index("--out")
            del argv[j : j + 2]
    before = _listing(tmp_path)
    status, _, err = _run_cli(argv, capsys)
    assert status == 2, f"{case}: exit status {status}, stderr {err!r}"
    assert _listing(tmp_path) == before, f"{case}: the failed command changed {tmp_path}"  # no stub left
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("jaxunlearn: error:")]
    assert len(lines) == 1, err
    for frag in fragments:
        assert frag in lines[0], f"{case}: {frag!r} not in {lines[0]!r}"


def test_show_rejects_missing_and_damaged_results(tmp_path, capsys):
    status, _, err = _run_cli(["show", str(tmp_path / "nope")], capsys)
    assert status == 2 and "does not exist" in err
    (tmp_path / "results.json").write_text('{"settings": {}, "methods": {"ft": {"forget_acc": 2}}}')
    status, _, err = _run_cli(["show", str(tmp_path)], capsys)
    assert status == 2 and "missing required key" in err
    (tmp_path / "results.json").write_text('{"settings": ')
    status, _, err = _run_cli(["show", str(tmp_path)], capsys)
    assert status == 2 and "not valid JSON" in err and "Traceback" not in err


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["run", "--seeds", "two"])
    assert info.value.code == 2
    assert "invalid int value" in capsys.readouterr().err


def test_at_least_25_cases():
    assert len(API_CASES) >= 25 and len(CLI_CASES) >= 25
    assert json.dumps([c[0] for c in API_CASES + CLI_CASES])  # ids are plain strings


def test_top_fraction_names_a_string_fraction_as_such():
    from jaxunlearn import selection

    with pytest.raises(TypeError, match=r"fraction must be a number in \(0, 1\], got str '0.1'"):
        selection.top_fraction({"w": jnp.ones(3)}, "0.1")


def test_context_refuses_an_empty_forget_or_retain_set():
    from jaxunlearn import methods

    ctx = methods.toy_context()
    kw = dict(apply_fn=ctx.apply_fn, params=ctx.params, model_state=ctx.model_state, x=ctx.x, y=ctx.y, num_classes=3)
    with pytest.raises(ValueError, match="forget_idx is empty: there is nothing to unlearn"):
        methods.Context(retain_idx=ctx.retain_idx, forget_idx=np.array([], np.int64), **kw)
    with pytest.raises(ValueError, match="retain_idx is empty"):
        methods.Context(retain_idx=np.array([], np.int64), forget_idx=ctx.forget_idx, **kw)
