import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import pts_hf
from pts_hf.calibration import CalibrationData, recalibrate_batchnorm, split_batch
from tests.tiny_models import TINY_MODELS, small_cnn

X = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_result_fields_and_input_untouched():
    model = small_cnn()
    before = copy.deepcopy(model)
    r = pts_hf.sparsify(model, X, method="magnitude", sparsity=0.9, allocation="erk", seed=0)
    assert _same(model, before)
    assert r.model is not model
    assert set(r.layer_sparsity) == {"0.weight", "3.weight", "6.weight", "11.weight"}
    assert abs(r.global_sparsity - 0.9) <= 1e-3  # 4928 weights: within one weight
    n = sum(r.layer_numel.values())
    assert abs(r.global_sparsity * n - round(0.9 * n)) < 1e-6
    assert r.seconds > 0 and r.method == "magnitude"
    assert "global" in r.summary()
    assert all(type(m.weight) is nn.Parameter for m in r.model.modules() if hasattr(m, "weight"))


def test_inplace():
    model = small_cnn()
    r = pts_hf.sparsify(model, X, sparsity=0.5, inplace=True)
    assert r.model is model
    assert float((model[6].weight == 0).float().mean()) > 0


@pytest.mark.parametrize("form", ["tensor", "list", "tuples", "loader", "dataset", "generator", "dicts"])
def test_data_forms(form):
    y = torch.zeros(32, dtype=torch.long)
    data = {
        "tensor": X,
        "list": [X[:16], X[16:]],
        "tuples": [(X[:16], y[:16]), (X[16:], y[16:])],
        "loader": DataLoader(TensorDataset(X, y), batch_size=8),
        "dataset": TensorDataset(X, y),
        "generator": (X[i : i + 8] for i in range(0, 32, 8)),
        "dicts": [{"x": X[:16], "labels": y[:16]}],
    }[form]
    r = pts_hf.sparsify(small_cnn(), data, sparsity=0.7)
    assert r.record.extras["bn_batches"] >= 1
    assert r.global_sparsity == pytest.approx(0.7, abs=1e-3)


def test_hf_datasets_dataset_with_transform():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"img": X.numpy().tolist(), "label": [0] * 32})
    ds.set_transform(lambda b: {"pixel_values": torch.tensor(b["img"]), "label": b["label"]})
    cd = CalibrationData(ds, batch_size=8)
    assert len(cd) == 4
    r = pts_hf.sparsify(small_cnn(), ds, sparsity=0.5, batch_size=8)
    assert r.record.extras["bn_batches"] == 4


def test_dict_batches_go_to_hf_models_as_kwargs():
    builder, make_input, _ = TINY_MODELS["hf_bert"]
    model = builder()
    batch = make_input()
    args, kwargs = split_batch({**batch, "labels": torch.zeros(2)}, model)
    assert args == () and set(kwargs) == {"input_ids", "attention_mask"}
    with pytest.raises(TypeError, match="cannot feed"):
        split_batch({"foo": torch.zeros(2)}, small_cnn())


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "0.5"])
def test_bad_sparsity(bad):
    model = small_cnn()
    before = copy.deepcopy(model)
    with pytest.raises(ValueError, match="sparsity"):
        pts_hf.sparsify(model, X, sparsity=bad, inplace=True)
    assert _same(model, before)


def test_bad_method_allocation_option():
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        pts_hf.sparsify(small_cnn(), X, method="nope")
    with pytest.raises(ValueError, match="unknown allocation 'erx'"):
        pts_hf.sparsify(small_cnn(), X, allocation="erx")
    with pytest.raises(TypeError, match="temprature"):
        pts_hf.sparsify(small_cnn(), X, temprature=4)


def test_no_targets_and_empty_data():
    with pytest.raises(ValueError, match="no targetable weights"):
        pts_hf.sparsify(nn.Sequential(nn.ReLU()), X)
    model = small_cnn()
    before = copy.deepcopy(model)
    for empty in ([], iter([]), torch.empty(0, 3, 16, 16), None):
        with pytest.raises(ValueError, match=r"empty|needs calibration data"):
            pts_hf.sparsify(model, empty, sparsity=0.5, inplace=True)
    assert _same(model, before)
    # without BN re-estimation magnitude pruning needs no data
    r = pts_hf.sparsify(model, None, sparsity=0.5, bn_recalibration=False)
    assert r.record.extras["bn_batches"] == 0


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weight_raises_before_work(value):
    model = small_cnn()
    with torch.no_grad():
        model[3].weight[0, 0, 0, 0] = value
    before = copy.deepcopy(model)
    with pytest.raises(ValueError, match=r"3\.weight contains NaN or Inf"):
        pts_hf.sparsify(model, X, sparsity=0.5, inplace=True)
    assert all(torch.equal(a, b) or (a.isnan().any() and b.isnan().any())
               for a, b in zip(model.state_dict().values(), before.state_dict().values()))
    assert not any(hasattr(m, "parametrizations") for m in model.modules())


def test_batchnorm_recalibration_is_a_cumulative_average():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Dropout(0.5))
    model[1].momentum = 0.3
    model.train(False)
    batches = [X[:8], X[8:16], X[16:]]
    used = recalibrate_batchnorm(model, batches)
    assert used == 3
    with torch.no_grad():
        acts = [model[0](b) for b in batches]
    expected_mean = torch.stack([a.mean((0, 2, 3)) for a in acts]).mean(0)
    assert torch.allclose(model[1].running_mean, expected_mean, atol=1e-6)
    assert model[1].momentum == 0.3 and not model[1].training and not model[2].training
    assert recalibrate_batchnorm(nn.Sequential(nn.Linear(2, 2)), [torch.zeros(1, 2)]) == 0


def test_batchnorm_recalibration_helps_magnitude_pruning():
    """On a CNN whose BN stats match its activations, pruning shifts the statistics; re-estimating them brings the
    sparse outputs back towards the dense ones."""
    model = small_cnn()
    recalibrate_batchnorm(model, [X])  # make the dense model's BN stats consistent with its data
    model.eval()
    with torch.no_grad():
        dense = model(X)
    errs = {}
    for bn in (False, True):
        r = pts_hf.sparsify(model, X, sparsity=0.8, allocation="uniform", bn_recalibration=bn)
        r.model.eval()
        with torch.no_grad():
            errs[bn] = float((r.model(X) - dense).pow(2).mean())
    assert errs[True] < errs[False]
