import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import mlp_loss

from jaxunlearn import sharpness
from jaxunlearn.sharpness import perturbation, value_and_sam_grad


def _np_tree(t):
    return jax.tree.map(np.asarray, t)


def test_perturbation_norm_equals_rho(mlp):
    params, batch = mlp
    g = jax.grad(mlp_loss)(params, batch)
    e = perturbation(g, params, 0.3)
    assert float(sharpness.tree_norm(e)) == pytest.approx(0.3, rel=1e-5)
    # direction is the gradient's
    ratios = jax.tree.leaves(jax.tree.map(lambda a, b: a / b, e, g))
    np.testing.assert_allclose(np.concatenate([r.ravel() for r in ratios]), ratios[0].ravel()[0], rtol=1e-4)


def test_zero_gradient_gives_zero_perturbation_not_nan(mlp):
    params, _ = mlp
    zeros = jax.tree.map(jnp.zeros_like, params)
    for adaptive in (False, True):
        e = perturbation(zeros, params, 0.1, adaptive=adaptive, eta=0.01)
        for leaf in jax.tree.leaves(e):
            assert np.all(np.asarray(leaf) == 0.0)


def test_sam_min_equals_gradient_at_perturbed_point(mlp):
    params, batch = mlp
    g = jax.grad(mlp_loss)(params, batch)
    rho = 0.2
    norm = np.sqrt(sum(np.sum(np.asarray(x) ** 2) for x in jax.tree.leaves(g)))
    w_pert = jax.tree.map(lambda w, gi: w + rho * gi / (norm + 1e-12), params, g)
    expected = jax.grad(mlp_loss)(w_pert, batch)
    loss, got = value_and_sam_grad(mlp_loss, rho)(params, batch)
    assert float(loss) == pytest.approx(float(mlp_loss(params, batch)), rel=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, expected)


@pytest.mark.parametrize("lamb", [0.5, 1.0, 2.0])
def test_sam_max_is_sharpness_maximization(mlp, lamb):
    params, batch = mlp
    rho = 0.1
    g = jax.grad(mlp_loss)(params, batch)
    e = perturbation(g, params, rho)
    gp = jax.grad(mlp_loss)(jax.tree.map(jnp.add, params, e), batch)
    _, got = value_and_sam_grad(mlp_loss, rho, lamb=lamb, sign="max")(params, batch)
    expected = jax.tree.map(lambda a, b: (1 + lamb) * a - lamb * b, g, gp)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, expected)
    # ... which is the gradient of L(w) - λ [L(w+e) - L(w)] with e held fixed
    obj = lambda p: mlp_loss(p, batch) - lamb * (mlp_loss(jax.tree.map(jnp.add, p, e), batch) - mlp_loss(p, batch))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), got, jax.grad(obj)(params))


def test_lambda_interpolates_between_sgd_and_sam(mlp):
    params, batch = mlp
    g = jax.grad(mlp_loss)(params, batch)
    _, g0 = value_and_sam_grad(mlp_loss, 0.1, lamb=0.0)(params, batch)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), g0, g)


def test_asam_matches_independent_numpy(mlp):
    params, batch = mlp
    rho, eta = 0.5, 0.01
    g = _np_tree(jax.grad(mlp_loss)(params, batch))
    w = _np_tree(params)
    flat_w = np.concatenate([x.ravel() for x in jax.tree.leaves(w)]).astype(np.float64)
    flat_g = np.concatenate([x.ravel() for x in jax.tree.leaves(g)]).astype(np.float64)
    t = np.abs(flat_w) + eta
    e = rho * t**2 * flat_g / (np.linalg.norm(t * flat_g) + 1e-12)
    got_e = perturbation(jax.grad(mlp_loss)(params, batch), params, rho, adaptive=True, eta=eta)
    flat_e = np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(got_e)])
    np.testing.assert_allclose(flat_e, e, rtol=1e-5, atol=1e-8)
    # and the ASAM gradient is the gradient at w + e
    _, unravel = jax.flatten_util.ravel_pytree(params)
    expected = jax.grad(mlp_loss)(unravel(jnp.asarray(flat_w + e, jnp.float32)), batch)
    _, got = value_and_sam_grad(mlp_loss, rho, adaptive=True, eta=eta)(params, batch)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), got, expected)


