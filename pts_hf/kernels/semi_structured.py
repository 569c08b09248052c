"""2:4 semi-structured weights on CUDA (cuSPARSELt / CUTLASS through ``torch.sparse.to_sparse_semi_structured``).

Applies to Linear / transformers Conv1D / 1×1 Conv2d layers whose (out, in) weight matrix has at most 2 non-zeros
in every group of 4 consecutive input weights, in fp16 or bf16, on a CUDA device, with shapes the kernels accept
(both dimensions multiples of :data:`MIN_ROWS` / :data:`MIN_COLS`). On CPU there is no such kernel.
Convert after moving the model to its device and dtype: the compressed weight is not moved by ``model.to()``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pts_hf.kernels.csr import _SparseMatmulLayer, layer_kind, to_matrix

__all__ = ["MIN_COLS", "MIN_ROWS", "SemiStructuredLayer", "is_2to4", "semi_structured_unsupported_reason"]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
MIN_ROWS, MIN_COLS = 32, 64  # the stricter of torch's cuSPARSELt and CUTLASS shape constraints for fp16/bf16


def is_2to4(matrix: torch.Tensor) -> bool:
    """True when every group of 4 consecutive entries along the last dimension holds at most 2 non-zeros."""
    if matrix.ndim != 2 or matrix.shape[1] % 4:
        return False
    nonzero = (matrix != 0).reshape(matrix.shape[0], -1, 4).sum(-1)
    return bool((nonzero <= 2).all())


def semi_structured_unsupported_reason(matrix: torch.Tensor) -> str | None:
    """Why the 2:4 kernels cannot run this (out, in) weight matrix, or ``None`` when they can."""
    if matrix.device.type != "cuda":
        return f"weight is on {matrix.device.type}, 2:4 kernels need CUDA"
    if matrix.dtype not in SUPPORTED_DTYPES:
        return f"weight dtype is {matrix.dtype}, 2:4 kernels need float16 or bfloat16 (model.half())"
    out, inp = matrix.shape
    if out % MIN_ROWS or inp % MIN_COLS:
        return f"shape {tuple(matrix.shape)} is not a multiple of ({MIN_ROWS}, {MIN_COLS})"
    if not is_2to4(matrix):
        return "mask is not 2:4 (more than 2 non-zeros in some group of 4 inputs)"
    return None


class SemiStructuredLayer(_SparseMatmulLayer):
    """Runs a Linear / HF Conv1D / 1×1 Conv2d with a 2:4 compressed weight (CUDA, fp16/bf16)."""

    def __init__(self, module: nn.Module, kind: str | None = None) -> None:
        kind = kind or layer_kind(module)
        if kind is None:
            raise ValueError(f"{type(module).__name__} is not a Linear, transformers Conv1D or 1×1 Conv2d")
        matrix = to_matrix(module.weight.detach(), kind)
        reason = semi_structured_unsupported_reason(matrix)
        if reason is not None:
            raise ValueError(f"cannot use 2:4 semi-structured kernels: {reason}")
        super().__init__(module, kind)
        self.weight_ss = torch.sparse.to_sparse_semi_structured(matrix.contiguous())

    def load_dense_matrix(self, matrix: torch.Tensor) -> None:
        matrix = matrix.to(self.weight_ss.device, self.weight_ss.dtype).contiguous()
        reason = semi_structured_unsupported_reason(matrix)
        if reason is not None:
            raise ValueError(f"loaded weight cannot stay 2:4 semi-structured: {reason}; call "
                             "pts_hf.restore_dense_(model) before loading it")
        self.weight_ss = torch.sparse.to_sparse_semi_structured(matrix)

    def dense_matrix(self) -> torch.Tensor:
        return self.weight_ss.to_dense()

    def weight_nbytes(self) -> int:
        total = 0
        for name in ("packed", "meta", "packed_t", "meta_t"):
            t = getattr(self.weight_ss, name, None)
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
        return total

    def matmul_t(self, x_t: torch.Tensor) -> torch.Tensor:
        return F.linear(x_t.t(), self.weight_ss).t()

    def _rows(self, x2: torch.Tensor) -> torch.Tensor:
        return F.linear(x2, self.weight_ss, self.bias)
