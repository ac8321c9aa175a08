"""Claim (paper A): SAM / ASAM, as pretraining or as unlearning optimizer, improve NegGrad, and the gain
depends on how memorized the forget set is (high / mid / low / mix Feldman–Zhang memorization).

One ``runner.run_job`` per forget level over the grid pretrain {SGD, SAM, ASAM} × unlearn {SGD-style
(AdamW), SAM, ASAM} with NegGrad(+) and Retrain; memorization scores come from ``mem_models`` vmapped
models on random 70 % subsets (computed once per seed and reused across levels, see common.py); the level jobs
share each seed's original models (``--originals OUT/originals``), so only the first level pretrains them.
Table: ToW (mean ± std over seeds) per level and variant.

    .venv/bin/python experiments/exp1_neggrad_sam_memorization.py
    .venv/bin/python experiments/exp1_neggrad_sam_memorization.py --dataset tfds:cifar10 --model resnet18 \
        --max-train 50000 --mem-models 32 --pretrain-epochs 30 --unlearn-epochs 10
"""

import argparse
import os

import common

NAME = "exp1_neggrad_sam_memorization"
OPTS = ("sgd", "sam", "asam")


def main(argv=None):
    p = common.add_common_args(argparse.ArgumentParser(description=__doc__))
    p.add_argument("--levels", default="high,mid,low,mix")
    p.add_argument("--optimizers", default=",".join(OPTS), help="pretrain and unlearn optimizers of the grid")
    p.add_argument("--mem-cache", help="memorization-score cache folder (default OUT/memorization_cache)")
    args = p.parse_args(argv)
    s = common.settings(args)
    out = common.out_dir(args, NAME)
    memorization_fn = common.cache_memorization(args.mem_cache or os.path.join(out, "memorization_cache"))
    levels = [k for k in args.levels.split(",") if k]
    opts = tuple(o for o in args.optimizers.split(",") if o)
    variants = [(a, b) for a in opts for b in opts]
    data, seconds = {}, {}
    for level in levels:
        cfg = common.job_config(
            args,
            s,
            os.path.join(out, f"job_{level}"),
            forget=level,
            pretrain=opts,
            unlearn_optimizer=opts,
            methods=("retrain", "neggrad"),
            originals=os.path.join(out, "originals"),  # the levels share each seed's originals
        )
        if args.collect and not os.path.exists(os.path.join(cfg.out, "progress.json")):
            continue
        V, seconds[level] = common.run_or_collect(args, cfg, memorization_fn=memorization_fn)
        data[level] = {lab: v["methods"] for lab, v in V.items()}
        _write(out, s, levels, data, variants, seconds)


def _write(out, s, levels, data, variants, seconds):
    header = ["pretrain / unlearn"] + [f"ToW {lv}" for lv in levels] + [f"FA {lv} (Retrain FA)" for lv in levels]
    rows = []
    for a, b in variants:
        lab = common.runner.variant_label(a, b)
        row = [f"{a.upper()} / {b.upper()}"]
        row += [common.fmt(data[lv][lab]["neggrad"]["tow"]) if lab in data.get(lv, {}) else "not run" for lv in levels]
        row += [
            f"{common.fmt(data[lv][lab]['neggrad']['forget_acc'])} "
            f"({common.fmt(data[lv][lab]['retrain']['forget_acc'])})"
            if lab in data.get(lv, {})
            else "not run"
            for lv in levels
        ]
        rows.append(row)
    meta = common.meta(s, "seeds", "forget_size", "mem_models")
    meta["job_seconds"] = seconds
    sets = {
        str(sd): common.memorization_sets(sc, s["forget_size"], sd) for sd, sc in sorted(common.SCORES_SEEN.items())
    }
    common.write_table(
        out,
        "Exp 1: NegGrad ToW (%) by pretrain / unlearn optimizer and forget-set memorization",
        header,
        rows,
        {**data, "memorization_sets": sets},  # per seed: distinct scores, set size, high/mid/low overlaps
        meta,
    )


if __name__ == "__main__":
    main()
