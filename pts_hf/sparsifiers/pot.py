"""POT (Lazarevich et al. 2021, OpenVINO; FCPTS's and UniPTS's baseline): magnitude masks at an allocation,
per-channel weight and bias correction, then per-layer output reconstruction with Adam.

Reconstruction minimises E‖W_s x + b_s − (W x + b)‖² over the kept weights and the bias on the layer's input
statistics (H = E[xxᵀ], μ = E[x]), which is what POT's Adam loop on stored activations optimises, without storing
activations. ``sequential=False`` is POT's independent mode (dense inputs for every layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from pts_hf.config import help_field
from pts_hf.ops.masks import topk_mask
from pts_hf.ops.nm import nm_mask
from pts_hf.ops.reconstruction import bias_correction, channel_norm_correction, reconstruct_layer
from pts_hf.pipeline import LayerStats
from pts_hf.sparsifiers.layerwise import LayerwiseConfig, LayerwiseSparsifier, PrunedLayer

__all__ = ["POTConfig", "POTSparsifier"]


@dataclass
class POTConfig(LayerwiseConfig):
    method: ClassVar[str] = "pot"

    allocation: str = help_field("l2norm", "Per-layer allocation (POT: 'l2norm', one threshold on |W|/‖W‖; or erk, "
                                           "uniform, lamp, owl).")
    weight_correction: bool = help_field(True, "Rescale each output channel's kept weights to the dense L2 norm.")
    bias_correction: bool = help_field(True, "Shift the bias by (W − W_s)·E[x] (layers that have a bias).")
    recon_steps: int = help_field(200, "Adam steps of per-layer output reconstruction (0 = off).")
    recon_lr: float = help_field(1e-2, "Adam learning rate of the reconstruction, relative to the layer's weight RMS.")

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.recon_steps, int) or isinstance(self.recon_steps, bool) or self.recon_steps < 0:
            raise ValueError(f"recon_steps must be a non-negative integer, got {self.recon_steps!r}")
        if not self.recon_lr > 0:
            raise ValueError(f"recon_lr must be > 0, got {self.recon_lr!r}")


class POTSparsifier(LayerwiseSparsifier):
    """POT's sparsity pipeline as a layer-wise pts_hf method."""

    method: ClassVar[str] = "pot"
    config_class: ClassVar[type[POTConfig]] = POTConfig
    statistics: ClassVar[frozenset[str]] = frozenset({"hessian", "mean"})

    def prune_weight(self, weight: torch.Tensor, stats: LayerStats | None, n_zero: int,
                     nm: tuple[int, int] | None) -> PrunedLayer:
        o = self.method_config
        dense = weight.float()
        keep = nm_mask(dense.abs(), *nm) if nm is not None else topk_mask(dense.abs(), dense.numel() - n_zero)
        sparse = dense * keep
        if o.weight_correction:
            sparse = channel_norm_correction(dense, sparse)
        if stats is None or stats.hessian is None:
            return PrunedLayer(sparse.to(weight.dtype), keep)
        h = stats.hessian.to(dense.device).float()
        mean = None if stats.mean is None else stats.mean.to(dense.device).float()
        delta = bias_correction(dense, sparse, mean) if (o.bias_correction and mean is not None) else None
        sparse, delta = reconstruct_layer(dense, sparse, keep, h, mean, delta, steps=o.recon_steps, lr=o.recon_lr)
        return PrunedLayer(sparse.to(weight.dtype), keep, delta)
