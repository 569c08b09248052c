"""A new method and a new on-disk format are each one definition plus one registry entry.

Both toys are defined here and registered with one line each (``monkeypatch.setitem`` stands in for the registry
line of a new file); nothing else in pts_hf knows them. The toy method then goes through the contract tests, the
one-call API, a config replay, the CLI, the sidecar and the report; the toy format through ``save_sparse`` /
``load_sparse``, the CLI's ``--format`` and the Trainer callback's checkpoints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

import pts_hf
from pts_hf.checkpoint import FORMATS, SIDECAR_NAME, CheckpointFormat
from pts_hf.config import SparsityConfig, help_field
from pts_hf.ops.masks import topk_mask
from pts_hf.parametrize import FixedMask, PTSParametrization
from pts_hf.record import MethodOutcome
from pts_hf.sparsifiers import SPARSIFIERS, PTSSparsifier
from tests import test_sparsifier_contract as contract
from tests.tiny_models import small_cnn

X = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(0))


# --- a toy method: keep the weights farthest from their layer's mean -------------------------------------------
@dataclass
class ToyConfig(SparsityConfig):
    method: ClassVar[str] = "toy"

    centered: bool = help_field(True, "Rank |W − mean(W)| (False: |W|).")


class ToySparsifier(PTSSparsifier):
    method: ClassVar[str] = "toy"
    config_class: ClassVar[type[SparsityConfig]] = ToyConfig

    def make_parametrization(self, group: dict[str, Any], weight: torch.Tensor) -> PTSParametrization:
        return FixedMask(torch.ones_like(weight, dtype=torch.bool))

    def update_mask(self, module: nn.Module, tensor_name: str, n_zero: int | None = None, **kwargs: Any) -> None:
        w = module.parametrizations[tensor_name].original.detach()
        score = (w - w.mean()).abs() if self.method_config.centered else w.abs()
        if n_zero is None:
            n_zero = round(float(kwargs["sparsity_level"]) * w.numel())
        module.parametrizations[tensor_name][0].mask.copy_(topk_mask(score, w.numel() - n_zero))

    def calibrate(self, model: nn.Module, data: Any, accelerator: Any = None) -> MethodOutcome:
        self.step()
        out = MethodOutcome(extras={"toy_note": "centred" if self.method_config.centered else "plain"})
        out.add_layer_values("toy_mean", {g["tensor_fqn"]: float(self.original_of(g).detach().mean())
                                          for g in self.groups})
        return out


# --- a toy format: weights stored negated (lossless, and unreadable to a loader that does not know it) ---------
class NegatedFormat(CheckpointFormat):
    name = "negated"

    def encode(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: (-t if t.is_floating_point() else t).contiguous() for k, t in tensors.items()}

    def decode(self, tensors: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
        return {k: (-t if t.is_floating_point() else t) for k, t in tensors.items()}


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(SPARSIFIERS, ToySparsifier.method, ToySparsifier)  # the one registry line
    return "toy"


@pytest.fixture
def negated(monkeypatch):
    monkeypatch.setitem(FORMATS, NegatedFormat.name, NegatedFormat())  # the one registry line
    return "negated"


CONTRACT = [getattr(contract, n) for n in sorted(dir(contract)) if n.startswith("test_")]


@pytest.mark.parametrize("check", CONTRACT, ids=lambda f: f.__name__)
def test_toy_method_keeps_the_contract(check, toy):
    check(toy)


def test_toy_method_through_the_api_replay_sidecar_and_report(toy, tmp_path):
    r = pts_hf.sparsify(small_cnn(), X, method=toy, sparsity=0.7, centered=False)
    n = sum(r.layer_numel.values())
    assert round(r.global_sparsity * n) == round(0.7 * n) and isinstance(r.config, ToyConfig)
    assert r.record.extras["toy_note"] == "plain" and set(r.record.layer_values("toy_mean")) == set(r.layer_sparsity)
    r.save_pretrained(tmp_path / "out")
    side = json.loads((tmp_path / "out" / SIDECAR_NAME).read_text())
    assert side["method"] == "toy" and side["extras"]["toy_note"] == "plain"
    assert all("toy_mean" in layer for layer in side["layers"].values())
    replay = pts_hf.sparsify(small_cnn(), X, config=SparsityConfig.from_json(tmp_path / "out" / SIDECAR_NAME))
    assert replay.config == r.config
    assert all(torch.equal(a, b) for a, b in zip(r.model.state_dict().values(), replay.model.state_dict().values()))
    report = r.record.to_report({"note": 1})
    assert report["extras"]["toy_note"] == "plain" and "toy_mean" in report["layers"]["0.weight"]


def _image_folder(root):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(8):
            pixels = (torch.rand(28, 28, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels, mode="L").save(root / cls / f"{i}.png")
    return root


def test_toy_method_and_format_through_the_cli(toy, negated, tmp_path, capsys):
    from pts_hf.cli import main

    out = tmp_path / "run"
    code = main(["sparsify", "--model", "resnet20-fmnist", "--data", str(_image_folder(tmp_path / "imgs")),
                 "--method", toy, "--sparsity", "0.6", "--calib-samples", "16", "--option", "centered=false",
                 "--format", negated, "--output", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    side = json.loads((out / SIDECAR_NAME).read_text())
    assert report["method"] == side["method"] == "toy" and side["format"] == "negated"
    assert report["extras"]["toy_note"] == side["extras"]["toy_note"] == "plain"
    loaded = pts_hf.load_sparse(out)  # pts_model.json names the bundled architecture; the format decodes
    zeros = sum(int((loaded.get_parameter(k) == 0).sum()) for k in side["layers"])
    assert zeros == round(side["global_sparsity"] * sum(v["numel"] for v in side["layers"].values()))


def test_toy_format_save_load_round_trip(negated, tmp_path):
    r = pts_hf.sparsify(small_cnn(), X, sparsity=0.5)
    r.save_pretrained(tmp_path / "neg", format=negated)
    from safetensors.torch import load_file

    raw = load_file(str(tmp_path / "neg" / "model.safetensors"))
    assert torch.equal(raw["0.weight"], -r.model.state_dict()["0.weight"])  # really encoded on disk
    loaded = pts_hf.load_sparse(tmp_path / "neg", model=small_cnn())
    assert all(torch.equal(a, b) for a, b in zip(r.model.state_dict().values(), loaded.state_dict().values()))
    assert json.loads((tmp_path / "neg" / SIDECAR_NAME).read_text())["format"] == "negated"


def test_toy_format_in_trainer_checkpoints(negated, tmp_path):
    pytest.importorskip("transformers")
    from transformers import Trainer, TrainingArguments

    from pts_hf.integrations.trainer import PTSCallback
    from tests.tiny_models import TINY_MODELS

    model = TINY_MODELS["hf_bert"][0]()
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(0, 128, (8,), generator=g)} for _ in range(8)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, save_steps=2,
                             report_to=[], use_cpu=True, disable_tqdm=True, logging_strategy="no")
    trainer = Trainer(model=model, args=args, train_dataset=rows,
                      callbacks=[PTSCallback("fcpts", sparsity=0.5, format=negated)])
    trainer.train()
    ckpt = tmp_path / "checkpoint-2"  # written during training (live masks), before the final projection
    side = json.loads((ckpt / SIDECAR_NAME).read_text())
    assert side["format"] == "negated" and 0.3 < side["global_sparsity"] < 0.7
    mid = pts_hf.load_sparse(ckpt)
    assert all(int((mid.get_parameter(k) == 0).sum()) == round(v["sparsity"] * v["numel"])
               for k, v in side["layers"].items())
    trainer.save_model(str(tmp_path / "final"))
    assert json.loads((tmp_path / "final" / SIDECAR_NAME).read_text())["format"] == "negated"
    loaded = pts_hf.load_sparse(tmp_path / "final")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
