"""Curvature of a loss: Hessian-vector products, Hessian/Fisher diagonals, top eigenvalue, trace.

Every function takes a loss with ``jax.grad``'s manners and any parameter pytree::

    f(loss_fn, params, *args, <options by keyword>, has_aux=False)      # L(w) = loss_fn(w, *args)

``loss_fn(params, *args)`` returns a scalar, or ``(loss, aux)`` with ``has_aux=True`` (``aux`` is discarded).
A tuple without ``has_aux=True``, or a non-scalar loss, is a one-line error. Options after the data are
keywords: ``hvp(..., v=v)``, ``hutchinson_diagonal(..., key=k, num_probes=K)``, ``top_eigenvalue(..., key=k)``.
The earlier positional forms, with one ``batch`` and the options after it
(``hvp(loss_fn, params, batch, v)``, ``top_eigenvalue(loss_fn, params, batch, key, num_iters)``,
``hutchinson_diagonal(loss_fn, params, batch, key, num_probes)``), still work: an option not given by
keyword is read from the LAST positional arguments, in that order. Only jax is imported.

Probes are processed in chunks (``chunk_size``), batched with ``jax.vmap`` or, on CPU, unrolled in one
program that shares the forward/backward pass, so memory is bounded by the chunk, not by the number of
parameters or probes. The chunks are looped in Python around ONE compiled chunk
function: on XLA:CPU a ``lax.map``/``lax.scan`` (a while loop) whose body holds convolution HVPs ran
~100x slower than the same body called from Python (benchmarks/RESULTS.md). Called inside an outer
``jax.jit`` the loop unrolls into that program.

Compiled-program sharing. The chunk programs are cached on the loss function and on the shapes, dtypes
and shardings of ``params`` and ``args`` (``args`` are traced, never baked in). Two calls share the
programs when the two losses are

* the same object, or objects that compare equal (a class with ``__eq__`` / ``__hash__``), or
* plain functions made from the same source, the same ``def`` or ``lambda`` evaluated again (e.g. inside a
  function called twice), whose closure variables, default values and module are the SAME objects (a
  closure over a function or a bound method is compared by that function's own rule).

So: define the loss once and pass everything that changes between calls (batches, model state,
hyperparameters) as ``*args``, not through a closure. A closure over a batch array is a different loss
for every batch: it compiles again and bakes the batch into the program as a constant. Nothing is hashed
by value except Python scalars in closures (an int or a str); everything else is compared by identity, so
sharing never reuses a program traced from different data.

Example:
    >>> loss = lambda w, b: jnp.sum(jnp.sin(w) * b)
    >>> w, b = jnp.ones(3), jnp.arange(3.0)
    >>> [round(h, 4) for h in hessian_diagonal(loss, w, b).tolist()]          # -sin(w) * b
    [-0.0, -0.8415, -1.6829]
    >>> loss2 = lambda w, x, y: jnp.mean((x @ w - y) ** 2)                    # any number of arguments
    >>> hessian_diagonal(loss2, jnp.zeros(2), jnp.eye(2), jnp.ones(2))        # 2·diag(xᵀx)/n
    Array([1., 1.], dtype=float32)
"""

from __future__ import annotations

import functools
import math
import numbers
import types
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
LossFn = Callable[..., Any]


