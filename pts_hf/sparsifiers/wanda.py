"""Wanda: prune by |W|·‖X_j‖₂ within each output row; no weight update, no backward pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from pts_hf.config import help_field
from pts_hf.ops.nm import nm_mask
from pts_hf.ops.wanda import rowwise_prune_mask, wanda_scores
from pts_hf.pipeline import LayerStats
from pts_hf.sparsifiers.layerwise import LayerwiseConfig, LayerwiseSparsifier, PrunedLayer

__all__ = ["WandaConfig", "WandaSparsifier"]


@dataclass
class WandaConfig(LayerwiseConfig):
    method: ClassVar[str] = "wanda"

    allocation: str = help_field("uniform", "Per-layer allocation (Wanda: uniform; also erk, lamp, l2norm, owl).")


class WandaSparsifier(LayerwiseSparsifier):
    """Wanda (Sun et al. 2023) on Linear, HF Conv1D and (grouped) convolutions, block by block."""

    method: ClassVar[str] = "wanda"
    config_class: ClassVar[type[WandaConfig]] = WandaConfig
    statistics: ClassVar[frozenset[str]] = frozenset({"sq_sum"})

    def prune_weight(self, weight: torch.Tensor, stats: LayerStats | None, n_zero: int,
                     nm: tuple[int, int] | None) -> PrunedLayer:
        g, _, c = weight.shape
        sq = stats.sq_sum if stats is not None and stats.sq_sum is not None else \
            torch.ones(g, c, device=weight.device)
        scores = wanda_scores(weight, sq.to(weight.device))
        keep = nm_mask(scores, *nm) if nm is not None else rowwise_prune_mask(scores, n_zero)
        return PrunedLayer(weight * keep, keep)
