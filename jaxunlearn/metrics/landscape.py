"""2-D loss landscapes along filter-normalized random directions (Li et al., NeurIPS 2018).

L(α, β) = loss(θ + α·d₁ + β·d₂) on an ``num × num`` grid over [−span, span]², with d₁, d₂ random
Gaussian directions in parameter space, each FILTER rescaled to the norm of the matching filter of θ so
that the plot does not depend on the scale invariance of ReLU/batch-norm networks. Paper A uses a 25×25
grid on [−1, 1]² and plots the loss on the forget and the test sets.

Filter convention (documented here because it differs from PyTorch): Flax kernels store the OUTPUT
channel LAST (Conv ``[kh, kw, c_in, c_out]``, Dense ``[d_in, d_out]``), so a "filter" is the slice
``kernel[..., k]`` along the last axis — exactly the filter/row Li et al. normalize in PyTorch's
``[c_out, c_in, kh, kw]`` / ``[d_out, d_in]`` layout. Leaves with ndim <= 1 (biases, batch-norm scales)
are zeroed when ``ignore_1d`` (Li et al.'s ``ignore='biasbn'``).

Differences from the reference code of paper A (``HaoranTang/sharp-unlearn``): it normalizes per LAYER
(whole tensor, available here as ``filter_normalize="layer"``) and Gram–Schmidt-orthogonalizes d₂ against
d₁ per tensor; random high-dimensional Gaussian directions are nearly orthogonal, so that step is omitted.

The whole grid is evaluated by ONE jitted function: ``jax.lax.map`` over the grid points with
``batch_size=chunk_size``, i.e. ``jax.vmap`` over chunks of grid points, which bounds memory to
``chunk_size`` copies of the parameters and activations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxunlearn import _atomic

__all__ = ["loss_surface", "plot_surface", "random_directions", "sharpness_summary"]

_EPS = 1e-10  # Li et al.'s guard against division by a zero direction norm


def _is_float(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def random_directions(
    params: Any,
    key: jax.Array,
    *,
    filter_normalize: bool | str = True,
    ignore_1d: bool = True,
) -> tuple[Any, Any]:
    """Two random directions in parameter space, filter-normalized as in Li et al. (2018).

    For every floating leaf w with ndim >= 2 and each filter k (slice ``[..., k]`` along the last axis):
    d[..., k] = g[..., k] / (‖g[..., k]‖ + 1e-10) · ‖w[..., k]‖, g ~ N(0, I) drawn independently per leaf
    and per direction. ``filter_normalize="layer"`` uses whole-tensor norms instead
    (d = g / ‖g‖ · ‖w‖, paper A's reference code); ``False`` keeps raw N(0, I) directions. Leaves with
    ndim <= 1 are zero when ``ignore_1d``, otherwise treated as a single filter. Non-float leaves get zero
    directions (and are never moved by ``loss_surface``).

    Example:
        >>> params = {"dense": {"kernel": jnp.array([[3.0, 0.0], [4.0, 1.0]]), "bias": jnp.ones(2)}}
        >>> d1, d2 = random_directions(params, jax.random.key(0))
        >>> [round(float(v), 4) for v in jnp.linalg.norm(d1["dense"]["kernel"], axis=0)]   # ‖w[:, k]‖ = 5, 1
        [5.0, 1.0]
        >>> d1["dense"]["bias"].tolist()                         # 1-D leaves stay put (ignore_1d)
        [0.0, 0.0]

    Args:
      params: any pytree of arrays (the centre θ of the landscape).
      key: a JAX PRNG key (``jax.random.key`` or ``jax.random.PRNGKey``).
      filter_normalize: ``True``/``"filter"``, ``"layer"`` or ``False``.
      ignore_1d: zero the direction on biases / normalization parameters.
    Returns:
      ``(d1, d2)``: two pytrees with the structure, shapes and dtypes of ``params``.
    """
    if filter_normalize is True:
        mode = "filter"
    elif filter_normalize is False:
        mode = "none"
    elif filter_normalize in ("filter", "layer"):
        mode = filter_normalize
    else:
        raise ValueError(f"filter_normalize must be True, False, 'filter' or 'layer', got {filter_normalize!r}")
    if not jax.tree_util.tree_leaves(params):
        raise ValueError("params has no array leaves")
    return _directions(params, key, mode, bool(ignore_1d))


@partial(jax.jit, static_argnums=(2, 3))
def _directions(params, key, mode: str, ignore_1d: bool):
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, 2 * len(leaves))

    def one(w, k):
        w = jnp.asarray(w)
        if not _is_float(w):
            return jnp.zeros_like(w)
        if w.ndim <= 1 and ignore_1d:
            return jnp.zeros_like(w)
        g = jax.random.normal(k, w.shape, dtype=jnp.float32)
        wf = w.astype(jnp.float32)
        if mode == "none":
            d = g
        elif mode == "layer" or w.ndim <= 1:
            d = g / (jnp.linalg.norm(g.ravel()) + _EPS) * jnp.linalg.norm(wf.ravel())
        else:
            axes = tuple(range(w.ndim - 1))
            gn = jnp.sqrt(jnp.sum(g**2, axis=axes, keepdims=True))
            wn = jnp.sqrt(jnp.sum(wf**2, axis=axes, keepdims=True))
            d = g / (gn + _EPS) * wn
        return d.astype(w.dtype)

    d1 = [one(w, keys[i]) for i, w in enumerate(leaves)]
    d2 = [one(w, keys[len(leaves) + i]) for i, w in enumerate(leaves)]
    return jax.tree_util.tree_unflatten(treedef, d1), jax.tree_util.tree_unflatten(treedef, d2)


def _check_direction(params, d, argname: str) -> None:
    ps, ds = jax.tree_util.tree_structure(params), jax.tree_util.tree_structure(d)
    if ps != ds:
        raise ValueError(f"{argname} must have the tree structure of params: {ds} vs {ps}")
    for p, v in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(d)):
        if np.shape(p) != np.shape(v):
            raise ValueError(f"{argname} has a leaf of shape {np.shape(v)} where params has {np.shape(p)}")


def loss_surface(
    loss_fn: Callable,
    params: Any,
    d1: Any,
    d2: Any,
    *,
    span: float = 1.0,
    num: int = 25,
    batch: Any = None,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    has_aux: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Loss on the plane θ + α·d₁ + β·d₂ over the grid α, β ∈ linspace(−span, span, num).

    Z[i, j] = L(θ + alphas[i]·d₁ + betas[j]·d₂), with L(p) = ``loss_fn(p)`` when ``batch`` is None and
    ``loss_fn(p, batch)`` otherwise. With ``batch_size``, ``batch`` (a pytree of arrays with a common
    leading axis N) is split into ⌊N/B⌋ equal chunks (``lax.map``) plus a remainder and
    L = Σ_chunks n_c·loss_fn(p, chunk_c) / N, exact when ``loss_fn`` returns a mean over its batch.
    All num² points run in one jitted call; ``chunk_size`` grid points (default ``num``) are vmapped
    at a time. Use an odd ``num`` so that (0, 0) is a grid point: then Z[num//2, num//2] = L(θ).

    Example:
        >>> params, d1, d2 = {"w": jnp.zeros(2)}, {"w": jnp.array([1.0, 0.0])}, {"w": jnp.array([0.0, 2.0])}
        >>> alphas, betas, Z = loss_surface(lambda p: jnp.sum(p["w"] ** 2), params, d1, d2, num=3)
        >>> alphas.tolist(), Z.tolist()                          # Z[i, j] = α_i² + 4 β_j²
        ([-1.0, 0.0, 1.0], [[5.0, 1.0, 5.0], [4.0, 0.0, 4.0], [5.0, 1.0, 5.0]])
        >>> x = jnp.arange(6.0).reshape(3, 2)                    # a batch of 3, in sub-batches of 2 and 1
        >>> mse = lambda p, b: jnp.mean((b @ p["w"]) ** 2)
        >>> round(float(loss_surface(mse, params, d1, d2, num=3, batch=x, batch_size=2)[2][2, 2]), 3)
        88.0

    Args:
      loss_fn: ``loss_fn(params) -> scalar`` or ``loss_fn(params, batch) -> scalar`` (``(loss, aux)``
        with ``has_aux=True``); pure and jit-able.
      params: the centre θ (any pytree).
      d1, d2: directions with the structure and shapes of ``params`` (see ``random_directions``).
      span: half-width of the grid (> 0).
      num: grid points per axis (>= 2).
      batch: optional data pytree passed to ``loss_fn`` (as a jit argument, not a baked-in constant).
      batch_size: optional sub-batch size for evaluating ``loss_fn`` over ``batch``.
      chunk_size: grid points evaluated together under ``vmap`` (memory bound); default ``num``.
      has_aux: ``loss_fn`` returns ``(loss, aux)``; aux is discarded.
    Returns:
      ``(alphas [num], betas [num], Z [num, num])`` as float64 numpy arrays.
    """
    if not isinstance(num, (int, np.integer)) or int(num) < 2:
        raise ValueError(f"num must be an integer >= 2, got {num!r}")
    num = int(num)
    if not np.isfinite(span) or float(span) <= 0:
        raise ValueError(f"span must be a positive finite number, got {span!r}")
    _check_direction(params, d1, "d1")
    _check_direction(params, d2, "d2")
    chunk = num if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if batch_size is not None:
        if batch is None:
            raise ValueError("batch_size needs a batch to split")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if batch is not None:
        sizes = {np.shape(a)[0] if np.ndim(a) else None for a in jax.tree_util.tree_leaves(batch)}
        if not sizes or None in sizes or len(sizes) != 1:
            raise ValueError(f"batch leaves must share one leading axis, got leading sizes {sizes}")
        n = sizes.pop()
        if n == 0:
            raise ValueError("batch is empty (0 examples)")
        batch = jax.tree_util.tree_map(jnp.asarray, batch)

    def scalar_loss(p, b):
        out = loss_fn(p) if b is None else loss_fn(p, b)
        if has_aux:
            out = out[0]
        return jnp.asarray(out, jnp.float32).reshape(())

    def data_loss(p, b):
        if b is None or batch_size is None:
            return scalar_loss(p, b)
        n_ex = jax.tree_util.tree_leaves(b)[0].shape[0]
        bs = int(batch_size)
        nb, rem = divmod(n_ex, bs)
        if nb == 0:
            return scalar_loss(p, b)
        full = jax.tree_util.tree_map(lambda a: a[: nb * bs].reshape((nb, bs) + a.shape[1:]), b)
        total = jnp.sum(jax.lax.map(lambda bb: scalar_loss(p, bb), full)) * bs
        if rem:
            total = total + scalar_loss(p, jax.tree_util.tree_map(lambda a: a[nb * bs :], b)) * rem
        return total / n_ex

    def shift(p, u, v, a, b_):
        if not _is_float(p):
            return p
        return (p + a * u + b_ * v).astype(jnp.result_type(p))

    @jax.jit
    def surface(coords, p, u, v, b):
        def point(ab):
            q = jax.tree_util.tree_map(lambda w, x, y: shift(w, x, y, ab[0], ab[1]), p, u, v)
            return data_loss(q, b)

        return jax.lax.map(point, coords, batch_size=min(chunk, coords.shape[0]))

    alphas = np.linspace(-float(span), float(span), num)
    betas = np.linspace(-float(span), float(span), num)
    aa, bb = np.meshgrid(alphas, betas, indexing="ij")
    coords = jnp.asarray(np.stack([aa.ravel(), bb.ravel()], axis=1), dtype=jnp.float32)
    z = surface(coords, params, d1, d2, batch)
    return alphas, betas, np.asarray(z, dtype=np.float64).reshape(num, num)


def _grid(z: np.ndarray, alphas, betas):
    if alphas is None:
        alphas = np.linspace(-1.0, 1.0, z.shape[0])
    if betas is None:
        betas = np.linspace(-1.0, 1.0, z.shape[1])
    alphas = np.asarray(alphas, dtype=np.float64).reshape(-1)
    betas = np.asarray(betas, dtype=np.float64).reshape(-1)
    if alphas.shape[0] != z.shape[0]:
        raise ValueError(f"alphas has {alphas.shape[0]} values but Z has {z.shape[0]} rows")
    if betas.shape[0] != z.shape[1]:
        raise ValueError(f"betas has {betas.shape[0]} values but Z has {z.shape[1]} columns")
    return alphas, betas


def _as_surface(z, argname: str) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] < 2 or z.shape[1] < 2:
        raise ValueError(f"{argname} must be a 2-D grid of at least 2x2 values, got shape {z.shape}")
    return z


