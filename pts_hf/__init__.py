"""pts_hf: post-training sparsity for PyTorch and Hugging Face models.

``import pts_hf`` stays light: it does not import transformers, timm, datasets or accelerate.
"""

from pts_hf.api import SparsifyResult, sparsify
from pts_hf.checkpoint import load_sparse, save_sparse
from pts_hf.config import SparsityConfig
from pts_hf.hub import push_to_hub
from pts_hf.kernels import restore_dense_, use_sparse_kernels_
from pts_hf.sparsifiers import (
    SPARSIFIERS,
    FCPTSConfig,
    FCPTSSparsifier,
    LayerwiseSparsifier,
    MagnitudeConfig,
    MagnitudeSparsifier,
    POTConfig,
    POTSparsifier,
    PTSSparsifier,
    SparseGPTConfig,
    SparseGPTSparsifier,
    UniPTSConfig,
    UniPTSSparsifier,
    WandaConfig,
    WandaSparsifier,
    get_sparsifier_class,
)
from pts_hf.targets import Target, discover_targets
from pts_hf.version import __version__


def register_transformers_plugin() -> None:
    """Let plain transformers ``from_pretrained`` restore compressed (bitmask) pts_hf checkpoints in this
    process. Imports transformers; idempotent. ``pts_hf.load_sparse`` does not need it."""
    from pts_hf.integrations.transformers_plugin import register

    register()


__all__ = [
    "SPARSIFIERS",
    "FCPTSConfig",
    "FCPTSSparsifier",
    "LayerwiseSparsifier",
    "MagnitudeConfig",
    "MagnitudeSparsifier",
    "POTConfig",
    "POTSparsifier",
    "PTSSparsifier",
    "SparseGPTConfig",
    "SparseGPTSparsifier",
    "SparsifyResult",
    "SparsityConfig",
    "Target",
    "UniPTSConfig",
    "UniPTSSparsifier",
    "WandaConfig",
    "WandaSparsifier",
    "__version__",
    "discover_targets",
    "get_sparsifier_class",
    "load_sparse",
    "push_to_hub",
    "register_transformers_plugin",
    "restore_dense_",
    "save_sparse",
    "sparsify",
    "use_sparse_kernels_",
]
