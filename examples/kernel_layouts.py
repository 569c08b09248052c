"""Which CPU sparse layout/orientation is fastest for one Linear layer (random unstructured zeros)?

Times ``y = x Wᵀ + b`` for MiniLM's layer shapes, dense vs torch's sparse kernels: CSR with the sparse operand
on the left (``W @ xᵀ``, what ``pts_hf.kernels.CSRLayer`` uses), the same on 128-token chunks, int64 vs int32
indices, CSR on the right (``x @ Wᵀ``), COO (``torch.sparse.addmm``) and BSR 16×16 / 32×32 blocks. Candidates run
interleaved (order reversed every round); the table gives dense time / candidate time from the fastest of
``--repeats`` runs (>1 = faster than dense).

    python examples/kernel_layouts.py --threads 1
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time
import warnings
from collections.abc import Callable

import torch


def _time(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    runs: dict[str, list[float]] = {k: [] for k in fns}
    items = list(fns.items())
    with torch.inference_mode():
        for i in range(repeats + 2):
            for name, fn in items if i % 2 == 0 else items[::-1]:
                start = time.perf_counter()
                fn()
                if i >= 2:
                    runs[name].append(time.perf_counter() - start)
    return {k: min(v) for k, v in runs.items()}


def candidates(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    csr = w.to_sparse_csr()
    csr32 = torch.sparse_csr_tensor(csr.crow_indices().int(), csr.col_indices().int(), csr.values(), csr.shape,
                                    check_invariants=False)
    csr_t = w.t().contiguous().to_sparse_csr()
    coo = w.to_sparse().coalesce()
    bias_col = b[:, None]

    def chunked() -> torch.Tensor:
        return torch.cat([torch.addmm(bias_col, csr32, part.t().contiguous()) for part in x.split(128)], 1).t()

    fns: dict[str, Callable[[], object]] = {
        "dense": lambda: torch.nn.functional.linear(x, w, b),
        "csr W@xT int64": lambda: torch.addmm(bias_col, csr, x.t()).t(),
        "csr W@xT int32": lambda: torch.addmm(bias_col, csr32, x.t()).t(),
        "csr W@xT 128-chunks": chunked,
        "csr x@WT": lambda: x @ csr_t + b,
        "coo addmm": lambda: torch.sparse.addmm(bias_col, coo, x.t()).t(),
    }
    for bs in (16, 32):
        bsr = w.to_sparse_bsr((bs, bs))
        fns[f"bsr {bs}"] = lambda bsr=bsr: torch.addmm(bias_col, bsr, x.t()).t()
    return fns


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=["1536x384", "384x1536", "384x384"], help="OUTxIN")
    p.add_argument("--tokens", nargs="+", type=int, default=[128, 4096])
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.8, 0.9, 0.95])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Sparse")
    g = torch.Generator().manual_seed(0)
    lines, header = [], None
    for shape in args.shapes:
        out_f, in_f = (int(v) for v in shape.split("x"))
        for tokens in args.tokens:
            for s in args.sparsities:
                w = torch.randn(out_f, in_f, generator=g)
                w[torch.rand(w.shape, generator=g) < s] = 0
                x, b = torch.randn(tokens, in_f, generator=g), torch.randn(out_f, generator=g)
                t = _time(candidates(w, b, x), args.repeats)
                names = [k for k in t if k != "dense"]
                if header is None:
                    header = names
                    lines.append("| layer (out×in) | tokens | sparsity | dense ms | " + " | ".join(names) + " |")
                    lines.append("| --- | --- | --- | --- |" + " --- |" * len(names))
                lines.append(f"| {shape} | {tokens} | {s:.0%} | {t['dense'] * 1e3:.2f} | "
                             + " | ".join(f"{t['dense'] / t[k]:.2f}" for k in names) + " |")
                print(lines[-1], flush=True)
    text = (f"Command: `python examples/kernel_layouts.py {' '.join(argv) if argv else ''}`  \n"
            f"Machine: {platform.machine()}, MKL {torch.backends.mkl.is_available()}, {args.threads} thread(s), "
            f"torch {torch.__version__}; date {datetime.date.today().isoformat()}; dense time / candidate time "
            f"(fastest of {args.repeats} interleaved runs).\n\n" + "\n".join(lines))
    print(text)
    return text


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
