"""Scale: a Llama-architecture model built from a config (random weights), sparsified on this machine.

    python examples/scale_benchmark.py --variants fcpts-block sparsegpt fcpts:steps=2 --tag scale-1b

Each run is a fresh subprocess that builds the model (``--hidden``/``--layers``/``--intermediate``, default
≈1.1B parameters, TinyLlama's shape), makes ``--sequences`` random token sequences of ``--length`` tokens as the
calibration data, and times ``pts_hf.sparsify(model, batches, method=..., sparsity=0.5, inplace=True)``: wall and
CPU seconds, peak RSS of the process (``VmHWM``, reset after the model is built) and its increase over the RSS
with the model loaded (Δ). Quality is not measured (random weights). ``--device cuda`` moves one block at a time
to the GPU (layer-wise methods, ``device=`` option) and records ``torch.cuda.max_memory_allocated``. A run that
fails (out of memory, timeout) is a row with its error. Raw rows: ``benchmarks/<tag>.json``; the table between
``<!-- bench:scale -->`` markers in BENCHMARKS.md is rebuilt from every ``benchmarks/scale*.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _bench_common import ROOT, machine, parse_variant, write_markdown
from _text_eval import current_rss_mib, peak_rss_mib, reset_peak_rss

HERE = Path(__file__).resolve().parent


def build(args: dict) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=args["hidden"], intermediate_size=args["intermediate"],
                      num_hidden_layers=args["layers"], num_attention_heads=args["heads"],
                      num_key_value_heads=args["kv_heads"], vocab_size=args["vocab"], max_position_embeddings=2048)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def worker(job_path: Path) -> None:
    job = json.loads(job_path.read_text())
    torch.set_num_threads(job["threads"])
    result: dict[str, Any]
    try:
        import pts_hf

        model = build(job)
        params = sum(p.numel() for p in model.parameters())
        gen = torch.Generator().manual_seed(0)
        batches = [{"input_ids": torch.randint(0, job["vocab"], (1, job["length"]), generator=gen),
                    "attention_mask": torch.ones(1, job["length"], dtype=torch.long)}
                   for _ in range(job["sequences"])]
        method, options = parse_variant(job["variant"])
        if job["device"] != "cpu" and method != "fcpts":
            options.setdefault("device", job["device"])
        reset = reset_peak_rss()
        loaded = current_rss_mib()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        use0 = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        r = pts_hf.sparsify(model, batches, method=method, sparsity=0.5, inplace=True, progress=False,
                            targets=[r"re:model\.layers\."], **options)
        seconds = time.perf_counter() - start
        use1 = resource.getrusage(resource.RUSAGE_SELF)
        peak = peak_rss_mib()
        result = {"params": params, "seconds": seconds,
                  "cpu_seconds": use1.ru_utime + use1.ru_stime - use0.ru_utime - use0.ru_stime,
                  "rss_loaded_mib": loaded, "peak_rss_mib": peak, "delta_rss_mib": peak - loaded,
                  "peak_reset_after_load": reset, "achieved": r.global_sparsity}
        if torch.cuda.is_available():
            result["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    except Exception as e:  # the row says why
        import traceback

        traceback.print_exc()
        result = {"error": f"{type(e).__name__}: {e}"[:500]}
    job_path.with_suffix(".result.json").write_text(json.dumps(result))


def run_job(job: dict, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="pts_hf-scale-") as tmp:
        path = Path(tmp) / "job.json"
        path.write_text(json.dumps(job))
        env = {**os.environ, "OMP_NUM_THREADS": str(job["threads"]),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), str(ROOT), os.environ.get("PYTHONPATH")]))}
        try:
            proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(path)], env=env,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f}s"}
        out = path.with_suffix(".result.json")
        if out.exists():
            return json.loads(out.read_text())
        why = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
        return {"error": f"{why} (out of memory?) {(proc.stderr or '').strip()[-300:]}"}


def markdown(files: list[dict]) -> str:
    lines = ["| model | variant | device | params | seconds | CPU s | peak RSS MiB | Δ MiB | CUDA max MiB | "
             "achieved | run |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for f in files:
        m = f["meta"]
        shape = f"Llama {m['layers']}×{m['hidden']} (ffn {m['intermediate']}), {m['sequences']}×{m['length']} tok"
        for row in f["rows"]:
            r = row["result"]
            if "error" in r:
                lines.append(f"| {shape} | `{row['variant']}` | {m['device']} | | | | | | | error: {r['error'][:120]} "
                             f"| {m['date']} |")
                continue
            cuda = f"{r['cuda_max_allocated_mib']:.0f}" if "cuda_max_allocated_mib" in r else "–"
            lines.append(f"| {shape} | `{row['variant']}` | {m['device']} | {r['params'] / 1e9:.2f} B | "
                         f"{r['seconds']:.0f} | {r['cpu_seconds']:.0f} | {r['peak_rss_mib']:.0f} | "
                         f"{r['delta_rss_mib']:.0f} | {cuda} | {r['achieved']:.4f} | {m['date']} |")
    m = files[-1]["meta"] if files else {}
    lines += ["", f"Machine: {m.get('machine', '?')}. Command: `{m.get('command', '')}`."]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["fcpts-block", "sparsegpt"])
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--intermediate", type=int, default=5632)
    p.add_argument("--layers", type=int, default=22)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--sequences", type=int, default=4)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--timeout", type=float, default=7200)
    p.add_argument("--tag", default="scale")
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker)
        return
    out_dir = ROOT / "benchmarks"
    if not args.table_only:
        meta = {"hidden": args.hidden, "intermediate": args.intermediate, "layers": args.layers,
                "heads": args.heads, "kv_heads": args.kv_heads, "vocab": args.vocab, "sequences": args.sequences,
                "length": args.length, "threads": args.threads, "device": args.device,
                "date": dt.date.today().isoformat(), "machine": machine(args.threads),
                "command": "python examples/scale_benchmark.py " + " ".join(sys.argv[1:])}
        rows = []
        for variant in args.variants:
            job = {**{k: v for k, v in meta.items() if k not in ("date", "machine", "command")}, "variant": variant}
            res = run_job(job, args.timeout)
            print(variant, json.dumps(res), flush=True)
            rows.append({"variant": variant, "result": res})
            out_dir.mkdir(exist_ok=True)
            (out_dir / f"{args.tag}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    files = [json.loads(f.read_text()) for f in sorted(out_dir.glob("scale*.json"))]
    table = markdown(files)
    write_markdown(ROOT / "BENCHMARKS.md", "scale", table)
    print(table)


if __name__ == "__main__":
    main()
