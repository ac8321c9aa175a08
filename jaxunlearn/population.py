"""Populations of models for the population metrics: N original models, N Retrain models and N unlearned models
per method, each from its own initialisation and seed, trained as batches of models by
:func:`jaxunlearn.engine.run_many` (vmapped or unrolled in one program, split over the devices of a mesh).

* :class:`Population`: N models stacked along a leading axis, their seeds and the examples they trained on.
* :func:`train_population`: N models, each from its own initialisation, trained on one set (the originals).
* :func:`unlearn_population`: a registered method from each of N original models (Retrain included: N fresh
  initialisations trained on the retain set).
* :func:`evaluate_population`: each model's challenge confidence on the forget set and its accuracies, the inputs of
  :func:`jaxunlearn.metrics.population.population_scores`.

How each method runs. A gradient method's recipe is built per model (its saliency mask, teacher copy, random
labels or Hessian scores come from that model and its seed: per-model preprocessing, model by model), then the N
plans, which differ only in their ``hp`` values, train together (:func:`jaxunlearn.engine.stack_plans`). A
method that edits the weights without training (``ssd``; ``hessian_select`` with ``update="first_order"`` or
``"second_order"``) has nothing to batch: it runs model by model (:attr:`Population.batched` is False and the
results say so). Feature / label unlearning (``ctx.corrected``) is not supported for populations.

Checkpoints: each chunk of models (``chunk`` models per program) of each call keeps its own checkpoints under
``checkpoint_dir/models-<first>-<last>``, so an interrupted population resumes where it stopped.

Example (two tiny MLP originals, then two FT models from them):
    >>> import numpy as np
    >>> from jaxunlearn import engine, methods
    >>> ctx = methods.toy_context(n=40)
    >>> data = engine.DeviceData(ctx.x, ctx.y)
    >>> originals = train_population(ctx.apply_fn, ctx.init_fn, data, 2, epochs=1, batch_size=16, progress=False,
    ...                              model_mode="vmap")
    >>> ft = unlearn_population("ft", ctx, originals, progress=False, model_mode="vmap")
    >>> ft.size, ft.batched
    (2, True)
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxunlearn import distributed, engine, methods
from jaxunlearn.engine.hooks import Timer, all_finite
from jaxunlearn.metrics.population import challenge_logit_confidence
from jaxunlearn.plan import PRETRAIN_DEFAULT, Phase, Plan, supervised_loss

__all__ = [
    "Population",
    "train_population",
    "unlearn_population",
    "evaluate_population",
    "default_chunk",
    "MIN_MODELS",
]

PyTree = Any

#: The fewest models a population may have (the challenge's score needs two per population).
MIN_MODELS = 2
#: Models per device and program on a CPU host (see :func:`default_chunk`).
CPU_MODELS_PER_DEVICE = 4

_finite = jax.jit(all_finite)


@dataclasses.dataclass
class Population:
    """N models stacked along a leading axis (``params``, ``model_state``), with how they came to be.

    Attributes:
        params, model_state: model k is ``jax.tree.map(lambda a: a[k], tree)`` (:meth:`model`).
        seeds: model k's seed (its initialisation for originals, its batches and method randomness otherwise).
        train_idx: the training examples every model has seen (the originals: their training set; unlearned
            models: their originals'; Retrain: the retain set), or None when unknown.
        seconds, compile_seconds: wall time of building the population, and the part spent compiling.
        diverged: None when every model stayed finite, else one entry per model (None or ``{"epoch", "reason"}``).
        batched: whether the models were trained as batches of models (False: one after another).
        info: what the method reports (e.g. ``mask_size``), from model 0's recipe, and how it ran.

    Example:
        >>> import numpy as np
        >>> pop = Population({"w": np.zeros((3, 2))}, {}, seeds=(0, 1, 2))
        >>> pop.size, pop.model(1)[0]["w"].shape
        (3, (2,))
    """

    params: PyTree
    model_state: PyTree
    seeds: tuple[int, ...]
    train_idx: np.ndarray | None = None
    seconds: float = 0.0
    compile_seconds: float = 0.0
    diverged: list | None = None
    batched: bool = True
    info: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        lead = {int(np.shape(a)[0]) if np.ndim(a) else None for a in jax.tree.leaves((self.params, self.model_state))}
        if len(lead) != 1 or None in lead:
            raise ValueError(f"a Population's params and model_state need one leading axis N (the models), got {lead}.")
        self.seeds = tuple(int(s) for s in self.seeds)
        if len(self.seeds) != self.size:
            raise ValueError(f"a Population of {self.size} models needs {self.size} seeds, got {len(self.seeds)}.")

    @property
    def size(self) -> int:
        """N, the number of models."""
        return int(np.shape(jax.tree.leaves(self.params)[0])[0])

    def model(self, k: int) -> tuple[PyTree, PyTree]:
        """``(params, model_state)`` of model k."""
        return jax.tree.map(lambda a: a[k], self.params), jax.tree.map(lambda a: a[k], self.model_state)


def default_chunk(n: int, mesh: jax.sharding.Mesh | None = None) -> int:
    """Models per program: all ``n`` on accelerators (one batched program fills the device); on a CPU host
    ``CPU_MODELS_PER_DEVICE`` per device, unrolled (``engine.default_model_mode``): on 2 CPU cores a program of
    more models runs no faster per model and compiles longer (benchmarks/RESULTS-population.md).

    Example:
        >>> default_chunk(64) == (CPU_MODELS_PER_DEVICE if jax.default_backend() == "cpu" else 64)
        True
    """
    if jax.default_backend() != "cpu":
        return n
    d = 1 if mesh is None else distributed.data_size(mesh)
    return min(n, CPU_MODELS_PER_DEVICE * d)


def _chunks(n: int, chunk: int | None, mesh) -> list[range]:
    """Consecutive model ranges of (nearly) equal sizes of at most ``chunk`` models (multiples of the mesh's size)."""
    d = 1 if mesh is None else distributed.data_size(mesh)
    if n % d:
        raise ValueError(f"a population of {n} models cannot be split over {d} devices; use a multiple of {d}.")
    chunk = default_chunk(n, mesh) if chunk is None else int(chunk)
    if chunk < 1 or chunk % d:
        raise ValueError(f"chunk must be a positive multiple of the {d} devices, got {chunk}.")
    units, per = n // d, max(1, chunk // d)
    parts = math.ceil(units / per)
    sizes = [d * (units // parts + (i < units % parts)) for i in range(parts)]
    starts = np.cumsum([0] + sizes)
    return [range(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]


def _check_size(n, what: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < MIN_MODELS:
        raise ValueError(f"{what} needs at least {MIN_MODELS} models (a population compares distributions), got {n!r}.")
    return int(n)


def _stack(trees: Sequence[PyTree]) -> PyTree:
    return jax.tree.map(lambda *a: jnp.stack([jnp.asarray(x) for x in a]), *trees)


def _concat(trees: Sequence[PyTree]) -> PyTree:
    return trees[0] if len(trees) == 1 else jax.tree.map(lambda *a: jnp.concatenate(a), *trees)


def _run_chunks(plans, starts, apply_fn, data, *, retain_rows, forget_rows, seeds, chunk, mesh, model_mode,
                checkpoint_dir, resume, checkpoint_every, checkpoint_seconds, progress, desc):  # fmt: skip
    """``engine.run_many`` over consecutive chunks of the models; returns ``(params, state, diverged, compile_s)``."""
    out_p, out_s, diverged, compile_s = [], [], [], 0.0
    parts = _chunks(len(plans), chunk, mesh)
    for part in parts:
        ks = list(part)
        pick = lambda rows, ks=ks: rows if rows is None or np.ndim(rows) == 1 else rows[ks]  # noqa: E731
        mine = [plans[k] for k in ks]
        res = engine.run_many(
            mine[0] if all(p is mine[0] for p in mine) else mine,  # one shared plan, or one per model
            apply_fn,
            _stack([starts[k][0] for k in ks]),
            _stack([starts[k][1] for k in ks]),
            data,
            retain_idx=pick(retain_rows),
            forget_idx=pick(forget_rows),
            seeds=[seeds[k] for k in ks],
            mesh=mesh,
            model_mode=model_mode,
            checkpoint_dir=None if checkpoint_dir is None else os.path.join(checkpoint_dir, f"models-{ks[0]}-{ks[-1]}"),
            resume=resume,
            checkpoint_every=checkpoint_every,
            checkpoint_seconds=checkpoint_seconds,
            progress=progress,
            desc=desc if len(parts) == 1 else f"{desc} [{ks[0]}-{ks[-1]}]",
        )
        out_p.append(res.params)
        out_s.append(res.model_state)
        diverged += res.diverged if res.diverged is not None else [None] * len(ks)
        compile_s += res.compile_seconds
    return _concat(out_p), _concat(out_s), (diverged if any(d is not None for d in diverged) else None), compile_s


def train_population(
    apply_fn: Callable,
    init_fn: Callable[[int], tuple[PyTree, PyTree]],
    data,
    n: int,
    *,
    train_idx: np.ndarray | None = None,
    optimizer=PRETRAIN_DEFAULT,
    epochs: int,
    batch_size: int = 64,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    chunk: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    model_mode: str | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    checkpoint_every: int | None = 1,
    checkpoint_seconds: float | None = None,
    progress: bool = True,
    desc: str = "population",
) -> Population:
    """N models, model k from ``init_fn(seeds[k])`` trained on ``train_idx`` (default: every example of ``data``).

    Each model minimizes ``CE(f(x_i; w_k), y_i)`` over batches of ``train_idx`` drawn with ``seeds[k]`` (default
    ``seed, seed + 1, …, seed + n − 1``) with ``optimizer`` for ``epochs`` epochs, so model k equals
    ``engine.train(apply_fn, *init_fn(seeds[k]), data, train_idx=train_idx, seed=seeds[k], ...)`` up to float
    rounding. The N models train ``chunk`` at a time (:func:`default_chunk`) through
    :func:`jaxunlearn.engine.run_many` (``mesh``, ``model_mode`` and the checkpoint settings as there; each chunk
    checkpoints under ``checkpoint_dir/models-<first>-<last>``). ``n`` must be at least 2.

    Example:
        >>> from jaxunlearn import engine, methods
        >>> ctx = methods.toy_context(n=40)
        >>> pop = train_population(ctx.apply_fn, ctx.init_fn, engine.DeviceData(ctx.x, ctx.y), 3, epochs=1,
        ...                        batch_size=16, seed=10, progress=False, model_mode="vmap")
        >>> pop.size, pop.seeds, pop.train_idx.size, pop.diverged
        (3, (10, 11, 12), 40, None)
    """
    n = _check_size(n, "train_population")
    src = engine.as_source(data)
    train_idx = np.arange(len(src)) if train_idx is None else engine.check_indices("train_idx", train_idx, len(src),
                                                                                  allow_empty=False)  # fmt: skip
    seeds = _seeds(seeds, n, seed)
    timer = Timer()
    plan = Plan(
        (Phase("train", supervised_loss),), optimizer=optimizer, epochs=epochs, batch_size=batch_size, name=desc
    )
    starts = [init_fn(s) for s in seeds]
    params, state, diverged, _ = _run_chunks(
        [plan] * n, starts, apply_fn, src, retain_rows=train_idx, forget_rows=None, seeds=seeds, chunk=chunk,
        mesh=mesh, model_mode=model_mode, checkpoint_dir=checkpoint_dir, resume=resume,
        checkpoint_every=checkpoint_every, checkpoint_seconds=checkpoint_seconds, progress=progress, desc=desc,
    )  # fmt: skip
    return Population(params, state, tuple(seeds), train_idx, timer.seconds, timer.compile_seconds, diverged,
                      info={"chunks": len(_chunks(n, chunk, mesh))})  # fmt: skip


def _seeds(seeds, n: int, seed: int) -> list[int]:
    if seeds is None:
        return [int(seed) + k for k in range(n)]
    seeds = [int(s) for s in np.asarray(seeds).reshape(-1)]
    if len(seeds) != n:
        raise ValueError(f"seeds must hold one seed per model ({n}), got {len(seeds)}.")
    return seeds


def unlearn_population(
    method: str,
    ctx: methods.Context,
    originals: Population,
    *,
    seeds: Sequence[int] | None = None,
    chunk: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    model_mode: str | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    checkpoint_every: int | None = 1,
    checkpoint_seconds: float | None = None,
    progress: bool = True,
) -> Population:
    """The registered ``method`` (or a variant ``name@tag``) from each of the N ``originals``: N unlearned models.

    Model k is ``methods.unlearn(method, ctx_k)`` with ``ctx_k = ctx`` but ``params, model_state =
    originals.model(k)`` and ``seed = seeds[k]`` (default ``originals.seeds``): its recipe (mask, teacher, random
    labels, Retrain's fresh initialisation ``ctx.init_fn(seeds[k] + 1000)``...) is built from model k, then the N
    plans train together through :func:`jaxunlearn.engine.run_many` (``chunk`` models per program, see
    :func:`train_population` for ``mesh``, ``model_mode`` and checkpoints), so model k equals the separate run up
    to float rounding. Direct weight edits (no plan: ``ssd``, ``hessian_select`` with a first- or second-order
    update) run model by model (``batched=False``); a non-finite edit keeps the original model and is reported in
    ``diverged``, as :func:`jaxunlearn.methods.unlearn` does.

    Checks: at least 2 originals; the forget set must lie in ``originals.train_idx`` when that is known (a
    population cannot unlearn examples its models never saw); no corrected examples (``ctx.corrected``).

    Example:
        >>> import numpy as np
        >>> from jaxunlearn import engine, methods
        >>> ctx = methods.toy_context(n=40)
        >>> data = engine.DeviceData(ctx.x, ctx.y)
        >>> originals = train_population(ctx.apply_fn, ctx.init_fn, data, 2, epochs=1, batch_size=16, progress=False,
        ...                              model_mode="vmap")
        >>> pop = unlearn_population("neggrad", ctx, originals, seeds=[7, 8], progress=False, model_mode="vmap")
        >>> pop.size, pop.seeds, pop.batched, pop.diverged
        (2, (7, 8), True, None)
        >>> unlearn_population("ssd", ctx, originals, progress=False).batched  # a direct edit: model by model
        False
        >>> seen_half = dataclasses.replace(originals, train_idx=np.arange(20))  # as if trained on 20 examples
        >>> unlearn_population("ft", ctx, seen_half, progress=False)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: the forget set holds 8 examples the original models never trained on (e.g. index 32); ...
    """
    if not isinstance(originals, Population):
        raise ValueError(f"originals must be a jaxunlearn.population.Population, got {type(originals).__name__}.")
    n = _check_size(originals.size, "unlearn_population")
    if ctx.corrected is not None:
        raise ValueError(
            "populations support sample deletion only: ctx.corrected (feature / label unlearning) is not supported."
        )
    if originals.train_idx is not None:
        unseen = np.setdiff1d(np.asarray(ctx.forget_idx), originals.train_idx)
        if unseen.size:
            raise ValueError(
                f"the forget set holds {unseen.size} examples the original models never trained on (e.g. index "
                f"{int(unseen[0])}); a population can only unlearn what its models saw: choose the forget set inside "
                "their training set (Population.train_idx)."
            )
    m = methods.get(method)
    seeds = _seeds(originals.seeds if seeds is None else seeds, n, 0)
    timer = Timer()
    ctxs = [dataclasses.replace(ctx, params=p, model_state=s, seed=sd) for (p, s), sd in
            zip((originals.model(k) for k in range(n)), seeds)]  # fmt: skip
    seen = (
        np.asarray(ctx.retain_idx) if m.base == "retrain" else originals.train_idx
    )  # Retrain never saw the forget set
    recipes = []
    if m.gradient_based:
        for c in tqdm(ctxs, desc=f"{method} recipes", disable=not progress or n < 8, leave=False):
            recipes.append(m.recipe(c))
    if not m.gradient_based or recipes[0].plan is None:  # direct edits: nothing to batch
        params, states, diverged = [], [], []
        for k, c in enumerate(ctxs):
            if recipes:
                p, s, d = _direct(recipes[k], c, method)
            else:
                res = methods.unlearn(method, c, progress=False)
                p, s, d = res.params, res.model_state, res.diverged
            params.append(p)
            states.append(s)
            diverged.append(d)
        info = dict(recipes[0].info if recipes else {})
        return Population(_stack(params), _stack(states), tuple(seeds), seen, timer.seconds, timer.compile_seconds,
                          diverged if any(d is not None for d in diverged) else None, batched=False,
                          info=info)  # fmt: skip
    if any(r.corrected is not None for r in recipes):
        raise ValueError(
            f"{method}: corrected examples (feature / label unlearning) are not supported for populations."
        )
    starts = [r.start if r.start is not None else (c.params, c.model_state) for r, c in zip(recipes, ctxs)]
    retain_rows = _rows([ctx.retain_idx if r.retain_idx is None else r.retain_idx for r in recipes])
    forget_rows = _rows([ctx.forget_idx if r.forget_idx is None else r.forget_idx for r in recipes])
    params, state, diverged, _ = _run_chunks(
        [r.plan for r in recipes], starts, ctx.apply_fn, engine.DeviceData(jnp.asarray(ctx.x), jnp.asarray(ctx.y)),
        retain_rows=retain_rows, forget_rows=forget_rows, seeds=seeds, chunk=chunk, mesh=mesh, model_mode=model_mode,
        checkpoint_dir=checkpoint_dir, resume=resume, checkpoint_every=checkpoint_every,
        checkpoint_seconds=checkpoint_seconds, progress=progress, desc=method,
    )  # fmt: skip
    info = {**recipes[0].info, "chunks": len(_chunks(n, chunk, mesh))}
    return Population(params, state, tuple(seeds), seen, timer.seconds, timer.compile_seconds, diverged, True, info)


def _rows(rows: list) -> np.ndarray:
    """One shared 1-D index array when every model uses the same one, else ``[N, m]``."""
    first = np.asarray(rows[0])
    if all(np.array_equal(first, np.asarray(r)) for r in rows[1:]):
        return first
    return np.stack([np.asarray(r) for r in rows])


def _direct(recipe, ctx, method: str):
    """A direct edit's parameters, as :func:`jaxunlearn.methods.unlearn` returns them (non-finite: the original)."""
    params = recipe.params
    state = recipe.model_state if recipe.model_state is not None else ctx.model_state
    if not bool(_finite((params, state))):
        return ctx.params, ctx.model_state, {"epoch": 0, "reason": f"{method}'s direct edit gave non-finite parameters"}
    return params, state, None


def evaluate_population(apply_fn: Callable, pop: Population, splits: dict[str, tuple[Any, Any]]) -> dict:
    """Each model's eval-mode outputs on labelled ``splits`` ``{name: (x, y)}``: per split ``<name>_acc`` ``[N]``
    (accuracy), and for a ``"forget"`` split ``forget_conf`` ``[N, n_forget]``, the challenge's logit-scaled
    confidence ``log(p_y + 1e-45) − log(Σ_{j≠y} p_j + 1e-45)``
    (:func:`jaxunlearn.metrics.population.challenge_logit_confidence`). Non-finite logits (a diverged model) are
    clipped to ±1e30 so every number stays finite; ``nonfinite`` ``[N]`` says which models had them.

    Example:
        >>> import numpy as np
        >>> from jaxunlearn import engine, methods
        >>> ctx = methods.toy_context(n=40)
        >>> pop = train_population(ctx.apply_fn, ctx.init_fn, engine.DeviceData(ctx.x, ctx.y), 2, epochs=1,
        ...                        batch_size=16, progress=False, model_mode="vmap")
        >>> x, y = np.asarray(ctx.x), np.asarray(ctx.y)
        >>> out = evaluate_population(ctx.apply_fn, pop, {"forget": (x[:5], y[:5]), "test": (x[5:], y[5:])})
        >>> sorted(out), out["forget_conf"].shape, out["test_acc"].shape
        (['forget_acc', 'forget_conf', 'nonfinite', 'test_acc'], (2, 5), (2,))
    """
    if not isinstance(splits, dict) or not splits:
        raise ValueError("splits must be a non-empty dict {name: (x, y)}.")
    out: dict[str, Any] = {}
    nonfinite = np.zeros(pop.size, bool)
    for name, (x, y) in splits.items():
        y = np.asarray(y)
        accs, confs = [], []
        for k in range(pop.size):
            p, s = pop.model(k)
            logits = np.asarray(engine.evaluate(apply_fn, p, s, x)["logits"], np.float32)
            if not np.isfinite(logits).all():
                nonfinite[k] = True
                logits = np.nan_to_num(logits, nan=0.0, posinf=1e30, neginf=-1e30)
            accs.append(float((logits.argmax(-1) == y).mean()))
            if name == "forget":
                confs.append(challenge_logit_confidence(logits, y))
        out[f"{name}_acc"] = np.asarray(accs)
        if name == "forget":
            out["forget_conf"] = np.stack(confs)
    out["nonfinite"] = nonfinite
    return out
