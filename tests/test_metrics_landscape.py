"""Tests for jaxunlearn.metrics.landscape (filter-normalized directions, loss surfaces, plots)."""

import jax
import jax.numpy as jnp
import matplotlib.image as mpimg
import numpy as np
import pytest

from jaxunlearn.metrics import landscape


def _cnn_params(key):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "conv": {"kernel": jax.random.normal(k1, (3, 3, 2, 4)) * 0.3, "bias": jnp.arange(4.0)},
        "dense": {"kernel": jax.random.normal(k2, (8, 3)) * jnp.array([0.1, 1.0, 5.0]), "bias": jnp.ones(3)},
        "bn": {"scale": jax.random.uniform(k3, (3,)) + 0.5},
        "step": jnp.array(3, dtype=jnp.int32),
    }


def _mlp_params(key, sizes=(5, 7, 3)):
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {"w": jax.random.normal(k, (a, b)) / np.sqrt(a), "b": jnp.full((b,), 0.1)}
        for k, a, b in zip(keys, sizes[:-1], sizes[1:])
    ]


def _mlp_logits(params, x):
    for i, layer in enumerate(params):
        x = x @ layer["w"] + layer["b"]
        if i < len(params) - 1:
            x = jnp.tanh(x)
    return x


def _ce(params, batch):
    x, y = batch
    logp = jax.nn.log_softmax(_mlp_logits(params, x))
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def _filter_norms(a):
    a = np.asarray(a, np.float64)
    return np.sqrt(np.sum(a.reshape(-1, a.shape[-1]) ** 2, axis=0))


def test_filter_normalized_directions_match_param_filter_norms():
    params = _cnn_params(jax.random.key(0))
    d1, d2 = landscape.random_directions(params, jax.random.key(1))
    assert jax.tree_util.tree_structure(d1) == jax.tree_util.tree_structure(params)
    for d in (d1, d2):
        for name in ("conv", "dense"):
            np.testing.assert_allclose(
                _filter_norms(d[name]["kernel"]), _filter_norms(params[name]["kernel"]), rtol=1e-5
            )
            np.testing.assert_array_equal(np.asarray(d[name]["bias"]), 0.0)
        np.testing.assert_array_equal(np.asarray(d["bn"]["scale"]), 0.0)
        assert d["step"].dtype == jnp.int32 and int(d["step"]) == 0
    assert not np.allclose(np.asarray(d1["dense"]["kernel"]), np.asarray(d2["dense"]["kernel"]))
    # Same key -> same directions (pure function of the key).
    e1, _ = landscape.random_directions(params, jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(e1["conv"]["kernel"]), np.asarray(d1["conv"]["kernel"]))


def test_direction_variants():
    params = _cnn_params(jax.random.key(2))
    d1, _ = landscape.random_directions(params, jax.random.key(3), ignore_1d=False)
    for leaf, ref in ((d1["conv"]["bias"], params["conv"]["bias"]), (d1["bn"]["scale"], params["bn"]["scale"])):
        assert np.linalg.norm(np.asarray(leaf)) == pytest.approx(np.linalg.norm(np.asarray(ref)), rel=1e-5)
    d1, _ = landscape.random_directions(params, jax.random.key(3), filter_normalize="layer")
    k = np.asarray(d1["dense"]["kernel"])
    assert np.linalg.norm(k) == pytest.approx(np.linalg.norm(np.asarray(params["dense"]["kernel"])), rel=1e-5)
    # Per-filter norms are NOT matched in layer mode (the dense filters have very different scales).
    assert not np.allclose(_filter_norms(k), _filter_norms(params["dense"]["kernel"]), rtol=1e-2)
    d1, _ = landscape.random_directions(params, jax.random.key(3), filter_normalize=False)
    assert np.std(np.asarray(d1["conv"]["kernel"])) == pytest.approx(1.0, abs=0.25)
    with pytest.raises(ValueError, match="filter_normalize"):
        landscape.random_directions(params, jax.random.key(3), filter_normalize="row")


