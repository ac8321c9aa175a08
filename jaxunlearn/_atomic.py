"""Atomic file writes shared by reports, metrics figures, caches and the runner (internal leaf: os/tempfile;
numpy only inside :func:`save_npz`).

Every write goes to a temporary file in the target's directory, is flushed to disk, gets the mode
``open()`` would have given it, and is moved into place with ``os.replace``: a crash or a concurrent
reader never sees a half-written file.
"""

from __future__ import annotations

import functools
import os
import tempfile


@functools.lru_cache(maxsize=1)
def default_mode() -> int:
    """0o666 minus the process umask: the mode ``open()`` would give a new file (mkstemp uses 0o600).
    Read once (``os.umask`` is process-wide), so later calls never touch the umask.

    Example:
        >>> mask = os.umask(0); _ = os.umask(mask)
        >>> default_mode() == 0o666 & ~mask
        True
    """
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _replace_via_temp(path, write, *, prefix: str, suffix: str) -> str:
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_text(path, text: str) -> str:
    """Write ``text`` (UTF-8) to ``path`` atomically, fsynced; parent directories are created.

    Example:
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = write_text(os.path.join(tmp.name, "sub", "note.txt"), "ToW 0.95")
        >>> open(path).read(), os.listdir(os.path.dirname(path))      # no temporary file left behind
        ('ToW 0.95', ['note.txt'])
        >>> tmp.cleanup()
    """

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    return _replace_via_temp(path, write, prefix=".tmp-", suffix=".tmp")


def save_npz(path, **arrays) -> str:
    """Write ``arrays`` as an uncompressed ``.npz`` file at ``path`` atomically; parent directories are created.

    Example:
        >>> import numpy as np
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = save_npz(os.path.join(tmp.name, "mem.npz"), scores=np.zeros(3), heldout=np.ones(3))
        >>> with np.load(path) as z:
        ...     sorted(z.files), z["heldout"].tolist(), os.listdir(tmp.name)
        (['heldout', 'scores'], [1.0, 1.0, 1.0], ['mem.npz'])
        >>> tmp.cleanup()
    """
    import numpy as np

    def write(tmp):
        with open(tmp, "wb") as fh:  # a file object: np.savez adds no ".npz" to the temporary name
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())

    return _replace_via_temp(path, write, prefix=".tmp-", suffix=".tmp")


def save_figure(fig, path, *, dpi: int = 150) -> str:
    """Save a matplotlib figure atomically (format from the extension, PNG by default).

    Example:
        >>> from matplotlib.figure import Figure
        >>> fig = Figure(figsize=(2, 2)); _ = fig.subplots().plot([0, 1], [1, 0])
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = save_figure(fig, os.path.join(tmp.name, "line.png"), dpi=50)
        >>> open(path, "rb").read(4)[1:], os.listdir(tmp.name)
        (b'PNG', ['line.png'])
        >>> tmp.cleanup()
    """
    ext = os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or "png"
    return _replace_via_temp(
        path,
        lambda tmp: fig.savefig(tmp, dpi=dpi, format=ext, bbox_inches="tight"),
        prefix=".tmp-fig-",
        suffix="." + ext,
    )


def remove_stale_temps(directory) -> list[str]:
    """Remove the temporary files an interrupted atomic write left in ``directory`` (``.tmp-*.tmp`` and
    ``.tmp-fig-*``); return their names. Call it only while no other process writes there (on resume).

    Example:
        >>> tmp = tempfile.TemporaryDirectory()
        >>> for name in (".tmp-abc.tmp", "results.json"):
        ...     _ = open(os.path.join(tmp.name, name), "w").write("x")
        >>> remove_stale_temps(tmp.name), sorted(os.listdir(tmp.name))
        (['.tmp-abc.tmp'], ['results.json'])
        >>> tmp.cleanup()
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        return []
    removed = []
    for name in sorted(os.listdir(directory)):
        stale = (name.startswith(".tmp-") and name.endswith(".tmp")) or name.startswith(".tmp-fig-")
        path = os.path.join(directory, name)
        if stale and os.path.isfile(path):
            os.remove(path)
            removed.append(name)
    return removed


def unique_dir(parent, stem: str) -> str:
    """Create and return a NEW directory ``parent/stem``, or ``parent/stem-2``, ``-3``, ... when taken.

    ``os.mkdir`` either creates the directory or fails, so two processes started in the same second (same
    timestamped ``stem``) never share a folder.

    Example:
        >>> tmp = tempfile.TemporaryDirectory()
        >>> [os.path.basename(unique_dir(tmp.name, "run")) for _ in range(3)]
        ['run', 'run-2', 'run-3']
        >>> tmp.cleanup()
    """
    parent = os.fspath(parent)
    os.makedirs(parent, exist_ok=True)
    k = 1
    while True:
        path = os.path.join(parent, stem if k == 1 else f"{stem}-{k}")
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            k += 1
