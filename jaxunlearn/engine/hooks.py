"""The loop's hooks, one concern each: checkpoint/resume, divergence guard, progress, callbacks, timing.

:func:`jaxunlearn.engine.run` is a short epoch loop that calls these at fixed points (start, after each
step, at each epoch end, at the end); each can be used and tested on its own, in the engine's loop or
in a user's.

Example:
    >>> import jax.numpy as jnp
    >>> guard = DivergenceGuard()
    >>> guard.keep({"w": jnp.ones(2)}, {})
    >>> guard.epoch_ok(jnp.array(True), {"w": jnp.array([1.0, jnp.nan])}, {})
    False
    >>> guard.last_good[0]["w"].tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from tqdm.auto import tqdm

from jaxunlearn import _validate, distributed
from jaxunlearn.checkpoint import Checkpointer

__all__ = [
    "COMPILE_COUNTER",
    "CompileCounter",
    "Checkpointing",
    "DivergenceGuard",
    "Progress",
    "Timer",
    "EpochCallback",
    "copy_tree",
    "all_finite",
]

PyTree = Any


class CompileCounter:
    """Counts the engine's step-function traces (``count``), every XLA compilation (``compiles``) and the
    seconds spent tracing, lowering and compiling (``seconds``).

    ``count`` grows when an engine step is (re)traced; ``compiles`` counts backend compilations of any
    function in the process, from JAX's own monitoring events, so it also catches recompilations that
    need no retrace (e.g. the same trace with differently placed inputs). ``seconds`` sums the durations
    JAX reports for jaxpr tracing, lowering to MLIR and backend compilation of any function in the process,
    merging nested spans (``RunResult.compile_seconds`` is its growth during one run).

    Example:
        >>> c = CompileCounter()
        >>> _ = jax.jit(lambda x: x * 3.0)(jnp.ones(7))
        >>> c.compiles >= 1, c.seconds > 0
        (True, True)
    """

    _DURATIONS = (
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    )

    _KEEP = 4096  # recent spans kept for merging nested events

    def __init__(self, listen: bool = True):
        self.count = 0
        self.compiles = 0
        self.seconds = 0.0
        self._spans: list[list[float]] = []  # disjoint (start, end) of the counted time, by end
        self._lock = threading.Lock()  # JAX may report events from other threads
        if listen:
            jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event: str, duration: float, **kwargs) -> None:
        if event in self._DURATIONS:
            with self._lock:
                self.add_span(time.perf_counter(), float(duration))
        if event == "/jax/core/compile/backend_compile_duration":
            self.compiles += 1

    def add_span(self, end: float, duration: float) -> None:
        """Count the time in ``[end - duration, end]`` not counted yet: an event is reported when it ends,
        so a jit traced inside another one's trace arrives first and lies inside the outer span."""
        start = end - duration
        while self._spans and self._spans[-1][1] > start:
            s0, e0 = self._spans.pop()
            self.seconds -= e0 - s0
            start = min(start, s0)
            end = max(end, e0)
        self._spans.append([start, end])
        self.seconds += end - start
        if len(self._spans) > self._KEEP:
            del self._spans[: len(self._spans) - self._KEEP]

    def reset(self):
        """Zero every counter."""
        self.count = 0
        self.compiles = 0
        self.seconds = 0.0
        self._spans = []


COMPILE_COUNTER = CompileCounter()


def copy_tree(tree: PyTree) -> PyTree:
    """A copy of every array leaf (the live arrays of a loop are donated to the next step).

    Example:
        >>> copy_tree({"a": jnp.ones(2)})["a"].tolist()
        [1.0, 1.0]
    """
    return jax.tree.map(lambda a: jnp.array(a, copy=True), tree)


def all_finite(tree: PyTree) -> jax.Array:
    """``∧`` over the floating leaves of ``tree`` of ``all(isfinite(leaf))`` (True without floating leaves).

    Example:
        >>> bool(all_finite({"a": jnp.ones(2), "n": jnp.array(3)})), bool(all_finite(jnp.array([jnp.inf])))
        (True, False)
    """
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


