"""The ``reference`` preset against NumPy transcriptions of the official sharp-unlearn code.

Each test writes the official computation in NumPy (gradients of a linear softmax model by hand, batch
normalization by hand) and compares it with what the library computes under the preset.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxunlearn import methods, models, presets, selection
from jaxunlearn.methods.neggrad import neggrad_loss
from jaxunlearn.plan import OptimConfig, StepInfo, build_optimizer

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ NumPy transcriptions of the official code


def official_hard_mask(grads: list[np.ndarray], fraction: float) -> list[np.ndarray]:
    """generate_mask.py: concatenate |g|, argsort ascending, ranks < int(N·f) -> 1 (a stable sort here)."""
    flat = np.concatenate([np.abs(g).ravel() for g in grads])
    threshold_index = int(len(flat) * fraction)
    positions = np.argsort(flat, kind="stable")
    ranks = np.argsort(positions, kind="stable")
    out, start = [], 0
    for g in grads:
        out.append((ranks[start : start + g.size] < threshold_index).reshape(g.shape))
        start += g.size
    return out


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def linear_ce_grads(w, b, x, y):
    """∇ of mean CE of softmax(x·w + b) w.r.t. (b, w), by hand."""
    p = softmax(x @ w + b)
    p[np.arange(len(y)), y] -= 1.0
    return p.sum(0) / len(y), x.T @ p / len(y)


def official_saliency(w, b, x, y, batch):
    """Σ over consecutive batches of ∇(−mean CE) (the forget loader's loop, unshuffled)."""
    gb, gw = np.zeros_like(b), np.zeros_like(w)
    for s in range(0, len(y), batch):
        db, dw = linear_ce_grads(w, b, x[s : s + batch], y[s : s + batch])
        gb, gw = gb - db, gw - dw
    return gb, gw


# --------------------------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.29, 0.3, 0.5])
def test_floor_rounding_selects_the_official_smallest_int_n_f(fraction):
    rng = np.random.default_rng(0)
    scores = {"a": np.abs(rng.normal(size=(7, 9))), "b": np.abs(rng.normal(size=13))}
    scores["b"][:4] = 0.0  # ties (zero gradients), broken by position as a stable sort does
    leaves = [scores["a"], scores["b"]]  # the pytree's (sorted-key) leaf order
    got = selection.top_fraction(scores, fraction, largest=False, rounding="floor")
    want = official_hard_mask(leaves, fraction)
    np.testing.assert_array_equal(np.asarray(got["a"]), want[0])
    np.testing.assert_array_equal(np.asarray(got["b"]), want[1])
    assert selection.mask_size(got) == int(76 * fraction)  # 0.29·76 = 22.04 -> 22, ⌈⌉ would give 23


def test_ceil_and_floor_differ_where_n_f_is_fractional():
    s = {"w": jnp.arange(10.0)}
    assert selection.mask_size(selection.top_fraction(s, 0.25)) == 3
    assert selection.mask_size(selection.top_fraction(s, 0.25, rounding="floor")) == 2
    with pytest.raises(ValueError, match="rounding must be one of"):
        selection.top_fraction(s, 0.25, rounding="round")


class _Linear:
    """apply_fn of a linear softmax model, ``params = {"b": [C], "w": [D, C]}`` (the leaves in that order)."""

    def __call__(self, params, state, x, *, train=False, features=False):
        return x @ params["w"] + params["b"], state


def _linear_context(n=40, n_forget=23, d=6, c=3, batch_size=10, seed=0, **kw):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float64)
    y = rng.integers(0, c, size=n).astype(np.int32)
    w, b = rng.normal(size=(d, c)), rng.normal(size=c)
    params = {"b": jnp.asarray(b, jnp.float32), "w": jnp.asarray(w, jnp.float32)}
    ctx = methods.Context(
        _Linear(),
        params,
        {},
        jnp.asarray(x, jnp.float32),
        jnp.asarray(y),
        retain_idx=np.arange(n - n_forget),
        forget_idx=np.arange(n - n_forget, n),
        num_classes=c,
        batch_size=batch_size,
        **kw,
    )
    return ctx, (w, b, x[n - n_forget :].astype(np.float32).astype(np.float64), y[n - n_forget :])


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5])
def test_reference_sharp_minmax_mask_equals_the_official_mask(fraction):
    """23 forget examples in batches of 10: the last batch (3) weighs 1/3, the others 1/10 per example."""
    ctx, (w, b, xf, yf) = _linear_context()
    w32, b32 = np.asarray(ctx.params["w"], np.float64), np.asarray(ctx.params["b"], np.float64)
    gb, gw = official_saliency(w32, b32, xf, yf, batch=ctx.batch_size)
    want_b, want_w = official_hard_mask([gb, gw], fraction)

    opts = presets.get("reference").method_options("sharp_minmax", {"fraction": fraction})
    recipe = methods.get("sharp_minmax").recipe(methods.Context(**{**ctx.__dict__, "options": opts}))
    mask = recipe.plan.hp["mask_forget"]
    np.testing.assert_array_equal(np.asarray(mask["b"]), want_b)
    np.testing.assert_array_equal(np.asarray(mask["w"]), want_w)
    assert recipe.plan.mask_reading == "reference"
    assert recipe.plan.phases[1].optimizer.lr == recipe.plan.optimizer.lr  # one learning rate
    # the default reading selects the LARGEST ⌈N·f⌉ of the summed per-example gradients instead
    default = methods.get("sharp_minmax").recipe(methods.Context(**{**ctx.__dict__, "options": {"fraction": fraction}}))
    assert selection.mask_size(default.plan.hp["mask_forget"]) == int(np.ceil(21 * fraction - 1e-9))
    assert not all(
        np.array_equal(np.asarray(a), np.asarray(m))
        for a, m in zip(jax.tree.leaves(default.plan.hp["mask_forget"]), jax.tree.leaves(mask))
    )


