"""pts_hf: post-training sparsity for PyTorch and Hugging Face models.

``import pts_hf`` stays light: it does not import transformers, timm, datasets or accelerate.
"""

from pts_hf.api import SparsifyResult, sparsify
from pts_hf.config import SparsityConfig
from pts_hf.sparsifiers import (
    SPARSIFIERS,
    FCPTSConfig,
    FCPTSSparsifier,
    MagnitudeConfig,
    MagnitudeSparsifier,
    PTSSparsifier,
    UniPTSConfig,
    UniPTSSparsifier,
    get_sparsifier_class,
)
from pts_hf.targets import Target, discover_targets
from pts_hf.version import __version__

__all__ = [
    "SPARSIFIERS",
    "FCPTSConfig",
    "FCPTSSparsifier",
    "MagnitudeConfig",
    "MagnitudeSparsifier",
    "PTSSparsifier",
    "SparsifyResult",
    "SparsityConfig",
    "Target",
    "UniPTSConfig",
    "UniPTSSparsifier",
    "__version__",
    "discover_targets",
    "get_sparsifier_class",
    "sparsify",
]
