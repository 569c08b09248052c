"""Magnitude pruning at any allocation, with optional BatchNorm re-estimation (the fair baseline)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from pts_hf.calibration import recalibrate_batchnorm
from pts_hf.config import SparsityConfig, help_field
from pts_hf.ops.masks import magnitude_mask
from pts_hf.parametrize import FixedMask, PTSParametrization
from pts_hf.record import MethodOutcome
from pts_hf.sparsifiers.base import PTSSparsifier

__all__ = ["MagnitudeConfig", "MagnitudeSparsifier"]


@dataclass
class MagnitudeConfig(SparsityConfig):
    method: ClassVar[str] = "magnitude"

    bn_batches: int | None = help_field(None, "At most this many batches for BatchNorm re-estimation (None = all).")

    def validate(self) -> None:
        super().validate()
        if self.bn_batches is not None and self.bn_batches < 1:
            raise ValueError(f"bn_batches must be ≥ 1 or None, got {self.bn_batches!r}")


class MagnitudeSparsifier(PTSSparsifier):
    """Keep the largest |W| of each tensor at its allocated ``sparsity_level``.

    ``MagnitudeSparsifier(sparsity=0.9, allocation="l2norm")`` is POT's "L2Norm" allocation;
    ``allocation="erk"`` its ERK variant (without POT's per-layer reconstruction).
    """

    method: ClassVar[str] = "magnitude"
    config_class: ClassVar[type[SparsityConfig]] = MagnitudeConfig

    def make_parametrization(self, group: dict[str, Any], weight: torch.Tensor) -> PTSParametrization:
        return FixedMask(torch.ones_like(weight, dtype=torch.bool))

    def update_mask(self, module: nn.Module, tensor_name: str, n_zero: int | None = None, **kwargs: Any) -> None:
        p = module.parametrizations[tensor_name]
        w = p.original
        group = {"module": module, "tensor_name": tensor_name, **kwargs}
        if self.method_config.nm is not None:
            mask = self.nm_magnitude_mask(group)
        else:
            if n_zero is None:
                n_zero = round(float(kwargs["sparsity_level"]) * w.numel())
            mask = magnitude_mask(w, n_zero=n_zero)
        for par in p:
            if isinstance(par, FixedMask):
                par.mask.copy_(mask)

    def requires_data(self) -> bool:
        return bool(self.method_config.bn_recalibration)

    def calibrate(self, model: nn.Module, data: Any, accelerator: Any = None) -> MethodOutcome:
        self.step()
        batches = 0
        if self.method_config.bn_recalibration and data is not None:
            device = next(model.parameters()).device
            batches = recalibrate_batchnorm(model, data, device=device, max_batches=self.method_config.bn_batches,
                                            seed=self.method_config.seed, accelerator=accelerator)
        return MethodOutcome(extras={"bn_batches": batches})
