"""A layer whose weight is held as a sparse CSR matrix: Linear, transformers ``Conv1D`` and 1×1 ``Conv2d``.

Every supported layer is a matrix product ``y = W x + b`` with ``W`` of shape (out, in). :class:`CSRLayer` keeps
``W`` as ``torch.sparse_csr`` and computes ``(W @ xᵀ)ᵀ`` with ``torch.addmm``: torch's CSR kernels (MKL on x86
CPUs) are fast with the sparse operand on the left and slow with it on the right (``x @ Wᵀ``, measured 4–20×
slower than dense). ``chunk`` splits the tokens into blocks of that many columns (measured faster for thousands
of tokens: the block of ``xᵀ`` stays in cache).

The wrapper replaces the layer in its parent; the original module object is kept (without its weight) so
:func:`pts_hf.kernels.restore_dense_` can put it back. ``state_dict()`` still holds a dense ``weight`` of the
original shape and name (materialised on save), and ``load_state_dict`` accepts one, so checkpoints are
unchanged; ``named_parameters()`` no longer lists ``weight`` (the model is for inference).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

__all__ = ["CSRLayer", "from_matrix", "layer_kind", "to_matrix"]


def layer_kind(module: nn.Module) -> str | None:
    """``"linear"``, ``"conv1d_hf"`` (transformers ``Conv1D``), ``"conv1x1"`` or ``None`` (not a matrix product
    this module can run: e.g. a 3×3 or grouped convolution)."""
    if isinstance(module, nn.Linear):
        return "linear"
    if type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers"):
        return "conv1d_hf"
    if (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1
            and module.padding in ((0, 0), "valid")):
        return "conv1x1"
    return None


def to_matrix(weight: torch.Tensor, kind: str) -> torch.Tensor:
    """The layer's weight as the (out, in) matrix of ``y = W x``."""
    if kind == "linear":
        return weight
    if kind == "conv1d_hf":  # transformers Conv1D stores (in, out): y = x @ W + b
        return weight.t()
    if kind == "conv1x1":
        return weight.reshape(weight.shape[0], weight.shape[1])
    raise ValueError(f"unknown layer kind {kind!r}; expected linear, conv1d_hf or conv1x1")


