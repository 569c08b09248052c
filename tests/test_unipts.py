import copy
import itertools

import pytest
import torch

import pts_hf
from pts_hf import UniPTSSparsifier
from pts_hf.calibration import CalibrationData
from pts_hf.losses import base_decayed_kl, kl_distillation
from pts_hf.search.evolution import logit_allocation, regrow_allocation, run_evolution
from tests.tiny_models import small_cnn

X = torch.randn(96, 3, 16, 16, generator=torch.Generator().manual_seed(0))
FAST = {"steps": 6, "batch_size": 16, "population": 4, "generations": 3, "parents": 2,
        "search_samples": 32, "fitness_samples": 32, "search": True}
NUMELS = [432, 144, 4608, 320, 20000]


def _global(sp, numels=NUMELS):
    return sum(s * n for s, n in zip(sp, numels)) / sum(numels)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("target", [0.5, 0.9, 0.95])
def test_regrow_keeps_exact_global_sparsity_even_when_clipping(seed, target):
    genes = torch.randn(len(NUMELS), generator=torch.Generator().manual_seed(seed)) * 4  # extreme: forces clipping
    sp = regrow_allocation(genes, NUMELS, target, delta=0.05)
    assert _global(sp) == pytest.approx(target, abs=1e-9)
    assert all(0.0 <= s <= target + 0.05 + 1e-12 for s in sp)
    sp = logit_allocation(genes, NUMELS, target, max_sparsity=0.99)
    assert _global(sp) == pytest.approx(target, abs=1e-7)
    assert all(0.0 <= s <= 0.99 for s in sp)


def test_regrow_uniform_genes_regrow_delta_n_by_share():
    sp = regrow_allocation(torch.zeros(2), [100, 100], 0.5, delta=0.1)
    assert sp == pytest.approx([0.5, 0.5])


def test_elitism_never_loses_the_best_and_search_is_deterministic():
    def fitness(g):
        return -float(((g - 1.5) ** 2).sum())

    a = run_evolution(fitness, 6, population=8, generations=12, parents=3, seed=3)
    bests = [h["best"] for h in a.history]
    assert all(b2 >= b1 for b1, b2 in itertools.pairwise(bests))
    assert a.best_fitness == pytest.approx(fitness(a.best_genes))
    b = run_evolution(fitness, 6, population=8, generations=12, parents=3, seed=3)
    assert torch.equal(a.best_genes, b.best_genes)
    with pytest.raises(ValueError):
        run_evolution(fitness, 6, population=1)


def test_base_decayed_objective_matches_its_definition():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 10, generator=g), torch.randn(4, 10, generator=g)
    p_t = torch.softmax(t / 4, -1)
    expected = 16 * (p_t * (p_t.log() - torch.log_softmax(s, -1) / 8)).sum(-1).mean()
    assert float(base_decayed_kl(s, t, 4.0, 8.0)) == pytest.approx(float(expected), rel=1e-5)
    # with tau = 1 and T = 1 it is the plain KL
    assert float(base_decayed_kl(s, t, 1.0, 1.0)) == pytest.approx(float(kl_distillation(s, t, 1.0)), rel=1e-5)


def test_search_leaves_model_unchanged_and_is_deterministic():
    model = small_cnn()
    dense = copy.deepcopy(model.state_dict())
    teacher = copy.deepcopy(model).eval()
    sp = UniPTSSparsifier(sparsity=0.8, **FAST)
    sp.prepare(model)
    info = sp.search_allocation(model, CalibrationData(X, 16), teacher)
    for g in sp.groups:
        orig = g["module"].parametrizations["weight"].original
        assert torch.equal(orig, dense[g["tensor_fqn"]])
    bn = {k: v for k, v in model.state_dict().items() if "running" in k}
    assert all(torch.equal(v, dense[k]) for k, v in bn.items())
    assert sp.target_sparsity() == pytest.approx(0.8, abs=1e-4)
    assert info.extras["search_evaluations"] >= 2 and info.extras["search_seconds"] > 0
    sp2 = UniPTSSparsifier(sparsity=0.8, **FAST)
    sp2.prepare(small_cnn())
    info2 = sp2.search_allocation(sp2.model, CalibrationData(X, 16), teacher)
    searched = {k: v["searched_sparsity"] for k, v in info.layers.items()}
    assert searched == {k: v["searched_sparsity"] for k, v in info2.layers.items()}


