"""Wanda: prune by |W|·‖X_j‖₂ within each output row; no weight update, no backward pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from pts_hf.config import help_field
from pts_hf.ops.wanda import wanda_keep_mask
from pts_hf.pipeline import LayerStats
from pts_hf.sparsifiers.layerwise import LayerwiseConfig, LayerwiseSparsifier, PrunedLayer

__all__ = ["WandaConfig", "WandaSparsifier", "wanda_layer"]


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
        return wanda_layer(weight, stats, n_zero, nm)


def wanda_layer(weight: torch.Tensor, stats: LayerStats | None, n_zero: int,
                nm: tuple[int, int] | None) -> PrunedLayer:
    """Wanda's mask for one GEMM-view layer (by |W| within rows when there are no input norms); weights kept."""
    keep = wanda_keep_mask(weight, None if stats is None else stats.sq_sum, n_zero, nm)
    return PrunedLayer(weight * keep, keep)
