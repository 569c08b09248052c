"""The sequential pipeline: block discovery, hooks, sequential vs independent, unused layers, devices."""

import logging
import warnings
from typing import ClassVar

import pytest
import torch
from torch import nn

import pts_hf
from pts_hf.pipeline import find_units, run_pipeline
from pts_hf.targets import discover_targets
from tests.tiny_models import TINY_MODELS, small_cnn

GEN = torch.Generator().manual_seed(0)


def _hook_count(model):
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


class TwoBlocks(nn.Module):
    """Two chained blocks (a ModuleList, as transformers stacks them) with a declared block class."""

    _no_split_modules: ClassVar[list[str]] = ["Block"]

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList([Block(), Block()])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x):
        return torch.relu(self.fc(x)) + x


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_units_cover_every_target_once(name):
    build, _, _ = TINY_MODELS[name]
    model = build()
    targets = discover_targets(model)
    units, source = find_units(model, targets)
    covered = [t.tensor_fqn for u in units for t in u.targets]
    assert sorted(covered) == sorted(t.tensor_fqn for t in targets)
    if name.startswith("hf_"):
        assert source == "transformers _no_split_modules"
    if name.startswith("timm_"):
        assert source == "timm group_matcher"


def test_two_block_toy_is_one_chained_run():
    model = TwoBlocks()
    x = torch.randn(32, 16, generator=GEN)
    r = pts_hf.sparsify(model, x, method="wanda", sparsity=0.5)
    assert r.record.extras["pipeline"]["runs"] == [["layers.0", "layers.1"]]
    assert r.record.extras["pipeline"]["blocks_from"] == "transformers _no_split_modules"


def _second_block_hessian(sequential):
    model = TwoBlocks()
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    seen = {}

    def process(targets, stats):
        for t in targets:
            seen[t.tensor_fqn] = stats[t.tensor_fqn].hessian.clone()
            with torch.no_grad():  # prune block by block: zero the smaller half of the weights
                w = t.module.weight
                w.mul_(w.abs() >= w.abs().median())

    run_pipeline(model, discover_targets(model), [x[:32], x[32:]], frozenset({"hessian"}), process,
                 sequential=sequential, progress=False)
    dense = TwoBlocks()
    with torch.no_grad():
        h_dense_in = dense.layers[0](x)
        pruned_first = TwoBlocks()
        w = pruned_first.layers[0].fc.weight
        w.mul_(w.abs() >= w.abs().median())
        h_pruned_in = pruned_first.layers[0](x)
    return seen["layers.1.fc.weight"][0], h_dense_in, h_pruned_in


def test_sequential_and_independent_modes_differ_as_expected():
    h_seq, dense_in, pruned_in = _second_block_hessian(sequential=True)
    h_ind, _, _ = _second_block_hessian(sequential=False)
    n = dense_in.shape[0]
    assert torch.allclose(h_seq, pruned_in.t() @ pruned_in / n, atol=1e-5)  # sees the pruned first block
    assert torch.allclose(h_ind, dense_in.t() @ dense_in / n, atol=1e-5)  # sees the dense model
    assert not torch.allclose(h_seq, h_ind, atol=1e-3)


def test_no_hook_left_behind_also_after_an_error():
    model = small_cnn()
    before = _hook_count(model)
    pts_hf.sparsify(model, torch.randn(16, 3, 16, 16, generator=GEN), method="sparsegpt", sparsity=0.5, inplace=True)
    assert _hook_count(model) == before

    def boom(targets, stats):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_pipeline(model, discover_targets(model), [torch.randn(4, 3, 16, 16)], frozenset({"sq_sum"}), boom,
                     progress=False)
    assert _hook_count(model) == before


def test_model_mode_is_restored():
    model = small_cnn().train()
    run_pipeline(model, discover_targets(model), [torch.randn(4, 3, 16, 16)], frozenset({"sq_sum"}),
                 lambda t, s: None, progress=False)
    assert all(m.training for m in model.modules())


