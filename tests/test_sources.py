"""pts_hf/sources.py: --model / --data specs, image folders adapted to the model, pts-hf outputs reloaded."""

import pytest
import torch

import pts_hf
from pts_hf.sources import InputSpec, SpecError, check_data_spec, load_images, resolve_model


def _image_folder(root, n=6):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray((torch.rand(20, 20, 3, generator=g) * 255).to(torch.uint8).numpy()).save(
                root / cls / f"{i}.png")
    return root


def test_bad_specs_are_spec_errors():
    with pytest.raises(SpecError, match="does not exist"):
        check_data_spec("/no/such/folder")
    check_data_spec("fashion-mnist")
    with pytest.raises(SpecError, match="no-such-model"):
        resolve_model("no-such-model")


def test_image_folder_is_adapted_to_the_model_and_seeded(tmp_path):
    folder = _image_folder(tmp_path / "imgs")
    spec = InputSpec(channels=1, size=28)
    a = load_images(str(folder), "train", spec, n=8, seed=1)
    b = load_images(str(folder), "train", spec, n=8, seed=1)
    x, y = a.tensors
    assert x.shape == (8, 1, 28, 28) and set(y.tolist()) <= {0, 1} and torch.equal(x, b.tensors[0])


def test_a_pts_hf_output_of_a_bundled_model_resolves_in_any_format(tmp_path):
    loaded = resolve_model("resnet20-fmnist", pretrained=False)
    r = pts_hf.sparsify(loaded.model, torch.randn(8, 1, 28, 28), sparsity=0.5)
    r.save_pretrained(tmp_path / "out", format="bitmask")
    (tmp_path / "out" / "pts_model.json").write_text('{"kind": "bundled", "source": "resnet20-fmnist"}\n')
    again = resolve_model(str(tmp_path / "out"))
    assert all(torch.equal(a, b) for a, b in zip(r.model.state_dict().values(), again.model.state_dict().values()))
