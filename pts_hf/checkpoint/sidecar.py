"""``sparsity_config.json``: what a sparse checkpoint was made with, next to its weights."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from pts_hf.record import RunRecord
from pts_hf.version import CONFIG_VERSION

__all__ = ["SIDECAR_NAME", "make_sidecar", "read_sidecar", "validate_sidecar"]

SIDECAR_NAME = "sparsity_config.json"
_KNOWN_KEYS = RunRecord.known_keys() | {"format"}


def make_sidecar(fmt: str, record: RunRecord, metrics: dict[str, float] | None = None) -> dict[str, Any]:
    """``sparsity_config.json``: the run record (without the step history) and the format it is stored in."""
    side = {**record.to_dict(history=False), "format": fmt}
    if metrics:
        side["metrics"] = {**side.get("metrics", {}), **metrics}
    return side


def read_sidecar(folder: Path) -> dict[str, Any] | None:
    path = folder / SIDECAR_NAME
    if not path.is_file():
        return None
    try:
        side = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    unknown = sorted(set(side) - _KNOWN_KEYS)
    version = side.get("format_version", CONFIG_VERSION)
    if unknown or (isinstance(version, int) and version > CONFIG_VERSION):
        warnings.warn(f"{path}: written by a newer pts_hf (format {version} > {CONFIG_VERSION}); ignoring unknown "
                      f"keys {unknown}", stacklevel=3)
        for k in unknown:
            side.pop(k)
    return side


def validate_sidecar(side: dict[str, Any], model: nn.Module, path: Path) -> None:
    """Every layer the sidecar names must be a parameter of ``model`` with the recorded size."""
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, info in side.get("layers", {}).items():
        if name not in params:
            raise ValueError(f"{path / SIDECAR_NAME}: layer {name!r} does not exist in {type(model).__name__}")
        numel = info.get("numel")
        if numel is not None and params[name].numel() != numel:
            raise ValueError(f"{path / SIDECAR_NAME}: layer {name!r} has {params[name].numel()} elements in the "
                             f"model but {numel} in the sidecar")
