"""``benchmarks/accelerator.py``: the smoke mode on CPU writes a complete report, and bad flags fail in one line."""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "accelerator.py")


def _run(*args, timeout=60):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run(
        [sys.executable, SCRIPT, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout
    )


def _positive(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_smoke_on_cpu_writes_every_section(tmp_path):
    out = tmp_path / "RESULTS-cpu.md"
    p = _run("--smoke", "--out", str(out), timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "CpuDevice" in p.stdout  # jax.devices() is printed
    for part in ("(a)", "(b)", "(c)", "(d)"):  # one progress line per section, and its end
        assert sum(f"[accelerator] {part}" in line for line in p.stderr.splitlines()) == 2, p.stderr

    text = out.read_text()
    assert text.startswith("# jaxunlearn accelerator check: cpu")
    assert "--smoke" in text and "Smoke mode" in text and "jax: `" in text
    for heading in ("## (a) SAM step", "## (b) Hutchinson", "## (c) K models", "## (d) The default job"):
        assert heading in text
    assert "Failed:" not in text and "incomplete" not in text

    res = json.loads(out.with_suffix(".json").read_text())
    assert res["env"]["backend"] == "cpu" and res["env"]["mode"] == "smoke"
    sec = res["sections"]
    assert all("error" not in s for s in sec.values()), {k: s.get("error") for k, s in sec.items()}

    steps = sec["sam_step"]["models"]
    assert [r["model"] for r in steps] == ["cnn", "resnet18"]
    for r in steps:
        assert _positive(r["ratio"]), r
        assert r["flop_ratio"] is None or 1.5 < r["flop_ratio"] < 2.5  # two forward/backward passes
    assert all(_positive(r["grad_equiv"]) for r in sec["hutchinson"]["models"])
    rows = sec["train_many"]["rows"]
    assert [r["K"] for r in rows] == [1, 2, 4]
    for r in rows:
        assert _positive(r["speedup"]), r
        assert r["max_abs_diff"] < 1e-4  # row k of train_many is run k
    job = sec["job"]
    assert _positive(job["wall_s"])
    for label, methods in job["variants"].items():
        assert {"original", "retrain", "ft"} <= set(methods), label
        for name, r in methods.items():
            if name not in ("original", "retrain"):
                assert _positive(r["speedup"]) and _positive(r["speedup_without_compile"]), (label, name, r)


@pytest.mark.parametrize(
    "args, says",
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--out", "report.txt"], "must name a markdown file ending in .md"),
        (["--out", "/no/such/folder/R.md"], "does not exist"),
    ],
)
def test_bad_flags_fail_in_one_line(args, says):
    p = _run(*args)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "usage:" in lines[0], p.stderr
    assert p.stdout == ""