_finite_jit = jax.jit(all_finite)


@functools.partial(jax.jit, static_argnums=0)
def _outputs_finite(apply_fn, params, model_state, x) -> jax.Array:
    out, _ = apply_fn(params, model_state, x, train=False)
    return all_finite(out)


class DivergenceGuard:
    """Stops a run whose loss, parameters or outputs stop being finite, and keeps the last finite state.

    Each step folds ``isfinite(loss)`` into a flag (inside the compiled step); at an epoch end
    :meth:`epoch_ok` also checks every parameter and, when ``apply_fn`` is given and the probe batch has
    an input ``x``, the eval-mode outputs on it (finite weights can still give infinite outputs after
    gradient ascent). A finite epoch end is kept (:meth:`keep`) as the state a diverged run returns.

    Example:
        >>> g = DivergenceGuard()
        >>> g.keep(jnp.zeros(1), {})
        >>> g.epoch_ok(jnp.array(False), jnp.zeros(1), {}), g.last_good[0].tolist()
        (False, [0.0])
    """

    def __init__(self, apply_fn: Callable | None = None):
        self.apply_fn = apply_fn
        self.last_good: tuple[PyTree, PyTree] | None = None

    def keep(self, params: PyTree, model_state: PyTree) -> None:
        """Remember copies of ``params`` / ``model_state`` as the last finite state."""
        self.last_good = (copy_tree(params), copy_tree(model_state))

    def epoch_ok(self, ok, params: PyTree, model_state: PyTree, probe: dict | None = None) -> bool:
        """Whether the epoch stayed finite: the steps' flag ``ok``, the parameters and the probe outputs."""
        ok = ok & _finite_jit(params)
        if self.apply_fn is not None and isinstance(probe, dict) and "x" in probe:
            ok = ok & _outputs_finite(self.apply_fn, params, model_state, probe["x"])
        return bool(ok)


class Checkpointing:
    """Orbax checkpoints of a run's state at epoch ends, and resume from the newest.

    The state after epoch ``e`` (of ``epochs``) is saved when ``e`` is the last epoch, when ``every``
    divides ``e``, or when ``seconds`` have passed since the last save (or the start); ``None`` turns either
    rule off. The time rule is decided on the main process's clock and shared, so every process of a
    multi-host run saves the same epochs (Orbax's save is collective). ``directory=None`` disables it.

    Example:
        >>> import tempfile
        >>> ck = Checkpointing(tempfile.mkdtemp(), every=2)
        >>> [ck.due(e, 5) for e in range(1, 6)]
        [False, True, False, True, True]
        >>> ck.save(2, {"w": jnp.ones(2), "epoch": 2})
        >>> epoch, state = ck.restore({"w": jnp.zeros(2), "epoch": 0})
        >>> epoch, state["w"].tolist()
        (2, [1.0, 1.0])
        >>> ck.close()
    """

    def __init__(self, directory: str | os.PathLike | None, *, every: int | None = 1, seconds: float | None = None):
        self.every, self.seconds = self.validate(every, seconds)
        self.ckpt = Checkpointer(directory) if directory is not None else None
        self.last_save = time.perf_counter()

    @staticmethod
    def validate(every, seconds) -> tuple[int | None, float | None]:
        """Check ``every`` (epochs, a positive int or None) and ``seconds`` (>= 0 or None)."""
        if every is not None:
            every = _validate.positive_int("checkpoint_every", every)
        if seconds is not None:
            if isinstance(seconds, bool) or not _validate.is_concrete_number(seconds):
                raise ValueError(f"checkpoint_seconds must be a number of seconds >= 0 or None, got {seconds!r}.")
            _validate.positive("checkpoint_seconds", seconds, allow_zero=True)
            seconds = float(seconds)
        return every, seconds

    def due(self, epoch: int, epochs: int) -> bool:
        """Whether the state after ``epoch`` (from 1) is saved."""
        if epoch == epochs or (self.every is not None and epoch % self.every == 0):
            return True
        if self.seconds is None:
            return False
        return distributed.main_process_flag(time.perf_counter() - self.last_save >= self.seconds)

    def restore(self, template: dict) -> tuple[int, dict | None]:
        """``(epoch, state)`` of the newest checkpoint, restored into ``template``'s structure and placement,
        or ``(0, None)`` when there is none (or checkpointing is off)."""
        if self.ckpt is None:
            return 0, None
        try:
            step, restored = self.ckpt.restore_latest(template)
        except BaseException:
            self.close()
            raise
        if step is None:
            return 0, None
        return int(restored["epoch"]), restored

    def save(self, epoch: int, state: dict) -> None:
        """Save ``state`` as the checkpoint of ``epoch`` (no-op when off)."""
        if self.ckpt is not None:
            self.ckpt.save(epoch, state)
            self.last_save = time.perf_counter()

    def maybe_save(self, epoch: int, epochs: int, state_fn: Callable[[], dict]) -> bool:
        """Save ``state_fn()`` when :meth:`due`; returns whether it saved."""
        if self.ckpt is None or not self.due(epoch, epochs):
            return False
        self.save(epoch, state_fn())
        return True

    def close(self) -> None:
        """Release Orbax's resources."""
        if self.ckpt is not None:
            self.ckpt.close()


