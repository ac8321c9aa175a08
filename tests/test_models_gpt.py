"""The decoder-only transformer: shapes, causality, positions, tied embeddings, the adapter, FSDP."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxunlearn import distributed, models
from jaxunlearn.models import gpt

HERE = os.path.dirname(os.path.abspath(__file__))


def _split(**kw):
    kw = {"dim": 16, "heads": 2, **kw}
    return models.split_model(models.build("gpt", num_classes=13, input_shape=(8,), **kw))


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_shapes_and_causality(positions):
    apply_fn, params, state = _split(positions=positions)
    x = jnp.array([[1, 2, 3, 4, 5, 6, 7, 8]])
    logits, _ = apply_fn(params, state, x)
    assert logits.shape == (1, 8, 13)
    x2 = x.at[0, 5].set(9)  # changing token 5 changes nothing before position 5
    logits2, _ = apply_fn(params, state, x2)
    np.testing.assert_allclose(logits[0, :5], logits2[0, :5], atol=1e-6)
    assert float(jnp.abs(logits[0, 5:] - logits2[0, 5:]).max()) > 1e-6
    feats, _ = apply_fn(params, state, x, features=True)
    assert feats.shape == (1, 3, 8, 16)
    assert gpt.layer_hidden(feats, 2).shape == (1, 8, 16)


def test_tied_embeddings_and_positions():
    _, params, _ = _split()
    assert set(params) == {"block0", "block1", "embed", "ln_f", "pos"}  # no separate output head
    _, rparams, _ = _split(positions="rotary")
    assert "pos" not in rparams
    assert models.num_params(params) - models.num_params(rparams) == 8 * 16


def test_rotary_is_relative():
    """RoPE: q·k depends only on the offset of the two positions."""
    q = jax.random.normal(jax.random.key(0), (1, 1, 1, 8))
    k = jax.random.normal(jax.random.key(1), (1, 1, 1, 8))
    qs, ks = gpt.rotary(jnp.tile(q, (1, 6, 1, 1))), gpt.rotary(jnp.tile(k, (1, 6, 1, 1)))
    dots = jnp.einsum("d,d->", qs[0, 3, 0], ks[0, 1, 0]), jnp.einsum("d,d->", qs[0, 5, 0], ks[0, 3, 0])
    assert abs(float(dots[0] - dots[1])) < 1e-5


def test_dropout_only_in_train_mode():
    apply_fn, params, state = _split(dropout=0.5)
    x = jnp.ones((2, 8), jnp.int32)
    e1, e2 = apply_fn(params, state, x)[0], apply_fn(params, state, x)[0]
    assert bool(jnp.all(e1 == e2))
    t1, s1 = apply_fn(params, state, x, train=True)
    t2, _ = apply_fn(params, s1, x, train=True)
    assert not bool(jnp.all(t1 == t2))


def test_bad_inputs():
    apply_fn, params, state = _split()
    with pytest.raises(ValueError, match="longer than the model's context of 8"):
        apply_fn(params, state, jnp.zeros((1, 9), jnp.int32))
    with pytest.raises(ValueError, match="divisible by heads"):
        models.build("gpt", num_classes=5, input_shape=(4,), dim=10, heads=3)
    with pytest.raises(ValueError, match="positions must be one of"):
        models.build("gpt", num_classes=5, input_shape=(4,), positions="alibi")
    with pytest.raises(ValueError, match="input_shape = \\(context,\\)"):
        models.build("gpt", num_classes=5, input_shape=(4, 4))


def test_gradients_flow_and_single_sequence():
    apply_fn, params, state = _split()
    g = jax.jit(jax.grad(lambda p: apply_fn(p, state, jnp.arange(8))[0].sum()))(params)  # one program, not op by op
    assert all(bool(jnp.isfinite(leaf).all()) for leaf in jax.tree.leaves(g))
    assert apply_fn(params, state, jnp.arange(8))[0].shape == (8, 13)
    m = gpt.GPT(7, context=4, dim=8, depth=1, heads=2, rngs=nnx.Rngs(0))
    assert m(jnp.zeros(3, jnp.int32)).shape == (3, 7)


def test_fsdp_shardings_one_device():
    _, params, _ = _split()
    mesh = distributed.make_mesh(1, ("data", "model"), model=1)
    shard = gpt.fsdp_shardings(params, mesh)
    assert jax.tree.structure(shard) == jax.tree.structure(params)


@pytest.mark.slow
def test_fsdp_on_8_devices_matches_one_device(tmp_path):
    """Two epochs of AdamW and of SAM, and NPO with SAM, with the GPT's parameters sharded FSDP-style over
    a (data 4 × model 2) mesh of 8 simulated CPU devices give the one-device parameters up to float rounding
    (measured: ~3e-5 after moving ~2e-2; Adam's normalization magnifies rounding of near-zero gradients)."""
    out = tmp_path / "fsdp.json"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, os.path.join(HERE, "_lm_fsdp_worker.py"), str(out)], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(out.read_text())
    assert r["devices"] == 8
    for kind in ("sgd", "sam"):
        assert r[f"train_{kind}_moved"] > 1e-3
        assert r[f"train_{kind}_maxdiff"] < 2e-4
        assert "model" in r[f"train_{kind}_spec"]
    assert r["npo_moved"] > 1e-3 and r["npo_maxdiff"] < 2e-4
    assert r["manual_sharded_leaves"] >= 4 and r["manual_maxdiff"] < 2e-4
    assert "model" in r["manual_spec"]
