"""Tests for pts_hf.data (Fashion-MNIST IDX loading, calibration subsets) and the bundled model builders."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from pts_hf.data import (
    DEBIAN_FASHION_MNIST_DIR,
    FMNIST_MEAN,
    FMNIST_STD,
    calibration_subset,
    evaluate_top1,
    find_fashion_mnist_dir,
    read_idx,
)
from pts_hf.models import list_bundled, load_bundled, mobilenet_fmnist, resnet20, vit_fmnist


def _debian_dir() -> Path:
    if not (DEBIAN_FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian Fashion-MNIST files absent (apt-get install dataset-fashion-mnist)")
    return DEBIAN_FASHION_MNIST_DIR


def _write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def test_read_real_fashion_mnist_images() -> None:
    d = _debian_dir()
    images = read_idx(d / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(d / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    assert labels.min() == 0 and labels.max() == 9
    x = torch.from_numpy(images[:1000].astype(np.float32) / 255.0)
    x = (x - FMNIST_MEAN) / FMNIST_STD
    assert abs(float(x.mean())) < 0.05
    assert abs(float(x.std()) - 1.0) < 0.05


def test_load_fashion_mnist_test_split() -> None:
    from pts_hf.data import load_fashion_mnist

    d = _debian_dir()
    ds = load_fashion_mnist("test", root=d)
    x, y = ds.tensors
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and int(y.min()) == 0 and int(y.max()) == 9
    assert abs(float(x[:1000].mean())) < 0.05 and abs(float(x[:1000].std()) - 1.0) < 0.05
    assert load_fashion_mnist("test", root=d).tensors[0] is x  # in-process cache
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation", root=d)


def test_raw_and_gzip_idx_roundtrip(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(_write_idx(tmp_path / "a-ubyte", arr)), arr)
    assert np.array_equal(read_idx(_write_idx(tmp_path / "a-ubyte.gz", arr, compress=True)), arr)


def test_missing_root_raises_with_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    with pytest.raises(FileNotFoundError, match="no-such-dir"):
        find_fashion_mnist_dir(missing)
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte"):
        find_fashion_mnist_dir(tmp_path)  # exists but lacks the files


def test_root_with_uncompressed_files_is_accepted(tmp_path: Path) -> None:
    for prefix in ("train", "t10k"):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.array([0, 9], np.uint8))
    assert find_fashion_mnist_dir(tmp_path) == tmp_path


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x12\x34\x08\x03" + b"\x00" * 20, "not an IDX file"),
        (b"\x00\x00\x0d\x01\x00\x00\x00\x01" + b"\x00" * 4, "unsupported IDX type"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
        (b"\x00\x00\x08\x02" + struct.pack(">2I", 28, 28) + b"\x00" * 100, "needs 784 data bytes"),
    ],
)
def test_corrupted_idx_raises_clear_error(tmp_path: Path, payload: bytes, message: str) -> None:
    bad = tmp_path / "bad-images-idx3-ubyte"
    bad.write_bytes(payload)
    with pytest.raises(ValueError, match=message) as info:
        read_idx(bad)
    assert "bad-images-idx3-ubyte" in str(info.value)


def test_corrupted_gzip_raises_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad-labels-idx1-ubyte.gz"
    bad.write_bytes(b"this is not gzip")
    with pytest.raises(ValueError, match=r"bad-labels-idx1-ubyte\.gz"):
        read_idx(bad)


def test_calibration_subset_deterministic_and_bounded() -> None:
    ds = TensorDataset(torch.arange(100).float()[:, None], torch.arange(100))
    a = calibration_subset(ds, 16, seed=3)
    b = calibration_subset(ds, 16, seed=3)
    c = calibration_subset(ds, 16, seed=4)
    assert len(a) == 16
    assert torch.equal(a.tensors[1], b.tensors[1])
    assert not torch.equal(a.tensors[1], c.tensors[1])
    assert len(set(a.tensors[1].tolist())) == 16  # without replacement
    assert torch.equal(a.tensors[0][:, 0].long(), a.tensors[1])  # rows stay aligned
    assert len(calibration_subset(ds, 100)) == 100
    for n in (0, -1, 101):
        with pytest.raises(ValueError):
            calibration_subset(ds, n)


def test_evaluate_top1_restores_mode() -> None:
    x = torch.randn(20, 3)
    y = torch.zeros(20, dtype=torch.int64)
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([1.0, 0.0]))
    model.train()
    assert evaluate_top1(model, TensorDataset(x, y), batch_size=7) == 100.0
    assert model.training


def test_resnet20_shape_and_params() -> None:
    model = resnet20()
    n_params = sum(p.numel() for p in model.parameters())
    assert 0.26e6 < n_params < 0.28e6
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert resnet20(in_chans=3, num_classes=100)(torch.randn(1, 3, 32, 32)).shape == (1, 100)


def test_vit_fmnist_shape() -> None:
    model = vit_fmnist().eval()
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_mobilenet_has_depthwise_layers() -> None:
    model = mobilenet_fmnist().eval()
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    depthwise = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 7 and all(m.groups == m.in_channels for m in depthwise)
    assert sum(p.numel() for p in model.parameters()) < 100_000


def test_load_bundled_unknown_name() -> None:
    with pytest.raises(ValueError, match="resnet20-fmnist"):
        load_bundled("resnet1000")
    assert set(list_bundled()) == {"resnet20-fmnist", "vit-fmnist", "mobilenet-fmnist"}
    model = load_bundled("resnet20-fmnist", pretrained=False)
    assert not model.training


def test_data_module_import_is_light() -> None:
    code = (
        "import sys, pts_hf.data\n"
        "assert 'datasets' not in sys.modules and 'transformers' not in sys.modules"
    )
    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=repo)


def test_env_var_root_and_offline_fallback_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pts_hf.data as data

    monkeypatch.setenv("PTS_HF_FASHION_MNIST", str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match="PTS_HF_FASHION_MNIST"):
        find_fashion_mnist_dir()
    monkeypatch.delenv("PTS_HF_FASHION_MNIST")
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "absent")
    assert find_fashion_mnist_dir() is None
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail, as when offline
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.load_fashion_mnist("test")


def test_calibration_subset_generic_dataset() -> None:
    class Pairs(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 10

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            return torch.full((2,), float(i)), i

    sub = calibration_subset(Pairs(), 4, seed=1)
    x, y = sub.tensors
    assert x.shape == (4, 2) and torch.equal(x[:, 0].long(), y)
