"""SAM / ASAM perturbations, SAM gradients and sharpness maximization (framework-free).

Notation (all norms over the WHOLE parameter pytree):

* ``g = ∇L(w)``;
* perturbation ``e = ρ · T(w)² ⊙ g / (‖T(w) ⊙ g‖₂ + 1e-12)`` with ``T(w) = 1`` (SAM) or
  ``T(w) = |w| + η`` (adaptive SAM, ASAM; η = 0.01 is the usual choice);
* ``g' = ∇L(w + e)`` with ``e`` held fixed (no gradient flows through ``e``);
* SAM-family update direction ``g + s·λ·(g' − g)``, ``s = +1`` ("min") or ``−1`` ("max"), ``λ >= 0``.

``sign="min", lamb=1`` is plain SAM (the gradient at the perturbed point). ``sign="max"`` gives
``(1+λ)g − λg'``, the gradient of ``L(w) − λ·[L(w+e) − L(w)]`` with ``e`` fixed: sharpness
*maximization*, used by Sharp MinMax on the forget set.

Losses follow ``jax.grad``'s manners: ``loss_fn(params, *args) -> scalar``, or ``(scalar, aux)`` with
``has_aux=True``. A tuple returned without ``has_aux=True``, or a non-scalar loss, is a one-line error.

Cost: one SAM direction is two forward/backward passes (at ``w`` and at ``w + e``) plus O(#params).

Gradient accumulation (a batch too large for one pass, split into M equal micro-batches):
:func:`accumulated_value_and_sam_grad` averages ``g`` over the M micro-batches, perturbs with the FULL
``g`` and averages ``g'`` over the SAME micro-batches, so for a mean loss it equals full-batch SAM
(2·M passes, activation memory of one micro-batch). ``optax.MultiSteps`` around ``transforms.sam`` does
not: it perturbs with the mean gradient but takes ``g'`` on the last micro-batch only.

    >>> loss = lambda w, x: jnp.mean((x @ w) ** 2)
    >>> x = jnp.arange(12.0).reshape(6, 2) / 10
    >>> _, full = value_and_sam_grad(loss, 0.05)(jnp.ones(2), x)
    >>> _, acc = accumulated_value_and_sam_grad(loss, 0.05)(jnp.ones(2), x.reshape(3, 2, 2))  # 3 micro-batches
    >>> bool(jnp.allclose(full, acc, rtol=1e-6))
    True

Everything here is pure and works under ``jax.jit``, ``jax.vmap`` (e.g. over ``rho`` or ``lamb``) and
sharded jit. Hyperparameters given as Python/NumPy numbers are checked when the function is built
(``rho > 0``, ``eta >= 0``, ``lamb >= 0``, all finite); traced values are accepted unchecked. Only ``jax``
is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxunlearn import _validate

__all__ = [
    "perturbation",
    "sam_direction",
    "value_and_sam_grad",
    "sam_grad",
    "sharpness",
    "accumulated_value_and_grad",
    "accumulated_value_and_sam_grad",
    "accumulated_sam_grad",
    "default_unroll",
    "tree_norm",
    "SIGNS",
]

PyTree = Any
_EPS = 1e-12
SIGNS = {"min": 1.0, "max": -1.0}  # sign -> s in the direction g + s·λ·(g' − g)


def tree_norm(tree: PyTree) -> jax.Array:
    """Global Euclidean norm ``sqrt(Σ_leaves Σ x²)`` of a pytree.

    Example:
        >>> float(tree_norm({"a": jnp.array([3.0]), "b": jnp.array([4.0])}))
        5.0
    """
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros(())
    dtype = jnp.promote_types(jnp.result_type(*leaves), jnp.float32)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(dtype))) for x in leaves))


def _check_radius(rho, eta) -> None:
    _validate.real_number("rho", rho, minimum=0.0, strict=True, hint="SAM's radius ρ must be positive, e.g. rho=0.05.")
    _validate.real_number("eta", eta, minimum=0.0, hint="ASAM's offset η is >= 0, e.g. eta=0.01.")


def _check_callable(name: str, fn) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be a function loss_fn(params, *args), got {type(fn).__name__}.")


def perturbation(grads: PyTree, params: PyTree, rho, *, adaptive: bool = False, eta=0.0) -> PyTree:
    """SAM/ASAM ascent perturbation ``e = ρ · T(w)² ⊙ g / (‖T(w) ⊙ g‖₂ + 1e-12)``.

    ``T(w) = 1`` for SAM and ``|w| + η`` for ASAM (``adaptive=True``); the norm runs over the whole
    pytree. A zero gradient gives ``e = 0`` (never NaN). ``e`` is wrapped in ``stop_gradient``.

    Args:
        grads: gradient pytree ``g`` (same structure as ``params``).
        params: parameters ``w``; only used when ``adaptive=True``.
        rho: radius ρ > 0 (may be a traced value, e.g. under ``vmap``).
        adaptive: use ASAM's scale ``T(w) = |w| + η``.
        eta: ASAM offset η >= 0.

    Example:
        >>> g = {"w": jnp.array([3.0, 4.0])}
        >>> perturbation(g, g, 0.5)["w"]          # 0.5 * g / 5
        Array([0.3, 0.4], dtype=float32)
    """
    _check_radius(rho, eta)
    _validate.same_structure("grads", grads, "params", params)
    if adaptive:
        scale = jax.tree.map(lambda w: jnp.abs(w) + eta, params)
        scaled = jax.tree.map(lambda t, g: t * g, scale, grads)
        norm = tree_norm(scaled)
        e = jax.tree.map(lambda t, g: rho * t * t * g / (norm + _EPS), scale, grads)
    else:
        norm = tree_norm(grads)
        e = jax.tree.map(lambda g: rho * g / (norm + _EPS), grads)
    return jax.lax.stop_gradient(jax.tree.map(lambda x, g: x.astype(g.dtype), e, grads))


def sam_direction(grads: PyTree, perturbed_grads: PyTree, *, lamb=1.0, sign: str = "min") -> PyTree:
    """Combine the two gradients: ``g + s·λ·(g' − g)`` with ``s = +1`` (min) or ``−1`` (max), ``λ >= 0``.

    Example:
        >>> g, gp = {"w": jnp.array(1.0)}, {"w": jnp.array(3.0)}
        >>> float(sam_direction(g, gp, sign="max")["w"])   # (1+1)*1 - 1*3
        -1.0
    """
    _validate.real_number("lamb", lamb, minimum=0.0, hint="for sharpness maximization use sign='max', not λ < 0.")
    s = SIGNS[_validate.choice("sign", sign, SIGNS)]
    return jax.tree.map(lambda g, gp: g + (s * lamb) * (gp - g), grads, perturbed_grads)


def _checked(loss_fn: Callable[..., Any], has_aux: bool, where: str) -> Callable[..., tuple[Any, Any]]:
    """``loss_fn`` returning ``(loss, aux)`` (aux None without ``has_aux``), its output checked at trace time."""

    def f(params, *args, **kwargs):
        return _validate.loss_output(loss_fn(params, *args, **kwargs), has_aux, where)

    return f


def value_and_sam_grad(
    loss_fn: Callable[..., Any],
    rho,
    *,
    adaptive: bool = False,
    eta=0.0,
    lamb=1.0,
    sign: str = "min",
    has_aux: bool = False,
) -> Callable[..., tuple[Any, PyTree]]:
    """Like ``jax.value_and_grad`` but returns the SAM-family direction ``g + s·λ·(g' − g)``.

    The returned function ``f(params, *args)`` computes ``g = ∇L(w)`` (the value and ``aux`` come from
    this UNPERTURBED pass, so batch-norm statistics are updated once), the perturbation ``e`` (see
    :func:`perturbation`), ``g' = ∇L(w + e)`` and returns ``(value, g + s·λ·(g' − g))``, where
    ``value`` is ``loss`` or ``(loss, aux)`` when ``has_aux`` (the perturbed pass's aux is discarded).

    * ``sign="min", lamb=1``: SAM (ASAM with ``adaptive=True``), i.e. ``g'``.
    * ``sign="max"``: sharpness maximization ``(1+λ)g − λg'`` = ∇[L(w) − λ(L(w+e) − L(w))], e fixed.

    Cost: two forward/backward passes. Raises at construction for ``rho <= 0``, ``eta < 0``, ``lamb < 0``,
    non-finite or non-numeric settings, or an unknown ``sign``.

    Example:
        >>> loss = lambda w, x: jnp.sum((w * x) ** 2)
        >>> f = jax.jit(value_and_sam_grad(loss, rho=0.05))
        >>> value, grads = f(jnp.ones(3), jnp.arange(3.0))     # g = 2wx² = [0, 2, 8]; g' = ∇L(w + e)
        >>> float(value), [round(v, 3) for v in grads.tolist()]
        (5.0, [0.0, 2.024, 8.388])
    """
    _check_callable("loss_fn", loss_fn)
    _validate.sam_hyperparams(rho, eta, lamb, sign, SIGNS)
    vg = jax.value_and_grad(_checked(loss_fn, has_aux, "value_and_sam_grad"), has_aux=True)

    def f(params, *args, **kwargs):
        (loss, aux), g = vg(params, *args, **kwargs)
        e = perturbation(g, params, rho, adaptive=adaptive, eta=eta)
        _, gp = vg(jax.tree.map(jnp.add, params, e), *args, **kwargs)
        return ((loss, aux) if has_aux else loss), sam_direction(g, gp, lamb=lamb, sign=sign)

    return f


def sam_grad(
    loss_fn: Callable[..., Any],
    rho,
    *,
    adaptive: bool = False,
    eta=0.0,
    lamb=1.0,
    sign: str = "min",
    has_aux: bool = False,
) -> Callable[..., Any]:
    """Like ``jax.grad``: the direction of :func:`value_and_sam_grad` without the value.

    ``f(params, *args)`` returns ``g + s·λ·(g' − g)``, or ``(direction, aux)`` with ``has_aux=True``.

    Example:
        >>> g = sam_grad(lambda w: jnp.sum(w ** 2), rho=0.1)(jnp.ones(2))   # 2(w + 0.1·g/‖g‖)
        >>> [round(v, 4) for v in g.tolist()]
        [2.1414, 2.1414]
    """
    vsg = value_and_sam_grad(loss_fn, rho, adaptive=adaptive, eta=eta, lamb=lamb, sign=sign, has_aux=has_aux)

    def f(params, *args, **kwargs):
        value, g = vsg(params, *args, **kwargs)
        return (g, value[1]) if has_aux else g

    return f


def sharpness(
    loss_fn: Callable[..., Any],
    params: PyTree,
    *args: Any,
    rho=None,
    adaptive: bool = False,
    eta=0.0,
    has_aux: bool = False,
) -> jax.Array:
    """SAM sharpness ``L(w + e) − L(w)`` with ``e`` the (A)SAM perturbation at ``w``; ``L = loss_fn(·, *args)``.

    Call it as ``sharpness(loss_fn, params, *args, rho=0.05)``. The earlier form with the radius as the last
    positional argument, ``sharpness(loss_fn, params, batch, rho)``, still works: when ``rho`` is not given
    by keyword, the last positional argument is the radius. Cost: two forward passes and one backward pass.

    Example:
        >>> sharpness(lambda w, x: jnp.sum((w * x) ** 2), jnp.ones(2), jnp.ones(2), rho=0.1) > 0
        Array(True, dtype=bool)
        >>> sharpness(lambda w, b: jnp.sum(w ** 2), jnp.ones(2), None, 0.1) > 0      # radius positional
        Array(True, dtype=bool)
    """
    _check_callable("loss_fn", loss_fn)
    if rho is None:
        if not args:
            raise TypeError("sharpness needs the radius: sharpness(loss_fn, params, *args, rho=0.05).")
        *args, rho = args
    _validate.real_number(
        "rho",
        rho,
        minimum=0.0,
        strict=True,
        hint="Pass the radius by keyword: sharpness(loss_fn, params, *args, rho=0.05).",
    )
    _validate.real_number("eta", eta, minimum=0.0, hint="ASAM's offset η is >= 0, e.g. eta=0.01.")
    f = _checked(loss_fn, has_aux, "sharpness")
    (loss, _), g = jax.value_and_grad(f, has_aux=True)(params, *args)
    e = perturbation(g, params, rho, adaptive=adaptive, eta=eta)
    pert, _ = f(jax.tree.map(jnp.add, params, e), *args)
    return pert - loss


# --------------------------------------------------------------------------------------------------------
# gradient accumulation over micro-batches
# --------------------------------------------------------------------------------------------------------
def default_unroll() -> bool | int:
    """How :func:`accumulated_value_and_grad` loops over micro-batches when ``unroll`` is None: fully unrolled
    (``True``) on CPU, where XLA:CPU runs a while loop around convolution passes many times slower than the
    same passes in straight-line code, and a rolled ``lax.scan`` (``1``: one compiled body, fast compiles) on
    GPU/TPU.

    Example:
        >>> default_unroll() == (True if jax.default_backend() == "cpu" else 1)
        True
    """
    return True if jax.default_backend() == "cpu" else 1


def _microbatch_mean(vg, params, args, axes, unroll, where):
    """``(mean_m loss_m, stacked aux_m, mean_m grad_m)`` of ``vg(params, *args_m) = ((loss, aux), grad)`` over the
    micro-batches ``m`` (the leading axis of the arguments whose ``in_axes`` entry is 0), by ``lax.scan``."""
    mapped = tuple(a for a, ax in zip(args, axes, strict=True) if ax == 0)
    m = _validate.leading_axis(mapped, f"{where}: the micro-batched arguments (in_axes 0)")

    def merge(mm):
        it = iter(mm)
        return tuple(next(it) if ax == 0 else a for a, ax in zip(args, axes, strict=True))

    def one(p, mm):
        return vg(p, *merge(mm))

    (loss_s, _), g_s = jax.eval_shape(one, params, jax.tree.map(lambda a: a[0], mapped))
    acc = lambda s: jnp.promote_types(s.dtype, jnp.float32)  # accumulate low precision in float32
    init = (jnp.zeros((), acc(loss_s)), jax.tree.map(lambda s: jnp.zeros(s.shape, acc(s)), g_s))

    def body(carry, mm):
        (loss, aux), g = one(params, mm)
        total_loss, total_g = carry
        total_g = jax.tree.map(lambda t, x: t + x.astype(t.dtype), total_g, g)
        return (total_loss + loss.astype(total_loss.dtype), total_g), aux

    (total_loss, total_g), aux = jax.lax.scan(body, init, mapped, unroll=unroll)
    loss = (total_loss / m).astype(loss_s.dtype)
    grads = jax.tree.map(lambda t, s: (t / m).astype(s.dtype), total_g, g_s)
    return loss, aux, grads


def _unroll(unroll):
    if unroll is None:
        return default_unroll()
    if isinstance(unroll, bool) or (isinstance(unroll, int) and unroll >= 1):
        return unroll
    raise ValueError(f"unroll must be None, True/False or an integer >= 1 (as in lax.scan), got {unroll!r}.")


def accumulated_value_and_grad(
    loss_fn: Callable[..., Any], *, has_aux: bool = False, in_axes=0, unroll: bool | int | None = None
) -> Callable[..., tuple[Any, PyTree]]:
    """Like ``jax.value_and_grad`` over M micro-batches: ``((1/M) Σ_m L_m(w), (1/M) Σ_m ∇L_m(w))``.

    ``f(params, *args)``: every argument whose ``in_axes`` entry is 0 (all of them by default; ``None``
    passes an argument whole to every micro-batch, e.g. model state) carries a leading micro-batch axis
    M; ``L_m = loss_fn(params, *args_m)``. With ``has_aux=True`` the value is ``(mean loss, aux)`` with the
    M auxes stacked on a leading axis. For a mean loss over M equal micro-batches this is the full-batch
    value and gradient. The micro-batches run one after another (``lax.scan``; ``unroll`` as there, default
    :func:`default_unroll`): activation memory of one micro-batch, cost M forward/backward passes.
    ``g`` and ``grad_fn`` from this function make ``transforms.sam`` a full-batch SAM step.

    Example:
        >>> loss = lambda w, x: jnp.mean((x @ w) ** 2)
        >>> x = jnp.arange(8.0).reshape(4, 2)
        >>> v, g = accumulated_value_and_grad(loss)(jnp.ones(2), x.reshape(2, 2, 2))   # 2 micro-batches of 2
        >>> float(v) == float(loss(jnp.ones(2), x)), bool(jnp.allclose(g, jax.grad(loss)(jnp.ones(2), x)))
        (True, True)
    """
    _check_callable("loss_fn", loss_fn)
    unroll = _unroll(unroll)
    vg = jax.value_and_grad(_checked(loss_fn, has_aux, "accumulated_value_and_grad"), has_aux=True)

    def f(params, *args):
        axes = _validate.in_axes(in_axes, len(args), "accumulated_value_and_grad")
        loss, aux, g = _microbatch_mean(vg, params, args, axes, unroll, "accumulated_value_and_grad")
        return ((loss, aux) if has_aux else loss), g

    return f


def accumulated_value_and_sam_grad(
    loss_fn: Callable[..., Any],
    rho,
    *,
    adaptive: bool = False,
    eta=0.0,
    lamb=1.0,
    sign: str = "min",
    has_aux: bool = False,
    in_axes=0,
    unroll: bool | int | None = None,
) -> Callable[..., tuple[Any, PyTree]]:
    """:func:`value_and_sam_grad` over M micro-batches, equal to the full-batch SAM-family direction.

    ``g = (1/M) Σ_m ∇L_m(w)``, ``e`` = :func:`perturbation` of the FULL ``g``, ``g' = (1/M) Σ_m ∇L_m(w + e)``
    over the SAME micro-batches; returns ``(value, g + s·λ·(g' − g))`` with ``value`` the mean loss at ``w``
    (``(mean loss, stacked aux)`` with ``has_aux``). Arguments, ``in_axes`` and ``unroll`` as in
    :func:`accumulated_value_and_grad`. For a mean loss over equal micro-batches this equals
    ``value_and_sam_grad(loss_fn, rho, ...)(params, *full_batch_args)`` (float32 rounding apart). Cost: 2·M
    forward/backward passes, activation memory of one micro-batch.

    Example:
        >>> loss = lambda w, x: jnp.mean((x @ w) ** 2)
        >>> x = jnp.arange(8.0).reshape(4, 2)
        >>> _, d = accumulated_value_and_sam_grad(loss, 0.1)(jnp.ones(2), x.reshape(2, 2, 2))
        >>> bool(jnp.allclose(d, sam_grad(loss, 0.1)(jnp.ones(2), x)))
        True
    """
    _validate.sam_hyperparams(rho, eta, lamb, sign, SIGNS)
    acc = accumulated_value_and_grad(loss_fn, has_aux=has_aux, in_axes=in_axes, unroll=unroll)

    def f(params, *args):
        value, g = acc(params, *args)
        e = perturbation(g, params, rho, adaptive=adaptive, eta=eta)
        _, gp = acc(jax.tree.map(jnp.add, params, e), *args)
        return value, sam_direction(g, gp, lamb=lamb, sign=sign)

    return f


def accumulated_sam_grad(loss_fn: Callable[..., Any], rho, **kwargs) -> Callable[..., Any]:
    """:func:`accumulated_value_and_sam_grad` without the value (``(direction, stacked aux)`` with ``has_aux``).

    Example:
        >>> loss = lambda w, x: jnp.mean((x @ w) ** 2)
        >>> x = jnp.arange(8.0).reshape(4, 2)
        >>> d = accumulated_sam_grad(loss, 0.1)(jnp.ones(2), x.reshape(4, 1, 2))     # 4 micro-batches of 1
        >>> bool(jnp.allclose(d, sam_grad(loss, 0.1)(jnp.ones(2), x)))
        True
    """
    has_aux = kwargs.get("has_aux", False)
    f = accumulated_value_and_sam_grad(loss_fn, rho, **kwargs)

    def g(params, *args):
        value, d = f(params, *args)
        return (d, value[1]) if has_aux else d

    return g
