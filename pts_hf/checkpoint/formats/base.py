"""What an on-disk format is: a per-file tensor encoding on top of the model's ordinary safetensors files.

A format subclasses :class:`CheckpointFormat` in its own file and gets one line in
:data:`pts_hf.checkpoint.formats.FORMATS`; :func:`pts_hf.save_sparse`, :func:`pts_hf.load_sparse`, the CLI
(``--format``), the Trainer callback (``PTSCallback(format=...)``) and the transformers plugin then handle it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

__all__ = ["FORMAT_META_KEY", "CheckpointFormat"]

FORMAT_META_KEY = "pts_hf_format"  # safetensors header key naming the format of an encoded file


class CheckpointFormat:
    """Identity encoding (the dense format); subclasses override :meth:`encode` / :meth:`decode`.

    ``quant_method``: when set, transformers checkpoints get ``config.json`` ``quantization_config =
    {"quant_method": quant_method}`` and the transformers plugin restores them in plain ``from_pretrained``;
    ``suffixes`` are the extra tensors stored beside a weight ``<name>`` (``<name><suffix>``), which the plugin
    hands to :meth:`decode_weight`.
    """

    name: ClassVar[str] = ""
    quant_method: ClassVar[str | None] = None
    suffixes: ClassVar[tuple[str, ...]] = ()

    def encode(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The tensors of one file as they are written."""
        return tensors

    def decode(self, tensors: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
        """Inverse of :meth:`encode`; errors name ``source`` (the file) and the tensor."""
        return tensors

    def decode_weight(self, name: str, values: torch.Tensor, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """One weight from its stored value tensor and its ``suffixes`` parts (the transformers plugin)."""
        return values

    def is_encoded(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> bool:
        """Whether a file was written by this format (its header names it)."""
        return meta.get(FORMAT_META_KEY) == self.name
