"""Allocation search (UniPTS): the evolutionary algorithm and its label-free, BN-recalibrated fitness."""

from pts_hf.search.evolution import (
    GAResult,
    genes_to_sparsities,
    logit_allocation,
    logit_genes_for,
    regrow_allocation,
    regrow_genes_for,
    run_evolution,
)
from pts_hf.search.fitness import MaskFitness

__all__ = [
    "GAResult",
    "MaskFitness",
    "genes_to_sparsities",
    "logit_allocation",
    "logit_genes_for",
    "regrow_allocation",
    "regrow_genes_for",
    "run_evolution",
]
