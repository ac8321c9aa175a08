"""Claim (paper A): SAM pretraining (and Sharp MinMax unlearning) gives lower retain/forget feature
entanglement, stronger resistance to membership inference, a flatter loss landscape, and (what the
reviewers asked for) we add robustness to a relearning attack.

For pretrain {SGD, SAM} × model {original, NegGrad+ (plain AdamW), Sharp MinMax (SAM, defaults)} and
the Retrain reference, per seed: FA / RA / TA / MIA-efficacy (runner's evaluation), entanglement score
(penultimate features, retain subset vs forget), loss-landscape sharpness on F (filter-normalized
random plane, ``sharpness_summary``: mean loss increase in the disk, basin ratio), and a relearning
attack (Adam fine-tuning on a third of F; steps until the accuracy on the other two thirds reaches the
original model's, and the final accuracy).

Per-seed values: ``OUT/seed<k>.json`` (every row of seed k), written as each seed finishes; ``table.json``
holds mean ± std. Figures of the first seed, drawn from the arrays stored in ``OUT/figures.npz`` (the loss
surfaces on F and each model's 2-D PCA of its penultimate features):

* ``landscape_forget.png``: L(θ + αd₁ + βd₂) − L(θ) on F around every model, one grid, ONE shared
  (symmetric-log) colour scale; a model whose surface is non-finite or whose loss at the centre exceeds
  ``DIVERGED_LOSS`` is left out and named in its empty panel (and in ``figures.json``);
* ``features.png``: rows SGD / SAM pretraining, columns original / Retrain / NegGrad / Sharp MinMax; each
  panel is the PCA of that model's own features (own axes: the models' feature spaces are not comparable),
  retain grey, test blue, forget vermillion.

``--figures-only`` trains only the first seed's models and draws the figures (no table, no relearning
attack); ``--replot`` redraws them from ``figures.npz`` without training.

    .venv/bin/python experiments/exp5_analysis.py
    .venv/bin/python experiments/exp5_analysis.py --dataset tfds:cifar10 --model resnet18 --max-train 50000
"""

import argparse
import json
import os
import time

import common
import jax
import jax.numpy as jnp
import numpy as np

from jaxunlearn import data, engine, methods, metrics, models, objectives, report, runner  # noqa: E402

NAME = "exp5_analysis"
#: NegGrad's options in the tables of RESULTS.md: α = 0.99 at the full unlearning rate (the library's default,
#: α = 0.999 at 0.3× the rate, is the recipe of benchmarks/RESULTS-recipes.md)
NEGGRAD_OPTIONS = common.NEGGRAD_PAPER
#: a surface whose loss at the centre exceeds this (nats; ln 10 ≈ 2.3 is a uniform guess) is a diverged model
DIVERGED_LOSS = 100.0
#: panel order of the figures: (row, column) -> model label
PANELS = (
    ("sgd / original", "retrain", "sgd / neggrad", "sgd / sharp_minmax"),
    ("sam / original", "retrain", "sam / neggrad", "sam / sharp_minmax"),
)


