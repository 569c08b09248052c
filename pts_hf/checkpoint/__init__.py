"""Sparse checkpoints: dense-with-zeros safetensors (plain ``from_pretrained`` loads them) or the compressed
bitmask format, each with a ``sparsity_config.json`` sidecar."""

from pts_hf.checkpoint.io import BITMASK_QUANT_METHOD, load_sparse, read_safetensors, resolve_folder, save_sparse
from pts_hf.checkpoint.sidecar import SIDECAR_NAME, make_sidecar, read_sidecar

__all__ = [
    "BITMASK_QUANT_METHOD",
    "SIDECAR_NAME",
    "load_sparse",
    "make_sidecar",
    "read_safetensors",
    "read_sidecar",
    "resolve_folder",
    "save_sparse",
]
