import pytest
import torch
from torch import nn

import pts_hf
from pts_hf.losses import extract_output
from pts_hf.targets import discover_targets, supported_layer_types
from tests.tiny_models import TINY_MODELS, small_cnn


def _all_supported(model):
    return [n for n, m in model.named_modules() if isinstance(m, supported_layer_types())]


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_discovery_on_tiny_models(name):
    builder, make_input, excluded = TINY_MODELS[name]
    model = builder()
    targets = discover_targets(model)
    names = [t.module_name for t in targets]
    assert names, name
    for ex in excluded:
        assert not any(n == ex or n.startswith(ex + ".") for n in names), f"{ex} must not be a target"
    # every supported layer except the excluded embeddings is targeted; tied weights once
    expected = [n for n in _all_supported(model) if not any(n == ex or n.startswith(ex + ".") for ex in excluded)]
    assert names == expected
    assert len({id(t.weight) for t in targets}) == len(targets)
    # and the one-call API hits the target exactly on it
    batch = make_input()
    result = pts_hf.sparsify(model, [batch], sparsity=0.6, allocation="uniform")
    zeros = sum(int((t.weight == 0).sum()) for t in discover_targets(result.model))
    total = sum(t.numel for t in targets)
    assert abs(zeros - round(0.6 * total)) <= 1
    assert result.global_sparsity == pytest.approx(0.6, abs=1e-4)
    with torch.no_grad():  # the sparse model runs; its output is finite and no longer the dense one
        result.model.eval()
        model.eval()
        out = result.model(**batch) if isinstance(batch, dict) else result.model(batch)
        dense = model(**batch) if isinstance(batch, dict) else model(batch)
    sparse_out, dense_out = extract_output(out)[0], extract_output(dense)[0]
    assert sparse_out.shape == dense_out.shape and torch.isfinite(sparse_out).all()
    assert not torch.allclose(sparse_out, dense_out)


def test_gpt2_conv1d_is_found():
    from transformers.pytorch_utils import Conv1D

    model = TINY_MODELS["hf_gpt2"][0]()
    kinds = {type(t.module) for t in discover_targets(model)}
    assert Conv1D in kinds


def test_depthwise_and_grouped_convs_are_targets():
    model = small_cnn()
    targets = discover_targets(model)
    assert any(t.module.groups == 16 for t in targets if isinstance(t.module, nn.Conv2d))
    assert len(targets) == 4


def test_patterns_class_module_parent_regex_and_ignore():
    model = small_cnn()
    assert [t.module_name for t in discover_targets(model, targets=["Linear"])] == ["11"]
    assert [t.module_name for t in discover_targets(model, targets=["3"])] == ["3"]
    assert [t.module_name for t in discover_targets(model, targets=["3.weight"])] == ["3"]
    assert [t.module_name for t in discover_targets(model, targets=["re:[36]$"])] == ["3", "6"]
    assert [t.module_name for t in discover_targets(model, ignore=["Conv2d"])] == ["11"]
    nested = nn.Sequential()
    nested.add_module("block", small_cnn())
    assert len(discover_targets(nested, targets=["block"])) == 4  # a parent module selects its layers


@pytest.mark.parametrize("kw", [{"targets": ["Conv3d"]}, {"targets": ["nope"]}, {"ignore": ["re:^zzz"]},
                                {"targets": ["Linear"], "ignore": ["0"]}])
def test_unmatched_pattern_raises_naming_it(kw):
    pattern = (kw.get("ignore") or kw["targets"])[0]
    with pytest.raises(ValueError, match=pattern.replace("^", r"\^").replace("$", r"\$")):
        discover_targets(small_cnn(), **kw)


def test_bad_regex_and_nothing_left():
    with pytest.raises(ValueError, match="regular expression"):
        discover_targets(small_cnn(), targets=["re:("])
    with pytest.raises(ValueError, match="no targetable weights"):
        discover_targets(nn.Sequential(nn.ReLU(), nn.Dropout()))
    with pytest.raises(ValueError, match="no targetable weights"):
        discover_targets(small_cnn(), ignore=["Conv2d", "Linear"])


def test_tied_weights_counted_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 8)
            self.b = nn.Linear(8, 8)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(self.a(x))

    targets = discover_targets(Tied())
    assert [t.module_name for t in targets] == ["a"]
    result = pts_hf.sparsify(Tied(), torch.randn(4, 8), sparsity=0.5)
    assert result.model.b.weight is result.model.a.weight
    assert int((result.model.b.weight == 0).sum()) == 32


def test_import_is_lean():
    import subprocess
    import sys

    heavy = "('transformers', 'timm', 'datasets', 'accelerate')"
    code = f"import sys, pts_hf; print(','.join(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
