"""The training/unlearning engine: accuracy end to end, resume, divergence guard, compilation reuse,
the vmapped sweep, parameter masks, input validation and evaluation.

Budget: about a minute on 2 CPU cores (the Fashion-MNIST test alone ~30 s). Models are small
(CNN with 16/32 channels, ResNet-18 at width 1/16, MLPs) and training sets are subsets.
"""

import contextlib
import gc
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxunlearn import data, engine, methods, models
from jaxunlearn.data.idx import DEFAULT_FASHION_MNIST_DIR

# ---------------------------------------------------------------------------------------------------
# helpers and fixtures
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", seed=0)


@pytest.fixture(scope="module")
def small(digits):
    """300 digits on the device (a cheap training set for the mechanics tests)."""
    return engine.DeviceData.from_numpy(digits.x_train[:300], digits.y_train[:300])


def _mlp(seed=0, hidden=(16,)):
    return models.split_model(models.build("mlp", num_classes=10, input_shape=(8, 8, 1), hidden=hidden, seed=seed))


def _np(tree):
    """A host copy (np.array copies; np.asarray may alias a device buffer that is later donated)."""
    return jax.tree.map(lambda a: np.array(a, copy=True), tree)


def _assert_trees_equal(a, b):
    """Bitwise equality of two pytrees of arrays (same structure)."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@contextlib.contextmanager
def step_compilations():
    """Collect JAX's "Compiling jit(step)" log records: one per XLA compilation of an engine step (this
    also sees recompilations without a retrace, e.g. when arrays become committed to a device, which
    ``engine.COMPILE_COUNTER`` cannot see)."""
    records = []

    class Handler(logging.Handler):
        def emit(self, record):
            if "Compiling jit(step)" in record.getMessage():
                records.append(record.getMessage())

    handler = Handler(level=logging.DEBUG)
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles(True):
            yield records
    finally:
        logger.removeHandler(handler)


def forget_ce_loss(apply_fn, params, model_state, batch, hp, info):
    """Gradient-ascent style loss on the forget batch (a phase that reads the forget set)."""
    f = batch["forget"]
    logits, new_state = apply_fn(params, model_state, f["x"], train=True)
    ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), f["y"][:, None], axis=1))
    return -ce, new_state


def exploding_loss(apply_fn, params, model_state, batch, hp, info):
    """Cross-entropy, scaled by 1e30 from the third epoch (``info.epoch >= 2``): the parameters
    overflow to inf/NaN within that epoch, while epochs 1 and 2 are ordinary."""
    loss, new_state = engine.supervised_loss(apply_fn, params, model_state, batch, hp, info)
    return loss * jnp.where(info.epoch >= 2, 1e30, 1.0), new_state


# ---------------------------------------------------------------------------------------------------
# accuracy end to end
# ---------------------------------------------------------------------------------------------------


@pytest.mark.slow  # end to end: in the second CI step
@pytest.mark.parametrize("sam", ["none", "sam"])
def test_cnn_learns_digits(digits, sam):
    """A small CNN trained with SGD (lr 0.05, momentum 0.9, cosine) or SAM (rho 0.1) for 15 epochs reaches
    >= 95 % test accuracy on the 8x8 digits (359 test images)."""
    apply_fn, params, state = models.split_model(
        models.build("cnn", num_classes=10, input_shape=digits.input_shape, channels=(16, 32), dense=64, seed=0)
    )
    dev = engine.DeviceData.from_numpy(digits.x_train, digits.y_train)
    res = engine.train(
        apply_fn, params, state, dev, optimizer=engine.OptimConfig(lr=0.05, sam=sam), epochs=15, progress=False
    )
    assert res.diverged is None
    assert len(res.history) == 15
    assert res.history[-1]["loss/train"] < res.history[0]["loss/train"]
    acc = engine.evaluate(apply_fn, res.params, res.model_state, digits.x_test, digits.y_test)["accuracy"]
    print(f"digits cnn sam={sam}: test accuracy {acc:.4f}, {res.seconds:.1f} s")
    assert acc >= 0.95


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.exists(os.path.join(DEFAULT_FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz")),
    reason="Fashion-MNIST IDX files not installed (Debian package dataset-fashion-mnist)",
)
def test_cnn_learns_fashion_mnist_subset():
    """Fashion-MNIST, 7200 training images (max_train 8000 minus the 10 % validation split), 2000 test
    images: a CNN (16/32 channels, dense 64) trained 5 epochs with SGD (lr 0.1) and with SAM (rho 0.1)
    reaches >= 85 % test accuracy. The wall time of each run is printed (about 10 s SGD, 15-20 s SAM
    on 2 loaded CPU cores, compilation included)."""
    ds = data.load("fashion_mnist", seed=0, max_train=8000, max_test=2000)
    assert ds.x_train.shape == (7200, 28, 28, 1) and ds.x_test.shape[0] == 2000
    dev = engine.DeviceData.from_numpy(ds.x_train, ds.y_train)
    for sam in ("none", "sam"):
        apply_fn, params, state = models.split_model(
            models.build("cnn", num_classes=10, input_shape=ds.input_shape, channels=(16, 32), dense=64, seed=0)
        )
        t0 = time.perf_counter()
        res = engine.train(
            apply_fn, params, state, dev, optimizer=engine.OptimConfig(lr=0.1, sam=sam), epochs=5, progress=False
        )
        acc = engine.evaluate(apply_fn, res.params, res.model_state, ds.x_test, ds.y_test)["accuracy"]
        print(f"fashion-mnist cnn sam={sam}: test accuracy {acc:.4f}, {time.perf_counter() - t0:.1f} s")
        assert res.diverged is None
        assert acc >= 0.85


# ---------------------------------------------------------------------------------------------------
# resume
# ---------------------------------------------------------------------------------------------------


class _Interrupt(Exception):
    pass


def _interrupt_at(k):
    def cb(epoch, params, model_state):
        if epoch == k:
            raise _Interrupt(f"simulated crash after epoch {k}")

    return cb


def _check_resume(plan, apply_fn, params, state, dev, tmp_path, k, **kw):
    """Uninterrupted run vs a run interrupted at the end of epoch k and resumed: bitwise equal."""
    full = engine.run(plan, apply_fn, params, state, dev, progress=False, **kw)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(_Interrupt):
        engine.run(
            plan, apply_fn, params, state, dev, progress=False, checkpoint_dir=ckpt, on_epoch_end=_interrupt_at(k), **kw
        )
    with step_compilations() as compiled:  # the restored state fits the step compiled for the full run
        res = engine.run(plan, apply_fn, params, state, dev, progress=False, checkpoint_dir=ckpt, resume=True, **kw)
    assert compiled == []
    # the crash happened at the end of epoch k; the newest complete checkpoint is epoch k - 1 or k
    assert res.resumed_from is not None and 1 <= res.resumed_from <= k
    assert [h["epoch"] for h in res.history] == list(range(res.resumed_from + 1, plan.epochs + 1))
    assert [h for h in full.history if h["epoch"] > res.resumed_from] == res.history
    _assert_trees_equal(res.params, full.params)
    _assert_trees_equal(res.model_state, full.model_state)
    return full, res


@pytest.mark.parametrize("sam", ["none", "sam"])
def test_resume_cnn_bitwise(small, tmp_path, sam):
    """SGD with momentum and a cosine schedule (the optimizer state carries a step count and a trace),
    plain or wrapped in SAM."""
    apply_fn, params, state = models.split_model(
        models.build("cnn", num_classes=10, input_shape=(8, 8, 1), channels=(8, 16), dense=32, seed=1)
    )
    plan = engine.Plan(
        (engine.Phase("train", engine.supervised_loss),), optimizer=engine.OptimConfig(lr=0.05, sam=sam), epochs=4
    )
    full, _ = _check_resume(
        plan, apply_fn, params, state, small, tmp_path, k=3, retain_idx=np.arange(len(small)), seed=3
    )
    # resuming a finished run restores its final state and trains nothing more
    again = engine.run(
        plan, apply_fn, params, state, small, retain_idx=np.arange(len(small)), seed=3,
        checkpoint_dir=tmp_path / "ckpt", resume=True, progress=False,
    )  # fmt: skip
    assert again.resumed_from == 4 and again.history == []
    _assert_trees_equal(again.params, full.params)


@pytest.mark.slow
def test_resume_batchnorm_bitwise(digits, tmp_path):
    """ResNet-18 (width 1/16, batch norm) on 256 digits: the resumed run equals the uninterrupted one
    bitwise, batch-norm running statistics included (and those did change during training)."""
    apply_fn, params, state = models.split_model(
        models.build("resnet18", num_classes=10, input_shape=(8, 8, 1), width=0.0625, seed=0)
    )
    assert state, "resnet18 must carry batch-norm statistics"
    dev = engine.DeviceData.from_numpy(digits.x_train[:256], digits.y_train[:256])
    plan = engine.Plan(
        (engine.Phase("train", engine.supervised_loss),), optimizer=engine.OptimConfig(lr=0.05), epochs=3
    )
    full, _ = _check_resume(plan, apply_fn, params, state, dev, tmp_path, k=2, retain_idx=np.arange(256))
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(full.model_state))]
    assert all(changed)


def test_resume_two_phases_two_optimizer_states(small, tmp_path):
    """A NegGrad-like plan (retain CE + forget ascent, AdamW, two optimizer states) resumes bitwise."""
    apply_fn, params, state = _mlp(seed=2)
    plan = engine.Plan(
        (engine.Phase("retain", engine.supervised_loss), engine.Phase("forget", forget_ce_loss, uses=("forget",))),
        optimizer=engine.UNLEARN_DEFAULT,
        epochs=3,
        batch_size=32,
    )
    _check_resume(
        plan, apply_fn, params, state, small, tmp_path, k=2,
        retain_idx=np.arange(40, 300), forget_idx=np.arange(40), seed=5,
    )  # fmt: skip


def _saved_epochs(monkeypatch) -> list:
    """Record the epoch of every checkpoint ``engine.run`` writes."""
    from jaxunlearn.checkpoint import Checkpointer

    saved, real = [], Checkpointer.save

    def save(self, step, state):
        saved.append(int(step))
        return real(self, step, state)

    monkeypatch.setattr(Checkpointer, "save", save)
    return saved


@pytest.mark.parametrize(
    ("every", "seconds", "expected"),
    [(1, None, [1, 2, 3, 4, 5]), (2, None, [2, 4, 5]), (None, None, [5]), (None, 0.0, [1, 2, 3, 4, 5]),
     (None, 3600.0, [5]), (2, 3600.0, [2, 4, 5])],
)  # fmt: skip
def test_checkpoint_schedule(small, tmp_path, monkeypatch, every, seconds, expected):
    """The state is saved after the last epoch, every ``checkpoint_every`` epochs and once
    ``checkpoint_seconds`` have passed since the last save (0: every epoch; an hour: only at the end)."""
    saved = _saved_epochs(monkeypatch)
    plan = engine.Plan((engine.Phase("train", engine.supervised_loss),), epochs=5, batch_size=100)
    engine.run(
        plan, *_mlp(), small, retain_idx=np.arange(len(small)), checkpoint_dir=tmp_path / "ckpt",
        checkpoint_every=every, checkpoint_seconds=seconds, progress=False,
    )  # fmt: skip
    assert saved == expected


def test_checkpoint_seconds_follows_the_clock(monkeypatch):
    """The time rule compares the time since the last save with ``checkpoint_seconds``."""
    from jaxunlearn.engine import hooks

    now = [1000.0]
    monkeypatch.setattr(hooks.time, "perf_counter", lambda: now[0])
    ck = engine.Checkpointing(None, every=None, seconds=30.0)
    ck.last_save = 980.0
    assert not ck.due(3, 5)  # 20 s since the last save
    ck.last_save = 970.0
    assert ck.due(3, 5)  # 30 s
    ck.last_save = 999.0
    assert ck.due(5, 5)  # the last epoch always
    assert engine.Checkpointing(None, every=2, seconds=30.0).due(4, 5)  # every 2 epochs, whatever the clock


def test_unsaved_epochs_are_recomputed_on_resume(small, tmp_path):
    """Interrupted after epoch 3 with only the final epoch scheduled for a checkpoint: nothing was saved,
    so the resumed run starts over and still ends with the uninterrupted run's parameters."""
    apply_fn, params, state = _mlp(seed=4)
    plan = engine.Plan((engine.Phase("train", engine.supervised_loss),), epochs=4, batch_size=64)
    kw = dict(retain_idx=np.arange(len(small)), seed=2, progress=False, checkpoint_every=None)
    full = engine.run(plan, apply_fn, params, state, small, **kw)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(_Interrupt):
        engine.run(plan, apply_fn, params, state, small, checkpoint_dir=ckpt, on_epoch_end=_interrupt_at(3), **kw)
    res = engine.run(plan, apply_fn, params, state, small, checkpoint_dir=ckpt, resume=True, **kw)
    assert res.resumed_from is None and len(res.history) == 4
    _assert_trees_equal(res.params, full.params)


