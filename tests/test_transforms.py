import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import mlp_init, mlp_loss
from jax.sharding import PartitionSpec as P

from jaxunlearn import distributed, selection, sharpness, transforms


def test_chain_sam_sgd_equals_manual_sam_step(mlp):
    params, batch = mlp
    lr, rho = 0.1, 0.05
    opt = optax.chain(transforms.sam(rho), optax.sgd(lr))
    state = opt.init(params)
    g = jax.grad(mlp_loss)(params, batch)
    upd, state = opt.update(g, state, params, grad_fn=lambda p: jax.grad(mlp_loss)(p, batch))
    got = optax.apply_updates(params, upd)
    _, d = sharpness.value_and_sam_grad(mlp_loss, rho)(params, batch)
    expected = jax.tree.map(lambda w, x: w - lr * x, params, d)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), got, expected)


@pytest.mark.parametrize("sign,lamb,adaptive", [("max", 1.0, False), ("max", 0.5, True), ("min", 2.0, True)])
def test_transform_equals_value_and_sam_grad(mlp, sign, lamb, adaptive):
    params, batch = mlp
    t = transforms.sam(0.2, adaptive=adaptive, eta=0.01, lamb=lamb, sign=sign)
    g = jax.grad(mlp_loss)(params, batch)
    got, _ = t.update(g, t.init(params), params, grad_fn=lambda p: jax.grad(mlp_loss)(p, batch))
    _, expected = sharpness.value_and_sam_grad(mlp_loss, 0.2, adaptive=adaptive, eta=0.01, lamb=lamb, sign=sign)(
        params, batch
    )
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), got, expected)


def test_training_loop_under_jit_with_adamw_decreases_loss(mlp):
    params, batch = mlp
    opt = optax.chain(transforms.sam(0.05), optax.adamw(1e-2))
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        loss, g = jax.value_and_grad(mlp_loss)(params, batch)
        upd, state = opt.update(g, state, params, grad_fn=lambda p: jax.grad(mlp_loss)(p, batch))
        return optax.apply_updates(params, upd), state, loss

    first = None
    for _ in range(50):
        params, state, loss = step(params, state)
        first = loss if first is None else first
    assert float(mlp_loss(params, batch)) < 0.8 * float(first)


def test_masked_adamw_keeps_unselected_parameters_bitwise(mlp):
    params, batch = mlp
    scores = jax.tree.map(jnp.abs, jax.grad(mlp_loss)(params, batch))
    mask = selection.top_fraction(scores, 0.3)
    opt = optax.chain(transforms.sam(0.1), transforms.masked(optax.adamw(1e-2, weight_decay=0.1), mask))
    state = opt.init(params)
    p = params
    for _ in range(3):
        g = jax.grad(mlp_loss)(p, batch)
        upd, state = opt.update(g, state, p, grad_fn=lambda q: jax.grad(mlp_loss)(q, batch))
        p = optax.apply_updates(p, upd)
    for new, old, m in zip(jax.tree.leaves(p), jax.tree.leaves(params), jax.tree.leaves(mask)):
        new, old, m = np.asarray(new), np.asarray(old), np.asarray(m)
        assert np.array_equal(new[~m], old[~m])
        assert np.all(new[m] != old[m])


def test_masked_without_output_mask_lets_weight_decay_act():
    params = {"w": jnp.ones(2)}
    mask = {"w": jnp.array([True, False])}
    opt = transforms.masked(optax.adamw(0.1, weight_decay=0.5), mask, mask_output=False)
    upd, _ = opt.update({"w": jnp.ones(2)}, opt.init(params), params)
    assert float(upd["w"][1]) == pytest.approx(-0.1 * 0.5)  # decoupled decay only


def test_perturbed_mask_reference_reading(mlp):
    params, batch = mlp
    mask = selection.top_fraction(jax.tree.map(jnp.abs, params), 0.5)
    t = transforms.sam(0.1, sign="max", perturbed_mask=mask)
    g = jax.grad(mlp_loss)(params, batch)
    got, _ = t.update(g, t.init(params), params, grad_fn=lambda p: jax.grad(mlp_loss)(p, batch))
    e = sharpness.perturbation(g, params, 0.1)
    gp = jax.grad(mlp_loss)(jax.tree.map(jnp.add, params, e), batch)
    expected = jax.tree.map(lambda a, b, m: 2 * a - jnp.where(m, b, 0.0), g, gp, mask)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), got, expected)
    # outside the mask the reference reading is plain (1+λ)·g: gradient ascent direction on the loss
    for a, b, m in zip(jax.tree.leaves(got), jax.tree.leaves(g), jax.tree.leaves(mask)):
        np.testing.assert_allclose(np.asarray(a)[~np.asarray(m)], 2 * np.asarray(b)[~np.asarray(m)], rtol=1e-6)


