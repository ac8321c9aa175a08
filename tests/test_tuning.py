"""jaxunlearn.tuning: the selection criterion on constructed numbers, the bad-input errors, and small end-to-end
tunes that check the choice lies on the grid and that grid points share compiled steps."""

import math

import jax
import numpy as np
import pytest

from jaxunlearn import engine, methods, tuning
from jaxunlearn.tuning import Candidate, Criterion

REF = {"forget_acc": 1.0, "retain_acc": 1.0, "val_acc": 0.95}


def cand(lr, fa, ra, va, **kw):
    return Candidate(lr, kw.pop("epochs", None), kw.pop("options", {}), fa, ra, va, **kw)


# ------------------------------------------------------------------------------------------ criterion: class


def test_class_prefers_forgetting_then_highest_val():
    cands = [cand(0.1, 0.50, 1.0, 0.95), cand(0.3, 0.05, 0.99, 0.90), cand(1.0, 0.0, 0.99, 0.93)]
    best, ok = Criterion("class", 10).select(cands, REF)
    assert (best, ok) == (2, True)
    assert [c.status for c in cands] == ["not forgotten", "ok", "ok"]


def test_class_margin_over_chance():
    crit = Criterion("class", 10, margin=0.05)  # chance 0.1: FA up to 0.15 counts as forgotten
    assert crit.status(cand(1.0, 0.15, 1.0, 0.95), REF) == "ok"
    assert crit.status(cand(1.0, 0.16, 1.0, 0.95), REF) == "not forgotten"


def test_class_rejects_collapse_even_if_it_forgets():
    cands = [cand(3.0, 0.0, 0.28, 0.25), cand(1.0, 0.12, 0.97, 0.92)]
    best, ok = Criterion("class", 10).select(cands, REF)
    assert best == 1 and ok and cands[0].status == "collapsed"


def test_class_tie_breaks_on_retain_then_gentler_run():
    crit = Criterion("class", 10, tie=0.01)
    cands = [cand(1.0, 0.0, 0.97, 0.930), cand(0.3, 0.0, 0.99, 0.925)]  # VA tied within 0.01: RA decides
    assert crit.select(cands, REF) == (1, True)
    cands = [cand(3.0, 0.0, 0.99, 0.93), cand(0.3, 0.0, 0.99, 0.93), cand(1.0, 0.0, 0.99, 0.93)]
    assert crit.select(cands, REF) == (1, True)  # all tied: the smallest lr_scale · epochs
    cands = [cand(0.3, 0.0, 0.99, 0.93, epochs=10), cand(1.0, 0.0, 0.99, 0.93, epochs=2)]
    assert crit.select(cands, REF) == (1, True)  # 0.3 · 10 > 1 · 2


def test_ties_sized_by_the_splits_standard_error():
    """VA 0.93 vs 0.91 on 100 validation examples is within one standard error (√(.93·.07/100) ≈ 0.026): a tie,
    so the candidate at the method's default recipe (distance 0) wins; without split sizes only `tie` = 0.01
    counts and the higher VA wins."""
    crit = Criterion("class", 10)
    ref = {"forget_acc": 1.0, "retain_acc": 1.0, "val_acc": 0.93}
    cands = [cand(1.0, 0.0, 0.99, 0.91, distance=0.0), cand(3.0, 0.0, 0.99, 0.93, distance=1.1)]
    sizes = {"forget_acc": 130, "retain_acc": 1000, "val_acc": 100}
    assert crit.select(cands, ref, sizes) == (0, True)
    assert crit.select(cands, ref) == (1, True)
    assert Criterion("class", 10, se=0.0).select(cands, ref, sizes) == (1, True)
    big = {**sizes, "val_acc": 100000}  # a large split resolves 2 points
    assert crit.select(cands, ref, big) == (1, True)