def test_batch_mean_saliency_differs_from_the_sum_by_the_last_batch_only():
    ctx, (w, b, xf, yf) = _linear_context()
    w32, b32 = np.asarray(ctx.params["w"], np.float64), np.asarray(ctx.params["b"], np.float64)
    gb_mean, gw_mean = official_saliency(w32, b32, xf, yf, batch=ctx.batch_size)
    gb_sum, gw_sum = official_saliency(w32, b32, xf, yf, batch=len(yf))
    from jaxunlearn.methods.common import summed_gradient

    g = summed_gradient(ctx.apply_fn, ctx.params, {}, ctx.x, ctx.y, ctx.forget_idx, batch_size=10, batch_mean=True)
    np.testing.assert_allclose(np.asarray(g["w"]), -gw_mean, rtol=1e-4, atol=1e-6)  # ∇CE = −∇(−CE)
    np.testing.assert_allclose(np.asarray(g["b"]), -gb_mean, rtol=1e-4, atol=1e-6)
    g_sum = summed_gradient(ctx.apply_fn, ctx.params, {}, ctx.x, ctx.y, ctx.forget_idx, batch_size=10)
    np.testing.assert_allclose(np.asarray(g_sum["w"]), -gw_sum * len(yf), rtol=1e-4, atol=1e-5)


class _BNNet(nnx.Module):
    def __init__(self, rngs):
        self.bn = nnx.BatchNorm(3, rngs=rngs)
        self.head = nnx.Linear(3, 2, rngs=rngs)

    def __call__(self, x):
        return self.head(self.bn(x))


def _bn_forward(x, scale, bias, w, b, eps=1e-5):
    mu, var = x.mean(0), x.var(0)
    return ((x - mu) / np.sqrt(var + eps) * scale + bias) @ w + b, mu, var


def _ce(logits, y):
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return -logp[np.arange(len(y)), y].mean()


