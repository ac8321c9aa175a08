"""Populations trained together (jaxunlearn.population) and their report (report.population_table, plot_epsilons).

Model k of a population must equal the model trained alone with the same seed (originals: ``engine.train``;
methods: ``methods.unlearn``), for batched methods with per-model preprocessing (SalUn's mask, Retrain's fresh
initialisation) and for direct edits run model by model (SSD); an interrupted population resumes to the
uninterrupted result; bad input fails with one-line errors. The tests vmap the models (``model_mode="vmap"``
compiles once whatever K; the unrolled programs, CPU's default, are tested in test_engine_many.py).
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxunlearn import engine, methods, population, report
from jaxunlearn.engine import many as many_mod
from jaxunlearn.metrics import population as pop_metrics
from jaxunlearn.plan import OptimConfig

VMAP = "vmap"


@pytest.fixture(scope="module")
def toy():
    ctx = methods.toy_context(n=60, epochs=2, batch_size=16, optimizer=OptimConfig(name="adamw", lr=0.01))
    data = engine.DeviceData(ctx.x, ctx.y)
    originals = population.train_population(ctx.apply_fn, ctx.init_fn, data, 3, optimizer=OptimConfig(lr=0.1),
                                            epochs=1, batch_size=16, seed=20, chunk=2, progress=False,
                                            model_mode=VMAP)  # fmt: skip
    return ctx, data, originals


def _assert_model_equal(pop, k, params, rtol=1e-5, atol=1e-6):
    for a, b in zip(jax.tree.leaves(pop.params), jax.tree.leaves(params)):
        np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b), rtol=rtol, atol=atol)


def test_originals_equal_separate_training_runs(toy):
    """Three originals trained in chunks of 2 and 1 (two programs): model k = engine.train from init_fn(seeds[k])."""
    ctx, data, originals = toy
    assert originals.size == 3 and originals.seeds == (20, 21, 22) and originals.info["chunks"] == 2
    assert originals.train_idx.tolist() == list(range(60)) and originals.batched
    for k, seed in enumerate(originals.seeds):
        res = engine.train(ctx.apply_fn, *ctx.init_fn(seed), data, optimizer=OptimConfig(lr=0.1), epochs=1,
                           batch_size=16, seed=seed, progress=False)  # fmt: skip
        _assert_model_equal(originals, k, res.params)
    first, second = (jax.tree.leaves(originals.params)[0][k] for k in (0, 1))
    assert not np.allclose(np.asarray(first), np.asarray(second))  # own initialisations


@pytest.mark.parametrize("method", [pytest.param("salun", marks=pytest.mark.slow), "retrain", "ssd"])
def test_unlearned_models_equal_the_method_run_alone(toy, method):
    """Model k of unlearn_population = methods.unlearn(method, ctx with original k and seed k): SalUn's mask and
    random labels come from model k, Retrain starts from its own fresh initialisation, SSD runs model by model."""
    ctx, data, originals = toy
    opts = {"alpha": 1.0} if method == "ssd" else {}
    ctx = dataclasses.replace(ctx, options=opts)
    pop = population.unlearn_population(method, ctx, originals, seeds=[3, 4, 5], progress=False, model_mode=VMAP)
    assert pop.size == 3 and pop.seeds == (3, 4, 5) and pop.batched == (method != "ssd")
    for k in range(3):
        p, s = originals.model(k)
        alone = methods.unlearn(method, dataclasses.replace(ctx, params=p, model_state=s, seed=3 + k), progress=False)
        _assert_model_equal(pop, k, alone.params)
    if method == "retrain":  # Retrain never saw the forget set
        assert set(pop.train_idx.tolist()) == set(ctx.retain_idx.tolist())
    else:
        assert pop.train_idx.tolist() == originals.train_idx.tolist()
    if method == "salun":
        assert pop.info["mask_size"] > 0 and pop.info["chunks"] == 1


class _Stop(Exception):
    pass


def test_an_interrupted_population_resumes_to_the_uninterrupted_one(toy, tmp_path, monkeypatch):
    """Interrupted in its second chunk (models 2-3 of 4), the population resumes: the first chunk restores its final
    checkpoint, the second continues from its last one, and the models equal an uninterrupted population's."""
    ctx, data, _ = toy
    originals = population.train_population(ctx.apply_fn, ctx.init_fn, data, 4, epochs=1, batch_size=16,
                                            progress=False, model_mode=VMAP)  # fmt: skip
    kw = dict(seeds=[0, 1, 2, 3], chunk=2, progress=False, model_mode=VMAP)
    ctx3 = dataclasses.replace(ctx, epochs=3)
    full = population.unlearn_population("neggrad", ctx3, originals, **kw)
    real = many_mod.Progress.epoch_end
    seen = []

    def stop_in_second_chunk(self, record):
        real(self, record)
        seen.append(record["epoch"])
        if len(seen) == 5:  # chunk 1: epochs 1-3; chunk 2: epochs 1, 2 -> interrupted at its epoch 2
            raise _Stop

    monkeypatch.setattr(many_mod.Progress, "epoch_end", stop_in_second_chunk)
    with pytest.raises(_Stop):
        population.unlearn_population("neggrad", ctx3, originals, checkpoint_dir=tmp_path, **kw)
    monkeypatch.setattr(many_mod.Progress, "epoch_end", real)
    assert sorted(os.listdir(tmp_path)) == ["models-0-1", "models-2-3"]
    again = population.unlearn_population("neggrad", ctx3, originals, checkpoint_dir=tmp_path, resume=True, **kw)
    for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(full.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_evaluate_population_confidences_and_accuracies(toy):
    ctx, _, originals = toy
    x, y = np.asarray(ctx.x), np.asarray(ctx.y)
    out = population.evaluate_population(ctx.apply_fn, originals, {"forget": (x[:7], y[:7]), "retain": (x[7:], y[7:])})
    for k in range(3):
        p, s = originals.model(k)
        logits = engine.evaluate(ctx.apply_fn, p, s, x[:7])["logits"]
        np.testing.assert_allclose(out["forget_conf"][k], pop_metrics.challenge_logit_confidence(logits, y[:7]))
        assert out["forget_acc"][k] == pytest.approx(float((logits.argmax(-1) == y[:7]).mean()))
    assert out["retain_acc"].shape == (3,) and not out["nonfinite"].any()
    broken = population.Population(jax.tree.map(lambda a: a.at[1].set(jnp.nan), originals.params),
                                   originals.model_state, originals.seeds)  # fmt: skip
    bad = population.evaluate_population(ctx.apply_fn, broken, {"forget": (x[:7], y[:7])})
    assert bad["nonfinite"].tolist() == [False, True, False] and np.isfinite(bad["forget_conf"]).all()


def test_bad_input_fails_with_one_line_errors(toy):
    ctx, data, originals = toy
    with pytest.raises(ValueError, match="at least 2 models"):
        population.train_population(ctx.apply_fn, ctx.init_fn, data, 1, epochs=1, progress=False)
    one = population.Population(*(jax.tree.map(lambda a: a[:1], t) for t in (originals.params, originals.model_state)),
                                seeds=(0,))  # fmt: skip
    with pytest.raises(ValueError, match="at least 2 models"):
        population.unlearn_population("ft", ctx, one, progress=False)
    never = dataclasses.replace(originals, train_idx=np.arange(30))  # the forget set is 48..59
    with pytest.raises(ValueError, match="12 examples the original models never trained on"):
        population.unlearn_population("ft", ctx, never, progress=False)
    x_f, y_f = np.asarray(ctx.x)[ctx.forget_idx], np.asarray(ctx.y)[ctx.forget_idx]
    with pytest.raises(ValueError, match="sample deletion only"):
        population.unlearn_population("ft", dataclasses.replace(ctx, corrected=(x_f, y_f)), originals, progress=False)
    with pytest.raises(ValueError, match="one seed per model"):
        population.unlearn_population("ft", ctx, originals, seeds=[1, 2], progress=False)
    with pytest.raises(ValueError, match="needs 3 seeds"):
        population.Population(originals.params, originals.model_state, seeds=(1, 2))
    with pytest.raises(ValueError, match="unknown method"):
        population.unlearn_population("nope", ctx, originals, progress=False)
    with pytest.raises(ValueError, match="must be a jaxunlearn.population.Population"):
        population.unlearn_population("ft", ctx, originals.params, progress=False)


def test_chunks_split_the_models_evenly_over_programs_and_devices():
    chunks = population._chunks
    assert [len(c) for c in chunks(10, 4, None)] == [4, 3, 3]
    assert [list(c) for c in chunks(5, 5, None)] == [[0, 1, 2, 3, 4]]
    assert [c.start for c in chunks(64, 16, None)] == [0, 16, 32, 48]
    with pytest.raises(ValueError, match="positive multiple"):
        chunks(8, 0, None)


# ------------------------------------------------------------------------------------------------ report


def _entry(score, eps):
    return {"final_score": score, "forget_score": score, "epsilon_median": float(np.median(eps)), "ulira_auc": 0.5,
            "ulira_tpr_at_1fpr": 0.01, "retain_ratio": 1.0, "test_ratio": 1.0, "forget_acc": 0.9, "seconds": 1.0,
            "batched": True, "epsilons": list(eps), "diverged_models": 0}  # fmt: skip


def test_population_table_orders_the_reference_rows_first_and_marks_how_models_ran():
    pop = {
        "models": 16,
        "methods": {
            "ssd": {**_entry(0.1, [1.0]), "batched": False},
            "ga": {**_entry(0.05, [3.0]), "diverged_models": 2},
            "retrain_independent": _entry(0.19, [1.6]),
            "retrain": {"forget_acc": 0.9, "seconds": 2.0, "batched": True},
            "original": _entry(0.0, [50.0]),
        },
    }
    text = report.population_table(pop)
    rows = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1:] == ["original", "retrain (reference)", "retrain_independent", "ssd (one by one)", "ga (2 diverged)"]
    assert "populations of 16 models" in text
    with pytest.raises(ValueError, match="non-empty 'methods'"):
        report.population_table({"models": 3})


