"""Activation-aware weight scores |W|·‖X_j‖₂ of a dense model, block by block (for OWL-style allocations)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pts_hf.ops.wanda import wanda_scores
from pts_hf.pipeline.sequential import run_pipeline
from pts_hf.pipeline.stats import LayerStats
from pts_hf.targets import Target

__all__ = ["activation_scores"]


@torch.no_grad()
def activation_scores(model: nn.Module, targets: list[Target], data: Any, *, device: Any = None,
                      progress: bool = False) -> dict[str, torch.Tensor]:
    """Per targeted tensor, Wanda's score |W_ij|·‖X_j‖₂ in the weight's own shape, from the dense model's
    activations on ``data`` (nothing is modified)."""
    out: dict[str, torch.Tensor] = {}

    def collect(ts: list[Target], stats: dict[str, LayerStats]) -> None:
        for t in ts:
            st = stats[t.tensor_fqn]
            layout = st.layout
            w = layout.to_gemm(t.weight.detach())
            sq = st.sq_sum if st.sq_sum is not None else torch.zeros(layout.groups, layout.columns)
            out[t.tensor_fqn] = layout.from_gemm(wanda_scores(w, sq.to(w.device))).cpu()

    report = run_pipeline(model, targets, data, frozenset({"sq_sum"}), collect, sequential=False, device=device,
                          progress=progress)
    for name in report.unused:  # no activation reached it: no outliers
        t = next(t for t in targets if t.tensor_fqn == name)
        out[name] = torch.zeros_like(t.weight, dtype=torch.float32)
    return out