def test_last_tie_goes_to_the_default_recipe_then_the_gentler_run():
    crit = Criterion("random", 10)
    cands = [cand(0.3, 0.95, 0.99, 0.94, distance=1.2), cand(1.0, 0.95, 0.99, 0.94, distance=0.0)]
    assert crit.select(cands, REF) == (1, True)
    cands = [cand(3.0, 0.95, 0.99, 0.94, distance=1.1), cand(0.3, 0.95, 0.99, 0.94, distance=1.2)]
    assert crit.select(cands, REF) == (0, True)  # closer to the default beats gentler


def test_class_fallbacks_are_flagged():
    crit = Criterion("class", 10)
    cands = [cand(0.1, 0.9, 1.0, 0.95), cand(1.0, 0.6, 0.99, 0.94), cand(3.0, 0.0, 0.1, 0.1)]
    assert crit.select(cands, REF) == (1, False)  # nothing forgets without collapsing: the lowest FA alive
    cands = [cand(1.0, 0.05, 0.9, 0.80), cand(3.0, 0.9, 0.99, 0.95)]  # forgets but VA dropped 15 points
    assert crit.select(cands, REF) == (0, False)
    cands = [cand(1.0, 0.0, 0.3, 0.2), cand(3.0, 0.0, 0.2, 0.1, diverged=True)]
    assert crit.select(cands, REF) == (0, False)  # all collapsed: the highest RA


# ----------------------------------------------------------------------------------------- criterion: random


def test_random_smallest_gap_with_val_kept():
    cands = [cand(0.1, 1.0, 1.0, 0.95), cand(1.0, 0.93, 0.98, 0.93), cand(3.0, 0.80, 0.85, 0.80)]
    best, ok = Criterion("random", 10).select(cands, REF)
    assert (best, ok) == (1, True)
    assert cands[2].status == "val drop"
    assert math.isclose(cands[0].gap, 0.05)


def test_random_gap_tie_goes_to_higher_val():
    cands = [cand(1.0, 0.945, 0.99, 0.94), cand(0.3, 0.955, 1.0, 0.95)]  # gaps 0.005 both: VA 0.95 wins
    assert Criterion("random", 10).select(cands, REF) == (1, True)


def test_random_with_a_forget_target_aims_at_it_instead_of_val():
    """A memorization forget set: the target is the held-out accuracy its scores predict (0.80), far below VA; the
    candidate nearest it wins, where the plain gap |FA − VA| would pick the gentler run (FA 0.94, VA 0.95)."""
    cands = [cand(0.3, 0.94, 1.0, 0.95), cand(1.0, 0.81, 0.99, 0.94), cand(3.0, 0.60, 0.97, 0.93)]
    assert Criterion("random", 10).select(cands, REF) == (0, True)
    best, ok = Criterion("random", 10).select(cands, {**REF, "forget_target": 0.80})
    assert (best, ok) == (1, True) and [round(c.gap, 2) for c in cands] == [0.14, 0.01, 0.2]
    # ties are sized by FA's standard error alone (the target is fixed): 0.79 and 0.82 tie on 100 forget examples
    near = [cand(1.0, 0.79, 0.99, 0.93), cand(0.3, 0.82, 1.0, 0.95)]
    sizes = {"forget_acc": 100, "retain_acc": 1000, "val_acc": 1000}
    assert Criterion("random", 10).select(near, {**REF, "forget_target": 0.80}, sizes) == (1, True)


def test_forget_target_is_the_original_forget_accuracy_minus_the_mean_score():
    assert tuning.forget_target(0.98, [0.3, 0.1]) == pytest.approx(0.78)
    assert tuning.forget_target(0.2, [0.5]) == 0.0  # clipped to [0, 1]
    for bad in ([], [float("nan")], [1.5]):
        with pytest.raises(ValueError, match="finite values in \\[-1, 1\\], one per forget example"):
            tuning.forget_target(1.0, bad)


