"""Feature extraction in jitted batches, 2-D projections and before/after feature plots.

The figures answer the reviewers' request for "clearer feature plots": retain, forget and test features
before and after unlearning, side by side, in ONE shared 2-D coordinate system, with a distinct colour
AND marker per set (readable in greyscale), a legend with set sizes, and seeded subsampling of large sets.

Conventions: ``features_fn(params, x) -> [B, D]`` (penultimate features), pure and jit-able.
Plots use matplotlib's object API (``matplotlib.figure.Figure`` rendered by Agg); pyplot is never imported,
so nothing here touches global backend state or opens a window.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import jax
import numpy as np

from jaxunlearn import _atomic, batching

__all__ = ["batched_apply", "plot_features", "project_2d"]

# Fixed styles for the standard sets; any other name cycles through _EXTRA_STYLES.
_STYLES = {
    "retain": {"color": "#1f77b4", "marker": "o", "s": 10, "alpha": 0.35, "zorder": 1},
    "test": {"color": "#2ca02c", "marker": "^", "s": 16, "alpha": 0.55, "zorder": 2},
    "val": {"color": "#9467bd", "marker": "s", "s": 14, "alpha": 0.55, "zorder": 2},
    "forget": {"color": "#d62728", "marker": "X", "s": 34, "alpha": 0.9, "zorder": 4},
}
_EXTRA_STYLES = [
    {"color": "#ff7f0e", "marker": "D", "s": 16, "alpha": 0.7, "zorder": 3},
    {"color": "#8c564b", "marker": "P", "s": 20, "alpha": 0.7, "zorder": 3},
    {"color": "#e377c2", "marker": "v", "s": 16, "alpha": 0.7, "zorder": 3},
    {"color": "#17becf", "marker": "*", "s": 26, "alpha": 0.7, "zorder": 3},
    {"color": "#7f7f7f", "marker": "h", "s": 16, "alpha": 0.7, "zorder": 3},
]
_DRAW_ORDER = {"retain": 0, "test": 1, "val": 2, "forget": 9}


@partial(jax.jit, static_argnums=0)
def _apply(fn, params, x):
    # One compiled function per (fn, shapes): fn is static, so it is cached by fn's hash/equality.
    return fn(params, x)


def batched_apply(fn: Callable, params: Any, x, *, batch_size: int = 256) -> np.ndarray:
    """Apply ``fn(params, x_batch)`` over the leading axis of ``x`` in fixed-size jitted batches.

    Computes ``concat_b fn(params, x[b·B:(b+1)·B])`` for B = ``min(batch_size, N)``. The last batch is
    padded to B (by repeating the last example) so ``fn`` is compiled once for every batch, and the padded
    rows are dropped from the output (:func:`jaxunlearn.batching.batched_map`). Works for any output pytree
    whose leaves have a leading batch axis.

    Args:
      fn: pure function ``fn(params, x) -> array`` (or pytree of arrays) with a leading batch axis.
      params: any pytree.
      x: array ``[N, ...]`` with N >= 1.
      batch_size: examples per jitted call (>= 1).
    Returns:
      numpy array (or pytree of numpy arrays) with leading axis N.

    Example:
        >>> import jax.numpy as jnp, numpy as np
        >>> features = lambda w, x: jnp.tanh(x @ w)                  # [B, 3] -> [B, 2]
        >>> w, x = jnp.ones((3, 2)), np.linspace(-1, 1, 15, dtype=np.float32).reshape(5, 3)
        >>> feats = batched_apply(features, w, x, batch_size=2)
        >>> feats.shape, bool(np.allclose(feats, np.tanh(x @ np.ones((3, 2)))))
        ((5, 2), True)
    """
    x = np.asarray(x) if not isinstance(x, jax.Array) else x
    if x.ndim < 1:
        raise ValueError(f"x must have a leading batch axis, got shape {x.shape}")
    if int(x.shape[0]) == 0:
        raise ValueError("x is empty (0 examples)")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return batching.batched_map(lambda xb: _apply(fn, params, xb), x, batch_size=int(batch_size))


def _check_features_dict(features: Mapping, argname: str) -> dict[str, np.ndarray]:
    if not isinstance(features, Mapping) or len(features) == 0:
        raise ValueError(f"{argname} must be a non-empty dict name -> [N, D] features")
    out = {}
    dim = None
    for name, f in features.items():
        f = np.asarray(f, dtype=np.float64)
        if f.ndim == 1:
            f = f[:, None]
        if f.ndim != 2:
            raise ValueError(f"{argname}[{name!r}] must be 2-D [N, D], got shape {f.shape}")
        if f.shape[0] == 0:
            raise ValueError(f"{argname}[{name!r}] is empty (0 examples)")
        if not np.all(np.isfinite(f)):
            raise ValueError(f"{argname}[{name!r}] contains NaN or inf")
        if dim is None:
            dim = f.shape[1]
        elif f.shape[1] != dim:
            raise ValueError(f"{argname}[{name!r}] has feature dim {f.shape[1]}, expected {dim}")
        out[str(name)] = f
    return out


def _pca_fit(x: np.ndarray):
    """Return (mean [D], components [D, 2], explained variance ratio [2]) of the top-2 PCA of x."""
    mean = x.mean(axis=0)
    xc = x - mean
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    comps = vt[:2].T  # [D, k], k <= 2
    # Deterministic sign: the largest-magnitude coefficient of each component is positive.
    signs = np.sign(comps[np.argmax(np.abs(comps), axis=0), np.arange(comps.shape[1])])
    signs[signs == 0] = 1.0
    comps = comps * signs
    var = s**2
    ratio = var[:2] / var.sum() if var.sum() > 0 else np.zeros(min(2, var.size))
    if comps.shape[1] < 2:  # D == 1 or a single example: pad a zero second axis
        comps = np.concatenate([comps, np.zeros((comps.shape[0], 2 - comps.shape[1]))], axis=1)
        ratio = np.concatenate([ratio, np.zeros(2 - ratio.size)])
    return mean, comps, ratio


def project_2d(
    features: Mapping,
    *,
    method: str = "pca",
    seed: int = 0,
    fit_on: Mapping | None = None,
    perplexity: float = 30.0,
) -> dict[str, np.ndarray]:
    """Project named feature sets to 2-D in one shared coordinate system.

    ``method="pca"``: z = (φ − m)·V₂ where m and V₂ (top-2 right singular vectors) come from the union
    of ``fit_on`` (default: the union of ``features``), so several calls with the same ``fit_on`` are
    directly comparable. ``method="tsne"``: one scikit-learn t-SNE embedding (``init="pca"``,
    ``random_state=seed``) of the union of ``features``; t-SNE cannot embed new points, so ``fit_on`` is
    not allowed with it.

    Example:
        >>> f_r = np.array([[0.0, 0.0, 1.0], [2.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
        >>> f_f = np.array([[0.0, 3.0, 1.0]])
        >>> z = project_2d({"retain": f_r, "forget": f_f})
        >>> {name: v.shape for name, v in z.items()}
        {'retain': (3, 2), 'forget': (1, 2)}
        >>> z_f = project_2d({"forget": f_f}, fit_on={"retain": f_r, "forget": f_f})   # the same coordinates
        >>> bool(np.allclose(z_f["forget"], z["forget"]))
        True

    Args:
      features: dict name -> ``[N, D]`` array (all with the same D, N >= 1).
      method: ``"pca"`` or ``"tsne"``.
      seed: random seed (t-SNE only; PCA is deterministic).
      fit_on: optional dict name -> ``[N, D]`` used to fit the PCA.
      perplexity: t-SNE perplexity, clipped to (n_points − 1) / 3.
    Returns:
      dict name -> ``[N, 2]`` float64 numpy array.
    """
    feats = _check_features_dict(features, "features")
    names = list(feats)
    if method == "pca":
        basis = feats if fit_on is None else _check_features_dict(fit_on, "fit_on")
        dims = {f.shape[1] for f in basis.values()} | {f.shape[1] for f in feats.values()}
        if len(dims) != 1:
            raise ValueError(f"fit_on and features have different feature dims {sorted(dims)}")
        mean, comps, _ = _pca_fit(np.concatenate(list(basis.values()), axis=0))
        return {k: (feats[k] - mean) @ comps for k in names}
    if method == "tsne":
        if fit_on is not None:
            raise ValueError("fit_on is only supported with method='pca' (t-SNE cannot embed new points)")
        from sklearn.manifold import TSNE

        allx = np.concatenate([feats[k] for k in names], axis=0)
        n = allx.shape[0]
        if n < 4:
            raise ValueError(f"features: t-SNE needs at least 4 points in total, got {n}")
        perp = float(min(perplexity, max(1.0, (n - 1) / 3.0)))
        emb = TSNE(n_components=2, perplexity=perp, init="pca", random_state=int(seed)).fit_transform(allx)
        out, start = {}, 0
        for k in names:
            out[k] = np.asarray(emb[start : start + feats[k].shape[0]], dtype=np.float64)
            start += feats[k].shape[0]
        return out
    raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")


def _style(name: str, extra_index: dict[str, int]) -> dict:
    if name in _STYLES:
        return dict(_STYLES[name])
    if name not in extra_index:
        extra_index[name] = len(extra_index)
    return dict(_EXTRA_STYLES[extra_index[name] % len(_EXTRA_STYLES)])


def plot_features(
    before: Mapping,
    after: Mapping | None,
    path,
    *,
    method: str = "pca",
    seed: int = 0,
    max_points: int = 1000,
    title: str | None = None,
    panel_titles: tuple[str, str] = ("Before unlearning", "After unlearning"),
    dpi: int = 150,
) -> dict[str, dict[str, np.ndarray]]:
    """Plot 2-D projections of named feature sets before and after unlearning, side by side.

    Each set with more than ``max_points`` examples is subsampled with ``numpy.random.default_rng(seed)``
    (the same example indices in both panels when the two sets have the same size). With ``method="pca"``
    the projection z = (φ − m)·V₂ is fit on the union of the (subsampled) ``before`` sets and applied to
    both panels, which share their axes, so a movement of the forget set is a real movement in feature
    space. With ``method="tsne"`` a single t-SNE embedding of all points of both panels is used.
    Retain = blue circles, forget = red crosses (drawn on top), test = green triangles; other names get
    further colour/marker pairs. The legend shows each set's size.

    Example:
        >>> import os, tempfile
        >>> rng = np.random.default_rng(0)
        >>> before = {"retain": rng.normal(size=(50, 4)), "forget": rng.normal(size=(10, 4)) + 2.0}
        >>> after = {"retain": before["retain"], "forget": rng.normal(size=(10, 4))}
        >>> tmp = tempfile.TemporaryDirectory()
        >>> z = plot_features(before, after, os.path.join(tmp.name, "features.png"), max_points=20, dpi=50)
        >>> z["before"]["retain"].shape, z["after"]["forget"].shape, os.listdir(tmp.name)
        ((20, 2), (10, 2), ['features.png'])
        >>> tmp.cleanup()

    Args:
      before: dict name -> ``[N, D]`` features of the model before unlearning.
      after: dict name -> ``[N, D]`` features after unlearning (same D), or None for a single panel.
      path: output image path (format from the extension, PNG recommended); directories are created.
      method: ``"pca"`` or ``"tsne"``.
      seed: seed for subsampling and t-SNE.
      max_points: maximum points drawn per set and panel (>= 1).
      title: optional figure title.
      panel_titles: titles of the two panels.
      dpi: resolution of the saved image.
    Returns:
      dict ``{"before": {name: [n, 2]}, "after": {...}}`` of the plotted 2-D coordinates.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    b = _check_features_dict(before, "before")
    a = _check_features_dict(after, "after") if after is not None else None
    if a is not None:
        db, da = next(iter(b.values())).shape[1], next(iter(a.values())).shape[1]
        if method == "pca" and db != da:
            raise ValueError(f"after has feature dim {da} but before has {db}; PCA needs the same dim")
    if int(max_points) < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    if method not in ("pca", "tsne"):
        raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")

    rng = np.random.default_rng(seed)
    names = list(b) + ([k for k in a if k not in b] if a is not None else [])

    def subsample(f: np.ndarray, idx_cache: dict, name: str) -> np.ndarray:
        n = f.shape[0]
        if n <= max_points:
            return f
        idx = idx_cache.get((name, n))
        if idx is None:
            idx = np.sort(rng.choice(n, size=int(max_points), replace=False))
            idx_cache[(name, n)] = idx
        return f[idx]

    cache: dict = {}
    b_sub = {k: subsample(v, cache, k) for k, v in b.items()}
    a_sub = {k: subsample(v, cache, k) for k, v in a.items()} if a is not None else None

    axis_labels = ("t-SNE 1", "t-SNE 2")
    if method == "pca":
        mean, comps, ratio = _pca_fit(np.concatenate(list(b_sub.values()), axis=0))
        zb = {k: (v - mean) @ comps for k, v in b_sub.items()}
        za = {k: (v - mean) @ comps for k, v in a_sub.items()} if a_sub is not None else None
        axis_labels = (f"PC 1 ({100 * ratio[0]:.1f}% var.)", f"PC 2 ({100 * ratio[1]:.1f}% var.)")
    else:
        joint = {("b", k): v for k, v in b_sub.items()}
        if a_sub is not None:
            joint.update({("a", k): v for k, v in a_sub.items()})
        keys = list(joint)
        z = project_2d({str(i): joint[key] for i, key in enumerate(keys)}, method="tsne", seed=seed)
        zb = {key[1]: z[str(i)] for i, key in enumerate(keys) if key[0] == "b"}
        za = {key[1]: z[str(i)] for i, key in enumerate(keys) if key[0] == "a"} if a_sub is not None else None

    panels = [(panel_titles[0], zb, b)] + ([(panel_titles[1], za, a)] if za is not None else [])
    fig = Figure(figsize=(6.2 * len(panels), 5.6))
    axes = fig.subplots(1, len(panels), sharex=True, sharey=True, squeeze=False)[0]
    extra: dict[str, int] = {}
    order = sorted(names, key=lambda k: (_DRAW_ORDER.get(k, 5), names.index(k)))
    for ax, (ptitle, z, full) in zip(axes, panels):
        for name in order:
            if name not in z:
                continue
            st = _style(name, extra)
            edge = {"edgecolors": "black", "linewidths": 0.3} if name == "forget" else {"edgecolors": "none"}
            ax.scatter(
                z[name][:, 0],
                z[name][:, 1],
                c=st["color"],
                marker=st["marker"],
                s=st["s"],
                alpha=st["alpha"],
                zorder=st["zorder"],
                **edge,
            )
        handles = []
        for name in order:
            if name not in z:
                continue
            st = _style(name, extra)
            shown, total = z[name].shape[0], full[name].shape[0]
            label = f"{name} (n={total})" if shown == total else f"{name} ({shown} of {total})"
            handles.append(
                Line2D([0], [0], marker=st["marker"], color=st["color"], linestyle="none", markersize=8, label=label)
            )
        ax.legend(handles=handles, loc="best", framealpha=0.85)
        ax.set_title(ptitle)
        ax.set_xlabel(axis_labels[0])
        ax.set_ylabel(axis_labels[1])
        ax.grid(True, alpha=0.25)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _atomic.save_figure(fig, path, dpi=dpi)
    return {"before": zb, "after": za if za is not None else {}}
