"""Claim (paper A): SAM pretraining (and Sharp MinMax unlearning) gives lower retain/forget feature
entanglement, stronger resistance to membership inference, a flatter loss landscape, and (what the
reviewers asked for) we add robustness to a relearning attack.

For pretrain {SGD, SAM} × model {original, NegGrad+ (plain AdamW), Sharp MinMax (SAM, defaults)} and
the Retrain reference, per seed: FA / RA / TA / MIA-efficacy (runner's evaluation), entanglement score
(penultimate features, retain subset vs forget), loss-landscape sharpness on F (filter-normalized
random plane, ``sharpness_summary``: mean loss increase in the disk, basin ratio), and a relearning
attack (Adam fine-tuning on a third of F; steps until the accuracy on the other two thirds reaches the
original model's, and the final accuracy). Figures of seed 0: ``features.png`` (PCA of features,
SGD original vs SAM + Sharp MinMax, and SGD NegGrad), ``landscape_forget.png``.

    .venv/bin/python experiments/exp5_analysis.py
    .venv/bin/python experiments/exp5_analysis.py --dataset tfds:cifar10 --model resnet18 --max-train 50000
"""

import argparse
import os
import time

import common
import jax
import jax.numpy as jnp
import numpy as np

from jaxunlearn import data, engine, methods, metrics, models, objectives, runner  # noqa: E402

NAME = "exp5_analysis"


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
    args = p.parse_args(argv)
    s = common.settings(args)
    out = common.out_dir(args, NAME)
    per: dict[str, list[dict]] = {}
    t_all = time.perf_counter()
    for k in range(s["seeds"]):
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
                ctx = methods.Context(optimizer=common.unlearn_optimizer(s, un), **ctx_kw)
                r = methods.unlearn(name, ctx, progress=args.progress)
                models_[f"{pre} / {name}"] = (r.params, r.model_state, r.seconds)
        ref = None
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
        if k == 0:
            _figures(apply_fn, models_, ds, r_sub, forget_idx, out)
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


def _figures(apply_fn, models_, ds, r_sub, forget_idx, out):
    rng = np.random.default_rng(0)
    t_sub = rng.choice(len(ds.y_test), min(400, len(ds.y_test)), replace=False)
    sets = {"retain": ds.x_train[r_sub[:600]], "forget": ds.x_train[forget_idx[:400]], "test": ds.x_test[t_sub]}

    def feats(label):
        prm, st, _ = models_[label]
        f = models.features_fn(apply_fn, st)
        return {k: metrics.features.batched_apply(f, prm, v) for k, v in sets.items()}

    for a, b, fname in (
        ("sgd / original", "sgd / neggrad", "features_sgd_neggrad.png"),
        ("sam / original", "sam / sharp_minmax", "features_sam_sharp_minmax.png"),
    ):
        metrics.plot_features(feats(a), feats(b), os.path.join(out, fname), panel_titles=(a, b))
    if _SURF:
        a, b, _ = next(iter(_SURF.values()))
        metrics.plot_surface(a, b, {k: v[2] for k, v in _SURF.items()}, os.path.join(out, "landscape_forget.png"))


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