def test_forget_target_is_the_mean_held_out_accuracy_when_given_whatever_the_original():
    """Held-out accuracies measure Retrain's forget accuracy directly: an original that fits F badly (FA₀ 0.8 on
    examples whose scores say 0.78 of a fitted model's accuracy is memorization) no longer drags the target to 0."""
    assert tuning.forget_target(0.8, [0.78, 0.78], heldout=[0.1, 0.3]) == pytest.approx(0.2)
    assert tuning.forget_target(0.8, [0.78, 0.78]) == pytest.approx(0.02)  # the score-only estimate
    assert tuning.forget_target(0.5, None, heldout=[1.0, 0.0, 0.5]) == pytest.approx(0.5)
    for bad in ([1.2], [-0.1], [float("nan")]):
        with pytest.raises(ValueError, match="held-out accuracies must be values in \\[0, 1\\]"):
            tuning.forget_target(1.0, [0.1], heldout=bad)
    with pytest.raises(ValueError, match="no held-out accuracies"):
        tuning.forget_target(1.0, [0.1], heldout=[])


def test_random_collapse_and_fallback():
    crit = Criterion("random", 10)
    cands = [cand(3.0, 0.5, 0.5, 0.5), cand(1.0, 0.8, 0.85, 0.80)]
    assert crit.select(cands, REF) == (1, False)  # nothing keeps VA: the best VA alive
    assert cands[0].status == "collapsed"
    nan = cand(1.0, float("nan"), float("nan"), float("nan"))
    assert crit.status(nan, REF) == "diverged"


def test_criterion_bad_settings():
    with pytest.raises(ValueError, match="kind must be 'class' or 'random'"):
        Criterion("high", 10)
    with pytest.raises(ValueError, match="margin must be a finite number >= 0"):
        Criterion("class", 10, margin=-0.1)
    with pytest.raises(ValueError, match="no candidates"):
        Criterion("class", 10).select([], REF)


# ------------------------------------------------------------------------------------------------ bad input


@pytest.fixture(scope="module")
def toy():
    return methods.toy_context()


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"grid": ()}, "grid is empty"),
        ({"grid": []}, "grid is empty"),
        ({"grid": (0.1, 0.0)}, "must be a finite number > 0, got 0.0"),
        ({"grid": (-1.0,)}, "must be a finite number > 0"),
        ({"grid": (float("nan"),)}, "must be a finite number > 0"),
        ({"grid": (float("inf"),)}, "must be a finite number > 0"),
        ({"grid": ("a",)}, "must be a finite number > 0"),
        ({"epochs": ()}, "epochs grid is empty"),
        ({"epochs": (0,)}, "integer >= 1"),
        ({"epochs": (1.5,)}, "integer >= 1"),
        ({"forget_kind": "everything"}, "unknown forget_kind"),
        ({"mode": "fast"}, "mode must be one of"),
        ({"options": {"nope": [1]}}, "has no option 'nope'"),
        ({"options": {"lr_scale": [1]}}, "grid= / epochs="),
    ],
)
def test_bad_input(toy, kw, match):
    args = {"x_val": toy.x[:9], "y_val": toy.y[:9], "forget_kind": "random", **kw}
    with pytest.raises(ValueError, match=match):
        tuning.tune("ft", toy, **args)


@pytest.mark.parametrize("x_val", [None, "empty"])
def test_no_validation_data(toy, x_val):
    xv = toy.x[:0] if x_val == "empty" else None
    with pytest.raises(ValueError, match="tune needs validation data"):
        tuning.tune("ft", toy, x_val=xv, y_val=toy.y[:0], forget_kind="random")


def test_mismatched_validation(toy):
    with pytest.raises(ValueError, match="x_val has 9 examples but y_val 8"):
        tuning.tune("ft", toy, x_val=toy.x[:9], y_val=toy.y[:8], forget_kind="random")


