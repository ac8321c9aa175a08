"""The LM job end to end on a tiny corpus and model (results, table, resume), and its settings checks."""

import json

import pytest

from jaxunlearn import lm_job, record, report
from jaxunlearn.methods import lm as lm_methods

TINY = {"people": 12, "templates": 1, "dim": 8, "depth": 1, "heads": 2, "pretrain_epochs": 2, "unlearn_epochs": 1,
        "relearn_steps": 2, "relearn_every": 1, "batch_size": 16, "progress": False}  # fmt: skip


@pytest.mark.slow
def test_job_writes_results_and_resumes(tmp_path):
    cfg = lm_job.LMJobConfig(methods=("graddiff", "npo"), optimizers=("sgd", "max"), out=str(tmp_path), **TINY)
    res = lm_job.run(cfg)
    assert set(res["variants"]) == {"sgd", "max"}
    for variant in res["variants"].values():
        assert set(variant) == {"original", "retrain", "graddiff", "npo"}
        report.validate_results({"settings": {}, "methods": variant})
        assert variant["retrain"]["tow"] == pytest.approx(1.0)
    assert res["relearn"]["sgd"]["npo"]["steps"] == [0, 1, 2]
    assert res["pretrain"]["steps"] == 2 * 6  # 2 epochs of ceil(11 people · 8 examples / 16) steps
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["methods"]["npo"]["forget_acc"] == res["methods"]["npo"]["forget_acc"]
    assert on_disk["environment"]["packages"]["jaxlib"] and on_disk["environment"]["device_count"] >= 1
    assert "| npo |" in (tmp_path / "table.md").read_text()
    again = lm_job.run(cfg, resume=True)  # every entry comes from progress.json
    assert again["methods"]["npo"]["seconds"] == res["methods"]["npo"]["seconds"]
    # the wall time covers both invocations, not only the resume that found everything done
    assert again["settings"]["wall_seconds"] >= res["settings"]["wall_seconds"] > 0


def test_a_run_is_never_mixed_with_another(tmp_path):
    """A resume with other settings is refused, and so is a new run into a folder that holds one; both before any
    training and without changing the folder."""
    cfg = lm_job.LMJobConfig(methods=("graddiff",), optimizers=("sgd",), out=str(tmp_path), **TINY)
    record.Progress(cfg.out, cfg.resume_settings()).record("0/pretrain", {"epochs": 2})
    before = (tmp_path / "progress.json").read_text()
    with pytest.raises(ValueError, match=r"different settings.*unlearn_lr was 0\.001, now 0\.01"):
        lm_job.run(cfg, resume=True, unlearn_lr=1e-2)
    with pytest.raises(ValueError, match="already holds a run; pass --resume"):
        lm_job.run(cfg)
    assert (tmp_path / "progress.json").read_text() == before


def test_an_older_record_without_settings_is_refused_on_resume(tmp_path):
    """A ``progress.json`` of entries alone (older versions) cannot have its settings checked: a resume is refused
    in one line before any training, and the file is left as it was."""
    cfg = lm_job.LMJobConfig(out=str(tmp_path), resume=True, **TINY)
    (tmp_path / "progress.json").write_text(json.dumps({"0/pretrain": {"epochs": 2}}))
    with pytest.raises(ValueError, match="written by an older version without its settings.*choose a new --out"):
        lm_job.run(cfg)
    with pytest.raises(ValueError, match="written by an older version"):  # the same line without resume
        lm_job.run(cfg, resume=False)
    assert json.loads((tmp_path / "progress.json").read_text()) == {"0/pretrain": {"epochs": 2}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["progress.json"]


def test_method_options_for_the_max_optimizer():
    cfg = lm_job.LMJobConfig(**TINY)
    assert lm_job._method_options("npo", "max", cfg)["sign"] == "max"
    assert "sign" not in lm_job._method_options("sharp_minmax", "max", cfg)
    hs = lm_job._method_options("hessian_select", "max", cfg)
    assert hs["base_options"]["sign"] == "max" and hs["base_options"]["epochs"] == 1
    # the job adds nothing to a method's own (tuned) defaults unless told to
    assert lm_job._method_options("graddiff", "min", lm_job.LMJobConfig()) == {}
    cfg = lm_job.LMJobConfig(
        methods=("hessian_select",), method_options={"hessian_select": {"base_options": {"beta": 0.5}}}
    )
    own = lm_methods.get_lm("hessian_select").defaults["base_options"]
    assert lm_job._method_options("hessian_select", "min", cfg)["base_options"] == {**own, "beta": 0.5}


def test_bad_settings():
    with pytest.raises(ValueError, match="unknown LM method"):
        lm_job.LMJobConfig(methods=("npo", "retrain"))
    with pytest.raises(ValueError, match="forget must be a fraction"):
        lm_job.LMJobConfig(forget=1.0)
    with pytest.raises(ValueError, match="forget_tokens"):
        lm_job.LMJobConfig(forget_tokens="some")
    with pytest.raises(ValueError, match="method_options names methods"):
        lm_job.LMJobConfig(methods=("npo",), method_options={"rmu": {}})
    assert lm_job.LMJobConfig(methods="npo,rmu", optimizers="sgd").methods == ("npo", "rmu")


def test_a_job_that_fails_before_its_first_entry_leaves_its_folder_as_it_was(tmp_path, monkeypatch):
    """As the image job does: a failure before anything is recorded removes the record (and the folder the job
    created), so the corrected command needs neither resume=True nor another out; a non-empty out without a run
    needs overwrite=True."""
    from jaxunlearn import engine

    def broken(*args, **kwargs):
        raise RuntimeError("pretraining failed")

    monkeypatch.setattr(engine, "train", broken)
    new = tmp_path / "new"
    with pytest.raises(RuntimeError, match="pretraining failed"):
        lm_job.run(lm_job.LMJobConfig(out=str(new), **TINY))
    assert not new.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty.*--overwrite"):
        lm_job.run(lm_job.LMJobConfig(out=str(kept), **TINY))
    with pytest.raises(RuntimeError, match="pretraining failed"):
        lm_job.run(lm_job.LMJobConfig(out=str(kept), overwrite=True, **TINY))
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]