def from_matrix(matrix: torch.Tensor, kind: str, shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`to_matrix`: the (out, in) matrix back in the layer's own weight shape."""
    if kind == "conv1d_hf":
        return matrix.t().contiguous()
    return matrix.reshape(shape).contiguous()


def csr_nbytes(t: torch.Tensor) -> int:
    """Bytes held by a CSR tensor (values + column indices + row pointers)."""
    return sum(x.numel() * x.element_size() for x in (t.values(), t.col_indices(), t.crow_indices()))


class _SparseMatmulLayer(nn.Module):
    """Shared plumbing: kind-specific reshaping, dense-shaped state dict, the kept original module."""

    def __init__(self, module: nn.Module, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.weight_shape = tuple(module.weight.shape)
        self.weight_requires_grad = bool(module.weight.requires_grad)
        self.bias = module.bias
        if kind == "conv1x1":
            self.stride = tuple(module.stride)
        object.__setattr__(self, "original", module)  # not a submodule: keeps state_dict keys unchanged

    # the product on a (in, N) right-hand side; subclasses implement
    def matmul_t(self, x_t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def dense_matrix(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def weight_nbytes(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def dense_weight(self) -> torch.Tensor:
        """The weight, dense, in the original layer's shape."""
        return from_matrix(self.dense_matrix(), self.kind, torch.Size(self.weight_shape))

    def _rows(self, x2: torch.Tensor) -> torch.Tensor:
        """(N, in) -> (N, out), bias included, contiguous: a transposed view would slow down every later op
        (layer norms, residual adds), a cost the per-layer timing would not see."""
        y = self.matmul_t(x2.t())
        if self.bias is not None:
            y = y + self.bias[:, None]
        return y.t().contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "conv1x1":
            if self.stride != (1, 1):
                x = x[:, :, :: self.stride[0], :: self.stride[1]]
            b, c, h, w = x.shape
            y = self.matmul_t(x.permute(1, 0, 2, 3).reshape(c, b * h * w))  # (out, B·H·W)
            if self.bias is not None:
                y = y + self.bias[:, None]
            return y.reshape(-1, b, h, w).permute(1, 0, 2, 3).contiguous()
        lead = x.shape[:-1]
        return self._rows(x.reshape(-1, x.shape[-1])).reshape(*lead, -1)

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        destination[prefix + "weight"] = self.dense_weight()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any],
                              strict: bool, missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        key = prefix + "weight"
        if key in state_dict:
            w = state_dict[key]
            if tuple(w.shape) != self.weight_shape:
                error_msgs.append(f"size mismatch for {key}: copying a param with shape {tuple(w.shape)}, "
                                  f"the sparse-kernel layer holds {self.weight_shape}")
            else:
                self.load_dense_matrix(to_matrix(w.detach(), self.kind))
        elif strict:
            missing_keys.append(key)
        rest = {k: v for k, v in state_dict.items() if k != key}
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def load_dense_matrix(self, matrix: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class CSRLayer(_SparseMatmulLayer):
    """Runs a Linear / HF Conv1D / 1×1 Conv2d with a CSR weight; outputs equal the dense layer's up to float
    summation order (see :data:`pts_hf.kernels.TOLERANCE`)."""

    def __init__(self, module: nn.Module, kind: str | None = None, chunk: int | None = None,
                 index_dtype: torch.dtype = torch.int32) -> None:
        kind = kind or layer_kind(module)
        if kind is None:
            raise ValueError(f"{type(module).__name__} is not a Linear, transformers Conv1D or 1×1 ungrouped "
                             "Conv2d without padding; CSR kernels cannot run it")
        super().__init__(module, kind)
        if chunk is not None and chunk < 1:
            raise ValueError(f"chunk must be a positive number of tokens or None, got {chunk}")
        self.chunk = chunk
        self.index_dtype = index_dtype
        self.register_buffer("weight_csr", self._to_csr(to_matrix(module.weight.detach(), kind)), persistent=False)

    def _to_csr(self, matrix: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            csr = matrix.contiguous().to_sparse_csr()
            if self.index_dtype == torch.int64:
                return csr
            return torch.sparse_csr_tensor(csr.crow_indices().to(self.index_dtype),
                                           csr.col_indices().to(self.index_dtype), csr.values(), csr.shape,
                                           dtype=csr.dtype, device=csr.device, check_invariants=False)

    def load_dense_matrix(self, matrix: torch.Tensor) -> None:
        self.weight_csr = self._to_csr(matrix.to(self.weight_csr.device, self.weight_csr.dtype))

    def dense_matrix(self) -> torch.Tensor:
        return self.weight_csr.to_dense()

    def weight_nbytes(self) -> int:
        return csr_nbytes(self.weight_csr)

    def matmul_t(self, x_t: torch.Tensor) -> torch.Tensor:
        w = self.weight_csr
        n = x_t.shape[1]
        if self.chunk is None or n <= self.chunk:
            return torch.mm(w, x_t.contiguous() if self.chunk is not None else x_t)
        return torch.cat([torch.mm(w, part.contiguous()) for part in x_t.split(self.chunk, dim=1)], dim=1)

    def _rows(self, x2: torch.Tensor) -> torch.Tensor:
        """Chunked: each block's (out, chunk) product is transposed into the (N, out) result while it is still in
        cache, instead of one transpose of the whole output at the end."""
        n = x2.shape[0]
        if self.chunk is None or n <= self.chunk:
            return super()._rows(x2)
        w = self.weight_csr
        y = torch.empty(n, w.shape[0], dtype=x2.dtype, device=x2.device)
        for start in range(0, n, self.chunk):
            part = x2[start:start + self.chunk]
            y[start:start + part.shape[0]] = torch.mm(w, part.t().contiguous()).t()
        return y if self.bias is None else y.add_(self.bias)

    def extra_repr(self) -> str:
        out, inp = self.weight_csr.shape
        density = self.weight_csr.values().numel() / max(out * inp, 1)
        return (f"kind={self.kind}, in={inp}, out={out}, sparsity={1 - density:.3f}, chunk={self.chunk}, "
                f"bias={self.bias is not None}")