def test_loss_surface_center_and_direct_loop():
    kp, kx, ky, kd = jax.random.split(jax.random.key(0), 4)
    params = _mlp_params(kp)
    x = jax.random.normal(kx, (37, 5))
    y = jax.random.randint(ky, (37,), 0, 3)
    d1, d2 = landscape.random_directions(params, kd)
    num, span = 7, 0.8
    alphas, betas, z = landscape.loss_surface(_ce, params, d1, d2, span=span, num=num, batch=(x, y), chunk_size=4)
    assert z.shape == (num, num)
    np.testing.assert_allclose(alphas, np.linspace(-span, span, num))
    np.testing.assert_allclose(betas, np.linspace(-span, span, num))
    ce = jax.jit(_ce)
    assert z[num // 2, num // 2] == pytest.approx(float(ce(params, (x, y))), rel=1e-5)
    for i, j in [(0, 0), (0, num - 1), (2, 5), (num - 1, 3)]:
        a, b = alphas[i], betas[j]
        p = jax.tree_util.tree_map(lambda w, u, v, a=a, b=b: w + a * u + b * v, params, d1, d2)
        assert z[i, j] == pytest.approx(float(ce(p, (x, y))), rel=1e-4)
    # Evaluating the data in sub-batches (with a remainder: 37 = 3·10 + 7) gives the same surface.
    _, _, zb = landscape.loss_surface(_ce, params, d1, d2, span=span, num=num, batch=(x, y), batch_size=10)
    np.testing.assert_allclose(zb, z, rtol=1e-4)
    # Closure form loss_fn(params) and has_aux.
    _, _, zc = landscape.loss_surface(lambda p: (_ce(p, (x, y)), 0.0), params, d1, d2, span=span, num=num, has_aux=True)
    np.testing.assert_allclose(zc, z, rtol=1e-5)


def test_quadratic_landscape_is_the_expected_paraboloid():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 4))
    h = a @ a.T + np.eye(4)  # SPD Hessian
    w0 = rng.normal(size=4)
    g = rng.normal(size=4)
    loss = lambda p: 0.5 * p["w"] @ jnp.asarray(h, jnp.float32) @ p["w"] + jnp.asarray(g, jnp.float32) @ p["w"]
    params = {"w": jnp.asarray(w0, jnp.float32)}
    u, v = rng.normal(size=4), rng.normal(size=4)
    d1, d2 = {"w": jnp.asarray(u, jnp.float32)}, {"w": jnp.asarray(v, jnp.float32)}
    alphas, betas, z = landscape.loss_surface(loss, params, d1, d2, span=1.5, num=9)
    aa, bb = np.meshgrid(alphas, betas, indexing="ij")
    pts = w0[None, None, :] + aa[..., None] * u + bb[..., None] * v
    expected = 0.5 * np.einsum("ijk,kl,ijl->ij", pts, h, pts) + pts @ g
    np.testing.assert_allclose(z, expected, rtol=1e-4, atol=1e-4)
    # Pure paraboloid centred at the origin: Z = ½(α² + β²) with orthonormal directions.
    iso = {"w": jnp.zeros(2)}
    e1, e2 = {"w": jnp.array([1.0, 0.0])}, {"w": jnp.array([0.0, 1.0])}
    alphas, betas, z = landscape.loss_surface(lambda p: 0.5 * jnp.sum(p["w"] ** 2), iso, e1, e2, num=11)
    aa, bb = np.meshgrid(alphas, betas, indexing="ij")
    np.testing.assert_allclose(z, 0.5 * (aa**2 + bb**2), atol=1e-6)


def test_sharpness_summary_on_paraboloids():
    alphas = betas = np.linspace(-1, 1, 21)
    aa, bb = np.meshgrid(alphas, betas, indexing="ij")
    flat, sharp = 0.5 * (aa**2 + bb**2) + 2.0, 5.0 * (aa**2 + bb**2) + 2.0
    s_flat = landscape.sharpness_summary(flat, alphas, betas)
    s_sharp = landscape.sharpness_summary(sharp, alphas, betas)
    inside = aa**2 + bb**2 <= 1.0 + 1e-9
    assert s_flat["center"] == pytest.approx(2.0)
    assert s_flat["sharpness"] == pytest.approx(np.mean(0.5 * (aa**2 + bb**2)[inside]))
    assert s_flat["max_increase"] == pytest.approx(0.5)
    assert s_sharp["sharpness"] == pytest.approx(10.0 * s_flat["sharpness"])
    assert s_sharp["grad_norm"] > s_flat["grad_norm"] > 0
    assert 0.0 <= s_flat["basin_ratio"] <= 1.0
    small = landscape.sharpness_summary(flat, alphas, betas, radius=0.5)
    assert small["sharpness"] < s_flat["sharpness"] and small["radius"] == 0.5
    # Default grid coordinates are linspace(-1, 1, n).
    assert landscape.sharpness_summary(flat)["sharpness"] == pytest.approx(s_flat["sharpness"])
    # Non-finite points are ignored and counted.
    holed = flat.copy()
    holed[0, 0] = np.inf
    assert landscape.sharpness_summary(holed, alphas, betas)["nonfinite"] == 1


def test_plot_surface_writes_png(tmp_path):
    alphas = betas = np.linspace(-1, 1, 9)
    aa, bb = np.meshgrid(alphas, betas, indexing="ij")
    path = tmp_path / "sub" / "landscape.png"
    out = landscape.plot_surface(
        alphas, betas, {"forget": aa**2 + bb**2, "test": 0.3 * aa**2 + bb**2 + aa}, path, title="toy"
    )
    assert out == str(path) and path.stat().st_size > 0
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[1] > img.shape[0]  # two panels side by side
    landscape.plot_surface(alphas, betas, np.full((9, 9), 1.5), tmp_path / "flat.png")  # constant: no crash
    assert mpimg.imread(tmp_path / "flat.png").size > 0


def test_validation_errors(tmp_path):
    params = {"w": jnp.ones((2, 2))}
    d = {"w": jnp.ones((2, 2))}
    loss = lambda p: jnp.sum(p["w"])
    with pytest.raises(ValueError, match="num"):
        landscape.loss_surface(loss, params, d, d, num=1)
    with pytest.raises(ValueError, match="span"):
        landscape.loss_surface(loss, params, d, d, span=0.0)
    with pytest.raises(ValueError, match="d2"):
        landscape.loss_surface(loss, params, d, {"v": jnp.ones((2, 2))})
    with pytest.raises(ValueError, match="d1"):
        landscape.loss_surface(loss, params, {"w": jnp.ones((3,))}, d)
    with pytest.raises(ValueError, match="batch_size"):
        landscape.loss_surface(loss, params, d, d, batch_size=4)
    with pytest.raises(ValueError, match="batch"):
        landscape.loss_surface(lambda p, b: loss(p), params, d, d, batch=(np.ones((3, 1)), np.ones(4)))
    with pytest.raises(ValueError, match="Z"):
        landscape.sharpness_summary(np.ones(5))
    with pytest.raises(ValueError, match="alphas"):
        landscape.sharpness_summary(np.ones((3, 3)), alphas=np.ones(4))
    with pytest.raises(ValueError, match="radius"):
        landscape.sharpness_summary(np.ones((3, 3)), radius=-1.0)
    with pytest.raises(ValueError, match="surfaces"):
        landscape.plot_surface(np.ones(3), np.ones(3), {}, tmp_path / "x.png")
