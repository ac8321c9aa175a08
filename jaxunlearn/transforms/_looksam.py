"""``looksam``: SAM's second gradient every k-th step, its sharpness component reused in between (LookSAM).

Liu, Mai, Chen, Hsieh, You, "Towards Efficient and Scalable Sharpness-Aware Minimization", CVPR 2022
(Algorithm 1), with whole-pytree norms as in the paper (not the layer-wise variant).

Example:
    >>> import jax, jax.numpy as jnp
    >>> t = looksam(0.1, k=2)
    >>> state = t.init(jnp.zeros(2))
    >>> int(state.count), state.g_v.tolist()
    (0, [0.0, 0.0])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxunlearn import _validate, sharpness
from jaxunlearn.transforms import _common

__all__ = ["looksam", "LookSAMState"]

PyTree = Any


class LookSAMState(NamedTuple):
    """State of :func:`looksam`: ``count`` (int32, updates so far) and ``g_v``, the component of the last SAM
    gradient orthogonal to its plain gradient (zeros before the first SAM step).

    Example:
        >>> looksam(0.05).init({"w": jnp.ones(2)}).g_v["w"].tolist()
        [0.0, 0.0]
    """

    count: jax.Array
    g_v: PyTree


def looksam(
    rho,
    *,
    k: int = 5,
    alpha=0.7,
    adaptive: bool = False,
    eta=0.0,
    lamb=1.0,
    sign: str = "min",
    has_aux: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """LookSAM: the SAM gradient every ``k``-th step, its orthogonal component reused in between.

    With ``g = ∇L(w)`` (the input), step ``t`` (``t = 0, 1, ...``, counted in the state):

    * ``t ≡ 0 (mod k)``: ``g_s = ∇L(w + e)`` with the (A)SAM perturbation ``e`` of
      :func:`jaxunlearn.sharpness.perturbation`; store ``g_v = g_s − (⟨g_s, g⟩ / ‖g‖²)·g`` (the part of ``g_s``
      orthogonal to ``g``); direction ``g + s·λ·(g_s − g)`` (exactly :func:`sam`).
    * otherwise: ``g̃_s = g + α·(‖g‖ / ‖g_v‖)·g_v`` with the stored ``g_v``; direction
      ``g + s·λ·(g̃_s − g) = g + s·λ·α·(‖g‖ / ‖g_v‖)·g_v``.

    ``s = +1`` (``sign="min"``, LookSAM) or ``−1`` (``"max"``: the same approximation of the
    sharpness-maximization direction ``(1+λ)g − λ·g_s``). Norms run over the whole pytree; ``‖g_v‖ = 0`` gives
    ``g``. Defaults ``k = 5``, ``α = 0.7`` are the paper's. ``k = 1`` is :func:`sam`.

    Cost: ``1 + 1/k`` gradients per step (the caller's ``g``, plus ``grad_fn`` on every k-th step only). Under
    ``jit`` the choice is a ``lax.cond`` on the step counter, so skipped steps do not evaluate ``grad_fn``; under
    ``jax.vmap`` over optimizer states the counter is batched and XLA runs both branches (same values, SAM's
    cost). Put it FIRST in an ``optax.chain``; ``update(g, state, params, *, grad_fn)`` as :func:`sam`.

    ``update(..., sam_step=True / False)`` (a Python bool, e.g. ``t % k == 0`` computed by a Python training
    loop that compiles one step per value) takes that branch without ``lax.cond``; the counter still advances.
    Use it on XLA:CPU: there the backward convolutions of a gradient inside a ``lax.cond`` branch are not
    canonicalized and run several times slower than in straight-line code (measured in
    ``benchmarks/sam_variants.py``), which makes the counter-driven LookSAM slower than SAM on CPU CNNs.

    Raises a one-line ``ValueError`` / ``TypeError`` for ``k < 1``, ``rho <= 0``, ``alpha < 0``, ``eta < 0``,
    ``lamb < 0``, a non-finite setting or an unknown ``sign``.

    Example:
        >>> loss = lambda p: jnp.sum(p ** 4)
        >>> opt = looksam(0.1, k=2)
        >>> params = jnp.array([1.0, 0.5]); state = opt.init(params)
        >>> d0, state = opt.update(jax.grad(loss)(params), state, params, grad_fn=jax.grad(loss))   # SAM step
        >>> d1, state = opt.update(jax.grad(loss)(params), state, params, grad_fn=jax.grad(loss))   # reuse
        >>> from jaxunlearn import transforms
        >>> sam_d, _ = transforms.sam(0.1).update(jax.grad(loss)(params), None, params, grad_fn=jax.grad(loss))
        >>> bool(jnp.allclose(d0, sam_d))
        True
        >>> int(state.count), bool(jnp.all(d1 != jax.grad(loss)(params)))
        (2, True)
    """
    _validate.sam_hyperparams(rho, eta, lamb, sign, sharpness.SIGNS)
    k = _validate.positive_int("k", k)
    _validate.real_number("alpha", alpha, minimum=0.0, hint="LookSAM's reuse weight α is >= 0, e.g. alpha=0.7.")
    s = sharpness.SIGNS[sign]

    def init_fn(params):
        return LookSAMState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, params))

    def update_fn(
        updates, state, params=None, *, grad_fn: Callable[[PyTree], Any] | None = None, sam_step=None, **extra
    ):
        del extra
        _common.require("looksam", params, grad_fn)
        if sam_step is not None and not isinstance(sam_step, bool):
            raise TypeError(
                f"transforms.looksam: sam_step must be None (choose by the step counter) or a Python bool (a choice "
                f"made outside jit), got {type(sam_step).__name__}."
            )
        _common.warn_composition("looksam", "a LookSAM direction", "rho, k=5")
        g = updates

        def full(g_v_old):
            del g_v_old
            e = sharpness.perturbation(g, params, rho, adaptive=adaptive, eta=eta)
            g_s = _common.grad_at("looksam", grad_fn, _common.add(params, e), params, has_aux)
            g_v = jax.tree.map(lambda v, p: v.astype(p.dtype), _common.reject_from(g_s, g), params)
            return sharpness.sam_direction(g, g_s, lamb=lamb, sign=sign), g_v

        def reuse(g_v):
            scale = sharpness.tree_norm(g) / (sharpness.tree_norm(g_v) + _common.EPS)
            return _common.axpy(s * lamb * alpha * scale, g_v, g), g_v

        if k == 1 or sam_step is True:
            direction, g_v = full(state.g_v)
        elif sam_step is False:
            direction, g_v = reuse(state.g_v)
        else:
            direction, g_v = jax.lax.cond(state.count % k == 0, full, reuse, state.g_v)
        return direction, LookSAMState(state.count + 1, g_v)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
