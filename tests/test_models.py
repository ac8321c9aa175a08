"""Tests for jaxunlearn.models: shapes, the functional adapter, batch norm, pooling, the theory CNN."""

import functools

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxunlearn import models

RESNET_WIDTH = 0.125  # 8..64 channels: same code paths as the full model, fast on CPU
IMAGE_SHAPES = [(8, 8, 1), (28, 28, 1), (32, 32, 3)]


def _build(name, input_shape, num_classes=10, seed=0, **kw):
    if name == "resnet18":
        kw.setdefault("width", RESNET_WIDTH)
    if name == "mlp":
        kw.setdefault("hidden", (32, 16))
    return models.build(name, num_classes=num_classes, input_shape=input_shape, seed=seed, **kw)


@functools.cache
def _split(name, input_shape):
    """Build once per (name, shape) and share: the arrays are immutable and ApplyFn caches compilations."""
    model = _build(name, input_shape)
    return (model, *models.split_model(model))


def _x(shape, batch=4, seed=0):
    return jax.random.normal(jax.random.key(seed), (batch, *shape), jnp.float32)


def _expected_feature_dim(model):
    if isinstance(model, models.MLP):
        return model.hidden[-1]
    if isinstance(model, models.CNN):
        return model.dense.out_features
    if isinstance(model, models.ResNet18):
        return model.widths[-1]
    raise AssertionError(type(model))


# ----------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet18"])
@pytest.mark.parametrize("shape", IMAGE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_image_model_shapes_and_features_feed_the_head(name, shape):
    model, apply_fn, params, state = _split(name, shape)
    x = _x(shape)
    logits, _ = apply_fn(params, state, x)
    feats, _ = apply_fn(params, state, x, features=True)
    assert logits.shape == (4, model.num_classes)
    assert feats.shape == (4, _expected_feature_dim(model))
    # the penultimate features are exactly the input of the last dense layer
    head = params["head"]
    np.testing.assert_allclose(feats @ head["kernel"] + head["bias"], logits, rtol=1e-4, atol=1e-5)
    assert np.all(np.isfinite(np.asarray(logits)))


def test_cnn_pooling_adapts_to_input_size():
    assert _build("cnn", (8, 8, 1)).pools == (True, False)
    assert _build("cnn", (28, 28, 1)).pools == (True, True)
    assert _build("cnn", (4, 4, 1)).pools == (False, False)
    # odd sizes are cropped by the pool: 9 -> 4 -> (4 < 8, no pool)
    m = _build("cnn", (9, 9, 1))
    assert m.pools == (True, False)
    assert m.dense.in_features == 4 * 4 * m.channels[-1]


def test_resnet18_full_width_has_standard_parameter_count():
    # CIFAR ResNet-18 (torchvision-style BasicBlocks, 3x3 stem, 10 classes): conv/bn/fc counts by formula
    widths, count, cin = (64, 128, 256, 512), 3 * 3 * 3 * 64 + 2 * 64, 64
    for s, c in enumerate(widths):
        for b in range(2):
            count += 9 * cin * c + 2 * c + 9 * c * c + 2 * c
            if s > 0 and b == 0:
                count += cin * c + 2 * c
            cin = c
    count += 512 * 10 + 10
    # abstract init (shapes only, nothing allocated)
    model = nnx.eval_shape(lambda: models.build("resnet18", num_classes=10, input_shape=(32, 32, 3)))
    assert models.num_params(model) == count


def test_single_example_without_batch_axis():
    _, apply_fn, params, state = _split("cnn", (8, 8, 1))
    x = _x((8, 8, 1))
    batched, _ = apply_fn(params, state, x)
    single, _ = apply_fn(params, state, x[1])
    assert single.shape == (10,)
    np.testing.assert_allclose(single, batched[1], rtol=1e-5, atol=1e-6)


def test_build_is_deterministic_in_seed():
    p0 = _split("cnn", (8, 8, 1))[2]
    p0b = models.split_model(_build("cnn", (8, 8, 1), seed=0))[1]
    p1 = models.split_model(_build("cnn", (8, 8, 1), seed=1))[1]
    same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), p0, p0b)
    assert all(jax.tree.leaves(same))
    assert not np.array_equal(p0["conv0"]["kernel"], p1["conv0"]["kernel"])


# -------------------------------------------------------------------------------------- adapter


