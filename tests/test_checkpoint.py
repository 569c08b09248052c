"""Sparse checkpoints: dense / bitmask formats, the transformers plugin, the Hub, and bad files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pts_hf
from pts_hf.checkpoint import SIDECAR_NAME, load_sparse, save_sparse
from tests.tiny_models import TINY_MODELS, small_cnn

HF = ["hf_bert", "hf_vit", "hf_gpt2"]


def _sparse(name, sparsity=0.9):
    builder, make_input, _ = TINY_MODELS[name]
    return pts_hf.sparsify(builder(), [make_input()], sparsity=sparsity, allocation="uniform")


def _equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _size(folder):
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))


@pytest.mark.parametrize("name", HF)
def test_dense_round_trip_through_plain_from_pretrained(name, tmp_path):
    import transformers

    r = _sparse(name)
    r.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / SIDECAR_NAME).is_file()
    loaded = getattr(transformers, type(r.model).__name__).from_pretrained(tmp_path)
    assert _equal(r.model, loaded)
    side = json.loads((tmp_path / SIDECAR_NAME).read_text())
    assert side["method"] == "magnitude" and side["target_sparsity"] == 0.9 and side["format"] == "dense"
    assert set(side["layers"]) == set(r.layer_sparsity)
    assert side["calibration"]["samples"] == (4 if name == "hf_vit" else 2) and side["calibration"]["seed"] == 0
    assert not any("parametrizations" in k for k in loaded.state_dict())


@pytest.mark.parametrize("name", HF)
def test_bitmask_round_trip_is_bit_exact(name, tmp_path):
    r = _sparse(name)
    r.save_pretrained(tmp_path / "bm", format="bitmask")
    assert _equal(r.model, load_sparse(tmp_path / "bm"))
    cfg = json.loads((tmp_path / "bm" / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "pts_hf_bitmask"


def test_bitmask_size_bound_at_90_percent(tmp_path):
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig(vocab_size=64, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=256, max_position_embeddings=32))
    ids = torch.randint(0, 64, (2, 8))
    r = pts_hf.sparsify(model, [{"input_ids": ids}], sparsity=0.9)
    r.save_pretrained(tmp_path / "dense")
    r.save_pretrained(tmp_path / "bm", format="bitmask")
    assert _size(tmp_path / "bm") <= 0.25 * _size(tmp_path / "dense")
    assert _equal(r.model, load_sparse(tmp_path / "bm"))


def _run(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=Path(__file__).parent.parent)


def test_bitmask_without_the_plugin_fails_loudly_and_with_it_plain_from_pretrained_works(tmp_path):
    r = _sparse("hf_bert")
    r.save_pretrained(tmp_path, format="bitmask")
    torch.save(r.model.state_dict(), tmp_path.parent / "ref.pt")
    plain = _run(f"from transformers import BertModel; BertModel.from_pretrained({str(tmp_path)!r})")
    assert plain.returncode != 0 and "mismatch" in plain.stderr.lower()
    # importing pts_hf registers nothing (no import hook): still loud
    imported = _run(f"import sys, pts_hf; n = len(sys.meta_path); from transformers import BertModel\n"
                    f"assert len(sys.meta_path) >= n\nBertModel.from_pretrained({str(tmp_path)!r})")
    assert imported.returncode != 0 and "mismatch" in imported.stderr.lower()
    plugin = _run(
        "import torch, pts_hf\npts_hf.register_transformers_plugin()\nfrom transformers import BertModel\n"
        f"m = BertModel.from_pretrained({str(tmp_path)!r})\n"
        f"ref = torch.load({str(tmp_path.parent / 'ref.pt')!r})\n"
        "assert all(torch.equal(ref[k], v) for k, v in m.state_dict().items()), 'weights differ'\nprint('OK')")
    assert plugin.returncode == 0 and "OK" in plugin.stdout, plugin.stderr[-2000:]


@pytest.mark.parametrize("fmt", ["dense", "bitmask"])
def test_non_transformers_model(fmt, tmp_path):
    r = pts_hf.sparsify(small_cnn(), torch.randn(8, 3, 16, 16), sparsity=0.8)
    save_sparse(r.model, tmp_path, format=fmt)
    loaded = load_sparse(tmp_path, model=small_cnn())
    assert _equal(r.model, loaded)
    assert loaded.pts_sparsity_config["global_sparsity"] == pytest.approx(r.global_sparsity)
    with pytest.raises(ValueError, match="pass the architecture"):
        load_sparse(tmp_path)


def test_refuses_live_parametrizations(tmp_path):
    model = small_cnn()
    sp = pts_hf.MagnitudeSparsifier(sparsity=0.5)
    sp.prepare(model)
    with pytest.raises(ValueError, match="squash_mask"):
        save_sparse(model, tmp_path)
    assert not any(tmp_path.iterdir())


def test_bad_sidecar_layer_name(tmp_path):
    r = _sparse("hf_bert")
    r.save_pretrained(tmp_path)
    side = json.loads((tmp_path / SIDECAR_NAME).read_text())
    side["layers"]["encoder.nope.weight"] = {"sparsity": 0.5, "numel": 4}
    (tmp_path / SIDECAR_NAME).write_text(json.dumps(side))
    with pytest.raises(ValueError, match=r"sparsity_config\.json: layer 'encoder\.nope\.weight' does not exist"):
        load_sparse(tmp_path)


def test_newer_sidecar_loads_with_warning(tmp_path):
    r = _sparse("hf_bert")
    r.save_pretrained(tmp_path)
    side = json.loads((tmp_path / SIDECAR_NAME).read_text())
    side.update(format_version=99, shiny_new_key=1)
    (tmp_path / SIDECAR_NAME).write_text(json.dumps(side))
    with pytest.warns(UserWarning, match="newer"):
        model = load_sparse(tmp_path)
    assert _equal(model, r.model)


def test_truncated_safetensors_names_the_file(tmp_path):
    r = pts_hf.sparsify(small_cnn(), torch.randn(8, 3, 16, 16), sparsity=0.8)
    save_sparse(r.model, tmp_path, format="bitmask")
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors: truncated or corrupted"):
        load_sparse(tmp_path, model=small_cnn())


def test_bitmask_shape_mismatch_names_file_and_layer(tmp_path):
    from safetensors.torch import load_file, save_file

    r = pts_hf.sparsify(small_cnn(), torch.randn(8, 3, 16, 16), sparsity=0.8)
    save_sparse(r.model, tmp_path, format="bitmask")
    f = tmp_path / "model.safetensors"
    tensors = load_file(str(f))
    tensors["6.weight_shape"] = torch.tensor([32, 16, 3, 4])
    save_file(tensors, str(f), metadata={"format": "pt", "pts_hf_format": "bitmask"})
    with pytest.raises(ValueError, match=r"model\.safetensors: 6\.weight"):
        load_sparse(tmp_path, model=small_cnn())


def _fake_hub(monkeypatch, cache: Path):
    """HfApi.create_repo / upload_folder write a snapshot into a local Hub cache instead of the network."""
    import shutil

    from huggingface_hub import HfApi

    def create_repo(self, repo_id, **kw):
        (cache / f"models--{repo_id.replace('/', '--')}").mkdir(parents=True, exist_ok=True)
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, folder_path, repo_id, **kw):
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        sha = "0" * 40
        shutil.copytree(folder_path, repo / "snapshots" / sha, dirs_exist_ok=True)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(sha)
        return f"https://huggingface.co/{repo_id}/commit/{sha}"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)


@pytest.mark.parametrize("fmt", ["dense", "bitmask"])
def test_push_then_load_by_id_offline(fmt, monkeypatch, tmp_path):
    _fake_hub(monkeypatch, tmp_path / "hub")
    r = _sparse("hf_bert")
    url = r.push_to_hub("org/tiny-sparse-bert", format=fmt, metrics={"note": 1.0})
    assert url.endswith("0" * 40)
    snap = tmp_path / "hub" / "models--org--tiny-sparse-bert" / "snapshots" / ("0" * 40)
    card = (snap / "README.md").read_text()
    assert "magnitude" in card and "Per-layer sparsity" in card and "note: 1.0" in card
    torch.save(r.model.state_dict(), tmp_path / "ref.pt")
    out = _run("import torch, pts_hf\nm = pts_hf.load_sparse('org/tiny-sparse-bert')\n"
               f"ref = torch.load({str(tmp_path / 'ref.pt')!r})\n"
               "assert all(torch.equal(ref[k], v) for k, v in m.state_dict().items())\nprint('OK')",
               HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"))
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-2000:]


def test_load_unknown_id_offline_is_clear(tmp_path):
    out = _run("import pts_hf\npts_hf.load_sparse('org/does-not-exist')", HF_HUB_OFFLINE="1",
               HF_HUB_CACHE=str(tmp_path))
    assert out.returncode != 0 and "neither a local folder nor a reachable Hub repo" in out.stderr




def _state_copy(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_load_into_user_model_validates_before_writing(tmp_path):
    """Issue 11 item 6: a sidecar naming a layer the model lacks, or a checkpoint with extra / missing tensors,
    raises and leaves the user's model exactly as it was."""
    from safetensors.torch import load_file, save_file

    r = pts_hf.sparsify(small_cnn(), torch.randn(8, 3, 16, 16), sparsity=0.8)
    save_sparse(r.model, tmp_path)
    side = json.loads((tmp_path / SIDECAR_NAME).read_text())
    side["layers"]["99.weight"] = {"sparsity": 0.5, "numel": 4}
    (tmp_path / SIDECAR_NAME).write_text(json.dumps(side))
    m = small_cnn()
    before = _state_copy(m)
    with pytest.raises(ValueError, match=r"layer '99\.weight' does not exist"):
        load_sparse(tmp_path, model=m)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())

    save_sparse(r.model, tmp_path)  # good sidecar, but a tensor the model lacks
    tensors = load_file(str(tmp_path / "model.safetensors"))
    tensors["extra.weight"] = torch.zeros(2)
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="was not modified"):
        load_sparse(tmp_path, model=m)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_load_sparse_rebuilds_a_pts_hf_output_of_a_bundled_model(tmp_path):
    from pts_hf.models import load_bundled

    model = load_bundled("resnet20-fmnist", pretrained=False)
    r = pts_hf.sparsify(model, torch.randn(8, 1, 28, 28), sparsity=0.7)
    save_sparse(r.model, tmp_path)
    (tmp_path / "pts_model.json").write_text(json.dumps({"kind": "bundled", "source": "resnet20-fmnist"}))
    assert _equal(r.model, load_sparse(tmp_path))
    (tmp_path / "pts_model.json").unlink()
    with pytest.raises(ValueError, match=r"load_sparse\(path, model=MyNet\(\)\)"):
        load_sparse(tmp_path)


