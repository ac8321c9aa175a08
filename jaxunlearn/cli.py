"""The ``jaxunlearn`` command.

``jaxunlearn run``    pretrain (SGD and SAM), unlearn with every method (plain and SAM optimizers),
                      evaluate and write ``results.json``, markdown tables and figures.
``jaxunlearn show``   print the tables of a finished run directory.
``jaxunlearn theory`` the synthetic signal/noise experiment of the theory (SGD vs SAM).

User errors (bad option values, missing data, a mismatched checkpoint) end with one line on stderr
and exit status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

__all__ = ["main", "build_parser"]


def _csv(s: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in s.split(",") if v.strip())


def _method_options(items: list[str]) -> dict:
    """``name.key=value`` items -> {name: {key: value}} (values parsed as JSON when possible).

    The method name ends at the last dot (variant tags may hold dots: ``sharp_minmax@f0.3.fraction=0.3``).
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
        for name, kv in _method_options(items).items():
            opts.setdefault(name, {}).update(kv)
    return cfg


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to an option's help unless the help states its default or there is none.

    The ``run`` options default to ``None`` on the command line (so that ``--config`` files can be merged
    under them) and state the job's real default, read from :class:`~jaxunlearn.runner.JobConfig`.
    """

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is False or action.default == [] or "default" in text:
            return text
        return super()._get_help_string(action)


def _default(name: str) -> str:
    """The job's default for ``JobConfig.<name>`` as the help text shows it (tuples comma-joined)."""
    from jaxunlearn.runner import JobConfig

    value = JobConfig.__dataclass_fields__[name].default
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def build_parser() -> argparse.ArgumentParser:
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
        description="Defaults: digits, small CNN, pretrain with SGD and SAM, random 10%% forget set, all methods "
        "with plain and SAM unlearning optimizers. Writes runs/<timestamp>/results.json, table.md and figures.",
    )
    g = r.add_argument_group("data")
    g.add_argument(
        "--dataset",
        default=None,
        help=f"digits | fashion_mnist | synthetic | tfds:NAME (default {_default('dataset')})",
    )
    g.add_argument("--data-dir", default=None, help="directory with the data (Fashion-MNIST IDX files, TFDS data_dir)")
    g.add_argument("--max-train", type=int, default=None, help="use at most this many training examples")
    g.add_argument("--max-test", type=int, default=None, help="use at most this many test examples")
    g.add_argument("--forget", default=None, help="forget set: random | class | high | low | mid | mix (memorization)")
    g.add_argument(
        "--forget-size",
        type=float,
        default=None,
        help=f"whole count >= 1, or fraction in (0, 1) (default {_default('forget_size')})",
    )
    g.add_argument("--forget-class", type=int, default=None, help="the class to forget with --forget class")
    g.add_argument(
        "--mem-models",
        type=int,
        default=None,
        help=f"models for memorization scores (default {_default('mem_models')})",
    )
    g = r.add_argument_group("model and training")
    g.add_argument(
        "--model", default=None, help="cnn | mlp | resnet18 | theory_cnn (default: cnn; theory_cnn for synthetic)"
    )
    g.add_argument(
        "--width",
        type=int,
        default=None,
        help="base width: cnn first conv channels (32), mlp first hidden layer (256), resnet18 stem channels (64), "
        "theory_cnn filters (10)",
    )
    g.add_argument(
        "--pretrain", type=_csv, default=None, help=f"comma list of sgd | sam | asam (default {_default('pretrain')})"
    )
    g.add_argument(
        "--pretrain-lr",
        type=float,
        default=None,
        help=f"SGD learning rate for pretraining (default {_default('pretrain_lr')})",
    )
    g.add_argument(
        "--pretrain-epochs",
        type=int,
        default=None,
        help=f"pretraining (and Retrain) epochs (default {_default('pretrain_epochs')})",
    )
    g.add_argument(
        "--pretrain-rho",
        type=float,
        default=None,
        help=f"SAM/ASAM radius when pretraining (default {_default('pretrain_rho')})",
    )
    g.add_argument("--batch-size", type=int, default=None, help=f"batch size (default {_default('batch_size')})")
    g = r.add_argument_group("unlearning")
    g.add_argument("--methods", type=_csv, default=None, help=f"comma list (default {_default('methods')})")
    g.add_argument(
        "--unlearn-optimizer",
        type=_csv,
        default=None,
        help=f"comma list of sgd (plain AdamW) | sam | asam (default {_default('unlearn_optimizer')})",
    )
    g.add_argument(
        "--unlearn-lr",
        type=float,
        default=None,
        help=f"AdamW learning rate for unlearning (default {_default('unlearn_lr')})",
    )
    g.add_argument(
        "--unlearn-epochs", type=int, default=None, help=f"unlearning epochs (default {_default('unlearn_epochs')})"
    )
    g.add_argument(
        "--rho", type=float, default=None, help=f"SAM/ASAM radius when unlearning (default {_default('rho')})"
    )
    g.add_argument(
        "--lamb", type=float, default=None, help=f"lambda in g + s*lambda*(g' - g) (default {_default('lamb')})"
    )
    g.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="METHOD.KEY=VALUE",
        help="method option, e.g. sharp_minmax.fraction=0.1 (repeatable; see `jaxunlearn methods`); a variant "
        "METHOD@TAG in --methods takes its own options, e.g. --methods ft,ft@long --option ft@long.epochs=10",
    )
    g = r.add_argument_group("run")
    g.add_argument(
        "--seeds", type=int, default=None, help=f"number of seeds; tables show mean ± std (default {_default('seeds')})"
    )
    g.add_argument("--seed", type=int, default=None, help=f"first seed (default {_default('seed')})")
    g.add_argument("--out", default=None, help="output directory (default runs/<timestamp>)")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    g.add_argument(
        "--checkpoint-seconds",
        type=float,
        default=None,
        help="checkpoint a training run after the epoch that ends this many seconds after its last save, and at "
        f"its end (default {_default('checkpoint_seconds')}; 0 = after every epoch)",
    )
    g.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        help="checkpoint every N epochs instead (with --checkpoint-seconds too: whichever comes first)",
    )
    g.add_argument("--no-figures", action="store_true", help="skip the figures")
    g.add_argument(
        "--landscape-grid",
        type=int,
        default=None,
        help=f"loss-landscape grid points per axis (default {_default('landscape_grid')})",
    )
    g.add_argument(
        "--devices",
        type=int,
        default=None,
        help="data-parallel over this many devices (one mesh; all processes' devices in multi-host runs)",
    )
    g.add_argument("--config", default=None, help="JSON or TOML file with the same settings (options override it)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")

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

    sub.add_parser("methods", help="list the unlearning methods and their options")
    return p


