"""engine.sources: in-device gather vs streaming (Grain, TFDS data_source) give the same numbers; a
non-classification model trains through engine.run; bad sources fail with one line."""

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxunlearn import data, engine, models
from jaxunlearn.plan import OptimConfig, Phase, Plan, supervised_loss


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", seed=0)


def _mlp(seed=0):
    return models.split_model(models.build("mlp", num_classes=10, input_shape=(8, 8, 1), hidden=(16,), seed=seed))


def _leaves(tree):
    return np.concatenate([np.ravel(np.asarray(a)) for a in jax.tree.leaves(tree)])


def test_streaming_and_gather_give_the_same_numbers(digits):
    """The same run (two phases: retain CE and forget ascent, SAM) through the in-device gather and through a
    Grain MapDataset that loads only each batch: the same parameters and losses."""
    x, y = digits.x_train[:240], digits.y_train[:240]
    gather = engine.DeviceData.from_numpy(x, y)
    records = grain.MapDataset.source([{"x": x[i], "y": np.int32(y[i])} for i in range(len(y))])
    stream = engine.StreamingSource(records, lambda r: {"x": np.asarray(r["x"], np.float32), "y": r["y"]})
    from jaxunlearn.methods.ga import ga_loss

    plan = Plan(
        (Phase("retain", supervised_loss), Phase("forget", ga_loss, uses=("forget",))),
        optimizer=OptimConfig(lr=0.05, sam="sam", rho=0.05),
        epochs=2,
        batch_size=32,
    )
    apply_fn, params, state = _mlp(seed=1)
    kw = dict(retain_idx=np.arange(40, 240), forget_idx=np.arange(40), seed=5, progress=False)
    a = engine.run(plan, apply_fn, params, state, gather, **kw)
    b = engine.run(plan, apply_fn, params, state, stream, **kw)
    np.testing.assert_allclose(_leaves(a.params), _leaves(b.params), rtol=1e-5, atol=1e-6)
    for ra, rb in zip(a.history, b.history):
        assert ra["loss/retain"] == pytest.approx(rb["loss/retain"], rel=1e-5)
        assert ra["loss/forget"] == pytest.approx(rb["loss/forget"], rel=1e-5)


def test_streaming_reads_only_the_batch():
    """Each step reads exactly its B records (the data set is never loaded whole)."""
    reads = []

    class Counting:
        def __len__(self):
            return 50

        def __getitem__(self, i):
            reads.append(i)
            return {"x": np.full((8, 8, 1), i / 50, np.float32), "y": np.int32(i % 10)}

    apply_fn, params, state = _mlp()
    src = engine.StreamingSource(Counting())
    res = engine.train(apply_fn, params, state, src, epochs=1, batch_size=10, progress=False)
    assert res.diverged is None
    # 5 steps x (retain 10 + forget 10, the forget pool falls back to the retain pool) + the guard's probe
    assert len(reads) == 5 * 20 + 10
    assert sorted(set(reads)) == list(range(50))


def test_tfds_data_source_streams_through_the_engine():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=64, policy=tfds.testing.MockPolicy.USE_CODE):
        source = tfds.data_source("mnist", split="train")
        src = engine.StreamingSource(source, lambda r: {"x": r["image"].astype(np.float32) / 255.0, "y": r["label"]})
        apply_fn, params, state = models.split_model(models.build("mlp", num_classes=10, input_shape=(28, 28, 1)))
        res = engine.train(apply_fn, params, state, src, epochs=1, batch_size=16, progress=False)
    assert len(src) == 64 and res.diverged is None and len(res.history) == 1


class TinyLM(nnx.Module):
    """A next-token model: embedding -> dense over the vocabulary (no labels anywhere)."""

    def __init__(self, vocab: int, dim: int, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, dim, rngs=rngs)
        self.out = nnx.Linear(dim, vocab, rngs=rngs)

    def __call__(self, tokens, train: bool = False, features: bool = False):
        return self.out(self.embed(tokens))


