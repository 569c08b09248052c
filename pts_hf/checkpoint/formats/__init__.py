"""On-disk format registry: one file per format plus one line in ``FORMATS``."""

from __future__ import annotations

from typing import Any

import torch

from pts_hf.checkpoint.formats.base import FORMAT_META_KEY, CheckpointFormat
from pts_hf.checkpoint.formats.bitmask import BitmaskFormat
from pts_hf.checkpoint.formats.dense import DenseFormat

__all__ = ["FORMATS", "FORMAT_META_KEY", "CheckpointFormat", "format_of_file", "get_format"]

FORMATS: dict[str, CheckpointFormat] = {
    DenseFormat.name: DenseFormat(),
    BitmaskFormat.name: BitmaskFormat(),
}


def get_format(name: str) -> CheckpointFormat:
    if name not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {name!r}")
    return FORMATS[name]


def format_of_file(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> CheckpointFormat:
    """The format a file was written in (dense when none claims it)."""
    for fmt in FORMATS.values():
        if fmt.is_encoded(tensors, meta):
            return fmt
    return FORMATS["dense"]
