"""N:M semi-structured masks: at most N non-zeros in every group of M consecutive weights along a GEMM's input
dimension (the layout 2:4 sparse tensor cores and cuSPARSELt expect)."""

from __future__ import annotations

import re

import torch

__all__ = ["is_nm", "nm_mask", "nm_sparsity", "parse_structure"]

_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_structure(structure: str | None) -> tuple[int, int] | None:
    """``"unstructured"`` (or None) → None; ``"N:M"`` → (N, M) with 0 < N < M. Anything else raises."""
    if structure is None or (isinstance(structure, str) and structure.strip().lower() == "unstructured"):
        return None
    match = _NM.match(structure) if isinstance(structure, str) else None
    if match is None:
        raise ValueError(f"mask_structure must be 'unstructured' or 'N:M' (e.g. '2:4'), got {structure!r}")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise ValueError(f"mask_structure {structure!r}: N:M needs positive integers with N < M (e.g. '2:4')")
    return n, m


def nm_sparsity(n: int, m: int) -> float:
    return (m - n) / m


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` highest scores of every ``m`` consecutive entries of the last dimension (ties by position).

    ``scores`` is ``[..., C]`` with ``C % m == 0``; returns a bool mask of the same shape.
    """
    if scores.shape[-1] % m:
        raise ValueError(f"last dimension {scores.shape[-1]} is not a multiple of M={m}")
    groups = scores.detach().float().reshape(-1, m)
    idx = torch.topk(groups, n, dim=1, sorted=False).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, idx, True)
    return mask.view(scores.shape)


def is_nm(mask: torch.Tensor, n: int, m: int) -> bool:
    """True when every group of ``m`` consecutive entries of the last dimension keeps at most ``n``."""
    if mask.shape[-1] % m:
        return False
    return bool((mask.reshape(-1, m).sum(dim=1) <= n).all())
