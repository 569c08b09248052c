"""Base of the layer-wise (one-shot, block-by-block) methods: the declared protocol the pipeline drives.

A layer-wise method is one file: a config subclass of :class:`LayerwiseConfig`, the ``statistics`` it needs
(subset of :data:`pts_hf.pipeline.STATISTICS`) and :meth:`LayerwiseSparsifier.prune_weight`, a pure-ish function
from a layer's GEMM-view weight, its statistics and its zero count to new weights and a keep mask. Lifecycle,
allocation, N:M eligibility, the pipeline and exactness live here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from pts_hf.calibration import model_device, recalibrate_batchnorm
from pts_hf.config import SparsityConfig, help_field
from pts_hf.parametrize import FixedMask, PTSParametrization
from pts_hf.pipeline import LayerStats, run_pipeline
from pts_hf.pipeline.sequential import ReconstructFn
from pts_hf.record import MethodOutcome
from pts_hf.sparsifiers.base import PTSSparsifier
from pts_hf.targets import Target

__all__ = ["LayerwiseConfig", "LayerwiseSparsifier", "PrunedLayer"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class LayerwiseConfig(SparsityConfig):
    """Options of the sequential pipeline shared by every layer-wise method."""

    sequential: bool = help_field(
        True, "Each block is calibrated on the outputs of the already-pruned blocks before it (False: on the "
        "dense model's activations)."
    )
    device: str | None = help_field(
        None, "Device each block is moved to while it is calibrated (e.g. 'cuda' for a model kept on CPU); "
        "None = where the block is."
    )
    stats_dtype: str = help_field("float32", "dtype the layer statistics (Hessians, norms) are accumulated in.")

    def validate(self) -> None:
        super().validate()
        if self.stats_dtype not in _DTYPES:
            raise ValueError(f"stats_dtype must be one of {sorted(_DTYPES)}, got {self.stats_dtype!r}")
        if self.device is not None:
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError) as e:
                raise ValueError(f"device {self.device!r} is not a torch device: {e}") from e


@dataclass
class PrunedLayer:
    """What a method returns for one layer (GEMM view ``[G, R, C]``)."""

    weight: torch.Tensor
    keep: torch.Tensor
    bias_delta: torch.Tensor | None = None  # added to the layer's bias, ``[G, R]``


class LayerwiseSparsifier(PTSSparsifier):
    """Prunes each targeted layer once, from statistics of its inputs, block by block."""

    statistics: ClassVar[frozenset[str]] = frozenset()

    def requires_data(self) -> bool:
        return True

    def make_parametrization(self, group: dict[str, Any], weight: torch.Tensor) -> PTSParametrization:
        return FixedMask(torch.ones_like(weight, dtype=torch.bool))

    # --- the method ---------------------------------------------------------------------------------------
    def prune_weight(self, weight: torch.Tensor, stats: LayerStats | None, n_zero: int,
                     nm: tuple[int, int] | None) -> PrunedLayer:  # pragma: no cover - abstract
        """New GEMM-view weights and keep mask pruning ``n_zero`` weights (or the N:M pattern ``nm``).
        ``stats`` is None when no calibration statistics exist (``step()`` outside the pipeline)."""
        raise NotImplementedError

    # --- applying it ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def prune_group(self, group: dict[str, Any], stats: LayerStats | None, n_zero: int,
                    update_weights: bool = True) -> None:
        """Apply the method to one group: new mask, and (``update_weights``) the method's new weights and bias."""
        layout = self.layout_of(group)
        original = self.original_of(group)
        nm = self.nm_for(group)
        if nm is None and n_zero == 0:
            self._write_mask(group, torch.ones_like(original, dtype=torch.bool))
            return
        res = self.prune_weight(layout.to_gemm(original.detach()), stats, n_zero, nm)
        self._write_mask(group, layout.from_gemm(res.keep))
        if not update_weights:
            return
        original.copy_(layout.from_gemm(res.weight).to(original.dtype))
        bias = getattr(group["module"], "bias", None)
        if res.bias_delta is not None and isinstance(bias, torch.Tensor):
            bias.add_(res.bias_delta.reshape(bias.shape).to(bias.dtype))

    @staticmethod
    def _write_mask(group: dict[str, Any], keep: torch.Tensor) -> None:
        for p in group["module"].parametrizations[group["tensor_name"]]:
            if isinstance(p, FixedMask):
                p.mask.copy_(keep)

    def update_mask(self, module: nn.Module, tensor_name: str, n_zero: int | None = None, **kwargs: Any) -> None:
        """``step()`` outside the pipeline: masks by the method's rule without activation statistics (weights are
        only changed by :meth:`calibrate`, as torch.ao's ``step`` changes masks only)."""
        group = {"module": module, "tensor_name": tensor_name, **kwargs}
        if n_zero is None:
            n_zero = round(float(kwargs["sparsity_level"]) * kwargs["numel"])
        self.prune_group(group, None, n_zero, update_weights=False)

    # --- one-call API -------------------------------------------------------------------------------------
    def _rebalance(self, unused: list[Target]) -> None:
        """Layers no activation reaches stay dense; the others carry the global target."""
        skip = {t.tensor_fqn for t in unused}
        if len(skip) == len(self.groups):
            raise ValueError("no calibration input reaches any targeted layer (the model's forward never calls "
                             "them on this data); check the data or the targets")
        targets = self.group_targets()
        levels = self._allocate(targets, [0.0 if g["tensor_fqn"] in skip else None for g in self.groups])
        for g, lv in zip(self.groups, levels):
            g["sparsity_level"] = lv

    # --- extension points of block-wise methods --------------------------------------------------------------
    def plan_counts(self, model: nn.Module, data: Any) -> None:
        """Called before pruning starts; may set every group's ``sparsity_level`` (e.g. from a survey pass).
        One-shot methods keep the allocation made at ``prepare``."""

    def block_reconstruction(self) -> ReconstructFn | None:
        """Trains each unit after it is pruned, towards the dense unit's outputs (None: one-shot methods)."""
        return None

    def reconstruction_target(self) -> str:
        """'dense': blocks learn the dense model's activations; 'local': their own dense outputs."""
        return "dense"

    def add_outcome(self, outcome: MethodOutcome) -> None:
        """Add the method's own numbers (per-layer or global extras) to the run's outcome."""

    def calibrate(self, model: nn.Module, data: Any, accelerator: Any = None) -> MethodOutcome:
        self._require_prepared()
        by_fqn = {g["tensor_fqn"]: g for g in self.groups}
        counts: dict[str, int] = {}  # filled at the first unit: after _rebalance, which runs while planning
        self.plan_counts(model, data)

        def process(targets: list[Target], stats: dict[str, LayerStats]) -> None:
            if not counts:
                counts.update(zip(by_fqn, self.exact_zero_counts()))
            for t in targets:
                self.prune_group(by_fqn[t.tensor_fqn], stats[t.tensor_fqn], counts[t.tensor_fqn])

        targets = self.group_targets()
        o = self.method_config
        report = run_pipeline(model, targets, data, self.statistics, process, sequential=o.sequential,
                              device=o.device, stats_dtype=_DTYPES[o.stats_dtype], progress=self.show_progress,
                              on_unused=self._rebalance, reconstruct=self.block_reconstruction(),
                              reconstruct_to=self.reconstruction_target())
        bn_batches = 0
        if o.bn_recalibration:
            bn_batches = recalibrate_batchnorm(model, data, device=model_device(model), seed=o.seed,
                                               accelerator=accelerator)
        outcome = MethodOutcome(extras={
            "pipeline": {"blocks_from": report.block_source, "units": report.units, "runs": report.runs,
                         "unused_layers": report.unused, "unit_seconds": report.seconds, "batches": report.batches},
            "bn_batches": bn_batches})
        self.add_outcome(outcome)
        return outcome

