"""Per-layer input statistics on the GEMM view: Hessian XXᵀ, per-column Σx², Σx; summed across processes."""

from __future__ import annotations

import torch
from torch import nn

from pts_hf.layers import GemmLayout, layer_input_columns

__all__ = ["STATISTICS", "LayerStats", "process_count"]

STATISTICS = frozenset({"hessian", "sq_sum", "mean"})


def process_count() -> int:
    """Processes of the initialised ``torch.distributed`` group (1 when there is none)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


class LayerStats:
    """Accumulates what a layer-wise method asks for (``kinds`` ⊆ :data:`STATISTICS`) from the layer's inputs.

    After :meth:`finalize`: ``hessian`` = E[xxᵀ] ``[G, C, C]``, ``sq_sum`` = Σx² ``[G, C]``, ``mean`` = E[x]
    ``[G, C]``, ``samples`` = number of input columns seen (tokens, or conv output positions).
    """

    def __init__(self, module: nn.Module, layout: GemmLayout, kinds: frozenset[str], dtype: torch.dtype):
        unknown = set(kinds) - STATISTICS
        if unknown:
            raise ValueError(f"unknown statistics {sorted(unknown)}; available: {sorted(STATISTICS)}")
        self.module, self.layout, self.kinds, self.dtype = module, layout, frozenset(kinds), dtype
        self.hessian: torch.Tensor | None = None
        self.sq_sum: torch.Tensor | None = None
        self.sum: torch.Tensor | None = None
        self.mean: torch.Tensor | None = None
        self.samples = 0
        self.calls = 0

    @torch.no_grad()
    def add(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> None:
        cols = layer_input_columns(self.module, self.layout, x.detach(), token_mask).to(self.dtype)  # [G, C, n]
        self.calls += 1
        n = cols.shape[-1]
        if n == 0:
            return
        self.samples += n
        if "hessian" in self.kinds:
            h = torch.bmm(cols, cols.transpose(1, 2))
            self.hessian = h if self.hessian is None else self.hessian.add_(h)
        if "sq_sum" in self.kinds:
            s = cols.pow(2).sum(-1)
            self.sq_sum = s if self.sq_sum is None else self.sq_sum.add_(s)
        if "mean" in self.kinds:
            s = cols.sum(-1)
            self.sum = s if self.sum is None else self.sum.add_(s)

    @torch.no_grad()
    def all_reduce(self) -> None:
        """Sum the statistics over the processes of an initialised ``torch.distributed`` group."""
        if process_count() < 2:
            return
        g, c = self.layout.groups, self.layout.columns
        device = self._device()
        count = torch.tensor([float(self.samples)], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(count)
        self.samples = int(count.item())
        for kind, name, shape in (("hessian", "hessian", (g, c, c)), ("sq_sum", "sq_sum", (g, c)),
                                  ("mean", "sum", (g, c))):
            if kind not in self.kinds:
                continue
            t = getattr(self, name)
            if t is None:  # this rank saw no samples
                t = torch.zeros(shape, dtype=self.dtype, device=device)
            torch.distributed.all_reduce(t)
            setattr(self, name, t)

    def _device(self) -> torch.device:
        for t in (self.hessian, self.sq_sum, self.sum):
            if t is not None:
                return t.device
        backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else "gloo"
        return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")

    def finalize(self) -> LayerStats:
        if self.samples:
            if self.hessian is not None:
                self.hessian = self.hessian / self.samples
            if self.sum is not None:
                self.mean = self.sum / self.samples
        return self
