"""Sparsifier registry: one file per method plus one line in ``SPARSIFIERS``.

Protocols a method file builds on: :class:`PTSSparsifier` (one-shot, e.g. magnitude), :class:`DistillingSparsifier`
(trained against a dense teacher by :mod:`pts_hf.distillation`) and :class:`LayerwiseSparsifier` (block by block).
"""

from __future__ import annotations

from pts_hf.sparsifiers.base import PTSSparsifier
from pts_hf.sparsifiers.distilling import DistillingSparsifier
from pts_hf.sparsifiers.fcpts import FCPTSConfig, FCPTSSparsifier
from pts_hf.sparsifiers.fcpts_block import FCPTSBlockConfig, FCPTSBlockSparsifier
from pts_hf.sparsifiers.layerwise import LayerwiseConfig, LayerwiseSparsifier
from pts_hf.sparsifiers.magnitude import MagnitudeConfig, MagnitudeSparsifier
from pts_hf.sparsifiers.pot import POTConfig, POTSparsifier
from pts_hf.sparsifiers.sparsegpt import SparseGPTConfig, SparseGPTSparsifier
from pts_hf.sparsifiers.unipts import UniPTSConfig, UniPTSSparsifier
from pts_hf.sparsifiers.wanda import WandaConfig, WandaSparsifier

__all__ = [
    "SPARSIFIERS",
    "DistillingSparsifier",
    "FCPTSBlockConfig",
    "FCPTSBlockSparsifier",
    "FCPTSConfig",
    "FCPTSSparsifier",
    "LayerwiseConfig",
    "LayerwiseSparsifier",
    "MagnitudeConfig",
    "MagnitudeSparsifier",
    "POTConfig",
    "POTSparsifier",
    "PTSSparsifier",
    "SparseGPTConfig",
    "SparseGPTSparsifier",
    "UniPTSConfig",
    "UniPTSSparsifier",
    "WandaConfig",
    "WandaSparsifier",
    "get_sparsifier_class",
]

SPARSIFIERS: dict[str, type[PTSSparsifier]] = {
    MagnitudeSparsifier.method: MagnitudeSparsifier,
    FCPTSSparsifier.method: FCPTSSparsifier,
    UniPTSSparsifier.method: UniPTSSparsifier,
    WandaSparsifier.method: WandaSparsifier,
    SparseGPTSparsifier.method: SparseGPTSparsifier,
    POTSparsifier.method: POTSparsifier,
    FCPTSBlockSparsifier.method: FCPTSBlockSparsifier,
}


def get_sparsifier_class(method: str) -> type[PTSSparsifier]:
    key = method.lower() if isinstance(method, str) else method
    if key not in SPARSIFIERS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(SPARSIFIERS)}")
    return SPARSIFIERS[key]
