"""Tests for jaxunlearn.report (results.json, markdown tables, figures)."""

import json
import os

import jax.numpy as jnp
import matplotlib.image as mpimg
import numpy as np
import pytest

from jaxunlearn import _atomic, report


def _entry(fa, ra, ta, mia, tow, sec, **extra):
    return dict(forget_acc=fa, retain_acc=ra, test_acc=ta, mia=mia, tow=tow, seconds=sec, **extra)


@pytest.fixture
def methods():
    return {
        "sharp_minmax": _entry(
            {"mean": np.float32(0.91), "std": 0.012},
            0.99,
            0.94,
            0.2,
            0.97,
            {"mean": 3.0, "std": 0.5},
            es=np.float64(2.5),
        ),
        "retrain": _entry(0.9, 1.0, 0.95, 0.15, 1.0, 30.0),
        "original": _entry(jnp.float32(1.0), 1.0, 0.95, 0.02, np.float32(0.9), np.int64(28)),
        "ft": _entry(0.99, 1.0, 0.95, 0.05, 0.9, 6.0, curve=np.arange(3), bad=float("nan")),
    }


def test_roundtrip_and_conversion(tmp_path, methods):
    settings = {"dataset": "digits", "seeds": np.int32(3), "rho": np.float32(0.1), "out": tmp_path}
    path = report.write_results(tmp_path / "run", settings, methods)
    assert path == os.path.join(str(tmp_path / "run"), "results.json")
    res = report.read_results(tmp_path / "run")
    assert set(res) == {"settings", "methods"}
    assert res["settings"]["seeds"] == 3 and isinstance(res["settings"]["seeds"], int)
    assert res["settings"]["rho"] == pytest.approx(0.1)
    assert res["settings"]["out"] == str(tmp_path)
    assert list(res["methods"]) == list(methods)
    sm = res["methods"]["sharp_minmax"]
    assert sm["forget_acc"]["mean"] == pytest.approx(0.91) and sm["forget_acc"]["std"] == pytest.approx(0.012)
    assert sm["es"] == 2.5 and type(sm["es"]) is float
    assert res["methods"]["ft"]["curve"] == [0, 1, 2] and res["methods"]["ft"]["bad"] is None
    assert res["methods"]["original"]["seconds"] == 28
    # Explicit .json path works too, and the file is strict JSON.
    p2 = report.write_results(tmp_path / "x.json", {}, methods)
    with open(p2) as fh:
        json.loads(fh.read(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))


