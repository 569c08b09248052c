"""Structural block discovery: where a model splits into blocks that can be calibrated one at a time.

Asked of the model, in order: transformers' ``_no_split_modules`` (``BertLayer``, ``LlamaDecoderLayer``, …),
timm's ``group_matcher()["blocks"]``, else the model's top-level children (torchvision ResNet stages,
``nn.Sequential`` CNNs). Targets outside every block become one-layer units of their own.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from torch import nn
from torch.nn.utils import parametrize

from pts_hf.targets import Target

__all__ = ["Unit", "find_units"]

logger = logging.getLogger("pts_hf")


@dataclass
class Unit:
    """A module the pipeline runs as one piece, with the targets inside it."""

    name: str
    module: nn.Module
    targets: list[Target] = field(default_factory=list)


def _outermost(names: list[str]) -> list[str]:
    out: list[str] = []
    for n in sorted(names, key=lambda s: (s.count("."), s)):
        if not any(n == o or n.startswith(o + ".") for o in out):
            out.append(n)
    return out


def _hf_blocks(model: nn.Module) -> list[str]:
    classes = getattr(model, "_no_split_modules", None) or []
    if not classes:
        return []
    return [n for n, m in model.named_modules()
            if n and parametrize.type_before_parametrizations(m).__name__ in set(classes)]


def _timm_blocks(model: nn.Module) -> list[str]:
    matcher = getattr(model, "group_matcher", None)
    if not callable(matcher) or type(model).__module__.split(".")[0] != "timm":
        return []
    try:
        spec = matcher(coarse=False).get("blocks")
    except TypeError:
        return []
    patterns = [spec] if isinstance(spec, str) else [p[0] if isinstance(p, (tuple, list)) else p for p in spec or []]
    regexes = [re.compile(p) for p in patterns]
    found = []
    for name, _ in model.named_modules():
        for rx in regexes:
            mt = rx.match(name)
            if name and mt is not None and mt.end() == len(name):
                found.append(name)
                break
    return found


def find_units(model: nn.Module, targets: list[Target]) -> tuple[list[Unit], str]:
    """Units covering every target (in module order) and a sentence saying how the blocks were found."""
    source = "transformers _no_split_modules"
    names = _hf_blocks(model)
    if not names:
        source, names = "timm group_matcher", _timm_blocks(model)
    target_names = [t.module_name for t in targets]

    def holds_targets(n: str) -> bool:
        return any(t == n or t.startswith(n + ".") for t in target_names)

    names = [n for n in _outermost(names) if holds_targets(n)]
    if not names:
        children = [n for n, _ in model.named_children()]
        if not children:  # the model is itself one layer
            return [Unit("", model, list(targets))], "the model itself (no children)"
        source = "top-level children (no transformers/timm blocks found)"
        logger.info("pts_hf: %s has no known block structure; calibrating its top-level children one by one",
                    type(model).__name__)
        names = children
    modules = dict(model.named_modules())
    units = {n: Unit(n, modules[n]) for n in names}
    loose: list[Unit] = []
    for t in targets:
        owner = next((n for n in names if t.module_name == n or t.module_name.startswith(n + ".")), None)
        if owner is None:
            loose.append(Unit(t.module_name, t.module, [t]))
        else:
            units[owner].targets.append(t)
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    all_units = sorted([*units.values(), *loose], key=lambda u: order.get(u.name, 0))
    return all_units, source
