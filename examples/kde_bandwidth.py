"""How well does the FCPTS bridge's dr/dt = p(t) + p(−t) estimate the true derivative of a layer's sparsity?

For every layer of the bundled ResNet-20, at the threshold ERK gives it at the target sparsity, compare the KDE
estimate (normalised units |W|/RMS) with the "true" density of |w| at t from the full layer (central finite
difference of the exact fraction with a small window). Prints median and worst relative error per setting:

    python examples/kde_bandwidth.py --sparsity 0.9
"""

from __future__ import annotations

import argparse
import statistics

import torch

from pts_hf.models import load_bundled
from pts_hf.ops.allocation import erk
from pts_hf.ops.kde import gaussian_kde, resolve_bandwidth
from pts_hf.targets import discover_targets

SETTINGS = {"paper: n=100, h=0.5": (100, 0.5), "n=512, silverman": (512, "silverman"),
            "n=2048, silverman (default)": (2048, "silverman"), "n=2048, h=0.5": (2048, 0.5),
            "n=8192, silverman": (8192, "silverman")}


def true_density(z: torch.Tensor, t: float, window: float) -> float:
    a = z.abs()
    return float(((a > t - window) & (a <= t + window)).float().mean()) / (2 * window)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--repeats", type=int, default=20, help="random KDE sample draws per layer")
    args = p.parse_args()
    targets = discover_targets(load_bundled("resnet20-fmnist"))
    levels = erk([tuple(t.weight.shape) for t in targets], args.sparsity)
    g = torch.Generator().manual_seed(0)
    errors: dict[str, list[float]] = {k: [] for k in SETTINGS}
    for t, s in zip(targets, levels):
        z = t.weight.detach().reshape(-1)
        z = z / z.pow(2).mean().sqrt()
        if z.numel() < 1000 or s <= 0:
            continue
        thr = float(torch.quantile(z.abs(), s))
        truth = true_density(z, thr, window=0.05)
        for name, (n, bw) in SETTINGS.items():
            for _ in range(args.repeats):
                samples = z[torch.randperm(z.numel(), generator=g)[: min(n, z.numel())]]
                h = resolve_bandwidth(bw, samples)
                est = float(gaussian_kde(samples, torch.tensor([thr, -thr]), h).sum())
                errors[name].append(abs(est - truth) / truth)
    print(f"relative error of dr/dt at the ERK thresholds ({args.sparsity:.0%}), {len(errors[name])} draws:")
    print("| setting | median | 90th pct |\n| --- | --- | --- |")
    for name, errs in errors.items():
        errs.sort()
        print(f"| {name} | {statistics.median(errs):.3f} | {errs[int(0.9 * len(errs))]:.3f} |")


if __name__ == "__main__":
    main()