def main(argv=None):
    p = common.add_common_args(argparse.ArgumentParser(description=__doc__))
    p.add_argument("--forget", default="random", help="random (default) or class (with --forget-class)")
    p.add_argument("--forget-class", type=int, default=0)
    p.add_argument("--grid", type=int, default=9, help="landscape grid points per axis (odd)")
    p.add_argument("--relearn-steps", type=int, default=40)
    p.add_argument("--relearn-lr", type=float, default=1e-3)
    p.add_argument(
        "--relearn-threshold",
        type=float,
        default=1.0,
        help="recovery threshold, as a fraction of the SGD original's accuracy on the attacked part of F",
    )
    p.add_argument(
        "--figures-only",
        action="store_true",
        help="train the first seed's models, store the figure arrays and draw the figures; no table",
    )
    p.add_argument("--replot", action="store_true", help="redraw the figures from OUT/figures.npz (no training)")
    args = p.parse_args(argv)
    s = common.settings(args)
    out = common.out_dir(args, NAME)
    if args.replot:
        _render(out)
        return
    per: dict[str, list[dict]] = {}
    t_all = time.perf_counter()
    for k in range(1 if args.figures_only else s["seeds"]):
        seed = s["seed"] + k
        ds = common.dataset(s, seed)
        apply_fn, p0, st0, init_fn = common.model(s, ds, seed)
        if args.forget == "class":
            forget_idx = data.select_forget(ds.y_train, "class", None, seed=seed, class_id=args.forget_class)
        else:
            forget_idx = data.select_forget(ds.y_train, args.forget, s["forget_size"], seed=seed)
        retain_idx = data.retain_indices(len(ds.y_train), forget_idx)
        dd = engine.DeviceData.from_numpy(ds.x_train, ds.y_train)
        rng = np.random.default_rng(seed)
        f_perm = rng.permutation(forget_idx)
        n_rl = max(1, len(f_perm) // 3)
        rl_idx, ev_idx = f_perm[:n_rl], f_perm[n_rl:]
        r_sub = rng.choice(retain_idx, min(1000, retain_idx.size), replace=False)
        models_ = {}
        for pre in ("sgd", "sam"):
            pre_cfg = common.pretrain_optimizer(s, pre)
            orig = common.pretrain(s, apply_fn, p0, st0, dd, pre_cfg, seed, args.progress)
            models_[f"{pre} / original"] = (orig.params, orig.model_state, orig.seconds)
            ctx_kw = dict(
                apply_fn=apply_fn,
                params=orig.params,
                model_state=orig.model_state,
                x=dd.x,
                y=dd.y,
                retain_idx=retain_idx,
                forget_idx=forget_idx,
                num_classes=ds.num_classes,
                epochs=s["unlearn_epochs"],
                batch_size=s["batch_size"],
                seed=seed,
                init_fn=init_fn,
                pretrain_optimizer=pre_cfg,
                pretrain_epochs=s["pretrain_epochs"],
            )
            if pre == "sgd":
                r = methods.unlearn("retrain", methods.Context(**ctx_kw), progress=args.progress)
                models_["retrain"] = (r.params, r.model_state, r.seconds)
            for name, un in (("neggrad", "sgd"), ("sharp_minmax", "sam")):
                opts = NEGGRAD_OPTIONS if name == "neggrad" else {}
                ctx = methods.Context(optimizer=common.unlearn_optimizer(s, un), options=opts, **ctx_kw)
                r = methods.unlearn(name, ctx, progress=args.progress)
                models_[f"{pre} / {name}"] = (r.params, r.model_state, r.seconds)
        if args.figures_only:
            for label, (prm, st, _) in models_.items():
                _landscape(apply_fn, prm, st, ds, forget_idx, seed, args.grid, out, label)
            _figures(apply_fn, models_, ds, r_sub, forget_idx, out, seed)
            return
        entries = {}
        for label, (prm, st, secs) in models_.items():
            e = runner.evaluate_split_metrics(apply_fn, prm, st, ds, forget_idx, retain_idx, seed)
            e["seconds"] = secs
            e["entanglement"] = metrics.entanglement_score(
                models.features_fn(apply_fn, st), prm, ds.x_train[r_sub], ds.x_train[forget_idx]
            )
            e.update(_landscape(apply_fn, prm, st, ds, forget_idx, seed, args.grid, out if k == 0 else None, label))
            entries[label] = e
        ref = entries["retrain"]
        thr = (
            engine.evaluate(apply_fn, *models_["sgd / original"][:2], ds.x_train[ev_idx], ds.y_train[ev_idx])[
                "accuracy"
            ]
            * args.relearn_threshold
        )
        for label, (prm, st, _) in models_.items():
            e = entries[label]
            e["tow"] = metrics.tow(e, ref)
            rl = _relearn(apply_fn, prm, st, ds, rl_idx, ev_idx, thr, args, seed)
            e.update(rl)
            per.setdefault(label, []).append(e)
        with open(os.path.join(out, f"seed{seed}.json"), "w") as f:
            json.dump(report.to_jsonable({"seed": seed, "entries": entries}), f, indent=1)
        if k == 0:
            _figures(apply_fn, models_, ds, r_sub, forget_idx, out, seed)
        _write(out, s, args, per, time.perf_counter() - t_all)


_SURF = {}


def _landscape(apply_fn, prm, st, ds, forget_idx, seed, grid, fig_dir, label):
    def loss(q, batch):
        logits, _ = apply_fn(q, st, batch[0], train=False)
        return objectives.cross_entropy(logits, batch[1])

    d1, d2 = metrics.random_directions(prm, jax.random.key(seed + 123))
    xf, yf = jnp.asarray(ds.x_train[forget_idx]), jnp.asarray(ds.y_train[forget_idx])
    a, b, z = metrics.loss_surface(loss, prm, d1, d2, num=grid, batch=(xf, yf))
    summ = metrics.sharpness_summary(z, a, b)
    if fig_dir is not None:
        _SURF[label] = (a, b, z)
    return {"sharpness_F": summ["sharpness"], "basin_ratio_F": summ["basin_ratio"]}


def _relearn(apply_fn, prm, st, ds, rl_idx, ev_idx, thr, args, seed):
    logits_fn = models.logits_fn(apply_fn, st)

    def ce(q, x, y):
        return objectives.cross_entropy(logits_fn(q, x), y)

    r = metrics.relearn_attack(
        ce,
        logits_fn,
        prm,
        ds.x_train[rl_idx],
        ds.y_train[rl_idx],
        ds.x_train[ev_idx],
        ds.y_train[ev_idx],
        steps=args.relearn_steps,
        lr=args.relearn_lr,
        optimizer="adam",
        eval_every=5,
        threshold=float(thr),
        key=jax.random.key(seed),
    )
    steps = r["steps_to_recover"]
    return {
        "relearn_steps": float(steps if steps is not None else args.relearn_steps + 5),
        "relearn_final_acc": r["final_forget_acc"],
        "relearn_auc": r["auc"],
    }


def _pca2(parts: dict) -> tuple[dict, np.ndarray]:
    """Each set's coordinates on the top-2 principal axes of the union of ``parts``, and the variance ratios."""
    allx = np.concatenate([np.asarray(v, np.float64) for v in parts.values()])
    mean = allx.mean(0)
    _, sv, vt = np.linalg.svd(allx - mean, full_matrices=False)
    comps = vt[:2].T * np.sign(vt[:2].T[np.argmax(np.abs(vt[:2].T), axis=0), [0, 1]])  # deterministic signs
    ratio = sv[:2] ** 2 / max(float(np.sum(sv**2)), 1e-30)
    return {k: (np.asarray(v, np.float64) - mean) @ comps for k, v in parts.items()}, ratio


def _figures(apply_fn, models_, ds, r_sub, forget_idx, out, seed):
    """Store the first seed's figure arrays in ``figures.npz`` and draw the figures from them."""
    rng = np.random.default_rng(0)
    t_sub = rng.choice(len(ds.y_test), min(400, len(ds.y_test)), replace=False)
    sets = {"retain": ds.x_train[r_sub[:600]], "forget": ds.x_train[forget_idx[:400]], "test": ds.x_test[t_sub]}
    arrays = {}
    for label, (prm, st, _) in models_.items():
        f = models.features_fn(apply_fn, st)
        z, ratio = _pca2({k: metrics.features.batched_apply(f, prm, v) for k, v in sets.items()})
        arrays.update({f"features|{label}|{k}": v for k, v in z.items()})
        arrays[f"pca_ratio|{label}"] = ratio
    if _SURF:
        a, b, _ = next(iter(_SURF.values()))
        arrays.update(alphas=np.asarray(a), betas=np.asarray(b))
        arrays.update({f"surface|{k}": np.asarray(v[2]) for k, v in _SURF.items()})
    arrays["seed"] = np.asarray(seed)
    np.savez_compressed(os.path.join(out, "figures.npz"), **arrays)
    for old in ("features_sgd_neggrad.png", "features_sam_sharp_minmax.png"):  # replaced by features.png
        if os.path.exists(os.path.join(out, old)):
            os.remove(os.path.join(out, old))
    _render(out)


_STYLE = {  # drawn in this order: retain behind, forget on top
    "retain": dict(color="#8c8c8c", marker="o", s=8, alpha=0.45, label="retain"),
    "test": dict(color="#0072b2", marker="^", s=14, alpha=0.6, label="test"),
    "forget": dict(color="#d55e00", marker="X", s=18, alpha=0.75, label="forget", edgecolors="black", linewidths=0.2),
}


def _title(label: str) -> str:
    if label == "retrain":
        return "Retrain (SGD recipe)"
    pre, model = label.split(" / ")
    return f"{pre.upper()} / " + {"original": "original", "neggrad": "NegGrad", "sharp_minmax": "Sharp MinMax"}[model]


def _render(out: str) -> dict:
    """Draw ``landscape_forget.png`` and ``features.png`` from ``out/figures.npz``; write ``figures.json``
    (the seed, the models left out of the landscape grid and why, each surface's centre loss)."""
    from matplotlib import colors
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    npz = np.load(os.path.join(out, "figures.npz"))
    info: dict = {"seed": int(npz["seed"]), "landscape_left_out": {}, "landscape_center_loss": {}}
    # ---- landscape grid: ΔL = L − L(centre), one shared colour scale, diverged models left out
    if "alphas" in npz:
        a, b = npz["alphas"], npz["betas"]
        ic, jc = len(a) // 2, len(b) // 2
        kept = {}
        for row in PANELS:
            for lab in row:
                z = npz[f"surface|{lab}"]
                c = float(z[ic, jc])
                info["landscape_center_loss"][lab] = c
                if not np.all(np.isfinite(z)):
                    info["landscape_left_out"][lab] = f"non-finite loss at\n{int(np.sum(~np.isfinite(z)))} grid points"
                elif c > DIVERGED_LOSS:
                    info["landscape_left_out"][lab] = f"L(θ) = {c:.3g} > {DIVERGED_LOSS:g}"
                else:
                    kept[lab] = z - c
        if kept:
            hi = max(float(np.max(v)) for v in kept.values())
            lo = min(float(np.min(v)) for v in kept.values())
            lim = max(hi, -lo, 1e-6)
            norm = colors.SymLogNorm(linthresh=0.1, vmin=min(lo, 0.0), vmax=lim, base=10)
            levels = [v for v in (0.1, 0.3, 1, 3, 10, 30, 100, 300, 1000, 3000) if v < lim]
            fig = Figure(figsize=(13, 7), layout="constrained")
            axes = fig.subplots(len(PANELS), len(PANELS[0]), squeeze=False)
            im = None
            for r, row in enumerate(PANELS):
                for col, lab in enumerate(row):
                    ax = axes[r, col]
                    ax.set_aspect("equal", adjustable="box")
                    if lab not in kept:
                        ax.set_xticks([])
                        ax.set_yticks([])
                        ax.text(
                            0.5,
                            0.5,
                            f"{_title(lab)}\nleft out (diverged):\n{info['landscape_left_out'][lab]}",
                            ha="center",
                            va="center",
                            transform=ax.transAxes,
                            fontsize=9,
                        )
                        continue
                    dz = kept[lab]
                    im = ax.pcolormesh(a, b, dz.T, norm=norm, cmap="viridis", shading="gouraud")
                    if levels and float(np.max(dz)) > levels[0]:
                        cs = ax.contour(a, b, dz.T, levels=levels, colors="k", linewidths=0.5)
                        ax.clabel(cs, inline=True, fontsize=6, fmt="%g")
                    ax.plot([0.0], [0.0], marker="*", color="white", markeredgecolor="black", markersize=10)
                    c = info["landscape_center_loss"][lab]
                    ax.set_title(f"{_title(lab)}\nL(θ) = {c:.3g}, max ΔL = {float(np.max(dz)):.3g}", fontsize=9)
                    if r == len(PANELS) - 1:
                        ax.set_xlabel("α (direction 1)")
                    if col == 0:
                        ax.set_ylabel("β (direction 2)")
            fig.colorbar(
                im,
                ax=axes.ravel().tolist(),
                shrink=0.85,
                label="L(θ + αd₁ + βd₂) − L(θ) on F (nats, symmetric log scale)",
            )
            fig.suptitle(f"Forget-set loss around each model, seed {info['seed']} (one colour scale for all panels)")
            fig.savefig(os.path.join(out, "landscape_forget.png"), dpi=120)
    # ---- features: original / Retrain / NegGrad / Sharp MinMax, each in its own PCA axes
    fig = Figure(figsize=(16, 8.4), layout="constrained")
    axes = fig.subplots(len(PANELS), len(PANELS[0]), squeeze=False)
    for r, row in enumerate(PANELS):
        for col, lab in enumerate(row):
            ax = axes[r, col]
            for name, st in _STYLE.items():
                z = npz[f"features|{lab}|{name}"]
                ax.scatter(
                    z[:, 0],
                    z[:, 1],
                    zorder=list(_STYLE).index(name) + 1,
                    **{k: v for k, v in st.items() if k != "label"},
                )
            ratio = npz[f"pca_ratio|{lab}"]
            ax.set_title(_title(lab), fontsize=10)
            ax.set_xlabel(f"PC 1 ({100 * ratio[0]:.0f} % var.)", fontsize=8)
            ax.set_ylabel(f"PC 2 ({100 * ratio[1]:.0f} % var.)", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(True, alpha=0.25)
    n = {k: npz[f"features|{PANELS[0][0]}|{k}"].shape[0] for k in _STYLE}
    handles = [
        Line2D(
            [0],
            [0],
            marker=st["marker"],
            color=st["color"],
            linestyle="none",
            markersize=8,
            label=f"{st['label']} (n={n[k]})",
        )
        for k, st in _STYLE.items()
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=3)
    fig.suptitle(f"Penultimate features, PCA of each model's own features, seed {info['seed']}")
    fig.savefig(os.path.join(out, "features.png"), dpi=110)
    with open(os.path.join(out, "figures.json"), "w") as f:
        json.dump(info, f, indent=1, ensure_ascii=False)
    print(json.dumps(info, indent=1, ensure_ascii=False))
    return info


def _write(out, s, args, per, seconds):
    cols = [
        ("forget_acc", "FA", True),
        ("retain_acc", "RA", True),
        ("test_acc", "TA", True),
        ("mia", "MIA", True),
        ("tow", "ToW", True),
        ("entanglement", "ES ↓", False),
        ("sharpness_F", "sharpness(F)", False),
        ("basin_ratio_F", "basin ratio(F)", True),
        ("relearn_steps", "relearn steps ↑", False),
        ("relearn_final_acc", "FA after relearn", True),
        ("seconds", "seconds", False),
    ]
    header = ["pretrain / model"] + [c[1] for c in cols]
    agg = {lab: common.aggregate(v) for lab, v in per.items()}
    rows = [[lab] + [common.fmt(a.get(c), percent=pc) for c, _, pc in cols] for lab, a in agg.items()]
    meta = common.meta(s, "forget_size")
    meta.update(
        forget=args.forget if args.forget != "class" else f"class {args.forget_class}",
        seeds_done=min(len(v) for v in per.values()),
        grid=args.grid,
        relearn_steps=args.relearn_steps,
        relearn_lr=args.relearn_lr,
        relearn_threshold=args.relearn_threshold,
        job_seconds=round(seconds, 1),
    )
    common.write_table(
        out,
        "Exp 5: entanglement, MIA, landscape sharpness and relearning (SGD vs SAM pretraining)",
        header,
        rows,
        agg,
        meta,
    )


if __name__ == "__main__":
    main()
