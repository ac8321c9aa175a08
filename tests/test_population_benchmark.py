"""Smoke test of the population benchmark (``benchmarks/population.py --quick``): tiny sizes, the report is written.

No timing assertions: every contender runs for each K, the population's models equal the sequential ones, and
the markdown report and the JSON are produced.
"""

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.mark.slow
def test_quick_population_benchmark(tmp_path):
    from benchmarks import population as bench

    out, js = tmp_path / "RESULTS-population.md", tmp_path / "results-population.json"
    results = bench.main(["--quick", "--out", str(out), "--json", str(js)])
    rows = results["population"]["rows"]
    assert [r["K"] for r in rows] == [2, 4, 8]
    for r in rows:
        assert set(r["timings"]) == {"sequential", "population", "population_vmap", "population_vmap_all"}
        assert all(v["median_s"] > 0 for v in r["timings"].values())
        assert r["max_abs_diff"] < 1e-4  # row k of the population is the sequential model k
    text = out.read_text()
    assert text.startswith("# jaxunlearn population benchmark") and "models / s" in text
    assert "## Physical limit" in text
    assert json.loads(js.read_text())["env"]["jax"]
