"""LM metrics: exact-match equals real greedy decoding, Min-K, MIA AUC, utility, relearning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxunlearn import engine
from jaxunlearn.methods import lm
from jaxunlearn.metrics import lm as M


@pytest.fixture(scope="module")
def trained():
    """The toy context's GPT after a few epochs on all its examples (it has learned part of the corpus)."""
    ctx = lm.toy_lm_context(num_people=6)
    idx = np.arange(ctx.data["x"].shape[0])
    res = engine.train(ctx.apply_fn, ctx.params, ctx.model_state, ctx.data, optimizer=lm.LM_PRETRAIN_DEFAULT,
                       epochs=30, batch_size=16, train_idx=idx, loss=lm.lm_loss, progress=False)  # fmt: skip
    return ctx, res.params


def test_exact_match_equals_greedy_decoding(trained):
    ctx, params = trained
    d = {k: np.asarray(v) for k, v in ctx.data.items()}
    idx = np.arange(d["x"].shape[0])
    s = M.example_stats(ctx.apply_fn, params, ctx.model_state, ctx.data, idx)
    assert 0.0 < s["em"].mean() <= 1.0  # a mix of hits and misses makes the comparison meaningful
    start = d["emask"].argmax(1)  # the first scored target position = the prompt length in x
    n_gen = d["emask"].sum(1).astype(int)
    prompts = np.where(np.arange(d["x"].shape[1])[None] <= start[:, None], d["x"], 0)
    out = np.asarray(M.greedy_generate(ctx.apply_fn, params, ctx.model_state, prompts, start + 1, int(n_gen.max())))
    # the prediction after each decoded sequence's last input (all rows in one pass)
    last = np.asarray(jnp.argmax(ctx.apply_fn(params, ctx.model_state, jnp.asarray(out), train=False)[0], axis=-1))
    for i in idx:
        want = d["y"][i][d["emask"][i] > 0]
        got = out[i, start[i] + 1 : start[i] + 1 + n_gen[i] - 1]  # the generated tokens inside the context
        hit = np.array_equal(got, want[: len(got)])
        if len(got) == len(want) - 1:  # the last target (<eos>) falls after the context's last input
            hit = hit and int(last[i, start[i] + n_gen[i] - 1]) == int(want[-1])
        assert bool(s["em"][i]) == hit, i


def test_min_k_and_mia():
    lp = jnp.array([[-1.0, -2.0, -3.0, -4.0, 0.0]])
    m = jnp.array([[1.0, 1.0, 1.0, 1.0, 0.0]])
    np.testing.assert_allclose(M.min_k_scores(lp, m, k=0.25), [-4.0])
    np.testing.assert_allclose(M.min_k_scores(lp, m, k=0.5), [-3.5])
    r = M.mia_auc({"loss": np.array([1.0, 2.0]), "min_k": np.array([0.0, 1.0])},
                  {"loss": np.array([1.5, 2.5]), "min_k": np.array([0.5, 2.0])})  # fmt: skip
    assert r["loss"] == 0.75 and r["min_k"] == 0.25


def test_evaluate_and_memorized_forget_set(trained):
    ctx, params = trained
    r = M.evaluate_lm(ctx.apply_fn, params, ctx.model_state, ctx.data, forget_idx=ctx.forget_idx,
                      retain_idx=ctx.retain_idx[12:], heldout_idx=ctx.retain_idx[:12])  # fmt: skip
    for k in ("forget_em", "retain_em", "forget_extraction", "mia_loss", "mia_min_k", "utility_acc"):
        assert 0.0 <= r[k] <= 1.0
    assert r["utility_ppl"] == pytest.approx(np.exp(r["utility_loss"]))
    assert r["forget_loss"] < 3.0  # trained on


def test_relearn_lm_recovers(trained):
    ctx, params = trained
    # "forget" by resetting: a fresh model relearns the forget set from a few of its examples
    curve = M.relearn_lm(ctx.apply_fn, ctx.params, ctx.model_state, ctx.data, ctx.forget_idx, ctx.forget_idx,
                         steps=40, lr=1e-2, eval_every=20)  # fmt: skip
    assert curve["steps"] == [0, 20, 40]
    assert curve["forget_acc"][-1] > curve["forget_acc"][0]
    assert 0.0 <= curve["auc"] <= 1.0
    with pytest.raises(ValueError, match="at least one relearn example"):
        M.relearn_lm(ctx.apply_fn, params, ctx.model_state, ctx.data, [], ctx.forget_idx)


def test_greedy_generate_respects_the_context(trained):
    ctx, params = trained
    x = ctx.data["x"][:2]
    t = x.shape[1]
    out = M.greedy_generate(ctx.apply_fn, params, ctx.model_state, x, jnp.array([t - 1, t - 1]), 4)
    np.testing.assert_array_equal(np.asarray(out[:, : t - 1]), np.asarray(x[:, : t - 1]))
    assert jax.tree.leaves(out)[0].shape == x.shape
