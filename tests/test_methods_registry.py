"""The method registry: every method runs with plain, SAM and ASAM optimizers; names, options and masks.

A small MLP (under 20 000 parameters, so the exact Hessian diagonal is affordable) trained briefly on
300 digits keeps these checks fast; what they test is the plumbing, not the quality of forgetting.
"""

import math
import pathlib
import pkgutil
import re

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from _digits_setup import all_finite, leaves_equal, make_ctx, train_setup

from jaxunlearn import data, engine, methods, selection
from jaxunlearn.methods import hessian_select as hs
from jaxunlearn.methods.common import MeanCE

# Every registered method, read from the registry: a new method is checked without an edit here. (Other
# names in a process are variants NAME@TAG, looked up but never registered.)
NAMES = sorted(methods.METHODS)
KINDS = ("none", "sam", "asam")
# One short epoch for every method; methods with their own epoch defaults are shortened explicitly.
SHORT = {"ga": {"epochs": 1}, "scrub": {"epochs": 1, "msteps": 1}}
PRETRAIN_KW = {"pretrain_epochs": 1}


@pytest.fixture(scope="module")
def small():
    ds = data.load("digits", seed=0, max_train=300)
    setup = train_setup(ds, model="mlp", epochs=20, model_kwargs={"hidden": (32,)})
    forget = data.select_forget(ds.y_train, "random", 30, seed=0)
    return setup, forget


def _structure(tree):
    return jax.tree.structure(tree), [np.shape(x) for x in jax.tree.leaves(tree)]


def test_registry_lists_the_methods():
    # every file of jaxunlearn/methods that registers a method is loaded, under the file's name (the lm package
    # holds the language-model registry, tested in test_methods_lm.py)
    files = [info.name for info in pkgutil.iter_modules(methods.__path__) if not info.ispkg]
    source = {f: pathlib.Path(methods.__path__[0], f + ".py").read_text() for f in files}
    registering = {f for f in files if re.search(r"^@register\(", source[f], re.MULTILINE)}
    assert registering == set(NAMES) and len(NAMES) >= 11
    assert {"retrain", "sharp_minmax", "ssd"} <= set(NAMES)  # the reference, the papers' method, a direct edit
    assert all(methods.VARIANT_SEP not in name for name in NAMES)
    for name, m in methods.METHODS.items():
        assert m.name == name and m.summary and isinstance(m.defaults, dict)
        assert methods.get(name) is m
        # one file per method: the recipe lives in the module named after the method
        assert m.recipe_fn.__module__ == f"jaxunlearn.methods.{name}", (name, m.recipe_fn.__module__)
    assert not methods.get("ssd").gradient_based  # edits the weights directly (see the run test below)


def test_small_model_is_small_and_trained(small):
    setup, _ = small
    assert selection.count(setup.params) < 20000
    assert setup.test_accuracy(setup.params) > 0.7


@pytest.mark.parametrize("name", NAMES)
def test_every_method_runs_with_plain_sam_and_asam(small, name):
    setup, forget = small
    results = {}
    for kind in KINDS:
        cfg = engine.UNLEARN_DEFAULT.with_sam(kind)
        kw = {"optimizer": cfg}
        if name == "retrain":  # Retrain repeats the pretraining recipe: that is where SAM goes.
            kw = {"pretrain_optimizer": engine.PRETRAIN_DEFAULT.with_sam(kind)}
        ctx = make_ctx(setup, forget, epochs=1, options=SHORT.get(name, {}), **PRETRAIN_KW, **kw)
        res = methods.unlearn(name, ctx, progress=False)
        assert res.diverged is None, f"{name}/{kind} diverged"
        assert _structure(res.params) == _structure(setup.params)
        assert all_finite(res.params), f"{name}/{kind}: non-finite parameters"
        assert not leaves_equal(res.params, setup.params), f"{name}/{kind} changed nothing"
        assert res.seconds > 0
        results[kind] = res.params
    if not methods.get(name).gradient_based:  # no training (ssd): the optimizer is irrelevant
        assert leaves_equal(results["none"], results["sam"]) and leaves_equal(results["none"], results["asam"])
    elif name == "sharp_minmax":  # sharpness-aware by definition: a plain optimizer becomes SAM
        assert leaves_equal(results["none"], results["sam"])
        assert not leaves_equal(results["sam"], results["asam"])
    else:
        assert not leaves_equal(results["none"], results["sam"])
        assert not leaves_equal(results["none"], results["asam"])
        assert not leaves_equal(results["sam"], results["asam"])