def test_direct_edit_has_no_rate(toy):
    with pytest.raises(ValueError, match="ssd edits the weights directly"):
        tuning.tune("ssd", toy, x_val=toy.x[:9], y_val=toy.y[:9], forget_kind="random", grid=(0.1,))
    with pytest.raises(ValueError, match="ssd edits the weights directly"):
        tuning.tune("ssd", toy, x_val=toy.x[:9], y_val=toy.y[:9], forget_kind="random", epochs=(2,))


def test_direct_edit_without_options_searches_its_registered_grid(toy):
    """``tune("ssd", ...)`` with no grid: the ``tune_options`` SSD registers (alpha), one candidate each."""
    res = tuning.tune("ssd", toy, x_val=toy.x[:9], y_val=toy.y[:9], forget_kind="random")
    assert [c.options["alpha"] for c in res.candidates] == list(methods.get("ssd").tune_options["alpha"])
    assert res.chosen["alpha"] in methods.get("ssd").tune_options["alpha"]


def test_register_refuses_a_tune_grid_for_an_unknown_option():
    with pytest.raises(ValueError, match="tune_options names \\['beta'\\], which are not among its defaults"):
        methods.register("bad_edit", "x", {"alpha": 1.0}, gradient_based=False, tune_options={"beta": (1, 2)})
    assert "bad_edit" not in methods.METHODS


def test_sweep_refused_for_two_phase_plan(toy):
    with pytest.raises(ValueError, match="mode='sweep' needs a one-phase plan"):
        tuning.tune("scrub", toy, x_val=toy.x[:9], y_val=toy.y[:9], forget_kind="random", grid=(0.1,), mode="sweep")


# ------------------------------------------------------------------------------------------------ end to end


def test_default_grid_and_injected_rate_match_scaled():
    ctx = methods.toy_context()
    assert tuning.default_grid("scrub", ctx) == (0.02, 0.06, 0.2, 0.6)
    base = methods.resolve_options(methods.get("neggrad"), {})["lr_scale"]  # hessian_select's rate: its base's
    assert tuning.default_grid("hessian_select", ctx) == tuple(float(f"{base * f:.6g}") for f in tuning.GRID_FACTORS)
    ga = res_default("ga")
    assert tuning.default_grid("ga", ctx) == tuple(float(f"{ga * f:.6g}") for f in (0.3, 1, 3, 10))  # its own factors
    assert tuning.default_grid("ga@x", ctx) == tuning.default_grid("ga", ctx)  # a variant keeps them
    ctx2 = methods.toy_context(options={"lr_scale": 0.5})
    assert tuning.default_grid("ft", ctx2) == (0.05, 0.15, 0.5, 1.5)  # around the rate the context sets


@pytest.mark.parametrize("bad", [(), (1.0, 0.0), (float("nan"),)])
def test_register_rejects_bad_tune_factors(bad):
    with pytest.raises(ValueError, match="tune_factors must be finite numbers > 0"):
        methods.register("my_bad_factors", "x", {"lr_scale": 1.0}, tune_factors=bad)
    assert "my_bad_factors" not in methods.METHODS


def res_default(method):
    return methods.resolve_options(methods.get(method), {})["lr_scale"]


@pytest.mark.parametrize("method", ["ft", "scrub", pytest.param("sharp_minmax", marks=pytest.mark.slow)])
def test_tune_toy_no_recompile_per_grid_point(method):
    ctx = methods.toy_context(epochs=2)
    grid = (0.05, 0.2, 1.0)
    res = tuning.tune(method, ctx, x_val=ctx.x[:12], y_val=ctx.y[:12], forget_kind="random", grid=grid)
    assert res.chosen["lr_scale"] in grid and res.options["lr_scale"] == res.chosen["lr_scale"]
    assert [c.lr_scale for c in res.candidates] == list(grid)
    assert res.candidates[grid.index(1.0)].distance == pytest.approx(abs(math.log(1.0 / res_default(method))))
    assert all(c.compiles == 0 for c in res.candidates[1:]), [c.compiles for c in res.candidates]
    assert 0 <= res.best < len(grid) and res.params is not None
    again = tuning.tune(method, ctx, x_val=ctx.x[:12], y_val=ctx.y[:12], forget_kind="random", grid=(0.1, 0.5))
    assert again.compiles == 0  # a later tune of the same method and optimizer reuses the compiled steps
    assert len(res.table()) == 3 and sum(r["chosen"] for r in res.table()) == 1


