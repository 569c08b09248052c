"""Pure maths: allocation of per-layer sparsity, masks, and the KDE threshold→sparsity bridge.

Nothing here touches a model, a hook or an optimizer; every function takes and returns tensors or numbers.
"""

from pts_hf.ops.allocation import (
    ALLOCATIONS,
    allocate,
    erk,
    exact_counts,
    exact_projection,
    global_magnitude,
    l2norm,
    lamp,
    lamp_scores,
    uniform,
)
from pts_hf.ops.kde import gaussian_kde, silverman_bandwidth, threshold_to_sparsity
from pts_hf.ops.masks import magnitude_mask, topk_mask

__all__ = [
    "ALLOCATIONS",
    "allocate",
    "erk",
    "exact_counts",
    "exact_projection",
    "gaussian_kde",
    "global_magnitude",
    "l2norm",
    "lamp",
    "lamp_scores",
    "magnitude_mask",
    "silverman_bandwidth",
    "threshold_to_sparsity",
    "topk_mask",
    "uniform",
]