def sharpness_summary(Z, alphas=None, betas=None, *, radius: float | None = None) -> dict[str, float]:
    """Scalar flatness/sharpness statistics of a loss surface ``Z[i, j] = L(alphas[i], betas[j])``.

    With L₀ the value at the grid point nearest the origin (θ itself) and D the disk α² + β² <= r²
    (default r = the largest radius inside the grid, min(max|α|, max|β|)):

    - ``sharpness`` (the headline number) = mean_{(α,β)∈D} [L(α, β) − L₀]: the average loss increase
      around θ, an empirical "expected sharpness" (lower = flatter);
    - ``max_increase`` = max_{D} [L − L₀] (the worst case, like SAM's sharpness within radius r);
    - ``center`` = L₀, ``mean_loss`` = mean_{D} L;
    - ``basin_ratio`` = fraction of ALL grid points with |L − L₀| <= ½·std(L), paper A's reference
      flatness statistic (it reports it in percent; higher = flatter);
    - ``grad_norm`` = mean over the grid of ‖∇L‖ by finite differences (``np.gradient``);
    - ``radius`` = r, ``nonfinite`` = number (int) of NaN/inf grid values (ignored by the statistics).

    Example (a bowl ``L = α² + β²`` on a 5 × 5 grid):
        >>> a = np.linspace(-1, 1, 5)
        >>> s = sharpness_summary(a[:, None] ** 2 + a[None, :] ** 2, a, a)
        >>> s["center"], round(s["sharpness"], 4), s["max_increase"], s["radius"], s["nonfinite"]
        (0.0, 0.5385, 1.0, 1.0, 0)

    Args:
      Z: ``[num_a, num_b]`` grid of losses (each >= 2).
      alphas, betas: grid coordinates; default ``linspace(-1, 1, n)``.
      radius: disk radius (> 0) for ``sharpness``, ``max_increase`` and ``mean_loss``.
    Returns:
      dict of Python floats (``nonfinite``: int).
    """
    z = _as_surface(Z, "Z")
    alphas, betas = _grid(z, alphas, betas)
    finite = np.isfinite(z)
    zf = np.where(finite, z, np.nan)
    ia, ib = int(np.argmin(np.abs(alphas))), int(np.argmin(np.abs(betas)))
    center = zf[ia, ib]
    if radius is None:
        radius = float(min(np.max(np.abs(alphas)), np.max(np.abs(betas))))
    if not np.isfinite(radius) or radius <= 0:
        raise ValueError(f"radius must be a positive finite number, got {radius!r}")
    aa, bb = np.meshgrid(alphas, betas, indexing="ij")
    inside = (np.sqrt(aa**2 + bb**2) <= radius * (1 + 1e-9)) & finite
    dz = zf - center
    with np.errstate(invalid="ignore"):
        std = np.nanstd(zf)
        basin = float(np.mean(np.abs(dz[finite]) <= 0.5 * std)) if finite.any() else float("nan")
        ga, gb = np.gradient(zf, alphas, betas)
        gnorm = np.sqrt(ga**2 + gb**2)
        grad_norm = float(np.nanmean(gnorm)) if np.isfinite(gnorm).any() else float("nan")
    has_inside = bool(inside.any()) and np.isfinite(center)
    return {
        "center": float(center),
        "sharpness": float(np.mean(dz[inside])) if has_inside else float("nan"),
        "max_increase": float(np.max(dz[inside])) if has_inside else float("nan"),
        "mean_loss": float(np.mean(zf[inside])) if inside.any() else float("nan"),
        "basin_ratio": basin,
        "grad_norm": grad_norm,
        "radius": float(radius),
        "nonfinite": int(np.sum(~finite)),
    }


