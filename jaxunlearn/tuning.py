"""Built-in tuning of an unlearning method's learning rate (and optionally its epochs and options), scored on
a validation split with a criterion that needs neither Retrain nor the test set.

:func:`tune` runs the method once per candidate of a small grid (``lr_scale`` values × ``epochs`` values ×
option values), measures each candidate's forget / retain / validation accuracy, and picks one with
:class:`Criterion`. The candidates share compiled steps: the learning rate is not baked into the compiled
program but read from the optimizer state (:func:`injected_rate`), so a grid of rates compiles each phase's
step once, not once per rate; one-phase plans can instead run the whole rate grid as ONE population sweep
(:func:`jaxunlearn.engine.run_many` with per-model ``lr``: vmapped on accelerators, unrolled on CPU).

The criterion (:class:`Criterion`), with the original model's ``FA₀, RA₀, VA₀`` (forget, retain, validation
accuracy) and a candidate's ``FA, RA, VA``:

* rejected as **collapsed** when ``RA < RA₀ − collapse_tol`` (default 0.2) or it diverged;
* it **keeps** the model when ``VA ≥ VA₀ − val_tol`` (default 0.05);
* ``class`` forgetting (``VA`` on the validation examples of the classes NOT forgotten): it **forgets** when
  ``FA ≤ 1/C + margin`` (chance, default margin 0.05); among candidates that forget and keep, the highest
  ``VA`` wins, ties broken by the higher ``RA``;
* ``random`` and memorization (``high | mid | low | mix``) forgetting: among candidates that keep, the
  smallest gap ``|FA − VA|`` wins (the forget set should look like unseen data), ties broken by the higher
  ``VA``, then ``RA``; given the forget examples' memorization scores (``tune(..., forget_scores=...)``; the
  runner passes them for ``high | mid | low | mix``), the gap is ``|FA − T|`` with ``T`` the accuracy the
  memorization models predict for the forget set held out (:func:`forget_target`): the mean of the forget
  examples' held-out accuracies when given (``forget_heldout``), else ``FA₀ − mean mem(F)``;
* ties: two values of a key count as equal when they differ by less than ``max(tie, se · SE)``, with ``SE``
  the binomial standard error of that key at the best value (``√(p(1−p)/n)`` for an accuracy on ``n``
  examples; ``√(FA(1−FA)/n_F + VA(1−VA)/n_V)`` for the gap), so differences the splits cannot resolve do
  not decide; the last ties go to the candidate closest to the method's default recipe (``distance``:
  ``|log(lr_scale/lr_scale₀)| + |log(epochs/epochs₀)|`` + the number of other options changed), then to the
  gentler run (smaller ``lr_scale · epochs``). The defaults come from the methods' papers and were checked
  (``benchmarks/RESULTS-recipes.md``): tuning leaves them only on evidence the validation split resolves.

When no candidate qualifies, ``satisfied`` is False and the fallback is, for class forgetting, the
non-collapsed candidate that forgets with the highest ``VA`` (its ``VA`` dropped more than ``val_tol``), else
the non-collapsed one with the lowest ``FA``; for random forgetting the non-collapsed one with the highest
``VA``; when every candidate collapsed, the one with the highest RA.

Limits: ``|FA − VA|`` targets the accuracy of typical unseen data; for examples that are hard by nature (high
memorization scores) Retrain's forget accuracy lies well below the validation accuracy, so without
``forget_heldout`` or ``forget_scores`` the criterion stops short of Retrain's FA there; ``T`` is an estimate
(the memorization models train on 70 % subsets, and their own epochs and noise enter the scores). For class
forgetting "at chance or below" accepts any FA from 0 to ``1/C + margin``: Retrain's is 0, and a model that
spreads a class's examples over the others gives ~0 too.
The validation split must come from the training distribution and share no examples with the forget set;
a small split (digits: 144 examples) makes ``VA`` coarse (one example = 0.7 points, one standard error about
2 points), so on small data the criterion mostly guards against collapse and non-forgetting rather than
fine-tuning the rate.

Example:
    >>> from jaxunlearn import methods, tuning
    >>> ctx = methods.toy_context(epochs=2)
    >>> x_val, y_val = ctx.x[:12], ctx.y[:12]  # a toy: a real validation split holds unseen examples
    >>> res = tuning.tune("ft", ctx, x_val=x_val, y_val=y_val, forget_kind="random", grid=(0.1, 1.0))
    >>> res.chosen["lr_scale"] in (0.1, 1.0), len(res.candidates), res.mode
    (True, 2, 'sequential')
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import numbers
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxunlearn import engine, methods
from jaxunlearn.data.forget import FORGET_KINDS
from jaxunlearn.engine.hooks import COMPILE_COUNTER, Timer
from jaxunlearn.plan import OptimConfig, build_optimizer

__all__ = [
    "Candidate",
    "Criterion",
    "TuneResult",
    "GRID_FACTORS",
    "chosen_options",
    "forget_target",
    "default_grid",
    "injected_rate",
    "RateSlot",
    "tune",
    "MODES",
]

PyTree = Any

#: The default grid: the method's current ``lr_scale`` times these factors.
GRID_FACTORS = (0.1, 0.3, 1.0, 3.0)
MODES = ("auto", "sequential", "sweep")
_RANDOM_LIKE = ("random", "high", "mid", "low", "mix")


# ---------------------------------------------------------------------------------------------- criterion


@dataclasses.dataclass
class Candidate:
    """One grid point and what it scored: ``lr_scale``, ``epochs`` (None: the method's), ``options`` (other
    option values tried), the accuracies ``forget_acc`` / ``retain_acc`` / ``val_acc`` in [0, 1], ``diverged``,
    ``seconds`` (its run), ``compiles`` (step programs traced for it), ``distance`` from the method's default
    recipe (for the last tie-break) and, once scored, ``status`` (``ok`` | ``collapsed`` | ``diverged`` |
    ``val drop`` | ``not forgotten``) and ``gap`` (``|FA − VA|``).

    Example:
        >>> Candidate(0.1, None, {}, 0.0, 0.99, 0.9).cost
        0.1
    """

    lr_scale: float
    epochs: int | None
    options: dict
    forget_acc: float
    retain_acc: float
    val_acc: float
    diverged: bool = False
    seconds: float = 0.0
    compiles: int = 0
    distance: float = 0.0
    status: str = ""
    gap: float = float("nan")

    @property
    def cost(self) -> float:
        """``lr_scale · epochs`` (epochs 1 when the method's own): how hard the run pushes, for tie-breaks."""
        return float(self.lr_scale) * float(self.epochs or 1)

    def row(self) -> dict:
        """The candidate as a JSON-ready dict."""
        return {k: v for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass(frozen=True)
class Criterion:
    """How :func:`tune` scores candidates without Retrain or test data (see the module docstring).

    ``kind``: ``class`` or ``random`` (memorization kinds are scored as ``random``); ``num_classes`` C;
    ``margin`` over chance ``1/C`` for class forgetting; ``val_tol``: how far ``VA`` may fall below the
    original's; ``collapse_tol``: how far ``RA`` may fall below the original's before a candidate is rejected;
    ``tie`` and ``se``: values of a ranking key closer than ``max(tie, se · SE)`` count as equal (``SE``: the
    binomial standard error at the best value, from the split sizes given to :meth:`select`; ``se=0``: ``tie``
    alone).

    Example (class forgetting, C = 10; the original has FA₀ = 1, RA₀ = 1, VA₀ = 0.95):
        >>> crit = Criterion("class", 10)
        >>> ref = {"forget_acc": 1.0, "retain_acc": 1.0, "val_acc": 0.95}
        >>> cands = [Candidate(3.0, None, {}, 0.0, 0.30, 0.28),   # forgets, but collapsed
        ...          Candidate(1.0, None, {}, 0.02, 0.99, 0.93),  # forgets, keeps
        ...          Candidate(0.3, None, {}, 0.40, 1.00, 0.95)]  # keeps, forgets too little
        >>> best, satisfied = crit.select(cands, ref)
        >>> best, satisfied, [c.status for c in cands]
        (1, True, ['collapsed', 'ok', 'not forgotten'])
    """

    kind: str
    num_classes: int
    margin: float = 0.05
    val_tol: float = 0.05
    collapse_tol: float = 0.2
    tie: float = 0.01
    se: float = 1.0

    def __post_init__(self):
        if self.kind not in ("class", "random"):
            raise ValueError(f"Criterion kind must be 'class' or 'random', got {self.kind!r}.")
        if int(self.num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}.")
        for name in ("margin", "val_tol", "collapse_tol", "tie", "se"):
            v = getattr(self, name)
            if not _number(v) or v < 0:
                raise ValueError(f"Criterion {name} must be a finite number >= 0, got {v!r}.")

    @property
    def chance(self) -> float:
        """``1/C``."""
        return 1.0 / int(self.num_classes)

    def status(self, c: Candidate, ref: dict) -> str:
        """``diverged`` | ``collapsed`` (``RA < RA₀ − collapse_tol``) | ``val drop`` (``VA < VA₀ − val_tol``) |
        ``not forgotten`` (class: ``FA > 1/C + margin``) | ``ok``.

        Example:
            >>> ref = {"forget_acc": 1.0, "retain_acc": 1.0, "val_acc": 0.95}
            >>> Criterion("random", 10).status(Candidate(1.0, None, {}, 0.9, 0.97, 0.85), ref)
            'val drop'
        """
        if c.diverged or not all(math.isfinite(v) for v in (c.forget_acc, c.retain_acc, c.val_acc)):
            return "diverged"
        if c.retain_acc < ref["retain_acc"] - self.collapse_tol:
            return "collapsed"
        if c.val_acc < ref["val_acc"] - self.val_tol:
            return "val drop"
        if self.kind == "class" and c.forget_acc > self.chance + self.margin:
            return "not forgotten"
        return "ok"

    def select(self, candidates: Sequence[Candidate], ref: dict, sizes: dict | None = None) -> tuple[int, bool]:
        """Score every candidate (sets ``status`` and ``gap``) and return ``(index of the best, satisfied)``.

        Ranking inside the qualifying pool (``status == "ok"``): class, ``max VA`` then ``max RA``; random,
        ``min |FA − VA|`` (``min |FA − ref["forget_target"]|`` when ``ref`` holds one: see :func:`forget_target`)
        then ``max VA`` then ``max RA``; then the smallest ``distance`` from the default
        recipe, then the gentlest (``cost``). "max/min" with ties closer than ``max(tie, se · SE)``, ``SE`` from
        ``sizes = {"forget_acc": n_F, "retain_acc": n_R, "val_acc": n_V}`` (None: ``tie`` alone). Fallback
        pools (``satisfied=False``): class, the non-collapsed candidates that forget (ranked as above), else
        the non-collapsed ones by ``min FA``; random, the non-collapsed ones by ``max VA``; last, every
        candidate by ``max RA``.

        Example (random forgetting: the gap |FA − VA| decides; a gap within `tie` goes to the higher VA):
            >>> crit = Criterion("random", 10)
            >>> ref = {"forget_acc": 1.0, "retain_acc": 1.0, "val_acc": 0.95}
            >>> cands = [Candidate(0.1, None, {}, 1.00, 1.00, 0.95),  # did nothing: gap 0.05
            ...          Candidate(1.0, None, {}, 0.96, 0.99, 0.95),  # gap 0.01
            ...          Candidate(3.0, None, {}, 0.90, 0.95, 0.90)]  # gap 0, within tie of 0.01: VA decides
            >>> crit.select(cands, ref)
            (1, True)
        """
        if not candidates:
            raise ValueError("no candidates to select from.")
        target = ref.get("forget_target")  # memorization forget sets: the held-out accuracy the scores predict
        for c in candidates:
            c.status = self.status(c, ref)
            c.gap = abs(c.forget_acc - (c.val_acc if target is None else float(target)))
        idx = list(range(len(candidates)))
        alive = [i for i in idx if candidates[i].status not in ("collapsed", "diverged")]
        ok = [i for i in idx if candidates[i].status == "ok"]
        c = candidates
        n = {k: int(v) for k, v in (sizes or {}).items()}

        def var(p: float, split: str) -> float:  # the binomial variance of an accuracy p on a split
            return p * (1.0 - p) / n[split] if n.get(split) else 0.0

        va = (lambda i: -c[i].val_acc, lambda i: var(c[i].val_acc, "val_acc"))
        ra = (lambda i: -c[i].retain_acc, lambda i: var(c[i].retain_acc, "retain_acc"))
        fa = (lambda i: c[i].forget_acc, lambda i: var(c[i].forget_acc, "forget_acc"))
        gap_var = (
            (lambda i: var(c[i].forget_acc, "forget_acc"))
            if target is not None
            else (lambda i: var(c[i].forget_acc, "forget_acc") + var(c[i].val_acc, "val_acc"))
        )
        gap = (lambda i: c[i].gap, gap_var)
        if self.kind == "class":
            if ok:
                return self._rank(ok, [va, ra], c), True
            forgets = [i for i in alive if c[i].forget_acc <= self.chance + self.margin]
            if forgets:
                return self._rank(forgets, [va, ra], c), False
            if alive:
                return self._rank(alive, [fa, va, ra], c), False
        else:
            if ok:
                return self._rank(ok, [gap, va, ra], c), True
            if alive:
                return self._rank(alive, [va, ra], c), False
        finite = [i for i in idx if math.isfinite(c[i].retain_acc)] or idx
        return self._rank(finite, [ra], c), False

    def _rank(self, pool: list[int], keys, cands) -> int:
        """Lexicographic selection with tolerance: for each ``(key, variance)`` in turn keep the candidates whose
        key is within ``max(tie, se·√variance(best))`` of the best (smallest) one; then the smallest
        ``distance``, then the gentlest (``cost``), then the first."""
        for key, variance in keys:
            best = min(pool, key=key)
            tol = max(self.tie, self.se * math.sqrt(max(variance(best), 0.0)))
            pool = [i for i in pool if key(i) <= key(best) + tol + 1e-12]
        return min(pool, key=lambda i: (cands[i].distance, cands[i].cost, i))


# ---------------------------------------------------------------------------------------------- the result


@dataclasses.dataclass
class TuneResult:
    """What :func:`tune` found: ``chosen`` (the winning ``lr_scale``, ``epochs`` and option values),
    ``options`` (the method options reproducing it: merge them into ``ctx.options``), ``candidates`` (every
    grid point, scored), ``best`` (the chosen one's index), ``satisfied`` (whether it met the criterion or is
    a fallback), ``reference`` (the original model's accuracies), ``criterion``, the chosen run's ``params`` /
    ``model_state``, ``seconds`` (the whole tuning), ``mode`` (``sequential`` or ``sweep``), ``compiles``
    (step programs traced during the whole tuning) and, with ``tune(..., keep_runs=True)``, ``runs``: every
    candidate's ``(params, model_state)`` (to evaluate them further; None otherwise); ``sizes``: the number of
    examples each accuracy was measured on (what the criterion's standard errors use); ``compile_seconds``: the
    part of ``seconds`` spent compiling (the first tune of a method with an optimizer compiles its steps once;
    later ones reuse them).

    Example:
        >>> r = TuneResult("ft", {"lr_scale": 1.0}, {"lr_scale": 1.0}, [], 0, True, {}, Criterion("random", 3))
        >>> r.table()
        []
    """

    method: str
    chosen: dict
    options: dict
    candidates: list[Candidate]
    best: int
    satisfied: bool
    reference: dict
    criterion: Criterion
    params: PyTree = None
    model_state: PyTree = None
    seconds: float = 0.0
    mode: str = "sequential"
    compiles: int = 0
    runs: list | None = None
    sizes: dict | None = None
    compile_seconds: float = 0.0

    def table(self) -> list[dict]:
        """One JSON-ready row per candidate, ``chosen: True`` on the winner."""
        return [{**c.row(), "chosen": i == self.best} for i, c in enumerate(self.candidates)]

    def markdown(self) -> str:
        """The candidates as a markdown table (accuracies in %).

        Example:
            >>> r = TuneResult("ft", {}, {}, [Candidate(1.0, None, {}, 0.0, 1.0, 0.9, status="ok")], 0, True, {},
            ...                Criterion("class", 10))
            >>> print(r.markdown().splitlines()[2])
            | 1 | - | - | 0.0 | 100.0 | 90.0 | ok | ✓ |
        """
        lines = [
            "| lr_scale | epochs | options | FA | RA | VA | status | chosen |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for i, c in enumerate(self.candidates):
            opts = ", ".join(f"{k}={v}" for k, v in c.options.items()) or "-"
            lines.append(
                f"| {c.lr_scale:g} | {c.epochs or '-'} | {opts} | {100 * c.forget_acc:.1f} | {100 * c.retain_acc:.1f} "
                f"| {100 * c.val_acc:.1f} | {c.status} | {'✓' if i == self.best else ''} |"
            )
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ rates without recompiling


class RateSlot:
    """A mutable learning-rate multiplier read by :func:`injected_rate`'s optimizers when their state is
    initialised: set ``value`` before a run, and the run's updates are scaled by it.

    Example:
        >>> RateSlot(0.5).value
        0.5
    """

    def __init__(self, value: float = 1.0):
        self.value = float(value)


def _scale_from_state(slot: RateSlot) -> optax.GradientTransformation:
    """``u ↦ s·u`` with ``s`` stored in the state at ``init`` (``slot.value`` then): traced, not compiled in."""

    def init(params):
        del params
        return jnp.asarray(slot.value, jnp.float32)

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u: u * state.astype(u.dtype), updates), state

    return optax.GradientTransformation(init, update)


def injected_rate(cfg: OptimConfig, slot: RateSlot) -> OptimConfig:
    """``cfg`` whose updates are multiplied by ``slot.value`` read at initialisation, so runs at different rates
    share one compiled step: ``OptimConfig(base = base(cfg) → scale(s), SAM / averaging fields of cfg)``.

    Optax's SGD, Adam and AdamW end with ``−η·(...)``, so scaling their updates by ``s`` is the rate ``s·η``
    (AdamW's decoupled decay included, as :func:`jaxunlearn.methods.scaled` does). A constant schedule (or a
    user's transform) gives a transform base; a cosine schedule (or a user's factory) a factory of the run's
    length (one compile per length, shared by every rate).

    Example:
        >>> import numpy as np
        >>> from jaxunlearn import engine
        >>> slot = RateSlot(0.1)
        >>> cfg = injected_rate(engine.UNLEARN_DEFAULT, slot)
        >>> params = {"w": jnp.ones(2)}
        >>> tx = build_optimizer(cfg, 10)
        >>> upd, _ = tx.update({"w": jnp.ones(2)}, tx.init(params), params)
        >>> ref = build_optimizer(methods.scaled(engine.UNLEARN_DEFAULT, 0.1), 10)
        >>> upd_ref, _ = ref.update({"w": jnp.ones(2)}, ref.init(params), params)
        >>> bool(np.allclose(upd["w"], upd_ref["w"]))
        True
    """
    tail = _scale_from_state(slot)
    plain = dataclasses.replace(cfg, sam="none", average="none", base=cfg.base, scale=cfg.scale)
    if cfg.uses_base and not cfg.static_total:
        base = optax.chain(build_optimizer(plain, 1), tail)
    elif cfg.uses_base or cfg.schedule != "constant":

        def base(total_steps):
            return optax.chain(build_optimizer(plain, total_steps), tail)

    else:
        base = optax.chain(build_optimizer(plain, 1), tail)
    return dataclasses.replace(cfg, base=base, scale=1.0)


@functools.lru_cache(maxsize=64)
def _injected(cfg: OptimConfig) -> tuple[OptimConfig, RateSlot]:
    """One injected-rate optimizer (and its slot) per optimizer: later tunes with the same optimizer, model and
    method reuse the compiled steps of earlier ones (runs are sequential, so one slot per optimizer is safe)."""
    slot = RateSlot(1.0)
    return injected_rate(cfg, slot), slot


# ------------------------------------------------------------------------------------------------ tuning


def _number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _check_grid(grid, what: str = "lr_scale grid") -> tuple[float, ...]:
    values = tuple(np.asarray(grid, dtype=object).reshape(-1).tolist()) if grid is not None else ()
    if not values:
        raise ValueError(f"tune: the {what} is empty; give at least one value, e.g. (0.1, 1.0).")
    for v in values:
        if not _number(v) or v <= 0:
            raise ValueError(f"tune: every {what} value must be a finite number > 0, got {v!r}.")
    return tuple(float(v) for v in values)


def _check_epochs(epochs) -> tuple[int | None, ...]:
    if epochs is None:
        return (None,)
    values = tuple(np.asarray(epochs, dtype=object).reshape(-1).tolist())
    if not values:
        raise ValueError("tune: the epochs grid is empty; give at least one epoch count, or None for the method's.")
    for v in values:
        if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 1:
            raise ValueError(f"tune: every epochs value must be an integer >= 1, got {v!r}.")
    return tuple(int(v) for v in values)


def _rate_option(method: methods.Method, ctx: methods.Context) -> tuple[float, str | None]:
    """The method's current ``lr_scale`` and the option holding it (``lr_scale``, ``base_options`` for
    hessian_select's base method, None when the method has none)."""
    opts = methods.resolve_options(method, ctx.options)
    if "lr_scale" in opts:
        return float(opts["lr_scale"]), "lr_scale"
    if "base" in opts and "base_options" in opts:
        base = methods.get(opts["base"])
        sub = methods.resolve_options(base, dict(opts["base_options"] or {}))
        return float(sub.get("lr_scale", 1.0)), "base_options"
    return 1.0, None


def _rate_options(method, ctx, where: str | None, value: float) -> dict:
    if where == "lr_scale":
        return {"lr_scale": value}
    if where == "base_options":
        opts = methods.resolve_options(method, ctx.options)
        return {"base_options": {**dict(opts["base_options"] or {}), "lr_scale": value}}
    return {}


def forget_target(forget_acc: float, scores, heldout=None) -> float:
    """The forget accuracy a model that never trained on the forget set F should have, from the memorization models:
    ``mean_{i∈F} heldout_i`` when their held-out accuracies are given (``heldout_i`` = the fraction of the models
    that did not train on example i and get it right, ``metrics.heldout_accuracy``), else from the Feldman–Zhang
    scores of F's examples: ``clip(FA₀ − mean_{i∈F} mem_i, 0, 1)``, with ``FA₀`` the original model's forget
    accuracy.

    ``mem_i = P(correct | i trained on) − P(correct | i held out)``, and the original trained on F, so ``FA₀``
    estimates the first term's mean over F and ``FA₀ − mean mem`` the second's: the accuracy Retrain should have
    on F, measured without Retrain. For a random forget set it is close to the validation accuracy (mean mem ≈
    the generalization gap), for highly memorized examples well below it (atypical examples are rarely right
    when held out). :func:`tune` uses it as the random criterion's target when given ``forget_scores`` or
    ``forget_heldout``. The score-only estimate assumes
    the original fits F as well as the scoring models fit their subsets; when it does not, ``T`` comes out too low
    (a SAM-pretrained CNN on Fashion-MNIST's ``high`` set: FA₀ 80 %, ``T`` 1.9 % against Retrain's 19.6 %; after
    SGD pretraining FA₀ 98 %, ``T`` 19.7 % against 15.9 %). The held-out accuracies measure the second term
    directly, whatever the original, so they are used when given (the runner's default memorization function,
    ``runner.memorization_details``, returns them).

    Example:
        >>> round(forget_target(1.0, [0.4, 0.0, 0.2]), 6)  # three forget examples, all right in the original
        0.8
        >>> forget_target(0.5, [0.9, 0.9])       # never below 0
        0.0
        >>> forget_target(0.5, [0.9, 0.9], heldout=[0.0, 0.5])  # held out, the models got one in four right
        0.25
    """
    if heldout is not None:
        h = np.asarray(heldout, np.float64).reshape(-1)
        if h.size == 0:
            raise ValueError("forget_target: no held-out accuracies; give one per forget example.")
        if not np.all((h >= 0.0) & (h <= 1.0)):
            raise ValueError("forget_target: the held-out accuracies must be values in [0, 1] (fractions of models).")
        return float(h.mean())
    sc = np.asarray(scores, np.float64).reshape(-1)
    if sc.size == 0 or not np.all(np.isfinite(sc)) or np.any(np.abs(sc) > 1.0):
        raise ValueError(
            "forget_target: the memorization scores must be finite values in [-1, 1], one per forget example, "
            f"got {sc.size} value(s)."
        )
    return float(np.clip(float(forget_acc) - sc.mean(), 0.0, 1.0))


def chosen_options(method: str, ctx: methods.Context, chosen: dict) -> dict:
    """The method options that run ``method`` at a setting :func:`tune` chose (``TuneResult.chosen``: its
    ``lr_scale``, ``epochs`` and other option values), to merge into ``ctx.options``: the rate goes where the method
    keeps it (``lr_scale``, or hessian_select's ``base_options``), as do the epochs; an ``epochs`` of None (or
    absent) keeps the method's. ``TuneResult.options`` is this of its ``chosen``; use it to run a tuned setting on
    another seed or model.

    Example:
        >>> ctx = methods.toy_context()
        >>> chosen_options("ft", ctx, {"lr_scale": 0.3, "epochs": None})
        {'lr_scale': 0.3}
        >>> chosen_options("hessian_select", ctx, {"lr_scale": 0.1, "epochs": 3})["base_options"]
        {'lr_scale': 0.1, 'epochs': 3}
    """
    m = methods.get(method)
    if not isinstance(chosen, dict) or "lr_scale" not in chosen:
        raise ValueError(f"chosen_options: give the setting tune chose, a dict with 'lr_scale', got {chosen!r}.")
    _, where = _rate_option(m, ctx)
    extra = {k: v for k, v in chosen.items() if k not in ("lr_scale", "epochs")}
    opts = {**extra, **_rate_options(m, ctx, where, float(chosen["lr_scale"]))}
    if chosen.get("epochs") is not None:
        if where == "base_options":
            opts["base_options"]["epochs"] = int(chosen["epochs"])
        else:
            opts["epochs"] = int(chosen["epochs"])
    return opts


def default_grid(method: str, ctx: methods.Context) -> tuple[float, ...]:
    """The default ``lr_scale`` grid: the method's current ``lr_scale`` (its default, or ``ctx.options``'s) times
    :data:`GRID_FACTORS` ``(0.1, 0.3, 1, 3)``, or times the method's registered ``tune_factors`` (GA: ``(0.3, 1,
    3, 10)``: the ascent a class needs is 3–10× what a random forget set takes, see ``methods/ga.py``).

    Example:
        >>> default_grid("ft", methods.toy_context())  # FT's default lr_scale is 1
        (0.1, 0.3, 1.0, 3.0)
        >>> default_grid("ga", methods.toy_context())  # GA's default lr_scale is 0.003
        (0.0009, 0.003, 0.009, 0.03)
    """
    m = methods.get(method)
    current, _ = _rate_option(m, ctx)
    return tuple(float(f"{current * f:.6g}") for f in (m.tune_factors or GRID_FACTORS))


def _subset(idx: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    idx = np.asarray(idx)
    if limit is None or idx.size <= limit:
        return idx
    return np.sort(np.random.default_rng(seed).choice(idx, limit, replace=False))


def _accuracies(apply_fn, params, state, sets) -> dict:
    out = {}
    for name, (x, y) in sets.items():
        ev = engine.evaluate(apply_fn, params, state, x, y)
        logits = np.asarray(ev["logits"])
        out[name] = float((logits.argmax(-1) == np.asarray(y)).mean()) if np.isfinite(logits).all() else float("nan")
    return out


def _default_epochs(m, ctx, resolved: dict, where: str | None) -> int:
    """The method's epochs without tuning: its ``epochs`` option (or its base method's), else the context's."""
    if where == "base_options":
        resolved = methods.resolve_options(methods.get(resolved["base"]), dict(resolved["base_options"] or {}))
    return int(resolved.get("epochs") or ctx.epochs)


def _distance(c: Candidate, lr0: float, ep0: int, resolved: dict) -> float:
    """How far a candidate lies from the method's default recipe: ``|log(lr/lr₀)| + |log(epochs/epochs₀)|`` plus
    one per other option changed."""
    d = abs(math.log(c.lr_scale / lr0)) if lr0 > 0 else 0.0
    if c.epochs is not None:
        d += abs(math.log(c.epochs / ep0))
    return d + sum(1.0 for k, v in c.options.items() if resolved.get(k) != v)


def _plan_allows_sweep(recipe) -> bool:
    plan = recipe.plan
    return (
        plan is not None
        and recipe.start is None
        and recipe.corrected is None
        and len(plan.phases) == 1
        and plan.phases[0].optimizer is None
        and isinstance(plan.optimizer, OptimConfig)
        and not plan.optimizer.uses_base
    )


def _run_recipe(recipe, ctx, epochs):
    """Run a recipe's plan as :func:`jaxunlearn.methods.unlearn` does (or take its direct edit)."""
    if recipe.plan is None:
        return engine.RunResult(recipe.params, recipe.model_state or ctx.model_state, [], 0.0)
    plan = recipe.plan if epochs is None else dataclasses.replace(recipe.plan, epochs=int(epochs))
    params, state = recipe.start if recipe.start is not None else (ctx.params, ctx.model_state)
    x, y = jnp.asarray(ctx.x), jnp.asarray(ctx.y)
    retain_idx = np.asarray(ctx.retain_idx if recipe.retain_idx is None else recipe.retain_idx)
    forget_idx = np.asarray(ctx.forget_idx if recipe.forget_idx is None else recipe.forget_idx)
    if recipe.corrected is not None:
        x_t, y_t = recipe.corrected
        n = int(x.shape[0])
        x = jnp.concatenate([x, jnp.asarray(x_t, jnp.float32)])
        y = jnp.concatenate([y, jnp.asarray(y_t, jnp.int32)])
        retain_idx = np.concatenate([retain_idx, n + np.arange(len(y_t))])
    return engine.run(
        plan,
        ctx.apply_fn,
        params,
        state,
        engine.DeviceData(x, y),
        retain_idx=retain_idx,
        forget_idx=forget_idx,
        seed=ctx.seed,
        progress=False,
        desc=plan.name,
    )


def tune(
    method: str,
    ctx: methods.Context,
    *,
    x_val,
    y_val,
    forget_kind: str,
    grid: Sequence[float] | None = None,
    epochs: Sequence[int] | None = None,
    options: dict[str, Sequence] | None = None,
    criterion: Criterion | None = None,
    mode: str = "auto",
    max_eval: int | None = 2000,
    keep_runs: bool = False,
    forget_scores=None,
    forget_heldout=None,
) -> TuneResult:
    """Select ``method``'s learning rate (and, optionally, epochs and option values) on a validation split.

    Runs ``method`` from the original model in ``ctx`` at every ``lr_scale`` of ``grid`` (default
    :func:`default_grid`: the method's current ``lr_scale`` × ``(0.1, 0.3, 1, 3)``; for ``hessian_select`` the
    ``lr_scale`` of its base method), every value of ``epochs`` (default: the method's) and every combination
    of ``options`` (``{name: values}``, e.g. ``{"alpha": [0.99, 0.999]}``); measures forget accuracy ``FA``
    (forget set), retain accuracy ``RA`` (retain set, at most ``max_eval`` examples) and validation accuracy
    ``VA`` on ``(x_val, y_val)`` (for ``class`` forgetting only its examples of the classes kept); and selects
    with ``criterion`` (default ``Criterion(kind, ctx.num_classes)``, see :class:`Criterion` and the module
    docstring for the formula and its limits). Needs neither Retrain nor test data.

    ``mode``: ``sequential`` runs the candidates one after another with the rate read from the optimizer state
    (:func:`injected_rate`: each phase's step is compiled once for the whole grid); ``sweep`` runs the rate grid
    of each (epochs, options) point as one population (:func:`jaxunlearn.engine.run_many`, per-model ``lr``;
    one-phase plans with a built-in optimizer only); ``auto``: ``sweep`` on an accelerator when the plan
    allows it, else ``sequential``. The method's recipe (masks, teachers, saliency) is built once per options
    combination. Only the chosen run's parameters are kept, unless ``keep_runs=True`` (every candidate's, in
    ``TuneResult.runs``). A method that edits the weights directly (no learning rate) is tuned over the
    ``options`` given, else over its registered ``tune_options`` (SSD: ``alpha`` ∈ {2, 5, 10, 20}).

    ``forget_scores`` (random and memorization forget sets): the Feldman–Zhang memorization scores of the forget
    examples, in ``ctx.forget_idx`` order. The random criterion then asks for ``FA`` close to
    :func:`forget_target` (the accuracy the scores predict for F held out, stored as
    ``reference["forget_target"]``) instead of close to the candidate's ``VA``: on highly memorized examples
    Retrain's forget accuracy lies far below the validation accuracy. ``forget_heldout``: the same examples'
    accuracies when held out from the memorization models (``metrics.heldout_accuracy``); given, the target is
    their mean, which does not depend on how well the original fits F.

    Errors (one line, before any training): an empty grid, a value ≤ 0 or not finite, no validation data, an
    unknown ``forget_kind``, a method without a learning rate given a rate or epochs grid, ``forget_scores`` or
    ``forget_heldout`` for class forgetting or not one per forget example.

    Example:
        >>> ctx = methods.toy_context()
        >>> tune("ft", ctx, x_val=ctx.x[:0], y_val=ctx.y[:0], forget_kind="random")
        Traceback (most recent call last):
        ValueError: tune needs validation data: x_val is empty. Hold out a split of the training data ...
        >>> tune("ft", ctx, x_val=ctx.x[:9], y_val=ctx.y[:9], forget_kind="random", grid=(0.1, -1))
        Traceback (most recent call last):
        ValueError: tune: every lr_scale grid value must be a finite number > 0, got -1.
        >>> r = tune("ga", ctx, x_val=ctx.x[:9], y_val=ctx.y[:9], forget_kind="random", grid=(0.01, 0.1))
        >>> r.chosen["lr_scale"] in (0.01, 0.1), [c.compiles for c in r.candidates][1:]  # no recompiling
        (True, [0])
    """
    timer = Timer()
    m = methods.get(method)
    if forget_kind not in FORGET_KINDS:
        raise ValueError(f"tune: unknown forget_kind {forget_kind!r}; known: {', '.join(FORGET_KINDS)}.")
    if x_val is None or y_val is None or np.shape(x_val)[0] == 0:
        raise ValueError(
            "tune needs validation data: x_val is empty. Hold out a split of the training data (e.g. "
            "data.load(..., val_fraction=0.1)) that shares no examples with the forget set."
        )
    if np.shape(x_val)[0] != np.shape(y_val)[0]:
        raise ValueError(f"tune: x_val has {np.shape(x_val)[0]} examples but y_val {np.shape(y_val)[0]} labels.")
    if mode not in MODES:
        raise ValueError(f"tune: mode must be one of {', '.join(MODES)}, got {mode!r}.")
    option_grid = dict(options or {})
    if not option_grid and not m.gradient_based and grid is None and epochs is None:
        option_grid = dict(m.tune_options)  # a direct edit: its registered option grid (SSD's alpha)
    for name, values in option_grid.items():
        if name not in m.defaults:
            raise ValueError(f"tune: {m.name} has no option {name!r}; its options are {', '.join(m.defaults)}.")
        if name in ("lr_scale", "epochs"):
            raise ValueError(f"tune: give {name} values with grid= / epochs=, not options=.")
        if len(list(values)) == 0:
            raise ValueError(f"tune: the values of option {name!r} are empty.")
    current, where = _rate_option(m, ctx)
    if not m.gradient_based or where is None:
        if grid is not None or epochs is not None or not option_grid:
            raise ValueError(
                f"tune: {m.name} edits the weights directly and has no learning rate or epochs; tune one of its "
                f"options instead, e.g. options={{'alpha': [1.0, 5.0, 10.0]}}."
            )
        rates = (current,)
    else:
        rates = _check_grid(default_grid(method, ctx) if grid is None else grid)
    epoch_grid = _check_epochs(epochs) if m.gradient_based else (None,)
    kind = "class" if forget_kind == "class" else "random"
    crit = criterion or Criterion(kind, int(ctx.num_classes))
    given = {"forget_scores": forget_scores, "forget_heldout": forget_heldout}
    for name, values in given.items():
        if values is None:
            continue
        if kind == "class":
            raise ValueError(f"tune: {name} set the target of random and memorization forgetting; drop them for "
                             "class forgetting (its target is chance).")  # fmt: skip
        given[name] = np.asarray(values, np.float64).reshape(-1)
        if not np.all(np.isfinite(given[name])):
            raise ValueError(f"tune: {name} holds non-finite values; give one finite value per forget example.")
        if given[name].size != np.size(ctx.forget_idx):
            raise ValueError(
                f"tune: {name} holds {given[name].size} value(s) for {np.size(ctx.forget_idx)} forget examples; give "
                "one value per forget example, in forget_idx order."
            )

    # evaluation sets: forget, retain (a seeded subset), validation (class: the kept classes only)
    x_val, y_val = np.asarray(x_val, np.float32), np.asarray(y_val, np.int32)
    if kind == "class":
        gone = np.unique(np.asarray(ctx.y)[np.asarray(ctx.forget_idx)])
        keep = ~np.isin(y_val, gone)
        if not keep.any():
            raise ValueError("tune: the validation split holds only examples of the forgotten class(es).")
        x_val, y_val = x_val[keep], y_val[keep]
    r_eval = _subset(ctx.retain_idx, max_eval, ctx.seed)
    x_all, y_all = jnp.asarray(ctx.x), jnp.asarray(ctx.y)
    sets = {
        "forget_acc": (jnp.take(x_all, jnp.asarray(ctx.forget_idx), axis=0), np.asarray(ctx.y)[ctx.forget_idx]),
        "retain_acc": (jnp.take(x_all, jnp.asarray(r_eval), axis=0), np.asarray(y_all)[r_eval]),
        "val_acc": (jnp.asarray(x_val), y_val),
    }
    reference = _accuracies(ctx.apply_fn, ctx.params, ctx.model_state, sets)
    if given["forget_heldout"] is not None or given["forget_scores"] is not None:
        reference["forget_target"] = forget_target(
            reference["forget_acc"], given["forget_scores"], heldout=given["forget_heldout"]
        )

    if m.gradient_based:
        injected, slot = _injected(ctx.optimizer)
    else:
        injected, slot = ctx.optimizer, RateSlot(1.0)
    candidates: list[Candidate] = []
    results: list[tuple] = []
    compiles0 = COMPILE_COUNTER.count
    used_mode = "sequential"
    names = list(option_grid)
    for combo in itertools.product(*(list(option_grid[n]) for n in names)):
        extra = dict(zip(names, combo))
        sweep = False
        if m.gradient_based and where is not None:
            plain_ctx = dataclasses.replace(ctx, options={**ctx.options, **extra})
            probe = m.recipe(plain_ctx)
            sweep = mode == "sweep" or (mode == "auto" and jax.default_backend() != "cpu" and len(rates) > 1)
            sweep = sweep and _plan_allows_sweep(probe)
            if mode == "sweep" and not sweep:
                raise ValueError(
                    f"tune: mode='sweep' needs a one-phase plan with a built-in optimizer; {m.name}'s plan has "
                    f"{len(probe.plan.phases) if probe.plan else 0} phase(s); use mode='sequential'."
                )
            recipe = probe if sweep else m.recipe(dataclasses.replace(plain_ctx, optimizer=injected))
        else:
            recipe = m.recipe(dataclasses.replace(ctx, options={**ctx.options, **extra}))
        for ep in epoch_grid:
            if sweep:
                used_mode = "sweep"
                k = len(rates)
                t1, c1 = time.perf_counter(), COMPILE_COUNTER.count
                plan = recipe.plan if ep is None else dataclasses.replace(recipe.plan, epochs=int(ep))
                stack = lambda t, k=k: jax.tree.map(lambda a: jnp.stack([jnp.asarray(a)] * k), t)  # noqa: E731
                lrs = [plan.optimizer.lr * r / current for r in rates]
                res = engine.run_many(
                    plan,
                    ctx.apply_fn,
                    stack(ctx.params),
                    stack(ctx.model_state),
                    engine.DeviceData(x_all, y_all),
                    retain_idx=ctx.retain_idx,
                    forget_idx=ctx.forget_idx,
                    seeds=[ctx.seed] * k,
                    lr=lrs,
                    progress=False,
                )
                secs, comp = (time.perf_counter() - t1) / k, COMPILE_COUNTER.count - c1
                for j, r in enumerate(rates):
                    p = jax.tree.map(lambda a, j=j: a[j], res.params)
                    s = jax.tree.map(lambda a, j=j: a[j], res.model_state)
                    div = res.diverged is not None and res.diverged[j] is not None
                    acc = _accuracies(ctx.apply_fn, p, s, sets)
                    candidates.append(
                        Candidate(r, ep, extra, **acc, diverged=div, seconds=secs, compiles=comp if j == 0 else 0)
                    )
                    results.append((p, s))
                continue
            for r in rates:
                slot.value = r / current
                t1, c1 = time.perf_counter(), COMPILE_COUNTER.count
                res = _run_recipe(recipe, ctx, ep)
                acc = _accuracies(ctx.apply_fn, res.params, res.model_state, sets)
                candidates.append(
                    Candidate(
                        r,
                        ep,
                        extra,
                        **acc,
                        diverged=res.diverged is not None,
                        seconds=time.perf_counter() - t1,
                        compiles=COMPILE_COUNTER.count - c1,
                    )
                )
                results.append((res.params, res.model_state))
    resolved = methods.resolve_options(m, ctx.options)
    ep0 = _default_epochs(m, ctx, resolved, where)
    for c in candidates:
        c.distance = _distance(c, current, ep0, resolved)
    sizes = {k: int(np.shape(v[1])[0]) for k, v in sets.items()}
    best, satisfied = crit.select(candidates, reference, sizes)
    win = candidates[best]
    chosen = {"lr_scale": win.lr_scale, "epochs": win.epochs, **win.options}
    opts = chosen_options(method, ctx, chosen)
    params, state = results[best]
    return TuneResult(
        method,
        chosen,
        opts,
        candidates,
        best,
        satisfied,
        reference,
        crit,
        params,
        state,
        timer.seconds,
        used_mode,
        COMPILE_COUNTER.count - compiles0,
        results if keep_runs else None,
        sizes,
        timer.compile_seconds,
    )