def test_matches_optax_contrib_sam_on_quadratic():
    A = jnp.array([[3.0, 0.5], [0.5, 1.0]])
    loss = lambda w, b: 0.5 * w @ A @ w + b @ w
    b = jnp.array([0.3, -0.2])
    rho, lr = 0.05, 0.1
    opt = optax.contrib.sam(
        optax.sgd(lr), optax.chain(optax.contrib.normalize(), optax.sgd(rho)), sync_period=2, opaque_mode=True
    )
    w_ref = w_ours = jnp.array([1.0, -2.0])
    state = opt.init(w_ref)
    for _ in range(5):
        g = jax.grad(loss)(w_ref, b)
        upd, state = opt.update(g, state, w_ref, grad_fn=lambda p, _: jax.grad(loss)(p, b))
        w_ref = optax.apply_updates(w_ref, upd)
        _, g_ours = value_and_sam_grad(loss, rho)(w_ours, b)
        w_ours = w_ours - lr * g_ours
    np.testing.assert_allclose(w_ours, w_ref, rtol=1e-5)


def test_jit_and_vmap_over_rho(mlp):
    params, batch = mlp
    rhos = jnp.array([0.01, 0.1, 0.5])

    def direction(rho):
        return value_and_sam_grad(mlp_loss, rho)(params, batch)[1]

    batched = jax.jit(jax.vmap(direction))(rhos)
    for i, r in enumerate([0.01, 0.1, 0.5]):
        single = value_and_sam_grad(mlp_loss, r)(params, batch)[1]
        jax.tree.map(lambda a, b, i=i: np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-6), batched, single)


def test_has_aux_returns_unperturbed_aux_like_batch_norm_state(mlp):
    params, (x, y) = mlp

    def loss_with_state(p, batch, running_mean):
        x, y = batch
        h = x @ p["l0"]["w"]
        batch_mean = jnp.mean(h, axis=0)
        new_mean = 0.9 * running_mean + 0.1 * batch_mean
        return mlp_loss(p, batch), new_mean

    rm = jnp.zeros(5)
    (loss, new_rm), _ = value_and_sam_grad(loss_with_state, 0.1, has_aux=True)(params, (x, y), rm)
    expected = 0.1 * jnp.mean(x @ params["l0"]["w"], axis=0)
    np.testing.assert_allclose(new_rm, expected, rtol=1e-6)
    assert float(loss) == pytest.approx(float(mlp_loss(params, (x, y))))


def test_sharpness_value(mlp):
    params, batch = mlp
    g = jax.grad(mlp_loss)(params, batch)
    e = perturbation(g, params, 0.1)
    expected = mlp_loss(jax.tree.map(jnp.add, params, e), batch) - mlp_loss(params, batch)
    got = sharpness.sharpness(mlp_loss, params, batch, 0.1)
    assert float(got) == pytest.approx(float(expected), rel=1e-5)
    assert float(got) > 0  # ascent direction increases the loss for small rho


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"rho": 0.0}, "rho"),
        ({"rho": -1.0}, "rho"),
        ({"rho": 0.1, "sign": "maxx"}, "sign"),
        ({"rho": 0.1, "eta": -1}, "eta"),
    ],
)
def test_bad_arguments_raise_value_error_naming_argument(kwargs, name):
    rho = kwargs.pop("rho")
    with pytest.raises(ValueError, match=name):
        value_and_sam_grad(mlp_loss, rho, **kwargs)


def test_mismatched_pytrees_raise(mlp):
    params, batch = mlp
    g = jax.grad(mlp_loss)(params, batch)
    with pytest.raises(ValueError, match="grads"):
        perturbation({"only": g["l0"]}, params, 0.1)


def test_sign_error_suggests_close_option():
    with pytest.raises(ValueError, match="Did you mean 'max'"):
        value_and_sam_grad(mlp_loss, 0.1, sign="maxx")


# --------------------------------------------------------------------------------------------------------
# settings checked at construction, *args and has_aux
# --------------------------------------------------------------------------------------------------------
BAD_SETTINGS = [
    ({"rho": "0.05"}, TypeError, r"rho must be a real number, got '0.05' \(str\)"),
    ({"rho": None}, TypeError, r"rho must be a real number, got None"),
    ({"rho": float("nan")}, ValueError, r"rho must be a finite number > 0.0, got nan"),
    ({"rho": 0.1, "lamb": float("nan")}, ValueError, r"lamb must be a finite number >= 0.0, got nan"),
    ({"rho": 0.1, "lamb": -5}, ValueError, r"lamb must be a finite number >= 0.0, got -5.*sign='max'"),
    ({"rho": 0.1, "eta": -0.01}, ValueError, r"eta must be a finite number >= 0.0, got -0.01"),
    ({"rho": 0.1, "eta": "0.01"}, TypeError, r"eta must be a real number"),
]


