"""How a targeted layer's weight maps onto the GEMM it runs: ``[groups, rows (outputs), columns (inputs)]``.

* ``nn.Linear``: ``[1, out, in]``;
* transformers ``Conv1D`` (weight stored ``[in, out]``): ``[1, out, in]``, transposed;
* ``nn.Conv1d/2d/3d`` with ``groups=g``: ``[g, out/g, in/g · Πkernel]`` (depthwise: columns = the kernel).

Layer-wise methods (Hessians, N:M groups, input norms) work on this view; :func:`layer_input_columns` turns a
layer's input activations into the matching ``[groups, columns, samples]`` matrix (convolutions are unfolded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["GemmLayout", "gemm_layout", "layer_input_columns"]


@dataclass(frozen=True)
class GemmLayout:
    kind: str  # "linear", "conv1d_hf" or "conv"
    shape: tuple[int, ...]
    groups: int = 1

    @property
    def rows(self) -> int:
        return (self.shape[1] if self.kind == "conv1d_hf" else self.shape[0]) // self.groups

    @property
    def columns(self) -> int:
        if self.kind == "conv1d_hf":
            return self.shape[0]
        return math.prod(self.shape[1:])

    def to_gemm(self, weight: torch.Tensor) -> torch.Tensor:
        """``[groups, rows, columns]`` view (a copy for Conv1D, which is transposed)."""
        w = weight.t() if self.kind == "conv1d_hf" else weight
        return w.reshape(self.groups, self.rows, self.columns)

    def from_gemm(self, w: torch.Tensor) -> torch.Tensor:
        """Back to the layer's own weight shape."""
        if self.kind == "conv1d_hf":
            return w.reshape(self.rows, self.columns).t().contiguous()
        return w.reshape(self.shape)


def _is_hf_conv1d(module: nn.Module) -> bool:
    cls = parametrize.type_before_parametrizations(module)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")


def gemm_layout(module: nn.Module, weight: torch.Tensor) -> GemmLayout:
    shape = tuple(weight.shape)
    if isinstance(module, nn.modules.conv._ConvNd):
        return GemmLayout("conv", shape, module.groups)
    if _is_hf_conv1d(module):
        return GemmLayout("conv1d_hf", shape)
    if weight.ndim != 2:
        raise TypeError(f"{type(module).__name__} weight of shape {shape} has no known GEMM layout")
    return GemmLayout("linear", shape)


def _unfold(x: torch.Tensor, conv: nn.modules.conv._ConvNd) -> torch.Tensor:
    """Convolution input ``[B, C, *S]`` → patches ``[B, C, *L, *K]`` (padding, stride, dilation applied)."""
    spatial = x.ndim - 2
    pad = conv._reversed_padding_repeated_twice
    if any(pad):
        mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        x = F.pad(x, pad, mode=mode)
    for d in range(spatial):
        k, s, dil = conv.kernel_size[d], conv.stride[d], conv.dilation[d]
        x = x.unfold(2 + d, dil * (k - 1) + 1, s)  # appends the window dim at the end
    if any(dil > 1 for dil in conv.dilation):
        index = tuple([slice(None)] * (2 + spatial) + [slice(None, None, dil) for dil in conv.dilation])
        x = x[index]
    return x


def layer_input_columns(module: nn.Module, layout: GemmLayout, x: torch.Tensor,
                        token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The layer's input as GEMM columns: ``[groups, columns, samples]``.

    ``token_mask`` (``[B, T]`` of 0/1, e.g. an attention mask) drops padding tokens of a ``[B, T, d]`` input.
    """
    if layout.kind == "conv":
        spatial = x.ndim - 2
        patches = _unfold(x, module)  # [B, C, *L, *K]
        perm = [1, *range(2 + spatial, 2 + 2 * spatial), 0, *range(2, 2 + spatial)]
        return patches.permute(*perm).reshape(layout.groups, layout.columns, -1)
    d = x.shape[-1]
    if token_mask is not None and x.ndim == 3 and tuple(x.shape[:2]) == tuple(token_mask.shape):
        x = x[token_mask.to(x.device).bool()]
    return x.reshape(-1, d).t().unsqueeze(0)
