"""Timing and machine facts shared by the benchmark scripts (no jaxunlearn import: ``accelerator.py`` loads
it on a bare device machine before the library).

``interleaved`` times contenders A, B, A, B, ... so that a noisy machine slows them alike; ratios within
one call are what the reports quote.

Example:
    >>> t = interleaved({"a": lambda: sum(range(100)), "b": lambda: sum(range(10))}, repeats=3, inner=2)
    >>> sorted(t["a"]), len(t["b"]["all_s"])
    (['all_s', 'first_s', 'median_s'], 3)
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable


def _block(x):
    """Wait for ``x``'s device arrays (anything else passes through), without importing jax eagerly."""
    import sys

    jax = sys.modules.get("jax")
    return jax.block_until_ready(x) if jax is not None else x


def interleaved(contenders: dict[str, Callable[[], object]], repeats: int, inner: int = 1) -> dict:
    """Per contender: the first call timed alone (``first_s``: trace + compile + run), then ``repeats``
    interleaved rounds (A, B, A, B, ...) of ``inner`` consecutive calls, each round ended by
    ``block_until_ready`` on the last result; ``all_s`` and ``median_s`` are per call. A contender with an
    ``inner`` attribute runs that many calls per round instead.

    Example:
        >>> t = interleaved({"x": lambda: None}, repeats=2)
        >>> t["x"]["median_s"] >= 0.0
        True
    """
    out = {}
    for name, fn in contenders.items():
        t = time.perf_counter()
        _block(fn())
        out[name] = {"first_s": time.perf_counter() - t, "all_s": []}
    for _ in range(repeats):
        for name, fn in contenders.items():
            n = int(getattr(fn, "inner", inner))
            t = time.perf_counter()
            r = None
            for _ in range(n):
                r = fn()
            _block(r)
            out[name]["all_s"].append((time.perf_counter() - t) / n)
    for v in out.values():
        v["median_s"] = statistics.median(v["all_s"])
    return out


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one).

    Example:
        >>> cpu_count() >= 1
        True
    """
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def machine() -> dict:
    """Date, machine, CPUs, load average and Python version: the facts every report starts with.

    Example:
        >>> sorted(machine())
        ['cpus', 'date', 'load_start', 'machine', 'python']
    """
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": f"{platform.machine()} {platform.platform()}",
        "cpus": cpu_count(),
        "load_start": os.getloadavg(),
        "python": platform.python_version(),
    }
