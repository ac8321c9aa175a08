"""Orbax checkpoints: roundtrip, no checkpoint, wrong template, damaged files."""

import gc
import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxunlearn.checkpoint import Checkpointer, CheckpointError

# A failed Orbax restore (damaged files, wrong shapes) leaves asynchronous reads behind whose errors
# surface later as "unraisable" exceptions, or as coroutines that were never awaited; collect them inside
# this module and silence them here.
pytestmark = [
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning"),
]


@pytest.fixture(autouse=True)
def _collect_orbax_leftovers():
    yield
    gc.collect()


def _state(scale=1.0):
    params = {
        "dense": {"kernel": scale * jnp.arange(12.0).reshape(3, 4), "bias": jnp.full((4,), -scale)},
        "emb": jnp.arange(5, dtype=jnp.int32),
        "half": jnp.linspace(0, 1, 6, dtype=jnp.bfloat16),
    }
    tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9))
    opt = tx.init(params)
    # make the optimizer state non-trivial (a step count and a momentum trace)
    _, opt = tx.update(jax.tree.map(jnp.ones_like, params), opt, params)
    return {"params": params, "model_state": {}, "opt_states": [opt], "epoch": 7}


def _leaves_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_roundtrip_latest_and_structure(tmp_path):
    ckpt = Checkpointer(tmp_path / "run", max_to_keep=2)
    try:
        assert ckpt.latest_step() is None
        for step in (1, 2, 3):
            ckpt.save(step, _state(scale=float(step)))
        assert ckpt.latest_step() == 3
        # only the last two are kept
        assert sorted(int(d) for d in os.listdir(tmp_path / "run") if d.isdigit()) == [2, 3]
        template = _state(scale=0.0)
        step, restored = ckpt.restore_latest(template)
    finally:
        ckpt.close()
    assert step == 3
    _leaves_equal(restored, _state(scale=3.0))
    assert restored["epoch"] == 7
    # optimizer states come back as the same optax types (namedtuples), usable by the optimizer
    assert type(restored["opt_states"][0][1][0]) is type(template["opt_states"][0][1][0])
    # the restored arrays are placed like the template's (plain uncommitted arrays here)
    assert not any(x.committed for x in jax.tree.leaves(restored["params"]))


def test_restore_from_new_checkpointer_same_directory(tmp_path):
    """A later process (a new Checkpointer on the same directory) finds and restores the checkpoint."""
    first = Checkpointer(tmp_path)
    first.save(5, _state(2.0))
    first.close()
    second = Checkpointer(tmp_path)
    try:
        step, restored = second.restore_latest(_state(0.0))
    finally:
        second.close()
    assert step == 5
    _leaves_equal(restored, _state(2.0))


def test_restore_latest_without_checkpoint_returns_template(tmp_path):
    ckpt = Checkpointer(tmp_path / "empty")
    try:
        template = _state()
        step, got = ckpt.restore_latest(template)
    finally:
        ckpt.close()
    assert step is None and got is template
    assert os.path.isdir(tmp_path / "empty")  # created


def test_mismatched_shape_raises_helpful_error(tmp_path):
    ckpt = Checkpointer(tmp_path)
    try:
        ckpt.save(1, _state())
        template = _state()
        template["params"]["dense"]["kernel"] = jnp.zeros((3, 5))  # another model
        with pytest.raises(CheckpointError) as info:
            ckpt.restore_latest(template)
    finally:
        ckpt.close()
    msg = str(info.value)
    assert os.path.join(str(tmp_path), "1") in msg  # where the checkpoint is
    assert "(3, 4)" in msg and "(3, 5)" in msg  # what is stored vs what was expected
    assert "delete" in msg.lower()  # how to start over
    assert isinstance(info.value, ValueError)


def test_mismatched_structure_raises(tmp_path):
    ckpt = Checkpointer(tmp_path)
    try:
        ckpt.save(1, _state())
        template = _state()
        template["params"]["extra"] = jnp.zeros(3)
        with pytest.raises(CheckpointError, match="different model/method/optimizer"):
            ckpt.restore_latest(template)
    finally:
        ckpt.close()


@pytest.mark.parametrize("damage", ["garbage_data", "garbage_metadata", "truncate_all", "delete_data"])
def test_corrupted_checkpoint_raises(tmp_path, damage):
    ckpt = Checkpointer(tmp_path)
    ckpt.save(1, _state())
    ckpt.close()
    files = [f for f in glob.glob(str(tmp_path / "1" / "**"), recursive=True) if os.path.isfile(f)]
    data_files = [f for f in files if f"{os.sep}d{os.sep}" in f]
    assert data_files, files
    if damage == "garbage_data":
        for f in data_files:
            with open(f, "wb") as fh:
                fh.write(b"\x00not a checkpoint" * 4)
    elif damage == "garbage_metadata":
        with open(tmp_path / "1" / "default" / "_METADATA", "w") as fh:
            fh.write("{not json")
    elif damage == "truncate_all":
        for f in files:
            open(f, "wb").close()
    else:
        for f in data_files:
            os.remove(f)
    ckpt = Checkpointer(tmp_path)
    try:
        with pytest.raises(CheckpointError, match="damaged"):
            ckpt.restore_latest(_state())
    finally:
        ckpt.close()