@pytest.mark.parametrize(
    ("kw", "message"),
    [({"checkpoint_every": 0}, "checkpoint_every"), ({"checkpoint_seconds": -1.0}, "checkpoint_seconds"),
     ({"checkpoint_seconds": "often"}, "checkpoint_seconds"), ({"checkpoint_seconds": float("inf")}, "finite")],
)  # fmt: skip
def test_checkpoint_schedule_is_validated(small, tmp_path, kw, message):
    plan = engine.Plan((engine.Phase("train", engine.supervised_loss),), epochs=1)
    with pytest.raises(ValueError, match=message):
        engine.run(plan, *_mlp(), small, retain_idx=np.arange(64), checkpoint_dir=tmp_path, progress=False, **kw)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # Orbax's failed async reads
def test_resume_with_another_model_raises(small, tmp_path):
    from jaxunlearn.checkpoint import CheckpointError

    idx = np.arange(len(small))
    plan = engine.Plan((engine.Phase("train", engine.supervised_loss),), epochs=1)
    engine.run(plan, *_mlp(hidden=(16,)), small, retain_idx=idx, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="(?i)delete"):
        engine.run(
            plan, *_mlp(hidden=(24,)), small, retain_idx=idx, checkpoint_dir=tmp_path, resume=True, progress=False
        )
    gc.collect()