def test_plot_epsilons_writes_a_figure_and_needs_epsilons(tmp_path):
    pop = {"models": 8, "methods": {"original": _entry(0.0, [50.0, 50.0]), "ft": _entry(0.2, [0.3, 1.2, 2.0])}}
    path = report.plot_epsilons(pop, tmp_path / "eps.png", title="variant")
    assert os.path.getsize(path) > 0
    with pytest.raises(ValueError, match="no population entry holds"):
        report.plot_epsilons({"models": 8, "methods": {"retrain": {"forget_acc": 0.9}}}, tmp_path / "none.png")


def test_write_results_keeps_the_population_entry(tmp_path):
    entry = {"forget_acc": 0.9, "retain_acc": 1.0, "test_acc": 0.95, "mia": 0.1, "tow": 1.0, "seconds": 12.0}
    pop = {"models": 8, "methods": {"ft": _entry(0.2, [1.0])}}
    path = report.write_results(tmp_path, {"x": 1}, {"retrain": entry}, population=pop)
    assert report.read_results(path)["population"]["methods"]["ft"]["final_score"] == 0.2


# ------------------------------------------------------------------------------------------------ sanity


@pytest.mark.slow  # trains four populations of 8 MLPs on digits (about a minute)
def test_sanity_the_originals_score_worst_and_an_independent_retrain_near_the_best():
    """24 mislabelled digits are the forget set: the originals memorize their wrong labels, Retrain never sees
    them. Against a Retrain population, the originals must score worst (their confidences on the forget set are
    separable from Retrain's: ε at the cap, U-LiRA near-perfect) and a second, independent Retrain population near
    the best: in the same-law band of ``challenge_forget_score`` (ε ≈ log 3 … log 5, 1/8 to 1/4 point), U-LiRA at
    chance."""
    from jaxunlearn import data, models
    from jaxunlearn.plan import UNLEARN_DEFAULT

    ds = data.load("digits", seed=0, max_train=400)
    rng = np.random.default_rng(0)
    y = ds.y_train.copy()
    forget = np.arange(24)
    y[forget] = (y[forget] + rng.integers(1, 10, forget.size)) % 10  # a wrong label each
    retain = np.arange(24, len(y))
    dd = engine.DeviceData.from_numpy(ds.x_train, y)

    def init_fn(seed):
        return models.split_model(models.build("mlp", num_classes=10, input_shape=(8, 8, 1), hidden=(128,), seed=seed))[
            1:
        ]

    apply_fn = models.split_model(models.build("mlp", num_classes=10, input_shape=(8, 8, 1), hidden=(128,)))[0]
    pre = OptimConfig(lr=0.1)
    kw = dict(progress=False, model_mode=VMAP)
    originals = population.train_population(apply_fn, init_fn, dd, 8, optimizer=pre, epochs=40, batch_size=32,
                                            seed=1, **kw)  # fmt: skip
    ctx = methods.Context(apply_fn, *originals.model(0), dd.x, dd.y, retain, forget, 10, optimizer=UNLEARN_DEFAULT,
                          epochs=3, batch_size=32, init_fn=init_fn, pretrain_optimizer=pre,
                          pretrain_epochs=40)  # fmt: skip
    pops = {
        "retrain": population.unlearn_population("retrain", ctx, originals, seeds=range(100, 108), **kw),
        "retrain_independent": population.unlearn_population("retrain", ctx, originals, seeds=range(200, 208), **kw),
        "ft": population.unlearn_population("ft", ctx, originals, seeds=range(300, 308), **kw),
        "original": originals,
    }
    splits = {"forget": (ds.x_train[forget], y[forget]), "retain": (ds.x_train[retain], y[retain]),
              "test": (ds.x_test, ds.y_test)}  # fmt: skip
    ev = {k: population.evaluate_population(apply_fn, p, splits) for k, p in pops.items()}
    assert ev["original"]["forget_acc"].mean() > 0.6 > 0.2 > ev["retrain"]["forget_acc"].mean()  # memorized / not
    ref = ev["retrain"]
    scores = {
        k: pop_metrics.population_scores(
            e["forget_conf"],
            ref["forget_conf"],
            unlearned_retain_acc=e["retain_acc"],
            retrained_retain_acc=ref["retain_acc"],
            unlearned_test_acc=e["test_acc"],
            retrained_test_acc=ref["test_acc"],
        )  # fmt: skip
        for k, e in ev.items()
        if k != "retrain"
    }
    final = {k: s["final_score"] for k, s in scores.items()}
    assert final["original"] == min(final.values()) and final["original"] < 0.05  # worst (FT may tie: not forgotten)
    assert scores["original"]["ulira_auc"] > 0.9
    assert max(final, key=final.get) == "retrain_independent"
    assert 1 / 8 - 0.05 < scores["retrain_independent"]["forget_score"] < 1 / 4 + 0.05
    assert 0.3 < scores["retrain_independent"]["ulira_auc"] < 0.7