# --------------------------------------------------------------------------------------------------------
# the loss as a static argument of the compiled chunk functions
# --------------------------------------------------------------------------------------------------------
class _Same:
    """Compares by identity, hashes by ``id``, and keeps ``obj`` alive (so its id is not reused)."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __eq__(self, other):
        return isinstance(other, _Same) and other.obj is self.obj

    def __hash__(self):
        return id(self.obj)


_SCALARS = (int, str, bytes, type(None))  # exact types only: 1, 1.0 and True are different constants here


def _value_key(x, depth: int):
    """Key of a closure cell / default value: functions by :func:`_fn_key`, ints and strs by value, anything else
    (arrays, modules, mutable objects, floats) by identity."""
    if isinstance(x, types.FunctionType | types.MethodType | functools.partial):
        return _fn_key(x, depth + 1)
    if type(x) in _SCALARS:
        return (type(x), x)
    return _Same(x)


def _fn_key(fn, depth: int = 0):
    """A key under which equal keys mean the same computation (see the module docstring).

    A plain function is keyed by its code object, its module namespace (identity) and its defaults and
    closure contents (:func:`_value_key`); a bound method by its function's key and its ``self`` (identity);
    a ``functools.partial`` by its function's key and its arguments (identity). Any other callable is its own
    key when hashable (its ``__eq__`` decides), else compared by identity.
    """
    if depth > 6:
        return _Same(fn)
    if isinstance(fn, types.FunctionType):
        try:
            cells = tuple(_value_key(c.cell_contents, depth) for c in fn.__closure__ or ())
        except ValueError:  # an empty cell (a name not yet bound): only this very object is known
            return _Same(fn)
        defaults = tuple(_value_key(d, depth) for d in fn.__defaults__ or ())
        kwdefaults = tuple(sorted((k, _value_key(v, depth)) for k, v in (fn.__kwdefaults__ or {}).items()))
        return ("function", fn.__code__, _Same(fn.__globals__), defaults, kwdefaults, cells)
    if isinstance(fn, types.MethodType):
        return ("method", _fn_key(fn.__func__, depth + 1), _Same(fn.__self__))
    if isinstance(fn, functools.partial):
        kw = tuple(sorted((k, _Same(v)) for k, v in fn.keywords.items()))
        return (type(fn), _fn_key(fn.func, depth + 1), tuple(_Same(a) for a in fn.args), kw)
    try:
        hash(fn)
    except TypeError:
        return _Same(fn)
    return ("callable", fn)


class _Loss:
    """``loss_fn`` packed for the chunk functions: ``_Loss(fn, has_aux)(params, args)`` is the checked scalar loss
    of ``fn(params, *args)``. Equal (and equally hashed) for losses that compute the same thing, so they share
    the compiled programs of which it is a static argument."""

    __slots__ = ("fn", "has_aux", "where", "_key", "_hash")

    def __init__(self, fn, has_aux: bool, where: str):
        if not callable(fn):
            raise TypeError(f"{where}: loss_fn must be a function loss_fn(params, *args), got {type(fn).__name__}.")
        if not isinstance(has_aux, bool):
            raise TypeError(f"{where}: has_aux must be True or False, got {has_aux!r}.")
        self.fn, self.has_aux, self.where = fn, has_aux, where
        self._key = (_fn_key(fn), has_aux)
        self._hash = hash(self._key)

    def __call__(self, params, args):
        return _validate.loss_output(self.fn(params, *args), self.has_aux, self.where)[0]

    def __eq__(self, other):
        return isinstance(other, _Loss) and other._key == self._key

    def __hash__(self):
        return self._hash


def _trailing(args: tuple, name: str, where: str, example: str):
    """Pop an option given positionally after the loss's arguments (the earlier call form)."""
    if not args:
        raise TypeError(f"{where} needs {name}: {example}.")
    return args[:-1], args[-1]


def _key_arg(args: tuple, key, where: str, example: str):
    if key is None:
        args, key = _trailing(args, "a PRNG key", where, example)
    if not _validate.is_prng_key(key):
        raise TypeError(
            f"{where}: key must be a PRNG key such as jax.random.key(0), got {_validate._kind(key)}; "
            f"pass it by keyword: {example}."
        )
    return args, key


def _hvp(loss: Callable[[PyTree, Any], jax.Array], params: PyTree, batch: Any, v: PyTree) -> PyTree:
    """``H(w)·v`` of ``loss(params, batch) -> scalar`` (forward-over-reverse)."""
    return jax.jvp(lambda p: jax.grad(loss)(p, batch), (params,), (v,))[1]