def test_retrain_starts_from_init_fn_not_from_the_model(small):
    setup, forget = small
    with pytest.raises(ValueError, match="init_fn"):
        methods.get("retrain").recipe(make_ctx(setup, forget, init_fn=None))
    ctx = make_ctx(setup, forget, **PRETRAIN_KW)
    recipe = methods.get("retrain").recipe(ctx)
    start_params, _ = recipe.start
    assert leaves_equal(start_params, setup.init_fn(ctx.seed + 1000)[0])
    assert recipe.plan.optimizer == ctx.pretrain_optimizer and recipe.plan.epochs == ctx.pretrain_epochs
    # The trained model is never read: Retrain from a zeroed "original" gives the same model.
    res = methods.unlearn("retrain", ctx, progress=False)
    zeros = jax.tree.map(np.zeros_like, setup.params)
    res0 = methods.unlearn("retrain", make_ctx(setup, forget, params=zeros, **PRETRAIN_KW), progress=False)
    assert leaves_equal(res.params, res0.params)
    other = methods.unlearn("retrain", make_ctx(setup, forget, options={"init_seed": 7}, **PRETRAIN_KW), progress=False)
    assert not leaves_equal(res.params, other.params)


def test_unknown_method_suggests_close_names(small):
    setup, forget = small
    with pytest.raises(ValueError, match="neggrad") as err:
        methods.get("neggrd")
    assert "Did you mean" in str(err.value)
    with pytest.raises(ValueError, match="sharp_minmax"):
        methods.unlearn("sharp_minmx", make_ctx(setup, forget), progress=False)
    with pytest.raises(ValueError, match="Known methods"):
        methods.get("no_such_thing")


def test_unknown_option_lists_valid_options(small):
    setup, forget = small
    with pytest.raises(ValueError) as err:
        methods.unlearn("ft", make_ctx(setup, forget, options={"lr": 0.1}), progress=False)
    msg = str(err.value)
    assert "'lr'" in msg and "lr_scale" in msg and "epochs" in msg
    with pytest.raises(ValueError) as err:
        methods.get("sharp_minmax").recipe(make_ctx(setup, forget, options={"fraction": 0.1, "rho": 0.1}))
    assert "rho" in str(err.value)
    for key in methods.get("sharp_minmax").defaults:
        assert key in str(err.value)


def _head_only(params):
    return {k: jax.tree.map(lambda x, top=k: np.full(np.shape(x), top == "head"), v) for k, v in params.items()}


@pytest.mark.parametrize("scores", hs.SCORES)
def test_hessian_select_scores_kinds_give_masks_of_the_right_size(small, scores):
    setup, forget = small
    fraction = 0.1
    ctx = make_ctx(setup, forget, options={"scores": scores, "fraction": fraction})
    recipe = methods.get("hessian_select").recipe(ctx)
    mask = recipe.plan.hp["select_mask_0"]  # base neggrad has one phase and no mask of its own
    n = selection.count(setup.params)
    assert recipe.info["num_params"] == n and recipe.info["scores"] == scores
    size = selection.mask_size(mask)
    assert recipe.info["mask_size"] == size
    if scores == "all":
        assert size == n
    elif scores == "last_layer":
        expected = _head_only(setup.params)
        assert leaves_equal(mask, expected)
        assert size == sum(np.size(x) for x in jax.tree.leaves(setup.params["head"]))
    else:
        assert size == math.ceil(fraction * n)
    assert all(ph.mask_key == "select_mask_0" for ph in recipe.plan.phases)


