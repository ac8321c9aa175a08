"""Claim (paper A): SAM helps unlearning both as the pretraining and as the unlearning optimizer.

For every baseline method (ft, ga, neggrad, rl, scrub, salun, l1_sparse) compare the four variants
pretrain {SGD, SAM} × unlearn {SGD-style (AdamW), SAM}: ToW / FA / TA (mean ± std over seeds) on a
random forget set. One ``runner.run_job`` over the whole grid (shared originals and Retrain).

    .venv/bin/python experiments/exp2_sam_pretrain_vs_unlearn.py                 # Fashion-MNIST, 3 seeds
    .venv/bin/python experiments/exp2_sam_pretrain_vs_unlearn.py --dataset tfds:cifar10 --model resnet18 \
        --max-train 50000 --pretrain-epochs 30 --unlearn-epochs 10
"""

import argparse

import common

NAME = "exp2_sam_pretrain_vs_unlearn"
METHODS = ("ft", "ga", "neggrad", "rl", "scrub", "salun", "l1_sparse")


def main(argv=None):
    p = common.add_common_args(argparse.ArgumentParser(description=__doc__))
    p.add_argument("--methods", default=",".join(METHODS))
    args = p.parse_args(argv)
    s = common.settings(args)
    out = common.out_dir(args, NAME)
    meths = tuple(m for m in args.methods.split(",") if m)
    cfg = common.job_config(
        args,
        s,
        out + "/job",
        forget="random",
        pretrain=("sgd", "sam"),
        unlearn_optimizer=("sgd", "sam"),
        methods=("retrain",) + meths,
    )
    V, seconds = common.run_or_collect(args, cfg)
    order = [("sgd", "sgd"), ("sam", "sgd"), ("sgd", "sam"), ("sam", "sam")]
    labels = {o: common.runner.variant_label(*o) for o in order}
    header = ["method"] + [f"{k} pre-{a.upper()}/un-{b.upper()}" for k in ("ToW", "FA", "TA") for a, b in order]
    rows = []
    for m in ("original", "retrain") + meths:
        row = [m]
        for key in ("tow", "forget_acc", "test_acc"):
            row += [common.fmt(V[labels[o]]["methods"][m].get(key)) if labels[o] in V else "not run" for o in order]
        rows.append(row)
    # average over methods: the headline per variant
    import numpy as np

    avg = ["mean over methods"]
    for key in ("tow", "forget_acc", "test_acc"):
        for o in order:
            avg.append(
                f"{100 * np.mean([common.entry_value(V[labels[o]]['methods'][m][key])[0] for m in meths]):.1f}"
                if labels[o] in V
                else "not run"
            )
    rows.append(avg)
    meta = common.meta(s, "seeds")
    meta["job_seconds"] = seconds
    meta["seeds_run"] = {lab: v["seeds_run"] for lab, v in V.items()}
    common.write_table(
        out,
        "Exp 2: SAM as pretraining vs as unlearning optimizer (ToW / FA / TA, %)",
        header,
        rows,
        {lab: V[lab]["methods"] for lab in labels.values() if lab in V},
        meta,
    )


if __name__ == "__main__":
    main()
