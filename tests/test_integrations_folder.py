"""The top-level integrations/ folder (not shipped): every recipe loads and validates, every accelerate config
parses, and package discovery leaves the folder out of the wheel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import pts_hf
from pts_hf.config import SparsityConfig

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "integrations" / "recipes").rglob("*.json"))
ACCELERATE = sorted((ROOT / "integrations" / "accelerate").glob("*.yaml"))


def test_folder_has_recipes_and_launcher_configs():
    assert len(RECIPES) >= 5 and {p.stem for p in ACCELERATE} == {"one_gpu", "several_gpus", "several_nodes",
                                                                  "cpu_processes"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT / "integrations" / "recipes")))
def test_every_recipe_loads_and_validates(path):
    config = SparsityConfig.from_json(path)
    data = json.loads(path.read_text())
    assert config.method == data["method"]
    # nothing was dropped or changed on the way: the recipe is exactly a valid config of its method
    assert {k: v for k, v in config.to_dict().items() if k in data} == {k: v for k, v in data.items()}
    assert type(config).from_options(**config.to_dict()) == config


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.stem)
def test_every_accelerate_config_parses(path):
    from accelerate.commands.config.config_args import ClusterConfig

    cfg = ClusterConfig.from_yaml_file(str(path))
    assert cfg.num_processes >= 1 and cfg.num_machines >= 1


def test_recipe_runs_through_sparsify_and_the_cli(tmp_path, capsys):
    import torch

    from pts_hf.cli import main
    from tests.tiny_models import small_cnn

    recipe = ROOT / "integrations" / "recipes" / "resnet20-fmnist" / "magnitude-lamp-90.json"
    r = pts_hf.sparsify(small_cnn(), torch.randn(8, 3, 16, 16), config=SparsityConfig.from_json(recipe))
    assert r.method == "magnitude" and r.config.allocation == "lamp" and r.target_sparsity == 0.9
    # the CLI checks a --config before loading anything: a contradiction is a one-line error
    code = main(["sparsify", "--model", "resnet20-fmnist", "--data", "fashion-mnist", "--config", str(recipe),
                 "--method", "fcpts"])
    assert code == 2 and "contradicts --config" in capsys.readouterr().err


def test_wheel_leaves_integrations_out():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from setuptools import find_packages

    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(str(ROOT), include=find["include"], exclude=find.get("exclude", ()))
    assert "pts_hf.integrations" in packages and not any(p.split(".")[0] == "integrations" for p in packages)


def test_cli_runs_a_recipe(tmp_path, capsys):
    from pts_hf.cli import main
    from pts_hf.data import find_fashion_mnist_dir

    if find_fashion_mnist_dir() is None:
        pytest.skip("Fashion-MNIST files missing")
    recipe = ROOT / "integrations" / "recipes" / "resnet20-fmnist" / "magnitude-lamp-90.json"
    out = tmp_path / "run"
    code = main(["sparsify", "--model", "resnet20-fmnist", "--data", "fashion-mnist", "--config", str(recipe),
                 "--calib-samples", "32", "--output", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "magnitude" and report["config"] == {**json.loads(recipe.read_text()),
                                                                     "pts_hf_version": pts_hf.__version__}
    assert SparsityConfig.from_json(out / "sparsity_config.json") == SparsityConfig.from_json(recipe)