def next_token_loss(apply_fn, params, model_state, batch, hp, info):
    tokens = batch["retain"]["tokens"]
    logits, new_state = apply_fn(params, model_state, tokens[:, :-1], train=True)
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)), new_state


def test_next_token_prediction_trains_through_engine_run():
    """No classification: sequences ``t, t+1, t+2, ... (mod V)``; the loss falls and the model learns to
    predict the next token."""
    vocab, length = 11, 9
    starts = np.arange(64) % vocab
    tokens = ((starts[:, None] + np.arange(length)[None]) % vocab).astype(np.int32)
    apply_fn, params, state = models.split_model(TinyLM(vocab, 16, nnx.Rngs(0)))
    src = engine.ArraySource({"tokens": tokens})
    plan = Plan((Phase("lm", next_token_loss),), optimizer=OptimConfig(name="adam", lr=0.05, schedule="constant"),
                epochs=20, batch_size=16)  # fmt: skip
    res = engine.run(plan, apply_fn, params, state, src, retain_idx=np.arange(64), progress=False)
    assert res.diverged is None
    assert res.history[-1]["loss/lm"] < 0.2 * res.history[0]["loss/lm"]
    logits, _ = apply_fn(res.params, res.model_state, jnp.asarray(tokens[:, :-1]))
    assert float(jnp.mean(jnp.argmax(logits, -1) == tokens[:, 1:])) > 0.95


def test_regression_trains_through_engine_train():
    """A loss over a batch pytree with real-valued targets (engine.train with its own loss)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 3)).astype(np.float32)
    t = (x @ np.array([1.0, -2.0, 0.5], np.float32))[:, None]

    def mse(apply_fn, params, model_state, batch, hp, info):
        out, new_state = apply_fn(params, model_state, batch["retain"]["x"], train=True)
        return jnp.mean((out - batch["retain"]["t"]) ** 2), new_state

    class Linear(nnx.Module):
        def __init__(self, rngs):
            self.dense = nnx.Linear(3, 1, rngs=rngs)

        def __call__(self, x, train: bool = False, features: bool = False):
            return self.dense(x)

    apply_fn, params, state = models.split_model(Linear(nnx.Rngs(0)))
    res = engine.train(apply_fn, params, state, {"x": x, "t": t}, loss=mse, epochs=30, batch_size=32,
                       optimizer=OptimConfig(name="adam", lr=0.05, schedule="constant"), progress=False)  # fmt: skip
    assert res.history[-1]["loss/train"] < 1e-3


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: engine.ArraySource({}), "non-empty dict"),
        (lambda: engine.ArraySource({"x": np.zeros((3, 2)), "y": np.zeros(4)}), "same number"),
        (lambda: engine.ArraySource({"index": np.zeros(3)}), "reserved"),
        (lambda: engine.StreamingSource(42), "random-access"),
        (lambda: engine.StreamingSource([]), "empty"),
        (lambda: engine.as_source(np.zeros((3, 2))), "DeviceData, ArraySource, StreamingSource"),
    ],
)
def test_bad_sources_fail_with_one_line(make, message):
    with pytest.raises(ValueError, match=message) as e:
        make()
    assert "\n" not in str(e.value)


def test_stream_records_must_be_dicts():
    with pytest.raises(ValueError, match="transform="):
        engine.StreamingSource([1, 2, 3]).load(np.array([0]))


def test_epoch_indices_cover_the_pool_then_wrap():
    idx = engine.epoch_indices(np.random.default_rng(1), np.arange(10, 17), steps=3, batch=3)
    assert idx.shape == (3, 3) and idx.dtype == np.int32
    assert sorted(idx.reshape(-1)[:7].tolist()) == list(range(10, 17))
    assert set(idx.reshape(-1)[7:]) <= set(range(10, 17))
