"""Benchmark: every method variant x sparsity on the bundled Fashion-MNIST models.

Same calibration set (seeded draw from the training split), same evaluation (full 10k test split) for every run.
Writes the raw results to ``benchmarks/<tag>.json`` and a markdown table into ``BENCHMARKS.md`` between
``<!-- bench:<tag> -->`` markers (other tables are kept).

    python examples/benchmark.py                                  # everything (slow on 2 CPU cores)
    python examples/benchmark.py --variants fcpts --sparsities 0.9 --tag quick   # one method, one level

A variant is ``method[:key=value,...]`` with the method's options, e.g. ``magnitude:allocation=l2norm`` or
``fcpts:threshold_grad=control``.
"""

from __future__ import annotations

import argparse
import platform
import statistics

import torch
from _bench_common import add_output_args, parse_variant, run_or_combine, save_partial

import pts_hf
from pts_hf.data import calibration_subset, evaluate_top1, load_fashion_mnist
from pts_hf.models import load_bundled

DEFAULT_VARIANTS = ["magnitude:allocation=l2norm", "magnitude:allocation=erk", "magnitude:allocation=lamp", "fcpts"]


def run(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(args.threads)
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    calib = calibration_subset(train, args.calib, seed=args.seed).tensors[0]
    if args.eval_samples:
        test = calibration_subset(test, args.eval_samples, seed=0)
    rows = []
    for model_name in args.models:
        dense = load_bundled(model_name)
        dense_top1 = evaluate_top1(dense, test)
        rows.append({"model": model_name, "variant": "dense", "sparsity": 0.0, "achieved": 0.0, "top1": dense_top1,
                     "seconds": 0.0})
        print(f"{model_name}: dense top-1 {dense_top1:.2f}%", flush=True)
        for variant in args.variants:
            method, options = parse_variant(variant)
            if args.steps and method != "magnitude":
                options.setdefault("steps", args.steps)
            for s in args.sparsities:
                seeds = []
                for seed in range(args.seed, args.seed + args.repeats):
                    r = pts_hf.sparsify(dense, calib, method=method, sparsity=s, seed=seed, progress=False,
                                        **options)
                    seeds.append((evaluate_top1(r.model, test), r.global_sparsity, r.seconds,
                                  r.record.extras.get("search_seconds")))
                top1 = statistics.median(x[0] for x in seeds)
                row = {"model": model_name, "variant": variant, "sparsity": s, "achieved": seeds[0][1],
                       "top1": top1, "top1_all": [x[0] for x in seeds],
                       "seconds": statistics.median(x[2] for x in seeds)}
                if seeds[0][3] is not None:
                    row["search_seconds"] = statistics.median(x[3] for x in seeds)
                rows.append(row)
                if not args.no_write:
                    save_partial(args.tag, rows)
                print(f"  {variant:<40} {s:.2f}  achieved {row['achieved']:.5f}  top-1 {top1:6.2f}%  "
                      f"{row['seconds']:7.1f}s", flush=True)
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    levels = sorted({r["sparsity"] for r in rows if r["variant"] != "dense"})
    lines = [f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}; date {meta['date']}; "
             f"{meta['calib']} calibration images (seed {meta['seed']}), evaluation on {meta['eval']} test images; "
             f"top-1 % (median of {meta['repeats']} seed(s)), seconds per run in brackets.", ""]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        lines.append(f"**{model}**\n")
        lines.append("| variant | " + " | ".join(f"{s:.0%}" for s in levels) + " |")
        lines.append("| --- |" + " --- |" * len(levels))
        dense = next(r for r in mine if r["variant"] == "dense")
        lines.append(f"| dense | {dense['top1']:.2f} |" + " |" * (len(levels) - 1))
        for variant in dict.fromkeys(r["variant"] for r in mine if r["variant"] != "dense"):
            cells = []
            for s in levels:
                r = next((x for x in mine if x["variant"] == variant and x["sparsity"] == s), None)
                search = f", search {r['search_seconds']:.0f}s" if r and r.get("search_seconds") else ""
                cells.append("" if r is None else f"{r['top1']:.2f} ({r['seconds']:.0f}s{search})")
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        worst = max(abs(r["achieved"] - r["sparsity"]) for r in mine if r["variant"] != "dense")
        lines.append(f"\nLargest |achieved − target| sparsity: {worst:.2e}\n")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet20-fmnist"])
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.7, 0.8, 0.9, 0.95])
    p.add_argument("--calib", type=int, default=1024, help="calibration images")
    p.add_argument("--steps", type=int, help="override the learned methods' steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, help="seeds per cell (median reported)")
    p.add_argument("--eval-samples", type=int, help="evaluate on a seeded subset (default: all 10k)")
    p.add_argument("--threads", type=int, default=2)
    add_output_args(p, "main")
    run_or_combine(p.parse_args(), "benchmark.py", run, markdown, lambda args: {
        "machine": f"{platform.machine()}, {args.threads} CPU thread(s), torch {torch.__version__}",
        "calib": args.calib, "seed": args.seed, "repeats": args.repeats})


if __name__ == "__main__":
    main()
