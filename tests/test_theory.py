"""The synthetic theory experiment (``jaxunlearn.theory.run_theory`` and ``jaxunlearn theory``).

Setting for the SGD-vs-SAM claim (the run_theory defaults, fewer steps): n = 80, d = 400, ‖φ‖ = 1,
σ_p = 1, ReLU theory CNN with m = 10 filters per class (σ₀ = 0.01), full-batch GD with η = 0.5 for 200
steps, SAM ρ = 1. SGD memorizes the noise (N ≈ 6, test error ≈ 25 %), SAM learns the signal
(S ≈ 1.7 vs 0.5) with N ≈ 2 and test error ≈ 0. Budget: ~30 s on 2 CPU cores.
"""

import json
import os

import pytest

from jaxunlearn import cli
from jaxunlearn.theory import RESULT_KEYS, run_theory

TINY = dict(n=20, d=40, steps=20, unlearn_steps=10, n_test=100, phi_sweep=(0.5, 2.0), sweep_seeds=1, progress=False)
METRIC_KEYS = {
    "signal",
    "noise",
    "noise_retain",
    "noise_forget",
    "noise_forget_wrong",
    "train_acc",
    "retain_acc",
    "forget_acc",
    "forget_flipped",
    "test_error",
    "curves",
}


@pytest.mark.slow  # end to end: in the second CI step
def test_tiny_run_writes_files(tmp_path):
    res = run_theory(tmp_path / "out", **TINY)
    out = tmp_path / "out"
    for name in ("coefficients.png", "test_error_vs_signal.png"):
        data = (out / name).read_bytes()
        assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "theory.json") as f:
        saved = json.load(f)
    assert set(saved) == set(RESULT_KEYS)
    assert set(res) == set(RESULT_KEYS) | {"summary"}
    for stage in ("pretrain", "unlearn"):
        for opt in ("sgd", "sam"):
            assert METRIC_KEYS <= set(saved[stage][opt])
            curves = saved[stage][opt]["curves"]
            steps = TINY["steps"] if stage == "pretrain" else TINY["unlearn_steps"]
            assert len(curves["signal"]) == len(curves["noise"]) == steps
    assert saved["sweep"]["phi_norms"] == [0.5, 2.0]
    assert len(saved["sweep"]["sam"]["mean"]) == 2
    assert saved["settings"]["n"] == 20
    assert "SAM pretrain" in res["summary"] and "test error vs |phi|" in res["summary"]
    assert os.path.samefile(res["files"]["json"], out / "theory.json")


@pytest.mark.slow  # end to end: in the second CI step
def test_sam_memorizes_less_noise_than_sgd(tmp_path):
    res = run_theory(
        tmp_path,
        steps=200,
        unlearn_steps=20,
        phi_sweep=(1.0,),
        sweep_seeds=1,
        n_test=500,
        figures=False,
        progress=False,
    )
    sgd, sam = res["pretrain"]["sgd"], res["pretrain"]["sam"]
    assert sam["noise"] < 0.6 * sgd["noise"]
    assert sam["signal"] > 2 * sgd["signal"]
    assert sam["test_error"] < sgd["test_error"] - 0.1
    assert sgd["train_acc"] == sam["train_acc"] == 1.0
    # unlearning moves forget examples' noise to the wrong class
    for opt in ("sgd", "sam"):
        u = res["unlearn"][opt]
        assert u["noise_forget_wrong"] > u["before"]["noise_forget_wrong"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n=1), "n must be >= 2"),
        (dict(n=0), "n must be an integer >= 1"),
        (dict(d=1), "d must be >= 2"),
        (dict(steps=0), "steps must be an integer >= 1"),
        (dict(lr=0.0), "lr must be"),
        (dict(rho=0.0), "rho must be"),
        (dict(rho=-1.0), "rho must be"),
        (dict(sigma_p=0.0), "sigma_p must be"),
        (dict(phi_norm=-1.0), "phi_norm must be"),
        (dict(alpha=1.5), "alpha must be in"),
        (dict(forget_fraction=1.0), "forget_fraction must be in"),
        (dict(unlearn="neggrd"), "neggrad"),
        (dict(activation="tanh"), "activation"),
        (dict(phi_sweep=()), "phi_sweep"),
    ],
)
def test_invalid_settings(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_theory(tmp_path, progress=False, **kwargs)
    assert not (tmp_path / "theory.json").exists()


@pytest.mark.slow  # end to end: in the second CI step
def test_cli_theory(tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli.main(["theory", "--steps", "50", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "SGD pretrain" in printed and "SAM unlearn" in printed
    assert (out / "theory.json").exists() and (out / "coefficients.png").exists()


def test_cli_theory_bad_value(tmp_path, capsys):
    assert cli.main(["theory", "--steps", "0", "--out", str(tmp_path / "x")]) == 2
    assert "steps must be" in capsys.readouterr().err


def test_a_non_empty_out_is_refused_unless_overwrite(tmp_path):
    (tmp_path / "theory.json").write_text('{"kept": true}')
    with pytest.raises(ValueError, match=r"is not empty \(theory.json\); choose a new --out, or pass --overwrite"):
        run_theory(tmp_path, progress=False)
    assert (tmp_path / "theory.json").read_text() == '{"kept": true}'
