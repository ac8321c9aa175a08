"""engine.hooks, one concern each: divergence guard, checkpointing, progress, callbacks, timing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxunlearn import engine
from jaxunlearn.engine import hooks


def test_divergence_guard_checks_flag_params_and_outputs():
    apply_fn = lambda p, s, x, train=False: (x * p, s)  # noqa: E731
    g = engine.DivergenceGuard(apply_fn)
    good = jnp.ones(2)
    g.keep(good, {})
    assert g.epoch_ok(jnp.array(True), good, {}, {"x": jnp.ones(2)})
    assert not g.epoch_ok(jnp.array(False), good, {}, {"x": jnp.ones(2)})  # a step's loss was not finite
    assert not g.epoch_ok(jnp.array(True), jnp.array([1.0, jnp.inf]), {}, None)  # a parameter
    assert not g.epoch_ok(jnp.array(True), jnp.array([1e30, 1.0]), {}, {"x": jnp.array([1e10, 1.0])})  # outputs
    assert g.epoch_ok(jnp.array(True), good, {}, {"tokens": jnp.ones(2)})  # no "x": the outputs are not probed


def test_divergence_guard_keeps_copies_that_survive_donation():
    g = engine.DivergenceGuard()
    p = {"w": jnp.arange(3.0)}
    g.keep(p, {})
    f = jax.jit(lambda t: jax.tree.map(lambda a: a * 0, t), donate_argnums=0)
    f(p)
    assert g.last_good[0]["w"].tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize(
    ("every", "seconds", "expected"),
    [(1, None, [1, 2, 3, 4, 5]), (2, None, [2, 4, 5]), (None, None, [5]), (None, 1e9, [5])],
)
def test_checkpointing_due(every, seconds, expected):
    ck = engine.Checkpointing(None, every=every, seconds=seconds)
    assert [e for e in range(1, 6) if ck.due(e, 5)] == expected


def test_checkpointing_saves_and_restores(tmp_path):
    ck = engine.Checkpointing(tmp_path / "c", every=1)
    assert ck.restore({"w": jnp.zeros(2), "epoch": 0}) == (0, None)
    assert ck.maybe_save(1, 3, lambda: {"w": jnp.ones(2), "epoch": 1})
    assert ck.maybe_save(2, 3, lambda: {"w": jnp.full(2, 2.0), "epoch": 2})
    epoch, state = ck.restore({"w": jnp.zeros(2), "epoch": 0})
    ck.close()
    assert epoch == 2 and state["w"].tolist() == [2.0, 2.0]
    off = engine.Checkpointing(None)
    assert not off.maybe_save(1, 1, lambda: {"w": jnp.ones(1)}) and off.restore({}) == (0, None)


@pytest.mark.parametrize(
    ("kw", "message"),
    [({"every": 0}, "checkpoint_every"), ({"seconds": -1.0}, "checkpoint_seconds"), ({"seconds": "x"}, "seconds")],
)
def test_checkpointing_validates_its_schedule(kw, message):
    with pytest.raises(ValueError, match=message):
        engine.Checkpointing(None, **kw)


def test_progress_counts_steps_and_shows_losses():
    p = engine.Progress(10, initial=4, desc="t", enabled=True)
    p.step()
    p.step(2)
    p.epoch_end({"epoch": 1, "loss/retain": 0.25, "other": 3})
    assert p.bar.n == 7 and p.bar.postfix == "retain=0.250"
    p.close()


def test_epoch_callback_calls_and_validates():
    seen = []
    cb = engine.EpochCallback(lambda e, p, s: seen.append((e, float(p))))
    cb(3, jnp.float32(1.5), {})
    assert seen == [(3, 1.5)]
    engine.EpochCallback(None)(1, None, None)  # no callback: nothing happens
    with pytest.raises(ValueError, match="on_epoch_end"):
        engine.EpochCallback(42)


def test_timer_counts_compile_seconds_of_new_programs():
    t = engine.Timer()
    jax.jit(lambda x: jnp.sin(x) * 7.25 + 0.125)(jnp.ones(13)).block_until_ready()
    assert t.compile_seconds > 0 and t.seconds >= t.compile_seconds * 0.5


def test_all_finite_and_copy_tree():
    assert bool(hooks.all_finite({"a": jnp.ones(2), "i": jnp.array([1, 2])}))
    assert not bool(hooks.all_finite({"a": jnp.array([np.nan])}))
    assert bool(hooks.all_finite({}))
    t = {"a": jnp.ones(2)}
    c = hooks.copy_tree(t)
    assert c["a"] is not t["a"] and c["a"].tolist() == [1.0, 1.0]


def test_an_executable_loaded_from_the_persistent_cache_counts_as_a_compile(tmp_path):
    """With ``jax_compilation_cache_dir`` set (as the test suite's conftest does), a second process loads the
    programs instead of compiling them; JAX reports each load as a backend compilation, so ``compiles`` and
    ``seconds`` mean the same with or without the cache."""
    import os
    import subprocess
    import sys

    code = (
        "import jax, jax.numpy as jnp\n"
        "from jaxunlearn import engine\n"
        "hits = []\n"
        "jax.monitoring.register_event_listener(lambda e, **k: hits.append(e) if e.endswith('cache_hits') else None)\n"
        "c = engine.CompileCounter()\n"
        "jax.jit(lambda x: jnp.tanh(x @ x.T) * 3.5 + 0.25)(jnp.ones((9, 5))).block_until_ready()\n"
        "print(len(hits), c.compiles, c.seconds > 0)\n"
    )
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PLATFORMS": "cpu"}  # fmt: skip
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
            for _ in range(2)]  # fmt: skip
    for r in runs:
        assert r.returncode == 0, r.stderr[-2000:]
    (hits1, n1, t1), (hits2, n2, t2) = (r.stdout.split() for r in runs)
    assert hits1 == "0" and int(n1) >= 1 and t1 == "True"  # compiled (the program and jnp.ones), and cached
    assert int(hits2) >= 1 and t2 == "True"  # the second process loads them from the cache ...
    assert n2 == n1  # ... and counts as many executables as the first built
