"""Helpers shared by the benchmark scripts: variant strings, machine description, Markdown blocks, UniPTS on
given per-layer sparsities."""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pts_hf.calibration import CalibrationData
from pts_hf.sparsifiers import get_sparsifier_class

ROOT = Path(__file__).resolve().parent.parent

_WORDS = {"true": True, "false": False, "none": None, "null": None}


def parse_value(raw: str) -> Any:
    """``"200"`` → 200, ``"0.5"`` → 0.5, ``"true"``/``"False"`` → bool, ``"None"``/``"null"`` → None, else the
    string itself (e.g. ``"2:4"``, ``"owl"``)."""
    if raw.lower() in _WORDS:
        return _WORDS[raw.lower()]
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``"method:key=value,key=value"`` → ``("method", {key: value})``; also ``method:k=v:k2=v2``.

    A value may itself hold a colon (``wanda:mask_structure=2:4``): only ``:``/``,`` followed by ``name=`` start a
    new option.
    """
    method, _, rest = text.partition(":")
    if not method:
        raise ValueError(f"variant {text!r} has no method name; write e.g. 'magnitude:allocation=erk'")
    options: dict[str, Any] = {}
    for item in filter(None, re.split(r"[,:](?=[A-Za-z_][A-Za-z0-9_]*=)", rest)):
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"variant {text!r}: option {item!r} is not key=value")
        options[key] = parse_value(raw)
    return method, options


def machine(threads: int) -> str:
    """CPU model, thread count and torch version, for the benchmark tables."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({os.cpu_count()} cores), {threads} thread(s), torch {torch.__version__}"


def write_markdown(path: Path, tag: str, text: str) -> None:
    """Replace (or append) the block between ``<!-- bench:tag -->`` and ``<!-- /bench:tag -->``; the rest of the
    file is kept."""
    start, end = f"<!-- bench:{tag} -->", f"<!-- /bench:{tag} -->"
    block = f"{start}\n{text}\n{end}"
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in old:
        old = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, old, flags=re.S)
    else:
        old = old.rstrip() + f"\n\n{block}\n"
    path.write_text(old)


def combine_tags(tags: list[str], tag: str, markdown: Callable[[list[dict], dict], str], write: bool,
                 relabel: list[str] | None = None) -> str:
    """Merge the rows of ``benchmarks/<t>.json`` for every ``t`` in ``tags`` (one dense row per model), print the
    table ``markdown(rows, meta)`` and, with ``write``, save ``benchmarks/<tag>.json`` and its BENCHMARKS.md block.

    ``relabel``: ``"TAG:VARIANT->LABEL"`` entries naming a row of one run by the options it ran with, e.g. after a
    default changed (``acc-x:unipts->unipts:feature_weight=1``); they are listed in the table's command line."""
    if relabel and tag in tags:  # the merged rows would replace the raw ones they were relabelled from
        raise SystemExit(f"--relabel writes relabelled rows: give --tag a new name, not one of {tags}")
    renames = {}
    for entry in relabel or []:
        where, _, label = entry.partition("->")
        src, _, variant = where.partition(":")
        if not (src and variant and label) or src not in tags:
            raise SystemExit(f"--relabel {entry!r}: expected TAG:VARIANT->LABEL with TAG one of {tags}")
        renames[(src, variant)] = label
    rows: list[dict] = []
    metas = []
    for t in tags:
        data = json.loads((ROOT / "benchmarks" / f"{t}.json").read_text())
        metas.append(data["meta"])
        for r in data["rows"]:
            if r["variant"] == "dense" and any(x["variant"] == "dense" and x["model"] == r["model"] for x in rows):
                continue
            rows.append({**r, "variant": renames.get((t, r["variant"]), r["variant"])})
    command = " ; ".join(m["command"] for m in metas)
    if renames:
        command += " (rows relabelled by the options they ran with: " + ", ".join(relabel or []) + ")"
    meta = {**metas[0], "command": command, "date": max(m["date"] for m in metas)}
    text = markdown(rows, meta)
    print(text)
    if write:
        save_results(tag, meta, rows, text)
    return text


def save_partial(tag: str, rows: list[dict]) -> None:
    """``benchmarks/<tag>.partial.json``: the cells finished so far, kept if a long run is interrupted."""
    (ROOT / "benchmarks").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / f"{tag}.partial.json").write_text(json.dumps(rows, indent=2))


def save_results(tag: str, meta: dict, rows: list[dict], text: str) -> None:
    """``benchmarks/<tag>.json`` (the finished run replaces its ``.partial.json``) and the BENCHMARKS.md block."""
    (ROOT / "benchmarks").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / f"{tag}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (ROOT / "benchmarks" / f"{tag}.partial.json").unlink(missing_ok=True)
    write_markdown(ROOT / "BENCHMARKS.md", tag, text)


def add_output_args(p: argparse.ArgumentParser, default_tag: str) -> None:
    """``--tag``, ``--no-write``, ``--combine`` and ``--relabel``: where a benchmark's table goes, or which earlier
    runs to merge into one table instead of running."""
    p.add_argument("--tag", default=default_tag, help="table name in BENCHMARKS.md and benchmarks/<tag>.json")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--combine", nargs="+", metavar="TAG",
                   help="run nothing: merge benchmarks/<TAG>.json of earlier runs into one table under --tag")
    p.add_argument("--relabel", nargs="+", metavar="TAG:VARIANT->LABEL",
                   help="with --combine: name a run's rows by the options they ran with (after a default changed)")


def run_or_combine(args: argparse.Namespace, script: str, run: Callable[[argparse.Namespace], list[dict]],
                   markdown: Callable[[list[dict], dict], str], meta: Callable[[argparse.Namespace], dict]) -> None:
    """A benchmark script's main flow: with ``--combine`` merge earlier runs; else ``run(args)``, print the table
    and (unless ``--no-write``) save it. ``meta(args)`` adds the script's own fields to command and date."""
    if args.combine:
        combine_tags(args.combine, args.tag, markdown, write=not args.no_write, relabel=args.relabel)
        return
    start = time.time()
    rows = run(args)
    info = {"command": f"python examples/{script} " + " ".join(sys.argv[1:]), **meta(args),
            "date": dt.date.today().isoformat(), "eval": args.eval_samples or 10000,
            "total_seconds": round(time.time() - start, 1)}
    text = markdown(rows, info)
    print(text)
    if not args.no_write:
        save_results(args.tag, info, rows, text)


def unipts_prepared_on(dense: torch.nn.Module, levels: dict[str, float], **options: Any
                       ) -> tuple[torch.nn.Module, Any]:
    """A copy of ``dense`` prepared by a UniPTS sparsifier with every tensor's sparsity given (torch.ao per-tensor
    ``sparsity_level``), and the sparsifier."""
    model = copy.deepcopy(dense)
    sp = get_sparsifier_class("unipts")(**options)
    sp.show_progress = False
    sp.prepare(model, config=[{"tensor_fqn": k, "sparsity_level": v} for k, v in levels.items()])
    return model, sp


def unipts_trained_on(dense: torch.nn.Module, calib: torch.Tensor, levels: dict[str, float], **options: Any
                      ) -> torch.nn.Module:
    """UniPTS through its torch.ao interface on those per-tensor sparsities, trained on ``calib`` (batches of 64),
    masks squashed."""
    model, sp = unipts_prepared_on(dense, levels, **options)
    sp.calibrate(model, CalibrationData(calib, 64))
    sp.squash_mask()
    return model