def hvp(loss_fn: LossFn, params: PyTree, *args: Any, v: PyTree = None, has_aux: bool = False) -> PyTree:
    """Hessian-vector product ``H(w)·v`` with ``H = ∇²_w loss_fn(w, *args)`` (forward-over-reverse).

    ``hvp(loss_fn, params, *args, v=v)``; the earlier ``hvp(loss_fn, params, batch, v)`` still works (without
    ``v=``, the last positional argument is ``v``). Costs about two gradient evaluations.

    Example:
        >>> loss = lambda w, b: 0.5 * jnp.sum(b * w ** 2)
        >>> hvp(loss, jnp.ones(2), jnp.array([2.0, 3.0]), v=jnp.ones(2))
        Array([2., 3.], dtype=float32)
        >>> hvp(loss, jnp.ones(2), jnp.array([2.0, 3.0]), jnp.ones(2))          # v positional, last
        Array([2., 3.], dtype=float32)
    """
    loss = _Loss(loss_fn, has_aux, "curvature.hvp")
    if v is None:
        args, v = _trailing(args, "the vector v", "curvature.hvp", "hvp(loss_fn, params, *args, v=v)")
    _validate.same_structure("params", params, "v", v)
    return _hvp(loss, params, args, v)


def _flat_hvp(loss_fn, params: PyTree, batch: Any):
    """Return ``(flat_params, unravel, f)`` with ``f(flat_v) -> flat(H v)`` for ``loss_fn(params, batch)``."""
    flat, unravel = ravel_pytree(params)

    def f(flat_v):
        out = _hvp(loss_fn, params, batch, unravel(flat_v.astype(flat.dtype)))
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


def hessian_diagonal(
    loss_fn: LossFn, params: PyTree, *args: Any, chunk_size: int = 256, has_aux: bool = False
) -> PyTree:
    """Exact Hessian diagonal ``diag(H)_i = e_iᵀ H e_i`` of ``L(w) = loss_fn(w, *args)`` via one HVP per coordinate.

    Coordinates are processed ``chunk_size`` at a time with ``vmap`` (memory ∝ chunk_size × N); the
    chunks run sequentially, one call of a compiled chunk function each. Cost: N HVPs; suitable up to ~1e5
    parameters. For larger models use :func:`hutchinson_diagonal`. The compiled chunk program is shared by
    equal losses (module docstring): pass data as ``*args``.

    Example:
        >>> hessian_diagonal(lambda w, b: jnp.sum(w ** 3), jnp.array([1.0, 2.0]), None)
        Array([ 6., 12.], dtype=float32)
        >>> hessian_diagonal(lambda w: (jnp.sum(w ** 3), w), jnp.array([1.0, 2.0]), has_aux=True)
        Array([ 6., 12.], dtype=float32)
    """
    loss = _Loss(loss_fn, has_aux, "curvature.hessian_diagonal")
    chunk_size = _validate.positive_int("chunk_size", chunk_size)
    n = sum(x.size for x in jax.tree.leaves(params))
    if n == 0:
        raise ValueError("params has no parameters.")
    return _hessian_diagonal(loss, params, args, min(chunk_size, n))


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


def _probe_args(args: tuple, key, num_probes, where: str):
    """``(args, key, num_probes)`` from the keyword form or the earlier ``(batch, key, num_probes)`` form."""
    example = f"{where}(loss_fn, params, *args, key=jax.random.key(0), num_probes=16)"
    if key is None and num_probes is None:
        args, num_probes = _trailing(args, "num_probes", where, example)
    args, key = _key_arg(args, key, where, example)
    if num_probes is None:
        raise TypeError(f"{where} needs num_probes: {example}.")
    return args, key, _validate.positive_int("num_probes", num_probes)


def hutchinson_diagonal(
    loss_fn: LossFn,
    params: PyTree,
    *args: Any,
    key: jax.Array | None = None,
    num_probes: int | None = None,
    chunk_size: int | None = None,
    probe_mode: str | None = None,
    has_aux: bool = False,
) -> PyTree:
    """Hutchinson estimate of the Hessian diagonal ``diag(H) ≈ (1/K) Σ_k z_k ⊙ (H z_k)``, ``L = loss_fn(·, *args)``.

    ``hutchinson_diagonal(loss_fn, params, *args, key=key, num_probes=K)``; the earlier
    ``hutchinson_diagonal(loss_fn, params, batch, key, num_probes)`` still works (options not given by
    keyword are the last positional arguments).
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
        >>> hutchinson_diagonal(loss, jnp.ones(2), jnp.array([2.0, 5.0]), key=jax.random.key(0), num_probes=4)
        Array([2., 5.], dtype=float32)
        >>> hutchinson_diagonal(loss, jnp.ones(2), jnp.array([2.0, 5.0]), jax.random.key(0), 4)   # earlier form
        Array([2., 5.], dtype=float32)
    """
    loss = _Loss(loss_fn, has_aux, "curvature.hutchinson_diagonal")
    args, key, num_probes = _probe_args(args, key, num_probes, "hutchinson_diagonal")
    return _hutchinson(loss, params, args, key, num_probes, chunk_size, probe_mode)