# ---------------------------------------------------------------------------------------------------
# divergence guard
# ---------------------------------------------------------------------------------------------------


def test_divergence_huge_learning_rate(small):
    """lr = 1e30 overflows the parameters to inf/NaN: the run stops, reports the epoch and returns the
    parameters of the last finite epoch end (the initial parameters if it diverged in epoch 1)."""
    apply_fn, params, state = _mlp(hidden=(32,))
    seen = {0: _np(params)}
    res = engine.train(
        apply_fn, params, state, small, epochs=5, progress=False,
        optimizer=engine.OptimConfig(lr=1e30, momentum=0.0, weight_decay=0.0, schedule="constant"),
        on_epoch_end=lambda ep, p, s: seen.__setitem__(ep, _np(p)),
    )  # fmt: skip
    assert res.diverged is not None, res.history
    epoch = res.diverged["epoch"]
    assert res.history[-1] == {"epoch": epoch, "loss/train": res.history[-1]["loss/train"], "diverged": True}
    assert len(res.history) == epoch and max(seen) == epoch - 1
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(res.params))
    _assert_trees_equal(res.params, seen[epoch - 1])


def test_divergence_restores_last_finite_epoch(small):
    """The loss explodes in epoch 3 only: the result is exactly the parameters at the end of epoch 2,
    ``on_epoch_end`` never sees epoch 3, and the parameters it received stay valid after the run."""
    apply_fn, params, state = _mlp()
    seen = {}
    plan = engine.Plan((engine.Phase("train", exploding_loss),), optimizer=engine.OptimConfig(lr=0.1), epochs=5)
    res = engine.run(
        plan, apply_fn, params, state, small, retain_idx=np.arange(len(small)), progress=False,
        on_epoch_end=lambda ep, p, s: seen.__setitem__(ep, p),
    )  # fmt: skip
    assert res.diverged == {"epoch": 3, "reason": "non-finite loss or parameters"}
    assert sorted(seen) == [1, 2]
    assert [h["epoch"] for h in res.history] == [1, 2, 3] and res.history[2]["diverged"] is True
    assert np.isfinite(res.history[1]["loss/train"])
    _assert_trees_equal(res.params, seen[2])  # the callback's arrays were not donated away
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(seen[1]), jax.tree.leaves(seen[2])))


