"""Smoke test of ``benchmarks/sam_variants.py --quick``: every variant steps, the JSON and the marked RESULTS
section are written (and rewritten in place). No timing assertions."""

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.mark.slow
def test_quick_run_writes_json_and_replaces_its_section(tmp_path):
    from benchmarks import sam_variants as bench

    md, js = tmp_path / "RESULTS.md", tmp_path / "r.json"
    md.write_text("# results\n\nsome other section\n")
    args = ["--quick", "--repeats", "1", "--json", str(js), "--md", str(md)]
    results = bench.main(args)
    rows = results["datasets"][0]["rows"]
    assert set(bench.QUICK_VARIANTS) | set(bench.EXTRA_ROWS) == set(rows)
    assert rows["plain"]["ratio"] == pytest.approx(1.0)
    assert all(r["median_s"] > 0 and r["first_s"] > 0 for r in rows.values())
    assert json.loads(js.read_text())["datasets"][0]["dataset"] == "digits"
    text = md.read_text()
    assert text.startswith("# results\n\nsome other section\n")
    assert text.count(bench.BEGIN) == 1 and "| looksam_k5_host |" in text and "| cr |" in text
    bench.main(["--from-json", str(js), "--json", str(js), "--md", str(md)])  # re-render: replaced, not appended
    assert md.read_text().count(bench.BEGIN) == 1
    assert md.read_text().startswith("# results\n\nsome other section\n")
