"""The FCPTS bridge from a magnitude threshold t to a layer's sparsity r(t).

Forward: the exact fraction of weights with |w| ≤ t. Backward: dr/dt = p(t) + p(−t), with p a Gaussian kernel
density estimate of the (signed) weights drawn from ``kde_samples`` (FCPTS paper eq. 10–12). Thresholds and
weights are expected in per-layer normalised units (|W| / RMS(W)), which is what makes one bandwidth fit every
layer; the paper's fixed ``h = 0.5`` on raw weights is available by passing ``bandwidth=0.5``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["gaussian_kde", "resolve_bandwidth", "silverman_bandwidth", "threshold_to_sparsity"]

_SQRT_2PI = math.sqrt(2.0 * math.pi)


def silverman_bandwidth(samples: torch.Tensor) -> float:
    """Silverman's rule of thumb: 0.9 · min(σ, IQR / 1.34) · n^(−1/5)."""
    x = samples.detach().float().reshape(-1)
    n = x.numel()
    if n < 2:
        return 1.0
    std = float(x.std())
    q = torch.quantile(x, torch.tensor([0.25, 0.75], dtype=x.dtype, device=x.device))
    iqr = float(q[1] - q[0]) / 1.34
    spread = min(std, iqr) if iqr > 0 else std
    return max(0.9 * spread * n ** (-0.2), 1e-6)


def resolve_bandwidth(bandwidth: float | str, samples: torch.Tensor) -> float:
    """A float is used as is; ``"silverman"`` / ``"scott"`` apply the named rule to ``samples``."""
    if isinstance(bandwidth, str):
        if bandwidth == "silverman":
            return silverman_bandwidth(samples)
        if bandwidth == "scott":
            x = samples.detach().float().reshape(-1)
            return max(1.06 * float(x.std()) * x.numel() ** (-0.2), 1e-6) if x.numel() > 1 else 1.0
        raise ValueError(f"unknown bandwidth rule {bandwidth!r}; use a positive float, 'silverman' or 'scott'")
    h = float(bandwidth)
    if not h > 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth!r}")
    return h


def gaussian_kde(samples: torch.Tensor, points: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Density at ``points`` of a Gaussian KDE over ``samples``: (1 / nh) Σ φ((x − s_i) / h)."""
    s = samples.detach().reshape(1, -1).to(points.dtype)
    u = (points.reshape(-1, 1) - s) / bandwidth
    dens = torch.exp(-0.5 * u * u).sum(dim=1) / (s.shape[1] * bandwidth * _SQRT_2PI)
    return dens.reshape(points.shape)


class _ThresholdToSparsity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: torch.Tensor, values: torch.Tensor, kde_samples: torch.Tensor, bandwidth: float):
        ctx.save_for_backward(t, kde_samples)
        ctx.bandwidth = bandwidth
        return (values.detach().abs() <= t.detach()).to(t.dtype).mean()

    @staticmethod
    def backward(ctx, grad_r: torch.Tensor):
        t, kde_samples = ctx.saved_tensors
        pts = torch.stack([t.reshape(()), -t.reshape(())])
        dr_dt = gaussian_kde(kde_samples, pts, ctx.bandwidth).sum()
        return (grad_r * dr_dt).reshape(t.shape), None, None, None


def threshold_to_sparsity(
    t: torch.Tensor,
    values: torch.Tensor,
    kde_samples: torch.Tensor | None = None,
    bandwidth: float | str = "silverman",
) -> torch.Tensor:
    """r(t) = mean(|values| ≤ t), differentiable in ``t`` through a KDE of ``kde_samples`` (default: all
    ``values``). ``t`` is a scalar tensor; ``values`` and ``kde_samples`` get no gradient."""
    if kde_samples is None:
        kde_samples = values.detach().reshape(-1)
    h = resolve_bandwidth(bandwidth, kde_samples)
    return _ThresholdToSparsity.apply(t, values, kde_samples.detach().reshape(-1), h)
