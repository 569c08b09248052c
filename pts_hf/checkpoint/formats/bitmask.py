"""The bitmask format: every ≥2-D weight ``W`` with ≤ 90% non-zeros is stored as three tensors

* ``<name>``: its non-zero values, 1-D, in row-major order (same dtype). Its shape differs from ``W``'s, so a
  loader that does not know the format fails loudly (transformers: size mismatch) instead of silently
  re-initialising the weight;
* ``<name>_bitmask``: uint8, the non-zero pattern packed 8 per byte (bit i of byte j is element 8j + i);
* ``<name>_shape``: int64, ``W``'s shape.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from pts_hf.checkpoint.formats.base import CheckpointFormat

__all__ = ["BITMASK_QUANT_METHOD", "BITMASK_SUFFIX", "SHAPE_SUFFIX", "BitmaskFormat", "is_worth_compressing",
           "pack", "unpack"]

BITMASK_QUANT_METHOD = "pts_hf_bitmask"

BITMASK_SUFFIX = "_bitmask"
SHAPE_SUFFIX = "_shape"
_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def is_worth_compressing(t: torch.Tensor, max_density: float = 0.9) -> bool:
    """≥ 2-D floating tensors with at most ``max_density`` non-zeros."""
    return t.ndim >= 2 and t.is_floating_point() and t.numel() > 0 and \
        int(torch.count_nonzero(t)) <= max_density * t.numel()


def pack(name: str, t: torch.Tensor) -> dict[str, torch.Tensor]:
    flat = t.detach().reshape(-1).cpu()
    nz = flat != 0
    pad = (-nz.numel()) % 8
    bits = torch.cat([nz, torch.zeros(pad, dtype=torch.bool)]).view(-1, 8).to(torch.uint8)
    packed = (bits * _BITS).sum(dim=1, dtype=torch.uint8)
    return {name: flat[nz].contiguous(), name + BITMASK_SUFFIX: packed.contiguous(),
            name + SHAPE_SUFFIX: torch.tensor(list(t.shape), dtype=torch.int64)}


def unpack(name: str, values: torch.Tensor, bitmask: torch.Tensor, shape: torch.Tensor, source: str = ""
           ) -> torch.Tensor:
    """Rebuild the dense tensor, checking that the three parts agree (errors name ``source`` and ``name``)."""
    where = f"{source}: {name}" if source else name
    dims = [int(d) for d in shape.tolist()]
    n = math.prod(dims)
    if bitmask.dtype != torch.uint8 or bitmask.ndim != 1 or bitmask.numel() != (n + 7) // 8:
        raise ValueError(f"{where}: bitmask holds {bitmask.numel()} bytes of {bitmask.dtype}, expected "
                         f"{(n + 7) // 8} uint8 bytes for shape {tuple(dims)}")
    bits = ((bitmask.unsqueeze(1) & _BITS) != 0).reshape(-1)[:n]
    if int(bits.sum()) != values.numel() or values.ndim != 1:
        raise ValueError(f"{where}: bitmask marks {int(bits.sum())} non-zeros but {values.numel()} values are stored")
    out = torch.zeros(n, dtype=values.dtype)
    out[bits] = values
    return out.view(dims)


class BitmaskFormat(CheckpointFormat):
    name = "bitmask"
    quant_method = BITMASK_QUANT_METHOD
    suffixes = (BITMASK_SUFFIX, SHAPE_SUFFIX)

    def encode(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, t in tensors.items():
            out.update(pack(name, t) if is_worth_compressing(t) else {name: t.contiguous()})
        return out

    def decode(self, tensors: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
        out = {}
        for name, t in tensors.items():
            if name.endswith((BITMASK_SUFFIX, SHAPE_SUFFIX)):
                continue
            mask, shape = tensors.get(name + BITMASK_SUFFIX), tensors.get(name + SHAPE_SUFFIX)
            if mask is not None and shape is not None:
                out[name] = unpack(name, t, mask, shape, source)
            elif (mask is None) != (shape is None):
                raise ValueError(f"{source}: {name} has only one of {BITMASK_SUFFIX} / {SHAPE_SUFFIX}")
            else:
                out[name] = t
        return out

    def decode_weight(self, name: str, values: torch.Tensor, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        mask, shape = parts.get(BITMASK_SUFFIX), parts.get(SHAPE_SUFFIX)
        if mask is None or shape is None:  # an uncompressed weight
            return values
        return unpack(name, values, mask, shape)

    def is_encoded(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> bool:
        return super().is_encoded(tensors, meta) or any(k.endswith(BITMASK_SUFFIX) for k in tensors)
