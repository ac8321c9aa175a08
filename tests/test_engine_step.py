"""engine.step: a TrainState and make_step held in a user's own loop; any Optax optimizer; step facts."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxunlearn import data, engine, methods, models
from jaxunlearn.plan import OptimConfig, Phase, Plan, StepInfo, as_optim_config, supervised_loss


@pytest.fixture(scope="module")
def small():
    ds = data.load("digits", seed=0)
    return engine.DeviceData.from_numpy(ds.x_train[:200], ds.y_train[:200])


def _mlp(seed=0):
    return models.split_model(models.build("mlp", num_classes=10, input_shape=(8, 8, 1), hidden=(16,), seed=seed))


def _same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _user_loop(apply_fn, params, state, small, optimizer, epochs, bs, seed):
    """A user's own loop: init_state + jitted make_step over the engine's batches (same indices)."""
    n = len(small)
    steps = -(-n // bs)
    ts = engine.init_state(params, state, optimizer, total_steps=steps * epochs)
    step = jax.jit(engine.make_step(apply_fn, supervised_loss, optimizer), donate_argnums=0)
    for epoch in range(epochs):
        rng = np.random.default_rng([seed, epoch])
        idx = engine.epoch_indices(rng, np.arange(n), steps, bs)
        info = StepInfo.at(epoch=epoch, epochs=epochs, total_steps=steps * epochs)
        for s in range(steps):
            batch = {"retain": engine.ArraySource.gather(small.arrays, jnp.asarray(idx[s]))}
            ts, _ = step(ts, batch, {}, info)
    return ts


@pytest.mark.parametrize("cfg", [OptimConfig(lr=0.05), OptimConfig(lr=0.05, sam="sam", rho=0.05)])
def test_make_step_in_a_user_loop_equals_engine_train(small, cfg):
    """The step a user holds is the engine's: the same batches give the same parameters as engine.train."""
    apply_fn, params, state = _mlp()
    res = engine.train(apply_fn, params, state, small, optimizer=cfg, epochs=2, batch_size=50, seed=3, progress=False)
    ts = _user_loop(apply_fn, params, state, small, cfg, epochs=2, bs=50, seed=3)
    np.testing.assert_allclose(
        np.concatenate([np.ravel(a) for a in jax.tree.leaves(ts.params)]),
        np.concatenate([np.ravel(a) for a in jax.tree.leaves(res.params)]),
        rtol=1e-5, atol=1e-6,
    )  # fmt: skip
    assert int(ts.step) == 2 * 4


def test_any_optax_optimizer_equals_the_same_optimizer_config(small):
    """optax.sgd(0.1) (plain, and wrapped by SAM through the config) gives exactly the numbers of the
    equivalent built-in OptimConfig."""
    apply_fn, params, state = _mlp(seed=1)
    kw = dict(epochs=2, batch_size=64, seed=1, progress=False)
    builtin = OptimConfig(name="sgd", lr=0.1, momentum=0.0, weight_decay=0.0, schedule="constant")
    tx = optax.sgd(0.1)
    _same(
        engine.train(apply_fn, params, state, small, optimizer=builtin, **kw).params,
        engine.train(apply_fn, params, state, small, optimizer=tx, **kw).params,
    )
    _same(
        engine.train(apply_fn, params, state, small, optimizer=builtin.with_sam("sam", rho=0.05), **kw).params,
        engine.train(
            apply_fn, params, state, small, optimizer=as_optim_config(tx).with_sam("sam", rho=0.05), **kw
        ).params,
    )


def test_optimizer_factory_receives_the_run_length(small):
    """A factory total_steps -> tx is called with the run's schedule length (a Python int)."""
    seen = []

    def factory(total):
        seen.append(total)
        return optax.sgd(optax.cosine_decay_schedule(0.1, total))

    apply_fn, params, state = _mlp(seed=2)
    res = engine.train(apply_fn, params, state, small, optimizer=factory, epochs=3, batch_size=100, progress=False)
    assert res.diverged is None and seen and all(type(t) is int and t == 6 for t in seen)
    with pytest.raises(ValueError, match="total_steps"):
        engine.make_step(apply_fn, supervised_loss, factory)


