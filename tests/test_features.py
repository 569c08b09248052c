"""Intermediate-feature distillation: discovery of the compared block outputs, the taps, the loss and the loop."""

import math

import pytest
import torch
from torch import nn

import pts_hf
from pts_hf.features import FeatureTap, feature_points
from pts_hf.losses import feature_distillation
from pts_hf.sparsifiers import get_sparsifier_class
from tests.tiny_models import hf_bert, small_cnn, timm_model

X = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(0))


class StagedCNN(nn.Module):
    """A stem conv, one stage of two conv blocks, a pooled linear head (a Sequential ending in a target layer)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)

        def block(i: int, o: int) -> nn.Module:
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())

        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.stage = nn.Sequential(block(8, 8), block(8, 16))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage(self.stem(x)))


def _points(model: nn.Module, spec="blocks") -> list[str]:
    sp = get_sparsifier_class("magnitude")(sparsity=0.5)
    sp.prepare(model)
    return feature_points(model, sp.group_targets(), spec)


def test_points_are_the_blocks_of_each_model_family():
    # a CNN stage is split into its blocks; the stem conv and the head's Linear (target layers) are left out
    assert _points(StagedCNN()) == ["stage.0", "stage.1"]
    assert _points(hf_bert()) == ["encoder.layer.0", "encoder.layer.1"]  # transformers _no_split_modules
    assert _points(timm_model("resnet18"))[:3] == ["layer1.0", "layer1.1", "layer2.0"]  # timm group_matcher
    assert _points(small_cnn()) == []  # a flat Sequential of layers has no blocks
    assert _points(StagedCNN(), ["stage.1", "stem"]) == ["stage.1", "stem"]
    with pytest.raises(ValueError, match=r"\['nope'\].*named_modules"):
        _points(StagedCNN(), ["stage.0", "nope"])


def test_tap_records_in_order_and_removes_its_hooks():
    model = StagedCNN().eval()
    tap = FeatureTap(model, ["stage.1", "stage.0"])
    model(X[:2])
    a, b = tap.take()
    assert a.shape == (2, 16, 16, 16) and b.shape == (2, 8, 16, 16)
    with pytest.raises(RuntimeError, match="did not run"):
        tap.take()  # taken: nothing recorded since
    tap.remove()
    assert all(not m._forward_hooks for m in model.modules())


def test_feature_loss_is_zero_for_equal_features_and_scale_free():
    t = [torch.randn(4, 8), torch.randn(4, 3, 5) * 100]
    assert float(feature_distillation([x.clone() for x in t], t)) == 0.0
    noisy = [x + 0.1 * x.std() * torch.randn_like(x) for x in t]
    loss = float(feature_distillation(noisy, t))
    assert 0.005 < loss < 0.02  # each point normalised by the teacher's energy: both contribute ~0.01
    with pytest.raises(ValueError, match="same non-empty"):
        feature_distillation(t[:1], t)


def test_loop_with_feature_distillation():
    kw = dict(method="fcpts", sparsity=0.7, steps=12, batch_size=16, progress=False, seed=3)
    base = pts_hf.sparsify(StagedCNN(), X, **kw)  # off by default for fcpts
    r = pts_hf.sparsify(StagedCNN(), X, feature_weight=1.0, **kw)
    assert r.record.extras["feature_points"] == ["stage.0", "stage.1"]
    assert "feature_points" not in base.record.extras
    feats = [h["feature"] for h in r.record.history]
    assert len(feats) == 12 and feats[0] > 0 and feats[-1] < feats[0]
    assert abs(r.global_sparsity - 0.7) < 1e-3
    assert all(not m._forward_hooks for m in r.model.modules())  # the taps left with the loop
    different = any(not torch.equal(a, b) for a, b in zip(base.model.state_dict().values(),
                                                           r.model.state_dict().values()))
    assert different
    # cached teacher features give the same run as recomputed ones
    c = pts_hf.sparsify(StagedCNN(), X, feature_weight=1.0, cache_teacher=False, **kw)
    assert r.record.extras["teacher_cached"] and not c.record.extras["teacher_cached"]
    for (k, va), vb in zip(r.model.state_dict().items(), c.model.state_dict().values()):
        assert torch.allclose(va, vb, atol=1e-6), k
    # a model without blocks: only the output is compared, and the record says so
    flat = pts_hf.sparsify(small_cnn(), X, feature_weight=1.0, **kw)
    assert flat.record.extras["feature_points"] == [] and "feature" not in flat.record.history[-1]
    # unipts goes through the same loop, with the comparison on by default (weight 3)
    u = pts_hf.sparsify(StagedCNN(), X, method="unipts", sparsity=0.7, steps=6, batch_size=16, progress=False)
    assert u.config.feature_weight == 3.0 and u.record.extras["feature_points"] == ["stage.0", "stage.1"]


def test_bad_feature_options_fail_before_any_work(monkeypatch):
    from pts_hf import distillation

    def no_teacher(*a, **k):
        raise AssertionError("work started before the options were checked")

    monkeypatch.setattr(distillation, "dense_copy", no_teacher)
    kw = dict(method="fcpts", sparsity=0.7, steps=5, batch_size=16, progress=False)
    with pytest.raises(ValueError, match="'nope'"):
        pts_hf.sparsify(StagedCNN(), X, feature_weight=1.0, feature_points=["nope"], **kw)
    with pytest.raises(ValueError, match="feature_weight"):
        pts_hf.sparsify(StagedCNN(), X, feature_weight=-1.0, **kw)
    with pytest.raises(ValueError, match="feature_points"):
        pts_hf.sparsify(StagedCNN(), X, feature_points="layers", **kw)
    with pytest.raises(ValueError, match=r"feature_schedule must be one of \('constant', 'cosine'\), got 'linear'"):
        pts_hf.sparsify(StagedCNN(), X, feature_weight=1.0, feature_schedule="linear", **kw)


def test_cosine_feature_schedule_decays_the_weight_to_zero(monkeypatch):
    from pts_hf import distillation
    from pts_hf.distillation import feature_weight_at

    cos = pts_hf.UniPTSConfig(sparsity=0.7, feature_weight=10.0, feature_schedule="cosine")
    assert [round(feature_weight_at(cos, p), 6) for p in (0.0, 0.5, 1.0, 2.0)] == [10.0, 5.0, 0.0, 0.0]
    const = pts_hf.UniPTSConfig(sparsity=0.7, feature_weight=10.0)
    assert const.feature_schedule == "constant" and feature_weight_at(const, 0.9) == 10.0
    # the loop adds the comparison at the scheduled weight of each step
    seen: list[float] = []
    real = distillation.add_feature_loss

    def spy(loss, logs, s, t, weight):
        seen.append(weight)
        return real(loss, logs, s, t, weight)

    monkeypatch.setattr(distillation, "add_feature_loss", spy)
    kw = dict(method="unipts", sparsity=0.7, steps=4, batch_size=16, progress=False, feature_weight=8.0)
    r = pts_hf.sparsify(StagedCNN(), X, feature_schedule="cosine", **kw)
    assert [round(w, 6) for w in seen] == [8.0, round(8 * 0.5 * (1 + math.cos(math.pi / 4)), 6), 4.0,
                                           round(8 * 0.5 * (1 + math.cos(3 * math.pi / 4)), 6)]
    assert pts_hf.SparsityConfig.from_json(r.config.to_json()).feature_schedule == "cosine"  # replayable


def test_a_config_saved_before_feature_distillation_replays_without_it():
    from pts_hf.config import SparsityConfig

    cfg = SparsityConfig.from_dict({"method": "unipts", "sparsity": 0.9, "version": 1})
    assert cfg.feature_weight == 0.0  # saved (version stamped) before the field existed: the old behaviour
    assert SparsityConfig.from_dict({"method": "unipts", "sparsity": 0.9}).feature_weight == 3.0  # typed: default
    now = pts_hf.UniPTSConfig(sparsity=0.9)
    assert SparsityConfig.from_dict(now.to_dict()).feature_weight == 3.0
