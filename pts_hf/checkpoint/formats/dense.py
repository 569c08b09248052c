"""The dense format: the model's ordinary files with the zeros in place (plain ``from_pretrained`` loads them)."""

from __future__ import annotations

from pts_hf.checkpoint.formats.base import CheckpointFormat

__all__ = ["DenseFormat"]


class DenseFormat(CheckpointFormat):
    name = "dense"

    def is_encoded(self, tensors: dict, meta: dict) -> bool:
        return False  # files without a pts_hf_format header are read as they are
