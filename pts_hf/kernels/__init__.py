"""Running sparse weights faster: per-layer kernel choice (dense / CSR on CPU / 2:4 semi-structured on CUDA).

``use_sparse_kernels_(model, example_inputs)`` times each targeted layer on the input it sees and keeps a sparse
kernel only where it beats dense; ``restore_dense_(model)`` undoes it. See ``BENCHMARKS.md`` for measured speed.
"""

from pts_hf.kernels.convert import (
    BACKENDS,
    TOLERANCE,
    KernelReport,
    LayerKernel,
    restore_dense_,
    run_model,
    use_sparse_kernels_,
)
from pts_hf.kernels.csr import CSRLayer, layer_kind
from pts_hf.kernels.select import choose_kernel, time_candidates
from pts_hf.kernels.semi_structured import SemiStructuredLayer, is_2to4

__all__ = [
    "BACKENDS",
    "TOLERANCE",
    "CSRLayer",
    "KernelReport",
    "LayerKernel",
    "SemiStructuredLayer",
    "choose_kernel",
    "is_2to4",
    "layer_kind",
    "restore_dense_",
    "run_model",
    "time_candidates",
    "use_sparse_kernels_",
]
