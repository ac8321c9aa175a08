"""Optax gradient transformations: SAM and its cheaper / smoothed relatives, weight averaging, element-wise masks.

``sam(...)`` is an ``optax.GradientTransformationExtraArgs`` whose ``update`` receives the usual
gradient ``g`` plus the keyword ``grad_fn`` (``grad_fn(params) -> ∇L(params)`` for the current batch).
It returns the SAM-family direction ``g + s·λ·(g' − g)`` with ``g' = grad_fn(w + e)``, which the next
transformation in the chain (SGD, AdamW, ...) turns into an update:

    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxunlearn import transforms
    >>> loss_fn = lambda p, batch: jnp.mean((batch["x"] @ p["w"] - batch["y"]) ** 2)
    >>> params, batch = {"w": jnp.zeros(2)}, {"x": jnp.eye(2), "y": jnp.array([1.0, -1.0])}
    >>> opt = optax.chain(transforms.sam(rho=0.05), optax.adamw(1e-3))
    >>> state = opt.init(params)
    >>> loss, g = jax.value_and_grad(loss_fn)(params, batch)
    >>> updates, state = opt.update(g, state, params, grad_fn=lambda p: jax.grad(loss_fn)(p, batch))
    >>> params = optax.apply_updates(params, updates)
    >>> [round(w, 4) for w in params["w"].tolist()]     # Adam's first step: lr · sign of the direction
    [0.001, -0.001]

The family (one file each; every transform takes ``update(g, state, params, *, grad_fn)``, is pure,
jit/vmap-safe, and comes FIRST in its chain; the cost counts gradient evaluations per step, the caller's
``g`` included):

============================== ========================================================= ===========
transform                      direction                                                 gradients
============================== ========================================================= ===========
``sam(rho)``                   ``g + s·λ·(∇L(w+e) − g)``                                 2
``looksam(rho, k, alpha)``     SAM every k-th step; between: ``g + s·λ·α·‖g‖/‖g_v‖·g_v``  1 + 1/k
``gsam(rho, alpha)``           ``∇L(w+e) − α·g_⊥``                                       2
``randomized_smoothing``       ``(1/n) Σ ∇L(w + σ z_i)``                                 1 + n
``gradient_norm_penalty``      ``g + s·γ·(∇L(w + r ĝ) − g)/r`` ≈ ∇(L + s·γ‖∇L‖)          2
``curvature_penalty``          ``g + s·γ·∇‖∇L(w+ε) − ∇L(w)‖`` (finite differences)       4
``weight_average`` (LAST)      updates unchanged; average of the parameters in the state 1 (+0)
============================== ========================================================= ===========

Only ``sam`` takes ``axis_name`` (per-device SAM inside ``shard_map`` / ``pmap``); the others work on the
global gradient (under a sharded ``jit``). On XLA:CPU pass LookSAM's branch from the Python loop
(``update(..., sam_step=t % k == 0)``): its ``lax.cond`` makes CPU convolutions slow (see :func:`looksam`).
Unlearn-Smooth's settings and where ours differ are in each docstring.

    >>> loss = lambda p: jnp.sum(p ** 4)
    >>> w = jnp.array([1.0, 0.5])
    >>> for t in (transforms.looksam(0.05), transforms.gsam(0.05), transforms.randomized_smoothing(0.01),
    ...           transforms.gradient_norm_penalty(0.01), transforms.curvature_penalty(10.0)):
    ...     d, _ = t.update(jax.grad(loss)(w), t.init(w), w, grad_fn=jax.grad(loss))
    ...     assert d.shape == w.shape

Composition rules (each transform warns with :class:`SAMUsageWarning` when it sees them broken):

* **sam (and each relative) first; weight_average last.** ``sam`` replaces its input by a new gradient
  (``g'`` for SAM), so a transform before it in an ``optax.chain`` is lost:
  ``chain(clip_by_global_norm(c), sam(rho), sgd(lr))`` does not clip. Write
  ``chain(sam(rho), clip_by_global_norm(c), sgd(lr))``. ``weight_average`` averages ``params + update``, so
  it must see the final update: ``chain(sam(rho), adamw(lr), weight_average())``.
* **Gradient accumulation: not ``optax.MultiSteps``.** ``MultiSteps(chain(sam(rho), sgd(lr)), k)`` perturbs
  with the mean gradient of k micro-batches but evaluates ``g'`` on the last micro-batch only. For
  full-batch SAM over micro-batches, give ``sam`` the accumulated gradient and an accumulating ``grad_fn``
  over the SAME micro-batches (``jaxunlearn.sharpness.accumulated_value_and_grad``; all of it in one
  function: ``jaxunlearn.sharpness.accumulated_value_and_sam_grad``)::

      acc = sharpness.accumulated_value_and_grad(loss_fn)          # micro: leading micro-batch axis
      loss, g = acc(params, micro)
      updates, state = opt.update(g, state, params, grad_fn=lambda p: acc(p, micro)[1])

* **Per-device SAM** inside your own ``shard_map`` / ``pmap``: ``sam(rho, axis_name="data")`` takes the
  device-LOCAL gradient (do not ``pmean`` before ``sam``) and returns the direction averaged over the axis.

Relation to ``optax.contrib.sam``: with ``opaque_mode=True``, ``sync_period=2`` and the adversarial
optimizer ``chain(normalize(), sgd(rho))``, optax's SAM hands the outer optimizer ``∇L(w + ρ g/‖g‖)``,
which is our ``sam(rho)`` with ``sign="min", lamb=1`` (up to the 1e-12 in the norm). Ours adds ASAM
(``adaptive``), the interpolation ``λ`` and sharpness maximization (``sign="max"``); it is stateless,
costs one extra gradient per step, and its ``grad_fn`` takes only ``params``. ``axis_name`` plays the role
of optax's ``batch_axis_name``.
"""

from jaxunlearn.transforms._averaging import AVERAGE_KINDS, WeightAverageState, averaged_params, weight_average
from jaxunlearn.transforms._common import SAMUsageWarning
from jaxunlearn.transforms._gsam import GSAMState, gsam
from jaxunlearn.transforms._looksam import LookSAMState, looksam
from jaxunlearn.transforms._masks import mask_updates, masked
from jaxunlearn.transforms._penalties import curvature_penalty, gradient_norm_penalty
from jaxunlearn.transforms._sam import SAMState, sam
from jaxunlearn.transforms._smoothing import SmoothingState, randomized_smoothing, smoothing_noise

__all__ = [
    "sam",
    "looksam",
    "gsam",
    "randomized_smoothing",
    "smoothing_noise",
    "gradient_norm_penalty",
    "curvature_penalty",
    "weight_average",
    "averaged_params",
    "mask_updates",
    "masked",
    "SAMState",
    "LookSAMState",
    "GSAMState",
    "SmoothingState",
    "WeightAverageState",
    "AVERAGE_KINDS",
    "SAMUsageWarning",
]
