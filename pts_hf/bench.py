"""Latency and weight memory of a model, dense vs sparse kernels (``pts-hf bench`` and the benchmark script).

Timing: dense and converted models run alternately (dense, sparse, sparse, dense, ...) so a change in machine
load hits both alike; ``warmup`` rounds are discarded and the median of ``repeats`` is reported (the minimum too).
The speed-up is the ratio of the two medians measured in the same run.
"""

from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pts_hf.kernels import run_model, use_sparse_kernels_
from pts_hf.kernels.csr import csr_nbytes

__all__ = ["bench_model", "format_bench", "model_weight_bytes", "text_inputs", "token_inputs"]


def _nbytes(t: torch.Tensor) -> int:
    if t.layout == torch.sparse_csr:
        return csr_nbytes(t)
    if t.layout != torch.strided:
        return 0
    return t.numel() * t.element_size()


def model_weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (sparse CSR weights counted by what they store), tied tensors once."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += _nbytes(t)
    return total


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _interleaved(models: dict[str, nn.Module], inputs: Any, repeats: int, warmup: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for i in range(warmup + repeats):
            order = list(models.items())
            for name, m in order if i % 2 == 0 else order[::-1]:  # alternate who runs first (cache warmth)
                _sync()
                start = time.perf_counter()
                run_model(m, inputs)
                _sync()
                if i >= warmup:
                    times[name].append(time.perf_counter() - start)
    return times


def bench_model(model: nn.Module, batches: dict[str, Any], backend: str = "auto", repeats: int = 20,
                warmup: int = 3, kernel_repeats: int = 9, min_sparsity: float = 0.5,
                margin: float = 0.05) -> dict[str, Any]:
    """For each labelled input batch: convert a copy of ``model`` with :func:`use_sparse_kernels_` on that batch
    (the choice depends on the shapes), then time dense vs converted end to end, interleaved.

    Returns a JSON-ready dict: per batch the dense and sparse median latency (ms), speed-up, per-layer choices;
    and the weight memory of the whole model and of the targeted layers, dense vs converted. ``model`` itself is
    not modified.
    """
    model = model.eval()
    out: dict[str, Any] = {"backend": backend, "repeats": repeats, "warmup": warmup,
                           "threads": torch.get_num_threads(), "torch": torch.__version__, "batches": {}}
    for label, inputs in batches.items():
        sparse = copy.deepcopy(model)
        report = use_sparse_kernels_(sparse, inputs, backend=backend, repeats=kernel_repeats, min_sparsity=min_sparsity,
                                     margin=margin)
        t = _interleaved({"dense": model, "sparse": sparse}, inputs, repeats, warmup)
        dense_ms, sparse_ms = statistics.median(t["dense"]) * 1e3, statistics.median(t["sparse"]) * 1e3
        out["batches"][label] = {
            "dense_ms": dense_ms, "sparse_ms": sparse_ms, "speedup": dense_ms / sparse_ms,
            "dense_min_ms": min(t["dense"]) * 1e3, "sparse_min_ms": min(t["sparse"]) * 1e3,
            "speedup_min": min(t["dense"]) / min(t["sparse"]),
            "converted": len(report.converted), "layers": len(report.layers),
            "choices": {la.name: la.choice for la in report.layers},
            "report": report.to_dict(),
            "weight_bytes_dense": model_weight_bytes(model), "weight_bytes_sparse": model_weight_bytes(sparse),
            "targeted_bytes_dense": report.dense_bytes, "targeted_bytes_sparse": report.bytes,
        }
        del sparse
    return out


def format_bench(result: dict[str, Any]) -> str:
    """The per-batch summary table (and, for the first batch with conversions, nothing more: JSON has the rest)."""
    lines = [f"{'batch':<12} {'dense ms':>9} {'sparse ms':>9} {'speedup':>8} {'converted':>10} "
             f"{'weights MiB dense→sparse':>26} {'targeted':>9}"]
    for label, b in result["batches"].items():
        mem = f"{b['weight_bytes_dense'] / 2**20:.2f} → {b['weight_bytes_sparse'] / 2**20:.2f}"
        tgt = b["targeted_bytes_sparse"] / max(b["targeted_bytes_dense"], 1)
        lines.append(f"{label:<12} {b['dense_ms']:9.2f} {b['sparse_ms']:9.2f} {b['speedup']:7.2f}x "
                     f"{b['converted']:>4}/{b['layers']:<5} {mem:>26} {tgt:8.3f}x")
    lines.append(f"median of {result['repeats']} runs after {result['warmup']} warm-up, dense and sparse "
                 f"interleaved, {result['threads']} thread(s), backend={result['backend']}")
    return "\n".join(lines)


def token_inputs(vocab_size: int, batch: int, seq_len: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids (latency does not depend on which tokens) with a full attention mask."""
    ids = torch.randint(5, vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def text_inputs(tokenizer: Any, path: str | Path, batch: int, seq_len: int) -> dict[str, torch.Tensor]:
    """``batch`` rows of ``seq_len`` tokens from a text file (one document per line, Latin-1 tolerated): each row
    is one line, padded/truncated to exactly ``seq_len`` (lines are cycled if the file has fewer)."""
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:  # e.g. gensim's Latin-1 test texts
        text = raw.decode("latin-1")
    lines = [s.strip() for s in text.splitlines() if s.strip()]
    if not lines:
        raise ValueError(f"text file {str(path)!r} holds no non-empty line")
    rows = [lines[i % len(lines)] for i in range(batch)]
    enc = tokenizer(rows, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
    return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