def _ce_loss(apply_fn, state, x, y):
    def loss(params):
        logits, _ = apply_fn(params, state, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return loss


def test_params_are_plain_dicts_of_arrays():
    _, _, params, state = _split("resnet18", (8, 8, 1))
    for tree in (params, state):
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            assert isinstance(leaf, jax.Array)
            assert all(isinstance(k, jax.tree_util.DictKey) and isinstance(k.key, str) for k in path)
    # batch-norm statistics are state, not params
    assert set(state["stem_bn"]) == {"mean", "var"}
    assert set(params["stem_bn"]) == {"scale", "bias"}


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_apply_fn_jit_and_grad(name):
    shape = (8, 8, 1)
    _, apply_fn, params, state = _split(name, shape)
    x, y = _x(shape), jnp.arange(4)
    eager, _ = apply_fn(params, state, x)
    jitted, _ = jax.jit(apply_fn)(params, state, x)
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-6)

    loss = _ce_loss(apply_fn, state, x, y)
    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert np.isfinite(value)
    # every parameter receives gradient, and it matches a finite difference along a random direction
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    v = jax.tree.unflatten(treedef, [jax.random.normal(k, a.shape) for k, a in zip(keys, leaves)])
    norm = jnp.sqrt(sum(jnp.vdot(d, d) for d in jax.tree.leaves(v)))
    v = jax.tree.map(lambda d: d / norm, v)  # unit direction
    eps = 1e-2
    plus = loss(jax.tree.map(lambda p, d: p + eps * d, params, v))
    minus = loss(jax.tree.map(lambda p, d: p - eps * d, params, v))
    fd = (plus - minus) / (2 * eps)
    directional = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(v)))
    np.testing.assert_allclose(fd, directional, rtol=2e-2, atol=1e-3)


def test_optax_step_and_vmap_per_example_grads():
    _, apply_fn, params, state = _split("mlp", (8, 8, 1))
    x, y = _x((8, 8, 1)), jnp.arange(4)

    # per-example gradients by vmapping over unbatched examples equal one-at-a-time gradients
    def example_loss(p, xi, yi):
        return optax.softmax_cross_entropy_with_integer_labels(apply_fn(p, state, xi)[0], yi)

    per_ex = jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0))(params, x, y)
    g2 = jax.grad(example_loss)(params, x[2], y[2])
    for a, b in zip(jax.tree.leaves(per_ex), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a[2], b, rtol=1e-4, atol=1e-6)

    # an Optax step keeps the structure and lowers the loss
    loss = _ce_loss(apply_fn, state, x, y)
    opt = optax.sgd(0.1)
    grads = jax.grad(loss)(params)
    updates, _ = opt.update(grads, opt.init(params), params)
    new_params = optax.apply_updates(params, updates)
    assert jax.tree.structure(new_params) == jax.tree.structure(params)
    assert loss(new_params) < loss(params)