def test_missing_grad_fn_or_params_is_a_clear_error(mlp):
    params, batch = mlp
    t = transforms.sam(0.1)
    g = jax.grad(mlp_loss)(params, batch)
    with pytest.raises(ValueError, match="grad_fn"):
        t.update(g, t.init(params), params)
    with pytest.raises(ValueError, match="params"):
        t.update(g, t.init(params), None, grad_fn=lambda p: p)


@pytest.mark.parametrize("kwargs,name", [({"rho": 0}, "rho"), ({"rho": 0.1, "sign": "up"}, "sign")])
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        transforms.sam(**kwargs)


# --------------------------------------------------------------------------------------------------------
# settings, has_aux, grad_fn checks
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"rho": "0.05"}, TypeError, r"rho must be a real number, got '0.05' \(str\)"),
        ({"rho": None}, TypeError, "rho must be a real number, got None"),
        ({"rho": 0.1, "lamb": float("nan")}, ValueError, "lamb must be a finite number >= 0.0, got nan"),
        ({"rho": 0.1, "lamb": -5}, ValueError, "lamb must be a finite number >= 0.0, got -5"),
        ({"rho": 0.1, "eta": -1.0}, ValueError, "eta must be a finite number >= 0.0, got -1.0"),
        ({"rho": 0.1, "axis_name": 0}, TypeError, "axis_name"),
        ({"rho": 0.1, "per_device": "yes"}, TypeError, "per_device"),
    ],
)
def test_bad_settings_raise_one_line_at_construction(kwargs, exc, match):
    with pytest.raises(exc, match=match) as info:
        transforms.sam(**kwargs)
    assert "\n" not in str(info.value)


def test_traced_rho_and_lamb_are_accepted_under_vmap(mlp):
    params, batch = mlp
    g = jax.grad(mlp_loss)(params, batch)
    grad_fn = lambda p: jax.grad(mlp_loss)(p, batch)

    def direction(rho, lamb):
        t = transforms.sam(rho, lamb=lamb)
        return t.update(g, t.init(params), params, grad_fn=grad_fn)[0]

    batched = jax.vmap(direction)(jnp.array([0.05, 0.2]), jnp.array([1.0, 0.5]))
    single = direction(0.2, 0.5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[1], b, rtol=1e-5, atol=1e-7), batched, single)


def test_has_aux_grad_fn_and_the_error_without_it(mlp):
    params, batch = mlp
    g = jax.grad(mlp_loss)(params, batch)
    with_aux = lambda p: jax.grad(lambda q: (mlp_loss(q, batch), {"acc": 0.5}), has_aux=True)(p)
    t = transforms.sam(0.1, has_aux=True)
    got, _ = t.update(g, t.init(params), params, grad_fn=with_aux)
    plain = transforms.sam(0.1)
    expected, _ = plain.update(g, plain.init(params), params, grad_fn=lambda p: jax.grad(mlp_loss)(p, batch))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), got, expected)
    with pytest.raises(TypeError, match=r"grad_fn returned a pair \(grads, aux\); pass sam\(\.\.\., has_aux=True\)"):
        plain.update(g, plain.init(params), params, grad_fn=with_aux)
    with pytest.raises(TypeError, match=r"has_aux=True\): grad_fn must return a pair"):
        t.update(g, t.init(params), params, grad_fn=lambda p: jax.grad(mlp_loss)(p, batch))
    with pytest.raises(ValueError, match="grad_fn"):
        plain.update(g, plain.init(params), params, grad_fn=lambda p: {"l0": p["l0"]})