def test_atomic_write_leaves_no_temp_files_and_keeps_old_file_on_failure(tmp_path, methods, monkeypatch):
    d = tmp_path / "run"
    report.write_results(d, {"v": 1}, methods)
    report.write_results(d, {"v": 2}, methods)  # overwrite
    assert sorted(os.listdir(d)) == ["results.json"]
    assert report.read_results(d)["settings"]["v"] == 2
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(d / "results.json").st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0o600
    # Invalid content is rejected before touching the file.
    bad = dict(methods, ft=_entry(1.5, 1.0, 0.9, 0.1, 0.9, 1.0))
    with pytest.raises(ValueError, match="forget_acc"):
        report.write_results(d, {"v": 3}, bad)
    # A failure at the final rename leaves the old file intact and no temporary file behind.

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(report.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        report.write_results(d, {"v": 4}, methods)
    monkeypatch.undo()
    assert sorted(os.listdir(d)) == ["results.json"]
    assert report.read_results(d)["settings"]["v"] == 2


def test_validation_errors(tmp_path, methods):
    good = {"settings": {}, "methods": {"retrain": _entry(0.9, 1.0, 0.95, 0.1, 1.0, 3.0)}}
    assert report.validate_results(good) is good
    for key in report.REQUIRED_KEYS:
        entry = dict(good["methods"]["retrain"])
        del entry[key]
        with pytest.raises(ValueError, match=key):
            report.validate_results({"settings": {}, "methods": {"m": entry}})
    with pytest.raises(ValueError, match="outside"):
        report.validate_results({"settings": {}, "methods": {"m": _entry(97.3, 1.0, 0.9, 0.1, 1.0, 1.0)}})
    with pytest.raises(ValueError, match="mia"):
        report.validate_results({"settings": {}, "methods": {"m": _entry(0.9, 1.0, 0.9, -0.1, 1.0, 1.0)}})
    with pytest.raises(ValueError, match="seconds"):
        report.validate_results({"settings": {}, "methods": {"m": _entry(0.9, 1.0, 0.9, 0.1, 1.0, -2.0)}})
    with pytest.raises(ValueError, match="std"):
        report.validate_results(
            {"settings": {}, "methods": {"m": _entry({"mean": 0.9, "std": -0.1}, 1.0, 0.9, 0.1, 1.0, 1.0)}}
        )
    with pytest.raises(ValueError, match="mean"):
        report.validate_results({"settings": {}, "methods": {"m": _entry({"mean": 0.9}, 1.0, 0.9, 0.1, 1.0, 1.0)}})
    with pytest.raises(ValueError, match="finite"):
        report.validate_results({"settings": {}, "methods": {"m": _entry(None, 1.0, 0.9, 0.1, 1.0, 1.0)}})
    with pytest.raises(ValueError, match="settings"):
        report.validate_results({"methods": {}})
    with pytest.raises(ValueError, match="methods"):
        report.validate_results({"settings": {}, "methods": []})
    with pytest.raises(ValueError, match="settings"):
        report.write_results(tmp_path, [1], methods)
    with pytest.raises(TypeError):
        report.write_results(tmp_path, {"f": object()}, methods)
    # Corrupt and mismatched files on disk.
    (tmp_path / "trunc").mkdir()
    (tmp_path / "trunc" / "results.json").write_text('{"settings": {}, "meth')
    with pytest.raises(ValueError, match="not valid JSON"):
        report.read_results(tmp_path / "trunc")
    (tmp_path / "wrong.json").write_text(json.dumps({"settings": {}, "methods": {"a": {"forget_acc": 0.5}}}))
    with pytest.raises(ValueError, match="wrong.json.*missing"):
        report.read_results(tmp_path / "wrong.json")
    with pytest.raises(FileNotFoundError):
        report.read_results(tmp_path / "nowhere")


def test_markdown_table(methods):
    res = {"settings": {}, "methods": report.to_jsonable(methods)}
    table = report.markdown_table(res)
    lines = table.strip().splitlines()
    assert len(lines) == 2 + len(methods)
    assert lines[0].startswith("| Method |") and "FA (%)" in lines[0] and "Time (s)" in lines[0]
    assert set(lines[1].replace("|", "").replace("-", "").replace(":", "").strip()) == set()
    rows = [line.split("|")[1].strip() for line in lines[2:]]
    assert rows[:2] == ["original", "retrain"] and sorted(rows[2:]) == ["ft", "sharp_minmax"]
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines[2:]}
    fa = methods["sharp_minmax"]["forget_acc"]
    assert cells["sharp_minmax"][0] == f"{100 * float(fa['mean']):.1f} ± {100 * fa['std']:.1f}"
    assert cells["retrain"][2] == f"{100 * 0.95:.1f}"
    assert cells["ft"][5] == f"6.0 ({30.0 / 6.0:.1f}×)"
    assert cells["retrain"][5] == "30.0 (1.0×)"
    assert cells["sharp_minmax"][5].startswith("3.0 ± 0.5 (")
    # Custom columns, missing values and non-percent columns.
    t2 = report.markdown_table(res["methods"], columns=("test_acc", "es"), digits=2)
    l2 = {line.split("|")[1].strip(): line for line in t2.strip().splitlines()[2:]}
    assert "| 2.5 |" in l2["sharp_minmax"] and "—" in l2["retrain"] and "95.00" in l2["retrain"]
    with pytest.raises(ValueError):
        report.markdown_table({"settings": {}, "methods": {}})


