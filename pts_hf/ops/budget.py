"""One global sparsity budget split across layers by their measured error curves (a shared price for zeros).

Each layer ``l`` has an error curve ``e_l(k)``: the error of pruning ``k`` of its weights, sampled at a few counts
(measured block-output errors, or the saliency sums of :func:`error_curve`). The allocation minimises
``Σ_l e_l(k_l)`` subject to ``Σ_l k_l = K`` exactly (and ``k_l ≤`` the curve's last count). On the curves' convex
hulls the optimum equalises the marginal price ``e_l'(k_l) = λ`` — one Lagrange multiplier shared by every layer,
which is what makes a global constraint separable across blocks processed one at a time: each layer's curve is
measured once, then a single solve fixes every count.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

__all__ = ["ErrorCurve", "diagonal_saliency", "error_curve", "obs_saliency", "solve_budget"]


@dataclass
class ErrorCurve:
    """``values[j]`` = relative error of pruning ``counts[j]`` weights (``counts[0] = 0``, increasing)."""

    counts: list[int]
    values: list[float]


def diagonal_saliency(weight: torch.Tensor, input_sq_mean: torch.Tensor) -> torch.Tensor:
    """Output error of removing each weight alone, ignoring input correlations: ``w_ij² · E[x_j²]``.
    ``weight`` ``[G, R, C]``, ``input_sq_mean`` ``[G, C]``."""
    return weight.detach().double().pow(2) * input_sq_mean.double().clamp_min(0).unsqueeze(1)


def obs_saliency(weight: torch.Tensor, hessian: torch.Tensor, dampening: float = 0.01) -> torch.Tensor:
    """OBS error of removing each weight alone while the others compensate: ``w_ij² / [H⁻¹]_jj``
    (``hessian`` ``[G, C, C]`` = E[xxᵀ], dampened as SparseGPT does)."""
    from pts_hf.ops.obs import damped_inverse_cholesky

    upper = damped_inverse_cholesky(hessian, dampening)  # U with H⁻¹ = UᵀU … diag(H⁻¹)_j = Σ_i U_ij²
    hinv_diag = upper.pow(2).sum(dim=-2)  # [G, C]
    return weight.detach().double().pow(2) / hinv_diag.clamp_min(1e-30).unsqueeze(1)


def error_curve(saliency: torch.Tensor, energy: float, points: int = 200, cap: float = 1.0) -> ErrorCurve:
    """Relative error curve of a layer from per-weight saliencies: cumulative sum of the sorted saliencies,
    divided by the layer's output energy, sampled at ``points`` evenly spaced counts up to ``cap`` · numel."""
    flat = saliency.reshape(-1).double()
    n = flat.numel()
    top = int(min(max(cap, 0.0), 1.0) * n)
    cum = torch.cumsum(torch.sort(flat).values, 0)
    counts = sorted({round(top * j / points) for j in range(points + 1)})
    scale = 1.0 / max(float(energy), 1e-30)
    values = [0.0 if k == 0 else float(cum[k - 1]) * scale for k in counts]
    return ErrorCurve(counts, values)


def _hull(curve: ErrorCurve) -> list[tuple[int, float]]:
    """Lower convex hull of the curve's points (marginal prices increasing along it)."""
    pts: list[tuple[int, float]] = []
    for k, v in zip(curve.counts, curve.values):
        while len(pts) >= 2:
            (k0, v0), (k1, v1) = pts[-2], pts[-1]
            if (v1 - v0) * (k - k0) >= (v - v0) * (k1 - k0):  # the middle point lies on or above the chord
                pts.pop()
            else:
                break
        pts.append((k, v))
    return pts


def solve_budget(curves: list[ErrorCurve], total_zeros: int) -> list[int]:
    """Integer zero counts ``k_l`` with ``Σ k_l = total_zeros`` minimising ``Σ e_l(k_l)`` over the curves' convex
    hulls (piecewise linear between sampled counts): segments are taken cheapest price first, the last one
    partly. Raises when ``total_zeros`` exceeds what the curves allow (their last counts: the caps)."""
    room = sum(c.counts[-1] for c in curves)
    if not 0 <= total_zeros <= room:
        raise ValueError(f"{total_zeros} zeros cannot be placed: the layers allow at most {room} "
                         "(raise max_layer_sparsity or lower the target)")
    segments = []  # (price, layer, length)
    for i, c in enumerate(curves):
        hull = _hull(c)
        for (k0, v0), (k1, v1) in itertools.pairwise(hull):
            if k1 > k0:
                segments.append(((v1 - v0) / (k1 - k0), i, k1 - k0))
    segments.sort(key=lambda s: (s[0], s[1]))
    counts = [0] * len(curves)
    left = total_zeros
    for _, i, length in segments:
        if left == 0:
            break
        take = min(length, left)
        counts[i] += take
        left -= take
    return counts
