"""SparseGPT (Frantar & Alistarh 2023): OBS pruning with row updates from the inverse layer Hessian.

Works on the GEMM view ``W: [G, R, C]`` with one Hessian per group ``H: [G, C, C]`` (H = XXᵀ / n of the layer
inputs), so Linear layers (G = 1) and grouped / depthwise convolutions (G = groups) share one batched code path.
"""

from __future__ import annotations

import torch

from pts_hf.ops.allocation import exact_counts

__all__ = ["damped_inverse_cholesky", "sparsegpt_prune"]


def damped_inverse_cholesky(hessian: torch.Tensor, dampening: float = 0.01, max_tries: int = 8) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + λI)⁻¹`` in float64, λ = dampening · mean(diag H).

    A singular or indefinite ``H`` is dampened 10× more per try (never NaN); dead inputs (zero diagonal) get a
    unit diagonal. Batched over leading dimensions.
    """
    h = hessian.detach().to(torch.float64).clone()
    diag = torch.diagonal(h, dim1=-2, dim2=-1)
    dead = diag == 0
    diag[dead] = 1.0
    mean = diag.mean(dim=-1, keepdim=True).clamp_min(1e-12)
    damp = dampening
    for _ in range(max_tries):  # one d×d float64 buffer at a time besides h (large layers: memory)
        damped = h.clone()
        torch.diagonal(damped, dim1=-2, dim2=-1).add_(damp * mean)
        chol, info = torch.linalg.cholesky_ex(damped)
        del damped
        if not bool(info.any()):
            inv = torch.cholesky_inverse(chol)
            del chol
            upper, info = torch.linalg.cholesky_ex(inv, upper=True)
            del inv
            if not bool(info.any()) and bool(torch.isfinite(upper).all()):
                return upper
        damp = max(damp * 10.0, 1e-6)
    raise FloatingPointError(f"layer Hessian stays singular after dampening up to {damp / 10:.3g}·mean(diag)")


def _block_counts(n_zero: int, rows: int, columns: int, blocksize: int) -> list[int]:
    """Zeros per column block (``rows`` = groups × rows), proportional to its width, summing to ``n_zero``."""
    sizes = [rows * min(blocksize, columns - s) for s in range(0, columns, blocksize)]
    return exact_counts([n_zero / max(1, rows * columns)] * len(sizes), sizes, n_zero) if sizes else []


@torch.no_grad()
def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    n_zero: int | None = None,
    nm: tuple[int, int] | None = None,
    blocksize: int = 128,
    dampening: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune ``weight`` ``[G, R, C]`` given ``hessian`` ``[G, C, C]``; returns (new weight, keep mask).

    Unstructured: exactly ``n_zero`` weights are pruned (spread over column blocks in proportion to their width,
    lowest OBS saliency w²/[H⁻¹]²_jj first within a block). N:M: the ``M − N`` lowest-saliency weights of every
    ``M`` consecutive columns. The kept weights absorb the error by the OBS update.
    """
    if (n_zero is None) == (nm is None):
        raise ValueError("give exactly one of n_zero or nm")
    g, r, c = weight.shape
    if nm is not None and c % nm[1]:
        raise ValueError(f"{c} columns are not a multiple of M={nm[1]}")
    if nm is not None and blocksize % nm[1]:
        blocksize = nm[1] * max(1, blocksize // nm[1])
    w = weight.detach().float().clone()
    # Inputs that were always zero on the calibration data: their weights are pruned first (they change nothing
    # there), but only within the count, so the result stays exact and no more than asked is removed.
    dead = (torch.diagonal(hessian, dim1=-2, dim2=-1) == 0).unsqueeze(1)  # [G, 1, C]
    hinv = damped_inverse_cholesky(hessian, dampening).to(w.dtype)  # [G, C, C] upper
    keep = torch.ones_like(w, dtype=torch.bool)
    counts = _block_counts(int(n_zero), g * r, c, blocksize) if n_zero is not None else None
    for b, i1 in enumerate(range(0, c, blocksize)):
        i2 = min(i1 + blocksize, c)
        w1 = w[:, :, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        h1 = hinv[:, i1:i2, i1:i2]
        d = torch.diagonal(h1, dim1=-2, dim2=-1)  # [G, B]
        saliency = (w1.pow(2) / d.unsqueeze(1).pow(2)).masked_fill(dead[:, :, i1:i2], -1.0)  # [G, R, B]
        if nm is not None:
            n, m = nm
            idx = torch.topk(saliency.reshape(g, r, -1, m), m - n, dim=-1, largest=False).indices
            prune = torch.zeros(g, r, (i2 - i1) // m, m, dtype=torch.bool, device=w.device)
            prune.scatter_(-1, idx, True)
            prune = prune.reshape(g, r, i2 - i1)
        else:
            k = counts[b]
            prune = torch.zeros(saliency.numel(), dtype=torch.bool, device=w.device)
            if k > 0:
                prune[torch.topk(saliency.reshape(-1), k, largest=False, sorted=False).indices] = True
            prune = prune.view_as(saliency)
        for i in range(i2 - i1):
            col = w1[:, :, i]  # [G, R]
            q = col.masked_fill(prune[:, :, i], 0.0)
            q1[:, :, i] = q
            e = (col - q) / d[:, i].unsqueeze(1)
            w1[:, :, i:] -= e.unsqueeze(2) * h1[:, i, i:].unsqueeze(1)
            err1[:, :, i] = e
        w[:, :, i1:i2] = q1
        keep[:, :, i1:i2] = ~prune
        if i2 < c:
            w[:, :, i2:] -= torch.bmm(err1, hinv[:, i1:i2, i2:])
    w.masked_fill_(~keep, 0.0)
    if not bool(torch.isfinite(w).all()):  # pragma: no cover - guarded by the dampening loop
        raise FloatingPointError("SparseGPT produced non-finite weights")
    return w.to(weight.dtype), keep
