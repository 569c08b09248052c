"""Which weights get sparsified: structural discovery plus a small targets/ignore grammar.

Default discovery finds every ``nn.Linear``, ``nn.Conv1d/2d/3d`` (grouped and depthwise included) and
transformers ``Conv1D`` by ``isinstance`` and skips a Hugging Face model's input and output embeddings, asked
of the model itself (``get_input_embeddings()`` / ``get_output_embeddings()``). A weight shared by several
modules (tied weights) is targeted once, under the first name it is found by.

Patterns (for ``targets`` and ``ignore``), each one of:

* a class name, e.g. ``"Linear"`` or ``"Conv2d"``;
* a module name, e.g. ``"layer1.0.conv1"``, its weight's name ``"layer1.0.conv1.weight"``, or a parent
  module's name (``"layer1"`` selects every supported layer below it);
* ``"re:<regex>"``, matched with :func:`re.match` against the module name.

A pattern that matches nothing raises :class:`ValueError` naming it: a typo never silently prunes the wrong
set of layers.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["Target", "discover_targets", "measure_sparsity", "supported_layer_types"]


@dataclass(frozen=True)
class Target:
    """One weight tensor to sparsify."""

    module_name: str
    module: nn.Module
    tensor_name: str = "weight"

    @property
    def tensor_fqn(self) -> str:
        return f"{self.module_name}.{self.tensor_name}" if self.module_name else self.tensor_name

    @property
    def weight(self) -> torch.Tensor:
        """The dense (un-parametrized) weight."""
        if parametrize.is_parametrized(self.module, self.tensor_name):
            return self.module.parametrizations[self.tensor_name].original
        return getattr(self.module, self.tensor_name)

    @property
    def numel(self) -> int:
        return self.weight.numel()


def supported_layer_types() -> tuple[type, ...]:
    """Layer classes found by default. HF ``Conv1D`` is included only when transformers is already loaded,
    so ``import pts_hf`` never imports transformers (a model holding a ``Conv1D`` has imported it)."""
    types: list[type] = [nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d]
    if "transformers" in sys.modules:
        try:
            from transformers.pytorch_utils import Conv1D
        except ImportError:  # pragma: no cover - very old or broken transformers
            pass
        else:
            types.append(Conv1D)
    return tuple(types)


@torch.no_grad()
def measure_sparsity(targets: Sequence[Target]) -> tuple[dict[str, float], float]:
    """Per-tensor and global fraction of zeros actually present in the targets' weights."""
    per, zeros, total = {}, 0, 0
    for t in targets:
        w = t.weight
        z = int((w == 0).sum())
        per[t.tensor_fqn] = z / w.numel() if w.numel() else 0.0
        zeros += z
        total += w.numel()
    return per, (zeros / total if total else 0.0)


def _embedding_modules(model: nn.Module) -> set[int]:
    """ids of the modules the model reports as its input/output embeddings, and of their submodules."""
    found: set[int] = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        fn = getattr(model, getter, None)
        if not callable(fn):
            continue
        try:
            module = fn()
        except (NotImplementedError, AttributeError, TypeError):
            continue
        if isinstance(module, nn.Module):  # the embedding and anything inside it (ViT's patch projection)
            found.update(id(m) for m in module.modules())
    return found


def _matches(pattern: str, name: str, module: nn.Module) -> bool:
    if pattern.startswith("re:"):
        return re.match(pattern[3:], name) is not None
    cls = parametrize.type_before_parametrizations(module).__name__
    return pattern in (cls, name, f"{name}.weight") or name.startswith(pattern + ".")


def _check_patterns(patterns: Sequence[str] | None, what: str) -> list[str]:
    if patterns is None:
        return []
    if isinstance(patterns, str):
        patterns = [patterns]
    out = []
    for p in patterns:
        if not isinstance(p, str) or not p:
            raise TypeError(f"{what} entries must be non-empty strings, got {p!r}")
        if p.startswith("re:"):
            try:
                re.compile(p[3:])
            except re.error as e:
                raise ValueError(f"{what} pattern {p!r} is not a valid regular expression: {e}") from e
        out.append(p)
    return out


def _candidate_layers(model: nn.Module) -> Iterable[tuple[str, nn.Module]]:
    types = supported_layer_types()
    for name, module in model.named_modules():
        if isinstance(module, types) and isinstance(getattr(module, "weight", None), torch.Tensor):
            yield name, module


def discover_targets(
    model: nn.Module,
    targets: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
) -> list[Target]:
    """Return the weights to sparsify, in module order.

    Args:
        model: any ``nn.Module``.
        targets: patterns selecting layers (see module docstring). ``None`` means every supported layer except
            the model's input/output embeddings. Explicit targets may name an embedding-adjacent layer such
            as ``"lm_head"``.
        ignore: patterns removed from the selection.

    Raises:
        ValueError: a pattern matches no supported layer, or nothing is left to sparsify.
    """
    target_patterns = _check_patterns(targets, "targets")
    ignore_patterns = _check_patterns(ignore, "ignore")
    candidates = list(_candidate_layers(model))
    embeddings = _embedding_modules(model)

    if targets is None:
        selected = [(n, m) for n, m in candidates if id(m) not in embeddings]
    else:
        selected = []
        for pattern in target_patterns:
            if not any(_matches(pattern, n, m) for n, m in candidates):
                raise ValueError(
                    f"targets pattern {pattern!r} matches no Linear/Conv/Conv1D layer of "
                    f"{type(model).__name__}; give a class name, a module name or 're:<regex>' "
                    f"(e.g. one of: {', '.join(n for n, _ in candidates[:5])})"
                )
        selected = [(n, m) for n, m in candidates if any(_matches(p, n, m) for p in target_patterns)]

    for pattern in ignore_patterns:
        if not any(_matches(pattern, n, m) for n, m in selected):
            raise ValueError(
                f"ignore pattern {pattern!r} matches none of the targeted layers of {type(model).__name__}"
            )
    selected = [(n, m) for n, m in selected if not any(_matches(p, n, m) for p in ignore_patterns)]

    out: list[Target] = []
    seen: set[int] = set()
    for name, module in selected:
        t = Target(name, module)
        key = id(t.weight)
        if key in seen or t.weight.numel() == 0:  # tied weight: count once; an empty weight has nothing to prune
            continue
        seen.add(key)
        out.append(t)
    if not out:
        raise ValueError(
            f"{type(model).__name__} has no targetable weights (Linear / Conv1d/2d/3d / HF Conv1D) left after "
            "targets/ignore; check the patterns or pass targets explicitly"
        )
    return out