def test_merge_model_and_closures_agree_with_apply_fn():
    model, apply_fn, params, state = _split("resnet18", (8, 8, 1))
    x = _x((8, 8, 1))
    logits, _ = apply_fn(params, state, x)
    feats, _ = apply_fn(params, state, x, features=True)
    np.testing.assert_allclose(models.logits_fn(apply_fn, state)(params, x), logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(models.features_fn(apply_fn, state)(params, x), feats, rtol=1e-5, atol=1e-6)
    for source in (apply_fn, apply_fn.graphdef):
        rebuilt = models.merge_model(source, params, state)
        assert isinstance(rebuilt, models.ResNet18)
        np.testing.assert_allclose(rebuilt(x), logits, rtol=1e-5, atol=1e-6)
    # the original module still gives the same logits (split_model does not consume it)
    np.testing.assert_allclose(model(x), logits, rtol=1e-5, atol=1e-6)


def test_batch_norm_train_updates_running_stats_eval_does_not():
    model, apply_fn, params, state = _split("resnet18", (8, 8, 1))
    x = 2.0 + 3.0 * _x((8, 8, 1))

    # eval: the state comes back unchanged (the very same object), output per example is batch-independent
    out_eval, same_state = apply_fn(params, state, x)
    assert same_state is state
    other = jnp.concatenate([x[:2], _x((8, 8, 1), batch=2, seed=5)])
    out_other, _ = apply_fn(params, state, other)
    np.testing.assert_allclose(out_other[:2], out_eval[:2], rtol=1e-4, atol=1e-5)

    # train: the engine's path, value_and_grad with the new batch statistics as aux
    y = jnp.arange(4)

    def train_loss(p):
        logits, new_state = apply_fn(p, state, x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), (logits, new_state)

    (_, (out_train, new_state)), grads = jax.jit(jax.value_and_grad(train_loss, has_aux=True))(params)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))
    # every running statistic moves, with momentum 0.9 on the stem batch norm
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), state, new_state)
    assert all(jax.tree.leaves(changed))
    h = jax.lax.conv_general_dilated(
        x, params["stem_conv"]["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    batch_mean = h.mean(axis=(0, 1, 2))
    np.testing.assert_allclose(
        new_state["stem_bn"]["mean"], 0.9 * state["stem_bn"]["mean"] + 0.1 * batch_mean, rtol=1e-4, atol=1e-5
    )
    # train mode normalizes with batch statistics, so the outputs differ from eval mode
    assert not np.allclose(out_train, out_eval, atol=1e-3)
    # after the update, eval with the new state still returns that state unchanged
    _, s2 = apply_fn(params, new_state, x)
    assert s2 is new_state
    # the module that was split is untouched
    np.testing.assert_array_equal(model.stem_bn.mean[...], state["stem_bn"]["mean"])


def test_models_without_batch_norm_have_empty_state():
    for name in ("mlp", "cnn"):
        assert _split(name, (8, 8, 1))[3] == {}
    apply_fn, params, state = models.split_model(models.build("theory_cnn", num_classes=2, input_shape=(2, 4)))
    assert state == {}
    _, new_state = apply_fn(params, state, jnp.ones((3, 2, 4)), train=True)
    assert new_state == {}


# -------------------------------------------------------------------------------------- pooling


@pytest.mark.parametrize("hw", [(8, 8), (7, 9)])
def test_reshape_max_pool_matches_reduce_window_values_and_grads(hw):
    x = jax.random.normal(jax.random.key(0), (3, *hw, 5))
    w = jax.random.normal(jax.random.key(1), (3, hw[0] // 2, hw[1] // 2, 5))
    ref = lambda x: linen.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    np.testing.assert_array_equal(models.max_pool_2x2(x), ref(x))
    g = jax.grad(lambda x: jnp.sum(w * models.max_pool_2x2(x)))(x)
    g_ref = jax.grad(lambda x: jnp.sum(w * ref(x)))(x)
    np.testing.assert_allclose(g, g_ref, rtol=1e-6, atol=1e-6)
    # and against plain numpy
    xn = np.asarray(x)
    h2, w2 = hw[0] // 2, hw[1] // 2
    expected = np.zeros((3, h2, w2, 5), np.float32)
    for i in range(h2):
        for j in range(w2):
            expected[:, i, j] = xn[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].max(axis=(1, 2))
    np.testing.assert_array_equal(models.max_pool_2x2(x), expected)


# ---------------------------------------------------------------------------------- theory model


def _numpy_theory(w, x, act, q):
    """F_j(x) = (1/m) Σ_r Σ_p σ(<w_{j,r}, x^(p)>) by explicit loops; returns (F_-1, F_+1) per example."""
    sigma = (lambda z: max(z, 0.0)) if act == "relu" else (lambda z: max(z, 0.0) ** q)
    _, m, _ = w.shape
    out = np.zeros((x.shape[0], 2))
    for b in range(x.shape[0]):
        for j in range(2):
            out[b, j] = sum(sigma(float(w[j, r] @ x[b, p])) for r in range(m) for p in range(x.shape[1])) / m
    return out


@pytest.mark.parametrize("activation,q", [("relu", 1), ("poly", 3), ("poly", 2)])
def test_theory_cnn_matches_numpy(activation, q):
    P, d, m = 3, 6, 4
    model = models.build(
        "theory_cnn", num_classes=2, input_shape=(P, d), filters=m, activation=activation, q=q, sigma0=0.5
    )
    apply_fn, params, state = models.split_model(model)
    x = _x((P, d), batch=5)
    logits, _ = apply_fn(params, state, x)
    ref = _numpy_theory(np.asarray(params["w"], np.float64), np.asarray(x, np.float64), activation, q)
    np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-6)
    # f = F_{+1} - F_{-1}; softmax cross-entropy on [F_-1, F_+1] is the logistic loss of y·f
    f = ref[:, 1] - ref[:, 0]
    np.testing.assert_allclose(logits[:, 1] - logits[:, 0], f, rtol=1e-4, atol=1e-6)
    labels = jnp.array([0, 1, 1, 0, 1])
    y = 2.0 * np.asarray(labels) - 1.0
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    np.testing.assert_allclose(ce, np.log1p(np.exp(-y * f)), rtol=1e-4, atol=1e-6)
    # features are the inputs of the fixed second layer: averaging them per class gives the logits
    feats, _ = apply_fn(params, state, x, features=True)
    assert feats.shape == (5, 2 * m)
    np.testing.assert_allclose(feats.reshape(5, 2, m).mean(-1), logits, rtol=1e-5, atol=1e-6)


def test_theory_cnn_second_layer_is_not_a_parameter():
    P, d, m = 2, 10, 7
    model = models.build("theory_cnn", num_classes=2, input_shape=(P, d), filters=m, sigma0=0.01)
    _, params, state = models.split_model(model)
    assert list(params) == ["w"] and params["w"].shape == (2, m, d)
    assert len(jax.tree.leaves(params)) == 1
    assert models.num_params(params) == 2 * m * d
    assert state == {}
    # init std follows sigma0 (2·m·d = 140 samples: loose bound)
    assert 0.005 < float(jnp.std(params["w"])) < 0.02


def test_theory_coefficients_match_dot_products():
    P, d, m, n = 2, 12, 3, 5
    model = models.build("theory_cnn", num_classes=2, input_shape=(P, d), filters=m, sigma0=1.0)
    _, params, _ = models.split_model(model)
    rng = np.random.default_rng(0)
    phi = rng.normal(size=d).astype(np.float32)
    xi = rng.normal(size=(n, d)).astype(np.float32)
    c = models.theory_coefficients(params, phi, xi)
    w = np.asarray(params["w"])
    assert c["signal"].shape == (2, m) and c["noise"].shape == (2, m, n)
    for j in range(2):
        for r in range(m):
            np.testing.assert_allclose(c["signal"][j, r], np.dot(w[j, r], phi), rtol=1e-5, atol=1e-5)
            for i in range(n):
                np.testing.assert_allclose(c["noise"][j, r, i], np.dot(w[j, r], xi[i]), rtol=1e-5, atol=1e-5)
    # same answer from the module itself, and jit-able
    c2 = jax.jit(models.theory_coefficients)(params, phi, xi)
    np.testing.assert_allclose(models.theory_coefficients(model, phi, xi)["noise"], c2["noise"], rtol=1e-6)
    with pytest.raises(ValueError, match="signal must have shape"):
        models.theory_coefficients(params, phi[:-1], xi)


# -------------------------------------------------------------------------------------- errors


def test_unknown_model_name_lists_known_and_suggests_closest():
    with pytest.raises(ValueError) as err:
        models.build("resnet", num_classes=10, input_shape=(32, 32, 3))
    msg = str(err.value)
    for name in models.MODELS:
        assert name in msg
    assert "Did you mean 'resnet18'" in msg


def test_incompatible_input_shapes_raise_with_expected_shape():
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        models.build("cnn", num_classes=10, input_shape=(8, 8))
    with pytest.raises(ValueError, match=r"\(P, d\)"):
        models.build("theory_cnn", num_classes=2, input_shape=(8, 8, 1))
    with pytest.raises(ValueError, match="num_classes must be 2"):
        models.build("theory_cnn", num_classes=10, input_shape=(2, 8))
    with pytest.raises(ValueError, match="does not accept 'widht'"):
        models.build("resnet18", num_classes=10, input_shape=(8, 8, 3), widht=0.5)
    _, apply_fn, params, state = _split("cnn", (8, 8, 1))
    with pytest.raises(ValueError, match=r"expected input of shape \[B, 8, 8, 1\]"):
        apply_fn(params, state, jnp.ones((2, 28, 28, 1)))


def test_train_flag_must_be_static():
    _, apply_fn, params, state = _split("mlp", (8, 8, 1))
    x = _x((8, 8, 1))
    with pytest.raises(TypeError, match="static_argnames"):
        jax.jit(apply_fn)(params, state, x, train=True)
    out, _ = jax.jit(apply_fn, static_argnames=("train",))(params, state, x, train=True)
    assert out.shape == (4, 10)


@pytest.mark.parametrize("scale,mode", [(1.0, "fan_in"), (2.0, "fan_out")])
def test_normal_init_variance(scale, mode):
    from jaxunlearn.models.layers import normal_init

    shape = (3, 3, 32, 64)
    w = normal_init(scale, mode)(jax.random.key(0), shape)
    fan = 9 * (32 if mode == "fan_in" else 64)
    assert w.shape == shape
    np.testing.assert_allclose(float(jnp.std(w)), np.sqrt(scale / fan), rtol=0.03)
    assert abs(float(jnp.mean(w))) < 0.1 * np.sqrt(scale / fan)
    # traceable: vmap over keys gives independent draws
    ws = jax.vmap(lambda k: normal_init(scale, mode)(k, (4, 5)))(jax.random.split(jax.random.key(1), 3))
    assert ws.shape == (3, 4, 5) and not np.allclose(ws[0], ws[1])


@pytest.mark.parametrize(
    "strides, padding", [((1, 1), "SAME"), ((2, 2), "SAME"), ((1, 1), "VALID"), ((2, 1), ((1, 2), (0, 1)))]
)
def test_im2col_conv_matches_lax_convolution_values_and_grads(strides, padding):
    from jax import lax

    from jaxunlearn.models.layers import im2col_conv

    x = jax.random.normal(jax.random.key(0), (3, 9, 8, 4))
    k = jax.random.normal(jax.random.key(1), (3, 3, 4, 5))

    def ref(x, k):
        return lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    a, b = ref(x, k), im2col_conv(x, k, strides, padding)
    assert a.shape == b.shape
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    ga = jax.grad(lambda x, k: jnp.sum(jnp.sin(ref(x, k))), argnums=(0, 1))(x, k)
    gb = jax.grad(lambda x, k: jnp.sum(jnp.sin(im2col_conv(x, k, strides, padding))), argnums=(0, 1))(x, k)
    for u, v in zip(ga, gb):
        np.testing.assert_allclose(v, u, rtol=1e-4, atol=1e-4)


def test_im2col_conv_rejects_what_it_does_not_compute():
    from jaxunlearn.models.layers import im2col_conv

    x, k = jnp.ones((1, 6, 6, 2)), jnp.ones((3, 3, 2, 4))
    with pytest.raises(ValueError, match="dilation"):
        im2col_conv(x, k, (1, 1), "SAME", rhs_dilation=(2, 2))
    with pytest.raises(ValueError, match="feature groups"):
        im2col_conv(x, k, (1, 1), "SAME", feature_group_count=2)
    with pytest.raises(ValueError, match="channels"):
        im2col_conv(jnp.ones((1, 6, 6, 3)), k, (1, 1), "SAME")


def test_cnn_im2col_has_the_same_parameters_outputs_and_vmapped_grads():
    """conv="im2col" builds the same parameters (same seed) and computes the same function; its gradient
    under vmap over K models (per-model kernels and inputs, as in engine.train_many) equals XLA's."""
    f1, p1, s1 = models.split_model(models.build("cnn", num_classes=10, input_shape=(8, 8, 1), seed=0))
    f2, p2, s2 = models.split_model(models.build("cnn", num_classes=10, input_shape=(8, 8, 1), seed=0, conv="im2col"))
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), p1, p2))
    x = jax.random.normal(jax.random.key(2), (3, 6, 8, 8, 1))
    np.testing.assert_allclose(f2(p1, s1, x[0])[0], f1(p1, s1, x[0])[0], rtol=1e-5, atol=1e-5)
    stacked = jax.tree.map(lambda a: jnp.stack([a, 0.5 * a, -a]), p1)

    def loss(f):
        return lambda p, xb: jnp.sum(f(p, s1, xb)[0] ** 2)

    g1 = jax.vmap(jax.grad(loss(f1)))(stacked, x)
    g2 = jax.vmap(jax.grad(loss(f2)))(stacked, x)
    for u, v in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(v, u, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="conv must be one of"):
        models.build("cnn", num_classes=10, input_shape=(8, 8, 1), conv="fft")