def _hutchinson(loss, params, args, key, num_probes, chunk_size, probe_mode):
    chunk_size = default_probe_chunk() if chunk_size is None else _validate.positive_int("chunk_size", chunk_size)
    chunk = min(chunk_size, num_probes)
    mode = default_probe_mode(chunk) if probe_mode is None else _validate.choice("probe_mode", probe_mode, PROBE_MODES)
    return _hutchinson_diagonal(loss, params, args, key, num_probes, chunk, mode)


@functools.partial(jax.jit, static_argnames=("loss_fn", "axes"))
def _fisher_chunk(loss_fn, params, sub, fixed, valid, axes):
    """``Σ_i valid_i (∇ℓ_i)²`` over the examples of one chunk; ``sub`` holds the per-example arguments (in_axes 0),
    ``fixed`` the others, ``axes`` says which is which."""

    def one(example):
        it_sub, it_fixed = iter(example), iter(fixed)
        args = tuple(jax.tree.map(lambda a: a[None], next(it_sub)) if ax == 0 else next(it_fixed) for ax in axes)
        return jax.tree.map(jnp.square, jax.grad(loss_fn)(params, args))

    sq = jax.vmap(one)(sub)
    return jax.tree.map(lambda s: jnp.tensordot(valid.astype(s.dtype), s, axes=1), sq)


@jax.jit
def _tree_div(a, n):
    return jax.tree.map(lambda x: x / n, a)


def _fisher_diagonal(loss_fn, params, args, axes, chunk):
    # Python loop over one compiled chunk function (see _hessian_diagonal for why not lax.map); padded
    # examples carry weight 0, and the chunks are added by one compiled tree addition.
    sub = tuple(a for a, ax in zip(args, axes, strict=True) if ax == 0)
    fixed = tuple(a for a, ax in zip(args, axes, strict=True) if ax is None)
    n = jax.tree.leaves(sub)[0].shape[0]
    total = batching.batched_sum(lambda s, w: _fisher_chunk(loss_fn, params, s, fixed, w, axes), sub, batch_size=chunk)
    return _tree_div(total, n)  # Python ints: traced, weakly typed (a bf16 diagonal stays bf16)


def fisher_diagonal(
    loss_fn: LossFn, params: PyTree, *args: Any, chunk_size: int = 256, in_axes=0, has_aux: bool = False
) -> PyTree:
    """Empirical Fisher diagonal: the mean squared per-example gradient ``(1/n) Σ_i (∇ℓ_i)²``.

    Every argument with ``in_axes`` entry 0 (all of them by default, as in ``jax.vmap``; ``None`` passes an
    argument whole to every example, e.g. model state) is a pytree whose leaves share a leading example axis
    of size n; ``ℓ_i = loss_fn(params, *args_i)`` with ``args_i`` the one-example slices (leading axis 1,
    so a mean loss over the batch is the per-example loss). Per-example gradients are vmapped
    ``chunk_size`` examples at a time. Cost: n gradients.

    Example:
        >>> loss = lambda w, b: jnp.mean(b["x"] @ w)
        >>> fisher_diagonal(loss, jnp.ones(2), {"x": jnp.array([[1.0, 2.0], [3.0, 0.0]])})
        Array([5., 2.], dtype=float32)
        >>> scaled = lambda w, x, s: s * jnp.mean(x @ w)                    # s: the same for every example
        >>> fisher_diagonal(scaled, jnp.ones(2), jnp.array([[1.0, 2.0], [3.0, 0.0]]), 2.0, in_axes=(0, None))
        Array([20.,  8.], dtype=float32)
    """
    loss = _Loss(loss_fn, has_aux, "curvature.fisher_diagonal")
    chunk_size = _validate.positive_int("chunk_size", chunk_size)
    axes = _validate.in_axes(in_axes, len(args), "curvature.fisher_diagonal")
    sub = tuple(a for a, ax in zip(args, axes, strict=True) if ax == 0)
    leaves = jax.tree.leaves(sub)
    if not leaves:
        raise ValueError("batch must contain at least one array with a leading example axis.")
    n = leaves[0].shape[0] if leaves[0].ndim else 0
    if n == 0 or any(x.ndim == 0 or x.shape[0] != n for x in leaves):
        raise ValueError(
            f"batch leaves must share a non-empty leading example axis; got shapes {[x.shape for x in leaves]}."
        )
    return _fisher_diagonal(loss, params, args, axes, min(chunk_size, n))


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


