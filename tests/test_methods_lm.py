"""LM unlearning methods on the shared engine: every method × optimizer runs, objectives move the right way,
masks restrict updates, Retrain starts fresh, bad inputs fail clearly.

The runs share one module-wide cache (:func:`_run`): a method run under one optimizer with the same options
is trained once and read by every test that needs it, and equal runs share the engine's compiled steps, so
the module compiles each (method, optimizer) pair at most once, on a one-block GPT of width 8."""

import dataclasses

import jax
import numpy as np
import pytest

from jaxunlearn import methods, models
from jaxunlearn.data.facts import make_facts
from jaxunlearn.methods import lm
from jaxunlearn.metrics import lm as M
from jaxunlearn.plan import optimizer_kind


@pytest.fixture(scope="module")
def ctx():
    """6 people, one paraphrase each (48 examples, one person forgotten), a 1-block GPT of width 8; 3 epochs."""
    corpus = make_facts(6, heldout=0.0, templates=1, seed=0)
    arrays = corpus.arrays()
    t = arrays["x"].shape[1]

    def build(s):
        m = models.build("gpt", num_classes=corpus.tokenizer.vocab_size, input_shape=(t,), seed=s, dim=8, depth=1,
                         heads=2)  # fmt: skip
        return models.split_model(m)

    apply_fn, params, state = build(0)
    split = corpus.split([0])
    return lm.LMContext(apply_fn, params, state, arrays, split.retain_idx, split.forget_idx, epochs=3, batch_size=8,
                        pretrain_epochs=1, init_fn=lambda s: build(s)[1:])  # fmt: skip


_RUNS: dict = {}


def _run(ctx, name, kind="sgd", **opts):
    """``lm.unlearn(name)`` under the optimizer ``kind`` (``max``: SAM with the phase's sign ``max``), cached."""
    key = (name, kind, repr(sorted(opts.items())))
    if key not in _RUNS:
        opt = optimizer_kind("sam" if kind == "max" else kind, lm.LM_UNLEARN_DEFAULT, rho=0.05)
        _RUNS[key] = lm.unlearn(name, dataclasses.replace(ctx, optimizer=opt, options=opts), progress=False)
    return _RUNS[key]


#: the options of the runs: a high rate, so 3 epochs move the tiny model measurably
FAST = {"lr_scale": 5.0}
#: NPO / SimNPO without their retain term: the forget objective alone
FORGET_ONLY = {"lr_scale": 5.0, "retain_weight": 0.0}


def _forget_loss(c, params):
    return float(M.example_stats(c.apply_fn, params, c.model_state, c.data, c.forget_idx)["loss"].mean())


def test_registry_is_separate_and_complete():
    assert {"grad_ascent", "graddiff", "npo", "simnpo", "rmu", "sharp_minmax", "hessian_select", "retrain",
            "finetune"} <= set(lm.LM_METHODS)  # fmt: skip
    assert "npo" not in methods.METHODS  # the image job's registry is untouched
    covered = {m for names in COVER.values() for m in names}
    assert covered == {"grad_ascent", "graddiff", "npo", "simnpo", "rmu", "sharp_minmax", "hessian_select"}
    with pytest.raises(ValueError, match="Did you mean 'npo'"):
        lm.get_lm("nop")


SLOW = pytest.mark.slow


@pytest.mark.parametrize("name", ["grad_ascent", *(pytest.param(n, marks=SLOW) for n in ("graddiff", "npo", "simnpo"))])
def test_forget_objectives_raise_the_forget_loss(ctx, name):
    res = _run(ctx, name, **(FAST if name in ("grad_ascent", "graddiff") else FORGET_ONLY))
    assert res.diverged is None
    assert _forget_loss(ctx, res.params) > _forget_loss(ctx, ctx.params)


@pytest.mark.slow
def test_rmu_steers_the_forget_states(ctx):
    from jaxunlearn import objectives
    from jaxunlearn.models.gpt import layer_hidden

    hp = lm.get_lm("rmu").recipe(dataclasses.replace(ctx, options={**FAST, "layer": 1, "epochs": 30})).plan.hp
    f = {k: v[ctx.forget_idx] for k, v in ctx.data.items()}

    def dist(p):
        h = layer_hidden(ctx.apply_fn(p, ctx.model_state, f["x"], features=True)[0], 1)
        return float(objectives.masked_mse(h, hp["steer"] * hp["u"], f["valid"]))

    res = _run(ctx, "rmu", **FAST, layer=1, epochs=30)
    assert dist(res.params) < dist(ctx.params)


#: every method and every optimizer kind at least once, each method under a different kind than its neighbour (the
#: full 7 × 4 matrix compiles 28 step sets; the LM job's test and experiments/lm_facts.py run every method with
#: plain AdamW and SAM)
COVER = {
    "sgd": ("grad_ascent", "rmu"),
    "sam": ("graddiff", "sharp_minmax"),
    "asam": ("npo", "hessian_select"),
    "max": ("simnpo", "grad_ascent"),
}