def _rows(table: str) -> dict:
    """``{label: [cells]}`` of a markdown table's body rows (legend lines below the table are not rows)."""
    rows = [line for line in table.strip().splitlines()[2:] if line.startswith("|")]
    return {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]] for r in rows}


def test_markdown_table_marks_diverged_methods(methods):
    ms = report.to_jsonable(methods)
    ms["ft"]["diverged"] = {"epoch": 2, "reason": "non-finite loss or parameters"}  # one seed
    ms["sharp_minmax"]["diverged"] = [None, {"epoch": 0, "reason": "x"}, None]  # three seeds
    ms["retrain"]["diverged"] = [None, None, None]
    table = report.markdown_table(ms)
    rows = _rows(table)
    assert sorted(rows) == ["ft (diverged)", "original", "retrain", "sharp_minmax (diverged in 1/3 seeds)"]
    # a diverged entry's numbers (the original model's, kept by the guard) are not shown as results; its time is
    assert rows["ft (diverged)"][:5] == ["diverged"] * 5 and rows["ft (diverged)"][5].startswith("6.0")
    assert rows["sharp_minmax (diverged in 1/3 seeds)"][0] == "91.0 ± 1.2"  # partly diverged: numbers, marked
    assert "diverged: the method's training hit non-finite values" in table.splitlines()[-1]


def test_markdown_table_marks_collapsed_methods():
    """A constructed results dict: ft collapsed (retain accuracy 10 %), ga diverged with a high ToW, neggrad fine."""
    ms = {
        "original": _entry(1.0, 0.99, 0.95, 0.02, 0.9, 20.0, diverged=None, collapsed=False),
        "retrain": _entry(0.9, 0.99, 0.95, 0.15, 1.0, 30.0, diverged=None, collapsed=False),
        "ft": _entry(0.1, 0.10, 0.1, 0.9, 0.1, 3.0, diverged=None, collapsed=True),
        "ga": _entry(1.0, 0.99, 0.95, 0.02, 0.983, 2.0, diverged={"epoch": 1, "reason": "x"}, collapsed=False),
        "neggrad": _entry(0.9, 0.97, 0.94, 0.1, 0.96, 4.0, diverged=None, collapsed=False),
        "scrub": _entry(0.5, 0.6, 0.5, 0.5, 0.5, 4.0, diverged=None, collapsed=[False, True]),  # one seed of two
    }
    table = report.markdown_table({"settings": {}, "methods": ms})
    rows = _rows(table)
    assert set(rows) == {"original", "retrain", "ft †", "ga (diverged)", "neggrad", "scrub †"}
    assert rows["ft †"][1] == "10.0"  # collapsed: the numbers stay, marked
    assert "98.3" not in table and rows["ga (diverged)"][4] == "diverged"  # the diverged ToW is not shown
    legend = table.strip().splitlines()[-2:]
    assert legend[0].startswith("diverged:") and legend[1].startswith("† collapsed:")
    # no marks: no legend
    plain = report.markdown_table({"neggrad": ms["neggrad"], "retrain": ms["retrain"]})
    assert plain.endswith("|\n") and "†" not in plain


def test_collapse_guard_threshold():
    from jaxunlearn import runner

    orig = {"retain_acc": 0.99}
    assert runner.COLLAPSE_DROP == 0.20
    assert not runner.collapsed({"retain_acc": 0.80}, orig)  # 19 points below
    assert runner.collapsed({"retain_acc": 0.78}, orig)  # 21 points below
    assert runner.collapsed({"retain_acc": 0.90}, orig, drop=0.05)
    ref = {"forget_acc": 0.8, "retain_acc": 0.99, "test_acc": 0.9, "mia": 0.3, "seconds": 20.0}
    done = {
        runner.Progress.key(0, "sgd", "original"): {**ref, "forget_acc": 1.0},
        runner.Progress.key(0, "sgd", "retrain"): ref,
        runner.Progress.key(0, "sgd", "ft", unlearn="sgd"): {**ref, "retain_acc": 0.1, "seconds": 2.0},
        runner.Progress.key(0, "sgd", "ga", unlearn="sgd"): {**ref, "seconds": 2.0},
    }
    out = runner.variant_entries(done, 0, "sgd", "sgd", ["ft", "ga"], ref)
    assert [out[k]["collapsed"] for k in ("original", "retrain", "ft", "ga")] == [False, False, True, False]