# ---------------------------------------------------------------------------------------------------
# compilation reuse
# ---------------------------------------------------------------------------------------------------


def test_no_recompilation_between_epochs_or_runs(small):
    apply_fn, params, state = _mlp(seed=4)
    cfg = engine.OptimConfig(lr=0.0371, sam="sam")  # a configuration no other test compiles
    counts = []

    def cb(epoch, p, s):
        counts.append(engine.COMPILE_COUNTER.count)

    before = engine.COMPILE_COUNTER.count
    with step_compilations() as compiled:
        res = engine.train(apply_fn, params, state, small, optimizer=cfg, epochs=3, progress=False, on_epoch_end=cb)
    assert counts[0] == before + 1  # traced once, in the first epoch
    assert counts == [counts[0]] * 3
    assert len(compiled) == 1
    assert 0 < res.compile_seconds < res.seconds  # the compilation is part of the first run's time
    # a second run with the same apply_fn / optimizer / shapes (other parameters, other seed) reuses it
    with step_compilations() as compiled:
        again = engine.train(
            apply_fn, res.params, state, small, optimizer=cfg, epochs=3, seed=7, progress=False, on_epoch_end=cb
        )
    assert counts == [counts[0]] * 6
    assert compiled == []
    assert again.compile_seconds == 0.0
    # a run of another length (other epochs, another training subset: another cosine schedule length)
    # still reuses the step: the schedule's length is a run-time value, not part of the program
    with step_compilations() as compiled:
        short = engine.train(
            apply_fn, params, state, small, optimizer=cfg, epochs=2, train_idx=np.arange(len(small) // 2),
            progress=False,
        )  # fmt: skip
    assert compiled == []
    assert engine.COMPILE_COUNTER.count == counts[0]
    assert np.all(np.isfinite(np.asarray(jax.tree.leaves(short.params)[0])))


def test_compile_seconds_count_nested_events_once():
    """JAX reports a jit traced inside another one's trace before the outer one (both end-stamped): the
    counted time is the union of the spans, not their sum."""
    c = engine.CompileCounter(listen=False)
    c.add_span(10.0, 1.0)  # inner: [9, 10]
    c.add_span(12.0, 7.0)  # outer: [5, 12] holds it
    assert c.seconds == pytest.approx(7.0)
    c.add_span(21.0, 1.0)  # a later, separate compilation
    assert c.seconds == pytest.approx(8.0)
    c.add_span(22.0, 1.5)  # overlaps the previous span by 0.5
    assert c.seconds == pytest.approx(9.0)


def test_cosine_schedule_matches_optax_and_takes_a_traced_length():
    import optax

    from jaxunlearn.plan import cosine_schedule

    ref = optax.cosine_decay_schedule(0.1, 37)
    ours = cosine_schedule(0.1, 37)
    traced = jax.jit(lambda t, total: cosine_schedule(0.1, total)(t))
    for t in (0, 1, 10, 36, 37, 50):
        assert float(ours(t)) == pytest.approx(float(ref(t)), abs=1e-7)
        assert float(traced(t, jnp.int32(37))) == pytest.approx(float(ref(t)), abs=1e-7)


# ---------------------------------------------------------------------------------------------------
# train_many
# ---------------------------------------------------------------------------------------------------


def _many_models(small, k: int, size: int, seed: int):
    """K MLPs (their own initialisations), stacked, and K random training subsets of ``size`` examples."""
    inits = [_mlp(seed=i) for i in range(k)]
    stack = lambda trees: jax.tree.map(lambda *a: jnp.stack(a), *trees)
    rng = np.random.default_rng(seed)
    sets = np.stack([np.sort(rng.choice(len(small), size, replace=False)) for _ in range(k)])
    return inits, inits[0][0], stack([p for _, p, _ in inits]), stack([s for _, _, s in inits]), sets


@pytest.mark.parametrize("sam,mode", [("none", "vmap"), ("sam", "vmap"), ("none", "unroll"), ("sam", "unroll")])
def test_train_many_equals_separate_runs(small, sam, mode):
    """K = 3 models trained at once (vmapped or unrolled in one program) equal 3 separate ``train`` runs
    with the same seeds (``seeds=[s_k]`` gives model k the batches of ``train(..., seed=s_k)``), and a
    K = 1 sweep on row k."""
    inits, apply_fn, p3, s3, sets = _many_models(small, k=3, size=200, seed=0)
    cfg = engine.OptimConfig(lr=0.05, sam=sam)
    seeds = [10, 11, 12]
    pk, _ = engine.train_many(
        apply_fn, p3, s3, small, sets, optimizer=cfg, epochs=3, seeds=seeds, progress=False, model_mode=mode
    )
    for k in range(3):
        res = engine.train(
            apply_fn, inits[k][1], inits[k][2], small, optimizer=cfg, epochs=3, train_idx=sets[k], seed=seeds[k],
            progress=False,
        )  # fmt: skip
        for a, b, p0 in zip(jax.tree.leaves(pk), jax.tree.leaves(res.params), jax.tree.leaves(inits[k][1])):
            np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b), rtol=1e-5, atol=1e-6)
            assert not np.allclose(np.asarray(b), np.asarray(p0))  # it did train
    one = lambda t: jax.tree.map(lambda a: a[1:2], t)
    p1, _ = engine.train_many(
        apply_fn, one(p3), one(s3), small, sets[1:2], optimizer=cfg, epochs=3, seeds=[11], progress=False,
        model_mode=mode,
    )  # fmt: skip
    for a, b in zip(jax.tree.leaves(pk), jax.tree.leaves(p1)):
        np.testing.assert_allclose(np.asarray(a[1]), np.asarray(b[0]), rtol=1e-5, atol=1e-6)
    # different subsets / seeds really give different models
    assert not np.allclose(np.asarray(pk["head"]["kernel"][0]), np.asarray(pk["head"]["kernel"][1]))


