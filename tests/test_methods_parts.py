"""methods.parts: a registered method taken apart (phase losses + Optax transforms) runs in a user's own loop
and gives what methods.unlearn gives; register(overwrite=True); a user's own method in a few lines."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxunlearn import engine, methods, objectives
from jaxunlearn.plan import OptimConfig, StepInfo


def _user_loop(ctx, p, seed):
    """The engine's schedule written out by hand with the parts: per step, one update per active phase."""
    params, state = p.start
    data = {"x": jnp.asarray(ctx.x), "y": jnp.asarray(ctx.y)}
    opt = {ph.name: ph.optimizer.init(params) for ph in p.phases}
    pool_r, pool_f = p.retain_idx, p.forget_idx
    for epoch in range(p.epochs):
        rng = np.random.default_rng([seed, epoch])
        idx_r = engine.epoch_indices(rng, pool_r, p.steps_per_epoch, p.batch_size)
        idx_f = engine.epoch_indices(rng, pool_f, p.steps_per_epoch, min(p.batch_size, pool_f.size))
        info = StepInfo.at(epoch=epoch, epochs=p.epochs, total_steps=p.total_steps)
        for s in range(p.steps_per_epoch):
            batch = {
                "retain": engine.ArraySource.gather(data, idx_r[s]),
                "forget": engine.ArraySource.gather(data, idx_f[s]),
            }
            for ph in p.phases:
                if not ph.is_active(epoch):
                    continue

                def lf(w, ph=ph, state=state, batch=batch, info=info):
                    return ph.loss(ctx.apply_fn, w, state, batch, p.hp, info)

                (_, state), g = jax.value_and_grad(lf, has_aux=True)(params)
                upd, opt[ph.name] = ph.optimizer.update(
                    g, opt[ph.name], params, grad_fn=lambda w, lf=lf: jax.grad(lf, has_aux=True)(w)[0]
                )
                params = optax.apply_updates(params, upd)
    return params


def _flat(t):
    return np.concatenate([np.ravel(np.asarray(a)) for a in jax.tree.leaves(t)])


@pytest.mark.parametrize(
    "name,optimizer",
    [
        ("neggrad", OptimConfig(name="sgd", lr=0.05)),
        ("sharp_minmax", OptimConfig(name="adamw", lr=1e-3, sam="sam", rho=0.05)),
    ],
)
def test_parts_in_a_user_loop_equal_methods_unlearn(name, optimizer):
    ctx = methods.toy_context(epochs=2, optimizer=optimizer)
    p = methods.parts(name, ctx)
    res = methods.unlearn(name, ctx, progress=False)
    np.testing.assert_allclose(_flat(_user_loop(ctx, p, ctx.seed)), _flat(res.params), rtol=2e-5, atol=2e-6)


def test_parts_of_a_direct_edit_method_say_to_use_unlearn():
    with pytest.raises(ValueError, match=r"ssd edits the weights directly.*methods.unlearn\('ssd', ctx\)"):
        methods.parts("ssd", methods.toy_context())


def test_register_twice_needs_overwrite():
    @methods.register("tmp_twice", "first")
    def first(ctx, opts):
        return methods.Recipe(
            plan=methods.method_plan(ctx, opts, "tmp_twice", methods.Phase("retain", methods.supervised_loss))
        )

    try:
        with pytest.raises(ValueError, match="already registered; pass register\\(..., overwrite=True\\)"):
            methods.register("tmp_twice", "second")(first)
        methods.register("tmp_twice", "second", {"lr_scale": 2.0}, overwrite=True)(first)
        assert methods.get("tmp_twice").summary == "second"
        assert methods.get("tmp_twice").defaults == {"lr_scale": 2.0}
    finally:
        methods.METHODS.pop("tmp_twice", None)


def npo_loss(apply_fn, params, model_state, batch, hp, info):
    """NPO-style: (2/β)·mean softplus(β·(log p_θ(y|x) − log p_ref(y|x))) on the forget batch + CE on retain."""
    f, r = batch["forget"], batch["retain"]
    logits, new_state = apply_fn(params, model_state, jnp.concatenate([r["x"], f["x"]]), train=True)
    n = r["x"].shape[0]
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits[n:]), f["y"][:, None], axis=1)[:, 0]
    ref = jnp.take_along_axis(jax.nn.log_softmax(hp["ref_logits"][f["index"]]), f["y"][:, None], axis=1)[:, 0]
    npo = 2.0 / hp["beta"] * jnp.mean(jax.nn.softplus(hp["beta"] * (logp - ref)))
    return npo + objectives.cross_entropy(logits[:n], r["y"]), new_state


def test_a_user_method_registered_in_a_few_lines_unlearns():
    @methods.register("npo_test", "NPO on F + CE on R", {"beta": 0.5, "lr_scale": 1.0, "epochs": None}, overwrite=True)
    def npo(ctx, opts):
        ref = ctx.apply_fn(ctx.params, ctx.model_state, jnp.asarray(ctx.x))[0]
        phase = methods.Phase("npo", npo_loss, uses=("retain", "forget"))
        hp = {"beta": jnp.float32(opts["beta"]), "ref_logits": ref}
        return methods.Recipe(plan=methods.method_plan(ctx, opts, "npo_test", phase, hp=hp))

    try:
        ctx = methods.toy_context(epochs=3)
        res = methods.unlearn("npo_test", ctx, progress=False)
        assert res.diverged is None and len(res.history) == 3
        logits = ctx.apply_fn(res.params, res.model_state, jnp.asarray(ctx.x[ctx.forget_idx]))[0]
        logits0 = ctx.apply_fn(ctx.params, ctx.model_state, jnp.asarray(ctx.x[ctx.forget_idx]))[0]
        y = jnp.asarray(ctx.y[ctx.forget_idx])
        nll = objectives.cross_entropy(logits, y)
        assert float(nll) > float(objectives.cross_entropy(logits0, y))  # the forget labels became less likely
    finally:
        methods.METHODS.pop("npo_test", None)
