"""Does UniPTS's search fitness predict accuracy after training? (issue 13: "a fitness that predicts accuracy after
training ... or a cheaper proxy you validate".)

For one model and sparsity, a set of per-layer allocations — ERK at several powers, LAMP, L2Norm, the uniform
regrowth of UniPTS's reducing-regrowing space and random points of that space (what the GA explores) — is each

* scored by the search's fitness as it is (``MaskFitness``: magnitude masks, BatchNorm re-estimated on 512
  calibration images, −KL to the dense outputs on 256 held-out calibration images),
* scored by a *burst* proxy: UniPTS trained on that allocation for ``--burst`` steps (cosine schedule over the
  burst), then −KL on the same held-out images,
* trained with UniPTS at its defaults for ``--steps`` steps and evaluated on the Fashion-MNIST test split.

It reports each proxy's Spearman rank correlation with the accuracy after training (a fitness worth searching
with ranks the allocations as training does) and the best allocation by each proxy. Raw results go to
``benchmarks/<tag>.json`` and the table to its BENCHMARKS.md block (``--table-only`` rebuilds it from the JSON).

    python examples/fitness_validation.py --sparsity 0.9 --steps 200 --burst 20
"""

from __future__ import annotations

import argparse
import datetime as dt
import json

import torch
from _bench_common import ROOT, machine, unipts_prepared_on, unipts_trained_on, write_markdown

import pts_hf
from pts_hf.calibration import forward_batch
from pts_hf.data import calibration_subset, evaluate_top1, load_fashion_mnist
from pts_hf.losses import reconstruction_loss
from pts_hf.models import load_bundled
from pts_hf.search import MaskFitness, regrow_allocation


def ranks(values: list[float]) -> list[float]:
    """Ranks 1..n, ties given their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return cov / var if var else 0.0


def allocations(dense: torch.nn.Module, calib: torch.Tensor, sparsity: float, randoms: int, seed: int
                ) -> dict[str, dict[str, float]]:
    """Named per-tensor sparsities, all at exactly the global target."""
    out = {}
    for name, opts in [("erk", {}), ("erk:power=0.5", {"erk_power": 0.5}), ("erk:power=1.5", {"erk_power": 1.5}),
                       ("erk:power=2", {"erk_power": 2.0}), ("lamp", {}), ("l2norm", {})]:
        alloc = name.split(":")[0]
        r = pts_hf.sparsify(dense, calib, method="magnitude", sparsity=sparsity, allocation=alloc, progress=False,
                            **opts)
        out[name] = dict(r.layer_sparsity)
    names = list(out["erk"])
    numels = [dense.get_parameter(n).numel() for n in names]
    g = torch.Generator().manual_seed(seed)
    genes = [("regrow:uniform", torch.zeros(len(names)))]
    genes += [(f"regrow:random{i}", torch.randn(len(names), generator=g)) for i in range(randoms)]
    for name, x in genes:
        out[name] = dict(zip(names, regrow_allocation(x, numels, sparsity, delta=0.05, max_sparsity=0.99)))
    return out


@torch.no_grad()
def neg_kl(model: torch.nn.Module, batches: list[torch.Tensor], teacher_out: list[torch.Tensor]) -> float:
    model.eval()
    return -sum(float(reconstruction_loss(forward_batch(model, b, "cpu"), t, temperature=1.0))
                for b, t in zip(batches, teacher_out)) / len(batches)


PROXIES = {"search_fitness": "search fitness (BN re-estimated, −KL)",
           "burst_fitness": "burst (−KL after --burst steps)",
           "final_neg_kl": "−KL after training (held-out calibration images)"}


def markdown(meta: dict, summary: dict, rows: list[dict]) -> str:
    lines = [f"Command: `{meta['command']}`  ",
             f"Machine: {meta['machine']}; date {meta['date']}; model {meta['model']}; 1024 calibration images "
             "(seed 0), labels unused; top-1 % on 10000 test images after UniPTS training on each allocation.", "",
             "| allocation | search fitness | burst fitness | −KL after training | top-1 after training |",
             "| --- | --- | --- | --- | --- |"]
    for r in sorted(rows, key=lambda r: -r["top1"]):
        lines.append(f"| {r['allocation']} | {r['search_fitness']:.4f} | {r['burst_fitness']:.4f} | "
                     f"{r['final_neg_kl']:.4f} | {r['top1']:.2f} |")
    lines += ["", "| proxy | Spearman ρ with top-1 after training | allocation it picks |", "| --- | --- | --- |"]
    lines += [f"| {label} | {summary[key]['spearman_vs_top1']:+.2f} | {summary[key]['picks']} |"
              for key, label in PROXIES.items()]
    lines.append(f"\nBest after training: {summary['best_top1']}.")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20-fmnist")
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--steps", type=int, default=200, help="UniPTS steps of the training each proxy must predict")
    p.add_argument("--burst", type=int, default=20, help="UniPTS steps of the burst proxy")
    p.add_argument("--randoms", type=int, default=4, help="random points of the regrow space")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tag", default="fitness-validation")
    p.add_argument("--table-only", action="store_true", help="rebuild the BENCHMARKS.md table from the JSON")
    args = p.parse_args()
    out = ROOT / "benchmarks" / f"{args.tag}.json"
    if args.table_only:
        data = json.loads(out.read_text())
        write_markdown(ROOT / "BENCHMARKS.md", args.tag, markdown(data["meta"], data["summary"], data["rows"]))
        return
    torch.set_num_threads(args.threads)
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    calib = calibration_subset(train, 1024, seed=0).tensors[0]
    dense = load_bundled(args.model).eval()
    bn_batches = list(calib[:512].split(64))
    score_batches = list(calib[512:768].split(64))
    with torch.no_grad():
        teacher_out = [dense(b) for b in score_batches]
    kw = dict(sparsity=args.sparsity, seed=args.seed)
    rows = []
    for name, levels in allocations(dense, calib, args.sparsity, args.randoms, args.seed).items():
        model, sp = unipts_prepared_on(dense, levels, **kw)
        fitness = MaskFitness(sp.groups, model, bn_batches, score_batches, teacher_out, args.sparsity, "kl",
                              noise_std=1e-6, seed=args.seed)
        search_fitness = fitness([levels[g["tensor_fqn"]] for g in sp.groups])
        burst = neg_kl(unipts_trained_on(dense, calib, levels, steps=args.burst, **kw), score_batches, teacher_out)
        final = unipts_trained_on(dense, calib, levels, steps=args.steps, **kw)
        row = {"allocation": name, "search_fitness": search_fitness, "burst_fitness": burst,
               "final_neg_kl": neg_kl(final, score_batches, teacher_out), "top1": evaluate_top1(final, test),
               "levels": levels}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "levels"}), flush=True)
    top1 = [r["top1"] for r in rows]
    summary = {key: {"spearman_vs_top1": spearman([r[key] for r in rows], top1),
                     "picks": max(rows, key=lambda r: r[key])["allocation"]} for key in PROXIES}
    summary["best_top1"] = max(rows, key=lambda r: r["top1"])["allocation"]
    print(json.dumps(summary, indent=1))
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "table_only")
    meta = {"command": f"python examples/fitness_validation.py {flags}", "machine": machine(args.threads),
            "date": dt.date.today().isoformat(), "model": args.model}
    out.write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1))
    write_markdown(ROOT / "BENCHMARKS.md", args.tag, markdown(meta, summary, rows))
    print(f"wrote {out} and its BENCHMARKS.md table")


if __name__ == "__main__":
    main()
