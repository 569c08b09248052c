"""Run reports: ``report.json``, the per-layer allocation chart and the terminal table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["format_layer_table", "make_report", "plot_allocation", "write_json_atomic"]


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def make_report(result: Any, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``report.json`` of a :class:`~pts_hf.api.SparsifyResult`: its run record (the sidecar's schema, with the
    step history) plus ``extra`` (what the caller measured: accuracies, the command, ...)."""
    return result.record.to_report(extra)


def plot_allocation(report: dict[str, Any], path: Path, compare: dict[str, dict[str, float]] | None = None) -> None:
    """Bar chart of per-layer sparsity (like FCPTS Fig. 5); ``compare`` adds other allocations as outlines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["layers"])
    values = [report["layers"][n]["sparsity"] for n in names]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(names) + 2), 4.0))
    xs = range(len(names))
    ax.bar(xs, values, color="#4477aa", label=f"{report['method']} (global {report['global_sparsity']:.3f})")
    initial = [report["layers"][n].get("initial_sparsity") for n in names]
    series = dict(compare or {})
    if all(v is not None for v in initial) and initial != values:
        series.setdefault("initial allocation", dict(zip(names, initial)))
    seed = [report["layers"][n].get("allocation_sparsity") for n in names]
    if all(v is not None for v in seed):
        allocation = (report.get("config") or {}).get("allocation", "allocation")
        series.setdefault(f"{allocation} (same target)", dict(zip(names, seed)))
    for (label, vals), color in zip(series.items(), ("#ee6677", "#228833", "#ccbb44")):
        ax.step(list(xs), [vals.get(n, float("nan")) for n in names], where="mid", color=color, label=label)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([n.removesuffix(".weight") for n in names], rotation=90, fontsize=6)
    ax.set_ylim(0, 1)
    ax.set_ylabel("sparsity")
    ax.set_title(f"per-layer sparsity, target {report['target_sparsity']}", pad=22)
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_layer_table(report: dict[str, Any]) -> str:
    layers = report["layers"]
    width = max([5, *(len(n) for n in layers)])
    lines = [f"{'layer':<{width}}  {'numel':>9}  {'sparsity':>8}  {'initial':>8}"]
    for n, d in layers.items():
        init = d.get("initial_sparsity")
        lines.append(f"{n:<{width}}  {d['numel']:>9}  {d['sparsity']:>8.4f}  "
                     f"{'' if init is None else f'{init:.4f}':>8}")
    total = sum(d["numel"] for d in layers.values())
    lines.append(f"{'global':<{width}}  {total:>9}  {report['global_sparsity']:>8.4f}")
    lines.append(f"method {report['method']}, target {report['target_sparsity']}, {report['seconds']} s")
    for k in ("dense_top1", "sparse_top1"):
        if k in report:
            lines.append(f"{k}: {report[k]:.2f}%")
    return "\n".join(lines)
