"""Curvature of a loss: Hessian-vector products, Hessian/Fisher diagonals, top eigenvalue, trace.

All functions take ``loss_fn(params, batch) -> scalar`` and any parameter pytree; they import only jax.
Probes are processed in chunks (``chunk_size``), batched with ``jax.vmap`` or, on CPU, unrolled in one
program that shares the forward/backward pass, so memory is bounded by the chunk, not by the number of
parameters or probes. The chunks are looped in Python around ONE compiled chunk
function: on XLA:CPU a ``lax.map``/``lax.scan`` (a while loop) whose body holds convolution HVPs ran
~100x slower than the same body called from Python (benchmarks/RESULTS.md). Called inside an outer
``jax.jit`` the loop unrolls into that program.

Example:
    >>> loss = lambda w, b: jnp.sum(jnp.sin(w) * b)
    >>> w, b = jnp.ones(3), jnp.arange(3.0)
    >>> [round(h, 4) for h in hessian_diagonal(loss, w, b).tolist()]          # -sin(w) * b
    [-0.0, -0.8415, -1.6829]
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxunlearn import _validate, batching

__all__ = [
    "hvp",
    "hessian_diagonal",
    "hutchinson_diagonal",
    "fisher_diagonal",
    "top_eigenvalue",
    "hessian_trace",
    "default_probe_chunk",
    "default_probe_mode",
    "MAX_UNROLL",
    "PROBE_MODES",
]

PyTree = Any
LossFn = Callable[[PyTree, Any], jax.Array]


def hvp(loss_fn: LossFn, params: PyTree, batch: Any, v: PyTree) -> PyTree:
    """Hessian-vector product ``H(w)·v`` with ``H = ∇²_w L(w, batch)`` (forward-over-reverse).

    Costs about two gradient evaluations.

    Example:
        >>> hvp(lambda w, b: 0.5 * jnp.sum(b * w ** 2), jnp.ones(2), jnp.array([2.0, 3.0]), jnp.ones(2))
        Array([2., 3.], dtype=float32)
    """
    _validate.same_structure("params", params, "v", v)
    return jax.jvp(lambda p: jax.grad(loss_fn)(p, batch), (params,), (v,))[1]


def _flat_hvp(loss_fn: LossFn, params: PyTree, batch: Any):
    """Return ``(flat_params, f)`` with ``f(flat_v) -> flat(H v)``."""
    flat, unravel = ravel_pytree(params)

    def f(flat_v):
        out = hvp(loss_fn, params, batch, unravel(flat_v.astype(flat.dtype)))
        return ravel_pytree(out)[0]

    return flat, unravel, f


def _num_chunks(total: int, chunk: int) -> int:
    return math.ceil(total / chunk)


@functools.partial(jax.jit, static_argnames=("loss_fn", "chunk"))
def _hessian_diagonal_chunk(loss_fn, params, batch, start, chunk):
    """Diagonal entries ``start .. start + chunk - 1`` (flat order; rows past the end are 0)."""
    flat, _, f = _flat_hvp(loss_fn, params, batch)
    n = flat.size
    idx = start + jnp.arange(chunk)
    basis = jax.nn.one_hot(idx, n, dtype=flat.dtype)  # rows past the end are all-zero
    hv = jax.vmap(f)(basis)
    return jnp.take_along_axis(hv, jnp.minimum(idx, n - 1)[:, None], axis=1)[:, 0]


def _hessian_diagonal(loss_fn, params, batch, chunk):
    # Chunks are looped in Python around ONE compiled chunk function: on XLA:CPU a ``lax.map`` (a while
    # loop) around convolution HVPs runs tens of times slower than the same body called from Python.
    # Under an outer ``jax.jit`` the loop unrolls into that program (still no while loop).
    _, unravel = ravel_pytree(params)
    n = sum(x.size for x in jax.tree.leaves(params))
    parts = [
        _hessian_diagonal_chunk(loss_fn, params, batch, jnp.int32(i * chunk), chunk)
        for i in range(_num_chunks(n, chunk))
    ]
    return unravel(jnp.concatenate(parts)[:n])


def hessian_diagonal(loss_fn: LossFn, params: PyTree, batch: Any, *, chunk_size: int = 256) -> PyTree:
    """Exact Hessian diagonal ``diag(H)_i = e_iᵀ H e_i`` via one HVP per coordinate.

    Coordinates are processed ``chunk_size`` at a time with ``vmap`` (memory ∝ chunk_size × N); the
    chunks run sequentially, one call of a compiled chunk function each. Cost: N HVPs; suitable up to ~1e5 parameters.
    For larger models use :func:`hutchinson_diagonal`. ``loss_fn`` is a static argument: pass the same
    function object again to reuse the compiled program.

    Example:
        >>> hessian_diagonal(lambda w, b: jnp.sum(w ** 3), jnp.array([1.0, 2.0]), None)
        Array([ 6., 12.], dtype=float32)
    """
    chunk_size = _validate.positive_int("chunk_size", chunk_size)
    n = sum(x.size for x in jax.tree.leaves(params))
    if n == 0:
        raise ValueError("params has no parameters.")
    return _hessian_diagonal(loss_fn, params, batch, min(chunk_size, n))


PROBE_MODES = ("vmap", "unroll")


@functools.partial(jax.jit, static_argnames=("loss_fn", "chunk", "valid", "mode"))
def _hutchinson_chunk(loss_fn, params, batch, key, chunk, valid, mode="vmap"):
    """``Σ_k z_k ⊙ H z_k`` over the first ``valid`` of ``chunk`` Rademacher probes (flat).

    ``mode="vmap"``: the probes are one batched HVP. ``mode="unroll"``: one HVP per probe, all in this one
    program; the forward/backward pass at ``params`` is the same for every probe and XLA computes it once,
    so each further probe costs only its tangent pass.
    """
    flat, _, f = _flat_hvp(loss_fn, params, batch)
    z = jax.random.rademacher(key, (chunk, flat.size), dtype=flat.dtype)
    if mode == "unroll":
        total = jnp.zeros_like(flat)
        for i in range(valid):
            total = total + z[i] * f(z[i])
        return total
    w = (jnp.arange(chunk) < valid).astype(flat.dtype)[:, None]
    return jnp.sum(w * z * jax.vmap(f)(z), axis=0)


def _hutchinson_diagonal(loss_fn, params, batch, key, num_probes, chunk, mode="vmap"):
    # Python loop over one compiled chunk function (see _hessian_diagonal for why not lax.map).
    _, unravel = ravel_pytree(params)
    n_chunks = _num_chunks(num_probes, chunk)
    keys = jax.random.split(key, n_chunks)
    total = None
    for i in range(n_chunks):
        part = _hutchinson_chunk(loss_fn, params, batch, keys[i], chunk, min(chunk, num_probes - i * chunk), mode)
        total = part if total is None else total + part
    return unravel(total / num_probes)


MAX_UNROLL = 32


def default_probe_chunk() -> int:
    """Probes per compiled call when ``chunk_size`` is None: 4 on CPU (unrolled: 16 probes of the small CNN
    at batch 128 took 1.21 s + 2.8 s compile, against 1.09 s + 4.5 s with 16 unrolled per call and
    1.87 s + 3.2 s with one probe per call), 16 on accelerators (vmapped).

    Example:
        >>> default_probe_chunk() == (4 if jax.default_backend() == "cpu" else 16)
        True
    """
    return 4 if jax.default_backend() == "cpu" else 16


def default_probe_mode(chunk: int) -> str:
    """The ``probe_mode`` used when it is None, for chunks of ``chunk`` probes: ``"unroll"`` on CPU for chunks of
    up to ``MAX_UNROLL`` probes (16 probes of the small CNN: 15 gradient equivalents vs 29 for one probe per
    call and more for vmapped probes, benchmarks/RESULTS.md; longer unrolled programs compile slowly),
    ``"vmap"`` otherwise and on accelerators, where batching the probes fills the device.

    Example:
        >>> default_probe_mode(16) == ("unroll" if jax.default_backend() == "cpu" else "vmap")
        True
        >>> default_probe_mode(MAX_UNROLL + 1)
        'vmap'
    """
    return "unroll" if jax.default_backend() == "cpu" and chunk <= MAX_UNROLL else "vmap"


def hutchinson_diagonal(
    loss_fn: LossFn,
    params: PyTree,
    batch: Any,
    key: jax.Array,
    num_probes: int,
    *,
    chunk_size: int | None = None,
    probe_mode: str | None = None,
) -> PyTree:
    """Hutchinson estimate of the Hessian diagonal ``diag(H) ≈ (1/K) Σ_k z_k ⊙ (H z_k)``.

    ``z_k`` are Rademacher (±1) probes; the estimator is unbiased and its variance falls as 1/K.
    Probes are processed ``chunk_size`` at a time (default 4 on CPU, 16 on GPU/TPU), one compiled call per
    chunk; exactly ``num_probes`` probes are used. Within a chunk, ``probe_mode="vmap"`` batches the probes
    into one HVP (memory ∝ chunk_size × N) and ``"unroll"`` runs one HVP per probe in the same program,
    sharing the forward/backward pass at ``params`` (fastest on XLA:CPU). ``probe_mode=None`` picks
    ``"unroll"`` on CPU for chunks of up to 32 probes and ``"vmap"`` otherwise and on GPU/TPU. The estimate
    depends only on ``key`` and ``chunk_size`` (each chunk draws its own probes; both modes use the same
    probes). Cost: ``num_probes`` HVPs (each a tangent pass of ≈ 1–2 gradients plus, per chunk, one shared
    forward/backward pass when unrolled). For many calls with the same shapes on CPU, ``chunk_size=16`` is ≈
    10 % faster per call but compiles ≈ 2× longer.

    Example:
        >>> loss = lambda w, b: 0.5 * jnp.sum(b * w ** 2)      # diagonal Hessian: exact for any K
        >>> hutchinson_diagonal(loss, jnp.ones(2), jnp.array([2.0, 5.0]), jax.random.key(0), 4)
        Array([2., 5.], dtype=float32)
    """
    num_probes = _validate.positive_int("num_probes", num_probes)
    chunk_size = default_probe_chunk() if chunk_size is None else _validate.positive_int("chunk_size", chunk_size)
    chunk = min(chunk_size, num_probes)
    mode = default_probe_mode(chunk) if probe_mode is None else _validate.choice("probe_mode", probe_mode, PROBE_MODES)
    return _hutchinson_diagonal(loss_fn, params, batch, key, num_probes, chunk, mode)


@functools.partial(jax.jit, static_argnames=("loss_fn",))
def _fisher_chunk(loss_fn, params, sub, valid):
    """``Σ_i valid_i (∇ℓ_i)²`` over the examples of one chunk."""

    def one(example):
        g = jax.grad(loss_fn)(params, jax.tree.map(lambda a: a[None], example))
        return jax.tree.map(jnp.square, g)

    sq = jax.vmap(one)(sub)
    return jax.tree.map(lambda s: jnp.tensordot(valid.astype(s.dtype), s, axes=1), sq)


@jax.jit
def _tree_div(a, n):
    return jax.tree.map(lambda x: x / n, a)


def _fisher_diagonal(loss_fn, params, batch, chunk):
    # Python loop over one compiled chunk function (see _hessian_diagonal for why not lax.map); padded
    # examples carry weight 0, and the chunks are added by one compiled tree addition.
    n = jax.tree.leaves(batch)[0].shape[0]
    total = batching.batched_sum(lambda sub, w: _fisher_chunk(loss_fn, params, sub, w), batch, batch_size=chunk)
    return _tree_div(total, n)  # Python ints: traced, weakly typed (a bf16 diagonal stays bf16)


def fisher_diagonal(loss_fn: LossFn, params: PyTree, batch: Any, *, chunk_size: int = 256) -> PyTree:
    """Empirical Fisher diagonal: the mean squared per-example gradient ``(1/n) Σ_i (∇ℓ_i)²``.

    ``batch`` is a pytree whose leaves share a leading example axis of size n; ``ℓ_i`` is
    ``loss_fn(params, batch_i)`` evaluated on the one-example batch ``batch_i`` (leading axis 1).
    Per-example gradients are vmapped ``chunk_size`` examples at a time.

    Example:
        >>> loss = lambda w, b: jnp.mean(b["x"] @ w)
        >>> fisher_diagonal(loss, jnp.ones(2), {"x": jnp.array([[1.0, 2.0], [3.0, 0.0]])})
        Array([5., 2.], dtype=float32)
    """
    chunk_size = _validate.positive_int("chunk_size", chunk_size)
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError("batch must contain at least one array with a leading example axis.")
    n = leaves[0].shape[0] if leaves[0].ndim else 0
    if n == 0 or any(x.ndim == 0 or x.shape[0] != n for x in leaves):
        raise ValueError(
            f"batch leaves must share a non-empty leading example axis; got shapes {[x.shape for x in leaves]}."
        )
    return _fisher_diagonal(loss_fn, params, batch, min(chunk_size, n))


@functools.partial(jax.jit, static_argnames=("n", "k", "dtype"))
def _lanczos_start(key, n, k, dtype):
    v0 = jax.random.normal(key, (n,), dtype)
    Q = jnp.zeros((k + 1, n), dtype).at[0].set(v0 / jnp.linalg.norm(v0))
    return Q, jnp.zeros((k,), dtype), jnp.zeros((k,), dtype)


@functools.partial(jax.jit, static_argnames=("loss_fn",))
def _lanczos_step(loss_fn, params, batch, Q, alphas, betas, i):
    """Lanczos iteration ``i``: one HVP ``w = H q_i``, ``α_i = wᵀq_i``, ``w`` reorthogonalized against
    ``q_0..q_i`` (twice, for stability), ``β_i = ‖w‖``, ``q_{i+1} = w / β_i``."""
    _, _, f = _flat_hvp(loss_fn, params, batch)
    k = alphas.shape[0]
    w = f(Q[i])
    alpha = jnp.dot(w, Q[i])
    mask = (jnp.arange(k + 1) <= i).astype(Q.dtype)
    for _ in range(2):
        w = w - Q.T @ (mask * (Q @ w))
    beta = jnp.linalg.norm(w)
    q_next = jnp.where(beta > 1e-10, w / jnp.maximum(beta, 1e-30), 0.0)
    return Q.at[i + 1].set(q_next), alphas.at[i].set(alpha), betas.at[i].set(beta)


@jax.jit
def _lanczos_top(alphas, betas):
    T = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
    return jnp.max(jnp.linalg.eigvalsh(T))


def _top_eigenvalue(loss_fn, params, batch, key, num_iters):
    # A Python loop over ONE compiled Lanczos step, not lax.fori_loop: on XLA:CPU the loop body with the
    # HVP of a CNN ran ~30x slower inside the while loop (digits CNN, 256 examples, 20 iterations: 7.1 s
    # against 20 HVPs of 12 ms; see _hessian_diagonal). Under an outer jit the loop unrolls.
    flat, _ = ravel_pytree(params)
    n = flat.size
    k = min(num_iters, n)
    Q, alphas, betas = _lanczos_start(key, n, k, flat.dtype)
    for i in range(k):
        Q, alphas, betas = _lanczos_step(loss_fn, params, batch, Q, alphas, betas, i)
    return _lanczos_top(alphas, betas)


def top_eigenvalue(loss_fn: LossFn, params: PyTree, batch: Any, key: jax.Array, num_iters: int = 30) -> jax.Array:
    """Largest (algebraic) Hessian eigenvalue ``λ_max(H)`` by Lanczos with full reorthogonalization.

    ``num_iters`` = k HVPs build a k×k tridiagonal ``T = Qᵀ H Q``; the result is ``λ_max(T)``, which
    converges to ``λ_max(H)`` from below (exact once k reaches the number of parameters). Memory: the
    k + 1 Lanczos vectors, twice (each step's input and output), plus one HVP. The k steps are a Python
    loop over one compiled step (a ``fori_loop`` over HVPs is slow on XLA:CPU); under an outer ``jax.jit``
    they unroll into its program.

    Example:
        >>> loss = lambda w, b: 0.5 * jnp.sum(b * w ** 2)
        >>> round(float(top_eigenvalue(loss, jnp.ones(3), jnp.array([1.0, 4.0, 2.0]), jax.random.key(0), 3)), 4)
        4.0
    """
    num_iters = _validate.positive_int("num_iters", num_iters)
    return _top_eigenvalue(loss_fn, params, batch, key, num_iters)


def hessian_trace(
    loss_fn: LossFn,
    params: PyTree,
    batch: Any,
    key: jax.Array,
    num_probes: int,
    *,
    chunk_size: int | None = None,
    probe_mode: str | None = None,
) -> jax.Array:
    """Hutchinson estimate of the Hessian trace ``tr(H) ≈ (1/K) Σ_k z_kᵀ H z_k`` (Rademacher ``z_k``).

    ``chunk_size`` / ``probe_mode``: as in :func:`hutchinson_diagonal`.

    Example:
        >>> loss = lambda w, b: 0.5 * jnp.sum(b * w ** 2)
        >>> hessian_trace(loss, jnp.ones(2), jnp.array([2.0, 5.0]), jax.random.key(0), 8)
        Array(7., dtype=float32)
    """
    diag = hutchinson_diagonal(loss_fn, params, batch, key, num_probes, chunk_size=chunk_size, probe_mode=probe_mode)
    return sum(jnp.sum(x) for x in jax.tree.leaves(diag))
