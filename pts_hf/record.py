"""The run record: what one sparsification produced, typed, in one place.

Every writer goes through :class:`RunRecord`: :func:`pts_hf.sparsify` builds it, the Trainer callback builds it
from its sparsifier, ``sparsity_config.json`` (every on-disk format) is ``record.to_dict(history=False)`` plus the
format name, and the CLI's ``report.json`` is ``record.to_dict()`` plus what the CLI measured. A method adds its
own numbers through :class:`MethodOutcome` (per-layer extras keyed by tensor name, global extras, step history);
nothing downstream picks keys by name, so a new method's numbers reach the sidecar and the report untouched.
"""

from __future__ import annotations

import datetime as _dt
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pts_hf.version import CONFIG_VERSION, __version__

__all__ = ["CalibrationInfo", "LayerRecord", "MethodOutcome", "RunRecord", "measure_layers"]

_TOP_KEYS = ("pts_hf_version", "format_version", "method", "config", "target_sparsity", "global_sparsity",
             "seconds", "calibration", "layers", "extras", "history", "metrics")


@dataclass
class MethodOutcome:
    """What a sparsifier's data-driven phase reports: numbers only the method knows."""

    layers: dict[str, dict[str, Any]] = field(default_factory=dict)  # tensor fqn -> {"initial_sparsity": ...}
    extras: dict[str, Any] = field(default_factory=dict)  # e.g. {"bn_batches": 4, "pipeline": {...}}
    history: list[dict[str, float]] = field(default_factory=list)  # one row per optimisation step

    def merge(self, other: MethodOutcome) -> MethodOutcome:
        for k, v in other.layers.items():
            self.layers.setdefault(k, {}).update(v)
        self.extras.update(other.extras)
        self.history.extend(other.history)
        return self

    def add_layer_values(self, key: str, values: dict[str, Any]) -> None:
        """Set ``key`` in the extras of every layer ``values`` names."""
        for k, v in values.items():
            self.layers.setdefault(k, {})[key] = v


@dataclass
class LayerRecord:
    """One targeted tensor: its size, its final fraction of zeros, and the method's per-layer numbers."""

    numel: int
    sparsity: float
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class CalibrationInfo:
    samples: int | None = None
    batches: int | None = None
    seed: int | None = None


@dataclass
class RunRecord:
    """Global numbers, per-layer rows and the method's extras of one run (see module docstring)."""

    method: str | None
    config: dict[str, Any] | None
    target_sparsity: float | None
    global_sparsity: float
    layers: dict[str, LayerRecord]
    seconds: float | None = None
    calibration: CalibrationInfo = field(default_factory=CalibrationInfo)
    extras: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)

    # --- views ------------------------------------------------------------------------------------------------
    @property
    def layer_sparsity(self) -> dict[str, float]:
        return {k: v.sparsity for k, v in self.layers.items()}

    @property
    def layer_numel(self) -> dict[str, int]:
        return {k: v.numel for k, v in self.layers.items()}

    def layer_values(self, key: str) -> dict[str, Any]:
        """One per-layer extra across layers, e.g. ``record.layer_values("initial_sparsity")``."""
        return {k: v.extras[key] for k, v in self.layers.items() if key in v.extras}

    def with_outcome(self, outcome: MethodOutcome) -> RunRecord:
        for k, v in outcome.layers.items():
            if k in self.layers:
                self.layers[k].extras.update(v)
        self.extras.update(outcome.extras)
        self.history.extend(outcome.history)
        return self

    # --- serialisation ----------------------------------------------------------------------------------------
    def to_dict(self, history: bool = True, max_history: int = 200) -> dict[str, Any]:
        d: dict[str, Any] = {
            "pts_hf_version": __version__,
            "format_version": CONFIG_VERSION,
            "method": self.method,
            "config": self.config,
            "target_sparsity": self.target_sparsity,
            "global_sparsity": self.global_sparsity,
            "seconds": None if self.seconds is None else round(self.seconds, 2),
            "calibration": {"samples": self.calibration.samples, "batches": self.calibration.batches,
                            "seed": self.calibration.seed},
            "layers": {k: {"numel": v.numel, "sparsity": v.sparsity, **v.extras} for k, v in self.layers.items()},
            "extras": dict(self.extras),
        }
        if history and self.history:
            d["history"] = self.history[:: max(1, len(self.history) // max_history)]
        if self.metrics:
            d["metrics"] = dict(self.metrics)
        return d

    def to_report(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """``report.json``: the record plus date, machine and what the caller measured (``extra``)."""
        return {**self.to_dict(), "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "machine": f"{platform.machine()} {platform.system()}", **(extra or {})}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunRecord:
        cal = d.get("calibration") or {}
        layers = {}
        for k, v in (d.get("layers") or {}).items():
            v = dict(v)
            layers[k] = LayerRecord(int(v.pop("numel", 0)), float(v.pop("sparsity", 0.0)), v)
        return cls(method=d.get("method"), config=d.get("config"), target_sparsity=d.get("target_sparsity"),
                   global_sparsity=float(d.get("global_sparsity") or 0.0), layers=layers, seconds=d.get("seconds"),
                   calibration=CalibrationInfo(cal.get("samples"), cal.get("batches"), cal.get("seed")),
                   extras=dict(d.get("extras") or {}), history=list(d.get("history") or []),
                   metrics=dict(d.get("metrics") or {}))

    @classmethod
    def known_keys(cls) -> set[str]:
        return set(_TOP_KEYS)

    @classmethod
    def measure(cls, weights: dict[str, torch.Tensor], *, method: str | None = None, config: Any = None,
                target_sparsity: float | None = None, **kwargs: Any) -> RunRecord:
        """A record whose layers are ``weights`` (tensor name -> tensor), measured as they are now."""
        layers, global_s = measure_layers(weights)
        cfg = config.to_dict() if hasattr(config, "to_dict") else config
        return cls(method=method, config=cfg, target_sparsity=target_sparsity, global_sparsity=global_s,
                   layers=layers, **kwargs)


@torch.no_grad()
def measure_layers(weights: dict[str, torch.Tensor] | Sequence[tuple[str, torch.Tensor]]
                   ) -> tuple[dict[str, LayerRecord], float]:
    """Per-tensor records and the global fraction of zeros actually present in the weights."""
    items = weights.items() if isinstance(weights, dict) else weights
    layers, zeros, total = {}, 0, 0
    for name, w in items:
        z = int((w == 0).sum())
        layers[name] = LayerRecord(w.numel(), z / w.numel() if w.numel() else 0.0)
        zeros += z
        total += w.numel()
    return layers, (zeros / total if total else 0.0)
