"""Sparse checkpoints in any registered on-disk format (:mod:`pts_hf.checkpoint.formats`: dense-with-zeros
safetensors that plain ``from_pretrained`` loads, or the compressed bitmask format), each with a
``sparsity_config.json`` sidecar written from the run record."""

from pts_hf.checkpoint.formats import FORMATS, CheckpointFormat, get_format
from pts_hf.checkpoint.io import (
    BITMASK_QUANT_METHOD,
    RECORD_ATTR,
    finish_checkpoint,
    fold_parametrizations,
    load_sparse,
    read_safetensors,
    record_of,
    resolve_folder,
    save_sparse,
    write_checkpoint,
)
from pts_hf.checkpoint.sidecar import SIDECAR_NAME, make_sidecar, read_sidecar

__all__ = [
    "BITMASK_QUANT_METHOD",
    "FORMATS",
    "RECORD_ATTR",
    "SIDECAR_NAME",
    "CheckpointFormat",
    "finish_checkpoint",
    "fold_parametrizations",
    "get_format",
    "load_sparse",
    "make_sidecar",
    "read_safetensors",
    "read_sidecar",
    "record_of",
    "resolve_folder",
    "save_sparse",
    "write_checkpoint",
]
