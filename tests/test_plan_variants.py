"""OptimConfig / build_optimizer with the SAM variants, the smoothing family and weight averaging."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import mlp_loss

from jaxunlearn import engine, selection, transforms
from jaxunlearn.plan import (
    OPTIMIZER_KINDS,
    SAM_KINDS,
    UNLEARN_DEFAULT,
    OptimConfig,
    StepInfo,
    build_optimizer,
    final_params,
    optimizer_kind,
)

# a base whose update is −direction: build_optimizer's first transform is then read off directly
UNIT = dict(name="sgd", lr=1.0, momentum=0.0, weight_decay=0.0, schedule="constant")


def _close(a, b, rtol=1e-6, atol=1e-7):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=rtol, atol=atol), a, b)


def _direction(tx, params, batch, steps=1):
    state = tx.init(params)
    grad_fn = lambda p: jax.grad(mlp_loss)(p, batch)  # noqa: E731
    step = jax.jit(lambda s: tx.update(grad_fn(params), s, params, grad_fn=grad_fn))
    out = []
    for _ in range(steps):
        upd, state = step(state)
        out.append(upd)
    return out


CASES = [
    (
        "looksam",
        dict(rho=0.05, k=2, alpha=0.5, lamb=0.9),
        lambda s: transforms.looksam(0.05, k=2, alpha=0.5, lamb=0.9, sign=s),
    ),
    ("looksam", dict(rho=0.05), lambda s: transforms.looksam(0.05, k=5, alpha=0.7, sign=s)),
    ("gsam", dict(rho=0.05), lambda s: transforms.gsam(0.05, alpha=0.1)),
    ("gsam", dict(rho=0.05, alpha=0.3), lambda s: transforms.gsam(0.05, alpha=0.3)),
    ("rs", dict(sigma=0.02, samples=2, seed=4), lambda s: transforms.randomized_smoothing(0.02, samples=2, seed=4)),
    ("gnp", dict(), lambda s: transforms.gradient_norm_penalty(0.01, radius=0.01, sign=s)),
    ("cr", dict(penalty=2.0, fd_radius=0.02), lambda s: transforms.curvature_penalty(2.0, radius=0.02, sign=s)),
]


@pytest.mark.parametrize("kind,fields,direct", CASES)
def test_build_optimizer_puts_each_kind_first(mlp, kind, fields, direct):
    params, batch = mlp
    signs = ("min", "max") if kind in ("looksam", "gnp", "cr") else ("min",)
    for sign in signs:
        tx = build_optimizer(OptimConfig(sam=kind, **UNIT, **fields), 100, sign=sign)
        got = _direction(tx, params, batch, steps=2)
        want = _direction(direct(sign), params, batch, steps=2)
        for u, d in zip(got, want):
            _close(u, jax.tree.map(jnp.negative, d))


def test_existing_configs_build_the_same_chain(mlp):
    params, batch = mlp
    for cfg, direct in (
        (OptimConfig(**UNIT), None),
        (OptimConfig(sam="sam", rho=0.07, lamb=0.5, **UNIT), transforms.sam(0.07, lamb=0.5)),
        (OptimConfig(sam="asam", rho=0.5, eta=0.02, **UNIT), transforms.sam(0.5, adaptive=True, eta=0.02)),
    ):
        got = _direction(build_optimizer(cfg, 10), params, batch)[0]
        want = jax.grad(mlp_loss)(params, batch) if direct is None else _direction(direct, params, batch)[0]
        _close(got, jax.tree.map(jnp.negative, want))
    assert OptimConfig().average == "none" and OptimConfig().k == 5


@pytest.mark.parametrize("kind", ["gsam", "rs"])
def test_a_kind_without_a_max_form_refuses_a_max_phase(kind):
    with pytest.raises(ValueError, match=f"OptimConfig\\(sam='{kind}'\\) has no sharpness-maximization form") as info:
        build_optimizer(OptimConfig(sam=kind), 10, sign="max")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kind", ["looksam", "gsam", "rs", "gnp", "cr"])
def test_strict_masks_work_with_every_kind_and_reference_masks_refuse(mlp, kind):
    params, batch = mlp
    mask = selection.top_fraction(jax.tree.map(jnp.abs, params), 0.4)
    cfg = OptimConfig(sam=kind, name="adamw", lr=0.01, schedule="constant", weight_decay=0.1)
    tx = build_optimizer(cfg, 10, mask=mask)
    for upd in _direction(tx, params, batch, steps=2):
        for u, m in zip(jax.tree.leaves(upd), jax.tree.leaves(mask)):
            u, m = np.asarray(u), np.asarray(m)
            assert np.all(u[~m] == 0) and (np.any(u[m] != 0) or not m.any())
    with pytest.raises(ValueError, match="mask_reading='reference' .* sam/asam only"):
        build_optimizer(cfg, 10, mask=mask, mask_reading="reference")


def test_average_in_build_optimizer_and_final_params(mlp):
    params, batch = mlp
    cfg = OptimConfig(**{**UNIT, "lr": 0.3}, average="uniform", average_start=0.5, average_every=2)
    total = 8
    tx = build_optimizer(cfg, total)
    state, p, seen = tx.init(params), params, []
    for _ in range(total):
        upd, state = tx.update(jax.grad(mlp_loss)(p, batch), state, p, grad_fn=None)
        p = optax.apply_updates(p, upd)
        seen.append(p)
    snaps = [seen[t - 1] for t in (4, 6, 8)]  # t >= ceil(0.5 · 8) and t even
    _close(final_params(cfg, p, state), jax.tree.map(lambda *xs: sum(xs) / 3, *snaps), rtol=1e-5, atol=1e-6)
    plain = dataclasses.replace(cfg, average="none")
    assert final_params(plain, p, build_optimizer(plain, total).init(params)) is p


def test_engine_step_with_looksam_rs_and_average_traces_the_run_length():
    """make_step (the engine's jitted update) with the new kinds: the schedule length is traced, LookSAM's counter
    and the smoothing key live in the TrainState, and the average comes back through final_params."""

    def mse(apply_fn, p, s, batch, hp, info):
        return jnp.mean((apply_fn(p, s, batch["x"])[0] - batch["t"]) ** 2), s

    apply_fn = lambda p, s, x, train=False: (x * p, s)  # noqa: E731
    batch = {"x": jnp.ones(3), "t": jnp.full(3, 2.0)}
    for cfg in (
        OptimConfig(base=optax.sgd(0.5), sam="looksam", rho=0.05, k=3),
        OptimConfig(base=optax.sgd(0.5), sam="rs", sigma=0.01, average="ema", average_start=0.5, average_every=1),
    ):
        step = jax.jit(engine.make_step(apply_fn, mse, cfg))
        state = engine.init_state(jnp.zeros(3), {}, cfg)
        for _ in range(20):
            state, loss = step(state, batch, {}, StepInfo.at(total_steps=20))
        assert float(loss) < 1e-2
        opt_state = state.opt_states[0]
        if cfg.sam == "looksam":
            assert int(opt_state[0].count) == 20
        else:
            assert not np.array_equal(opt_state[0].key, transforms.randomized_smoothing(seed=0).init(None).key)
            assert int(opt_state[-1].n) == 11  # updates 10, 11, ..., 20 of 20 with start 0.5
            avg = final_params(cfg, state.params, opt_state)
            assert float(jnp.max(jnp.abs(avg - state.params))) > 0  # an average of the last steps, not the end


def test_optimizer_kind_covers_every_name():
    assert set(OPTIMIZER_KINDS) == {"sgd", "wa"} | (set(SAM_KINDS) - {"none"})
    for kind in OPTIMIZER_KINDS:
        cfg = optimizer_kind(kind, UNLEARN_DEFAULT, rho=0.05, lamb=0.5)
        build_optimizer(cfg, 10)  # every kind builds
        if kind == "sgd":
            assert cfg is UNLEARN_DEFAULT
        elif kind == "wa":
            assert (cfg.sam, cfg.average, cfg.rho) == ("none", "uniform", 0.05)
        else:
            assert (cfg.sam, cfg.average, cfg.name, cfg.rho, cfg.lamb) == (kind, "none", "adamw", 0.05, 0.5)
    with pytest.raises(ValueError, match="optimizer kind must be one of .* Did you mean 'looksam'"):
        optimizer_kind("looksan", UNLEARN_DEFAULT)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sam": "lookSAM"}, "sam must be one of"),
        ({"k": 0}, "k must be an integer >= 1, got 0"),
        ({"samples": 0}, "samples must be an integer >= 1, got 0"),
        ({"sigma": -0.01}, "sigma must be a finite number > 0, got -0.01"),
        ({"penalty": float("nan")}, "penalty must be a finite number >= 0, got nan"),
        ({"alpha": float("nan")}, "alpha must be a finite number >= 0, got nan"),
        ({"alpha": -0.5}, "alpha must be a finite number >= 0"),
        ({"fd_radius": 0.0}, "fd_radius must be a finite number > 0"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"average": "swa"}, "average must be one of"),
        ({"average_start": 1.5}, r"average_start must be a number in \[0, 1\]"),
        ({"average_every": 0}, "average_every must be an integer >= 1"),
        ({"average_decay": 1.0}, r"average_decay must be a number in \[0, 1\)"),
    ],
)
def test_bad_optim_config_settings_are_one_line_errors(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        OptimConfig(**kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kind", ["gsam", "rs", "looksam"])
def test_sharp_minmax_runs_under_every_variant_with_a_max_form_for_its_forget_step(kind):
    """GSAM / randomized smoothing have no maximization form: Sharp MinMax's retain step uses the variant and its
    forget step SAM; variants with a max form (LookSAM) keep it for both steps."""
    from jaxunlearn import methods

    cfg = OptimConfig(name="adamw", lr=0.01, schedule="constant", sam=kind)
    ctx = methods.toy_context(optimizer=cfg)
    plan = methods.get("sharp_minmax").recipe(ctx).plan
    assert plan.optimizer.sam == kind
    assert plan.phases[1].sign == "max" and plan.phases[1].optimizer.sam == (kind if kind == "looksam" else "sam")
    res = methods.unlearn("sharp_minmax", ctx, progress=False)
    assert res.diverged is None
    moved = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(res.params), jax.tree.leaves(ctx.params))]
    assert max(moved) > 1e-4