def test_hessian_select_exact_and_hutchinson_scores(small):
    setup, forget = small
    ctx = make_ctx(setup, forget)
    exact = hs.parameter_scores(ctx, "exact")
    # Below exact_limit, "hessian" is the exact diagonal.
    assert leaves_equal(hs.parameter_scores(ctx, "hessian"), exact)
    # The Hutchinson estimate is unbiased: with many probes it tracks the exact diagonal.
    est = hs.parameter_scores(ctx, "hutchinson", num_probes=64)
    a = np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(exact)])
    b = np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(est)])
    assert np.corrcoef(a, b)[0, 1] > 0.5
    # Above exact_limit, "hessian" falls back to Hutchinson.
    assert leaves_equal(hs.parameter_scores(ctx, "hessian", exact_limit=10, num_probes=64), est)


def test_hessian_select_restricts_a_masked_base_to_the_intersection(small):
    setup, forget = small
    ctx = make_ctx(setup, forget, options={"scores": "random", "fraction": 0.5, "base": "salun"})
    recipe = methods.get("hessian_select").recipe(ctx)
    salun_mask = methods.get("salun").recipe(make_ctx(setup, forget)).plan.hp["mask"]
    random_mask = hs.selection_mask(ctx, "random", 0.5)
    both = jax.tree.map(np.logical_and, salun_mask, random_mask)
    assert leaves_equal(recipe.plan.hp["select_mask_0"], both)
    assert recipe.info["base"] == "salun"


def test_variants_are_the_base_method_under_their_own_name():
    base = methods.get("sharp_minmax")
    v = methods.get("sharp_minmax@f0.3")
    assert v.name == "sharp_minmax@f0.3" and v.recipe_fn is base.recipe_fn and v.defaults == base.defaults
    assert v.base == base.base == "sharp_minmax"
    assert "sharp_minmax@f0.3" not in methods.METHODS  # looked up, not registered
    with pytest.raises(ValueError, match="Did you mean 'sharp_minmax@f0.3'"):
        methods.get("sharp_minmx@f0.3")
    for bad in ("sharp_minmax@", "sharp_minmax@a b", "sharp_minmax@x/y"):
        with pytest.raises(ValueError, match="bad method variant"):
            methods.get(bad)
    # registering an '@' name would shadow the variant of the same spelling
    with pytest.raises(ValueError, match="cannot contain '@'"):
        methods.register("ft@mine", "shadow")(lambda ctx, opts: None)
    assert "ft@mine" not in methods.METHODS


def test_direct_edit_to_non_finite_parameters_is_reported_and_not_returned(small):
    """A direct edit (no plan, so no epochs to guard) that overflows is caught like a diverged run."""
    setup, forget = small
    x_t, y_t = setup.ds.x_train[forget], (setup.ds.y_train[forget] + 1) % setup.ds.num_classes
    opts = {"scores": "all", "update": "first_order", "steps": 3}
    ok = methods.unlearn("hessian_select", make_ctx(setup, forget, corrected=(x_t, y_t), options=opts), progress=False)
    assert ok.diverged is None and all_finite(ok.params) and not leaves_equal(ok.params, setup.params)
    opts["tau"] = 1e38  # θ - τ·Δ overflows float32
    ctx = make_ctx(setup, forget, corrected=(x_t, y_t), options=opts)
    assert not all_finite(methods.get("hessian_select").recipe(ctx).params)
    res = methods.unlearn("hessian_select", ctx, progress=False)
    assert res.diverged is not None and res.diverged["epoch"] == 0
    assert "non-finite" in res.diverged["reason"]
    assert leaves_equal(res.params, setup.params) and leaves_equal(res.model_state, setup.model_state)