def top_eigenvalue(
    loss_fn: LossFn,
    params: PyTree,
    *args: Any,
    key: jax.Array | None = None,
    num_iters: int | None = None,
    has_aux: bool = False,
) -> jax.Array:
    """Largest (algebraic) Hessian eigenvalue ``λ_max(H)`` of ``L = loss_fn(·, *args)`` by Lanczos with full
    reorthogonalization.

    ``top_eigenvalue(loss_fn, params, *args, key=key, num_iters=30)``; the earlier
    ``top_eigenvalue(loss_fn, params, batch, key[, num_iters])`` still works (without ``key=``, the last
    positional arguments are ``key`` and, when a Python int, ``num_iters``).
    ``num_iters`` = k HVPs build a k×k tridiagonal ``T = Qᵀ H Q``; the result is ``λ_max(T)``, which
    converges to ``λ_max(H)`` from below (exact once k reaches the number of parameters). Memory: the
    k + 1 Lanczos vectors, twice (each step's input and output), plus one HVP. The k steps are a Python
    loop over one compiled step (a ``fori_loop`` over HVPs is slow on XLA:CPU); under an outer ``jax.jit``
    they unroll into its program.

    Example:
        >>> loss = lambda w, b: 0.5 * jnp.sum(b * w ** 2)
        >>> b = jnp.array([1.0, 4.0, 2.0])
        >>> round(float(top_eigenvalue(loss, jnp.ones(3), b, key=jax.random.key(0), num_iters=3)), 4)
        4.0
        >>> round(float(top_eigenvalue(loss, jnp.ones(3), b, jax.random.key(0), 3)), 4)     # earlier form
        4.0
    """
    loss = _Loss(loss_fn, has_aux, "curvature.top_eigenvalue")
    example = "top_eigenvalue(loss_fn, params, *args, key=jax.random.key(0), num_iters=30)"
    if key is None and num_iters is None and args and isinstance(args[-1], numbers.Integral):
        args, num_iters = args[:-1], args[-1]
    args, key = _key_arg(args, key, "curvature.top_eigenvalue", example)
    num_iters = _validate.positive_int("num_iters", 30 if num_iters is None else num_iters)
    return _top_eigenvalue(loss, params, args, key, num_iters)


def hessian_trace(
    loss_fn: LossFn,
    params: PyTree,
    *args: Any,
    key: jax.Array | None = None,
    num_probes: int | None = None,
    chunk_size: int | None = None,
    probe_mode: str | None = None,
    has_aux: bool = False,
) -> jax.Array:
    """Hutchinson estimate of the Hessian trace ``tr(H) ≈ (1/K) Σ_k z_kᵀ H z_k`` (Rademacher ``z_k``).

    Arguments (and the earlier positional form), ``chunk_size`` / ``probe_mode``: as in
    :func:`hutchinson_diagonal`, whose estimate it sums. Cost: ``num_probes`` HVPs.

    Example:
        >>> loss = lambda w, b: 0.5 * jnp.sum(b * w ** 2)
        >>> hessian_trace(loss, jnp.ones(2), jnp.array([2.0, 5.0]), key=jax.random.key(0), num_probes=8)
        Array(7., dtype=float32)
    """
    loss = _Loss(loss_fn, has_aux, "curvature.hessian_trace")
    args, key, num_probes = _probe_args(args, key, num_probes, "hessian_trace")
    diag = _hutchinson(loss, params, args, key, num_probes, chunk_size, probe_mode)
    return sum(jnp.sum(x) for x in jax.tree.leaves(diag))
