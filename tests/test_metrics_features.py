"""Tests for jaxunlearn.metrics.features (batched feature extraction, 2-D projection, plots)."""

import jax
import jax.numpy as jnp
import matplotlib.image as mpimg
import numpy as np
import pytest

from jaxunlearn.metrics import features


def _sets(seed=0, d=6):
    rng = np.random.default_rng(seed)
    return {
        "retain": rng.normal(size=(120, d)),
        "forget": rng.normal(size=(25, d)) + 2.0,
        "test": rng.normal(size=(40, d)) - 0.5,
    }


def test_batched_apply_matches_direct_call():
    w = jax.random.normal(jax.random.key(0), (5, 3))
    fn = lambda p, x: jnp.tanh(x @ p)
    x = np.asarray(jax.random.normal(jax.random.key(1), (17, 5)))
    direct = np.asarray(fn(w, x))
    for bs in (1, 4, 17, 64):
        np.testing.assert_allclose(features.batched_apply(fn, w, x, batch_size=bs), direct, rtol=1e-6, atol=1e-6)
    out = features.batched_apply(lambda p, x: {"a": x @ p, "b": x.sum(-1)}, w, x, batch_size=4)
    assert out["a"].shape == (17, 3) and out["b"].shape == (17,)
    with pytest.raises(ValueError, match="empty"):
        features.batched_apply(fn, w, np.zeros((0, 5)))
    with pytest.raises(ValueError, match="batch_size"):
        features.batched_apply(fn, w, x, batch_size=0)


def test_pca_projection_is_fit_on_union_and_shared():
    f = _sets()
    z = features.project_2d(f)
    assert {k: v.shape for k, v in z.items()} == {k: (v.shape[0], 2) for k, v in f.items()}
    # Compare with an independent PCA (sklearn) up to the sign of each axis.
    from sklearn.decomposition import PCA

    allx = np.concatenate(list(f.values()))
    ref = PCA(n_components=2).fit(allx)
    for k in f:
        zr = ref.transform(f[k])
        for j in range(2):
            s = np.sign(np.dot(z[k][:, j], zr[:, j])) or 1.0
            np.testing.assert_allclose(z[k][:, j], s * zr[:, j], atol=1e-8)
    # fit_on: a second dict is projected in the basis of the first.
    g = {k: v + 1.0 for k, v in f.items()}
    zg = features.project_2d(g, fit_on=f)
    for k in f:
        np.testing.assert_allclose(zg[k] - z[k], np.broadcast_to(zg[k][0] - z[k][0], z[k].shape), atol=1e-8)


def test_tsne_projection_shapes():
    f = {k: v[:15] for k, v in _sets(1).items()}
    z = features.project_2d(f, method="tsne", seed=0)
    assert all(z[k].shape == (f[k].shape[0], 2) and np.all(np.isfinite(z[k])) for k in f)
    with pytest.raises(ValueError, match="fit_on"):
        features.project_2d(f, method="tsne", fit_on=f)


def test_project_2d_validation():
    with pytest.raises(ValueError, match="method"):
        features.project_2d(_sets(), method="umap")
    with pytest.raises(ValueError, match="features"):
        features.project_2d({})
    with pytest.raises(ValueError, match="feature dim"):
        features.project_2d({"a": np.ones((3, 2)), "b": np.ones((3, 4))})
    with pytest.raises(ValueError, match="empty"):
        features.project_2d({"a": np.ones((0, 2))})


def test_plot_features_writes_png_and_subsamples(tmp_path):
    before = _sets(0)
    after = {k: v * 0.5 for k, v in before.items()}
    path = tmp_path / "figs" / "features.png"
    coords = features.plot_features(before, after, path, max_points=30, seed=3, title="toy")
    assert path.exists() and path.stat().st_size > 0
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 100
    for k in before:
        n = min(30, before[k].shape[0])
        assert coords["before"][k].shape == (n, 2) and coords["after"][k].shape == (n, 2)
    # Same examples in both panels and one shared PCA: after = 0.5·before maps to an affine image.
    zb, za = coords["before"]["retain"], coords["after"]["retain"]
    diff = za - 0.5 * zb
    np.testing.assert_allclose(diff, np.broadcast_to(diff[0], diff.shape), atol=1e-8)
    assert [p.name for p in (tmp_path / "figs").iterdir()] == ["features.png"]


def test_plot_features_single_panel_tsne_and_extra_sets(tmp_path):
    rng = np.random.default_rng(2)
    before = {
        "retain": rng.normal(size=(20, 4)),
        "forget": rng.normal(size=(8, 4)),
        "val": rng.normal(size=(6, 4)),
        "ood": rng.normal(size=(6, 4)),
    }
    p1 = features.plot_features(before, None, tmp_path / "one.png")
    assert (tmp_path / "one.png").stat().st_size > 0 and p1["after"] == {}
    features.plot_features(before, before, tmp_path / "tsne.png", method="tsne")
    assert mpimg.imread(tmp_path / "tsne.png").size > 0
    with pytest.raises(ValueError, match="max_points"):
        features.plot_features(before, None, tmp_path / "x.png", max_points=0)
    with pytest.raises(ValueError, match="after"):
        features.plot_features(before, {"retain": np.ones((3, 5))}, tmp_path / "x.png")