class WithUnused(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(16, 16)
        self.unused = nn.Linear(16, 16)
        self.b = nn.Linear(16, 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_unused_layer_is_skipped_with_a_warning_and_the_target_still_met():
    x = torch.randn(32, 16, generator=GEN)
    with pytest.warns(UserWarning, match="unused.weight"):
        r = pts_hf.sparsify(WithUnused(), x, method="sparsegpt", sparsity=0.5)
    assert r.layer_sparsity["unused.weight"] == 0.0
    n = sum(r.layer_numel.values())
    assert round(r.global_sparsity * n) == round(0.5 * n)
    assert r.record.extras["pipeline"]["unused_layers"] == ["unused.weight"]


def test_fallback_to_top_level_children_says_so(caplog):
    model = WithUnused()
    del model.unused
    with caplog.at_level(logging.INFO, logger="pts_hf"), warnings.catch_warnings():
        warnings.simplefilter("error")
        r = pts_hf.sparsify(model, torch.randn(8, 16, generator=GEN), method="wanda", sparsity=0.5)
    assert "no known block structure" in caplog.text
    assert r.record.extras["pipeline"]["blocks_from"].startswith("top-level children")


def test_padding_tokens_are_excluded_from_statistics():
    from tests.tiny_models import hf_bert

    model = hf_bert()
    ids = torch.randint(0, 128, (2, 8), generator=GEN)
    full = {"input_ids": ids[:, :5], "attention_mask": torch.ones(2, 5, dtype=torch.long)}
    padded = {"input_ids": torch.cat([ids[:, :5], torch.zeros(2, 3, dtype=torch.long)], 1),
              "attention_mask": torch.cat([torch.ones(2, 5), torch.zeros(2, 3)], 1).long()}
    got = []
    for batch in (full, padded):
        seen = {}
        run_pipeline(model, discover_targets(model), [batch], frozenset({"sq_sum"}),
                     lambda targets, stats, seen=seen: seen.update({k: v.sq_sum.clone() for k, v in stats.items()}),
                     progress=False)
        got.append(seen)
    q = "encoder.layer.0.attention.self.query.weight"
    assert torch.allclose(got[0][q], got[1][q], atol=1e-5)


class DeviceSpy(nn.Module):
    """Records where each block's weights are while it runs."""

    _no_split_modules: ClassVar[list[str]] = ["SpyBlock"]

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([SpyBlock(self) for _ in range(3)])
        self.log = []

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class SpyBlock(Block):
    def __init__(self, owner):
        super().__init__()
        self.__dict__["owner"] = owner

    def forward(self, x):
        self.owner.log.append([str(b.fc.weight.device) for b in self.owner.layers])
        return super().forward(x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (model on CPU, blocks moved to it)")
def test_only_the_current_block_is_on_the_device():
    model = DeviceSpy()
    r = run_pipeline(model, discover_targets(model), [torch.randn(4, 16)], frozenset({"hessian"}),
                     lambda t, s: None, device="cuda", progress=False)
    assert r.runs == [["layers.0", "layers.1", "layers.2"]]
    block_calls = [row for row in model.log if "cuda:0" in row]
    assert block_calls and all(row.count("cuda:0") == 1 for row in block_calls)
    assert all(p.device.type == "cpu" for p in model.parameters())  # every block back where it was


class Iterated(nn.Module):
    """Two ModuleLists the parent iterates: neither runs as a unit of its own, so each is calibrated from full
    forwards (two "full" runs)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.ModuleList([nn.Linear(16, 16)])
        self.b = nn.ModuleList([nn.Linear(16, 16)])

    def forward(self, x):
        for layer in (*self.a, *self.b):
            x = torch.relu(layer(x))
        return x


@pytest.mark.parametrize("sequential", [True, False])
def test_full_forward_units_see_pruned_or_dense_inputs(sequential):
    model = Iterated()
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        dense_in = torch.relu(model.a[0](x))
    seen = {}

    def process(targets, stats):
        for t in targets:
            seen[t.tensor_fqn] = stats[t.tensor_fqn].hessian[0].clone()
            with torch.no_grad():
                t.module.weight.mul_(t.module.weight.abs() >= t.module.weight.abs().median())

    r = run_pipeline(model, discover_targets(model), [x], frozenset({"hessian"}), process, sequential=sequential,
                     progress=False)
    assert r.runs == [["a"], ["b"]]
    with torch.no_grad():
        pruned_in = torch.relu(model.a[0](x))
    expected = pruned_in if sequential else dense_in
    assert not torch.allclose(pruned_in, dense_in)
    assert torch.allclose(seen["b.0.weight"], expected.t() @ expected / 32, atol=1e-5)
