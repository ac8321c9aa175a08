"""The record of a job's finished entries, ``OUT/progress.json``, which lets an interrupted job resume.

:class:`Progress` is shared by the image job (:mod:`jaxunlearn.runner`) and the language-model job
(:mod:`jaxunlearn.lm_job`): each finished entry is recorded atomically, a ``--resume`` with other settings is
refused instead of mixing two runs, and the job's wall time is summed over every invocation.

Example:
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> rec = Progress(tmp.name, {"lr": 0.01})
    >>> rec.record("0/retrain", {"forget_acc": 0.25})
    >>> Progress(tmp.name, {"lr": 0.01}, resume=True).done
    {'0/retrain': {'forget_acc': 0.25}}
    >>> tmp.cleanup()
"""

from __future__ import annotations

import json
import numbers
import os
import time
from typing import Any

from jaxunlearn import _atomic, distributed, report

__all__ = ["Progress"]


class Progress:
    """The record of a job's finished entries, ``OUT/progress.json``, which lets an interrupted job resume.

    The file holds ``{"settings_key": json.dumps(settings, sort_keys=True), "seconds": wall time so far,
    "entries": {key: entry}}`` (``seconds`` summed over every invocation: :attr:`seconds`) and is rewritten
    atomically after each :meth:`record`, so it always holds every entry finished so far and never
    half of one. It is written when the record is opened, before any checkpoint, so a later resume can always
    check the settings. A key names one cell of the job's grid (:meth:`key`); the checkpoints of the cells'
    training runs live under ``OUT/checkpoints/`` (:meth:`checkpoint_dir`).

    Opening rules (each failure is one ``ValueError`` saying what to do): a new record (``resume=False``) needs
    an ``out`` without a run in it (no ``progress.json``, no checkpoints) and, unless ``overwrite=True``, without
    any other file (a kept ``results.json``, the user's own files); ``resume=True`` continues the record in ``out``
    when its settings equal ``settings`` (else refused, naming the differences), and starts a new one when ``out``
    holds nothing yet (the ``jaxunlearn`` command refuses that: a misspelled ``--out``). The settings are also kept
    in ``OUT/settings.json``, so a run whose ``progress.json`` was lost or damaged is resumed from its checkpoints
    (finished entries are evaluated again from their final checkpoints) once the damaged file is moved aside. On
    a resume the temporary files an interrupted write left (``.tmp-*``) are removed.

    Attributes:
        out: the run directory.
        path: ``OUT/progress.json``.
        done: ``{key: entry}`` of every finished entry (entries are JSON-ready dicts).

    Example:
        >>> import os, tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> out = tmp.name
        >>> rec = Progress(out, {"rho": 0.1})
        >>> key = Progress.key(0, "sgd", "ft", unlearn="sam")
        >>> key, rec.is_done(key)
        ('0/sgd/sam/ft', False)
        >>> rec.record(key, {"forget_acc": 0.5})
        >>> Progress(out, {"rho": 0.1}, resume=True).done
        {'0/sgd/sam/ft': {'forget_acc': 0.5}}
        >>> Progress.read(out) == rec.done
        True
        >>> os.path.relpath(rec.checkpoint_dir("seed0", "pretrain-sgd", "original"), out)
        'checkpoints/seed0/pretrain-sgd/original'
        >>> Progress(out, {"rho": 0.2}, resume=True)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: --resume: ... holds a run with different settings; use another --out or the same settings \
(different: rho was 0.1, now 0.2).
        >>> tmp.cleanup()
    """

    FILE = "progress.json"

    def __init__(self, out: str | os.PathLike, settings: dict, *, resume: bool = False, overwrite: bool = False):
        self.out = os.fspath(out)
        self.path = os.path.join(self.out, self.FILE)
        self._settings_key = json.dumps(settings, sort_keys=True, default=str)
        self.done: dict[str, Any] = {}
        has_ckpt = self.has_checkpoints(self.out)
        has_progress = os.path.exists(self.path)
        settings_file = os.path.join(self.out, self.SETTINGS_FILE)
        #: whether this record continues one already in ``out`` (then a failure must not undo anything)
        self.continued = resume and (has_progress or has_ckpt)
        #: wall seconds of the earlier invocations of a resumed record (see :attr:`seconds`)
        self._seconds_before = 0.0
        self._opened = time.perf_counter()
        if resume and has_progress:
            saved = self._load(self.path, "--resume", self.out, has_ckpt and os.path.isfile(settings_file))
            self._check_same(saved.get("settings_key"))
            self.done = saved.get("entries", {})
            before = saved.get("seconds", 0.0)
            self._seconds_before = float(before) if isinstance(before, numbers.Real) else 0.0
        elif resume and has_ckpt:
            if not os.path.isfile(settings_file):
                raise ValueError(
                    f"--resume: {self.out} has checkpoints but no progress.json, so its settings are unknown; "
                    "delete it or choose another --out."
                )
            self._check_same(self._load(settings_file, "--resume", self.out).get("settings_key"))
        elif not resume and (has_progress or has_ckpt):
            raise ValueError(f"{self.out} already holds a run; pass --resume to continue it or choose a new --out.")
        elif not resume and not overwrite:
            kept = sorted(os.listdir(self.out)) if os.path.isdir(self.out) else []
            if kept:
                shown = ", ".join(kept[:3]) + (", ..." if len(kept) > 3 else "")
                raise ValueError(
                    f"--out {self.out} is not empty ({shown}) and holds no run; choose a new --out, or pass "
                    "--overwrite to write into it (files of the same names are replaced)."
                )
        os.makedirs(self.out, exist_ok=True)
        if self.continued and distributed.is_main_process():
            for where in [self.out, *(e.path for e in os.scandir(self.out) if e.is_dir() and e.name != "checkpoints")]:
                _atomic.remove_stale_temps(where)
                for name in os.listdir(where):
                    if name.endswith(".tmp.npz"):  # an interrupted population-array write of an older version
                        os.remove(os.path.join(where, name))
        if not os.path.isfile(settings_file):
            _write_json(settings_file, {"settings_key": self._settings_key})
        if not (resume and has_progress):  # a continued record is rewritten at its next entry, not on opening
            self._save()

    #: the settings of the run, kept apart from ``progress.json`` (see the opening rules)
    SETTINGS_FILE = "settings.json"

    @classmethod
    def holds_run(cls, out: str | os.PathLike) -> bool:
        """Whether ``out`` holds a run (a ``progress.json`` or checkpoints), i.e. whether ``--resume`` can continue it.

        Example:
            >>> import tempfile
            >>> tmp = tempfile.TemporaryDirectory()
            >>> Progress.holds_run(tmp.name), Progress.holds_run(os.path.join(tmp.name, "nope"))
            (False, False)
            >>> _ = Progress(tmp.name, {"rho": 0.1})
            >>> Progress.holds_run(tmp.name)
            True
            >>> tmp.cleanup()
        """
        out = os.fspath(out)
        return os.path.exists(os.path.join(out, cls.FILE)) or cls.has_checkpoints(out)

    @staticmethod
    def has_checkpoints(out: str | os.PathLike) -> bool:
        """Whether ``OUT/checkpoints`` holds anything (see :meth:`holds_run`).

        Example:
            >>> import tempfile
            >>> tmp = tempfile.TemporaryDirectory()
            >>> before = Progress.has_checkpoints(tmp.name)
            >>> os.makedirs(os.path.join(tmp.name, "checkpoints", "seed0"))
            >>> before, Progress.has_checkpoints(tmp.name)
            (False, True)
            >>> tmp.cleanup()
        """
        ckpt_dir = os.path.join(os.fspath(out), "checkpoints")
        return os.path.isdir(ckpt_dir) and bool(os.listdir(ckpt_dir))

    def _check_same(self, saved_key) -> None:
        if saved_key != self._settings_key:
            raise ValueError(
                f"--resume: {self.out} holds a run with different settings; use another --out or the same "
                f"settings ({self._settings_diff(saved_key)})."
            )

    def discard(self) -> None:
        """Undo a record that holds no finished entry (a job that failed before any real work): remove
        ``progress.json``, ``settings.json`` and the checkpoints, so the corrected command starts afresh.
        A continued record (``--resume``) or one with entries is left alone.

        Example:
            >>> import tempfile
            >>> tmp = tempfile.TemporaryDirectory()
            >>> Progress(tmp.name, {"rho": 0.1}).discard()
            >>> os.listdir(tmp.name)
            []
            >>> tmp.cleanup()
        """
        if self.continued or self.done or not distributed.is_main_process():
            return
        import shutil

        for name in (self.FILE, self.SETTINGS_FILE):
            if os.path.isfile(os.path.join(self.out, name)):
                os.remove(os.path.join(self.out, name))
        shutil.rmtree(os.path.join(self.out, "checkpoints"), ignore_errors=True)

    @staticmethod
    def key(seed: int, pretrain: str, method: str, unlearn: str | None = None) -> str:
        """The key of one cell: ``"seed/pretrain/unlearn/method"``, or ``"seed/pretrain/method"`` for the original
        model and Retrain (``unlearn=None``), which depend only on the pretraining.

        Example:
            >>> Progress.key(3, "sam", "retrain"), Progress.key(3, "sam", "neggrad", unlearn="sgd")
            ('3/sam/retrain', '3/sam/sgd/neggrad')
        """
        return f"{seed}/{pretrain}/{method}" if unlearn is None else f"{seed}/{pretrain}/{unlearn}/{method}"

    @classmethod
    def read(cls, out: str | os.PathLike) -> dict[str, Any]:
        """The finished entries ``{key: entry}`` of the run in ``out``, read without opening it for writing
        (e.g. to tabulate an interrupted run). See the class example."""
        return cls._load(os.path.join(os.fspath(out), cls.FILE), "progress", os.fspath(out)).get("entries", {})

    def is_done(self, key: str) -> bool:
        """Whether the entry ``key`` is recorded (see the class example)."""
        return key in self.done

    def record(self, key: str, entry: dict) -> None:
        """Record the finished entry ``key`` (made JSON-ready) and rewrite the file (see the class example)."""
        self.done[key] = report.to_jsonable(entry)
        self._save()

    def save(self) -> None:
        """Rewrite ``progress.json`` now (its entries and :attr:`seconds`): a job calls it when it ends, so the time
        after its last entry (the final evaluation, the tables) is counted too. Rerunning a finished job therefore
        adds the seconds it spends reading its entries back.

        Example:
            >>> import tempfile
            >>> tmp = tempfile.TemporaryDirectory()
            >>> rec = Progress(tmp.name, {"rho": 0.1})
            >>> rec.save()
            >>> with open(rec.path) as f:
            ...     json.load(f)["seconds"] <= rec.seconds
            True
            >>> tmp.cleanup()
        """
        self._save()

    @property
    def seconds(self) -> float:
        """The job's wall time over all its invocations: ``Σ_earlier + (now − opened)``, where ``Σ_earlier`` is
        the time the record held when this invocation resumed it (each invocation counted up to its last write
        of ``progress.json``, so the work an interrupted invocation lost after its last entry is not counted).
        A record of an older version without the field starts from 0.

        Example:
            >>> import tempfile
            >>> tmp = tempfile.TemporaryDirectory()
            >>> first = Progress(tmp.name, {"rho": 0.1})
            >>> first.record("0/sgd/original", {"forget_acc": 1.0})
            >>> with open(first.path) as f:
            ...     saved = json.load(f)["seconds"]  # the first invocation's time, up to its last write
            >>> later = Progress(tmp.name, {"rho": 0.1}, resume=True)
            >>> later.seconds >= saved > 0
            True
            >>> tmp.cleanup()
        """
        return self._seconds_before + (time.perf_counter() - self._opened)

    def checkpoint_dir(self, *parts: str) -> str:
        """``OUT/checkpoints/<parts...>``: where one training run of the job keeps its checkpoints."""
        return os.path.join(self.out, "checkpoints", *parts)

    @staticmethod
    def _load(path: str, what: str, out: str, recoverable: bool = False) -> dict:
        try:
            with open(path) as f:
                saved = json.load(f)
            if not isinstance(saved, dict) or not isinstance(saved.get("entries", {}), dict):
                raise ValueError("not a progress object")
        except ValueError as exc:
            if recoverable:  # the checkpoints and settings.json are intact: keep them
                raise ValueError(
                    f"{what}: {path} is damaged ({exc}); the checkpoints are intact: move it aside "
                    f"(mv {path} {path}.damaged) and rerun with --resume (finished entries are evaluated again "
                    "from their checkpoints)."
                ) from None
            raise ValueError(f"{what}: {path} is damaged ({exc}); delete {out} or choose another --out.") from None
        return saved

    def _settings_diff(self, saved_key) -> str:
        try:
            old, new = json.loads(saved_key), json.loads(self._settings_key)
        except (TypeError, ValueError):
            return "the saved settings are unreadable"
        diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        return "different: " + ", ".join(f"{k} was {old.get(k)!r}, now {new.get(k)!r}" for k in diff[:5])

    def _save(self) -> None:
        _write_json(self.path, {"settings_key": self._settings_key, "seconds": self.seconds, "entries": self.done})


def _write_json(path: str, obj) -> None:
    """Write ``obj`` as JSON atomically (``_atomic.write_text``); only process 0 writes in multi-host runs."""
    if distributed.is_main_process():
        _atomic.write_text(path, json.dumps(obj, indent=1, allow_nan=False))