class Progress:
    """A tqdm bar over the run's steps, shown on the main process only, with the epoch's losses.

    Example:
        >>> import io
        >>> p = Progress(total=4, initial=2, desc="demo")
        >>> p.bar.fp = io.StringIO()  # (a test: no bar on the terminal)
        >>> p.step(); p.epoch_end({"epoch": 1, "loss/train": 0.5})
        >>> p.bar.n, p.bar.postfix
        (3, 'train=0.500')
        >>> p.close()
    """

    def __init__(self, total: int, *, initial: int = 0, desc: str | None = None, enabled: bool = True):
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc=desc,
            disable=not enabled or not distributed.is_main_process(),
            leave=False,
            dynamic_ncols=True,
        )

    def step(self, n: int = 1) -> None:
        """Advance by ``n`` steps."""
        self.bar.update(n)

    def epoch_end(self, record: dict) -> None:
        """Show the epoch's mean losses."""
        self.bar.set_postfix({k.split("/")[-1]: f"{v:.3f}" for k, v in record.items() if k.startswith("loss/")})

    def close(self) -> None:
        """Close the bar."""
        self.bar.close()


class EpochCallback:
    """Calls ``fn(epoch, params, model_state)`` after each finite epoch (``epoch`` from 1) with the guard's
    copies, which stay valid after the run. An exception it raises stops the run.

    Example:
        >>> seen = []
        >>> cb = EpochCallback(lambda e, p, s: seen.append(e))
        >>> cb(1, jnp.ones(1), {}); cb(2, jnp.ones(1), {}); seen
        [1, 2]
    """

    def __init__(self, fn: Callable[[int, PyTree, PyTree], None] | None):
        if fn is not None and not callable(fn):
            raise ValueError(f"on_epoch_end must be a function (epoch, params, model_state) -> None, got {fn!r}.")
        self.fn = fn

    def __call__(self, epoch: int, params: PyTree, model_state: PyTree) -> None:
        if self.fn is not None:
            self.fn(epoch, params, model_state)


class Timer:
    """Wall time and compile time of a span: ``seconds`` since creation and ``compile_seconds``, the growth
    of :data:`COMPILE_COUNTER`'s seconds over it (so ``seconds - compile_seconds`` approximates the cost of
    the same work once compiled).

    Example:
        >>> t = Timer()
        >>> t.seconds >= 0.0, t.compile_seconds >= 0.0
        (True, True)
    """

    def __init__(self, counter: CompileCounter = COMPILE_COUNTER):
        self.counter = counter
        self.t0 = time.perf_counter()
        self.c0 = counter.seconds

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0

    @property
    def compile_seconds(self) -> float:
        return self.counter.seconds - self.c0
