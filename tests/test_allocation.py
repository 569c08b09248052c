import math

import pytest
import torch

from pts_hf.ops import allocation as A
from pts_hf.ops.masks import magnitude_mask, topk_mask

SHAPES = [(16, 3, 3, 3), (32, 16, 3, 3), (64, 32, 3, 3), (64, 64, 1, 1), (10, 64)]


def _weights(seed=0, shapes=SHAPES):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g) * (i + 1) for i, s in enumerate(shapes)]


def _global(sparsities, shapes=SHAPES):
    n = [math.prod(s) for s in shapes]
    return sum(s * k for s, k in zip(sparsities, n)) / sum(n)


def test_uniform():
    assert A.uniform(SHAPES, 0.7) == [0.7] * len(SHAPES)


@pytest.mark.parametrize("s", [0.0, 0.5, 0.9, 0.98])
def test_erk_meets_budget_and_prefers_small_layers(s):
    sp = A.erk(SHAPES, s)
    assert _global(sp) == pytest.approx(s, abs=1e-9)
    assert all(0.0 <= x < 1.0 for x in sp)
    # big layers are sparser than small ones
    assert sp[2] >= sp[1] >= sp[0]


def test_erk_makes_overfull_layers_dense_and_resolves():
    sp = A.erk(SHAPES, 0.5)
    assert sp[0] == 0.0  # the 3-channel stem would need density > 1
    assert _global(sp) == pytest.approx(0.5, abs=1e-9)


def test_erk_power_zero_is_uniform():
    assert A.erk(SHAPES, 0.8, power=0.0) == pytest.approx([0.8] * len(SHAPES))


@pytest.mark.parametrize("s", [0.5, 0.9, 0.95, 0.995])
def test_regrow_is_exact_and_regrows_equal_counts(s):
    weights = _weights()
    sp = A.allocate("regrow", weights, s)
    n = [w.numel() for w in weights]
    assert _global(sp) == pytest.approx(s, abs=1e-9)
    base = min(s + 0.05, max(0.99, s))
    assert all(0.0 <= x <= base + 1e-12 for x in sp)
    regrown = [(base - x) * k for x, k in zip(sp, n)]
    # equal numbers regrown per layer, except layers capped at dense, which hand their share to the others
    uncapped = [r for x, r in zip(sp, regrown) if x > 0]
    assert max(uncapped) - min(uncapped) < 1e-6 * max(1.0, max(uncapped))
    assert sp[-1] <= sp[2] or s == 0.995  # the small classifier ends denser than the big conv


def test_regrow_delta_option_and_its_validation():
    from pts_hf.config import SparsityConfig

    weights = _weights()
    wide, narrow = A.allocate("regrow", weights, 0.8, delta=0.15), A.allocate("regrow", weights, 0.8, delta=0.0)
    assert narrow == pytest.approx([0.8] * len(weights))  # no reduction, nothing to regrow: uniform
    biggest = max(range(len(weights)), key=lambda i: weights[i].numel())
    assert max(wide) == wide[biggest] < 0.95  # reduced to 0.95, then it regrows the smallest fraction
    assert max(wide) > max(A.allocate("regrow", weights, 0.8))  # a wider δ moves more weights to small layers
    with pytest.raises(ValueError, match="regrow delta"):
        A.regrow(weights, 0.8, delta=1.5)
    with pytest.raises(ValueError, match="regrow_delta"):
        SparsityConfig(allocation="regrow", regrow_delta=-0.1)
    assert SparsityConfig(allocation="regrow", regrow_delta=0.1).allocation_options() == {"delta": 0.1}


def test_exact_counts_largest_remainder():
    numels = [7, 13, 101, 3]
    counts = A.exact_counts([0.33, 0.51, 0.77, 0.5], numels, total_zeros=90)
    assert sum(counts) == 90
    assert all(0 <= c <= n for c, n in zip(counts, numels))
    with pytest.raises(ValueError):
        A.exact_counts([0.5], [10], total_zeros=11)


@pytest.mark.parametrize("target", [0.5, 0.9, 0.97, 0.3333])
def test_exact_projection_is_exact_even_with_ties(target):
    g = torch.Generator().manual_seed(1)
    # integer scores -> massive ties at the cut
    scores = [torch.randint(0, 5, s, generator=g).float() for s in SHAPES]
    masks = A.exact_projection(scores, target)
    total = sum(m.numel() for m in masks)
    zeros = sum(int((~m).sum()) for m in masks)
    assert zeros == round(target * total)
    assert abs(zeros / total - target) <= 1e-4 or total < 10_000
    # never prunes a higher score while keeping a lower one
    kept_min = min(float(s[m].min()) for s, m in zip(scores, masks) if m.any())
    pruned_max = max(float(s[~m].max()) for s, m in zip(scores, masks) if (~m).any())
    assert pruned_max <= kept_min


def test_exact_projection_bound_on_large_model():
    w = _weights(3, [(256, 256, 3, 3), (512, 64)])  # > 10k weights
    masks = A.exact_projection([x.abs() for x in w], 0.9)
    total = sum(m.numel() for m in masks)
    achieved = sum(int((~m).sum()) for m in masks) / total
    assert abs(achieved - 0.9) <= 1e-4


def test_exact_projection_min_keep():
    scores = [torch.zeros(100), torch.ones(100) * 5]
    masks = A.exact_projection(scores, 0.6, min_keep=2)
    assert int(masks[0].sum()) == 2 and int((~masks[0]).sum() + (~masks[1]).sum()) == 120
    with pytest.raises(ValueError, match="cannot be reached"):
        A.exact_projection(scores, 0.995, min_keep=2)


def test_l2norm_is_scale_invariant_global_is_not():
    w = _weights(2)
    scaled = [x * (100.0 if i == 1 else 1.0) for i, x in enumerate(w)]
    assert A.l2norm(w, 0.8) == pytest.approx(A.l2norm(scaled, 0.8))
    assert A.global_magnitude(w, 0.8) != pytest.approx(A.global_magnitude(scaled, 0.8))
    assert _global(A.l2norm(w, 0.8)) == pytest.approx(0.8, abs=1e-4)


def test_lamp_scores_and_allocation():
    w = torch.tensor([3.0, -1.0, 2.0, 0.5])
    s = A.lamp_scores(w)
    # sorted |w| = .5,1,2,3 -> .25/14.25, 1/14, 4/13, 9/9
    assert s.tolist() == pytest.approx([1.0, 1 / 14, 4 / 13, 0.25 / 14.25])
    sp = A.lamp(_weights(4), 0.95)
    assert all(x < 1.0 for x in sp)  # every layer keeps its largest weight
    assert _global(sp) == pytest.approx(0.95, abs=1e-4)


@pytest.mark.parametrize("bad", [-0.1, 1.0, float("nan"), 2])
def test_bad_sparsity(bad):
    with pytest.raises(ValueError, match="sparsity"):
        A.allocate("erk", _weights(), bad)


def test_unknown_allocation():
    with pytest.raises(ValueError, match="unknown allocation"):
        A.allocate("random", _weights(), 0.5)


def test_masks_exact_counts():
    w = torch.randn(50, 20)
    assert int((~magnitude_mask(w, 0.73)).sum()) == round(0.73 * 1000)
    assert int(topk_mask(torch.zeros(10), 4).sum()) == 4
    m = magnitude_mask(w, n_zero=100)
    assert float(w.abs()[m].min()) >= float(w.abs()[~m].max())
