"""Fitness of a per-layer sparsity allocation: magnitude masks at those sparsities, BatchNorm statistics
re-estimated on calibration inputs (with small input noise), then a label-free score on held-out calibration
batches (−KL to the dense outputs) or, optionally, top-1 with labels (released code).

Candidates never change the model: masks live in the prepared parametrizations and BatchNorm buffers are
restored after every evaluation; no deep copy per candidate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from pts_hf.calibration import forward_batch, recalibrate_batchnorm
from pts_hf.losses import extract_output, reconstruction_loss
from pts_hf.ops.allocation import exact_counts

__all__ = ["MaskFitness"]


def _bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{n}.{b}": buf.detach().clone() for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for b, buf in m.named_buffers(recurse=False) if buf is not None}


def _restore(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, value in saved.items():
            mod_name, _, buf = name.rpartition(".")
            getattr(model.get_submodule(mod_name), buf).copy_(value)


class MaskFitness:
    """Callable ``fitness(sparsities) -> float`` (higher is better), cached per exact count vector.

    Args:
        groups: the prepared sparsifier's groups (module, tensor_name, numel); each parametrization has a ``mask``.
        model: the prepared model.
        bn_batches: calibration batches for BatchNorm re-estimation.
        score_batches: held-out batches to score on.
        teacher_outputs: the dense model's outputs on ``score_batches`` (for the label-free score).
        target: global sparsity.
        mode: ``"kl"`` (−KL / −normalised MSE to the dense outputs) or ``"top1"`` (needs labels in the batches).
        noise_std: input noise during BatchNorm re-estimation.
    """

    def __init__(self, groups: Sequence[dict[str, Any]], model: nn.Module, bn_batches: list[Any],
                 score_batches: list[Any], teacher_outputs: list[Any], target: float, mode: str = "kl",
                 noise_std: float = 0.0, seed: int = 0):
        self.groups, self.model = list(groups), model
        self.bn_batches, self.score_batches, self.teacher_outputs = bn_batches, score_batches, teacher_outputs
        self.mode, self.noise_std, self.seed = mode, noise_std, seed
        self.numels = [g["numel"] for g in self.groups]
        self.total_zeros = round(target * sum(self.numels))
        self.device = next(model.parameters()).device
        with torch.no_grad():
            self._order = [g["module"].parametrizations[g["tensor_name"]].original.detach().abs().reshape(-1)
                           .argsort() for g in self.groups]
        self.cache: dict[tuple[int, ...], float] = {}
        self.evaluations = 0

    def counts(self, sparsities: Sequence[float]) -> list[int]:
        return exact_counts(sparsities, self.numels, self.total_zeros)

    @torch.no_grad()
    def apply(self, counts: Sequence[int]) -> None:
        """Set magnitude masks pruning exactly ``counts[i]`` weights of each group."""
        for g, order, k in zip(self.groups, self._order, counts):
            p = g["module"].parametrizations[g["tensor_name"]][0]
            flat = torch.ones(order.numel(), dtype=torch.bool, device=p.mask.device)
            flat[order[:k]] = False
            p.mask.copy_(flat.view_as(p.mask))

    @torch.no_grad()
    def score(self) -> float:
        was = self.model.training
        self.model.eval()
        total, count = 0.0, 0
        for batch, t_out in zip(self.score_batches, self.teacher_outputs):
            out = forward_batch(self.model, batch, self.device)
            if self.mode == "top1":
                labels = batch[1].to(self.device)
                logits, _ = extract_output(out)
                total += float((logits.argmax(-1) == labels).float().sum())
                count += labels.numel()
            else:
                total -= float(reconstruction_loss(out, t_out, temperature=1.0))
                count += 1
        self.model.train(was)
        return total / max(count, 1)

    def __call__(self, sparsities: Sequence[float]) -> float:
        counts = self.counts(sparsities)
        key = tuple(counts)
        if key in self.cache:
            return self.cache[key]
        saved = _bn_buffers(self.model)
        self.apply(counts)
        try:
            recalibrate_batchnorm(self.model, self.bn_batches, device=self.device, noise_std=self.noise_std,
                                  seed=self.seed)
            value = self.score()
        finally:
            _restore(self.model, saved)
        self.evaluations += 1
        self.cache[key] = value
        return value
