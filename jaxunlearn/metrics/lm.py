"""Metrics of language-model unlearning on token arrays (``x``, ``y``, ``mask``, ``emask``; see
:mod:`jaxunlearn.data.facts`).

* answer exact-match: greedy decoding of the answer given the question reproduces it exactly;
* verbatim extraction: greedy completion of a fact sentence's prefix (everything before the value)
  reproduces the rest of the sentence exactly;
* per-token loss: ``−Σ m log p(y) / Σ m`` per example;
* MIA AUC (forget examples vs held-out examples as non-members): with the loss (score ``−loss``) and with
  Min-K % probability (Shi et al. 2024: the mean of the lowest ``k`` % token log-probabilities);
* utility: mean token loss, perplexity ``exp(loss)`` and next-token accuracy on held-out text;
* the relearning attack: fine-tune on a few forget examples and track the forget exact-match per step.

Exact-match under greedy decoding equals "the argmax at every answer position is the target" with the true
prefix fed in (teacher forcing): as long as every earlier token matched, the greedy prefix IS the true
prefix. So one forward pass scores a whole batch; :func:`greedy_generate` decodes for real and the tests
check the two agree.

Example:
    >>> from jaxunlearn.methods.lm import toy_lm_context
    >>> ctx = toy_lm_context()
    >>> s = example_stats(ctx.apply_fn, ctx.params, ctx.model_state, ctx.data, ctx.forget_idx)
    >>> sorted(s), s["em"].shape
    (['attr', 'em', 'kind', 'loss', 'min_k', 'person', 'token_acc'], (12,))
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxunlearn import objectives
from jaxunlearn.metrics.mia import attack_auc
from jaxunlearn.metrics.relearn import relearn_curve

__all__ = [
    "example_stats",
    "greedy_generate",
    "exact_match",
    "mia_auc",
    "utility",
    "evaluate_lm",
    "relearn_lm",
    "min_k_scores",
]

PyTree = Any


def min_k_scores(log_probs: jax.Array, mask: jax.Array, k: float = 0.2) -> jax.Array:
    """Min-K % probability per sequence: the mean of the ``⌈k·n⌉`` smallest token log-probabilities among its
    ``n`` masked tokens (higher = more likely a training member).

    Example:
        >>> lp = jnp.array([[-1.0, -5.0, -2.0, -0.5]]); m = jnp.ones((1, 4))
        >>> min_k_scores(lp, m, k=0.5).tolist()      # mean of -5 and -2
        [-3.5]
    """
    m = mask > 0
    lp = jnp.where(m, log_probs, jnp.inf)
    srt = jnp.sort(lp, axis=-1)
    n = jnp.sum(m, axis=-1)
    kk = jnp.maximum(1, jnp.ceil(k * n)).astype(jnp.int32)
    take = jnp.arange(lp.shape[-1])[None, :] < kk[:, None]
    return jnp.sum(jnp.where(take, srt, 0.0), axis=-1) / kk


@functools.lru_cache(maxsize=32)
def _stats_fn(apply_fn, k: float):
    def f(params, model_state, x, y, mask, emask):
        logits, _ = apply_fn(params, model_state, x, train=False)
        lp = objectives.token_log_probs(logits, y)
        m = mask.astype(jnp.float32)
        n = jnp.maximum(jnp.sum(m, -1), 1.0)
        hit = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
        em = jnp.all((hit > 0) | (emask <= 0), axis=-1) & (jnp.sum(emask, -1) > 0)
        return {"loss": -jnp.sum(m * lp, -1) / n, "em": em.astype(jnp.float32), "min_k": min_k_scores(lp, m, k),
                "token_acc": jnp.sum(m * hit, -1) / n}  # fmt: skip

    return jax.jit(f)


def example_stats(apply_fn, params, model_state, data: dict, idx, *, k: float = 0.2, chunk: int = 256) -> dict:
    """Per-example numbers (numpy, in the order of ``idx``): ``loss`` (mean token NLL over ``mask``), ``em``
    (1 when the ``emask`` tokens are reproduced exactly by greedy decoding), ``min_k`` (:func:`min_k_scores`
    over ``mask``), ``token_acc`` (next-token accuracy over ``mask``), and ``kind`` / ``person`` / ``attr``
    when ``data`` has them.

    Example:
        >>> from jaxunlearn.methods.lm import toy_lm_context
        >>> ctx = toy_lm_context()
        >>> s = example_stats(ctx.apply_fn, ctx.params, ctx.model_state, ctx.data, ctx.retain_idx[:5], chunk=2)
        >>> s["loss"].shape, bool(s["em"].max() <= 1)
        ((5,), True)
    """
    idx = np.asarray(idx)
    if idx.size == 0:
        raise ValueError("example_stats needs at least one example index.")
    fn = _stats_fn(apply_fn, float(k))
    emask = data["emask"] if "emask" in data else data["mask"]
    parts = []
    for s in range(0, idx.size, chunk):
        i = jnp.asarray(idx[s : s + chunk])
        x, y, m, e = (jnp.take(jnp.asarray(a), i, axis=0) for a in (data["x"], data["y"], data["mask"], emask))
        parts.append(fn(params, model_state, x, y, m, e))
    out = {key: np.concatenate([np.asarray(p[key]) for p in parts]) for key in parts[0]}
    for key in ("kind", "person", "attr"):
        if key in data:
            out[key] = np.asarray(data[key])[idx]
    return out


def greedy_generate(apply_fn, params, model_state, tokens, prompt_len, steps: int) -> jax.Array:
    """Greedy decoding: for ``s = 0..steps−1``, ``tokens[b, L_b + s] = argmax p(· | tokens[b, :L_b + s])``
    with ``L_b = prompt_len[b]`` (positions past the context are dropped). ``tokens`` ``[B, T]`` holds the
    prompts (anything after them is overwritten). Returns the completed ``[B, T]`` tokens.

    Example:
        >>> from jaxunlearn.methods.lm import toy_lm_context
        >>> ctx = toy_lm_context()
        >>> x = ctx.data["x"][:2]
        >>> out = greedy_generate(ctx.apply_fn, ctx.params, ctx.model_state, x, jnp.array([3, 4]), 2)
        >>> bool(jnp.all(out[:, :3] == x[:, :3])), out.shape
        (True, (2, 14))
    """
    tokens = jnp.asarray(tokens)
    prompt_len = jnp.asarray(prompt_len, jnp.int32)
    b, t = tokens.shape
    rows = jnp.arange(b)

    def body(s, tok):
        logits, _ = apply_fn(params, model_state, tok, train=False)
        pos = prompt_len + s  # the position written; predicted from position pos − 1
        nxt = jnp.argmax(logits[rows, jnp.clip(pos - 1, 0, t - 1)], axis=-1).astype(tok.dtype)
        return tok.at[rows, jnp.clip(pos, 0, t - 1)].set(jnp.where(pos < t, nxt, tok[rows, jnp.clip(pos, 0, t - 1)]))

    return jax.lax.fori_loop(0, int(steps), body, tokens)


def exact_match(stats: dict, kind: int | None = None) -> float:
    """Mean ``em`` of :func:`example_stats` over the examples of ``kind`` (0 = fact sentences: verbatim
    extraction; 1 = questions: answer exact-match; None = all); NaN when there are none.

    Example:
        >>> exact_match({"em": np.array([1.0, 0.0, 1.0]), "kind": np.array([1, 1, 0])}, kind=1)
        0.5
    """
    em = np.asarray(stats["em"])
    if kind is not None:
        em = em[np.asarray(stats["kind"]) == kind]
    return float(em.mean()) if em.size else float("nan")


def mia_auc(member: dict, nonmember: dict) -> dict:
    """Membership-inference AUC of members (e.g. the forget examples) against non-members (held-out examples):
    ``loss`` with the score ``−loss`` and ``min_k`` with the Min-K % score; 0.5 = indistinguishable (what
    Retrain gives for the forget set), 1 = members fully exposed.

    Example:
        >>> mia_auc({"loss": np.array([0.1, 0.2]), "min_k": np.array([-0.5, -0.4])},
        ...         {"loss": np.array([2.0, 3.0]), "min_k": np.array([-4.0, -3.0])})
        {'loss': 1.0, 'min_k': 1.0}
    """
    out = {}
    for key, sign in (("loss", -1.0), ("min_k", 1.0)):
        s = np.concatenate([sign * np.asarray(member[key]), sign * np.asarray(nonmember[key])])
        lab = np.concatenate([np.ones(len(member[key])), np.zeros(len(nonmember[key]))])
        out[key] = attack_auc(s, lab)
    return out


def utility(stats: dict) -> dict:
    """Utility on held-out text from :func:`example_stats`: ``loss`` (mean over examples of the mean token
    NLL), ``perplexity = exp(loss)`` and ``token_acc`` (mean next-token accuracy).

    Example:
        >>> u = utility({"loss": np.array([1.0, 3.0]), "token_acc": np.array([0.5, 0.7])})
        >>> round(u["perplexity"], 4), u["token_acc"]
        (7.3891, 0.6)
    """
    loss = float(np.mean(stats["loss"]))
    return {"loss": loss, "perplexity": float(math.exp(loss)), "token_acc": float(np.mean(stats["token_acc"]))}


def evaluate_lm(apply_fn, params, model_state, data: dict, *, forget_idx, retain_idx, heldout_idx, k: float = 0.2,
                max_retain: int | None = 1024) -> dict:  # fmt: skip
    """Every metric of one model (fractions in [0, 1]): ``forget_em`` / ``retain_em`` / ``heldout_em`` (answer
    exact-match), ``forget_extraction`` / ``retain_extraction`` (verbatim extraction rate), ``forget_loss`` /
    ``retain_loss`` (mean per-token loss over all their examples), ``mia_loss`` / ``mia_min_k`` (forget vs
    held-out AUC), ``utility_loss`` / ``utility_ppl`` / ``utility_acc`` (held-out sentences). The retain
    numbers use at most ``max_retain`` examples (an evenly spaced subset) to keep evaluation cheap.

    Example:
        >>> from jaxunlearn.methods.lm import toy_lm_context
        >>> ctx = toy_lm_context()
        >>> r = evaluate_lm(ctx.apply_fn, ctx.params, ctx.model_state, ctx.data, forget_idx=ctx.forget_idx,
        ...                 retain_idx=ctx.retain_idx[12:], heldout_idx=ctx.retain_idx[:12])
        >>> sorted(r)[:4], 0.0 <= r["mia_min_k"] <= 1.0
        (['forget_em', 'forget_extraction', 'forget_loss', 'heldout_em'], True)
    """
    retain_idx = np.asarray(retain_idx)
    if max_retain is not None and retain_idx.size > max_retain:
        retain_idx = retain_idx[np.linspace(0, retain_idx.size - 1, max_retain).astype(int)]
    f = example_stats(apply_fn, params, model_state, data, forget_idx, k=k)
    r = example_stats(apply_fn, params, model_state, data, retain_idx, k=k)
    h = example_stats(apply_fn, params, model_state, data, heldout_idx, k=k)
    mia = mia_auc(f, h)
    sentences = {key: v[h["kind"] == 0] for key, v in h.items()} if "kind" in h else h
    u = utility(sentences)
    return {
        "forget_em": exact_match(f, 1 if "kind" in f else None),
        "retain_em": exact_match(r, 1 if "kind" in r else None),
        "heldout_em": exact_match(h, 1 if "kind" in h else None),
        "forget_extraction": exact_match(f, 0 if "kind" in f else None),
        "retain_extraction": exact_match(r, 0 if "kind" in r else None),
        "forget_loss": float(np.mean(f["loss"])),
        "retain_loss": float(np.mean(r["loss"])),
        "mia_loss": mia["loss"],
        "mia_min_k": mia["min_k"],
        "utility_loss": u["loss"],
        "utility_ppl": u["perplexity"],
        "utility_acc": u["token_acc"],
    }


@functools.lru_cache(maxsize=32)
def _relearn_fns(apply_fn, tx):
    def loss(p, model_state, batch):
        logits, _ = apply_fn(p, model_state, batch["x"], train=False)
        return objectives.token_cross_entropy(logits, batch["y"], batch["mask"])

    def run(params, opt_state, model_state, batch, k):
        def body(_, carry):
            p, o = carry
            g = jax.grad(loss)(p, model_state, batch)
            u, o = tx.update(g, o, p)
            return optax.apply_updates(p, u), o

        return jax.lax.fori_loop(0, k, body, (params, opt_state))

    return jax.jit(run)


_ADAM = {}


def relearn_lm(apply_fn, params, model_state, data: dict, relearn_idx, eval_idx, *, steps: int = 30,
               lr: float = 1e-3, eval_every: int = 5, threshold: float | None = None) -> dict:  # fmt: skip
    """The relearning attack: ``steps`` full-batch Adam steps (rate ``lr``) on the token loss of the examples
    ``relearn_idx`` (a few forget examples), with the answer exact-match of ``eval_idx`` (the forget questions)
    at steps ``0, e, 2e, …`` — :func:`jaxunlearn.metrics.relearn_curve`'s schedule and summary
    (``steps_to_recover`` for ``threshold``, ``auc`` = the time-averaged exact-match). Returns the curve
    (``forget_acc`` holds the exact-match values).

    Example:
        >>> from jaxunlearn.methods.lm import toy_lm_context
        >>> ctx = toy_lm_context()
        >>> c = relearn_lm(ctx.apply_fn, ctx.params, ctx.model_state, ctx.data, ctx.forget_idx[:4], ctx.forget_idx,
        ...                steps=4, eval_every=2)
        >>> c["steps"]
        [0, 2, 4]
    """
    if np.asarray(relearn_idx).size == 0:
        raise ValueError("relearn_lm needs at least one relearn example.")
    key = float(lr)
    if key not in _ADAM:  # one transform object per rate, so the compiled loop is reused
        _ADAM[key] = optax.adam(key)
    tx = _ADAM[key]
    run = _relearn_fns(apply_fn, tx)
    ri = jnp.asarray(np.asarray(relearn_idx))
    batch = {k: jnp.take(jnp.asarray(data[k]), ri, axis=0) for k in ("x", "y", "mask")}
    batch["mask"] = batch["mask"].astype(jnp.float32)

    def step_fn(state, k):
        return run(state[0], state[1], model_state, batch, jnp.int32(k))

    def eval_fn(state):
        s = example_stats(apply_fn, state[0], model_state, data, eval_idx)
        return exact_match(s, 1 if "kind" in s else None)

    curve, _ = relearn_curve(step_fn, eval_fn, (params, tx.init(params)), steps=steps, eval_every=eval_every,
                             threshold=threshold)  # fmt: skip
    return curve
