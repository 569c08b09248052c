"""fcpts-block: FCPTS's globally constrained, learned allocation and adapted weights, one block at a time.

1. **Budget** (unstructured): a survey pass over the dense model, block by block, measures every layer's error
   curve — the relative output error of pruning its k least salient weights (OBS saliency w²/[H⁻¹]_jj, or the
   diagonal w²·E[x²]) — and one solve with a single price per zero shared by all layers
   (:func:`pts_hf.ops.budget.solve_budget`) splits exactly round(s·N) zeros across them. The global constraint
   stays global although no two blocks are ever on the device together.
2. **Prune** each block at its counts with SparseGPT's OBS update (or Wanda's mask), on the pruned model's
   activations (``sequential=True``).
3. **Reconstruct** the block against the *dense* block's outputs on the dense model's activations (block-local
   MSE, Adam, masks fixed): the weights adapt to the masks as in FCPTS's distillation, and each block also
   corrects what the blocks before it lost. Only the current block, its activations and the dense activations
   are on the device; the dense outputs are computed from the block before it is pruned, so no dense copy exists.

Under N:M every eligible layer is (M−N)/M sparse and the budget step is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from pts_hf.config import check_count, check_positive, help_field
from pts_hf.ops.budget import ErrorCurve, diagonal_saliency, error_curve, obs_saliency, solve_budget
from pts_hf.ops.wanda import wanda_keep_mask
from pts_hf.pipeline import LayerStats, Unit, run_pipeline
from pts_hf.pipeline.reconstruct import block_error, micro_batches, reconstruct_block
from pts_hf.pipeline.sequential import ReconstructFn
from pts_hf.pipeline.stats import process_count
from pts_hf.record import MethodOutcome
from pts_hf.sparsifiers.layerwise import _DTYPES, LayerwiseConfig, LayerwiseSparsifier, PrunedLayer
from pts_hf.sparsifiers.sparsegpt import sparsegpt_layer
from pts_hf.sparsifiers.wanda import wanda_layer
from pts_hf.targets import Target

__all__ = ["FCPTSBlockConfig", "FCPTSBlockSparsifier"]

_BUDGETS = ("block", "obs", "diagonal", "none")
_PRUNERS = ("sparsegpt", "wanda")
_TRAIN = ("all", "weights")


@dataclass
class FCPTSBlockConfig(LayerwiseConfig):
    method: ClassVar[str] = "fcpts-block"

    allocation: str = help_field(
        "uniform", "Allocation used with budget='none' (and by step() outside calibration): uniform, erk, lamp, "
        "l2norm, owl.")
    budget: str | None = help_field(
        None, "How the global target is split across layers, from per-layer error curves and one shared price per "
        "zero: 'block' (each layer pruned alone at survey_levels, error of its block's output measured), 'obs' "
        "(layer output error from OBS saliencies), 'diagonal' (from w²·E[x²]), 'none' (use `allocation`). "
        "None = 'block', or 'none' under N:M.")
    survey_levels: tuple[float, ...] | None = help_field(
        None, "budget='block': sparsity levels at which each layer's block error is measured (the curve is "
        "interpolated between them; capped at max_layer_sparsity). None = s/2, 0.8·s, s, s+(1−s)/3, s+2(1−s)/3 "
        "around the target s.")
    survey_batches: int = help_field(1, "budget='block': calibration batches (per process) the survey runs on.")
    survey_rows: int | None = help_field(8, "budget='block': samples of that batch the block errors are measured "
                                            "on (None = all).")
    max_layer_sparsity: float = help_field(0.98, "No layer is pruned beyond this fraction by the budget.")
    pruner: str = help_field("sparsegpt", "One-shot step per block: 'sparsegpt' (OBS masks and weight update) or "
                                          "'wanda' (|W|·‖x‖ masks, no update).")
    recon_steps: int = help_field(32, "Adam steps of block-local reconstruction per block (one piece of recon_rows "
                                      "samples each; 0 = one-shot only).")
    recon_rows: int | None = help_field(8, "Samples per reconstruction step (calibration batches are cut into "
                                           "pieces of this size; None = whole batches).")
    recon_lr: float = help_field(1e-3, "Adam learning rate of the block reconstruction (cosine-decayed).")
    recon_target: str = help_field(
        "dense", "What a block learns to output: 'dense' (the dense model's activations there, carried beside the "
        "pruned ones: also corrects earlier blocks' error) or 'local' (the dense block's output on the pruned "
        "model's inputs: no extra forward or memory).")
    recon_train: str = help_field("all", "Parameters reconstruction trains: 'all' floating parameters of the "
                                         "block (weights, biases, norms) or only the pruned 'weights'.")
    blocksize: int = help_field(128, "SparseGPT: columns pruned and updated together.")
    dampening: float = help_field(0.01, "SparseGPT / OBS saliency: Hessian dampening (fraction of mean diagonal).")

    def validate(self) -> None:
        super().validate()
        if self.budget is None:
            self.budget = "none" if self.nm is not None else "block"
        if self.budget not in _BUDGETS:
            raise ValueError(f"budget must be one of {list(_BUDGETS)}, got {self.budget!r}")
        if self.nm is not None and self.budget != "none":
            raise ValueError(f"budget {self.budget!r} does not apply to N:M masks (every layer is "
                             f"{self.sparsity:.4g} sparse); leave budget out")
        default_alloc = type(self).__dataclass_fields__["allocation"].default
        if self.budget != "none" and self.allocation != default_alloc:
            raise ValueError(f"allocation {self.allocation!r} is only used with budget='none'; budget "
                             f"{self.budget!r} learns the allocation (pass one or the other)")
        if self.survey_levels is None:
            sp = self.sparsity
            self.survey_levels = (sp / 2, 0.8 * sp, sp, sp + (1 - sp) / 3, sp + 2 * (1 - sp) / 3)
        self.survey_levels = tuple(round(float(v), 6) for v in self.survey_levels)
        if not self.survey_levels or not all(0.0 < v <= 1.0 for v in self.survey_levels):
            raise ValueError(f"survey_levels must be sparsities in (0, 1], got {self.survey_levels!r}")
        check_count(self, "survey_batches")
        if not 0.0 < self.max_layer_sparsity <= 1.0:
            raise ValueError(f"max_layer_sparsity must be in (0, 1], got {self.max_layer_sparsity!r}")
        if self.budget != "none" and self.sparsity > self.max_layer_sparsity:
            raise ValueError(f"sparsity {self.sparsity} cannot be reached with no layer above max_layer_sparsity="
                             f"{self.max_layer_sparsity}; raise max_layer_sparsity")
        if self.pruner not in _PRUNERS:
            raise ValueError(f"pruner must be one of {list(_PRUNERS)}, got {self.pruner!r}")
        if self.recon_target not in ("dense", "local"):
            raise ValueError(f"recon_target must be 'dense' or 'local', got {self.recon_target!r}")
        if self.recon_train not in _TRAIN:
            raise ValueError(f"recon_train must be one of {list(_TRAIN)}, got {self.recon_train!r}")
        check_count(self, "recon_steps", minimum=0)
        check_count(self, "survey_rows", optional=True)
        check_count(self, "recon_rows", optional=True)
        check_count(self, "blocksize")
        check_positive(self, "recon_lr")
        check_positive(self, "dampening")


class FCPTSBlockSparsifier(LayerwiseSparsifier):
    """Block-wise FCPTS: global learned budget, one-shot pruning, block-local reconstruction to the dense model."""

    method: ClassVar[str] = "fcpts-block"
    config_class: ClassVar[type[FCPTSBlockConfig]] = FCPTSBlockConfig

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.budget_levels: dict[str, float] = {}
        self.reconstruction: dict[str, dict[str, float]] = {}

    @property
    def statistics(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset({"hessian"}) if self.method_config.pruner == "sparsegpt" else frozenset({"sq_sum"})

    # --- 1. budget --------------------------------------------------------------------------------------------
    def plan_counts(self, model: nn.Module, data: Any) -> None:
        o = self.method_config
        self.budget_levels, self.reconstruction = {}, {}
        if o.budget == "none":
            return
        curves: dict[str, ErrorCurve] = {}
        kind = {"obs": "hessian", "diagonal": "sq_sum", "block": "sq_sum"}[o.budget]
        layer_stats: dict[str, LayerStats] = {}

        def survey(targets: list[Target], stats: dict[str, LayerStats]) -> None:
            for t in targets:
                if o.budget == "block":
                    layer_stats[t.tensor_fqn] = stats[t.tensor_fqn]
                else:
                    curves[t.tensor_fqn] = self._curve(t, stats[t.tensor_fqn])

        def measure(unit: Unit, calls: list[Any], targets: list[torch.Tensor],
                    masks: list[torch.Tensor | None]) -> None:
            calls, targets, masks = micro_batches(calls, targets, masks, o.survey_rows)
            n = min(o.survey_batches, len(calls))  # survey_batches pieces of survey_rows samples
            calls, targets, masks = calls[:n], targets[:n], masks[:n]
            for t in unit.targets:
                curves[t.tensor_fqn] = self._block_curve(t, layer_stats.pop(t.tensor_fqn), unit.module,
                                                         calls, targets, masks)

        if o.budget == "block":  # the survey needs a few batches only (per process)
            data = list(data)[: o.survey_batches * process_count()]
        run_pipeline(model, self.group_targets(), data, frozenset({kind}), survey, sequential=False,
                     device=o.device, stats_dtype=_DTYPES[o.stats_dtype], progress=self.show_progress,
                     on_unused=lambda unused: None, reconstruct=measure if o.budget == "block" else None)
        reached = set(curves) | set(layer_stats)
        if not reached:
            raise ValueError("no calibration input reaches any targeted layer; check the data or the targets")
        numels = [g["numel"] for g in self.groups]
        total = round(o.sparsity * sum(numels))
        # layers calibrated from full forwards (no block output to measure) keep the target level; unreached
        # layers stay dense; the others share what is left
        fixed = {g["tensor_fqn"]: round(o.sparsity * g["numel"]) for g in self.groups
                 if g["tensor_fqn"] in layer_stats}
        free = [g for g in self.groups if g["tensor_fqn"] in curves]
        counts = solve_budget([curves[g["tensor_fqn"]] for g in free], total - sum(fixed.values()))
        chosen = dict(fixed) | {g["tensor_fqn"]: k for g, k in zip(free, counts)}
        for g in self.groups:
            g["sparsity_level"] = chosen.get(g["tensor_fqn"], 0) / g["numel"]
            self.budget_levels[g["tensor_fqn"]] = g["sparsity_level"]

    @torch.no_grad()
    def _block_curve(self, t: Target, stats: LayerStats, block: nn.Module, calls: list[Any],
                     targets: list[torch.Tensor], masks: list[torch.Tensor | None]) -> ErrorCurve:
        """Block-output error with only this layer pruned (Wanda masks) at each survey level."""
        o = self.method_config
        group = next(g for g in self.groups if g["tensor_fqn"] == t.tensor_fqn)
        layout = self.layout_of(group)
        w = layout.to_gemm(self.original_of(group).detach())
        sq = stats.sq_sum.to(w.device) if stats.sq_sum is not None else None
        param = self.parametrization_of(group)
        counts, values = [0], [0.0]
        levels = sorted({min(v, o.max_layer_sparsity) for v in o.survey_levels})
        try:
            for level in levels:
                k = round(level * group["numel"])
                if k <= counts[-1]:
                    continue
                param.mask.copy_(layout.from_gemm(wanda_keep_mask(w, sq, k, None)))
                counts.append(k)
                values.append(block_error(block, calls, targets, masks))
        finally:
            param.mask.fill_(True)
        return ErrorCurve(counts, values)

    def _curve(self, t: Target, stats: LayerStats) -> ErrorCurve:
        o = self.method_config
        group = next(g for g in self.groups if g["tensor_fqn"] == t.tensor_fqn)
        w = self.layout_of(group).to_gemm(self.original_of(group).detach()).double()
        if o.budget == "obs":
            h = stats.hessian.to(w.device).double()
            sal = obs_saliency(w, h, o.dampening)
            energy = float(torch.einsum("grc,gcd,grd->", w, h, w))
        else:
            sq = (stats.sq_sum / max(stats.samples, 1)).to(w.device)
            sal = diagonal_saliency(w, sq)
            energy = float(sal.sum())
        return error_curve(sal, energy, cap=o.max_layer_sparsity)

    def _rebalance(self, unused: list[Target]) -> None:
        if self.method_config.budget == "none":
            super()._rebalance(unused)  # the budget already gave unreached layers no zeros

    # --- 2. prune -----------------------------------------------------------------------------------------------
    def prune_weight(self, weight: torch.Tensor, stats: LayerStats | None, n_zero: int,
                     nm: tuple[int, int] | None) -> PrunedLayer:
        o = self.method_config
        if o.pruner == "sparsegpt":
            return sparsegpt_layer(weight, stats, n_zero, nm, o.blocksize, o.dampening)
        return wanda_layer(weight, stats, n_zero, nm)

    # --- 3. reconstruct -----------------------------------------------------------------------------------------
    def block_reconstruction(self) -> ReconstructFn | None:
        o = self.method_config
        if o.recon_steps == 0:
            return None

        def reconstruct(unit: Unit, calls: list[Any], targets: list[torch.Tensor],
                        masks: list[torch.Tensor | None]) -> None:
            gen = torch.Generator().manual_seed(o.seed + len(self.reconstruction))
            calls, targets, masks = micro_batches(calls, targets, masks, o.recon_rows)
            res = reconstruct_block(unit.module, calls, targets, masks, steps=o.recon_steps, lr=o.recon_lr,
                                    train=o.recon_train, generator=gen)
            self.reconstruction[unit.name] = {"before": res.before, "after": res.after}

        return reconstruct

    def reconstruction_target(self) -> str:
        return self.method_config.recon_target

    def add_outcome(self, outcome: MethodOutcome) -> None:
        outcome.extras["block_reconstruction"] = dict(self.reconstruction)
        if self.budget_levels:
            outcome.add_layer_values("budget_level", self.budget_levels)