def test_tune_with_forget_scores_records_the_target_and_refuses_bad_scores():
    ctx = methods.toy_context(epochs=1)
    n = len(ctx.forget_idx)
    kw = {"x_val": ctx.x[:12], "y_val": ctx.y[:12], "grid": (0.3, 1.0)}
    scores = np.linspace(0.0, 0.4, n)
    res = tuning.tune("ft", ctx, forget_kind="high", forget_scores=scores, **kw)
    assert res.reference["forget_target"] == pytest.approx(max(0.0, res.reference["forget_acc"] - 0.2))
    assert [c.gap for c in res.candidates] == pytest.approx(
        [abs(c.forget_acc - res.reference["forget_target"]) for c in res.candidates]
    )
    with pytest.raises(ValueError, match=f"forget_scores holds 3 value\\(s\\) for {n} forget examples"):
        tuning.tune("ft", ctx, forget_kind="high", forget_scores=[0.1, 0.2, 0.3], **kw)
    with pytest.raises(ValueError, match="drop them for class forgetting"):
        tuning.tune("ft", ctx, forget_kind="class", forget_scores=scores, **kw)
    # with the held-out accuracies the target is their mean, whatever FA₀ and the scores say
    heldout = np.linspace(0.1, 0.5, n)
    res = tuning.tune("ft", ctx, forget_kind="high", forget_scores=scores, forget_heldout=heldout, **kw)
    assert res.reference["forget_target"] == pytest.approx(heldout.mean())
    assert [c.gap for c in res.candidates] == pytest.approx([abs(c.forget_acc - 0.3) for c in res.candidates])
    with pytest.raises(ValueError, match=f"forget_heldout holds 2 value\\(s\\) for {n} forget examples"):
        tuning.tune("ft", ctx, forget_kind="high", forget_heldout=[0.1, 0.2], **kw)


