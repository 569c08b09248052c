"""Versioned, validated dataclass configs shared by every method.

Each method subclasses :class:`SparsityConfig` in its own file and adds its fields (each with help text in
``metadata["help"]``). Configs round-trip through JSON; a config saved by a newer pts_hf loads with its unknown
keys dropped and a warning, as peft does.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pts_hf.version import CONFIG_VERSION, __version__

__all__ = ["SparsityConfig", "help_field"]


def help_field(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with help text (shown by ``pts-hf --help`` and the docs)."""
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class SparsityConfig:
    """Options every method shares."""

    method: ClassVar[str] = ""

    sparsity: float = help_field(0.5, "Global target: zeros ÷ elements over all targeted weights, in [0, 1).")
    allocation: str = help_field(
        "erk", "Per-layer allocation (initial for learned methods): uniform, erk, lamp, l2norm or global."
    )
    erk_power: float = help_field(1.0, "ERK power-scale: density ∝ (Σdims/Πdims)^power; 0 = uniform.")
    targets: list[str] | None = help_field(
        None, "Layers to sparsify: class names, module names or 're:<regex>'; None = every Linear/Conv/Conv1D "
        "except the model's embeddings."
    )
    ignore: list[str] | None = help_field(None, "Patterns removed from the targets (same grammar).")
    seed: int = help_field(0, "Seed for every random choice (sampling, initialisation).")
    batch_size: int = help_field(64, "Batch size used when data is a tensor or a dataset of samples.")
    version: int = help_field(CONFIG_VERSION, "Config format version (set by the library).")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        from pts_hf.ops.allocation import ALLOCATIONS

        s = self.sparsity
        if not isinstance(s, (int, float)) or isinstance(s, bool) or math.isnan(float(s)) or not 0.0 <= s < 1.0:
            raise ValueError(f"sparsity must be a number in [0, 1), got {s!r}")
        self.sparsity = float(s)
        if not isinstance(self.allocation, str) or self.allocation.lower() not in ALLOCATIONS:
            raise ValueError(f"unknown allocation {self.allocation!r}; choose one of {sorted(ALLOCATIONS)}")
        self.allocation = self.allocation.lower()
        if not self.erk_power >= 0:
            raise ValueError(f"erk_power must be ≥ 0, got {self.erk_power!r}")
        for name in ("targets", "ignore"):
            v = getattr(self, name)
            if isinstance(v, str):
                setattr(self, name, [v])
            elif v is not None:
                setattr(self, name, list(v))
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")

    def allocation_options(self) -> dict[str, Any]:
        return {"power": self.erk_power} if self.allocation == "erk" else {}

    # --- serialisation -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["method"] = self.method
        d["pts_hf_version"] = __version__
        return d

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SparsityConfig:
        data = dict(data)
        data.pop("pts_hf_version", None)
        method = data.pop("method", cls.method)
        if cls.method and method and method != cls.method:
            raise ValueError(f"config is for method {method!r}, not {cls.method!r}")
        version = data.get("version", CONFIG_VERSION)
        unknown = sorted(set(data) - cls.field_names())
        if unknown:
            newer = isinstance(version, int) and version > CONFIG_VERSION
            warnings.warn(
                f"{cls.__name__}: ignoring unknown keys {unknown}"
                + (f" (saved by a newer format version {version} > {CONFIG_VERSION})" if newer else ""),
                stacklevel=2,
            )
            for k in unknown:
                data.pop(k)
        data["version"] = CONFIG_VERSION
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> SparsityConfig:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_options(cls, **options: Any) -> SparsityConfig:
        """Build from keyword options, naming any that this method does not take."""
        unknown = sorted(set(options) - cls.field_names())
        if unknown:
            raise TypeError(
                f"method {cls.method!r} got unknown option(s) {unknown}; valid options: "
                f"{sorted(cls.field_names() - {'version'})}"
            )
        return cls(**options)