def test_hessian_select_rejects_bad_settings(small):
    setup, forget = small
    for base in ("ssd", "retrain", "hessian_select", "ssd@x", "retrain@x", "hessian_select@x"):
        with pytest.raises(ValueError, match="base"):
            methods.get("hessian_select").recipe(make_ctx(setup, forget, options={"scores": "all", "base": base}))
    for update in ("first_order", "second_order"):
        with pytest.raises(ValueError, match="corrected"):
            methods.get("hessian_select").recipe(make_ctx(setup, forget, options={"scores": "all", "update": update}))
    with pytest.raises(ValueError, match="scores"):
        methods.get("hessian_select").recipe(make_ctx(setup, forget, options={"scores": "hesian"}))
    with pytest.raises(ValueError, match="update"):
        methods.get("hessian_select").recipe(make_ctx(setup, forget, options={"update": "newton"}))


def _flat_mean_ce(setup, x, y):
    flat, unravel = jax.flatten_util.ravel_pytree(setup.params)

    def loss(w):
        logits, _ = setup.apply_fn(unravel(w), setup.model_state, x, train=False)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))

    return flat, unravel, loss


@pytest.mark.parametrize(("update", "steps"), [("first_order", 1), ("first_order", 2), ("second_order", 1)])
def test_hessian_select_closed_form_updates_follow_their_formulas(small, update, steps):
    """``θ ← θ − τ·M ⊙ (∇ℓ(Z̃) − ∇ℓ(Z))`` (first order, repeated ``steps`` times at the new point), or the
    same divided by ``|diag H| + damping`` (second order, H of the mean CE on Z at the original model)."""
    setup, forget = small
    x, y = setup.data.x, setup.data.y
    x_t = jnp.asarray(data.add_trigger(np.asarray(x[forget]), np.arange(len(forget))))
    y_t = (y[forget] + 1) % setup.ds.num_classes
    tau, damping, fraction = 0.5, 0.1, 0.2
    opts = {"scores": "gradient", "fraction": fraction, "update": update, "tau": tau, "steps": steps}
    opts["damping"] = damping
    ctx = make_ctx(setup, forget, corrected=(x_t, y_t), options=opts)
    res = methods.unlearn("hessian_select", ctx, progress=False)
    mask = hs.selection_mask(ctx, "gradient", fraction)

    flat, unravel, loss_bad = _flat_mean_ce(setup, x[forget], y[forget])
    _, _, loss_good = _flat_mean_ce(setup, x_t, y_t)
    m = jax.flatten_util.ravel_pytree(jax.tree.map(lambda a: a.astype(jnp.float32), mask))[0] > 0.5
    scale = jnp.ones_like(flat)
    if update == "second_order":
        scale = 1.0 / (jnp.abs(jnp.diag(jax.hessian(loss_bad)(flat))) + damping)
    w = flat
    for _ in range(steps):
        delta = jax.grad(loss_good)(w) - jax.grad(loss_bad)(w)
        w = jnp.where(m, w - tau * scale * delta, w)
    got = jax.flatten_util.ravel_pytree(res.params)[0]
    assert np.allclose(got, w, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(flat))))
    assert not np.array_equal(np.asarray(got), np.asarray(flat))
    assert np.array_equal(np.asarray(got)[~np.asarray(m)], np.asarray(flat)[~np.asarray(m)])


def test_curvature_loss_is_shared_between_calls(small):
    """Hessian/Fisher scores key their compiled programs on the loss function: the methods' loss for the
    same model compares equal across calls (no recompilation per call), and differs for another state."""
    setup, forget = small
    a = MeanCE(setup.apply_fn, setup.model_state)
    b = MeanCE(setup.apply_fn, setup.model_state)
    assert a == b and hash(a) == hash(b)
    assert a != MeanCE(setup.apply_fn, {"stat": jnp.zeros(2)})
    batch = {"x": setup.data.x[forget], "y": setup.data.y[forget]}
    logits, _ = setup.apply_fn(setup.params, setup.model_state, batch["x"])
    expected = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), batch["y"][:, None], axis=1))
    assert np.isclose(float(a(setup.params, batch)), float(expected), rtol=1e-5)
