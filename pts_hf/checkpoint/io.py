"""Saving and loading sparse checkpoints, in any registered format (:mod:`pts_hf.checkpoint.formats`).

The model's normal files are written first (``save_pretrained`` for transformers models, ``model.safetensors``
otherwise), then each safetensors file is re-encoded by the format, and ``sparsity_config.json`` (the run
record, :mod:`pts_hf.record`) is added. ``format="dense"`` leaves the files as they are, so plain
``from_pretrained`` loads them without pts_hf. A format with a ``quant_method`` marks transformers configs with
``quantization_config`` so the transformers plugin can restore them.

Writes go to a temporary folder first and each file is moved into place with an atomic rename. Nothing is ever
unpickled: weights are read with safetensors only.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from pts_hf.checkpoint.formats import FORMAT_META_KEY, CheckpointFormat, format_of_file, get_format
from pts_hf.checkpoint.formats.bitmask import BITMASK_QUANT_METHOD
from pts_hf.checkpoint.output import staged_output
from pts_hf.checkpoint.sidecar import SIDECAR_NAME, make_sidecar, read_sidecar, validate_sidecar
from pts_hf.record import RunRecord, measure_layers

__all__ = ["BITMASK_QUANT_METHOD", "RECORD_ATTR", "finish_checkpoint", "fold_parametrizations", "load_sparse",
           "read_safetensors", "record_of", "resolve_folder", "save_sparse", "write_checkpoint", "write_text_atomic"]

RECORD_ATTR = "pts_sparsity_record"  # the RunRecord a squashed / loaded model carries
_INDEX = "model.safetensors.index.json"
_ORIGINAL = re.compile(r"^(?P<prefix>.*)\.parametrizations\.(?P<tensor>[^.]+)\.original$")


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


def record_of(model: nn.Module) -> RunRecord:
    """What ``model``'s sparse weights are, measured now: the layers of the record it carries (set by
    ``squash_mask``, :func:`pts_hf.sparsify` and :func:`load_sparse`), or, for a model pts_hf never touched, the
    layers default discovery finds."""
    from pts_hf.targets import discover_targets

    carried = getattr(model, RECORD_ATTR, None)
    params = dict(model.named_parameters(remove_duplicate=False))
    if isinstance(carried, RunRecord) and all(k in params for k in carried.layers):
        layers, global_s = measure_layers({k: params[k] for k in carried.layers})
        for k, v in layers.items():
            v.extras = dict(carried.layers[k].extras)
        return RunRecord(carried.method, carried.config, carried.target_sparsity, global_s, layers,
                         carried.seconds, carried.calibration, dict(carried.extras), list(carried.history),
                         dict(carried.metrics))
    return RunRecord.measure({t.tensor_fqn: t.weight for t in discover_targets(model)})


def _encode_folder(folder: Path, fmt: CheckpointFormat) -> None:
    """Re-encode every safetensors file of ``folder`` in ``fmt`` (identity for dense)."""
    from safetensors.torch import save_file

    if type(fmt).encode is CheckpointFormat.encode:
        return
    weight_map: dict[str, str] = {}
    for f in sorted(folder.glob("*.safetensors")):
        tensors, meta = read_safetensors(f)
        out = fmt.encode(tensors)
        save_file(out, str(f), metadata={**meta, "format": "pt", FORMAT_META_KEY: fmt.name})
        weight_map.update({k: f.name for k in out})
    if (folder / _INDEX).is_file():
        index = json.loads((folder / _INDEX).read_text())
        index["weight_map"] = weight_map
        (folder / _INDEX).write_text(json.dumps(index, indent=2))
    if fmt.quant_method and (folder / "config.json").is_file():
        cfg = json.loads((folder / "config.json").read_text())
        cfg["quantization_config"] = {"quant_method": fmt.quant_method, "format_version": 1}
        (folder / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def write_checkpoint(model: nn.Module, folder: Path, format: str = "dense", *, record: RunRecord | None = None,
                     metrics: dict[str, float] | None = None) -> None:
    """Write a squashed sparse model into an existing (staging) folder: weights in ``format`` and the sidecar.
    The one writer behind :func:`save_sparse`, the CLI's ``--output`` and the Trainer callback."""
    fmt = get_format(format)
    live = [n for n, m in model.named_modules() if parametrize.is_parametrized(m)]
    if live:
        raise ValueError(f"{type(model).__name__} still has live parametrizations ({live[:3]}...); call the "
                         "sparsifier's squash_mask() before saving")
    record = record if record is not None else record_of(model)
    if _is_hf(model):
        model.save_pretrained(folder)
    else:
        from safetensors.torch import save_model

        save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})
    _encode_folder(folder, fmt)
    (folder / SIDECAR_NAME).write_text(json.dumps(make_sidecar(fmt.name, record, metrics), indent=2) + "\n")