def test_train_many_reuses_its_step_across_run_lengths(small):
    """Another number of epochs (another cosine schedule length) reuses the compiled vmapped step."""
    apply_fn, params, state = _mlp(seed=5)
    p2, s2 = (jax.tree.map(lambda a: jnp.stack([a, a]), t) for t in (params, state))
    sets = np.stack([np.arange(100), np.arange(100, 200)])
    cfg = engine.OptimConfig(lr=0.0437)  # a configuration no other test compiles
    kw = dict(optimizer=cfg, batch_size=32, progress=False)
    c0 = engine.COMPILE_COUNTER.count
    a, _ = engine.train_many(apply_fn, p2, s2, small, sets, epochs=1, **kw)
    assert engine.COMPILE_COUNTER.count == c0 + 1
    b, _ = engine.train_many(apply_fn, p2, s2, small, sets, epochs=3, **kw)
    assert engine.COMPILE_COUNTER.count == c0 + 1
    assert not np.allclose(np.asarray(a["head"]["kernel"]), np.asarray(b["head"]["kernel"]))


@pytest.mark.parametrize("mode", ["vmap", "unroll"])
def test_train_many_groups_equal_one_run_and_resume(small, tmp_path, mode):
    """K = 5 models trained in groups of 2 (2 + 2 + 1) equal the run over all 5 at once: model k keeps its
    initialisation and its batches (seed, k, epoch). With a checkpoint folder each group checkpoints in its own
    folder; a rerun with ``resume`` retrains only a group whose checkpoints are gone, with the same result."""
    _, apply_fn, p5, s5, sets = _many_models(small, k=5, size=120, seed=1)
    kw = dict(optimizer=engine.OptimConfig(lr=0.05), epochs=2, seed=7, progress=False, model_mode=mode)
    whole, _ = engine.train_many(apply_fn, p5, s5, small, sets, **kw)
    ckpt = tmp_path / "many"
    grouped, _ = engine.train_many(apply_fn, p5, s5, small, sets, group_size=2, checkpoint_dir=ckpt, **kw)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(grouped)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert sorted(os.listdir(ckpt)) == ["models0-1", "models2-3", "models4-4"]
    import shutil

    shutil.rmtree(ckpt / "models2-3")
    kept = {f: os.stat(f).st_mtime_ns for f in (ckpt / "models0-1").rglob("*") if f.is_file()}
    again, _ = engine.train_many(apply_fn, p5, s5, small, sets, group_size=2, checkpoint_dir=ckpt, resume=True, **kw)
    for a, b in zip(jax.tree.leaves(grouped), jax.tree.leaves(again)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert os.path.isdir(ckpt / "models2-3")  # retrained
    assert kept and {f: os.stat(f).st_mtime_ns for f in kept} == kept  # a finished group is only read back
    # the groups are not the same models: model k's own batches and initialisation
    assert not np.allclose(np.asarray(grouped["head"]["kernel"][0]), np.asarray(grouped["head"]["kernel"][2]))
    with pytest.raises(ValueError, match="group_size must be a whole number"):
        engine.train_many(apply_fn, p5, s5, small, sets, group_size=0, **kw)


def test_train_many_groups_by_default_on_cpu_beyond_the_unroll_limit(small, monkeypatch):
    """With ``model_mode=None`` on CPU, K above ``MAX_UNROLL_MODELS`` trains in unrolled groups of that size."""
    from jaxunlearn.engine import many

    monkeypatch.setattr(many.jax, "default_backend", lambda: "cpu")
    calls = []
    real = many._run
    monkeypatch.setattr(many, "MAX_UNROLL_MODELS", 2)
    monkeypatch.setattr(
        many, "_run", lambda *a, **k: calls.append((k["first_model"], len(k["retain_idx"]))) or real(*a, **k)
    )
    apply_fn, params, state = _mlp()
    p3, s3 = (jax.tree.map(lambda a: jnp.stack([a, a, a]), t) for t in (params, state))
    sets = np.stack([np.arange(40), np.arange(40, 80), np.arange(80, 120)])
    engine.train_many(apply_fn, p3, s3, small, sets, epochs=1, progress=False)
    assert calls == [(0, 2), (2, 1)]
    calls.clear()
    engine.train_many(apply_fn, p3, s3, small, sets, epochs=1, progress=False, model_mode="vmap")
    assert calls == [(0, 3)]  # an explicit mode: one program for all


def test_train_many_validation(small):
    apply_fn, params, state = _mlp()
    p2 = jax.tree.map(lambda a: jnp.stack([a, a]), params)
    s2 = jax.tree.map(lambda a: jnp.stack([a, a]), state)
    good = np.stack([np.arange(10), np.arange(10, 20)])
    with pytest.raises(ValueError, match="leading axis"):
        engine.train_many(apply_fn, p2, s2, small, good[:1], epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"\[K, m\]"):
        engine.train_many(apply_fn, p2, s2, small, np.arange(10), epochs=1, progress=False)
    with pytest.raises(ValueError, match="one seed per model"):
        engine.train_many(apply_fn, p2, s2, small, good, epochs=1, seeds=[1], progress=False)
    with pytest.raises(ValueError, match="indices"):
        engine.train_many(apply_fn, p2, s2, small, good + len(small), epochs=1, progress=False)
    with pytest.raises(ValueError, match="model_mode must be one of"):
        engine.train_many(apply_fn, p2, s2, small, good, epochs=1, progress=False, model_mode="scan")


def test_train_many_default_mode():
    """Unrolled model steps on CPU up to MAX_UNROLL_MODELS per device, vmap beyond (and on accelerators)."""
    cpu = jax.default_backend() == "cpu"
    assert engine.default_model_mode(8) == ("unroll" if cpu else "vmap")
    assert engine.default_model_mode(engine.MAX_UNROLL_MODELS) == ("unroll" if cpu else "vmap")
    assert engine.default_model_mode(engine.MAX_UNROLL_MODELS + 1) == "vmap"


# ---------------------------------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------------------------------


def _random_mask(params, frac=0.3, seed=0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jnp.asarray(rng.random(np.shape(a)) < frac), params)


def _masked_run(small, optimizer, mask_reading, sign="min"):
    apply_fn, params, state = _mlp(seed=3)
    mask = _random_mask(params)
    plan = engine.Plan(
        (engine.Phase("train", engine.supervised_loss, mask_key="M", sign=sign),),
        optimizer=optimizer,
        epochs=2,
        hp={"M": mask},
        mask_reading=mask_reading,
    )
    res = engine.run(plan, apply_fn, params, state, small, retain_idx=np.arange(len(small)), progress=False)
    moved = jax.tree.map(lambda a, b: np.asarray(a) != np.asarray(b), params, res.params)
    return jax.tree.map(np.asarray, mask), moved


def _moved_outside(mask, moved):
    return sum(int((mv & ~m).sum()) for m, mv in zip(jax.tree.leaves(mask), jax.tree.leaves(moved)))


def _moved_inside(mask, moved):
    return sum(int((mv & m).sum()) for m, mv in zip(jax.tree.leaves(mask), jax.tree.leaves(moved)))


@pytest.mark.parametrize("mask_reading", ["strict", "reference"])
def test_mask_plain_sgd_moves_only_masked_params(small, mask_reading):
    """SGD with momentum and no weight decay: under either reading only masked entries change."""
    cfg = engine.OptimConfig(lr=0.1, weight_decay=0.0)
    mask, moved = _masked_run(small, cfg, mask_reading)
    assert _moved_outside(mask, moved) == 0
    # most masked entries move (not all: weights of always-zero border pixels and dead units get no gradient)
    assert _moved_inside(mask, moved) > 0.5 * sum(int(m.sum()) for m in jax.tree.leaves(mask))


def test_mask_adamw_weight_decay_strict_vs_reference(small):
    """AdamW (wd 5e-4): 'strict' masks the whole update (unmasked entries bitwise unchanged);
    'reference' masks only the gradient, so the decoupled decay still shrinks unmasked entries."""
    cfg = engine.OptimConfig(name="adamw", lr=0.01, weight_decay=5e-4, schedule="constant")
    mask, moved = _masked_run(small, cfg, "strict")
    assert _moved_outside(mask, moved) == 0 and _moved_inside(mask, moved) > 0
    mask, moved = _masked_run(small, cfg, "reference")
    n_out = sum(int((~m).sum()) for m in jax.tree.leaves(mask))
    assert _moved_outside(mask, moved) > 0.9 * n_out


def test_mask_sharpness_max_strict_vs_reference(small):
    """SAM-max (sharpness maximization) with SGD, no weight decay: 'strict' keeps unmasked entries;
    'reference' (the Sharp MinMax code: only g' masked) moves them by (1+λ)g."""
    cfg = engine.OptimConfig(lr=0.01, weight_decay=0.0, sam="sam", rho=0.1)
    mask, moved = _masked_run(small, cfg, "strict", sign="max")
    assert _moved_outside(mask, moved) == 0
    mask, moved = _masked_run(small, cfg, "reference", sign="max")
    assert _moved_outside(mask, moved) > 0


# ---------------------------------------------------------------------------------------------------
# input validation
# ---------------------------------------------------------------------------------------------------


def _ga_plan(**kw):
    return engine.Plan((engine.Phase("ga", forget_ce_loss, uses=("forget",)),), epochs=1, **kw)


def test_validation_overlapping_empty_and_out_of_range(small):
    apply_fn, params, state = _mlp()
    n = len(small)
    plan = _ga_plan()
    run = lambda **kw: engine.run(plan, apply_fn, params, state, small, progress=False, **kw)
    with pytest.raises(ValueError, match="overlap"):
        run(retain_idx=np.arange(0, 100), forget_idx=np.arange(90, 110))
    with pytest.raises(ValueError, match="forget set is empty"):
        run(retain_idx=np.arange(n))
    with pytest.raises(ValueError, match="forget set is empty"):
        run(retain_idx=np.arange(n), forget_idx=np.array([], np.int64))
    with pytest.raises(ValueError, match=rf"outside \[0, {n}\)"):
        run(retain_idx=np.arange(10), forget_idx=np.array([20, n]))
    with pytest.raises(ValueError, match="outside"):
        run(retain_idx=np.array([-1, 3]), forget_idx=np.array([20]))
    with pytest.raises(ValueError, match="duplicate"):
        run(retain_idx=np.array([1, 1, 2]), forget_idx=np.array([20]))
    with pytest.raises(ValueError, match="integer"):
        run(retain_idx=np.array([1.0, 2.0]), forget_idx=np.array([20]))
    train_plan = engine.Plan((engine.Phase("train", engine.supervised_loss),), epochs=1)
    with pytest.raises(ValueError, match="retain"):
        engine.run(train_plan, apply_fn, params, state, small, retain_idx=np.array([], np.int64), progress=False)
    # the inputs are never modified by a failing or a successful run
    before = _np(params)
    run(retain_idx=np.arange(20, n), forget_idx=np.arange(20))
    _assert_trees_equal(params, before)


@pytest.mark.parametrize(
    ("kwargs", "suggestion"),
    [
        ({"name": "adamww"}, "adamw"),
        ({"sam": "sma"}, "sam"),
        ({"sam": "asma"}, "asam"),
        ({"schedule": "cosin"}, "cosine"),
    ],
)
def test_bad_optimizer_names_suggest(kwargs, suggestion):
    with pytest.raises(ValueError, match=f"Did you mean '{suggestion}'"):
        engine.OptimConfig(**kwargs)


def test_bad_plan_settings(small):
    apply_fn, params, state = _mlp()
    phase = engine.Phase("train", engine.supervised_loss)
    with pytest.raises(ValueError, match="epochs"):
        engine.Plan((phase,), epochs=0)
    with pytest.raises(ValueError, match="epochs"):
        engine.train(apply_fn, params, state, small, epochs=0, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        engine.Plan((phase,), batch_size=0)
    with pytest.raises(ValueError, match="at least one Phase"):
        engine.Plan(())
    with pytest.raises(ValueError, match="missing from hp"):
        engine.Plan((engine.Phase("m", engine.supervised_loss, mask_key="M"),))
    with pytest.raises(ValueError, match="Did you mean 'strict'"):
        engine.Plan((phase,), mask_reading="strikt")
    with pytest.raises(ValueError, match="lr"):
        engine.OptimConfig(lr=0.0)
    with pytest.raises(ValueError, match="same number of examples"):
        engine.DeviceData.from_numpy(np.zeros((3, 8, 8, 1)), np.zeros(2))


# ---------------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------------


def test_evaluate_matches_manual_computation(digits):
    """Batched (with a padded last batch) logits, per-example loss and accuracy vs one direct call."""
    apply_fn, params, state = _mlp(seed=5)
    x, y = digits.x_test[:150], digits.y_test[:150]
    out = engine.evaluate(apply_fn, params, state, x, y, batch_size=64)  # 64 + 64 + 22 (padded)
    logits = np.asarray(apply_fn(params, state, jnp.asarray(x), train=False)[0], np.float64)
    np.testing.assert_allclose(out["logits"], logits, rtol=1e-5, atol=1e-6)
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(out["loss"], -logp[np.arange(len(y)), y], rtol=1e-5, atol=1e-6)
    correct = logits.argmax(axis=1) == y
    np.testing.assert_array_equal(out["correct"], correct)
    assert out["accuracy"] == pytest.approx(correct.mean())
    # without labels only the logits; a batch larger than the set; an empty set is an error
    only = engine.evaluate(apply_fn, params, state, x[:10])
    assert set(only) == {"logits"} and only["logits"].shape == (10, 10)
    np.testing.assert_allclose(only["logits"], logits[:10], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="empty"):
        engine.evaluate(apply_fn, params, state, x[:0])


def test_evaluate_uses_running_batchnorm_statistics(digits):
    """For a batch-norm model evaluate runs in eval mode: the result of an example does not depend on
    the rest of its batch."""
    apply_fn, params, state = models.split_model(
        models.build("resnet18", num_classes=10, input_shape=(8, 8, 1), width=0.0625, seed=0)
    )
    x = digits.x_test[:20]
    full = engine.evaluate(apply_fn, params, state, x)["logits"]
    part = engine.evaluate(apply_fn, params, state, x[:5])["logits"]
    np.testing.assert_allclose(part, full[:5], rtol=1e-4, atol=1e-5)


def test_a_batch_larger_than_the_retain_set_is_refused_before_any_step():
    ctx = methods.toy_context()
    plan = engine.Plan((engine.Phase("train", engine.supervised_loss),), epochs=1, batch_size=10**6)
    with pytest.raises(
        ValueError, match=r"batch_size 1000000 is larger than the 48 retained examples .*use batch_size <= 48"
    ):
        engine.run(plan, ctx.apply_fn, ctx.params, ctx.model_state, engine.DeviceData(ctx.x, ctx.y),
                   retain_idx=ctx.retain_idx, forget_idx=ctx.forget_idx, progress=False)  # fmt: skip
