"""``pts-hf bench MODEL``: end-to-end latency and weight memory, dense vs sparse kernels (registered by cli.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_bench_parser", "cmd_bench"]


def add_bench_parser(sub: Any) -> None:
    from pts_hf.cli import _positive  # one integer parser for every subcommand
    from pts_hf.kernels import BACKENDS

    p = sub.add_parser(
        "bench", help="latency and weight memory, dense vs sparse kernels",
        description="Time MODEL end to end, dense against a copy converted by pts_hf.use_sparse_kernels_ (each "
                    "layer keeps the fastest of dense / CSR / 2:4 measured on the batch's shapes), at each batch "
                    "size; print latency (median of --repeats after --warmup, dense and sparse interleaved), "
                    "weight memory and the per-layer choices.")
    p.add_argument("model", help="bundled name (resnet20-fmnist, vit-fmnist, mobilenet-fmnist), "
                                 "a folder (HF config.json or a "
                                 "pts-hf output) or a timm name")
    p.add_argument("--data", help="image models: 'fashion-mnist' or a folder of class sub-folders; text models: a "
                                  "text file (one document per line). Default: random inputs of the right shape "
                                  "(latency does not depend on the values)")
    p.add_argument("--batch-sizes", type=_positive, nargs="+", default=[1, 32], help="batch sizes to time")
    p.add_argument("--seq-len", type=_positive, default=128, help="tokens per sequence (text models)")
    p.add_argument("--repeats", type=_positive, default=20, help="timed runs per model and batch (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    p.add_argument("--threads", type=_positive, help="torch CPU threads (default: torch's)")
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="kernel choice: auto (fastest measured), "
                                                                       "or force csr / semi_structured / dense")
    p.add_argument("--min-sparsity", type=float, default=0.5, help="auto: layers below this stay dense untimed")
    p.add_argument("--json", type=Path, help="also write the full result (per-layer times and bytes) here")
    p.add_argument("--no-layers", action="store_true", help="do not print the per-layer choice tables")


def _is_text(loaded: Any) -> bool:
    config = getattr(loaded.model, "config", None)
    return loaded.kind == "hf" and hasattr(config, "vocab_size") and not hasattr(config, "num_channels")


def _batches(args: argparse.Namespace, loaded: Any) -> dict[str, Any]:
    import torch

    from pts_hf.bench import text_inputs, token_inputs
    from pts_hf.sources import SpecError, load_images

    out: dict[str, Any] = {}
    if _is_text(loaded):
        tokenizer = None
        if args.data is not None:
            if not Path(args.data).is_file():
                raise SpecError(f"--data {args.data!r}: a text model needs a text file (one document per line)")
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(args.model)
        for b in args.batch_sizes:
            label = f"{b}x{args.seq_len}"
            out[label] = (text_inputs(tokenizer, args.data, b, args.seq_len) if tokenizer is not None
                          else token_inputs(loaded.model.config.vocab_size, b, args.seq_len))
        return out
    spec = loaded.inputs
    n = max(args.batch_sizes)
    if args.data is not None:
        images = load_images(args.data, "test", spec, n=n).tensors[0]
        if len(images) < n:
            images = images.repeat((n + len(images) - 1) // len(images), 1, 1, 1)
    else:
        images = torch.randn(n, spec.channels, spec.size, spec.size, generator=torch.Generator().manual_seed(0))
    for b in args.batch_sizes:
        out[f"{b}x{spec.channels}x{spec.size}x{spec.size}"] = images[:b]
    return out


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from pts_hf.bench import bench_model, format_bench
    from pts_hf.kernels import run_model
    from pts_hf.report import write_json_atomic
    from pts_hf.sources import SpecError, resolve_model

    if args.warmup < 0:
        raise SpecError(f"--warmup must be ≥ 0, got {args.warmup}")
    if args.backend == "semi_structured" and not torch.cuda.is_available():
        raise SpecError("--backend semi_structured needs a CUDA GPU (2:4 kernels) and none is available; "
                        "available here: auto, csr, dense")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    loaded = resolve_model(args.model)
    batches = _batches(args, loaded)
    first = next(iter(batches.values()))
    try:
        with torch.inference_mode():
            run_model(loaded.model, first)
    except Exception as e:
        raise SpecError(f"the model cannot run the bench inputs ({type(e).__name__}: {e}); check --data / "
                        "--seq-len") from e
    try:
        result = bench_model(loaded.model, batches, backend=args.backend, repeats=args.repeats, warmup=args.warmup,
                             min_sparsity=args.min_sparsity)
    except RuntimeError as e:  # e.g. semi_structured without CUDA
        raise SpecError(str(e)) from e
    result.update({"model": args.model, "command": "pts-hf " + " ".join(sys.argv[1:])})
    print(f"pts-hf bench {args.model}: backend {args.backend}")
    if not args.no_layers:
        for label, b in result["batches"].items():
            print(f"\n[{label}] per-layer choice")
            print(_layer_table(b["report"]))
        print()
    print(format_bench(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.json, result)
        print(f"wrote {args.json}")
    return 0


def _layer_table(report: dict[str, Any]) -> str:
    from pts_hf.kernels.convert import KernelReport, LayerKernel

    layers = [LayerKernel(**{**la, "shape": tuple(la["shape"])}) for la in report["layers"]]
    text = KernelReport(report["backend"], layers).summary()
    e2e = report.get("end_to_end_ms")
    if e2e:
        text += f"\nwhole model while choosing: dense {e2e['dense']:.2f} ms, converted {e2e['converted']:.2f} ms"
    return text