def test_import_pts_hf_installs_no_import_hook():
    out = _run("import sys; before = list(sys.meta_path); import pts_hf\n"
               "assert sys.meta_path == before, sys.meta_path\nassert 'transformers' not in sys.modules\nprint('OK')")
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-2000:]


def test_sidecar_names_the_layers_actually_sparsified_not_the_default_targets(tmp_path):
    """save_sparse without record= used to re-discover the *default* targets: with targets= / ignore= the sidecar
    then listed dense layers (the Linear here) as if they had been sparsified."""
    from pts_hf import MagnitudeSparsifier

    r = pts_hf.sparsify(small_cnn(), torch.randn(8, 3, 16, 16), sparsity=0.6, targets=["Conv2d"], ignore=["3"])
    assert set(r.layer_sparsity) == {"0.weight", "6.weight"}
    pts_hf.save_sparse(r.model, tmp_path / "api")  # no record=: the model carries what was done
    side = json.loads((tmp_path / "api" / SIDECAR_NAME).read_text())
    assert set(side["layers"]) == {"0.weight", "6.weight"}
    assert side["method"] == "magnitude" and side["config"]["targets"] == ["Conv2d"]
    assert side["global_sparsity"] == pytest.approx(r.global_sparsity)

    model = small_cnn()  # the torch.ao-style path: squash_mask leaves the record on the model
    sp = MagnitudeSparsifier(sparsity=0.5, ignore=["11"])
    sp.prepare(model)
    sp.step()
    sp.squash_mask()
    pts_hf.save_sparse(model, tmp_path / "ao", format="bitmask")
    side = json.loads((tmp_path / "ao" / SIDECAR_NAME).read_text())
    assert set(side["layers"]) == {"0.weight", "3.weight", "6.weight"} and side["format"] == "bitmask"
    loaded = load_sparse(tmp_path / "ao", model=small_cnn())
    assert _equal(model, loaded) and set(loaded.pts_sparsity_record.layers) == set(side["layers"])
