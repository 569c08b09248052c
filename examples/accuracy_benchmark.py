"""Accuracy benchmark with seed variance and cost: median (min–max) of several seeds, and each run's cost as a
multiple of one dense training step of the same model measured in the same process.

For every model × variant × sparsity it runs ``pts_hf.sparsify`` with seeds ``seed .. seed+seeds-1`` (the seed
drives the method: KDE samples, search, data order; the calibration draw stays fixed unless ``--calib-seeds``),
evaluates top-1 on the Fashion-MNIST test split and records:

* ``ratio``: the run's CPU seconds / the CPU seconds of one dense training step (batch 64, SGD with momentum,
  cross-entropy) of the same model, timed right before the run in the same process (median of 10 steps). CPU
  time of this process, not wall time, so other processes on a shared machine move it less;
* ``gflop``: the run's floating-point work, from ``torch.utils.flop_counter`` counts of one forward and one
  training step at batch 64: steps × (training step + teacher forward unless cached) + BatchNorm re-estimation
  (+ the search's forwards for UniPTS), and the same count in dense-step units (``flop_ratio``), so the distance
  between what the CPU does and what the maths needs is visible.

Raw results go to ``benchmarks/<tag>.json``; ``--combine`` rebuilds one BENCHMARKS.md table from several.

    python examples/accuracy_benchmark.py --models resnet20-fmnist --sparsities 0.8 0.9 0.95 --variants fcpts
    python examples/accuracy_benchmark.py --combine acc-a acc-b --tag accuracy
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from _bench_common import add_output_args, machine, parse_variant, run_or_combine, save_partial
from torch.utils.flop_counter import FlopCounterMode

import pts_hf
from pts_hf.data import calibration_subset, evaluate_top1, load_fashion_mnist
from pts_hf.models import load_bundled

BATCH = 64


def dense_step_seconds(model: torch.nn.Module, x: torch.Tensor, repeats: int = 10) -> float:
    """CPU seconds of one dense SGD training step (batch 64, cross-entropy), median over ``repeats`` steps."""
    m = copy.deepcopy(model).train()
    opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)
    y = torch.randint(0, 10, (x.shape[0],), generator=torch.Generator().manual_seed(0))
    times = []
    for i in range(repeats + 2):
        t0 = time.process_time()
        loss = F.cross_entropy(m(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:  # two warm-up steps
            times.append(time.process_time() - t0)
    return statistics.median(times)


def flop_counts(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(forward FLOPs, training-step FLOPs) of the dense model at this batch."""
    m = copy.deepcopy(model)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        m.eval()(x)
    fwd = fc.get_total_flops()
    m.train()
    with FlopCounterMode(display=False) as fc:
        F.cross_entropy(m(x), torch.zeros(x.shape[0], dtype=torch.long)).backward()
    return float(fwd), float(fc.get_total_flops())


def run_flops(details: dict, options: dict, method: str, fwd: float, train: float, n_batches: int) -> float:
    """Floating-point work of one run, from the dense counts (masks do not reduce dense-kernel work)."""
    if method == "magnitude":
        return fwd * n_batches  # BatchNorm re-estimation only
    steps = details.get("steps", 0)
    per_batch = options.get("batch_size", BATCH) / BATCH  # the counts are for a batch of BATCH images
    teacher = fwd * n_batches if details.get("teacher_cached") else fwd * steps * per_batch
    total = (steps * train + fwd * details.get("bn_batches", 0)) * per_batch + teacher
    evals = details.get("search_evaluations")
    if evals:
        per_candidate = (options.get("search_samples", 512) + options.get("fitness_samples", 256)) / BATCH
        total += evals * per_candidate * fwd + fwd * options.get("fitness_samples", 256) / BATCH
    return total