def finish_checkpoint(folder: Path, record: RunRecord, format: str = "dense") -> None:
    """Make a folder someone else saved (the Trainer's ``checkpoint-N``, ``save_pretrained`` of a model in
    training) a pts_hf checkpoint: weights saved with live masks folded, files in ``format``, the sidecar."""
    fold_parametrizations(folder)
    _encode_folder(folder, get_format(format))
    write_text_atomic(folder / SIDECAR_NAME, json.dumps(make_sidecar(format, record), indent=2) + "\n")


def fold_parametrizations(folder: str | Path) -> int:
    """Rewrite the safetensors files of a checkpoint saved while masks were live: ``X.parametrizations.weight
    .original`` → ``X.weight`` (masked as the parametrization saved beside it says), other ``parametrizations``
    entries dropped. Works on the names as saved (transformers may rename on save). Returns tensors rewritten."""
    from safetensors.torch import save_file

    from pts_hf.parametrize import mask_from_saved

    folder = Path(folder)
    rewritten = 0
    weight_map: dict[str, str] = {}
    for f in sorted(folder.glob("*.safetensors")):
        tensors, meta = read_safetensors(f)
        out = {}
        for name, t in tensors.items():
            m = _ORIGINAL.match(name)
            if m:
                prefix = f"{m['prefix']}.parametrizations.{m['tensor']}.0."
                state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
                try:
                    mask = mask_from_saved(state, t)
                except ValueError as e:
                    raise ValueError(f"{f}: {name}: {e}") from e
                out[f"{m['prefix']}.{m['tensor']}"] = (t * mask.to(t.dtype)).contiguous()
                rewritten += 1
            elif ".parametrizations." not in name:
                out[name] = t.contiguous()
        if rewritten:
            tmp = f.with_name(f.name + ".tmp")
            save_file(out, str(tmp), metadata=meta or {"format": "pt"})
            tmp.replace(f)
        weight_map.update({k: f.name for k in out})
    index = folder / _INDEX
    if rewritten and index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = weight_map
        index.write_text(json.dumps(data, indent=2))
    return rewritten


def save_sparse(model: nn.Module, save_directory: str | Path, format: str = "dense", *,
                record: RunRecord | None = None, metrics: dict[str, float] | None = None) -> Path:
    """Save a squashed sparse model with its ``sparsity_config.json`` sidecar (see module docstring).

    ``record`` defaults to what the model carries (:func:`record_of`): the layers that were actually
    sparsified, whatever ``targets`` / ``ignore`` chose."""
    get_format(format)
    out = Path(save_directory)
    if out.exists() and not out.is_dir():
        raise ValueError(f"save_directory {str(out)!r} exists and is not a folder")
    # files go to a temporary folder, then into place; on a failure the folder keeps what it held before and no
    # folder created here stays behind
    with staged_output(out) as tmp:
        write_checkpoint(model, tmp, format, record=record, metrics=metrics)
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
    """Every tensor of the folder, decoded; and whether any file was in an encoded (non-dense) format."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors weights")
    state, encoded = {}, False
    for f in files:
        tensors, meta = read_safetensors(f)
        fmt = format_of_file(tensors, meta)
        encoded = encoded or fmt.name != "dense"
        state.update(fmt.decode(tensors, str(f)))
    return state, encoded


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
    if side is not None:
        setattr(model, RECORD_ATTR, RunRecord.from_dict(side))
    return model
