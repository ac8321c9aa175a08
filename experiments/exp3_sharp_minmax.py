"""Claim (paper A): Sharp MinMax (SAM-min on R outside the mask, sharpness maximization on F inside it)
beats the best baseline; sweep of its mask fraction t ∈ {0.05, 0.1, 0.3, 0.5}, largest-first (paper
text) vs smallest-first (reference code's ascending sort), and strict vs reference mask reading.

Every Sharp MinMax setting is registered as its own method name (``sharp_minmax@f0.1-largest``...)
so one ``runner.run_job`` shares the pretrained model, forget set and Retrain across all of them.
Baselines run with the plain (AdamW) unlearning optimizer; Sharp MinMax is SAM by definition.

    .venv/bin/python experiments/exp3_sharp_minmax.py
    .venv/bin/python experiments/exp3_sharp_minmax.py --dataset tfds:cifar10 --model resnet18 --max-train 50000
"""

import argparse

import common

NAME = "exp3_sharp_minmax"


def main(argv=None):
    p = common.add_common_args(argparse.ArgumentParser(description=__doc__))
    p.add_argument("--fractions", default="0.05,0.1,0.3,0.5")
    p.add_argument("--baselines", default="neggrad,scrub,salun")
    p.add_argument(
        "--reference-fraction",
        type=float,
        default=0.3,
        help="fraction at which the reference mask reading is also run (<= 0: skip)",
    )
    p.add_argument("--forget", default="random")
    args = p.parse_args(argv)
    s = common.settings(args)
    out = common.out_dir(args, NAME)
    fracs = [float(f) for f in args.fractions.split(",") if f]
    baselines = [b for b in args.baselines.split(",") if b]
    # Each setting is a variant sharp_minmax@TAG with its own options; all share one job.
    variants = {}
    for f in fracs:
        for largest in (True, False):
            tag = f"f{f:g}-{'largest' if largest else 'smallest'}"
            variants[f"sharp_minmax@{tag}"] = {"fraction": f, "largest": largest, "mask_reading": "strict"}
    if args.reference_fraction > 0:
        for largest in (True, False):
            tag = f"f{args.reference_fraction:g}-{'largest' if largest else 'smallest'}-reference"
            variants[f"sharp_minmax@{tag}"] = {
                "fraction": args.reference_fraction,
                "largest": largest,
                "mask_reading": "reference",
            }
    sm = list(variants)
    cfg = common.job_config(
        args,
        s,
        out + "/job",
        forget=args.forget,
        pretrain=("sgd",),
        unlearn_optimizer=("sgd",),
        methods=("retrain", *baselines, *sm),
        method_options={**s.get("method_options", {}), **variants},
    )
    V, seconds = common.run_or_collect(args, cfg)
    M = next(iter(V.values()))["methods"]
    cols = ("tow", "forget_acc", "retain_acc", "test_acc", "mia")
    header = ["method", "ToW", "FA", "RA", "TA", "MIA", "seconds"]
    rows = []
    for name in ("original", "retrain", *baselines, *sm):
        e = M[name]
        rows.append([name] + [common.fmt(e.get(c)) for c in cols] + [common.fmt(e.get("seconds"), percent=False)])
    best_b = max(baselines, key=lambda b: common.entry_value(M[b]["tow"])[0]) if baselines else None
    best_s = max(sm, key=lambda b: common.entry_value(M[b]["tow"])[0])
    meta = common.meta(s, "seeds", "forget_size")
    meta.update(forget=args.forget, job_seconds=seconds, best_baseline=best_b, best_sharp_minmax=best_s)
    common.write_table(out, "Exp 3: Sharp MinMax sweep vs baselines (%, pretrain SGD)", header, rows, M, meta)


if __name__ == "__main__":
    main()
