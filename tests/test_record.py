"""The job's record ``progress.json`` (:class:`jaxunlearn.record.Progress`): entries, resume, settings, wall time."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from jaxunlearn.record import Progress


def test_progress_records_entries_and_a_resume_continues_them(tmp_path):
    out = str(tmp_path / "run")
    rec = Progress(out, {"rho": 0.1, "seeds": 1})
    with open(rec.path) as f:  # written at once, before anything is recorded
        saved = json.load(f)
    assert saved.pop("seconds") >= 0
    assert saved == {"settings_key": json.dumps({"rho": 0.1, "seeds": 1}, sort_keys=True), "entries": {}}
    key = Progress.key(0, "sgd", "ft", unlearn="sam")
    assert key == "0/sgd/sam/ft" and Progress.key(2, "sam", "retrain") == "2/sam/retrain"
    assert not rec.is_done(key)
    rec.record(key, {"forget_acc": np.float32(0.25), "diverged": None})
    assert rec.is_done(key) and not rec.is_done(Progress.key(0, "sgd", "ft", unlearn="sgd"))
    # JSON-ready on disk and in memory; no temporaries left
    assert Progress.read(out) == {key: {"forget_acc": 0.25, "diverged": None}} == rec.done
    assert sorted(os.listdir(out)) == ["progress.json", "settings.json"]
    # the same settings in another key order resume the record; a second record keeps the first
    with open(rec.path) as f:  # an earlier invocation that ran for 1000 s before it was cut off
        saved = json.load(f)
    with open(rec.path, "w") as f:
        json.dump({**saved, "seconds": 1000.0}, f)
    again = Progress(out, {"seeds": 1, "rho": 0.1}, resume=True)
    assert again.done == rec.done
    with open(rec.path) as f:  # opening a record to continue it does not rewrite it (a refused resume changes nothing)
        assert json.load(f)["seconds"] == 1000.0
    again.record("0/sgd/original", {"forget_acc": 1.0})
    assert set(Progress.read(out)) == {key, "0/sgd/original"}
    with open(rec.path) as f:  # the wall time goes on from the earlier invocations' total
        assert 1000.0 <= json.load(f)["seconds"] <= again.seconds < 1000.0 + 600
    assert rec.checkpoint_dir("seed0", "pretrain-sgd", "original") == os.path.join(
        out, "checkpoints", "seed0", "pretrain-sgd", "original"
    )


def test_progress_refuses_to_mix_two_runs(tmp_path):
    out = str(tmp_path / "run")
    Progress(out, {"rho": 0.1, "seeds": 1}).record("0/sgd/original", {"forget_acc": 1.0})
    with pytest.raises(ValueError, match=r"already holds a run; pass --resume"):
        Progress(out, {"rho": 0.1, "seeds": 1})
    with pytest.raises(ValueError, match=r"different settings.*rho was 0\.1, now 0\.3"):
        Progress(out, {"rho": 0.3, "seeds": 1}, resume=True)
    assert set(Progress.read(out)) == {"0/sgd/original"}  # a refused open leaves the record as it was
    # checkpoints without a progress record: the settings are unknown
    bare = tmp_path / "bare"
    (bare / "checkpoints" / "seed0").mkdir(parents=True)
    with pytest.raises(ValueError, match="has checkpoints but no progress.json"):
        Progress(bare, {}, resume=True)
    with pytest.raises(ValueError, match="already holds a run"):
        Progress(bare, {})
    # a damaged record is named, with what to do
    (tmp_path / "run" / "progress.json").write_text('{"entries": ')
    with pytest.raises(ValueError, match=r"progress.json is damaged .*; delete .* or choose another --out"):
        Progress(out, {"rho": 0.1, "seeds": 1}, resume=True)
    # resuming into an empty directory starts a new record
    assert Progress(tmp_path / "new", {"rho": 0.1}, resume=True).done == {}