def test_tune_rate_matches_unlearn_with_the_chosen_options():
    """The injected rate reproduces the method run at that lr_scale (the same batches, the same updates)."""
    ctx = methods.toy_context(epochs=2)
    res = tuning.tune("neggrad", ctx, x_val=ctx.x[:12], y_val=ctx.y[:12], forget_kind="random", grid=(0.3,))
    ref = methods.unlearn("neggrad", methods.toy_context(epochs=2, options={"lr_scale": 0.3}), progress=False)
    for a, b in zip(jax.tree.leaves(res.params), jax.tree.leaves(ref.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "optimizer",
    [engine.OptimConfig(lr=0.05), engine.UNLEARN_DEFAULT.with_sam("sam", rho=0.05)],
    ids=["sgd-cosine", "adamw-sam"],
)
def test_injected_rate_matches_scaled_optimizer(optimizer):
    """A cosine schedule (a factory of the run's length) and SAM around AdamW: the injected rate equals the method
    run with ``lr_scale`` (the methods' ``scaled``)."""
    ctx = methods.toy_context(epochs=2, optimizer=optimizer)
    res = tuning.tune("ft", ctx, x_val=ctx.x[:12], y_val=ctx.y[:12], forget_kind="random", grid=(0.5,))
    ref = methods.unlearn("ft", methods.toy_context(epochs=2, optimizer=optimizer, options={"lr_scale": 0.5}),
                          progress=False)  # fmt: skip
    for a, b in zip(jax.tree.leaves(res.params), jax.tree.leaves(ref.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_tune_sweep_equals_sequential():
    ctx = methods.toy_context(epochs=2)
    kw = {"x_val": ctx.x[:12], "y_val": ctx.y[:12], "forget_kind": "random", "grid": (0.1, 1.0)}
    seq = tuning.tune("ft", ctx, mode="sequential", **kw)
    sw = tuning.tune("ft", ctx, mode="sweep", **kw)
    assert sw.mode == "sweep" and seq.mode == "sequential"
    for a, b in zip(seq.candidates, sw.candidates):
        assert abs(a.forget_acc - b.forget_acc) < 1e-6 and abs(a.val_acc - b.val_acc) < 1e-6


def test_tune_epochs_and_options_grid():
    ctx = methods.toy_context(options={"alpha": 0.99, "lr_scale": 1.0})  # the recipe the distances are taken from
    res = tuning.tune("neggrad", ctx, x_val=ctx.x[:12], y_val=ctx.y[:12], forget_kind="random", grid=(0.5,),
                      epochs=(1, 2), options={"alpha": [0.9, 0.99]})  # fmt: skip
    assert len(res.candidates) == 4
    assert {(c.epochs, c.options["alpha"]) for c in res.candidates} == {(1, 0.9), (2, 0.9), (1, 0.99), (2, 0.99)}
    assert set(res.options) == {"lr_scale", "epochs", "alpha"}
    dist = {(c.epochs, c.options["alpha"]): round(c.distance, 4) for c in res.candidates}  # lr 0.5 of 1.0, 1 epoch
    assert dist == {(1, 0.9): round(math.log(2) + 1, 4), (2, 0.9): round(math.log(2) * 2 + 1, 4),
                    (1, 0.99): round(math.log(2), 4), (2, 0.99): round(math.log(2) * 2, 4)}  # fmt: skip


@pytest.mark.slow
def test_tune_ssd_option_grid_and_hessian_select_rate():
    ctx = methods.toy_context()
    res = tuning.tune("ssd", ctx, x_val=ctx.x[:12], y_val=ctx.y[:12], forget_kind="random",
                      options={"alpha": [1.0, 1e9]})  # fmt: skip
    assert res.chosen["alpha"] in (1.0, 1e9) and "lr_scale" not in res.options
    hs = tuning.tune("hessian_select", ctx, x_val=ctx.x[:12], y_val=ctx.y[:12], forget_kind="random", grid=(0.5,))
    assert hs.options == {"base_options": {"lr_scale": 0.5}}


@pytest.mark.slow
def test_tune_digits_class_forgetting():
    """On digits (class 3 forgotten from a briefly trained cnn), GA's tuned rate forgets the class and keeps
    the others, and every grid point after the first reuses the compiled step."""
    from jaxunlearn import data, models

    ds = data.load("digits", seed=0)
    apply_fn, p, s = models.split_model(models.build("cnn", num_classes=10, input_shape=ds.input_shape, seed=0))
    dd = engine.DeviceData.from_numpy(ds.x_train, ds.y_train)
    orig = engine.train(apply_fn, p, s, dd, optimizer=engine.OptimConfig(lr=0.05), epochs=8,
                        batch_size=64, progress=False)  # fmt: skip
    f_idx = data.select_forget(ds.y_train, "class", class_id=3)
    r_idx = data.retain_indices(len(ds.y_train), f_idx)
    ctx = methods.Context(apply_fn, orig.params, orig.model_state, dd.x, dd.y, r_idx, f_idx, num_classes=10,
                          epochs=3, batch_size=64)  # fmt: skip
    res = tuning.tune("ga", ctx, x_val=ds.x_val, y_val=ds.y_val, forget_kind="class", grid=(0.01, 0.1, 0.3))
    assert res.chosen["lr_scale"] in (0.01, 0.1, 0.3)
    assert all(c.compiles == 0 for c in res.candidates[1:])
    assert res.reference["forget_acc"] > 0.9