def test_scaled_user_optimizer_scales_its_updates(small):
    """A method's lr_scale on a user's optimizer multiplies its updates: for SGD, the same as its rate."""
    apply_fn, params, state = _mlp(seed=3)
    kw = dict(epochs=1, batch_size=64, seed=0, progress=False)
    a = engine.train(
        apply_fn, params, state, small, optimizer=methods.base.scaled(as_optim_config(optax.sgd(0.2)), 0.5), **kw
    )
    b = engine.train(apply_fn, params, state, small, optimizer=optax.sgd(0.1), **kw)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


def test_methods_context_takes_an_optax_optimizer(small):
    apply_fn, params, state = _mlp(seed=4)
    x, y = small.x, small.y
    ctx = methods.Context(apply_fn, params, state, x, y, np.arange(20, 200), np.arange(20), 10,
                          optimizer=optax.adamw(1e-3), epochs=1)  # fmt: skip
    res = methods.unlearn("sharp_minmax", ctx, progress=False)  # SAM-min / SAM-max wrap the user's AdamW
    assert res.diverged is None
    moved = sum(float(jnp.abs(a - b).sum()) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(res.params)))
    assert moved > 0


@pytest.mark.parametrize("bad", [0.1, "adamw", {"lr": 0.1}])
def test_other_optimizer_types_get_one_clear_line(bad):
    for make in (
        lambda: Plan((Phase("t", supervised_loss),), optimizer=bad),
        lambda: Phase("t", supervised_loss, optimizer=bad),
        lambda: as_optim_config(bad),
    ):
        with pytest.raises(ValueError, match="OptimConfig, an optax.GradientTransformation or a function") as e:
            make()
        assert "\n" not in str(e.value)


def test_step_info_reaches_the_loss_as_an_argument(small):
    """l1_sparse's penalty decays with info.epoch / info.epochs (no keys injected into hp)."""
    from jaxunlearn.methods.l1_sparse import l1_loss

    apply_fn, params, state = _mlp(seed=5)
    batch = {"retain": engine.ArraySource.gather(small.arrays, jnp.arange(8))}
    hp = {"gamma": jnp.float32(1.0)}
    first = l1_loss(apply_fn, params, state, batch, hp, StepInfo.at(epoch=0, epochs=4))[0]
    late = l1_loss(apply_fn, params, state, batch, hp, StepInfo.at(epoch=3, epochs=4))[0]
    ce = supervised_loss(apply_fn, params, state, batch, {}, StepInfo.at())[0]
    l1 = sum(float(jnp.abs(a).sum()) for a in jax.tree.leaves(params))
    assert float(first) == pytest.approx(float(ce) + l1, rel=1e-5)
    assert float(late) == pytest.approx(float(ce) + 0.25 * l1, rel=1e-5)


def test_masked_step_needs_its_mask(small):
    apply_fn, params, state = _mlp()
    step = engine.make_step(apply_fn, supervised_loss, OptimConfig(), masked=True)
    ts = engine.init_state(params, state, OptimConfig())
    batch = {"retain": engine.ArraySource.gather(small.arrays, jnp.arange(8))}
    with pytest.raises(ValueError, match="mask="):
        step(ts, batch, {}, StepInfo.at())


@pytest.mark.parametrize("kind", ["looksam", "gsam", "rs", "gnp", "cr"])
def test_per_device_sam_mode_refuses_the_variants_it_cannot_run(kind):
    """m-sharpness computes a SAM direction per device: the other variants would silently get it as their g'."""
    from jaxunlearn import distributed

    apply_fn, _, _ = models.split_model(models.build("mlp", num_classes=2, input_shape=(3,), hidden=(4,)))
    cfg = OptimConfig(name="adamw", lr=0.01, sam=kind)
    with pytest.raises(ValueError, match=rf"per_device.*supports sam='sam' and 'asam' only, got sam='{kind}'"):
        engine.make_step(apply_fn, supervised_loss, cfg, mesh=distributed.make_mesh(1), sam_mode="per_device")
    engine.make_step(apply_fn, supervised_loss, cfg, mesh=distributed.make_mesh(1))  # the global mode is fine