def _job_config(args) -> JobConfig:  # noqa: F821
    from jaxunlearn.runner import JobConfig

    values: dict = {}
    if args.config:
        values.update(_load_config(args.config))
    mapping = {
        "dataset": args.dataset,
        "data_dir": args.data_dir,
        "max_train": args.max_train,
        "max_test": args.max_test,
        "forget": args.forget,
        "forget_size": args.forget_size,
        "forget_class": args.forget_class,
        "mem_models": args.mem_models,
        "model": args.model,
        "width": args.width,
        "pretrain": args.pretrain,
        "pretrain_lr": args.pretrain_lr,
        "pretrain_epochs": args.pretrain_epochs,
        "pretrain_rho": args.pretrain_rho,
        "batch_size": args.batch_size,
        "methods": args.methods,
        "unlearn_optimizer": args.unlearn_optimizer,
        "unlearn_lr": args.unlearn_lr,
        "unlearn_epochs": args.unlearn_epochs,
        "rho": args.rho,
        "lamb": args.lamb,
        "seeds": args.seeds,
        "seed": args.seed,
        "out": args.out,
        "landscape_grid": args.landscape_grid,
        "devices": args.devices,
        "checkpoint_every": args.checkpoint_every,
        "checkpoint_seconds": args.checkpoint_seconds,
    }
    values.update({k: v for k, v in mapping.items() if v is not None})
    if values.get("checkpoint_every") is not None and "checkpoint_seconds" not in values:
        values["checkpoint_seconds"] = None  # checkpoint_every alone (flag or config): by epochs only
    opts = values.pop("method_options", {}) or {}
    if not isinstance(opts, dict) or not all(isinstance(v, dict) for v in opts.values()):
        raise ValueError("--config: method_options must be a table of {method: {key: value}}.")
    opts = {name: dict(kv) for name, kv in opts.items()}
    for name, kv in _method_options(args.option).items():
        opts.setdefault(name, {}).update(kv)
    known = set(JobConfig.__dataclass_fields__)
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"--config has unknown setting(s) {sorted(unknown)}; known: {sorted(known)}.")
    for k in ("pretrain", "unlearn_optimizer", "methods"):
        if isinstance(values.get(k), list):
            values[k] = tuple(values[k])
    cfg = JobConfig(**values, method_options=opts)
    cfg.resume = args.resume or cfg.resume is True
    cfg.figures = not args.no_figures and cfg.figures is not False
    cfg.progress = not args.quiet and cfg.progress is not False
    return cfg


def _cpu_devices_for(devices: int | None) -> None:
    """``--devices N`` in a single-process run: expose N CPU devices (one per core is the useful
    setting on a CPU host) before JAX starts, so the mesh can be built without ``XLA_FLAGS``. Harmless
    on GPU/TPU hosts (only the CPU backend's device count changes; the mesh uses the accelerators)."""
    from jaxunlearn import distributed

    if not devices or devices < 2 or not distributed.cpu_devices_settable():
        return
    distributed.cpu_devices(devices)


def _cmd_run(args) -> int:
    from jaxunlearn.runner import format_tables, run_job

    cfg = _job_config(args)
    _cpu_devices_for(cfg.devices)
    results = run_job(cfg)
    print(format_tables(results))
    print(f"results: {os.path.join(cfg.out, 'results.json')}")
    return 0


def _cmd_show(args) -> int:
    from jaxunlearn import report
    from jaxunlearn.runner import format_tables

    path = args.dir
    results_file = path if path.endswith(".json") else os.path.join(path, "results.json")
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
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    from jaxunlearn import distributed

    distributed.maybe_initialize()  # multi-host runs: jax.distributed.initialize() when the env says so
    handlers = {"run": _cmd_run, "show": _cmd_show, "theory": _cmd_theory, "methods": _cmd_methods}
    try:
        return handlers[args.command](args)
    except USER_ERRORS as exc:
        print(f"jaxunlearn: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jaxunlearn: interrupted; rerun the same command with --resume to continue.", file=sys.stderr)
        return 130
    except Exception as exc:  # JAX/XLA runtime errors: translate the ones a user can fix
        msg = _runtime_error_message(exc) if type(exc).__name__ in ("XlaRuntimeError", "JaxRuntimeError") else None
        if msg is None:
            raise
        print(f"jaxunlearn: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