def run(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(args.threads)
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    if args.eval_samples:
        test = calibration_subset(test, args.eval_samples, seed=0)
    rows = []
    for model_name in args.models:
        dense = load_bundled(model_name)
        dense_top1 = evaluate_top1(dense, test)
        rows.append({"model": model_name, "variant": "dense", "sparsity": 0.0, "calib": 0, "top1": dense_top1})
        print(f"{model_name}: dense top-1 {dense_top1:.2f}%", flush=True)
        for calib_n in args.calib:
            calib = calibration_subset(train, calib_n, seed=args.calib_seed).tensors[0]
            x64 = calibration_subset(train, BATCH, seed=args.calib_seed).tensors[0]
            fwd, train_flops = flop_counts(dense, x64)
            n_batches = -(-calib_n // BATCH)
            for variant in args.variants:
                method, options = parse_variant(variant)
                if args.steps and method != "magnitude":
                    options.setdefault("steps", args.steps)
                for s in args.sparsities:
                    runs = []
                    for seed in range(args.seed, args.seed + args.seeds):
                        if args.vary_calib:  # a fresh calibration draw per seed: data variance included
                            calib = calibration_subset(train, calib_n, seed=args.calib_seed + seed).tensors[0]
                        step_s = dense_step_seconds(dense, x64)
                        c0, w0 = time.process_time(), time.perf_counter()
                        r = pts_hf.sparsify(dense, calib, method=method, sparsity=s, seed=seed, progress=False,
                                            **options)
                        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
                        flops = run_flops(r.record.extras, options, method, fwd, train_flops, n_batches)
                        runs.append({"seed": seed, "top1": evaluate_top1(r.model, test),
                                     "achieved": r.global_sparsity, "cpu_seconds": round(cpu, 2),
                                     "wall_seconds": round(wall, 2), "dense_step_cpu_seconds": step_s,
                                     "ratio": cpu / step_s, "gflop": flops / 1e9,
                                     "flop_ratio": flops / train_flops,
                                     "search_seconds": r.record.extras.get("search_seconds")})
                        print(f"    seed {seed}: top-1 {runs[-1]['top1']:.2f}%  {cpu:.1f} CPU s  "
                              f"ratio {runs[-1]['ratio']:.0f}", flush=True)
                    row = {"model": model_name, "variant": variant, "sparsity": s, "calib": calib_n,
                           **summary(runs)}
                    rows.append(row)
                    if not args.no_write:
                        save_partial(args.tag, rows)
                    print(f"  {variant:<44} {s:.2f} calib {calib_n}: top-1 {row['top1']:6.2f}% "
                          f"({row['top1_min']:.2f}–{row['top1_max']:.2f})  ratio {row['ratio']:.0f}  "
                          f"{row['gflop']:.0f} GFLOP ({row['flop_ratio']:.0f} dense steps)", flush=True)
    return rows


def summary(runs: list[dict]) -> dict:
    """A cell's numbers from its runs: median and range of top-1, median cost."""
    top1 = [x["top1"] for x in runs]
    return {"top1": statistics.median(top1), "top1_min": min(top1), "top1_max": max(top1),
            "ratio": statistics.median(x["ratio"] for x in runs), "gflop": statistics.median(x["gflop"] for x in runs),
            "flop_ratio": statistics.median(x["flop_ratio"] for x in runs), "achieved": runs[0]["achieved"],
            "runs": runs}


def merged(rows: list[dict]) -> list[dict]:
    """One row per cell (model, variant, calibration size, sparsity): the runs of a cell measured in several
    invocations (e.g. further seeds run later) are pooled; a seed run twice counts once (the first)."""
    cells: dict[tuple, dict] = {}
    for r in rows:
        key = (r["model"], r["variant"], r.get("calib"), r["sparsity"])
        if key not in cells:
            cells[key] = dict(r)
            continue
        seen = {x["seed"] for x in cells[key]["runs"]}
        cells[key] = {**cells[key], **summary(cells[key]["runs"] + [x for x in r["runs"] if x["seed"] not in seen])}
    return list(cells.values())


def markdown(rows: list[dict], meta: dict) -> str:
    rows = merged(rows)
    draw = (f"drawn afresh for each seed (seed {meta['calib_seed']} + run seed)" if meta.get("vary_calib")
            else f"drawn once with seed {meta['calib_seed']}")
    counts = {len(r["runs"]) for r in rows if r.get("runs")} or {meta["seeds"]}  # runs pooled per cell
    n = max(counts)
    seeds = (f"{n} seed{'s' * (n != 1)}" if len(counts) == 1
             else f"up to {n} seeds, '1 seed' where run once")
    lines = [f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}; date {meta['date']}; calibration images "
             f"{draw} from the training split (labels unused); the run seed drives the method (KDE samples, search); "
             f"top-1 % on {meta['eval']} test images, **median (min–max) of {seeds}**; `×N`: run CPU "
             "time / one dense training step (batch 64) in the same process; GFLOP of a run in brackets.", ""]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model and r["variant"] != "dense"]
        dense = next(r for r in rows if r["model"] == model and r["variant"] == "dense")
        levels = sorted({r["sparsity"] for r in mine})
        lines.append(f"**{model}** (dense {dense['top1']:.2f})\n")
        lines.append("| variant | calib | " + " | ".join(f"{s:.0%}" for s in levels) + " |")
        lines.append("| --- | --- |" + " --- |" * len(levels))
        for variant, calib in dict.fromkeys((r["variant"], r["calib"]) for r in mine):
            cells = []
            for s in levels:
                r = next((x for x in mine if x["variant"] == variant and x["calib"] == calib and x["sparsity"] == s),
                         None)
                if r is None:
                    cells.append("")
                    continue
                spread = f"{r['top1_min']:.2f}–{r['top1_max']:.2f}" if len(r.get("runs", [])) != 1 else "1 seed"
                cells.append(f"{r['top1']:.2f} ({spread}) ×{r['ratio']:.0f} [{r['gflop']:.0f}]")
            lines.append(f"| {variant} | {calib} | " + " | ".join(cells) + " |")
        worst = max(abs(r["achieved"] - r["sparsity"]) for r in mine)
        lines.append(f"\nLargest |achieved − target| sparsity: {worst:.2e}\n")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet20-fmnist"])
    p.add_argument("--variants", nargs="+", default=["fcpts"])
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.8, 0.9, 0.95])
    p.add_argument("--calib", nargs="+", type=int, default=[1024], help="calibration set size(s)")
    p.add_argument("--calib-seed", type=int, default=0, help="seed of the calibration draw")
    p.add_argument("--vary-calib", action="store_true",
                   help="draw the calibration set with seed calib_seed+seed for each seed (default: one fixed draw, "
                        "so the spread is the method's own randomness only)")
    p.add_argument("--steps", type=int, help="override the learned methods' steps")
    p.add_argument("--seed", type=int, default=0, help="first method seed")
    p.add_argument("--seeds", type=int, default=3, help="seeds per cell (median and min–max reported)")
    p.add_argument("--eval-samples", type=int, help="evaluate on a seeded subset (default: all 10k)")
    p.add_argument("--threads", type=int, default=1)
    add_output_args(p, "accuracy")
    run_or_combine(p.parse_args(), "accuracy_benchmark.py", run, markdown, lambda args: {
        "machine": f"shared 2-core CPU box, {machine(args.threads)}", "calib_seed": args.calib_seed,
        "seeds": args.seeds, "vary_calib": args.vary_calib})


if __name__ == "__main__":
    main()
