"""One step you can hold: :class:`TrainState` and :func:`make_step`, the pure update the engine's loop jits.

A step updates the parameters with ONE phase's loss and optimizer::

    (loss, s'), g = value_and_grad(L)(w)         L(w) = loss(apply_fn, w, s, batch, hp, info)
    d, o'         = tx.update(g, o, w, grad_fn=∇L)  tx = [sam] -> [mask] -> base (plan.build_optimizer)
    w'            = w + d

``tx`` is built from any optimizer :func:`jaxunlearn.plan.as_optim_config` accepts (an ``OptimConfig``,
an ``optax.GradientTransformation`` or a factory ``total_steps -> tx``); SAM, ASAM and sharpness
maximization wrap it through :func:`jaxunlearn.transforms.sam`, whose ``grad_fn`` re-evaluates the same
batch at the perturbed point (the loss value and the model state come from the unperturbed pass).
Step facts travel as an explicit :class:`~jaxunlearn.plan.StepInfo` argument (traced int32 scalars), so
one compiled step serves every epoch and every run length.

Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxunlearn.plan import StepInfo, supervised_loss
    >>> apply_fn = lambda p, s, x, train=False: (x @ p, s)
    >>> state = init_state(jnp.zeros((2, 2)), {}, optax.sgd(1.0))
    >>> step = jax.jit(make_step(apply_fn, supervised_loss, optax.sgd(1.0)))
    >>> batch = {"retain": {"x": jnp.eye(2), "y": jnp.array([0, 1])}}
    >>> state, loss = step(state, batch, {}, StepInfo.at())
    >>> round(float(loss), 4), int(state.step)
    (0.6931, 1)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxunlearn import _validate, distributed, sharpness
from jaxunlearn.plan import MASK_READINGS, OptimConfig, as_optim_config, build_optimizer

__all__ = ["TrainState", "init_state", "make_step", "SAM_MODES"]

PyTree = Any
SAM_MODES = ("global", "per_device")


class TrainState(NamedTuple):
    """What a step reads and returns: ``params``, ``model_state`` (e.g. batch-norm statistics), one optimizer
    state per phase (``opt_states``, a tuple) and ``step``, the number of updates applied (int32).

    A pytree: it can be jitted, donated, sharded and checkpointed as is.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> s = init_state(jnp.ones(2), {}, optax.sgd(0.1), optax.adam(1e-3))
        >>> len(s.opt_states), int(s.step)
        (2, 0)
    """

    params: PyTree
    model_state: PyTree
    opt_states: tuple
    step: Any

    def with_opt_state(self, phase: int, opt_state) -> TrainState:
        """A copy whose ``opt_states[phase]`` is ``opt_state``.

        Example:
            >>> s = TrainState({}, {}, ("a", "b"), 0).with_opt_state(1, "c")
            >>> s.opt_states
            ('a', 'c')
        """
        states = tuple(self.opt_states)
        return self._replace(opt_states=states[:phase] + (opt_state,) + states[phase + 1 :])


def init_state(params: PyTree, model_state: PyTree, *optimizers, total_steps: int = 1, masks=None) -> TrainState:
    """A fresh :class:`TrainState`: one optimizer state per optimizer (per phase), ``step = 0``.

    ``optimizers``: anything :func:`jaxunlearn.plan.as_optim_config` accepts; ``total_steps`` is passed to
    schedule-building factories; ``masks`` (one per optimizer, or None) as in :func:`make_step`.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> s = init_state({"w": jnp.zeros(3)}, {}, optax.adamw(1e-3))
        >>> len(s.opt_states), int(s.step)
        (1, 0)
    """
    if not optimizers:
        raise ValueError("init_state needs at least one optimizer (one per phase).")
    masks = [None] * len(optimizers) if masks is None else list(masks)
    if len(masks) != len(optimizers):
        raise ValueError(f"masks must hold one entry per optimizer ({len(optimizers)}), got {len(masks)}.")
    opt_states = tuple(
        build_optimizer(as_optim_config(o), total_steps, mask=m).init(params) for o, m in zip(optimizers, masks)
    )
    return TrainState(params, model_state, opt_states, jnp.zeros((), jnp.int32))


def make_step(
    apply_fn: Callable,
    loss: Callable,
    optimizer,
    *,
    phase: int = 0,
    sign: str = "min",
    masked: bool = False,
    mask_reading: str = "strict",
    total_steps: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    sam_mode: str = "global",
    sam_step: bool | None = None,
) -> Callable:
    """The pure update of one phase: ``step(state, batch, hp, info, mask=None) -> (state, loss)``.

    ``loss(apply_fn, params, model_state, batch, hp, info) -> (loss, new_model_state)`` (see
    :func:`jaxunlearn.plan.supervised_loss`); ``batch`` is any pytree the loss understands; ``hp`` a pytree
    of run-time hyperparameters; ``info`` a :class:`~jaxunlearn.plan.StepInfo`. The step updates
    ``state.opt_states[phase]`` with the optimizer built by :func:`jaxunlearn.plan.build_optimizer`
    (``sign`` is SAM's min/max; ``masked=True`` restricts the update to the boolean pytree ``mask`` as
    ``mask_reading`` says) and increments ``state.step``. The schedule's length is ``info.total_steps``
    (traced), or ``total_steps`` when given (needed for an optimizer factory, see
    :attr:`OptimConfig.static_total`). Jit it (donating ``state``) and call it in any loop.

    With a ``mesh``, batch leaves are sharded over its ``data`` axis (parameters stay as placed) and XLA
    all-reduces the gradients: SAM perturbs with the global batch gradient. ``sam_mode="per_device"``
    instead runs :func:`jaxunlearn.sharpness.value_and_sam_grad` on each device's shard inside
    ``shard_map`` and averages the SAM directions (m-sharpness); the loss value and model state still
    come from the unperturbed global pass.

    ``sam_step`` (LookSAM only): ``True`` / ``False`` compiles the step with LookSAM's full-SAM / reuse branch
    (:func:`jaxunlearn.transforms.looksam`'s ``sam_step``), for a loop that picks the branch on the host;
    ``None`` lets the optimizer's counter choose inside the program (``lax.cond``).

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> from jaxunlearn.plan import OptimConfig, StepInfo
        >>> def mse(apply_fn, p, s, batch, hp, info):
        ...     return jnp.mean((apply_fn(p, s, batch["x"])[0] - batch["t"]) ** 2), s
        >>> apply_fn = lambda p, s, x, train=False: (x * p, s)
        >>> opt = OptimConfig(base=optax.sgd(0.1), sam="sam", rho=0.05)
        >>> step = jax.jit(make_step(apply_fn, mse, opt))
        >>> state = init_state(jnp.zeros(3), {}, opt)
        >>> for _ in range(50):
        ...     state, l = step(state, {"x": jnp.ones(3), "t": jnp.full(3, 2.0)}, {}, StepInfo.at())
        >>> bool(l < 1e-2)
        True
    """
    cfg = as_optim_config(optimizer)
    _validate.choice("sign", sign, ("min", "max"))
    _validate.choice("mask_reading", mask_reading, MASK_READINGS)
    _validate.choice("sam_mode", sam_mode, SAM_MODES)
    if cfg.static_total and total_steps is None:
        raise ValueError(
            "an optimizer factory (total_steps -> tx) needs make_step(..., total_steps=N): the schedule is "
            "built with a Python int."
        )
    if sam_step is not None and (cfg.sam != "looksam" or not isinstance(sam_step, bool)):
        raise ValueError(f"sam_step=True/False is LookSAM's host-chosen branch; got {sam_step!r} with sam={cfg.sam!r}.")
    per_device = sam_mode == "per_device" and cfg.sam != "none" and mesh is not None
    if per_device and cfg.sam not in ("sam", "asam"):
        raise ValueError(
            f"sam_mode='per_device' (m-sharpness) supports sam='sam' and 'asam' only, got sam={cfg.sam!r}; use "
            "sam_mode='global' with it."
        )
    if per_device and masked and mask_reading == "reference":
        raise ValueError("sam_mode='per_device' supports mask_reading='strict' only; use the global SAM mode.")

    def step(state: TrainState, batch, hp, info, mask=None):
        if masked and mask is None:
            raise ValueError("this step was made with masked=True: pass the boolean mask pytree as mask=.")
        params, model_state = state.params, state.model_state
        if mesh is not None:
            batch = _constrain(batch, mesh)

        def lf(p):
            return loss(apply_fn, p, model_state, batch, hp, info)

        if per_device:
            loss_v, new_state = lf(params)
            g = _per_device_sam_direction(apply_fn, loss, cfg, sign, mesh, params, model_state, batch, hp, info)
            # the direction is final: the chain's SAM transform gets g' = g and passes it through (g + s·λ·0)
            grad_fn = lambda p: g  # noqa: E731
        else:
            (loss_v, new_state), g = jax.value_and_grad(lf, has_aux=True)(params)
            grad_fn = lambda p: jax.grad(lf, has_aux=True)(p)[0]  # noqa: E731
        total = info.total_steps if total_steps is None else total_steps
        tx = build_optimizer(cfg, total, sign=sign, mask=mask if masked else None, mask_reading=mask_reading)
        extra = {"grad_fn": grad_fn} if sam_step is None else {"grad_fn": grad_fn, "sam_step": sam_step}
        updates, opt_state = tx.update(g, state.opt_states[phase], params, **extra)
        params = optax.apply_updates(params, updates)
        new = state.with_opt_state(phase, opt_state)
        return new._replace(params=params, model_state=new_state, step=state.step + 1), loss_v

    return step


def _constrain(batch, mesh):
    """Shard each batch leaf's first axis over the mesh's ``data`` axis (when it divides evenly)."""
    k = distributed.data_size(mesh)
    s = distributed.batch_sharding(mesh)
    return jax.tree.map(lambda v: jax.lax.with_sharding_constraint(v, s) if v.shape[0] % k == 0 else v, batch)


def _per_device_sam_direction(apply_fn, loss, cfg: OptimConfig, sign: str, mesh, params, model_state, batch, hp, info):
    """m-sharpness: ``mean_k [g_k + s·λ·(∇L_k(w + e_k) − g_k)]``, each device k running
    :func:`jaxunlearn.sharpness.value_and_sam_grad` on its own shard of the batch."""
    axis = distributed.data_axis(mesh)
    P = jax.sharding.PartitionSpec
    asam = cfg.sam == "asam"

    def per_shard(p, st, b, h, i):
        # mark w as device-varying: the gradient of an invariant input would be psum-ed over devices
        p = jax.tree.map(lambda a: jax.lax.pcast(a, axis, to="varying"), p)
        f = sharpness.value_and_sam_grad(
            lambda q: loss(apply_fn, q, st, b, h, i), cfg.rho, adaptive=asam, eta=cfg.eta if asam else 0.0,
            lamb=cfg.lamb, sign=sign, has_aux=True,
        )  # fmt: skip
        return jax.lax.pmean(f(p)[1], axis)

    fn = jax.shard_map(per_shard, mesh=mesh, in_specs=(P(), P(), P(axis), P(), P()), out_specs=P())
    return fn(params, model_state, batch, hp, info)
