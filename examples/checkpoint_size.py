"""File size of the dense-with-zeros and bitmask checkpoints of the bundled models at several sparsities.

    python examples/checkpoint_size.py --model resnet20-fmnist --sparsities 0.5 0.9 0.95
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import pts_hf
from pts_hf.models import load_bundled


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet20-fmnist")
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.9, 0.95])
    args = p.parse_args()
    model = load_bundled(args.model)
    print(f"| {args.model} sparsity | dense bytes | bitmask bytes | ratio | reload bit-exact |")
    print("| --- | --- | --- | --- | --- |")
    for s in args.sparsities:
        r = pts_hf.sparsify(model, None, sparsity=s, bn_recalibration=False)
        with tempfile.TemporaryDirectory() as tmp:
            r.save_pretrained(Path(tmp) / "d")
            r.save_pretrained(Path(tmp) / "b", format="bitmask")
            d = (Path(tmp) / "d" / "model.safetensors").stat().st_size
            b = (Path(tmp) / "b" / "model.safetensors").stat().st_size
            back = pts_hf.load_sparse(Path(tmp) / "b", model=load_bundled(args.model, pretrained=False))
            a, c = r.model.state_dict(), back.state_dict()
            exact = a.keys() == c.keys() and all(torch.equal(a[k], c[k]) for k in a)
        print(f"| {s:.0%} | {d} | {b} | {b / d:.3f} | {exact} |")


if __name__ == "__main__":
    main()