def _cover_options(name, kind):
    """The options of a :data:`COVER` run, equal to the other tests' runs of the method where they overlap."""
    if name == "hessian_select":  # the exact Hessian diagonal (the model is below exact_limit) over 4 examples
        return {"num_probes": 2, "max_examples": 4, "base_options": {"sign": "max"} if kind == "max" else {}}
    opts = dict(FORGET_ONLY if name in ("npo", "simnpo") else FAST)
    if name == "rmu":  # the same run as test_rmu_steers_the_forget_states
        opts.update(layer=1, epochs=30)
    if name == "sharp_minmax":
        opts = {}
    if kind == "max" and "sign" in lm.get_lm(name).defaults:
        opts["sign"] = "max"
    return opts


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(COVER))
def test_every_method_and_every_optimizer_run(ctx, kind):
    for name in COVER[kind]:
        res = _run(ctx, name, kind, **_cover_options(name, kind))
        leaves = jax.tree.leaves(res.params)
        assert res.diverged is None and all(bool(np.isfinite(np.asarray(a)).all()) for a in leaves), name
        moved = max(
            float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(leaves, jax.tree.leaves(ctx.params))
        )
        assert moved > 0, name


@pytest.mark.slow
def test_sam_changes_the_update(ctx):
    plain, sam = _run(ctx, "graddiff", "sgd", **FAST), _run(ctx, "graddiff", "sam", **FAST)
    diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
               for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(sam.params)))  # fmt: skip
    assert diff > 1e-6


def test_selection_masks_restrict_updates(ctx):
    opts = {"scores": "random", "fraction": 0.2, "base_options": FAST}
    mask = lm.get_lm("hessian_select").recipe(dataclasses.replace(ctx, options=opts)).plan.hp["select_mask_0"]
    res = _run(ctx, "hessian_select", **opts)
    for m, a, b in zip(jax.tree.leaves(mask), jax.tree.leaves(res.params), jax.tree.leaves(ctx.params)):
        m, a, b = np.asarray(m), np.asarray(a), np.asarray(b)
        np.testing.assert_array_equal(a[~m], b[~m])  # outside the mask nothing moves
    assert 0 < res.info["mask_size"] < res.info["num_params"]


def test_sharp_minmax_plan(ctx):
    r = lm.get_lm("sharp_minmax").recipe(ctx)
    assert [p.sign for p in r.plan.phases] == ["min", "max"]
    assert r.plan.optimizer.sam == "sam"  # sharpness-aware even when the context's optimizer is plain
    m_f, m_r = r.plan.hp["mask_forget"], r.plan.hp["mask_retain"]
    assert all(bool((np.asarray(a) ^ np.asarray(b)).all()) for a, b in zip(jax.tree.leaves(m_f), jax.tree.leaves(m_r)))


def test_retrain_starts_fresh(ctx):
    r = lm.get_lm("retrain").recipe(ctx)
    assert r.start is not None and r.plan.phases[0].uses == ("retain",)
    fresh, orig = r.start[0]["embed"]["embedding"], ctx.params["embed"]["embedding"]
    assert not np.array_equal(np.asarray(fresh), np.asarray(orig))


def test_bad_inputs(ctx):
    with pytest.raises(ValueError, match="retain set is empty"):
        dataclasses.replace(ctx, retain_idx=np.array([], int))
    with pytest.raises(ValueError, match="forget set is empty"):
        dataclasses.replace(ctx, forget_idx=np.array([], int))
    with pytest.raises(ValueError, match="overlap"):
        dataclasses.replace(ctx, forget_idx=ctx.retain_idx[:2])
    long = {k: np.concatenate([np.asarray(v), np.zeros_like(np.asarray(v))], axis=1) if np.ndim(v) == 2 else v
            for k, v in ctx.data.items()}  # fmt: skip
    with pytest.raises(ValueError, match="longer than the model's context"):
        dataclasses.replace(ctx, data=long)
    with pytest.raises(ValueError, match="token arrays"):
        dataclasses.replace(ctx, data={"x": ctx.data["x"]})
    with pytest.raises(ValueError, match="layer=5"):
        lm.get_lm("rmu").recipe(dataclasses.replace(ctx, options={"layer": 5}))
    with pytest.raises(ValueError, match='layer=-1: must be an integer >= 0 .* or "last"'):
        lm.resolve_options(lm.get_lm("rmu"), {"layer": -1})
    with pytest.raises(ValueError, match="layer='middle'"):
        lm.resolve_options(lm.get_lm("rmu"), {"layer": "middle"})
    with pytest.raises(ValueError, match="sign"):
        lm.get_lm("npo").recipe(dataclasses.replace(ctx, options={"sign": "up"}))
