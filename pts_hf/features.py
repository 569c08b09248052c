"""Intermediate-feature distillation: which block outputs a sparse student is compared on, and taps that record them.

The output KL sees only the last layer; at high sparsity the error builds up block by block, and comparing every
block's output with the dense model's (normalised MSE, as block-wise reconstruction does) gives each block a
direct signal. The points are found structurally, as the sequential pipeline finds its blocks (transformers
``_no_split_modules``, timm ``group_matcher``, else the top-level children), with two changes: a container block
(an ``nn.Sequential`` / ``nn.ModuleList`` stage such as a ResNet ``layer1``) is split into its children, and a
block that is itself one targeted layer (the first conv, the classifier head) is left out — its output is either
raw or already compared by the output loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from pts_hf.pipeline.blocks import find_units
from pts_hf.pipeline.sequential import first_tensor
from pts_hf.targets import Target

__all__ = ["FeatureTap", "feature_points"]

_CONTAINERS = (nn.Sequential, nn.ModuleList)


def feature_points(model: nn.Module, targets: Sequence[Target], spec: str | Sequence[str] = "blocks") -> list[str]:
    """Names of the modules whose outputs are compared: ``spec="blocks"`` discovers them (module docstring), a list
    names them (each must be a module of ``model``)."""
    modules = dict(model.named_modules())
    if not isinstance(spec, str):
        missing = [n for n in spec if n not in modules]
        if missing:
            raise ValueError(f"feature_points names {missing}, which are not modules of {type(model).__name__}; "
                             "use names from model.named_modules() or 'blocks'")
        return list(spec)
    if spec != "blocks":
        raise ValueError(f"feature_points must be 'blocks' or a list of module names, got {spec!r}")
    target_modules = {id(t.module) for t in targets}
    names: list[str] = []
    for unit in find_units(model, list(targets))[0]:
        if not unit.targets:  # e.g. a top-level BatchNorm or pooling child
            continue
        if isinstance(unit.module, _CONTAINERS):
            names.extend(f"{unit.name}.{n}" if unit.name else n for n, child in unit.module.named_children()
                         if _holds_target(child, target_modules) and id(child) not in target_modules)
        elif id(unit.module) not in target_modules and unit.name:
            names.append(unit.name)
    return names


def _holds_target(module: nn.Module, target_modules: set[int]) -> bool:
    return any(id(m) in target_modules for m in module.modules())


class FeatureTap:
    """Forward hooks recording the outputs (the first tensor of tuple outputs) of named modules.

    ``take()`` returns what the last forward recorded, in the order of ``names``, and clears it::

        tap = FeatureTap(model, ["layer1.0", "layer2.0"])
        out = model(x); feats = tap.take()
        tap.remove()
    """

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        modules = dict(model.named_modules())
        self.names = list(names)
        self._seen: dict[str, torch.Tensor] = {}
        self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in self.names]

    def _hook(self, name: str) -> Any:
        def record(module: nn.Module, args: Any, output: Any) -> None:
            out = first_tensor(output)
            if isinstance(out, torch.Tensor):
                self._seen[name] = out
        return record

    def take(self) -> list[torch.Tensor]:
        missing = [n for n in self.names if n not in self._seen]
        if missing:
            self._seen.clear()
            raise RuntimeError(f"feature distillation: the forward did not run {missing} (or they returned no "
                               "tensor); name modules that every forward runs in feature_points")
        seen = [self._seen[n] for n in self.names]
        self._seen.clear()
        return seen

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._seen.clear()
