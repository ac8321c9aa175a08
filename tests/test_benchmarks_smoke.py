"""Smoke test of the benchmark harness (``benchmarks/run.py --quick``): tiny sizes, the report is written.

No timing assertions: only that every section runs and the markdown report and JSON are produced.
"""

import importlib.util
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_PSUTIL = importlib.util.find_spec("psutil") is not None


def _run(tmp_path, sections):
    from benchmarks import run as bench

    out, js = tmp_path / "RESULTS.md", tmp_path / "results.json"
    results = bench.main(["--quick", "--sections", ",".join(sections), "--out", str(out), "--json", str(js)])
    text = out.read_text()
    assert text.startswith("# jaxunlearn benchmark results")
    assert "## Targets" in text and "## Machine and versions" in text
    assert json.loads(js.read_text())["env"]["jax"]
    return results, text


@pytest.mark.slow
def test_quick_steps_and_vmap_sections(tmp_path):
    sections = ["steps", "train_many"] + (["torch", "hutchinson"] if HAS_TORCH else []) + ["limits"]
    results, text = _run(tmp_path, sections)
    # the physical-limit section: XLA's FLOP counts and the measured matmul rate
    flops = results["limits"]["flops"]
    assert flops["cnn_sam_step"] > 1.5 * flops["cnn_sgd_step"]  # SAM: two forward/backward passes
    assert flops["cnn_hvp"] > flops["cnn_grad"]  # an exact HVP does more work than a gradient
    assert flops["cnn_hutchinson"] > 2 * flops["cnn_hvp"]  # several probes
    assert results["limits"]["peak_gflops"]["jax_matmul"] > 0
    assert "## Physical limit" in text and "floor at peak" in text
    assert "SAM step / SGD step" in text
    assert results["steps"]["ratios"]["sgd_step"] == pytest.approx(1.0)
    assert results["steps"]["engine"]["sam"]["compiles"][1] == 0  # identical second run: no recompilation
    assert "train_many" in text
    if HAS_TORCH:
        assert "torch SAM / JAX SAM" in text
        assert "Hutchinson" in text
    # the report re-rendered from the raw JSON (runs nothing) has the same generated tables
    from benchmarks import run as bench

    again = tmp_path / "again.md"
    bench.main(["--from-json", str(tmp_path / "results.json"), "--out", str(again)])

    def tables(md):
        return md.split("## Analysis")[0].split("## Targets", 1)[1].strip()

    assert tables(again.read_text()) == tables(text)
    assert "re-rendered from its JSON" in again.read_text()


@pytest.mark.slow
@pytest.mark.skipif(not HAS_PSUTIL, reason="the memory section samples RSS with psutil")
def test_quick_memory_and_job_sections(tmp_path):
    results, text = _run(tmp_path, ["memory", "job"])
    assert "error" not in results["job"], results["job"].get("error")
    assert all("error" not in r for r in results["memory"]["runs"])
    assert "Default job" in text and "Memory of the curvature functions" in text
    # the job's compile time comes from results.json and stays within each method's wall time
    for label, times in results["job"]["variants"].items():
        for name, secs in times.items():
            assert 0 <= results["job"]["variants_compile"][label][name] <= secs, (label, name)
    assert "without compilation" in text and "settings: Retrain trains" in text
    # the same job at a longer pretraining, every method timed against its Retrain
    long = results["job"]["papers_length"]
    assert "error" not in long, long.get("error")
    assert long["epochs"]["pretrain"] > results["job"]["epochs"]["pretrain"]
    assert set(long["variants"]) == set(results["job"]["variants"])
    for label, times in long["variants"].items():
        assert set(times) == set(results["job"]["variants"][label])
        assert all(0 <= long["variants_compile"][label][k] <= secs for k, secs in times.items())
    assert "At the papers' pretraining length" in text and "at the papers' 2 pretraining epochs" in text
