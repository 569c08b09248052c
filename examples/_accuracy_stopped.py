"""Bookkeeping for ``accuracy_benchmark.py`` runs stopped before they ended (deadline): the completed cells come
from ``benchmarks/<tag>.partial.json``, the interrupted cell from the per-seed lines the script printed after its
last completed cell (the log is copied to ``benchmarks/logs/<tag>.log``). Used for the issue-13 tables::

    python examples/_accuracy_stopped.py TAG LOG MODEL VARIANT SPARSITY CALIB SEEDS GFLOP "COMMAND"
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import sys
from pathlib import Path

from _bench_common import ROOT


def finalize(tag: str, log: str, cell: tuple, command: str, seeds: int, ref_gflop: float) -> None:
    part = ROOT / "benchmarks" / f"{tag}.partial.json"
    rows = json.loads(part.read_text()) if part.exists() else []
    lines = Path(log).read_text().splitlines()
    done = [i for i, line in enumerate(lines) if " calib " in line and "top-1" in line]
    tail = lines[(done[-1] + 1) if done else 0:]
    runs = []
    for line in tail:
        m = re.match(r"\s+seed (\d+): top-1 ([\d.]+)%\s+([\d.]+) CPU s\s+ratio (\d+)", line)
        if m:
            runs.append({"seed": int(m[1]), "top1": float(m[2]), "cpu_seconds": float(m[3]), "ratio": float(m[4]),
                         "gflop": ref_gflop, "source": "per-seed log line; run stopped at the deadline"})
    model, variant, sparsity, calib = cell
    if runs:
        top1 = [r["top1"] for r in runs]
        achieved = next((r["achieved"] for r in rows if r.get("variant") == variant and "achieved" in r), sparsity)
        rows.append({"model": model, "variant": variant, "sparsity": sparsity, "calib": calib,
                     "top1": statistics.median(top1), "top1_min": min(top1), "top1_max": max(top1),
                     "ratio": statistics.median(r["ratio"] for r in runs), "gflop": ref_gflop, "flop_ratio": None,
                     "achieved": achieved, "runs": runs,
                     "note": f"{len(runs)} of {seeds} seeds (stopped at the deadline); GFLOP of the same variant "
                             "at another level"})
    meta = {"command": f"{command} (stopped at the deadline; last cell: {len(runs)} of {seeds} seeds)",
            "machine": "shared 2-core CPU box, AMD EPYC (2 cores), 1 thread(s), torch 2.14.1+cu130",
            "date": "2026-11-21", "calib_seed": 0, "seeds": seeds, "eval": 10000,
            "vary_calib": "--vary-calib" in command}
    (ROOT / "benchmarks" / f"{tag}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    part.unlink(missing_ok=True)
    (ROOT / "benchmarks" / "logs").mkdir(exist_ok=True)
    shutil.copy(log, ROOT / "benchmarks" / "logs" / f"{tag}.log")
    print(tag, [(r["variant"], r["sparsity"], r["calib"], r["top1"], len(r["runs"])) for r in rows
                if r["variant"] != "dense"])


if __name__ == "__main__":
    tag, log, model, variant, sparsity, calib, seeds, gflop, command = sys.argv[1:10]
    finalize(tag, log, (model, variant, float(sparsity), int(calib)), command, int(seeds), float(gflop))
