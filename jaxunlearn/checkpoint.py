"""Orbax checkpoints for long runs: periodic saves and resume.

A thin wrapper around ``orbax.checkpoint.CheckpointManager`` that saves a pytree (parameters, model
state, optimizer states, counters) under ``directory/<step>``, keeps the last few, and restores the
latest one into the structure of a template. Saves are atomic (Orbax writes to a temporary directory
and renames it), so a run killed mid-save resumes from the previous complete checkpoint. Multi-host
safe: every process calls ``save``; Orbax coordinates the writes.

Example:
    >>> ckpt = Checkpointer("/tmp/run/ckpt")
    >>> ckpt.save(3, {"params": params, "epoch": 3})
    >>> step, state = ckpt.restore_latest({"params": params, "epoch": 0})
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["Checkpointer", "CheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint exists but cannot be used (corrupt, or saved by a different model or method)."""


class Checkpointer:
    """Save/restore a pytree by integer step with Orbax.

    Args:
        directory: where checkpoints live (created if missing).
        max_to_keep: how many recent checkpoints to keep.
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 2):
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        self._mgr = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest saved step, or ``None``."""
        return self._mgr.latest_step()

    def save(self, step: int, state: Any) -> None:
        """Save ``state`` (any pytree of arrays and numbers) as ``step`` and wait until it is on disk."""
        self._mgr.save(int(step), args=ocp.args.StandardSave(state), force=True)
        self._mgr.wait_until_finished()

    def restore_latest(self, template: Any) -> tuple[int | None, Any]:
        """Restore the newest checkpoint into the structure of ``template``; ``(None, template)`` if none.

        Raises:
            CheckpointError: when the checkpoint does not match ``template`` (another model, method or
                optimizer) or cannot be read. The message says how to start over.
        """
        step = self.latest_step()
        if step is None:
            return None, template
        abstract = jax.tree.map(_abstract, template)
        try:
            state = self._mgr.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as exc:  # orbax raises many types for corrupt/mismatched trees
            raise CheckpointError(
                f"cannot restore the checkpoint at {self.directory}/{step}: {type(exc).__name__}: {exc}. "
                "It was written by a different model/method/optimizer or is damaged; delete that directory "
                "or run without --resume to start over."
            ) from exc
        for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(template), strict=True):
            if np.shape(got) != np.shape(want):
                raise CheckpointError(
                    f"checkpoint at {self.directory}/{step} has an array of shape {np.shape(got)} where "
                    f"{np.shape(want)} was expected; it belongs to another model. Delete it or run without --resume."
                )
        return step, state

    def close(self) -> None:
        """Finish pending writes and release resources."""
        self._mgr.wait_until_finished()
        self._mgr.close()


def _abstract(x):
    if isinstance(x, jax.Array | np.ndarray):
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None))
    return x
