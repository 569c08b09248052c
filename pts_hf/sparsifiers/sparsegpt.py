"""SparseGPT: OBS pruning with row updates from the damped inverse Hessian of each layer's inputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from pts_hf.config import check_count, check_positive, help_field
from pts_hf.ops.obs import sparsegpt_prune
from pts_hf.ops.wanda import wanda_keep_mask
from pts_hf.pipeline import LayerStats
from pts_hf.sparsifiers.layerwise import LayerwiseConfig, LayerwiseSparsifier, PrunedLayer

__all__ = ["SparseGPTConfig", "SparseGPTSparsifier", "sparsegpt_layer"]


@dataclass
class SparseGPTConfig(LayerwiseConfig):
    method: ClassVar[str] = "sparsegpt"

    allocation: str = help_field("uniform", "Per-layer allocation (SparseGPT: uniform; also erk, lamp, l2norm, owl).")
    blocksize: int = help_field(128, "Columns pruned and updated together (lazy batch updates).")
    dampening: float = help_field(0.01, "Hessian dampening λ as a fraction of its mean diagonal (raised 10× while "
                                        "the Hessian stays singular).")

    def validate(self) -> None:
        super().validate()
        check_count(self, "blocksize")
        check_positive(self, "dampening")


class SparseGPTSparsifier(LayerwiseSparsifier):
    """SparseGPT (Frantar & Alistarh 2023) on Linear, HF Conv1D and (grouped, depthwise) convolutions."""

    method: ClassVar[str] = "sparsegpt"
    config_class: ClassVar[type[SparseGPTConfig]] = SparseGPTConfig
    statistics: ClassVar[frozenset[str]] = frozenset({"hessian"})

    def prune_weight(self, weight: torch.Tensor, stats: LayerStats | None, n_zero: int,
                     nm: tuple[int, int] | None) -> PrunedLayer:
        o = self.method_config
        return sparsegpt_layer(weight, stats, n_zero, nm, o.blocksize, o.dampening)


def sparsegpt_layer(weight: torch.Tensor, stats: LayerStats | None, n_zero: int, nm: tuple[int, int] | None,
                    blocksize: int, dampening: float) -> PrunedLayer:
    """SparseGPT on one GEMM-view layer; without a Hessian (``step()`` outside calibration) magnitude within
    rows, no update."""
    if stats is None or stats.hessian is None:
        keep = wanda_keep_mask(weight, None, n_zero, nm)
        return PrunedLayer(weight * keep, keep)
    w, keep = sparsegpt_prune(weight, stats.hessian.to(weight.device), None if nm else n_zero, nm,
                              blocksize, dampening)
    return PrunedLayer(w, keep)