@pytest.mark.parametrize("kwargs, exc, match", BAD_SETTINGS)
def test_bad_settings_raise_one_line_at_construction(kwargs, exc, match):
    kwargs = dict(kwargs)
    rho = kwargs.pop("rho")
    for build in (
        lambda: value_and_sam_grad(mlp_loss, rho, **kwargs),
        lambda: sharpness.sam_grad(mlp_loss, rho, **kwargs),
        lambda: sharpness.accumulated_value_and_sam_grad(mlp_loss, rho, **kwargs),
    ):
        with pytest.raises(exc, match=match) as info:
            build()
        assert "\n" not in str(info.value)
    if "lamb" not in kwargs:  # perturbation has no λ
        with pytest.raises(exc, match=match):
            perturbation({"w": jnp.ones(2)}, {"w": jnp.ones(2)}, rho, **kwargs)


def test_traced_settings_are_accepted_under_vmap(mlp):
    params, batch = mlp
    lambs = jnp.array([0.0, 0.5, 2.0])
    etas = jnp.array([0.0, 0.01, 0.1])
    d = jax.vmap(
        lambda lamb, eta: value_and_sam_grad(mlp_loss, 0.1, lamb=lamb, adaptive=True, eta=eta)(params, batch)[1]
    )(lambs, etas)
    single = value_and_sam_grad(mlp_loss, 0.1, lamb=0.5, adaptive=True, eta=0.01)(params, batch)[1]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[1], b, rtol=1e-5, atol=1e-6), d, single)
    # numpy scalars and 0-d arrays are numbers too
    value_and_sam_grad(mlp_loss, np.float32(0.1), lamb=np.float64(1.0))
    value_and_sam_grad(mlp_loss, jnp.asarray(0.1))


def test_a_tuple_without_has_aux_or_a_non_scalar_loss_is_one_clear_line(mlp):
    params, batch = mlp
    pair = lambda p, b: (mlp_loss(p, b), {"n": 1})
    with pytest.raises(TypeError, match=r"if it returns \(loss, aux\), pass has_aux=True"):
        value_and_sam_grad(pair, 0.1)(params, batch)
    with pytest.raises(TypeError, match="pass has_aux=True"):
        sharpness.sharpness(pair, params, batch, rho=0.1)
    per_example = lambda p, b: -jnp.take_along_axis(jax.nn.log_softmax(b[0] @ p["l0"]["w"]), b[1][:, None], 1)
    with pytest.raises(ValueError, match=r"must return a scalar, got shape \(16, 1\)"):
        value_and_sam_grad(per_example, 0.1)(params, batch)
    with pytest.raises(TypeError, match=r"has_aux=True loss_fn must return a pair \(loss, aux\)"):
        value_and_sam_grad(mlp_loss, 0.1, has_aux=True)(params, batch)
    with pytest.raises(TypeError, match="loss_fn must be a function"):
        value_and_sam_grad("mlp_loss", 0.1)


def test_sam_grad_with_aux_returns_direction_and_unperturbed_aux(mlp):
    params, batch = mlp
    aux_loss = lambda p, x, y: (mlp_loss(p, (x, y)), jnp.mean(x))
    d, aux = sharpness.sam_grad(aux_loss, 0.1, has_aux=True)(params, *batch)
    _, expected = value_and_sam_grad(mlp_loss, 0.1)(params, batch)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), d, expected)
    assert float(aux) == pytest.approx(float(jnp.mean(batch[0])))


def test_sharpness_takes_star_args_rho_by_keyword_and_the_earlier_positional_radius(mlp):
    params, (x, y) = mlp
    earlier = sharpness.sharpness(mlp_loss, params, (x, y), 0.1)
    by_keyword = sharpness.sharpness(lambda p, x, y: mlp_loss(p, (x, y)), params, x, y, rho=0.1)
    with_aux = sharpness.sharpness(lambda p, x, y: (mlp_loss(p, (x, y)), 0), params, x, y, rho=0.1, has_aux=True)
    assert float(by_keyword) == pytest.approx(float(earlier), rel=1e-6)
    assert float(with_aux) == pytest.approx(float(earlier), rel=1e-6)
    with pytest.raises(TypeError, match=r"Pass the radius by keyword: sharpness\(loss_fn, params, \*args, rho=0.05\)"):
        sharpness.sharpness(lambda p, x, y: mlp_loss(p, (x, y)), params, x, y)  # y taken as the radius
    with pytest.raises(TypeError, match="needs the radius"):
        sharpness.sharpness(lambda p: jnp.sum(p), jnp.ones(2))