def test_bars_leave_out_diverged_methods_and_mark_collapsed_ones(tmp_path, methods, monkeypatch):
    ms = report.to_jsonable(methods)
    ms["ft"]["diverged"] = {"epoch": 0, "reason": "x"}
    ms["sharp_minmax"]["collapsed"] = True
    figs = []
    real = report.save_figure
    monkeypatch.setattr(report, "save_figure", lambda fig, path, **kw: figs.append(fig) or real(fig, path, **kw))
    report.plot_bars(ms, tmp_path / "bars.png")
    legend = [t.get_text() for ax in figs[0].axes for t in (ax.get_legend().get_texts() if ax.get_legend() else [])]
    assert legend == ["original", "retrain", "sharp_minmax †"]  # ft's bars (the original model's) are not drawn
    notes = " ".join(t.get_text() for ax in figs[0].axes for t in ax.texts)
    assert "not shown (diverged): ft" in notes and "† collapsed" in notes


def test_figures(tmp_path, methods):
    res = {"settings": {}, "methods": report.to_jsonable(methods)}
    path = tmp_path / "a" / "b" / "bars.png"
    assert report.plot_bars(res, path, title="toy") == str(path)
    img = mpimg.imread(path)
    assert img.ndim == 3 and path.stat().st_size > 0
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    out = report.save_figure(fig, tmp_path / "new" / "dir" / "line.png")
    assert os.path.getsize(out) > 0 and not plt.fignum_exists(fig.number)
    assert sorted(os.listdir(tmp_path / "new" / "dir")) == ["line.png"]
    with pytest.raises(ValueError):
        report.plot_bars({"settings": {}, "methods": {}}, tmp_path / "x.png")


def test_write_text_replaces_the_file_whole_and_keeps_the_old_one_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "tables" / "table.md"
    report.write_text(path, "old\n")
    report.write_text(path, "new\n")
    assert path.read_text() == "new\n" and sorted(os.listdir(path.parent)) == ["table.md"]

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(report.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        report.write_text(path, "lost\n")
    monkeypatch.undo()
    assert path.read_text() == "new\n" and sorted(os.listdir(path.parent)) == ["table.md"]


def test_atomic_npz_is_whole_or_not_there(tmp_path, monkeypatch):
    """``_atomic.save_npz`` (memorization caches): the arrays read back as written, and a write that fails leaves
    the previous file and no temporary file behind."""
    path = tmp_path / "mem.npz"
    _atomic.save_npz(path, scores=np.array([0.5, -0.1]), heldout=np.array([0.25, 1.0]))
    with np.load(path) as z:
        assert z["scores"].tolist() == [0.5, -0.1] and z["heldout"].tolist() == [0.25, 1.0]

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        _atomic.save_npz(path, scores=np.zeros(2), heldout=np.zeros(2))
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["mem.npz"]
    with np.load(path) as z:
        assert z["heldout"].tolist() == [0.25, 1.0]


def test_environment_names_the_versions_and_devices_a_result_was_computed_with():
    from importlib import metadata

    import jax

    env = report.environment()
    assert env["packages"]["jaxlib"] == metadata.version("jaxlib")
    assert env["packages"]["numpy"] == np.__version__
    assert set(env["packages"]) == set(report.PACKAGES)
    assert env["device_count"] == jax.device_count() and env["device_kind"] == jax.devices()[0].device_kind
    json.dumps(env)  # plain JSON, as results.json needs it
