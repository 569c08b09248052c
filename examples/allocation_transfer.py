"""Does UniPTS train better on the per-layer allocation FCPTS learned than on ERK? (issue 13: seeding UniPTS's
allocation from FCPTS instead of its evolutionary search.)

For each sparsity: FCPTS runs with its defaults (``--steps``), its final per-layer sparsities (after the exact
projection, so they hit the target) become the torch.ao per-tensor ``sparsity_level`` of a UniPTS run (dynamic
sparse training, same steps), next to UniPTS on ERK (its default when this was measured). All three runs use the same
``--feature-weight`` (block-output distillation; 1 when the BENCHMARKS.md numbers were measured). Top-1 on the
Fashion-MNIST test split; raw results to ``benchmarks/<tag>.json``.

    python examples/allocation_transfer.py --sparsities 0.9 0.95 --steps 200
"""

from __future__ import annotations

import argparse
import datetime as dt
import json

import torch
from _bench_common import ROOT, machine, unipts_trained_on

import pts_hf
from pts_hf.data import calibration_subset, evaluate_top1, load_fashion_mnist
from pts_hf.models import load_bundled


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20-fmnist")
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.9, 0.95])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--feature-weight", type=float, default=1.0, help="feature_weight of all three runs")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tag", default="allocation-transfer")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    calib = calibration_subset(train, 1024, seed=0).tensors[0]
    dense = load_bundled(args.model)
    rows = []
    for s in args.sparsities:
        kw = dict(sparsity=s, steps=args.steps, seed=args.seed, feature_weight=args.feature_weight)
        fcpts = pts_hf.sparsify(dense, calib, method="fcpts", progress=False, **kw)
        erk = pts_hf.sparsify(dense, calib, method="unipts", allocation="erk", progress=False, **kw)
        learned = unipts_trained_on(dense, calib, fcpts.layer_sparsity, **kw)
        row = {"sparsity": s, "fcpts": evaluate_top1(fcpts.model, test), "unipts_erk": evaluate_top1(erk.model, test),
               "unipts_on_fcpts_allocation": evaluate_top1(learned, test)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    flags = " ".join(f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                     for k, v in vars(args).items())
    meta = {"command": f"python examples/allocation_transfer.py {flags}", "machine": machine(args.threads),
            "date": dt.date.today().isoformat(), "model": args.model}
    out = ROOT / "benchmarks" / f"{args.tag}.json"
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
