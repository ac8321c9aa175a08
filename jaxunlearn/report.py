"""Results files, markdown tables and figures for unlearning runs.

``results.json`` schema (the public contract of a run directory)::

    {"settings": {...anything JSON...},
     "methods": {NAME: {"forget_acc": v, "retain_acc": v, "test_acc": v, "mia": v, "tow": v,
                        "seconds": v, ...extra keys...}}}

with every required value ``v`` either a number or ``{"mean": m, "std": s}`` (several seeds).
``forget_acc``, ``retain_acc``, ``test_acc`` and ``mia`` lie in [0, 1]; ``tow`` and ``seconds`` are >= 0
(ToW is in [0, 1] with RUM's absolute differences; the signed variant of paper A's code can exceed 1).
``original`` (the model before unlearning) and ``retrain`` are ordinary entries.

Writes are atomic (temporary file in the same directory, fsync, ``os.replace``), so a crash or a
concurrent reader never sees a half-written file. Figures use matplotlib's Agg canvas through the
object API; nothing here calls ``plt.show()`` or changes the global backend.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxunlearn import _atomic

__all__ = [
    "ACCURACY_KEYS",
    "REQUIRED_KEYS",
    "environment",
    "markdown_table",
    "plot_bars",
    "plot_epsilons",
    "population_table",
    "read_results",
    "results_path",
    "save_figure",
    "to_jsonable",
    "validate_results",
    "write_results",
    "write_text",
]

REQUIRED_KEYS = ("forget_acc", "retain_acc", "test_acc", "mia", "tow", "seconds")
ACCURACY_KEYS = ("forget_acc", "retain_acc", "test_acc", "mia")  # must lie in [0, 1]
_NONNEG_KEYS = ("tow", "seconds")
_FIRST = ("original", "retrain")
_TOL = 1e-9

_HEADERS = {
    "forget_acc": "FA (%)",
    "retain_acc": "RA (%)",
    "test_acc": "TA (%)",
    "mia": "MIA (%)",
    "tow": "ToW (%)",
    "seconds": "Time (s)",
}
_PERCENT_KEYS = frozenset({"forget_acc", "retain_acc", "test_acc", "mia", "tow", "tow_mia", "val_acc"})


def results_path(path) -> str:
    """Resolve ``path`` to a results file: a path ending in ``.json`` is used as is, anything else is a
    directory holding ``results.json``.

    Example:
        >>> results_path("runs/digits"), results_path("runs/digits/seed0.json")
        ('runs/digits/results.json', 'runs/digits/seed0.json')
    """
    path = os.fspath(path)
    return path if path.endswith(".json") else os.path.join(path, "results.json")


def to_jsonable(obj: Any) -> Any:
    """Convert ``obj`` to plain JSON types: numpy/jax scalars -> float/int/bool, arrays -> (nested) lists,
    tuples -> lists, mapping keys -> str; NaN/inf -> None (strict JSON has no NaN).

    Example:
        >>> import jax.numpy as jnp
        >>> to_jsonable({"acc": np.float32(0.5), "curve": jnp.arange(3), 1: (np.nan, True)})
        {'acc': 0.5, 'curve': [0, 1, 2], '1': [None, True]}
    """
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        f = float(obj)
        return f if math.isfinite(f) else None
    if hasattr(obj, "__array__") or isinstance(obj, np.ndarray):  # numpy / jax arrays and scalars
        arr = np.asarray(obj)
        if arr.ndim == 0:
            return to_jsonable(arr.item())
        return [to_jsonable(v) for v in arr.tolist()]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"cannot convert {type(obj).__name__} to JSON")


def _value_ok(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _check_value(name: str, key: str, v) -> float:
    """Validate one metric value; return its mean."""
    where = f"methods[{name!r}][{key!r}]"
    if isinstance(v, Mapping):
        if set(v) != {"mean", "std"}:
            raise ValueError(f"{where} must be a number or {{'mean', 'std'}}, got keys {sorted(v)}")
        m, s = v["mean"], v["std"]
        if not _value_ok(m) or not _value_ok(s):
            raise ValueError(f"{where} mean/std must be finite numbers, got {v!r}")
        if float(s) < 0:
            raise ValueError(f"{where} std must be >= 0, got {s!r}")
        return float(m)
    if not _value_ok(v):
        raise ValueError(f"{where} must be a finite number or {{'mean': m, 'std': s}}, got {v!r}")
    return float(v)


#: the packages whose versions :func:`environment` records (XLA's numbers can change between their releases)
PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "orbax-checkpoint", "jaxunlearn")


def environment() -> dict:
    """What a result was computed with, for ``results.json``'s ``environment``: the Python version, the versions
    of :data:`PACKAGES` (``None`` where one is not installed), the OS, and JAX's backend, device kind, device and
    process counts. The same seed on another jax/jaxlib release or another device kind can give other numbers,
    so a run is reproducible only together with these.

    Example:
        >>> env = environment()
        >>> sorted(env)
        ['backend', 'device_count', 'device_kind', 'packages', 'platform', 'process_count', 'python']
        >>> import jax
        >>> env["packages"]["jax"] == jax.__version__, env["backend"] == jax.default_backend()
        (True, True)
    """
    import platform
    from importlib import metadata

    import jax

    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        "packages": {name: version(name) for name in PACKAGES},
        "platform": platform.platform(),
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
    }


def validate_results(obj: Any) -> dict:
    """Check ``obj`` against the results contract; return it unchanged or raise ValueError.

    Contract: ``{"settings": dict, "methods": {NAME: entry}}``; every entry is a dict holding
    ``forget_acc, retain_acc, test_acc, mia, tow, seconds``, each a finite number or
    ``{"mean": m, "std": s}`` with s >= 0; accuracies and ``mia`` in [0, 1]; ``tow``, ``seconds`` >= 0.
    Extra keys (in ``settings``, in entries) are allowed and not checked.

    Example:
        >>> entry = {"forget_acc": 0.9, "retain_acc": 1.0, "test_acc": 0.95, "mia": 0.1, "tow": 1.0, "seconds": 12.0}
        >>> validate_results({"settings": {}, "methods": {"retrain": entry}})["methods"]["retrain"]["tow"]
        1.0
        >>> validate_results({"settings": {}, "methods": {"ft": {**entry, "forget_acc": 90.0}}})
        Traceback (most recent call last):
        ...
        ValueError: methods['ft']['forget_acc'] = 90.0 is outside [0, 1] (use fractions, not %)
    """
    if not isinstance(obj, Mapping):
        raise ValueError(f"results must be a JSON object, got {type(obj).__name__}")
    missing = [k for k in ("settings", "methods") if k not in obj]
    if missing:
        raise ValueError(f"results is missing top-level key(s) {missing}")
    if not isinstance(obj["settings"], Mapping):
        raise ValueError(f"results['settings'] must be an object, got {type(obj['settings']).__name__}")
    methods = obj["methods"]
    if not isinstance(methods, Mapping):
        raise ValueError(f"results['methods'] must be an object, got {type(methods).__name__}")
    for name, entry in methods.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"method names must be non-empty strings, got {name!r}")
        if not isinstance(entry, Mapping):
            raise ValueError(f"methods[{name!r}] must be an object, got {type(entry).__name__}")
        absent = [k for k in REQUIRED_KEYS if k not in entry]
        if absent:
            raise ValueError(f"methods[{name!r}] is missing required key(s) {absent}")
        for key in REQUIRED_KEYS:
            m = _check_value(name, key, entry[key])
            if key in ACCURACY_KEYS and not (-_TOL <= m <= 1 + _TOL):
                raise ValueError(f"methods[{name!r}][{key!r}] = {m} is outside [0, 1] (use fractions, not %)")
            if key in _NONNEG_KEYS and m < -_TOL:
                raise ValueError(f"methods[{name!r}][{key!r}] = {m} must be >= 0")
    return obj  # type: ignore[return-value]


def write_results(path, settings: Mapping, methods: Mapping, *, population: Mapping | None = None) -> str:
    """Validate and atomically write ``{"settings": settings, "methods": methods}`` as JSON (with
    ``"population": population`` when given: the population scores of ``jaxunlearn run --population N``).

    ``path`` is a directory (the file is ``path/results.json``, directories are created) or a ``.json``
    file. Values are converted with ``to_jsonable``; the object is validated (``validate_results``)
    BEFORE anything is written; the file is written to a temporary file in the same directory, fsynced
    and moved over the target with ``os.replace`` (atomic on POSIX and Windows).

    Returns:
      the path of the written file.

    Example:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> entry = {"forget_acc": 0.9, "retain_acc": 1.0, "test_acc": 0.95, "mia": 0.1, "tow": 1.0, "seconds": 12.0}
        >>> path = write_results(os.path.join(tmp.name, "run"), {"dataset": "digits"}, {"retrain": entry})
        >>> os.path.relpath(path, tmp.name), json.load(open(path))["methods"]["retrain"]["seconds"]
        ('run/results.json', 12.0)
        >>> tmp.cleanup()
    """
    if not isinstance(settings, Mapping):
        raise ValueError(f"settings must be a dict, got {type(settings).__name__}")
    if not isinstance(methods, Mapping):
        raise ValueError(f"methods must be a dict, got {type(methods).__name__}")
    obj = {"settings": to_jsonable(settings), "methods": to_jsonable(methods)}
    if population is not None:
        obj["population"] = to_jsonable(population)
    validate_results(obj)
    text = json.dumps(obj, indent=2, allow_nan=False) + "\n"
    target = results_path(path)
    _atomic.write_text(target, text)
    return target


def read_results(path) -> dict:
    """Read and validate a results file (``path`` is a run directory or a ``.json`` file).

    Raises FileNotFoundError if it does not exist and ValueError naming the file if it is not valid JSON
    or does not match the contract (see ``validate_results``).

    Example:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> entry = {"forget_acc": 0.9, "retain_acc": 1.0, "test_acc": 0.95, "mia": 0.1, "tow": 1.0, "seconds": 12.0}
        >>> _ = write_results(tmp.name, {"seeds": 1}, {"retrain": {**entry, "test_acc": np.float32(0.5)}})
        >>> read_results(tmp.name)["methods"]["retrain"]["test_acc"]
        0.5
        >>> tmp.cleanup()
    """
    target = results_path(path)
    with open(target, encoding="utf-8") as fh:
        try:
            obj = json.load(fh)
        except json.JSONDecodeError as e:
            raise ValueError(f"{target} is not valid JSON (corrupt or truncated): {e}") from e
    try:
        return validate_results(obj)
    except ValueError as e:
        raise ValueError(f"{target}: {e}") from e


def _mean_std(v) -> tuple[float | None, float | None]:
    if isinstance(v, Mapping):
        m, s = v.get("mean"), v.get("std")
        return (float(m) if _value_ok(m) else None), (float(s) if _value_ok(s) else None)
    if _value_ok(v):
        return float(v), None
    return None, None


def _ordered_methods(methods: Mapping) -> list[str]:
    names = list(methods)
    return [n for n in _FIRST if n in methods] + [n for n in names if n not in _FIRST]


def _fmt_number(x: float, percent: bool, digits: int) -> str:
    return f"{100 * x:.{digits}f}" if percent else f"{x:.{digits}g}"


def _fmt_cell(v, key: str, digits: int, retrain_seconds: float | None) -> str:
    m, s = _mean_std(v)
    if m is None:
        return "—"
    if key == "seconds":
        text = f"{m:.1f}" + (f" ± {s:.1f}" if s is not None else "")
        if retrain_seconds is not None and m > 0:
            text += f" ({retrain_seconds / m:.1f}×)"
        return text
    percent = key in _PERCENT_KEYS
    text = _fmt_number(m, percent, digits if percent else 4)
    if s is not None:
        text += " ± " + _fmt_number(s, percent, digits if percent else 4)
    return text


def markdown_table(
    results: Mapping,
    columns: Sequence[str] = REQUIRED_KEYS,
    *,
    digits: int = 1,
    headers: Mapping[str, str] | None = None,
) -> str:
    """Render results as a GitHub-markdown table, one row per method (``original``, ``retrain`` first).

    Fractions (accuracies, MIA, ToW) are shown in percent with ``digits`` decimals: ``97.3`` or
    ``97.3 ± 0.4`` for ``{"mean", "std"}``; ``seconds`` as ``12.3 (8.1×)`` where 8.1× = seconds(retrain) /
    seconds(method) is the speed-up over retraining; other columns with 4 significant digits; missing
    values as ``—``. A method whose run diverged (``diverged`` set) is marked ``name (diverged)`` and its metric
    cells read ``diverged`` (the numbers are those of the parameters the guard kept, not a result; its time is
    shown), or ``(diverged in k/n seeds)`` over several seeds (the cells read ``diverged`` when every seed did).
    A collapsed method (``"collapsed": true``: its retain accuracy fell far below the original model's, see
    :func:`jaxunlearn.runner.collapsed`) is marked ``name †``; a legend line under the table explains each mark.

    Example:
        >>> retrain = {"forget_acc": 0.9, "retain_acc": 1.0, "test_acc": 0.95, "mia": 0.1, "tow": 1.0, "seconds": 12.0}
        >>> ft = {**retrain, "forget_acc": {"mean": 0.97, "std": 0.01}, "tow": 0.93, "seconds": 3.0}
        >>> print(markdown_table({"ft": ft, "retrain": retrain}))
        | Method | FA (%) | RA (%) | TA (%) | MIA (%) | ToW (%) | Time (s) |
        |---|---:|---:|---:|---:|---:|---:|
        | retrain | 90.0 | 100.0 | 95.0 | 10.0 | 100.0 | 12.0 (1.0×) |
        | ft | 97.0 ± 1.0 | 100.0 | 95.0 | 10.0 | 93.0 | 3.0 (4.0×) |
        <BLANKLINE>

    Args:
      results: ``{"settings", "methods"}`` object or the ``methods`` dict alone.
      columns: entry keys to show, in order.
      digits: decimals for percentages.
      headers: optional header overrides key -> text.
    Returns:
      the table as a string (ending with a newline).
    """
    methods = results["methods"] if isinstance(results, Mapping) and "methods" in results else results
    if not isinstance(methods, Mapping) or not methods:
        raise ValueError("results must hold a non-empty 'methods' dict")
    columns = list(columns)
    if not columns:
        raise ValueError("columns must name at least one key")
    heads = dict(_HEADERS)
    heads.update(headers or {})
    retrain_seconds = None
    if "retrain" in methods and isinstance(methods["retrain"], Mapping):
        retrain_seconds = _mean_std(methods["retrain"].get("seconds"))[0]
        if retrain_seconds is not None and retrain_seconds <= 0:
            retrain_seconds = None
    lines = [
        "| Method | " + " | ".join(heads.get(c, c) for c in columns) + " |",
        "|---|" + "|".join("---:" for _ in columns) + "|",
    ]
    marks = set()
    for name in _ordered_methods(methods):
        entry = methods[name] if isinstance(methods[name], Mapping) else {}
        cells = [_fmt_cell(entry.get(c), c, digits, retrain_seconds) for c in columns]
        label = name + _diverged_note(entry.get("diverged"))
        if _all_diverged(entry.get("diverged")):
            cells = [cell if c == "seconds" else "diverged" for c, cell in zip(columns, cells, strict=True)]
        if label != name:
            marks.add("diverged")
        if _any_true(entry.get("collapsed")):
            label += " †"
            marks.add("collapsed")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    legend = [_LEGEND[m] for m in ("diverged", "collapsed") if m in marks]
    return "\n".join(lines) + "\n" + ("\n" + "\n".join(legend) + "\n" if legend else "")


#: The legend lines :func:`markdown_table` adds under a table with marked rows.
_LEGEND = {
    "diverged": "diverged: the method's training hit non-finite values and was stopped; its numbers are those of "
    "the last finite parameters, not a result.",
    "collapsed": "† collapsed: the method's retain accuracy fell far below the original model's (results.json "
    '"collapsed": true); its forget accuracy and ToW are not a result.',
}


def _any_true(flag) -> bool:
    if isinstance(flag, list):
        return any(bool(f) for f in flag)
    return bool(flag)


def _all_diverged(diverged) -> bool:
    """Whether every seed of an entry diverged (one report, or a list with no ``None``)."""
    if isinstance(diverged, list):
        return bool(diverged) and all(d is not None and d is not False for d in diverged)
    return diverged not in (None, False)


def _diverged_note(diverged) -> str:
    """`` (diverged)`` / `` (diverged in k/n seeds)`` for an entry whose run hit the divergence guard: its numbers
    are those of the parameters the guard kept (the last finite epoch, or the input of a direct edit)."""
    if isinstance(diverged, list):
        k = sum(d is not None and d is not False for d in diverged)
        return f" (diverged in {k}/{len(diverged)} seeds)" if k else ""
    return " (diverged)" if diverged not in (None, False) else ""


def write_text(path, text: str) -> str:
    """Write a table or note ``text`` (UTF-8) to ``path`` whole or not at all: a temporary file in the same
    directory, fsynced, then moved into place with ``os.replace``; parent directories are created.

    Example:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = write_text(os.path.join(tmp.name, "out", "table.md"), "| ToW | 0.95 |")
        >>> open(path).read(), os.listdir(os.path.dirname(path))
        ('| ToW | 0.95 |', ['table.md'])
        >>> tmp.cleanup()
    """
    return _atomic.write_text(path, text)


def save_figure(fig, path, *, dpi: int = 150, close: bool = True) -> str:
    """Save a matplotlib figure to ``path`` (format from the extension), creating parent directories.

    The image is written to a temporary file in the same directory and moved into place with
    ``os.replace``. With ``close=True`` a pyplot-managed figure is closed afterwards (figures made with
    ``matplotlib.figure.Figure`` need no closing).

    Example:
        >>> import tempfile
        >>> from matplotlib.figure import Figure
        >>> fig = Figure(figsize=(2, 2)); _ = fig.add_subplot().plot([0, 1])
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = save_figure(fig, os.path.join(tmp.name, "figs", "line.png"), dpi=50)
        >>> os.path.relpath(path, tmp.name), os.path.getsize(path) > 0
        ('figs/line.png', True)
        >>> tmp.cleanup()
    """
    path = _atomic.save_figure(fig, path, dpi=dpi)
    if close and getattr(fig.canvas, "manager", None) is not None:
        import matplotlib.pyplot as plt  # only reached for figures pyplot already manages

        plt.close(fig)
    return path


def plot_bars(
    results: Mapping,
    path,
    *,
    keys: Sequence[str] = ACCURACY_KEYS,
    title: str | None = None,
    dpi: int = 150,
) -> str:
    """Grouped bar chart: one group per metric (FA, RA, TA, MIA), one bar per method, values in percent,
    error bars = std where the value is ``{"mean", "std"}``; ``original`` and ``retrain`` come first and
    the retrain value of each metric is marked by a dashed line across its group. Methods whose run
    diverged are not drawn (their numbers are not results; a note under the axes names them; one that
    diverged in some seeds only carries the table's ``(diverged in k/n seeds)`` mark in the legend), and
    collapsed ones carry the table's ``†``.

    Example:
        >>> import tempfile
        >>> retrain = {"forget_acc": 0.9, "retain_acc": 1.0, "test_acc": 0.95, "mia": 0.1, "tow": 1.0, "seconds": 12.0}
        >>> ft = {**retrain, "forget_acc": {"mean": 0.97, "std": 0.01}}
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = plot_bars({"retrain": retrain, "ft": ft}, os.path.join(tmp.name, "bars.png"), dpi=50)
        >>> os.path.basename(path), os.path.getsize(path) > 0
        ('bars.png', True)
        >>> tmp.cleanup()

    Args:
      results: ``{"settings", "methods"}`` object or the ``methods`` dict alone.
      path: output image path; directories are created.
      keys: entry keys to plot (fractions in [0, 1]).
      title: optional title.
      dpi: resolution.
    Returns:
      ``path`` as a string.
    """
    from matplotlib.figure import Figure

    methods = results["methods"] if isinstance(results, Mapping) and "methods" in results else results
    if not isinstance(methods, Mapping) or not methods:
        raise ValueError("results must hold a non-empty 'methods' dict")
    keys = list(keys)
    if not keys:
        raise ValueError("keys must name at least one metric")
    names = [n for n in _ordered_methods(methods) if not _all_diverged(_get(methods[n], "diverged"))]
    skipped = [n for n in _ordered_methods(methods) if n not in names]
    n_m, n_k = max(1, len(names)), len(keys)
    width = 0.8 / n_m
    fig = Figure(figsize=(max(6.0, 1.2 + n_k * (0.35 * n_m + 0.6)), 4.6))
    ax = fig.add_subplot()
    colors = [f"C{i % 10}" for i in range(n_m)]
    hatches = ["", "//", "..", "xx", "\\\\", "oo", "--", "++"]
    x = np.arange(n_k)
    for i, name in enumerate(names):
        entry = methods[name] if isinstance(methods[name], Mapping) else {}
        ms = [_mean_std(entry.get(k)) for k in keys]
        heights = [100 * m if m is not None else np.nan for m, _ in ms]
        errs = [100 * s if s is not None else np.nan for _, s in ms]
        has_err = any(s is not None for _, s in ms)
        ax.bar(
            x - 0.4 + (i + 0.5) * width,
            heights,
            width,
            yerr=errs if has_err else None,
            capsize=2,
            color=colors[i],
            hatch=hatches[(i // 10) % len(hatches)],
            edgecolor="black",
            linewidth=0.4,
            label=name + _diverged_note(entry.get("diverged")) + (" †" if _any_true(entry.get("collapsed")) else ""),
        )
    if "retrain" in methods and isinstance(methods["retrain"], Mapping):
        for j, k in enumerate(keys):
            m = _mean_std(methods["retrain"].get(k))[0]
            if m is not None:
                ax.hlines(100 * m, j - 0.45, j + 0.45, colors="black", linestyles="dashed", linewidth=0.9)
    ax.set_xticks(x)
    ax.set_xticklabels([_HEADERS.get(k, k).replace(" (%)", "") for k in keys])
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="method (--- retrain)")
    if title:
        ax.set_title(title)
    notes = [f"not shown (diverged): {', '.join(skipped)}"] if skipped else []
    if any(_any_true(_get(methods[n], "collapsed")) for n in names):
        notes.append("† collapsed: retain accuracy far below the original model's, not a result")
    if notes:
        ax.text(0.0, -0.12, "; ".join(notes), transform=ax.transAxes, fontsize=8, va="top")
    fig.tight_layout()
    return save_figure(fig, path, dpi=dpi)


def _get(entry, key):
    return entry.get(key) if isinstance(entry, Mapping) else None


# ------------------------------------------------------------------------------------------------ populations

#: Columns of :func:`population_table`: (entry key, header).
POPULATION_COLUMNS = (
    ("final_score", "final"),
    ("forget_score", "forget"),
    ("epsilon_median", "median ε"),
    ("ulira_auc", "U-LiRA AUC"),
    ("ulira_tpr_at_1fpr", "TPR@1%FPR"),
    ("retain_ratio", "RA ratio"),
    ("test_ratio", "TA ratio"),
    ("forget_acc", "FA (%)"),
    ("seconds", "Time (s)"),
)
_POP_FIRST = ("original", "retrain", "retrain_independent")


def _population_methods(population: Mapping) -> tuple[Mapping, int | None]:
    methods = population.get("methods") if isinstance(population, Mapping) else None
    if not isinstance(methods, Mapping) or not methods:
        raise ValueError("population must hold a non-empty 'methods' dict (the population entry of a results file)")
    return methods, population.get("models")


def _population_order(methods: Mapping) -> list[str]:
    return [n for n in _POP_FIRST if n in methods] + [n for n in methods if n not in _POP_FIRST]


def population_table(population: Mapping, *, digits: int = 3) -> str:
    """Render a run's population scores (``results["population"]``) as a markdown table, one row per population.

    Rows: ``original`` (the models before unlearning: should score worst), ``retrain`` (the reference every other
    population is scored against: no score), ``retrain_independent`` (a second, independent Retrain population:
    what a perfect method scores at this N), then the methods. Columns: the challenge's final score (forget score ×
    RA ratio × TA ratio) and forget score, the median per-example ε, U-LiRA's AUC and TPR at 1 % FPR, the accuracy
    ratios RA_u / RA_r and TA_u / TA_r, the mean forget accuracy and the population's wall time. A method trained
    model by model (not as batches of models) is marked ``(one by one)``; ``(k diverged)`` counts models the
    divergence guard stopped.

    Example:
        >>> e = {"final_score": 0.2, "forget_score": 0.21, "epsilon_median": 1.6, "ulira_auc": 0.5,
        ...      "ulira_tpr_at_1fpr": 0.01, "retain_ratio": 1.0, "test_ratio": 0.95, "forget_acc": 0.97,
        ...      "seconds": 12.0, "batched": True}
        >>> print(population_table({"models": 8, "methods": {"ft": e, "retrain": {"forget_acc": 0.96, "seconds": 30.0,
        ...                                                                     "batched": True}}}))
        #### populations of 8 models: the challenge's score and U-LiRA against Retrain
        <BLANKLINE>
        | Population | final | forget | median ε | U-LiRA AUC | TPR@1%FPR | RA ratio | TA ratio | FA (%) | Time (s) |
        |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|
        | retrain (reference) | — | — | — | — | — | — | — | 96.0 | 30.0 |
        | ft | 0.2 | 0.21 | 1.6 | 0.5 | 0.01 | 1 | 0.95 | 97.0 | 12.0 |
        <BLANKLINE>
    """
    methods, n = _population_methods(population)
    title = f"#### populations of {n} models" if n else "#### populations"
    lines = [
        title + ": the challenge's score and U-LiRA against Retrain",
        "",
        "| Population | " + " | ".join(h for _, h in POPULATION_COLUMNS) + " |",
        "|---|" + "|".join("---:" for _ in POPULATION_COLUMNS) + "|",
    ]
    for name in _population_order(methods):
        entry = methods[name] if isinstance(methods[name], Mapping) else {}
        cells = []
        for key, _ in POPULATION_COLUMNS:
            v = entry.get(key)
            if not _value_ok(v):
                cells.append("—")
            elif key == "forget_acc":
                cells.append(f"{100 * float(v):.1f}")
            elif key == "seconds":
                cells.append(f"{float(v):.1f}")
            else:
                cells.append(f"{float(v):.{digits}g}")
        label = name + (" (reference)" if name == "retrain" else "")
        if entry.get("batched") is False:
            label += " (one by one)"
        if entry.get("diverged_models"):
            label += f" ({entry['diverged_models']} diverged)"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_epsilons(population: Mapping, path, *, title: str | None = None, dpi: int = 150) -> str:
    """Box plot of the per-example ε of each population (``entry["epsilons"]``), one box per population, with
    the challenge's buckets (0.5 wide: ε < 0.5 earns 1 point, each further 0.5 halves it) as grid lines and each
    population's final score in its label; ε = 50 (perfectly separated, capped) is drawn at the top.

    Example:
        >>> import tempfile
        >>> pop = {"models": 8, "methods": {"original": {"epsilons": [50.0, 3.1], "final_score": 0.0},
        ...                                 "ft": {"epsilons": [1.2, 1.6, 0.4], "final_score": 0.2}}}
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = plot_epsilons(pop, os.path.join(tmp.name, "eps.png"), dpi=50)
        >>> os.path.basename(path), os.path.getsize(path) > 0
        ('eps.png', True)
        >>> tmp.cleanup()
    """
    from matplotlib.figure import Figure

    methods, n = _population_methods(population)
    names = [m for m in _population_order(methods) if isinstance(methods[m], Mapping) and methods[m].get("epsilons")]
    if not names:
        raise ValueError("no population entry holds per-example 'epsilons' to plot")
    data = [np.asarray(methods[m]["epsilons"], dtype=float) for m in names]
    top = max(5.0, float(max(np.max(np.where(d >= 50.0, 0.0, d)) for d in data)) + 0.5)
    fig = Figure(figsize=(max(6.0, 0.75 * len(names) + 2.0), 4.6))
    ax = fig.add_subplot()
    shown = [np.minimum(d, top) for d in data]
    ax.boxplot(shown, showfliers=True, widths=0.6)
    for i, d in enumerate(data):
        capped = float(np.mean(d >= 50.0))
        if capped:
            ax.annotate(f"{100 * capped:.0f}% at ε=50", (i + 1, top), ha="center", va="bottom", fontsize=7)
    labels = []
    for m in names:
        score = methods[m].get("final_score")
        labels.append(m + (f"\n{float(score):.3f}" if _value_ok(score) else ""))
    ax.set_xticks(np.arange(1, len(names) + 1))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    for b in np.arange(0.5, top, 0.5):
        ax.axhline(b, color="grey", linewidth=0.4, alpha=0.5)
    ax.set_ylim(0, top * 1.08)
    ax.set_ylabel("per-example ε (vs Retrain)")
    head = f"per-example ε over the forget set, populations of {n} models" if n else "per-example ε"
    ax.set_title(head + (f"\n{title}" if title else ""), fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=dpi)
