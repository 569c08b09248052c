"""Wanda (Sun et al. 2023): score |W_ij|·‖X_j‖₂, compared within each output row."""

from __future__ import annotations

import torch

from pts_hf.ops.allocation import exact_counts
from pts_hf.ops.nm import nm_mask

__all__ = ["row_counts", "rowwise_prune_mask", "wanda_keep_mask", "wanda_scores"]


def wanda_scores(weight: torch.Tensor, input_sq_sum: torch.Tensor) -> torch.Tensor:
    """``weight`` ``[G, R, C]``, ``input_sq_sum`` ``[G, C]`` = Σ x_j² over calibration samples → ``[G, R, C]``."""
    return weight.detach().float().abs() * input_sq_sum.float().clamp_min(0).sqrt().unsqueeze(1)


def row_counts(n_zero: int, rows: int, columns: int) -> list[int]:
    """Spread ``n_zero`` as evenly as possible over ``rows`` rows of ``columns`` entries (exact total)."""
    return exact_counts([n_zero / max(1, rows * columns)] * rows, [columns] * rows, n_zero)


def rowwise_prune_mask(scores: torch.Tensor, n_zero: int) -> torch.Tensor:
    """Keep mask pruning the lowest scores of every row of ``[G, R, C]``, ``n_zero`` in total (rows differ by at
    most one); ties go to the lower column index."""
    g, r, c = scores.shape
    k = torch.tensor(row_counts(n_zero, g * r, c), device=scores.device).view(g, r, 1)
    order = torch.argsort(scores, dim=-1, stable=True)
    ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(c, device=scores.device).expand_as(order))
    return ranks >= k


def wanda_keep_mask(weight: torch.Tensor, input_sq_sum: torch.Tensor | None, n_zero: int,
                    nm: tuple[int, int] | None = None) -> torch.Tensor:
    """Keep mask of ``[G, R, C]`` by Wanda's score: ``n_zero`` pruned row-wise, or the N:M pattern ``nm``.
    Without input statistics (``None``) every input counts the same: magnitude within rows."""
    g, _, c = weight.shape
    sq = torch.ones(g, c, device=weight.device) if input_sq_sum is None else input_sq_sum.to(weight.device)
    scores = wanda_scores(weight, sq)
    return nm_mask(scores, *nm) if nm is not None else rowwise_prune_mask(scores, n_zero)