# --------------------------------------------------------------------------------------------------------
# per-device SAM inside the user's shard_map / pmap
# --------------------------------------------------------------------------------------------------------
def _axis_report(variants: bool = True) -> dict:
    """Max differences of ``sam(axis_name=...)`` inside shard_map and pmap from a direct computation, on all
    local devices: per_device=True against the mean of each shard's own SAM direction, per_device=False against
    full-batch SAM; and the error for a gradient already reduced over the axis."""
    k = jax.device_count()
    mesh = distributed.make_mesh()
    params = mlp_init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (8 * k, 4))
    y = jax.random.randint(jax.random.key(2), (8 * k,), 0, 3)
    xs, ys = distributed.shard_batch(x, mesh), distributed.shard_batch(y, mesh)
    maxdiff = lambda a, b: max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    out = {"devices": k}
    configs = [("sam", {}), ("asam_max", {"adaptive": True, "eta": 0.01, "sign": "max", "lamb": 0.5})]
    for name, kw in configs if variants else configs[:1]:
        per_shard = [
            sharpness.value_and_sam_grad(mlp_loss, 0.1, **kw)(params, (x[i * 8 : i * 8 + 8], y[i * 8 : i * 8 + 8]))[1]
            for i in range(k)
        ]
        local_mean = jax.tree.map(lambda *a: sum(a) / k, *per_shard)
        full = sharpness.value_and_sam_grad(mlp_loss, 0.1, **kw)(params, (x, y))[1]
        for per_device, expected in ((True, local_mean), (False, full)):
            t = transforms.sam(0.1, axis_name="data", per_device=per_device, **kw)

            def body(p, xb, yb, t=t):
                pv = jax.tree.map(lambda a: jax.lax.pcast(a, "data", to="varying"), p)  # the LOCAL gradient
                g = jax.grad(mlp_loss)(pv, (xb, yb))
                return t.update(g, t.init(p), p, grad_fn=lambda q: jax.grad(mlp_loss)(q, (xb, yb)))[0]

            smap = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), P("data"), P("data")), out_specs=P()))
            out[f"shard_map/{name}/per_device={per_device}"] = maxdiff(smap(params, xs, ys), expected)

            def pbody(p, xb, yb, t=t):
                g = jax.grad(mlp_loss)(p, (xb, yb))
                return t.update(g, t.init(p), p, grad_fn=lambda q: jax.grad(mlp_loss)(q, (xb, yb)))[0]

            got = jax.pmap(pbody, axis_name="data", in_axes=(None, 0, 0))(params, x.reshape(k, 8, 4), y.reshape(k, 8))
            out[f"pmap/{name}/per_device={per_device}"] = max(
                maxdiff(jax.tree.map(lambda a, i=i: a[i], got), expected) for i in range(k)
            )
        if name == "sam" and k > 1:
            out["per_device_differs_from_full_batch"] = maxdiff(local_mean, full)
    t = transforms.sam(0.1, axis_name="data")

    def reduced(p, xb, yb):  # grads w.r.t. replicated params: shard_map sums them over the devices
        g = jax.grad(mlp_loss)(p, (xb, yb))
        return t.update(g, t.init(p), p, grad_fn=lambda q: jax.grad(mlp_loss)(q, (xb, yb)))[0]

    try:
        jax.shard_map(reduced, mesh=mesh, in_specs=(P(), P("data"), P("data")), out_specs=P())(params, xs, ys)
        out["reduced_error"] = ""
    except ValueError as exc:
        out["reduced_error"] = str(exc)
    try:
        t.update(jax.grad(mlp_loss)(params, (x, y)), t.init(params), params, grad_fn=jax.grad(lambda q: 0.0))
        out["unbound_error"] = ""
    except ValueError as exc:
        out["unbound_error"] = str(exc)
    return out


def _check_axis_report(r):
    for name, value in r.items():
        if name.startswith(("shard_map/", "pmap/")):
            assert value < 1e-6, (name, value)
    assert "needs the device-local gradient" in r["reduced_error"] and "pcast" in r["reduced_error"]
    assert "must run inside shard_map / pmap" in r["unbound_error"]


def test_axis_name_on_one_device():
    """The shard_map / pmap code paths on the one device of the default test process."""
    _check_axis_report(_axis_report(variants=False))


@pytest.mark.slow
def test_axis_name_on_four_devices_matches_a_direct_computation():
    """4 simulated CPU devices (XLA_FLAGS must be set before jax starts: a subprocess). per_device=True is the
    mean of the shards' own SAM directions (m-sharpness, ~1e-2 away from full-batch SAM here), per_device=False
    full-batch SAM; both agree with the direct computation to float32 rounding."""
    import json
    import os
    import subprocess
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import test_transforms as t; "
        "print(json.dumps(t._axis_report()))"
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", code, here], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["devices"] == 4
    _check_axis_report(r)
    assert r["per_device_differs_from_full_batch"] > 1e-4  # the two variants are really different
