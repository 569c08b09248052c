"""Evolutionary search of per-layer sparsities (UniPTS), as pure functions over genes and a fitness callback.

Genes → sparsities:

* ``regrow`` (UniPTS): every layer is reduced to P_e = P + δ, then δ·N_total weights are regrown across layers
  by softmax(genes): s_l = P + δ − δ·N_total·softmax(x)_l / N_l. The global sparsity is exactly P before
  clipping; clipped layers (s_l < 0) hand their excess back to the others (water-filling), so it stays exact.
* ``logit`` (wider): s_l = s_max·sigmoid(x_l + b), with the shift b solved by bisection so Σ s_l N_l = P·N_total;
  any layer can take any sparsity in [0, s_max], not only [0, P + δ].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from pts_hf.ops.allocation import regrow_allocation

__all__ = [
    "GAResult",
    "genes_to_sparsities",
    "logit_allocation",
    "logit_genes_for",
    "regrow_allocation",
    "regrow_genes_for",
    "run_evolution",
]


def logit_allocation(genes: torch.Tensor, numels: Sequence[int], sparsity: float,
                     max_sparsity: float = 0.999) -> list[float]:
    """Any per-layer sparsity in [0, max_sparsity]: s_max·sigmoid(x + b) with b matching the global target."""
    n = torch.tensor([float(x) for x in numels], dtype=torch.float64)
    target = sparsity * float(n.sum())
    x = genes.double()

    def zeros(b: float) -> float:
        return float((max_sparsity * torch.sigmoid(x + b) * n).sum())

    lo, hi = -60.0, 60.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if zeros(mid) < target:
            lo = mid
        else:
            hi = mid
    return [float(v) for v in max_sparsity * torch.sigmoid(x + 0.5 * (lo + hi))]


def genes_to_sparsities(genes: torch.Tensor, numels: Sequence[int], sparsity: float, space: str, delta: float,
                        max_sparsity: float) -> list[float]:
    if space == "regrow":
        return regrow_allocation(genes, numels, sparsity, delta, max_sparsity)
    if space == "logit":
        return logit_allocation(genes, numels, sparsity, max_sparsity)
    raise ValueError(f"unknown search space {space!r}; use 'regrow' or 'logit'")


def logit_genes_for(sparsities: Sequence[float], max_sparsity: float) -> torch.Tensor:
    """Genes of the ``logit`` space that reproduce given sparsities (to seed the population, e.g. with ERK)."""
    s = torch.tensor([min(max(v / max_sparsity, 1e-4), 1 - 1e-4) for v in sparsities], dtype=torch.float64)
    return torch.log(s / (1 - s)).float()


def regrow_genes_for(sparsities: Sequence[float], numels: Sequence[int], sparsity: float, delta: float
                     ) -> torch.Tensor:
    """Genes of the ``regrow`` space closest to given sparsities (e.g. ERK): softmax(genes) ∝ the weights each
    layer must regrow from P + δ (layers sparser than P + δ cannot be represented and regrow nothing)."""
    regrow = torch.tensor([max(sparsity + delta - s, 0.0) * n for s, n in zip(sparsities, numels)],
                          dtype=torch.float64)
    if float(regrow.sum()) <= 0:
        return torch.zeros(len(numels))
    share = (regrow / regrow.sum()).clamp_min(1e-8)
    return torch.log(share).float()


@dataclass
class GAResult:
    best_genes: torch.Tensor
    best_fitness: float
    history: list[dict[str, float]] = field(default_factory=list)
    evaluations: int = 0


def run_evolution(
    fitness: Callable[[torch.Tensor], float],
    n_genes: int,
    population: int = 25,
    generations: int = 25,
    parents: int = 10,
    mutation_prob: float = 0.1,
    seed: int = 0,
    initial: Sequence[torch.Tensor] = (),
    elitism: bool = True,
    init_std: float = 1.0,
    on_generation: Callable[[int, float], None] | None = None,
) -> GAResult:
    """Maximise ``fitness(genes)``: top-``parents`` selection, uniform crossover, multiplicative Gaussian mutation
    (x ← x·(1 + N(0,1)) per gene with probability ``mutation_prob``, as the released code), and, unlike the
    released code, the best individual kept across generations (``elitism``)."""
    if population < 2 or generations < 1 or not 1 <= parents <= population:
        raise ValueError("need population ≥ 2, generations ≥ 1 and 1 ≤ parents ≤ population")
    g = torch.Generator().manual_seed(seed)
    pop = [t.float().clone() for t in list(initial)[:population]]
    while len(pop) < population:
        pop.append(torch.randn(n_genes, generator=g) * init_std)
    best_genes, best_fit = pop[0], -math.inf
    history, evals = [], 0
    for gen in range(generations):
        scored = []
        for genes in pop:
            f = fitness(genes)
            evals += 1
            scored.append((f, genes))
        scored.sort(key=lambda t: t[0], reverse=True)
        if scored[0][0] > best_fit:
            best_fit, best_genes = scored[0][0], scored[0][1].clone()
        history.append({"generation": gen, "best": best_fit, "generation_best": scored[0][0],
                        "mean": sum(f for f, _ in scored) / len(scored)})
        if on_generation is not None:
            on_generation(gen, best_fit)
        if gen == generations - 1:
            break
        elite = [x for _, x in scored[:parents]]
        children = [best_genes.clone()] if elitism else []
        n_cross = (population - len(children)) // 2
        for _ in range(n_cross):
            i, j = torch.randint(len(elite), (2,), generator=g).tolist()
            pick = torch.rand(n_genes, generator=g) < 0.5
            children.append(torch.where(pick, elite[i], elite[j]))
        while len(children) < population:
            parent = elite[int(torch.randint(len(elite), (1,), generator=g))]
            hit = torch.rand(n_genes, generator=g) < mutation_prob
            noise = torch.randn(n_genes, generator=g)
            children.append(torch.where(hit, parent * (1 + noise), parent))
        pop = children
    return GAResult(best_genes, best_fit, history, evals)
