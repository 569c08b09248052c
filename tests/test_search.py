"""pts_hf/search/: the genetic algorithm and the gene decodings."""

import pytest
import torch

from pts_hf.search import genes_to_sparsities, logit_genes_for, regrow_genes_for, run_evolution


def test_evolution_is_deterministic_and_elitism_never_loses_the_seed():
    target = torch.tensor([0.3, -1.0, 2.0])

    def fitness(genes):
        return -float((genes - target).pow(2).sum())

    seed = [target + 0.01]
    a = run_evolution(fitness, 3, population=4, generations=3, parents=2, seed=1, initial=seed)
    b = run_evolution(fitness, 3, population=4, generations=3, parents=2, seed=1, initial=seed)
    assert torch.equal(a.best_genes, b.best_genes) and a.best_fitness == b.best_fitness
    assert a.best_fitness >= fitness(seed[0])
    with pytest.raises(ValueError, match="population"):
        run_evolution(fitness, 3, population=1)


@pytest.mark.parametrize("space", ["regrow", "logit"])
def test_decoded_allocations_hit_the_target(space):
    numels = [100, 400, 1600]
    levels = [0.6, 0.75, 0.8]
    genes = regrow_genes_for(levels, numels, 0.75, 0.05) if space == "regrow" else logit_genes_for(levels, 0.99)
    decoded = genes_to_sparsities(genes, numels, 0.75, space, 0.05, 0.99)
    assert sum(s * n for s, n in zip(decoded, numels)) / sum(numels) == pytest.approx(0.75, abs=1e-3)
    assert all(0.0 <= s <= 0.99 for s in decoded)
