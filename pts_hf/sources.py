"""Resolving the command line's ``--model`` and ``--data`` specs into a model and image tensors.

Model specs: a bundled name (``resnet20-fmnist``), a folder written by ``pts-hf sparsify`` or by
``save_pretrained`` (``config.json``), or a timm model name (pretrained weights from the Hub: needs internet).
Data specs: ``fashion-mnist``, a folder of class sub-folders of images, or a ``datasets`` folder / Hub name with
an image column. Images are adapted to what the model expects (channels, size, normalisation).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

__all__ = ["InputSpec", "LoadedModel", "SpecError", "check_data_spec", "load_images", "resolve_model"]

MODEL_META = "pts_model.json"


class SpecError(ValueError):
    """A --model / --data spec that cannot be resolved (the CLI exits with code 2)."""


@dataclass
class InputSpec:
    """What the model takes: channels, height, width and the normalisation of its inputs."""

    channels: int = 1
    size: int = 28
    mean: tuple[float, ...] = (0.2860,)
    std: tuple[float, ...] = (0.3530,)


@dataclass
class LoadedModel:
    model: nn.Module
    kind: str  # "bundled" | "timm" | "hf"
    source: str  # bundled/timm name or HF architecture
    inputs: InputSpec = field(default_factory=InputSpec)


def _timm_inputs(model: nn.Module) -> InputSpec:
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    c, h, _ = cfg["input_size"]
    return InputSpec(c, h, tuple(cfg["mean"]), tuple(cfg["std"]))


def _hf_inputs(path: Path, config: Any) -> InputSpec:
    size = getattr(config, "image_size", 224)
    size = size if isinstance(size, int) else int(size[0] if isinstance(size, (list, tuple)) else 224)
    channels = int(getattr(config, "num_channels", 3))
    mean, std = (0.5,) * channels, (0.5,) * channels
    pp = path / "preprocessor_config.json"
    if pp.is_file():
        d = json.loads(pp.read_text())
        mean, std = tuple(d.get("image_mean", mean)), tuple(d.get("image_std", std))
    return InputSpec(channels, size, mean, std)


def _load_hf(path: Path) -> LoadedModel:
    import transformers

    config = transformers.AutoConfig.from_pretrained(path)
    arch = (getattr(config, "architectures", None) or ["AutoModel"])[0]
    cls = getattr(transformers, arch, None) or transformers.AutoModel
    if (path / "sparsity_config.json").is_file():  # a pts_hf checkpoint, in any registered format
        from pts_hf.checkpoint import load_sparse

        model = load_sparse(path)
    else:
        model = cls.from_pretrained(path)
    return LoadedModel(model.eval(), "hf", arch, _hf_inputs(path, config))


def _load_saved(path: Path) -> LoadedModel:
    meta = json.loads((path / MODEL_META).read_text())
    from pts_hf.checkpoint import load_sparse

    base = resolve_model(meta["source"], pretrained=False)
    load_sparse(path, model=base.model)  # any registered on-disk format
    return base


def resolve_model(spec: str, pretrained: bool = True) -> LoadedModel:
    """Turn a ``--model`` spec into a model in eval mode (raises :class:`SpecError`)."""
    from pts_hf.models import BUNDLED_MODELS, load_bundled

    if spec in BUNDLED_MODELS:
        try:
            return LoadedModel(load_bundled(spec, pretrained=pretrained), "bundled", spec)
        except FileNotFoundError as e:
            raise SpecError(str(e)) from e
    path = Path(spec)
    if path.is_dir():
        if (path / MODEL_META).is_file():
            return _load_saved(path)
        if (path / "config.json").is_file():
            return _load_hf(path)
        raise SpecError(f"model folder {spec!r} has neither {MODEL_META} (pts-hf output) nor config.json (HF)")
    import timm

    if timm.is_model(spec):
        try:
            model = timm.create_model(spec, pretrained=pretrained)
        except Exception as e:  # network, missing weights
            raise SpecError(f"could not load timm model {spec!r} with pretrained weights: {e}") from e
        return LoadedModel(model.eval(), "timm", spec, _timm_inputs(model))
    raise SpecError(
        f"unknown model {spec!r}: give a bundled name ({', '.join(sorted(BUNDLED_MODELS))}), a folder with "
        "config.json or pts_model.json, or a timm model name"
    )


# --- data -----------------------------------------------------------------------------------------------------
def adapt_images(x: torch.Tensor, src_mean: tuple[float, ...], src_std: tuple[float, ...], spec: InputSpec
                 ) -> torch.Tensor:
    """Re-normalise, resize and repeat/average channels so ``x`` fits ``spec``."""
    mean = torch.tensor(src_mean).view(1, -1, 1, 1)
    std = torch.tensor(src_std).view(1, -1, 1, 1)
    x = x * std + mean  # back to [0, 1]
    if x.shape[1] != spec.channels:
        x = x.mean(1, keepdim=True).expand(-1, spec.channels, -1, -1) if spec.channels != 1 else x.mean(1, True)
    if x.shape[-1] != spec.size or x.shape[-2] != spec.size:
        x = F.interpolate(x, size=(spec.size, spec.size), mode="bilinear", align_corners=False)
    m = torch.tensor(spec.mean).view(1, -1, 1, 1)
    s = torch.tensor(spec.std).view(1, -1, 1, 1)
    return ((x - m) / s).contiguous()


def _pil_to_tensor(img: Any, spec: InputSpec) -> torch.Tensor:
    import numpy as np

    img = img.convert("L" if spec.channels == 1 else "RGB").resize((spec.size, spec.size))
    arr = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()) / 255.0
    arr = arr.unsqueeze(0) if arr.ndim == 2 else arr.permute(2, 0, 1)
    return (arr - torch.tensor(spec.mean).view(-1, 1, 1)) / torch.tensor(spec.std).view(-1, 1, 1)


def _sample_indices(n_total: int, n: int | None, seed: int) -> list[int]:
    if n is None or n >= n_total:
        return list(range(n_total))
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n].tolist()


def _image_folder(path: Path, spec: InputSpec, n: int | None, seed: int) -> TensorDataset:
    from PIL import Image

    classes = sorted(d.name for d in path.iterdir() if d.is_dir())
    files = [(f, i) for i, c in enumerate(classes) for f in sorted((path / c).iterdir()) if f.is_file()]
    if not files:
        raise SpecError(f"image folder {str(path)!r} has no class sub-folders with images")
    idx = _sample_indices(len(files), n, seed)
    xs, ys = [], []
    for i in idx:
        f, label = files[i]
        try:
            with Image.open(f) as img:
                xs.append(_pil_to_tensor(img, spec))
        except OSError as e:
            raise SpecError(f"cannot read image {str(f)!r}: {e}") from e
        ys.append(label)
    return TensorDataset(torch.stack(xs), torch.tensor(ys))


def _hf_dataset(spec_str: str, split: str, spec: InputSpec, n: int | None, seed: int) -> TensorDataset:
    import datasets

    path = Path(spec_str)
    try:
        if path.is_dir():
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split] if split in ds else ds[next(iter(ds))]
        else:
            ds = datasets.load_dataset(spec_str, split=split)
    except Exception as e:
        raise SpecError(f"cannot load dataset {spec_str!r} (split {split!r}): {e}") from e
    image_col = next((k for k, f in ds.features.items() if type(f).__name__ == "Image"), None)
    label_col = next((k for k in ("label", "labels") if k in ds.features), None)
    if image_col is None:
        raise SpecError(f"dataset {spec_str!r} has no image column (features: {list(ds.features)})")
    idx = _sample_indices(len(ds), n, seed)
    sub = ds.select(idx)
    xs = torch.stack([_pil_to_tensor(img, spec) for img in sub[image_col]])
    ys = torch.tensor(sub[label_col]) if label_col else torch.full((len(idx),), -1)
    return TensorDataset(xs, ys)


def _is_fmnist(data: str) -> bool:
    return data.lower().replace("_", "-") == "fashion-mnist"


def check_data_spec(data: str) -> None:
    """Cheap checks before anything is loaded: a path-like spec must exist."""
    if _is_fmnist(data):
        return
    if not Path(data).exists() and (data.startswith((".", "/", "~")) or data.count("/") > 1):
        raise SpecError(f"data folder {data!r} does not exist")


def load_images(data: str, split: str, spec: InputSpec, n: int | None = None, seed: int = 0) -> TensorDataset:
    """``n`` (all if None) seeded samples of ``data`` as ``TensorDataset(images fitting spec, labels)``."""
    check_data_spec(data)
    if _is_fmnist(data):
        from pts_hf.data import FMNIST_MEAN, FMNIST_STD, load_fashion_mnist

        try:
            ds = load_fashion_mnist(split)
        except FileNotFoundError as e:
            raise SpecError(str(e)) from e
        x, y = ds.tensors
        idx = torch.tensor(_sample_indices(len(y), n, seed))
        x, y = x[idx], y[idx]
        if (spec.channels, spec.size) != (1, 28) or spec.mean != (FMNIST_MEAN,):
            x = adapt_images(x, (FMNIST_MEAN,), (FMNIST_STD,), spec)
        return TensorDataset(x, y)
    path = Path(data)
    if path.is_dir() and not (path / "dataset_info.json").exists() and not (path / "state.json").exists() \
            and not (path / "dataset_dict.json").exists():
        return _image_folder(path, spec, n, seed)
    return _hf_dataset(data, split, spec, n, seed)