def _looksam_setup():
    ctx = methods.toy_context(n=60)
    cfg = OptimConfig(name="adamw", lr=0.01, schedule="constant", sam="looksam", k=3, rho=0.1)
    plan = Plan((Phase("train", supervised_loss),), optimizer=cfg, epochs=7, batch_size=len(ctx.retain_idx))
    return ctx, cfg, plan


def test_host_chosen_looksam_branches_equal_the_counter_driven_step():
    """engine.run picks LookSAM's SAM / reuse program on the host (no lax.cond); with one full-batch step per
    epoch it equals a loop of the counter-driven step (``sam_step=None``) on the same batch."""
    import jax

    ctx, cfg, plan = _looksam_setup()
    res = engine.run(plan, ctx.apply_fn, ctx.params, ctx.model_state, engine.DeviceData(ctx.x, ctx.y),
                     retain_idx=ctx.retain_idx, progress=False)  # fmt: skip
    step = jax.jit(engine.make_step(ctx.apply_fn, supervised_loss, cfg))
    state = engine.init_state(ctx.params, ctx.model_state, cfg)
    batch = {"retain": {"x": ctx.x[ctx.retain_idx], "y": ctx.y[ctx.retain_idx]}}
    for e in range(plan.epochs):
        state, _ = step(state, batch, {}, StepInfo.at(epoch=e, epochs=plan.epochs, total_steps=plan.epochs))
    for a, b in zip(jax.tree.leaves(res.params), jax.tree.leaves(state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
    # the host choice really is LookSAM's: always taking the reuse branch after step 0 gives other weights
    reuse = jax.jit(engine.make_step(ctx.apply_fn, supervised_loss, cfg, sam_step=False))
    with pytest.raises(ValueError, match="LookSAM's host-chosen branch"):
        engine.make_step(ctx.apply_fn, supervised_loss, OptimConfig(sam="sam"), sam_step=True)
    s2 = engine.init_state(ctx.params, ctx.model_state, cfg)
    s2, _ = step(s2, batch, {}, StepInfo.at(epoch=0, epochs=plan.epochs, total_steps=plan.epochs))
    for e in range(1, plan.epochs):
        s2, _ = reuse(s2, batch, {}, StepInfo.at(epoch=e, epochs=plan.epochs, total_steps=plan.epochs))
    assert not np.allclose(np.asarray(jax.tree.leaves(s2.params)[0]), np.asarray(jax.tree.leaves(res.params)[0]))


def test_host_looksam_resumes_on_the_same_schedule(tmp_path):
    """A run stopped in epoch 4's callback (before its checkpoint) resumes after epoch 3, where LookSAM's next update
    is a SAM step (3 mod 3 = 0): the counter comes from the checkpoint, and the weights equal the full run's."""
    import jax

    ctx, cfg, plan = _looksam_setup()
    data = engine.DeviceData(ctx.x, ctx.y)
    kw = dict(retain_idx=ctx.retain_idx, progress=False, checkpoint_dir=tmp_path / "ck", checkpoint_every=1)
    full = engine.run(plan, ctx.apply_fn, ctx.params, ctx.model_state, data, retain_idx=ctx.retain_idx,
                      progress=False)  # fmt: skip

    def stop(epoch, p, s):
        if epoch == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        engine.run(plan, ctx.apply_fn, ctx.params, ctx.model_state, data, on_epoch_end=stop, **kw)
    resumed = engine.run(plan, ctx.apply_fn, ctx.params, ctx.model_state, data, resume=True, **kw)
    assert resumed.resumed_from == 3
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(full.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
