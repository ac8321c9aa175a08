"""Orbax checkpoints for long runs: periodic saves and resume.

A thin wrapper around ``orbax.checkpoint.CheckpointManager`` that saves a pytree (parameters, model
state, optimizer states, counters) under ``directory/<step>``, keeps the last few, and restores the
latest one into the structure of a template. Saves are atomic (Orbax writes to a temporary directory
and renames it), so a run killed mid-save resumes from the previous complete checkpoint. Multi-host
safe: every process calls ``save``; Orbax coordinates the writes.

Example:
    >>> import tempfile, jax.numpy as jnp
    >>> tmp = tempfile.TemporaryDirectory()
    >>> ckpt = Checkpointer(f"{tmp.name}/ckpt")
    >>> ckpt.save(3, {"params": {"w": jnp.ones(2)}, "epoch": 3})
    >>> step, state = ckpt.restore_latest({"params": {"w": jnp.zeros(2)}, "epoch": 0})
    >>> step, state["params"]["w"].tolist(), int(state["epoch"])
    (3, [1.0, 1.0], 3)
    >>> ckpt.close(); tmp.cleanup()
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["Checkpointer", "CheckpointError"]


class _DropInterrupts(logging.Filter):
    """Orbax logs a ``KeyboardInterrupt`` that reaches its save as an error with a traceback ("Save Finalize
    thread failed"); the ``jaxunlearn`` command prints its own one-line message, so such records are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[0] if record.exc_info else None
        return not (exc is not None and issubclass(exc, KeyboardInterrupt))


class _DropAftermath(logging.Filter):
    """While Orbax restores a checkpoint, and after a restore failed, the reads that outlive the failure are logged
    by asyncio ("Task/Future exception was never retrieved", a traceback each); the failure itself is reported
    once, as a :class:`CheckpointError`, so those records are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "exception was never retrieved" not in str(record.msg):
            return True
        return not (_RESTORE["active"] or _RESTORE["failed"])


#: whether a restore is under way / has failed in this process (read by :class:`_DropAftermath`)
_RESTORE = {"active": 0, "failed": False}


logging.getLogger("absl").addFilter(_DropInterrupts())
logging.getLogger("asyncio").addFilter(_DropAftermath())


def _late_callback(exc: BaseException | None) -> bool:
    """TensorStore's callbacks into the closed event loop of a failed (or interrupted) Orbax operation."""
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("Event loop is closed" in text or "after shutdown" in text)


def _quiet_unraisable() -> None:
    """Drop the late-callback errors (:func:`_late_callback`) that a failed restore makes TensorStore report
    through ``sys.unraisablehook`` (a traceback each, during and after the restore); others pass on."""
    if getattr(sys.unraisablehook, "_jaxunlearn", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable):
        if not _late_callback(unraisable.exc_value):
            previous(unraisable)

    hook._jaxunlearn = True
    sys.unraisablehook = hook


def _quiet_interrupted() -> None:
    """A save interrupted by Ctrl-C: the process is ending and Orbax's background threads fail one after the
    other, each logging a traceback; silence Orbax's log (the command prints its own one line)."""
    logging.getLogger("absl").setLevel(logging.CRITICAL + 1)
    _quiet_unraisable()


class CheckpointError(ValueError):
    """A checkpoint exists but cannot be used (corrupt, or saved by a different model or method).

    Example:
        >>> issubclass(CheckpointError, ValueError)      # bad input: caught like any other ValueError
        True
    """


class Checkpointer:
    """Save/restore a pytree by integer step with Orbax.

    Args:
        directory: where checkpoints live (created if missing).
        max_to_keep: how many recent checkpoints to keep.

    Example:
        >>> import tempfile, jax.numpy as jnp
        >>> tmp = tempfile.TemporaryDirectory()
        >>> ckpt = Checkpointer(tmp.name, max_to_keep=1)
        >>> ckpt.latest_step() is None, ckpt.restore_latest({"w": jnp.zeros(2)})[0]
        (True, None)
        >>> for step in (1, 2):
        ...     ckpt.save(step, {"w": jnp.full(2, float(step))})
        >>> ckpt.latest_step(), ckpt.restore_latest({"w": jnp.zeros(2)})[1]["w"].tolist()
        (2, [2.0, 2.0])
        >>> sorted(os.listdir(tmp.name))                 # only the newest is kept
        ['2']
        >>> ckpt.restore_latest({"w": jnp.zeros(3)})    # another model's shapes
        Traceback (most recent call last):
        ...
        jaxunlearn.checkpoint.CheckpointError: ...start a new run with another --out.
        >>> ckpt.close(); tmp.cleanup()
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 2):
        self.directory = os.path.abspath(os.fspath(directory))
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise CheckpointError(
                f"checkpoint directory {self.directory} exists but is a file; remove it or choose another --out."
            )
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True)
        try:
            self._mgr = ocp.CheckpointManager(self.directory, options=options)
        except OSError as exc:
            raise CheckpointError(f"cannot open the checkpoint directory {self.directory}: {exc}.") from exc

    def latest_step(self) -> int | None:
        """The newest saved step, or ``None``."""
        return self._mgr.latest_step()

    def save(self, step: int, state: Any) -> None:
        """Save ``state`` (any pytree of arrays and numbers) as ``step`` and wait until it is on disk."""
        try:
            self._mgr.save(int(step), args=ocp.args.StandardSave(state), force=True)
            self._mgr.wait_until_finished()
        except KeyboardInterrupt:
            _quiet_interrupted()
            raise

    def restore_latest(self, template: Any) -> tuple[int | None, Any]:
        """Restore the newest checkpoint into the structure of ``template``; ``(None, template)`` if none.

        Raises:
            CheckpointError: when the checkpoint does not match ``template`` (another model, method or
                optimizer) or cannot be read. The message says how to start over.
        """
        step = self.latest_step()
        if step is None:
            return None, template
        where = os.path.join(self.directory, str(step))
        _quiet_unraisable()  # before the metadata is read: a damaged checkpoint fails there already
        _RESTORE["active"] += 1
        try:
            self._check_dtypes(step, template, where)
            abstract = jax.tree.map(_abstract, template)
            state = self._mgr.restore(step, args=ocp.args.StandardRestore(abstract))
        except CheckpointError:
            raise
        except Exception as exc:  # orbax raises many types for corrupt/mismatched trees
            _RESTORE["failed"] = True
            # its unfinished coroutines are reported when the process ends; the error below says it all
            warnings.filterwarnings("ignore", message=r"coroutine '.*' was never awaited", category=RuntimeWarning)
            raise CheckpointError(
                f"cannot restore the checkpoint at {where} ({type(exc).__name__}: {_first_line(exc)}). "
                "It was written by a different model/method/optimizer or is damaged; delete that directory "
                "to redo that training from scratch, or start a new run with another --out."
            ) from exc
        finally:
            _RESTORE["active"] -= 1
        if len(jax.tree.leaves(state)) != len(jax.tree.leaves(template)):
            raise CheckpointError(
                f"checkpoint at {where} holds {len(jax.tree.leaves(state))} arrays where "
                f"{len(jax.tree.leaves(template))} were expected; it belongs to another model or method. "
                "Delete it, or start a new run with another --out."
            )
        for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(template), strict=True):
            if np.shape(got) != np.shape(want):
                raise CheckpointError(
                    f"checkpoint at {self.directory}/{step} has an array of shape {np.shape(got)} where "
                    f"{np.shape(want)} was expected; it belongs to another model. "
                    "Delete it, or start a new run with another --out."
                )
        placed = [_placed_like(w, g) for w, g in zip(jax.tree.leaves(template), jax.tree.leaves(state))]
        return step, jax.tree.unflatten(jax.tree.structure(state), placed)

    def _check_dtypes(self, step: int, template: Any, where: str) -> None:
        """Orbax casts to the requested dtype silently; refuse a checkpoint whose arrays have other dtypes."""
        item = os.path.join(where, "default")  # the CheckpointManager's single-item directory
        if not os.path.isdir(item):
            return
        try:
            from etils import epath

            meta = ocp.StandardCheckpointHandler().metadata(epath.Path(item))
            stored = jax.tree.leaves(getattr(meta, "tree", meta))
        except Exception:  # unreadable metadata: restore() reports the problem
            return
        wanted = jax.tree.leaves(template)
        if len(stored) != len(wanted):
            return  # a structure mismatch: restore() reports it
        for got, want in zip(stored, wanted, strict=True):
            if not isinstance(want, jax.Array | np.ndarray) or np.ndim(want) == 0:
                continue
            got_dtype = getattr(got, "dtype", None)
            if got_dtype is not None and np.dtype(got_dtype) != np.dtype(want.dtype):
                raise CheckpointError(
                    f"checkpoint at {where} stores an array of dtype {np.dtype(got_dtype)} where {want.dtype} "
                    "was expected; it was written with another precision or model. "
                    "Delete it, or start a new run with another --out."
                )

    def close(self) -> None:
        """Finish pending writes and release resources."""
        self._mgr.wait_until_finished()
        self._mgr.close()


def _placed_like(want, got):
    """Orbax returns arrays committed to the template's devices; an uncommitted template leaf (a plain
    ``jnp`` array) gets an uncommitted array back, so jitted steps see the same signature as on a fresh
    run and do not compile again after a resume."""
    if (
        isinstance(want, jax.Array)
        and isinstance(got, jax.Array)
        and not want.committed
        and got.committed
        and not jax.numpy.issubdtype(got.dtype, jax.dtypes.extended)  # typed PRNG keys have no numpy form
    ):
        return jax.numpy.asarray(np.asarray(got))
    return got


def _first_line(exc: BaseException, limit: int = 240) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    line = line.split(" See full TensorStore details")[0]  # the rest is a repr of a C++ binding
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _abstract(x):
    if isinstance(x, jax.Array | np.ndarray):
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None))
    return x
