"""Every registered sparsifier keeps the torch.ao.pruning BaseSparsifier contract (and fixes its traps)."""

import copy

import pytest
import torch
from torch.ao.pruning import BaseSparsifier
from torch.ao.pruning.scheduler.lambda_scheduler import LambdaSL
from torch.nn.utils import parametrize

from pts_hf import SPARSIFIERS
from pts_hf.parametrize import PTSParametrization, ThresholdMask
from tests.tiny_models import small_cnn

X = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture(params=sorted(SPARSIFIERS))
def method(request):
    return request.param


def _effective(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()} | {
        n + ".weight": m.weight.detach().clone() for n, m in model.named_modules() if hasattr(m, "parametrizations")
    }


def _prepared(method, model=None, **kw):
    model = model or small_cnn()
    sp = SPARSIFIERS[method](sparsity=0.8, **kw)
    sp.prepare(model)
    return model, sp


def test_is_a_torch_ao_sparsifier(method):
    model, sp = _prepared(method)
    assert isinstance(sp, BaseSparsifier)
    assert [g["tensor_fqn"] for g in sp.groups] == ["0.weight", "3.weight", "6.weight", "11.weight"]
    for g in sp.groups:
        assert 0.0 <= g["sparsity_level"] < 1.0
        plist = g["module"].parametrizations["weight"]
        assert len(plist) == 1 and isinstance(plist[0], PTSParametrization)
    assert sp.target_sparsity() == pytest.approx(0.8, abs=1e-6)
    assert model(X).shape == (8, 10)


def test_step_reaches_the_target(method):
    _, sp = _prepared(method)
    sp.step()
    assert sp.global_sparsity() == pytest.approx(0.8, abs=0.02)


def test_prepare_twice_does_not_stack_and_restores_dense(method):
    model = small_cnn()
    dense = copy.deepcopy(model.state_dict())
    sp = SPARSIFIERS[method](sparsity=0.8)
    sp.prepare(model)
    sp.step()
    sp.prepare(model)
    for g in sp.groups:
        assert len(g["module"].parametrizations["weight"]) == 1
        assert torch.equal(g["module"].parametrizations["weight"].original, dense[g["tensor_fqn"]])
    # a second sparsifier on the same model replaces the first one's masks too
    other = SPARSIFIERS[method](sparsity=0.5)
    other.prepare(model)
    assert all(len(g["module"].parametrizations["weight"]) == 1 for g in other.groups)


def test_state_dict_round_trip_keeps_masks_and_learned_parameters(method):
    _model, sp = _prepared(method)
    sp.step()
    with torch.no_grad():  # make the state non-trivial
        for g in sp.groups:
            p = sp.parametrization_of(g)
            if isinstance(p, ThresholdMask):
                p.set_value(float(p.value()) + 0.05)
    sd = sp.state_dict()
    assert set(sd["state"]) == {g["tensor_fqn"] for g in sp.groups}
    assert all(sd["state"][k] for k in sd["state"]), "state must hold masks / learned parameters"
    assert "module" not in sd["groups"][0]

    fresh_model = small_cnn()  # same seed: same dense weights
    sp2 = SPARSIFIERS[method](sparsity=0.8)
    sp2.prepare(fresh_model)
    sp2.load_state_dict(sd)
    for g1, g2 in zip(sp.groups, sp2.groups):
        assert torch.equal(g1["module"].weight, g2["module"].weight)
    assert sp2.layer_sparsity() == sp.layer_sparsity()


def test_load_state_dict_mismatch_raises(method):
    _, sp = _prepared(method)
    sd = sp.state_dict()
    sd["state"]["nope.weight"] = sd["state"].pop("0.weight")
    with pytest.raises(RuntimeError, match="does not match"):
        _prepared(method)[1].load_state_dict(sd)


def test_squash_mask_leaves_plain_sparse_weights(method):
    model, sp = _prepared(method)
    sp.step()
    expected = sp.layer_sparsity()
    sp.squash_mask()
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert not any("parametrizations" in k for k in model.state_dict())
    for g in sp.groups:
        w = g["module"].weight
        assert type(w) is torch.nn.Parameter
        assert int((w == 0).sum()) / w.numel() == pytest.approx(expected[g["tensor_fqn"]], abs=1e-12)
    with pytest.raises(RuntimeError, match="squashed"):
        sp.step()


def test_lambda_scheduler_drives_sparsity_level(method):
    _model, sp = _prepared(method)
    base = [g["sparsity_level"] for g in sp.groups]
    scheduler = LambdaSL(sp, lambda epoch: min(1.0, 0.5 + 0.25 * epoch))
    assert [g["sparsity_level"] for g in sp.groups] == pytest.approx([b * 0.5 for b in base])
    sp.step()
    first = sp.global_sparsity()
    scheduler.step()
    sp.step()
    assert [g["sparsity_level"] for g in sp.groups] == pytest.approx([b * 0.75 for b in base])
    assert sp.target_sparsity() == pytest.approx(0.6, abs=1e-6)
    if method == "magnitude":
        assert first == pytest.approx(0.4, abs=1e-3) and sp.global_sparsity() == pytest.approx(0.6, abs=1e-3)


def test_explicit_config_and_levels(method):
    model = small_cnn()
    sp = SPARSIFIERS[method](sparsity=0.5)
    sp.prepare(model, config=["6.weight", {"tensor_fqn": "11.weight", "sparsity_level": 0.9}])
    assert [g["tensor_fqn"] for g in sp.groups] == ["6.weight", "11.weight"]
    assert sp.groups[1]["sparsity_level"] == 0.9
    assert sp.target_sparsity() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="cannot be reached"):
        SPARSIFIERS[method](sparsity=0.5).prepare(small_cnn(), config=[{"tensor_fqn": "6.weight",
                                                                         "sparsity_level": 0.95}, "11.weight"])
    with pytest.raises(ValueError, match="no module"):
        SPARSIFIERS[method](sparsity=0.5).prepare(small_cnn(), config=["missing.weight"])


def test_unknown_option_is_named(method):
    with pytest.raises(TypeError, match="not_an_option"):
        SPARSIFIERS[method](sparsity=0.5, not_an_option=1)


def test_remove_restores_dense(method):
    model = small_cnn()
    dense = copy.deepcopy(model.state_dict())
    sp = SPARSIFIERS[method](sparsity=0.9)
    sp.prepare(model)
    sp.step()
    sp.remove()
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert all(torch.equal(v, dense[k]) for k, v in model.state_dict().items())


def test_squash_and_remove_keep_the_dense_parameter_order(method):
    """A squashed model's state dict lists tensors in the dense model's order (saved files match too)."""
    order = list(small_cnn().state_dict())
    model, sp = _prepared(method)
    sp.step()
    sp.squash_mask()
    assert list(model.state_dict()) == order
    model, sp = _prepared(method)
    sp.remove()
    assert list(model.state_dict()) == order
