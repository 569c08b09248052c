"""Configs (pts_hf/config.py): JSON round trips for every registered method, replay, and cross-field checks."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import pts_hf
from pts_hf.config import SparsityConfig
from pts_hf.sparsifiers import SPARSIFIERS, FCPTSConfig, UniPTSConfig
from pts_hf.version import CONFIG_VERSION, __version__
from tests.tiny_models import small_cnn

X = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def module_level_loss(student, teacher):
    return ((student - teacher) ** 2).mean()


@pytest.mark.parametrize("method", sorted(SPARSIFIERS))
def test_every_registered_config_round_trips_json(method):
    cls = SPARSIFIERS[method].config_class
    config = cls(sparsity=0.7, seed=3, targets=["Conv2d"])
    d = config.to_dict()
    assert d["method"] == method and d["pts_hf_version"] == __version__ and d["version"] == CONFIG_VERSION
    text = json.dumps(d)
    assert cls.from_json(text) == config
    assert SparsityConfig.from_json(text) == config  # the base class picks the method's class
    assert type(SparsityConfig.from_json(text)) is cls
    assert cls.from_options(**d) == config  # what to_dict stamps is accepted back
    for f in dataclasses.fields(cls):  # every field has help text
        assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"


def test_version_is_stamped_not_set():
    with pytest.raises(TypeError):
        FCPTSConfig(version=7)
    with pytest.raises(TypeError, match="unknown option"):
        FCPTSConfig.from_options(sparsity=0.5, not_an_option=1)
    with pytest.raises(ValueError, match="version"):
        FCPTSConfig.from_options(sparsity=0.5, version=CONFIG_VERSION + 1)
    with pytest.warns(UserWarning, match="newer format version"):
        c = FCPTSConfig.from_dict({**FCPTSConfig().to_dict(), "version": CONFIG_VERSION + 1, "future": 1})
    assert c.version == CONFIG_VERSION
    with pytest.raises(ValueError, match="is for method"):
        FCPTSConfig.from_dict(UniPTSConfig().to_dict())


def test_loss_fn_round_trips_and_an_unimportable_one_says_what_to_do():
    c = FCPTSConfig(loss_fn=module_level_loss)
    d = c.to_dict()
    assert d["loss_fn"] == f"{__name__}:module_level_loss"
    assert FCPTSConfig.from_json(json.dumps(d)).loss_fn is module_level_loss
    local = FCPTSConfig(loss_fn=lambda s, t: (s - t).abs().mean()).to_dict()
    with pytest.raises(ValueError, match="pass loss_fn="):
        FCPTSConfig.from_dict(local)
    assert FCPTSConfig.from_dict(local, loss_fn=module_level_loss).loss_fn is module_level_loss


def test_replay_from_config_object_and_sidecar(tmp_path):
    config = FCPTSConfig(sparsity=0.7, steps=4, batch_size=16, seed=1)
    r = pts_hf.sparsify(small_cnn(), X, config=config, progress=False)
    assert r.config is config and r.method == "fcpts"
    r.save_pretrained(tmp_path)
    replayed = SparsityConfig.from_json((tmp_path / "sparsity_config.json").read_text())
    assert replayed == config
    again = pts_hf.sparsify(small_cnn(), X, config=replayed, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(r.model.state_dict().values(), again.model.state_dict().values()))
    with pytest.raises(TypeError, match="not both"):
        pts_hf.sparsify(small_cnn(), X, config=config, steps=3)
    with pytest.raises(ValueError, match="contradicts"):
        pts_hf.sparsify(small_cnn(), X, method="unipts", config=config)


def test_validate_and_sparsify_leave_the_global_rng_alone():
    model = small_cnn()  # (a test fixture that seeds itself)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    FCPTSConfig(sparsity=0.5)
    pts_hf.sparsify(model, X, method="fcpts", sparsity=0.5, steps=2, batch_size=16, progress=False)
    pts_hf.sparsify(model, X, method="magnitude", sparsity=0.5)
    assert torch.equal(torch.rand(3), expected)  # neither read nor reset


def test_options_that_cannot_apply_are_refused():
    with pytest.raises(ValueError, match="exact=False"):
        FCPTSConfig(exact=False, fixed_mask_tail=0.2)
    with pytest.raises(ValueError, match="exact=False"):
        FCPTSConfig(exact=False, projection="proportional")
    FCPTSConfig(exact=False)  # fine alone


def test_accelerator_settings_are_used_or_refused():
    from accelerate import Accelerator

    from pts_hf.distillation import make_accelerator

    made = make_accelerator(FCPTSConfig(gradient_accumulation_steps=2))
    assert made.gradient_accumulation_steps == 2
    mine = Accelerator()
    assert make_accelerator(FCPTSConfig(), mine) is mine
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        pts_hf.sparsify(small_cnn(), X, method="fcpts", sparsity=0.5, steps=2, gradient_accumulation_steps=2,
                        accelerator=mine, progress=False)


def test_unipts_search_is_seeded_with_the_configured_allocation():
    opts = {"search": True, "steps": 2, "batch_size": 16, "population": 2, "generations": 1, "parents": 1,
            "search_samples": 16, "fitness_samples": 16, "progress": False}
    uniform = pts_hf.sparsify(small_cnn(), X, method="unipts", sparsity=0.6, allocation="uniform", **opts)
    seed = uniform.record.layer_values("allocation_sparsity")
    assert all(v == pytest.approx(0.6) for v in seed.values())
    erk = pts_hf.sparsify(small_cnn(), X, method="unipts", sparsity=0.6, erk_power=0.5, **opts)
    assert erk.record.layer_values("allocation_sparsity") != pytest.approx(seed)


def test_method_config_and_deprecated_options_alias():
    sp = pts_hf.FCPTSSparsifier(sparsity=0.5)
    assert isinstance(sp.method_config, FCPTSConfig)
    with pytest.warns(DeprecationWarning, match="method_config"):
        assert sp.options is sp.method_config
