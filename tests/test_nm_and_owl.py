"""N:M masks for every method (checked group by group) and the OWL allocation."""

import pytest
import torch
from torch import nn

import pts_hf
from pts_hf import SPARSIFIERS
from pts_hf.layers import gemm_layout
from pts_hf.ops.allocation import allocate, owl
from pts_hf.ops.nm import is_nm, nm_mask, parse_structure

GEN = torch.Generator().manual_seed(0)


class Mixed(nn.Module):
    """Linear, grouped conv, depthwise conv and a layer whose input dim is not a multiple of 4."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)  # 27 inputs: not a multiple of 4
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)  # 36 per group
        self.depthwise = nn.Conv2d(8, 8, 2, padding=1, groups=8)  # 4 per group
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.grouped(x))
        x = self.depthwise(x)
        return self.head(x.mean((2, 3)))


X = torch.randn(32, 3, 8, 8, generator=GEN)
FAST = {"fcpts": {"steps": 3}, "unipts": {"steps": 3, "search": False}, "pot": {"recon_steps": 5}}


@pytest.mark.parametrize("method", sorted(SPARSIFIERS))
@pytest.mark.parametrize("structure", ["2:4", "1:4"])
def test_every_method_gives_valid_nm_masks(method, structure):
    n, m = parse_structure(structure)
    with pytest.warns(UserWarning, match="stem.weight"):
        r = pts_hf.sparsify(Mixed(), X, method=method, mask_structure=structure, batch_size=16,
                            **FAST.get(method, {}))
    model = r.model
    assert r.layer_sparsity["stem.weight"] == 0.0  # left dense, counted honestly
    for name in ("grouped", "depthwise", "head"):
        layer = getattr(model, name)
        w = gemm_layout(layer, layer.weight).to_gemm(layer.weight.detach())
        assert is_nm(w != 0, n, m), f"{method} {name}"
        assert r.layer_sparsity[f"{name}.weight"] == pytest.approx((m - n) / m)
    dense = sum(v for k, v in r.layer_numel.items() if k == "stem.weight")
    total = sum(r.layer_numel.values())
    assert r.global_sparsity == pytest.approx((m - n) / m * (total - dense) / total)


def test_nm_mask_and_check():
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.0, 0.0, 1.0, 1.0]])
    mask = nm_mask(scores, 2, 4)
    assert mask.tolist() == [[True, False, True, False, False, False, True, True]]
    assert is_nm(mask, 2, 4) and not is_nm(torch.ones(1, 8, dtype=torch.bool), 2, 4)


@pytest.mark.parametrize("bad", ["4:2", "2:2", "0:4", "2-4", "a:b", "2:4:8", ""])
def test_bad_nm_string_raises_before_work(bad):
    model = Mixed()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"N:M|mask_structure"):
        pts_hf.sparsify(model, X, method="sparsegpt", mask_structure=bad)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_nm_with_contradicting_sparsity_or_allocation_raises():
    with pytest.raises(ValueError, match="contradicts"):
        pts_hf.sparsify(Mixed(), X, method="wanda", mask_structure="2:4", sparsity=0.7)
    with pytest.raises(ValueError, match="does not apply"):
        pts_hf.sparsify(Mixed(), X, method="wanda", mask_structure="2:4", allocation="lamp")


def test_owl_gives_outlier_heavy_layers_lower_sparsity_and_exact_total():
    w = [torch.ones(64, 64), torch.ones(64, 64), torch.ones(128, 64)]
    scores = [torch.ones(64, 64), torch.ones(64, 64), torch.ones(128, 64)]
    scores[1][0, :40] = 100.0  # layer 1 has many outliers
    levels = owl(w, 0.6, scores, lam=0.1, m=5.0)
    assert levels[1] < levels[0]
    assert levels[1] == pytest.approx(levels[0] - 0.2, abs=1e-6)  # spans 2·λ
    total = sum(x.numel() for x in w)
    assert sum(lv * x.numel() for lv, x in zip(levels, w)) == pytest.approx(0.6 * total, abs=1e-3)
    with pytest.raises(ValueError, match="activation"):
        allocate("owl", w, 0.5)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_owl_allocation_runs_through_sparsify(method):
    x = X * torch.linspace(0.1, 5.0, 3).view(1, 3, 1, 1)
    r = pts_hf.sparsify(Mixed(), x, method=method, sparsity=0.6, allocation="owl", owl_lambda=0.1, batch_size=16)
    n = sum(r.layer_numel.values())
    assert round(r.global_sparsity * n) == round(0.6 * n)
    assert len(set(round(v, 3) for v in r.layer_sparsity.values())) > 1


def test_fcpts_nm_with_fixed_mask_tail():
    """The early projection under N:M recomputes the masks once (it recursed through step() before)."""
    with pytest.warns(UserWarning, match="stem.weight"):
        r = pts_hf.sparsify(Mixed(), X, method="fcpts", mask_structure="2:4", steps=4, fixed_mask_tail=0.5,
                            batch_size=16)
    w = gemm_layout(r.model.head, r.model.head.weight).to_gemm(r.model.head.weight.detach())
    assert is_nm(w != 0, 2, 4)
