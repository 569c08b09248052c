"""Mask construction from scores with exact element counts."""

from __future__ import annotations

import torch

__all__ = ["magnitude_mask", "topk_mask"]


def topk_mask(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Boolean mask of ``scores``' shape keeping exactly ``n_keep`` largest entries (ties broken by index)."""
    n = scores.numel()
    if not 0 <= n_keep <= n:
        raise ValueError(f"n_keep={n_keep} is outside [0, {n}]")
    mask = torch.zeros(n, dtype=torch.bool, device=scores.device)
    if n_keep == n:
        mask.fill_(True)
    elif n_keep > 0:
        idx = torch.topk(scores.detach().reshape(-1).float(), n_keep, sorted=False).indices
        mask[idx] = True
    return mask.view(scores.shape)


def magnitude_mask(weight: torch.Tensor, sparsity: float | None = None, n_zero: int | None = None) -> torch.Tensor:
    """Keep the largest-|w| entries so that exactly ``n_zero`` (or ``round(sparsity * numel)``) are pruned."""
    if (sparsity is None) == (n_zero is None):
        raise ValueError("give exactly one of sparsity or n_zero")
    n = weight.numel()
    if n_zero is None:
        if not 0.0 <= float(sparsity) <= 1.0:
            raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
        n_zero = round(float(sparsity) * n)
    return topk_mask(weight.detach().abs(), n - int(n_zero))