def test_neggrad_normalizes_each_set_by_its_own_batch_statistics():
    """Two passes as in the official loop: per-set BN statistics, running averages updated twice."""
    model = _BNNet(nnx.Rngs(0))
    apply_fn, params, state = models.split_model(model)
    rng = np.random.default_rng(1)
    xr, xf = rng.normal(size=(8, 3)).astype(np.float32), (3.0 + 2.0 * rng.normal(size=(5, 3))).astype(np.float32)
    yr, yf = rng.integers(0, 2, 8), rng.integers(0, 2, 5)
    batch = {
        "retain": {"x": jnp.asarray(xr), "y": jnp.asarray(yr)},
        "forget": {"x": jnp.asarray(xf), "y": jnp.asarray(yf)},
    }
    alpha = 0.9
    loss, new_state = neggrad_loss(apply_fn, params, state, batch, {"alpha": jnp.float32(alpha)}, StepInfo.at())

    p = jax.tree.map(np.asarray, params)
    scale, bias, w, b = p["bn"]["scale"], p["bn"]["bias"], p["head"]["kernel"], p["head"]["bias"]
    logits_r, mu_r, var_r = _bn_forward(xr.astype(np.float64), scale, bias, w, b)
    logits_f, mu_f, var_f = _bn_forward(xf.astype(np.float64), scale, bias, w, b)
    want = alpha * _ce(logits_r, yr) - (1 - alpha) * _ce(logits_f, yf)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)

    m = model.bn.momentum  # flax: avg <- m·avg + (1 − m)·batch
    s = jax.tree.map(np.asarray, state)
    mean0, var0 = s["bn"]["mean"], s["bn"]["var"]
    want_mean = m * (m * mean0 + (1 - m) * mu_r) + (1 - m) * mu_f
    want_var = m * (m * var0 + (1 - m) * var_r) + (1 - m) * var_f
    np.testing.assert_allclose(np.asarray(new_state["bn"]["mean"]), want_mean, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(new_state["bn"]["var"]), want_var, rtol=1e-5)

    # one concatenated pass would normalize both sets together: a different loss
    logits_all, _, _ = _bn_forward(np.concatenate([xr, xf]).astype(np.float64), scale, bias, w, b)
    joint = alpha * _ce(logits_all[:8], yr) - (1 - alpha) * _ce(logits_all[8:], yf)
    assert abs(joint - want) > 1e-3


def test_neggrad_without_model_state_matches_two_separate_passes():
    ctx = methods.toy_context()
    assert not jax.tree.leaves(ctx.model_state)
    r, f = ctx.retain_idx[:16], ctx.forget_idx[:8]
    batch = {"retain": {"x": ctx.x[r], "y": ctx.y[r]}, "forget": {"x": ctx.x[f], "y": ctx.y[f]}}
    loss, _ = neggrad_loss(ctx.apply_fn, ctx.params, {}, batch, {"alpha": jnp.float32(0.99)}, StepInfo.at())
    from jaxunlearn import objectives

    def ce(part):
        logits, _ = ctx.apply_fn(ctx.params, {}, batch[part]["x"])
        return objectives.cross_entropy(logits, batch[part]["y"])

    np.testing.assert_allclose(float(loss), float(0.99 * ce("retain") - 0.01 * ce("forget")), rtol=1e-6)


def test_reference_asam_step_equals_the_official_update():
    """SAM(adaptive) around SGD (no momentum, no decay): e = ρ·w²·g/‖|w|·g‖, w ← w − lr·∇L(w + e)."""
    a = np.array([1.0, -2.0, 0.5, 0.0])
    w0 = np.array([0.3, -1.2, 2.0, 0.0])

    def loss(w):  # L(w) = Σ a_i w_i² + Σ w_i³/3:  ∇L = 2aw + w²
        return jnp.sum(jnp.asarray(a) * w**2) + jnp.sum(w**3) / 3

    def grad(w):
        return 2 * a * w + w**2

    rho, lr = 0.5, 0.1
    base = OptimConfig(name="sgd", lr=lr, momentum=0.0, weight_decay=0.0, schedule="constant", sam="asam", rho=rho)
    cfg = presets.get("reference").optimizer_config(base)
    assert cfg.eta == 0.0
    with jax.enable_x64():
        tx = build_optimizer(cfg, 10)
        w = jnp.asarray(w0)
        upd, _ = tx.update(jax.grad(loss)(w), tx.init(w), w, grad_fn=jax.grad(loss))
        got = np.asarray(w + upd)
    g = grad(w0)
    e = rho * w0**2 * g / (np.linalg.norm(np.abs(w0) * g) + 1e-12)
    want = w0 - lr * grad(w0 + e)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    # the default η = 0.01 perturbs the parameter at 0 as well: a different step
    with jax.enable_x64():
        tx = build_optimizer(base, 10)
        upd, _ = tx.update(jax.grad(loss)(w), tx.init(w), w, grad_fn=jax.grad(loss))
    assert not np.allclose(np.asarray(w + upd), want, rtol=1e-9)


def test_every_preset_option_is_a_valid_method_option():
    for preset in presets.PRESETS.values():
        for name, opts in preset.options.items():
            resolved = methods.resolve_options(methods.get(name), preset.method_options(name))
            assert {k: resolved[k] for k in opts} == opts
        OptimConfig(**preset.optimizer)  # every optimizer field exists and is valid


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match=r"preset must be one of \['default', 'reference'\]"):
        presets.get("official")


def test_the_docs_table_is_the_presets_table():
    text = (ROOT / "docs" / "REFERENCE.md").read_text()
    assert presets.REFERENCE.table() in text