def test_dynamic_masks_change_between_steps():
    model = small_cnn()
    sp = UniPTSSparsifier(sparsity=0.8, **FAST)
    sp.prepare(model)
    sp.step()
    masks0 = [sp.parametrization_of(g).mask.clone() for g in sp.groups]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        out = model(X[:16])
        out.pow(2).sum().backward()  # pruned weights get straight-through gradients and can regrow
        opt.step()
        opt.zero_grad()
        sp.step()
    masks1 = [sp.parametrization_of(g).mask for g in sp.groups]
    assert any(not torch.equal(a, b) for a, b in zip(masks0, masks1))
    assert sp.global_sparsity() == pytest.approx(0.8, abs=2e-4)


def test_fixed_masks_without_dynamic():
    sp = UniPTSSparsifier(sparsity=0.8, dynamic=False, **FAST)
    model = small_cnn()
    sp.prepare(model)
    sp.step()
    m0 = [sp.parametrization_of(g).mask.clone() for g in sp.groups]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    sp.step()
    assert all(torch.equal(a, sp.parametrization_of(g).mask) for a, g in zip(m0, sp.groups))


@pytest.mark.parametrize("ablation", [{}, {"search": False}, {"objective": "kl"}, {"dynamic": False},
                                      {"search_space": "logit"}])
def test_one_call_api_exact_with_every_switch(ablation):
    r = pts_hf.sparsify(small_cnn(), X, method="unipts", sparsity=0.9, **{**FAST, **ablation})
    n = sum(r.layer_numel.values())
    assert round(r.global_sparsity * n) == round(0.9 * n)
    assert len(r.record.history) == 6
    assert ("search_seconds" in r.record.extras) == ablation.get("search", True)


def test_default_allocation_is_lamp_without_search():
    opts = {k: v for k, v in FAST.items() if k != "search"}
    r = pts_hf.sparsify(small_cnn(), X, method="unipts", sparsity=0.9, **opts)
    assert "search_seconds" not in r.record.extras and r.config.allocation == "lamp"
    lamp = pts_hf.sparsify(small_cnn(), X, method="magnitude", sparsity=0.9, allocation="lamp", progress=False)
    erk = pts_hf.sparsify(small_cnn(), X, method="magnitude", sparsity=0.9, allocation="erk", progress=False)
    initial = r.record.layer_values("initial_sparsity")
    for name, level in initial.items():
        assert level == pytest.approx(lamp.layer_sparsity[name], abs=1e-2)
    assert any(abs(initial[n] - erk.layer_sparsity[n]) > 0.05 for n in initial)  # not ERK by another name


def test_top1_fitness_needs_labels():
    with pytest.raises(ValueError, match="label"):
        pts_hf.sparsify(small_cnn(), X, method="unipts", sparsity=0.5, fitness="top1", **FAST)
    y = torch.randint(0, 10, (96,))
    batches = [(X[i:i + 16], y[i:i + 16]) for i in range(0, 96, 16)]
    r = pts_hf.sparsify(small_cnn(), batches, method="unipts", sparsity=0.5, fitness="top1", **FAST)
    best, seeded = r.record.extras["search_best_fitness"], r.record.extras["allocation_fitness"]
    assert 0 <= seeded <= best <= 1  # top-1 fractions; elitism from the seeded allocation never ends below it


@pytest.mark.parametrize("bad", [{"delta": -0.1}, {"population": 1}, {"generations": 0}, {"parents": 30},
                                 {"search_space": "grid"}, {"objective": "ce"}])
def test_bad_search_options_raise_before_work(bad):
    model = small_cnn()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError):
        pts_hf.sparsify(model, X, method="unipts", sparsity=0.5, inplace=True, **{**FAST, **bad})
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_model_without_batchnorm_is_fine(caplog):
    import logging

    caplog.set_level(logging.INFO, logger="pts_hf")
    r = pts_hf.sparsify(small_cnn(bn=False), X, method="unipts", sparsity=0.5, **FAST)
    assert r.global_sparsity == pytest.approx(0.5, abs=1e-3)
    assert "no BatchNorm" in caplog.text


def test_regrow_genes_reproduce_a_representable_allocation():
    from pts_hf.search.evolution import regrow_genes_for

    target = [0.9, 0.93, 0.87, 0.92, 0.9]
    numels = [1000, 2000, 1000, 500, 500]
    p = sum(s * n for s, n in zip(target, numels)) / sum(numels)
    genes = regrow_genes_for(target, numels, p, delta=0.05)
    assert regrow_allocation(genes, numels, p, 0.05) == pytest.approx(target, abs=1e-6)