class _PlainMLP(nnx.Module):
    """A user's model: ``__call__(self, x)`` with no train/features arguments, Dropout and BatchNorm."""

    def __init__(self, rngs):
        self.lin = nnx.Linear(64, 16, rngs=rngs)
        self.bn = nnx.BatchNorm(16, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.head = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x):
        return self.head(self.drop(nnx.relu(self.bn(self.lin(x.reshape(x.shape[0], -1))))))


class _Deterministic(nnx.Module):
    def __init__(self, rngs):
        self.lin, self.drop = nnx.Linear(3, 2, rngs=rngs), nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x, *, deterministic=True):
        return self.drop(self.lin(x), deterministic=deterministic)


def test_call_convention_is_read_from_the_signature():
    assert models.call_convention(models.build("mlp", num_classes=3, input_shape=(4,))) == ("train", True)
    assert models.call_convention(_PlainMLP(nnx.Rngs(0))) == ("switch", False)
    assert models.call_convention(_Deterministic(nnx.Rngs(0))) == ("deterministic", False)


@pytest.mark.parametrize("cls", [_PlainMLP, _Deterministic])
def test_models_without_a_train_argument_get_train_and_eval_modes(cls):
    apply_fn, params, state = models.split_model(cls(nnx.Rngs(0)))
    x = jnp.ones((8, 64)) if cls is _PlainMLP else jnp.ones((8, 3))
    e1, e2 = apply_fn(params, state, x)[0], apply_fn(params, state, x)[0]
    np.testing.assert_array_equal(np.asarray(e1), np.asarray(e2))  # eval: Dropout off
    t1, s1 = apply_fn(params, state, x, train=True)
    t2, _ = apply_fn(params, s1, x, train=True)
    assert not np.allclose(np.asarray(t1), np.asarray(t2))  # train: Dropout on, a fresh mask per call
    assert not np.allclose(np.asarray(t1), np.asarray(e1))


