"""The ``jaxunlearn`` command.

``jaxunlearn run``    pretrain (SGD and SAM), unlearn with every method (plain and SAM optimizers),
                      evaluate and write ``results.json``, markdown tables and figures; with
                      ``--population N`` also N models per population (originals, Retrain, every method),
                      scored with the unlearning challenge's ε-score and U-LiRA.
``jaxunlearn show``   print the tables of a finished run directory.
``jaxunlearn theory`` the synthetic signal/noise experiment of the theory (SGD vs SAM).
``jaxunlearn methods`` list the unlearning methods and their options.

User errors (bad option values, missing data, a mismatched checkpoint) end with one line on stderr
and exit status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import threading
import time

__all__ = ["main", "build_parser", "parse_method_options", "resume_command"]


def _csv(s: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in s.split(",") if v.strip())


def parse_method_options(items: list[str]) -> dict:
    """``--option`` items ``METHOD.KEY=VALUE`` -> ``{METHOD: {KEY: VALUE}}``, each value read as JSON when it
    parses (numbers, ``true``, ``null``, lists, objects), else kept as a string.

    The method name ends at the last dot (variant tags may hold dots: ``sharp_minmax@f0.3.fraction=0.3``).

    Example:
        >>> parse_method_options(["rmu.layer=2", "rmu.tokens=inputs", "sharp_minmax@f0.3.fraction=0.3"])
        {'rmu': {'layer': 2, 'tokens': 'inputs'}, 'sharp_minmax@f0.3': {'fraction': 0.3}}
        >>> parse_method_options(["layer=2"])
        Traceback (most recent call last):
        ValueError: --option must look like METHOD.KEY=VALUE (e.g. sharp_minmax.fraction=0.1), got 'layer=2'.
    """
    out: dict = {}
    for item in items or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(
                f"--option must look like METHOD.KEY=VALUE (e.g. sharp_minmax.fraction=0.1), got {item!r}."
            )
        lhs, value = item.split("=", 1)
        name, key = lhs.rsplit(".", 1)  # option names have no dots; variant tags may (sharp_minmax@f0.3)
        if not key.isidentifier():
            raise ValueError(
                f"--option {item!r} reads as method {name!r}, option {key!r}; write METHOD.KEY=VALUE "
                "(e.g. sharp_minmax@f0.3.fraction=0.3)."
            )
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(name, {})[key] = parsed
    return out


def _load_config(path: str) -> dict:
    """Settings from a JSON or TOML file (by extension: ``.toml`` is TOML, anything else JSON).

    Keys are ``jaxunlearn run`` option names (``-`` or ``_``), plus ``method_options``
    (``{method: {key: value}}``) or ``option`` (a list of ``METHOD.KEY=VALUE`` strings).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config {path}: no such file.")
    with open(path, "rb") as f:
        try:
            if path.endswith(".toml"):
                import tomllib

                cfg = tomllib.load(f)
            else:
                cfg = json.loads(f.read().decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            kind = "TOML" if path.endswith(".toml") else "JSON (use a .toml extension for TOML)"
            raise ValueError(f"--config {path} is not valid {kind}: {exc}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"--config {path} must hold a table/object of settings.")
    cfg = {k.replace("-", "_"): v for k, v in cfg.items()}
    if "option" in cfg:
        items = cfg.pop("option")
        items = [items] if isinstance(items, str) else items
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ValueError(f"--config {path}: 'option' must be a list of 'METHOD.KEY=VALUE' strings.")
        opts = cfg.setdefault("method_options", {})
        if not isinstance(opts, dict):
            raise ValueError(f"--config {path}: 'method_options' must be a table of {{method: {{key: value}}}}.")
        for name, kv in parse_method_options(items).items():
            opts.setdefault(name, {}).update(kv)
    return cfg


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to an option's help unless the help states its default or there is none.

    The ``run`` options default to ``None`` on the command line (so that ``--config`` files can be merged
    under them); their help states the job's real default, read from :class:`~jaxunlearn.runner.JobConfig`.
    """

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is False or action.default == [] or "default" in text:
            return text
        return super()._get_help_string(action)


def _add_job_options(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """One option per :class:`~jaxunlearn.runner.JobConfig` setting (``runner.job_options``), in argument groups.

    Every option defaults to ``None`` (not given), so ``--config`` values can be merged under the flags; a
    ``bool`` setting's switch stores the opposite of its default, a comma list is split, method options are
    repeated ``METHOD.KEY=VALUE`` items. Returns the last group (``run``).
    """
    from jaxunlearn.runner import job_options

    groups: dict[str, argparse._ArgumentGroup] = {}
    for opt in job_options():
        group = groups.get(opt.group) or groups.setdefault(opt.group, parser.add_argument_group(opt.group))
        kw: dict = {"dest": opt.name, "help": opt.help}
        if opt.type is bool:
            kw.update(action="store_const", const=not opt.default, default=None)
        elif opt.type is dict:
            kw.update(action="append", default=[], metavar=opt.metavar)
        else:
            kw.update(type=_csv if opt.type is tuple else opt.type, default=None, metavar=opt.metavar)
        group.add_argument(opt.flag, **kw)
    return group


def build_parser() -> argparse.ArgumentParser:
    """The ``jaxunlearn`` argument parser: the subcommands ``run`` (one option per
    :class:`~jaxunlearn.runner.JobConfig` setting, plus ``--config``), ``show``, ``theory`` and ``methods``.

    The ``run`` options left out are ``None`` (a ``--option`` list is empty), so the values of a ``--config``
    file, then the job's defaults, fill them in.

    Example:
        >>> args = build_parser().parse_args(["run", "--methods", "ft,ga", "--rho", "0.05", "--quiet",
        ...                                   "--option", "ga.epochs=1"])
        >>> args.command, args.methods, args.rho, args.progress, args.method_options, args.seeds
        ('run', ('ft', 'ga'), 0.05, False, ['ga.epochs=1'], None)
        >>> build_parser().parse_args(["theory", "--steps", "50"]).steps
        50
    """
    p = argparse.ArgumentParser(
        prog="jaxunlearn",
        description="Sharpness-aware machine unlearning in JAX.",
        formatter_class=_HelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser(
        "run",
        help="pretrain, unlearn with every method, evaluate, report",
        formatter_class=_HelpFormatter,
        description="Defaults: digits, small CNN, pretrain with SGD and SAM, random 10% forget set, all methods "
        "with plain and SAM unlearning optimizers. Writes runs/<timestamp>/results.json, table.md and figures.",
    )
    g = _add_job_options(r)
    g.add_argument("--config", default=None, help="JSON or TOML file with the same settings (options override it)")

    s = sub.add_parser("show", help="print the tables of a finished run")
    s.add_argument("dir", help="run directory (or results.json)")

    t = sub.add_parser(
        "theory",
        help="signal learning vs noise memorization, SGD vs SAM (synthetic data)",
        formatter_class=_HelpFormatter,
    )
    t.add_argument("--out", default=None, help="output directory (default runs/theory-<timestamp>)")
    t.add_argument("--n", type=int, default=80, help="training examples")
    t.add_argument("--d", type=int, default=400, help="dimension of a patch")
    t.add_argument("--phi-norm", type=float, default=1.0, help="signal strength ||phi||")
    t.add_argument("--sigma-p", type=float, default=1.0, help="noise standard deviation")
    t.add_argument("--steps", type=int, default=300, help="gradient steps")
    t.add_argument("--lr", type=float, default=0.5, help="learning rate")
    t.add_argument("--rho", type=float, default=1.0, help="SAM radius")
    t.add_argument("--seed", type=int, default=0, help="random seed")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    t.add_argument("--overwrite", action="store_true", help="write into a non-empty --out (its files are replaced)")

    sub.add_parser("methods", help="list the unlearning methods and their options")
    return p


def _job_config(args) -> JobConfig:  # noqa: F821
    """The job's settings: the ``--config`` file's values, overridden by the flags given."""
    from jaxunlearn.runner import JobConfig

    values: dict = _load_config(args.config) if args.config else {}
    known = {f.name for f in dataclasses.fields(JobConfig)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"--config has unknown setting(s) {sorted(unknown)}; known: {sorted(known)}.")
    given = {k: getattr(args, k) for k in known - {"method_options"} if getattr(args, k) is not None}
    values.update(given)
    if values.get("checkpoint_every") is not None and "checkpoint_seconds" not in values:
        values["checkpoint_seconds"] = None  # checkpoint_every alone (flag or config): by epochs only
    opts = values.pop("method_options", {}) or {}
    if not isinstance(opts, dict) or not all(isinstance(v, dict) for v in opts.values()):
        raise ValueError("--config: method_options must be a table of {method: {key: value}}.")
    opts = {name: dict(kv) for name, kv in opts.items()}
    for name, kv in parse_method_options(args.method_options).items():
        opts.setdefault(name, {}).update(kv)
    for k in ("pretrain", "unlearn_optimizer", "methods"):
        if isinstance(values.get(k), list):
            values[k] = tuple(values[k])
    return JobConfig(**values, method_options=opts)


def _cpu_devices_for(devices: int | None) -> None:
    """``--devices N`` in a single-process run: expose N CPU devices (one per core is the useful
    setting on a CPU host) before JAX starts, so the mesh can be built without ``XLA_FLAGS``. Harmless
    on GPU/TPU hosts (only the CPU backend's device count changes; the mesh uses the accelerators)."""
    from jaxunlearn import distributed

    if not isinstance(devices, int) or devices < 2 or not distributed.cpu_devices_settable():
        return
    if devices > distributed.usable_cores():  # more XLA:CPU devices than cores abort; the job's check names it
        return
    distributed.cpu_devices(devices)


#: ``jaxunlearn run`` settings that the language-model job (``--dataset facts``) takes, and their LM names
_LM_SETTINGS = {
    "seeds": "seeds", "seed": "seed", "out": "out", "resume": "resume", "methods": "methods",
    "unlearn_optimizer": "optimizers", "unlearn_lr": "unlearn_lr", "unlearn_epochs": "unlearn_epochs",
    "pretrain_epochs": "pretrain_epochs", "pretrain_lr": "pretrain_lr", "batch_size": "batch_size", "rho": "rho",
    "method_options": "method_options", "progress": "progress", "forget_size": "forget", "overwrite": "overwrite",
}  # fmt: skip


def _cmd_run_lm(args) -> int:
    """``jaxunlearn run --dataset facts [--model gpt]``: the language-model job (:mod:`jaxunlearn.lm_job`) on the
    generated facts corpus. Settings that do not apply to it are refused by name."""
    from jaxunlearn import _atomic, lm_job
    from jaxunlearn.runner import job_options

    if args.config:
        raise ValueError("--config is not read with --dataset facts; give its options on the command line.")
    flags = {o.name: o.flag for o in job_options()}
    given = {o.name: getattr(args, o.name) for o in job_options() if getattr(args, o.name) not in (None, [])}
    given.pop("dataset")
    model = given.pop("model", "gpt")
    if model != "gpt":
        raise ValueError(f"--dataset facts trains the decoder-only transformer: use --model gpt, not --model {model}.")
    extra = sorted(set(given) - set(_LM_SETTINGS))
    if extra:
        names = ", ".join(flags[k] for k in extra)
        takes = ", ".join(flags[k] for k in _LM_SETTINGS if k in flags)
        raise ValueError(f"{names} does not apply to --dataset facts; the language-model job takes {takes}.")
    kw = {_LM_SETTINGS[k]: v for k, v in given.items()}
    if "method_options" in kw:
        kw["method_options"] = parse_method_options(kw["method_options"])
    if "methods" in kw:
        kw["methods"] = tuple(m for m in kw["methods"] if m != "retrain")  # Retrain always runs
    if "forget" in kw and not 0 < kw["forget"] < 1:
        raise ValueError(
            f"--forget-size for --dataset facts is the fraction of people to forget, in (0, 1); got {kw['forget']:g}."
        )
    if kw.get("resume") and not kw.get("out"):
        raise ValueError("--resume needs --out DIR: the directory of the run to continue.")
    if kw.get("resume"):
        _check_resumable(kw["out"])
    if not kw.get("out"):
        import datetime

        kw["out"] = _atomic.unique_dir("runs", "lm-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    results = lm_job.run(kw)
    print(lm_job.table(results))
    print(f"results: {os.path.join(kw['out'], 'results.json')}")
    return 0


def _cmd_run(args) -> int:
    from jaxunlearn.runner import format_tables, run_job

    if getattr(args, "dataset", None) == "facts":
        return _cmd_run_lm(args)
    cfg = _job_config(args)
    _cpu_devices_for(cfg.devices)  # before the checks: --devices is checked against the devices JAX then has
    cfg.validate()
    if cfg.resume and cfg.out:
        _check_resumable(cfg.out)
    try:
        results = run_job(cfg)
    except KeyboardInterrupt:
        from jaxunlearn.runner import Progress

        if cfg.out and Progress.holds_run(cfg.out):  # name the folder: a run without --out got a new one
            print(f"jaxunlearn: interrupted; continue with: {resume_command(cfg.out)}", file=sys.stderr)
        else:
            print("jaxunlearn: interrupted before the run started; nothing to resume.", file=sys.stderr)
        return 130
    print(format_tables(results))
    print(f"results: {os.path.join(cfg.out, 'results.json')}")
    return 0


def _check_resumable(out: str) -> None:
    """``--resume`` continues a run: refuse a missing, empty or misspelled ``--out`` instead of starting afresh."""
    from jaxunlearn.runner import Progress

    if Progress.holds_run(out):
        return
    what = "does not exist" if not os.path.exists(out) else "holds no run (no progress.json, no checkpoints)"
    raise ValueError(f"--resume: {out} {what}; check --out, or drop --resume to start a new run there.")


def resume_command(out: str) -> str:
    """The ``jaxunlearn run ... --resume`` command that continues the run in ``out``, rebuilt from its saved
    settings (the options that differ from the defaults; the figure and checkpoint options are free to choose).

    Example:
        >>> import tempfile
        >>> from jaxunlearn.runner import JobConfig, Progress
        >>> tmp = tempfile.TemporaryDirectory()
        >>> cfg = JobConfig(methods=("ft",), rho=0.3, method_options={"ft": {"epochs": 2}}).validate()
        >>> _ = Progress(tmp.name, cfg.resume_settings())
        >>> resume_command(tmp.name).replace(tmp.name, "OUT")
        'jaxunlearn run --rho 0.3 --methods ft --option ft.epochs=2 --out OUT --resume'
        >>> tmp.cleanup()
    """
    import shlex

    from jaxunlearn.runner import Progress, job_options

    settings = None
    for name in (Progress.FILE, Progress.SETTINGS_FILE):
        try:
            with open(os.path.join(out, name)) as f:
                settings = json.loads(json.load(f)["settings_key"])
            break
        except (OSError, ValueError, KeyError, TypeError):
            continue
    words = ["jaxunlearn", "run"]
    if not isinstance(settings, dict):
        words.append("...")
        settings = {}
    if settings.get("job") == "lm":  # the language-model job (lm_job.LMJobConfig.resume_settings)
        return " ".join(shlex.quote(w) for w in [*words, *_lm_flags(settings), "--out", out, "--resume"])
    for opt in job_options():
        value = settings.get(opt.name, opt.default)
        default = list(opt.default) if isinstance(opt.default, tuple) else opt.default
        if opt.name not in settings or value == default:
            continue
        words += _option_words(opt, value)
    return " ".join(shlex.quote(w) for w in [*words, "--out", out, "--resume"])


def _option_words(opt, value) -> list[str]:
    """The command-line words that set the job option ``opt`` to ``value`` (a saved setting)."""
    if opt.type is bool:
        return [opt.flag] if value else []
    if opt.type is dict:
        return [w for method, kv in value.items() for k, v in kv.items()
                for w in ("--option", f"{method}.{k}={json.dumps(v)}")]  # fmt: skip
    if opt.type is tuple:
        return [opt.flag, ",".join(value)]
    return [opt.flag, str(value)]


def _lm_flags(settings: dict) -> list[str]:
    """The ``jaxunlearn run --dataset facts`` options that give an LM job's saved ``settings`` (those that differ
    from :class:`jaxunlearn.lm_job.LMJobConfig`'s defaults), with ``...`` where a setting has no option."""
    from jaxunlearn import lm_job
    from jaxunlearn.runner import job_options

    defaults = lm_job.LMJobConfig().resume_settings()
    options = {o.name: o for o in job_options()}
    by_lm_name = {lm_name: options.get(name) for name, lm_name in _LM_SETTINGS.items()}
    words, unsaid = ["--dataset", "facts"], False
    for key, value in settings.items():
        default = defaults.get(key)
        if key == "job" or value == (list(default) if isinstance(default, tuple) else default):
            continue
        opt = by_lm_name.get(key)
        if opt is None:
            unsaid = True
        else:
            words += _option_words(opt, value)
    return words + (["..."] if unsaid else [])


def _cmd_show(args) -> int:
    from jaxunlearn import report
    from jaxunlearn.runner import format_tables

    path = args.dir
    results_file = path if path.endswith(".json") else os.path.join(path, "results.json")
    if not os.path.isfile(results_file) and os.path.isfile(os.path.join(path, "progress.json")):
        from jaxunlearn.runner import Progress

        done = Progress.read(path)
        print(
            f"{path} holds an incomplete run ({len(done)} entries finished, no results.json yet); continue it "
            f"with: {resume_command(path)}"
        )
        return 1
    if not os.path.isfile(results_file):
        raise FileNotFoundError(f"{results_file} does not exist; pass a directory written by `jaxunlearn run`.")
    results = report.read_results(results_file)
    print(format_tables(results))
    return 0


def _cmd_methods(args) -> int:
    from jaxunlearn import methods

    for name in sorted(methods.METHODS):
        m = methods.METHODS[name]
        opts = ", ".join(f"{k}={v!r}" for k, v in m.defaults.items()) or "-"
        print(f"{name:15s} {m.summary}\n{'':15s} options: {opts}")
    return 0


def _cmd_theory(args) -> int:
    from jaxunlearn import theory

    out = theory.run_theory(
        out=args.out,
        n=args.n,
        d=args.d,
        phi_norm=args.phi_norm,
        sigma_p=args.sigma_p,
        steps=args.steps,
        lr=args.lr,
        rho=args.rho,
        seed=args.seed,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    print(out["summary"])
    return 0


#: Exceptions that report a user mistake (bad option, missing or damaged file, a checkpoint of another
#: run): one line on stderr, exit status 2. ``CheckpointError`` is a ``ValueError``; ``OSError`` covers
#: missing files, permissions and paths that are files where directories are expected.
USER_ERRORS = (ValueError, OSError)


def _one_line(exc: BaseException) -> str:
    """The exception's message on one line (multi-line messages are joined; OSErrors name the path)."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        text = f"{exc.strerror}: {exc.filename}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _runtime_error_message(exc: BaseException) -> str | None:
    """A user-facing message for a JAX/XLA runtime error a user can fix (out of memory), else None."""
    text = str(exc)
    if "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text:
        return (
            "the accelerator ran out of memory; lower --batch-size, --max-train or --width, or choose a smaller "
            "--model (" + _one_line(exc)[:200] + ")"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxunlearn`` console script; returns the exit status.

    Exit status: 0 on success, 2 for a user error (one line on stderr, no traceback; argparse's own
    errors too), 130 when interrupted (the run can be continued with ``--resume``).

    Example:
        >>> main(["methods"])
        ft              fine-tune on the retain set: min CE(R)
                        options: lr_scale=1.0, epochs=None
        ga              gradient ascent on the forget set: min -CE(F)
                        options: lr_scale=0.003, epochs=5
        ...
        0
        >>> main(["show", "no/such/run"])  # a user error: one line on stderr, no traceback
        2
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    from jaxunlearn import distributed

    distributed.maybe_initialize()  # multi-host runs: jax.distributed.initialize() when the env says so
    if argv is None:  # the program itself: a Ctrl-C ends it even when it lands inside a blocking save
        watch_interrupts()
    handlers = {"run": _cmd_run, "show": _cmd_show, "theory": _cmd_theory, "methods": _cmd_methods}
    code = _dispatch(handlers[args.command], args)
    if code == 130 and argv is None:  # the program itself, interrupted: leave at once (see exit_interrupted)
        exit_interrupted()
    return code


INTERRUPTED = "jaxunlearn: interrupted; rerun the same command with --resume to continue."
_INTERRUPT = {"lock": threading.Lock(), "said": False}


def say_interrupted(*, unless_said: bool = False) -> None:
    """Print the "interrupted" line on stderr; ``unless_said=True`` (the watchdog of :func:`watch_interrupts`) skips
    it when the command's own handler printed it already.

    Example:
        >>> import contextlib, io
        >>> err = io.StringIO()
        >>> with contextlib.redirect_stderr(err):
        ...     say_interrupted()
        ...     say_interrupted(unless_said=True)  # said already: nothing more
        >>> err.getvalue().splitlines()
        ['jaxunlearn: interrupted; rerun the same command with --resume to continue.']
    """
    with _INTERRUPT["lock"]:
        if not (unless_said and _INTERRUPT["said"]):
            print(INTERRUPTED, file=sys.stderr)
        _INTERRUPT["said"] = True


def watch_interrupts(grace: float = 10.0) -> bool:
    """Make a Ctrl-C end the program within ``grace`` seconds, wherever it lands: SIGINT gets a handler of its own
    that raises ``KeyboardInterrupt`` (asyncio, which Orbax's saves run, replaces Python's default handler with one
    that only cancels its task, and a cancelled save can swallow the interrupt), and the signal is also written
    to a pipe (``signal.set_wakeup_fd``) that a daemon thread reads, for a main thread blocked where Python cannot
    raise. ``grace`` seconds after a SIGINT, if the program is still running, a watchdog prints the
    "interrupted" line (:func:`say_interrupted`) and leaves with status 130 (:func:`exit_interrupted`). Returns
    False (and does nothing) outside the main thread. The ``jaxunlearn`` program calls it at start.

    Example (a child process whose main thread never raises the KeyboardInterrupt, as when it is stuck in a
    native wait; here a handler that swallows it stands in for that):
        >>> import subprocess, sys
        >>> code = ("import os, signal, threading; from jaxunlearn import cli; cli.watch_interrupts(grace=0.5); "
        ...         "signal.signal(signal.SIGINT, lambda *a: None); "
        ...         "threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start(); threading.Event().wait(60)")
        >>> r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        >>> r.returncode, r.stderr.strip().splitlines()[-1]
        (130, 'jaxunlearn: interrupted; rerun the same command with --resume to continue.')
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    armed = threading.Event()

    def leave_after_grace():
        armed.wait()
        time.sleep(grace)
        say_interrupted(unless_said=True)
        exit_interrupted()

    def watch():
        while signal.SIGINT not in os.read(read_fd, 64):
            pass
        armed.set()

    def on_sigint(signum, frame):
        # Our own handler, not Python's default: asyncio.run (inside Orbax's saves) replaces only the default one,
        # with a handler that cancels its task, and a cancelled save can swallow the Ctrl-C; this one raises it.
        armed.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    threading.Thread(target=watch, name="jaxunlearn-interrupt-pipe", daemon=True).start()
    threading.Thread(target=leave_after_grace, name="jaxunlearn-interrupt-watchdog", daemon=True).start()
    return True


def exit_interrupted() -> None:
    """End the process with status 130 (``128 + SIGINT``) at once, after flushing stdout and stderr: a Ctrl-C
    that lands inside a checkpoint save can leave Orbax's background threads waiting for a signal that never
    comes, and the interpreter's normal exit would join them forever. The command line calls it after printing
    its "interrupted" line.

    Example (in a child process, as it ends the process):
        >>> import subprocess, sys
        >>> code = "from jaxunlearn.cli import exit_interrupted; print('bye'); exit_interrupted()"
        >>> r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        >>> r.returncode, r.stdout
        (130, 'bye\\n')
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


def _dispatch(handler, args) -> int:
    try:
        return handler(args)
    except USER_ERRORS as exc:
        print(f"jaxunlearn: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        say_interrupted()
        return 130
    except Exception as exc:  # JAX/XLA runtime errors: translate the ones a user can fix
        msg = _runtime_error_message(exc) if type(exc).__name__ in ("XlaRuntimeError", "JaxRuntimeError") else None
        if msg is None:
            raise
        print(f"jaxunlearn: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
