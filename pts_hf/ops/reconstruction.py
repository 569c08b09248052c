"""POT's corrections after pruning a layer, on its GEMM view ``[G, R, C]`` and input statistics.

With H = E[xxᵀ] and μ = E[x] of the layer's inputs, the output error of a pruned layer is the quadratic
``E‖(W_s − W)x + Δb‖² = tr(D H Dᵀ) + 2 Δbᵀ D μ + ‖Δb‖²`` (D = W_s − W), so POT's per-layer reconstruction
(Adam on the kept weights and the bias) runs on these statistics without storing any activation.
"""

from __future__ import annotations

import torch

__all__ = ["bias_correction", "channel_norm_correction", "output_error", "reconstruct_layer"]


def output_error(dense: torch.Tensor, sparse: torch.Tensor, hessian: torch.Tensor,
                 mean: torch.Tensor | None = None, bias_delta: torch.Tensor | None = None) -> torch.Tensor:
    """E‖(W_s − W)x + Δb‖² summed over outputs (``[G, R, C]`` weights, ``[G, C, C]`` H, ``[G, C]`` μ,
    ``[G, R]`` Δb)."""
    d = sparse.float() - dense.float()
    err = (torch.bmm(d, hessian.float()) * d).sum()
    if bias_delta is not None and mean is not None:
        err = err + 2 * (bias_delta.float() * torch.bmm(d, mean.float().unsqueeze(-1)).squeeze(-1)).sum()
        err = err + bias_delta.float().pow(2).sum()
    return err


def channel_norm_correction(dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
    """Rescale each output row's kept weights so the row's L2 norm equals the dense row's."""
    num = dense.float().pow(2).sum(-1, keepdim=True).sqrt()
    den = sparse.float().pow(2).sum(-1, keepdim=True).sqrt()
    scale = torch.where(den > 0, num / den.clamp_min(1e-30), torch.ones_like(den))
    return (sparse.float() * scale).to(sparse.dtype)


def bias_correction(dense: torch.Tensor, sparse: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Δb ``[G, R]`` = (W − W_s) μ: the change of bias that restores the mean output."""
    return torch.bmm(dense.float() - sparse.float(), mean.float().unsqueeze(-1)).squeeze(-1)


def reconstruct_layer(dense: torch.Tensor, sparse: torch.Tensor, keep: torch.Tensor, hessian: torch.Tensor,
                      mean: torch.Tensor | None = None, bias_delta: torch.Tensor | None = None, steps: int = 100,
                      lr: float = 1e-2) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Adam on the kept weights (and the bias change when ``bias_delta`` is given) minimising the layer's output
    error against the dense layer; ``lr`` is relative to the dense weights' RMS. Returns (weights, Δb)."""
    if steps <= 0:
        return sparse, bias_delta
    # Work in units where mean(diag H) = 1 (so lr means the same on every layer): H/h̄, μ/√h̄, Δb/√h̄.
    hbar = torch.diagonal(hessian.float(), dim1=-2, dim2=-1).mean().clamp_min(1e-30)
    root = hbar.sqrt()
    h = hessian.float() / hbar
    w = sparse.detach().float().clone().requires_grad_(True)
    params = [w]
    db = mu = None
    if bias_delta is not None and mean is not None:
        mu = mean.float() / root
        db = (bias_delta.detach().float() / root).requires_grad_(True)
        params.append(db)
    scale = dense.float().pow(2).mean().sqrt().clamp_min(1e-12)
    opt = torch.optim.Adam(params, lr=lr * float(scale))
    keep_f = keep.to(w.dtype)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            output_error(dense, w * keep_f, h, mu, db).backward()
            opt.step()
    out_w = (w.detach() * keep_f).to(sparse.dtype)
    return out_w, (None if db is None else db.detach() * root)
