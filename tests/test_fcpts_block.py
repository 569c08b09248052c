"""fcpts-block: global budget solve, block-local reconstruction, exactness, device placement, bad input."""

from typing import ClassVar

import pytest
import torch
from torch import nn

import pts_hf
from pts_hf.ops.budget import ErrorCurve, error_curve, solve_budget
from pts_hf.pipeline.reconstruct import reconstruct_block
from pts_hf.sparsifiers import FCPTSBlockConfig

GEN = torch.Generator().manual_seed(0)


class Block(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))


class TwoBlocks(nn.Module):
    _no_split_modules: ClassVar[list[str]] = ["Block"]

    def __init__(self, d=16):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList([Block(d) for _ in range(2)])
        self.head = nn.Linear(d, 4)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def _data(n=4, d=16):
    return [torch.randn(32, d, generator=GEN) * torch.linspace(0.2, 3.0, d) for _ in range(n)]


# --- the budget solve ---------------------------------------------------------------------------------------------
def test_solve_budget_is_exact_and_prefers_the_cheap_layer():
    cheap = error_curve(torch.full((100,), 0.01), energy=1.0)
    dear = error_curve(torch.full((100,), 1.0), energy=1.0)
    counts = solve_budget([cheap, dear], 130)
    assert sum(counts) == 130 and counts == [100, 30]


def test_solve_budget_equalises_marginal_prices_on_convex_curves():
    a = error_curve(torch.linspace(0, 1, 1000) ** 2, energy=1.0)
    b = error_curve(2 * torch.linspace(0, 1, 1000) ** 2, energy=1.0, points=1000)
    ka, kb = solve_budget([a, b], 1000)
    assert ka + kb == 1000 and ka > kb  # b's weights cost twice as much: fewer of them go
    # marginal prices (the next saliency) nearly equal at the optimum: (ka/1000)² ≈ 2 (kb/1000)²
    assert abs((ka / 1000) ** 2 - 2 * (kb / 1000) ** 2) < 0.02


def test_solve_budget_rejects_an_impossible_target():
    with pytest.raises(ValueError, match="cannot be placed"):
        solve_budget([ErrorCurve([0, 10], [0.0, 1.0])], 11)


def test_target_above_the_layer_cap_raises_before_any_work():
    with pytest.raises(ValueError, match="max_layer_sparsity"):
        pts_hf.sparsify(TwoBlocks(), _data(), method="fcpts-block", sparsity=0.99)


