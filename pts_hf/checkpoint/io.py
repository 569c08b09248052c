"""Saving and loading sparse checkpoints.

``format="dense"``: the model's normal files (``save_pretrained`` for transformers models, ``model.safetensors``
otherwise) with the zeros in place, so plain ``from_pretrained`` loads them without pts_hf. ``format="bitmask"``:
every ≥2-D weight with ≤ 90% non-zeros is stored compressed (see :mod:`pts_hf.checkpoint.bitmask`); HF configs
get ``quantization_config = {"quant_method": "pts_hf_bitmask"}``. Both carry ``sparsity_config.json``.

Writes go to a temporary folder first and each file is moved into place with an atomic rename. Nothing is ever
unpickled: weights are read with safetensors only.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from pts_hf.checkpoint.bitmask import BITMASK_SUFFIX, SHAPE_SUFFIX, is_worth_compressing, pack, unpack
from pts_hf.checkpoint.output import staged_output
from pts_hf.checkpoint.sidecar import SIDECAR_NAME, make_sidecar, read_sidecar, validate_sidecar

__all__ = ["BITMASK_QUANT_METHOD", "load_sparse", "read_safetensors", "resolve_folder", "save_sparse",
           "write_text_atomic"]

BITMASK_QUANT_METHOD = "pts_hf_bitmask"
FORMATS = ("dense", "bitmask")
_INDEX = "model.safetensors.index.json"


def _is_hf(model: nn.Module) -> bool:
    return hasattr(model, "save_pretrained") and hasattr(model, "config")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it into place (no half-written file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the header metadata of one file; a damaged file raises ``ValueError`` naming it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            names = list(f.keys())
            return {k: f.get_tensor(k) for k in names}, meta
    except Exception as e:  # SafetensorError, OSError, header parse errors
        raise ValueError(f"{path}: truncated or corrupted safetensors file ({type(e).__name__}: {e})") from e


def _compress_file(path: Path) -> dict[str, str]:
    """Rewrite one safetensors file in the bitmask format; returns {new key: file name} for the index."""
    from safetensors.torch import save_file

    tensors, meta = read_safetensors(path)
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        out.update(pack(name, t) if is_worth_compressing(t) else {name: t.contiguous()})
    save_file(out, str(path), metadata={**meta, "format": "pt", "pts_hf_format": "bitmask"})
    return {k: path.name for k in out}


def _decompress(tensors: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in tensors.items():
        if name.endswith((BITMASK_SUFFIX, SHAPE_SUFFIX)):
            continue
        mask = tensors.get(name + BITMASK_SUFFIX)
        shape = tensors.get(name + SHAPE_SUFFIX)
        if mask is not None and shape is not None:
            out[name] = unpack(name, t, mask, shape, source)
        elif (mask is None) != (shape is None):
            raise ValueError(f"{source}: {name} has only one of {BITMASK_SUFFIX} / {SHAPE_SUFFIX}")
        else:
            out[name] = t
    return out


def save_sparse(model: nn.Module, save_directory: str | Path, format: str = "dense", *, result: Any = None,
                metrics: dict[str, float] | None = None) -> Path:
    """Save a squashed sparse model with its ``sparsity_config.json`` sidecar (see module docstring)."""
    from pts_hf.api import measure_sparsity
    from pts_hf.targets import discover_targets

    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    live = [n for n, m in model.named_modules() if parametrize.is_parametrized(m)]
    if live:
        raise ValueError(f"{type(model).__name__} still has live parametrizations ({live[:3]}...); call the "
                         "sparsifier's squash_mask() before saving")
    if result is not None:
        layer_sparsity, layer_numel, global_s = result.layer_sparsity, result.layer_numel, result.global_sparsity
    else:
        targets = discover_targets(model)
        layer_sparsity, global_s = measure_sparsity(targets)
        layer_numel = {t.tensor_fqn: t.numel for t in targets}
    side = make_sidecar(format, layer_sparsity, layer_numel, global_s, result, metrics)

    out = Path(save_directory)
    if out.exists() and not out.is_dir():
        raise ValueError(f"save_directory {str(out)!r} exists and is not a folder")
    # files go to a temporary folder, then into place; on a failure the folder keeps what it held before and no
    # folder created here stays behind
    with staged_output(out) as tmp:
        if _is_hf(model):
            model.save_pretrained(tmp)
        else:
            from safetensors.torch import save_model

            save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if format == "bitmask":
            weight_map: dict[str, str] = {}
            for f in sorted(tmp.glob("*.safetensors")):
                weight_map.update(_compress_file(f))
            if (tmp / _INDEX).is_file():
                index = json.loads((tmp / _INDEX).read_text())
                index["weight_map"] = weight_map
                (tmp / _INDEX).write_text(json.dumps(index, indent=2))
            if (tmp / "config.json").is_file():
                cfg = json.loads((tmp / "config.json").read_text())
                cfg["quantization_config"] = {"quant_method": BITMASK_QUANT_METHOD, "format_version": 1}
                (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        (tmp / SIDECAR_NAME).write_text(json.dumps(side, indent=2) + "\n")
    return out


def resolve_folder(path_or_repo_id: str | Path, revision: str | None = None, token: str | None = None) -> Path:
    """A local folder as is; otherwise a Hub repo id, downloaded (or taken from the cache offline)."""
    p = Path(path_or_repo_id)
    if p.is_dir():
        return p
    if p.exists():
        raise ValueError(f"{p} is a file; give the checkpoint's folder")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(path_or_repo_id), revision=revision, token=token))
    except Exception as e:
        raise FileNotFoundError(f"{path_or_repo_id!r} is neither a local folder nor a reachable Hub repo "
                                f"({type(e).__name__}: {e})") from e


def _read_all(folder: Path) -> tuple[dict[str, torch.Tensor], bool]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors weights")
    state, compressed = {}, False
    for f in files:
        tensors, meta = read_safetensors(f)
        if meta.get("pts_hf_format") == "bitmask" or any(k.endswith(BITMASK_SUFFIX) for k in tensors):
            compressed = True
            tensors = _decompress(tensors, str(f))
        state.update(tensors)
    return state, compressed


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], folder: Path) -> None:
    """Check names and shapes against ``model`` first; only a checkpoint that fits is written into it."""
    own = model.state_dict()
    for name, t in state.items():
        if name in own and own[name].shape != t.shape:
            raise ValueError(f"{folder}: {name} has shape {tuple(t.shape)} in the checkpoint but "
                             f"{tuple(own[name].shape)} in {type(model).__name__}")
    ptrs = {own[k].data_ptr() for k in state if k in own}
    missing = [k for k in own if k not in state and own[k].data_ptr() not in ptrs]  # tied aliases saved once
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ValueError(f"{folder}: checkpoint does not match {type(model).__name__}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}; {type(model).__name__} was not modified")
    model.load_state_dict(state, strict=False)


def _hf_class(folder: Path) -> Any:
    import transformers

    cfg = json.loads((folder / "config.json").read_text())
    arch = (cfg.get("architectures") or ["AutoModel"])[0]
    return getattr(transformers, arch, None) or transformers.AutoModel


def _rebuild_pts_hf_output(folder: Path) -> nn.Module:
    """The architecture of a ``pts-hf sparsify --output`` folder of a bundled or timm model (its
    ``pts_model.json`` names it), without weights; otherwise an error saying to pass ``model=``."""
    from pts_hf.sources import MODEL_META, SpecError, resolve_model

    if not (folder / MODEL_META).is_file():
        raise ValueError(f"{folder} is not a transformers checkpoint (no config.json) nor a pts-hf output "
                         f"({MODEL_META}): pass the architecture, e.g. load_sparse(path, model=MyNet())")
    meta = json.loads((folder / MODEL_META).read_text())
    try:
        return resolve_model(str(meta.get("source")), pretrained=False).model
    except SpecError as e:
        raise ValueError(f"{folder / MODEL_META}: cannot rebuild {meta.get('source')!r} ({e}); pass the "
                         "architecture as load_sparse(path, model=...)") from e


def load_sparse(path_or_repo_id: str | Path, model: nn.Module | None = None, *, revision: str | None = None,
                token: str | None = None, **from_pretrained_kwargs: Any) -> nn.Module:
    """Load a checkpoint written by :func:`save_sparse` (either format) from a folder or a Hub repo id.

    Transformers checkpoints are rebuilt from their ``config.json``, ``pts-hf sparsify`` outputs of bundled /
    timm models from their ``pts_model.json``; for other models pass the architecture as ``model``: its weights
    are replaced only after the sidecar and every tensor name and shape were checked against it. The sidecar is
    attached as ``model.pts_sparsity_config``.
    """
    folder = resolve_folder(path_or_repo_id, revision, token)
    side = read_sidecar(folder)
    if model is None and (folder / "config.json").is_file():
        cls = _hf_class(folder)
        state, compressed = _read_all(folder)
        if not compressed:
            model = cls.from_pretrained(folder, **from_pretrained_kwargs)
        else:  # decompress into a temporary dense copy, then load it the ordinary way
            from safetensors.torch import save_file

            with tempfile.TemporaryDirectory(prefix=".pts_hf-load-") as tmp:
                for f in folder.iterdir():
                    if f.is_file() and f.suffix != ".safetensors" and f.name != _INDEX:
                        shutil.copy(f, Path(tmp) / f.name)
                cfg = json.loads((Path(tmp) / "config.json").read_text())
                cfg.pop("quantization_config", None)
                (Path(tmp) / "config.json").write_text(json.dumps(cfg))
                save_file(state, str(Path(tmp) / "model.safetensors"), metadata={"format": "pt"})
                model = cls.from_pretrained(tmp, **from_pretrained_kwargs)
    else:
        if model is None:
            model = _rebuild_pts_hf_output(folder)
        state, _ = _read_all(folder)
        if side is not None:  # validate first, then write: a bad sidecar leaves the user's model untouched
            validate_sidecar(side, model, folder)
        _load_into(model, state, folder)
    if side is not None:
        validate_sidecar(side, model, folder)
    model.pts_sparsity_config = side
    return model