def plot_surface(
    alphas,
    betas,
    surfaces,
    path,
    *,
    levels: int = 30,
    title: str | None = None,
    dpi: int = 150,
) -> str:
    """Contour plot of one or more loss surfaces, one panel per named surface (e.g. forget and test).

    Panel ``name`` shows filled contours of Z[i, j] = L(alphas[i], betas[j]) with labelled contour
    lines, a colour bar, a marker at θ (α = β = 0), and L₀ and ``sharpness`` (see
    ``sharpness_summary``) in its title.

    Example:
        >>> import os, tempfile
        >>> a = np.linspace(-1, 1, 5)
        >>> bowl = a[:, None] ** 2 + a[None, :] ** 2
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = plot_surface(a, a, {"forget": bowl, "test": 2 * bowl}, os.path.join(tmp.name, "l.png"), dpi=50)
        >>> os.path.basename(path), os.path.getsize(path) > 0
        ('l.png', True)
        >>> tmp.cleanup()

    Args:
      alphas, betas: grid coordinates ``[num_a]``, ``[num_b]``.
      surfaces: dict name -> ``[num_a, num_b]`` array, or a single array (named "loss").
      path: output image path (format from its extension); directories are created.
      levels: number of contour levels (>= 2).
      title: optional figure title.
      dpi: resolution of the saved image.
    Returns:
      ``path`` as a string.
    """
    from matplotlib.figure import Figure

    if not isinstance(surfaces, Mapping):
        surfaces = {"loss": surfaces}
    if len(surfaces) == 0:
        raise ValueError("surfaces must contain at least one surface")
    if int(levels) < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    zs = {str(k): _as_surface(v, f"surfaces[{k!r}]") for k, v in surfaces.items()}
    grids = {k: _grid(z, alphas, betas) for k, z in zs.items()}
    fig = Figure(figsize=(5.4 * len(zs), 4.6))
    axes = fig.subplots(1, len(zs), squeeze=False)[0]
    for ax, (name, z) in zip(axes, zs.items()):
        a, b = grids[name]
        zf = np.where(np.isfinite(z), z, np.nan)
        lo, hi = np.nanmin(zf), np.nanmax(zf)
        if not np.isfinite(lo):
            raise ValueError(f"surfaces[{name!r}] has no finite value")
        if hi - lo <= 1e-12 * max(1.0, abs(lo)):
            pad = 1e-6 * max(1.0, abs(lo))
            lo, hi = lo - pad, hi + pad
        lv = np.linspace(lo, hi, int(levels))
        cf = ax.contourf(a, b, zf.T, levels=lv, cmap="viridis")
        cs = ax.contour(a, b, zf.T, levels=lv[:: max(1, int(levels) // 8)], colors="k", linewidths=0.5)
        ax.clabel(cs, inline=True, fontsize=7, fmt="%.3g")
        fig.colorbar(cf, ax=ax, label="loss")
        ax.plot([0.0], [0.0], marker="*", color="white", markeredgecolor="black", markersize=12)
        s = sharpness_summary(z, a, b)
        ax.set_title(f"{name}\nL0={s['center']:.3g}, sharpness={s['sharpness']:.3g}", fontsize=10)
        ax.set_xlabel("α (direction 1)")
        ax.set_ylabel("β (direction 2)")
        ax.set_aspect("equal", adjustable="box")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _atomic.save_figure(fig, path, dpi=dpi)