# --- the method ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("structure", ["unstructured", "2:4"])
def test_global_target_is_exact(structure):
    kw = {"sparsity": 0.7} if structure == "unstructured" else {"mask_structure": structure}
    r = pts_hf.sparsify(TwoBlocks(), _data(), method="fcpts-block", recon_steps=8, progress=False, **kw)
    weights = [m.weight for m in r.model.modules() if isinstance(m, nn.Linear)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    assert zeros == round((0.7 if structure == "unstructured" else 0.5) * total)
    if structure == "2:4":
        for w in weights:
            assert bool(((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all())


def test_budget_is_not_uniform_and_follows_sensitivity():
    model = TwoBlocks()
    with torch.no_grad():  # block 1's first layer matters 30× more
        model.layers[1].fc1.weight.mul_(30.0)
        model.layers[1].fc2.weight.div_(30.0)
    r = pts_hf.sparsify(model, _data(), method="fcpts-block", sparsity=0.6, recon_steps=0, progress=False)
    levels = r.record.layer_values("budget_level")
    assert len(set(round(v, 3) for v in levels.values())) > 1
    assert sum(levels[k] * n for k, n in _numels(r.model).items()) == pytest.approx(0.6 * sum(_numels(r.model)
                                                                                              .values()), abs=1)


def _numels(model):
    return {n + ".weight": m.weight.numel() for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def test_block_reconstruction_reduces_each_blocks_error():
    model = TwoBlocks()
    seen = {}

    def spy(block, calls, targets, masks, **kw):
        res = reconstruct_block(block, calls, targets, masks, **kw)
        seen[id(block)] = res
        return res

    import pts_hf.sparsifiers.fcpts_block as fb

    original, fb.reconstruct_block = fb.reconstruct_block, spy
    try:
        r = pts_hf.sparsify(model, _data(), method="fcpts-block", sparsity=0.8, recon_steps=40, recon_lr=1e-2,
                            progress=False)
    finally:
        fb.reconstruct_block = original
    assert [id(b) for b in r.model.layers] == list(seen)[:2]
    for res in seen.values():
        assert res.after < 0.9 * res.before
        assert sum(res.losses[-4:]) < sum(res.losses[:4])  # last pass over the 4 batches vs the first
    assert set(r.record.extras["block_reconstruction"]) >= {"layers.0", "layers.1"}


def test_reconstruction_improves_the_model_output_over_one_shot():
    data = _data()
    dense = TwoBlocks()
    with torch.no_grad():
        ref = [dense(x) for x in data]

    @torch.no_grad()
    def err(model):
        return sum(float((model(x) - y).pow(2).sum()) for x, y in zip(data, ref))

    one_shot = pts_hf.sparsify(TwoBlocks(), data, method="fcpts-block", sparsity=0.8, recon_steps=0,
                               progress=False).model
    trained = pts_hf.sparsify(TwoBlocks(), data, method="fcpts-block", sparsity=0.8, recon_steps=40,
                              recon_lr=1e-2, progress=False).model
    assert err(trained) < 0.8 * err(one_shot)


class MoveSpy(TwoBlocks):
    """Records every move of a block and, at each block call, which blocks are away from home."""

    def __init__(self):
        super().__init__()
        self.away: set[int] = set()
        self.calls: list[tuple[int, frozenset[int]]] = []
        for i, layer in enumerate(self.layers):
            layer.register_forward_pre_hook(lambda m, a, i=i: self.calls.append((i, frozenset(self.away))))
            original = layer.to

            def to(*args, i=i, original=original, **kw):
                dev = torch.device(args[0]) if args and isinstance(args[0], (str, torch.device)) else None
                if dev is not None and dev.index == 0:
                    self.away.add(i)
                else:
                    self.away.discard(i)
                return original(*args, **kw)

            layer.to = to


def test_only_the_current_block_is_moved_to_the_device():
    """``device='cpu:0'`` is the CPU under another name: every move is recorded, nothing really moves."""
    model = MoveSpy()
    pts_hf.sparsify(model, _data(), method="fcpts-block", sparsity=0.5, recon_steps=4, device="cpu:0",
                    progress=False, inplace=True)
    during = [away for i, away in model.calls if away]
    assert during, "no block was moved to the device"
    assert all(len(away) == 1 for away in during)
    assert all(away == {i} for i, away in model.calls if away)  # a block runs on the device only when it is there
    assert not model.away  # every block went back


class CacheBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x):
        return _Cache(self.fc(x))


class _Cache:
    def __init__(self, t):
        self.t = t


class CacheModel(nn.Module):
    _no_split_modules: ClassVar[list[str]] = ["CacheBlock"]

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([CacheBlock(), CacheBlock()])

    def forward(self, x):
        for b in self.blocks:
            x = b(x).t
        return x


def test_block_returning_a_non_tensor_raises_naming_block_and_type():
    with pytest.raises(TypeError, match=r"blocks\.0.*_Cache"):
        pts_hf.sparsify(CacheModel(), _data(), method="fcpts-block", sparsity=0.5, progress=False)


@pytest.mark.parametrize("bad, match", [({"budget": "magic"}, "budget"), ({"pruner": "obc"}, "pruner"),
                                        ({"recon_steps": -1}, "recon_steps"), ({"recon_lr": 0}, "recon_lr"),
                                        ({"allocation": "erk"}, "only used with budget='none'"),
                                        ({"mask_structure": "2:4", "budget": "obs"}, "N:M")])
def test_bad_options_are_rejected_at_construction(bad, match):
    with pytest.raises(ValueError, match=match):
        FCPTSBlockConfig(**bad)