def test_a_plain_user_model_trains_through_the_engine_with_checkpoints(tmp_path):
    from jaxunlearn import data, engine

    ds = data.load("digits", seed=0)
    apply_fn, params, state = models.split_model(_PlainMLP(nnx.Rngs(0)))
    src = engine.DeviceData.from_numpy(ds.x_train[:300], ds.y_train[:300])
    kw = dict(epochs=2, batch_size=50, progress=False, checkpoint_dir=tmp_path)
    res = engine.train(apply_fn, params, state, src, **kw)
    assert res.diverged is None and res.history[-1]["loss/train"] < res.history[0]["loss/train"]
    again = engine.train(apply_fn, params, state, src, **{**kw, "epochs": 3}, resume=True)
    assert again.resumed_from == 2 and len(again.history) == 1
    with pytest.raises(TypeError, match="has no features= argument"):
        models.features_fn(apply_fn, state)(params, jnp.ones((2, 64)))


def test_signatures_that_cannot_take_the_input_fail_when_wrapped():
    class NeedsMask(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(3, 2, rngs=rngs)

        def __call__(self, x, mask):
            return self.lin(x * mask)

    class NoInput(nnx.Module):
        def __call__(self):
            return 0

    with pytest.raises(TypeError, match=r"needs argument\(s\) \['mask'\] besides the input"):
        models.split_model(NeedsMask(nnx.Rngs(0)))
    with pytest.raises(TypeError, match="takes no input argument"):
        models.split_model(NoInput())


def test_update_model_writes_results_into_the_users_module():
    model = _PlainMLP(nnx.Rngs(0))
    apply_fn, params, state = models.split_model(model)
    doubled = jax.tree.map(lambda a: 2 * a, params)
    assert models.update_model(model, doubled, state) is model
    np.testing.assert_array_equal(np.asarray(model.lin.kernel[...]), 2 * np.asarray(params["lin"]["kernel"]))
    with pytest.raises(ValueError, match="params does not match _PlainMLP's structure"):
        models.update_model(model, {"lin": params["lin"]})


def test_merge_model_rejects_a_hand_written_apply_fn_with_the_alternative():
    with pytest.raises(TypeError, match="models.update_model\\(module, params, model_state\\)"):
        models.merge_model(lambda p, s, x, train=False: (x, s), {"w": jnp.ones(2)})


def test_context_checks_the_model_against_num_classes():
    from jaxunlearn import methods

    ctx = methods.toy_context()
    with pytest.raises(ValueError, match="with num_classes=100 and B=2 it gave \\(2, 3\\). Set num_classes"):
        methods.Context(ctx.apply_fn, ctx.params, ctx.model_state, ctx.x, ctx.y, ctx.retain_idx, ctx.forget_idx, 100)
    with pytest.raises(ValueError, match="the model cannot be called as apply_fn"):
        methods.Context(ctx.apply_fn, ctx.params, ctx.model_state, np.ones((60, 7), np.float32), ctx.y,
                        ctx.retain_idx, ctx.forget_idx, 3)  # fmt: skip
