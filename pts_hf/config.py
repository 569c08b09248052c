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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pts_hf.version import CONFIG_VERSION, __version__

__all__ = ["DistillationConfig", "SparsityConfig", "help_field"]


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
        "erk", "Per-layer allocation (initial for learned methods): uniform, erk, lamp, l2norm, global or owl "
        "(outlier-weighted, from calibration activations)."
    )
    erk_power: float = help_field(1.0, "ERK power-scale: density ∝ (Σdims/Πdims)^power; 0 = uniform.")
    owl_lambda: float = help_field(0.08, "OWL: per-layer sparsities span ±λ around the target.")
    owl_m: float = help_field(5.0, "OWL: a weight is an outlier when its |W|·‖X‖ score exceeds M× the layer mean.")
    mask_structure: str = help_field(
        "unstructured", "'unstructured', or 'N:M' (e.g. '2:4'): at most N non-zeros in every M consecutive weights "
        "along the layer's GEMM input dimension; then `sparsity` is (M−N)/M and layers whose input dimension is "
        "not a multiple of M stay dense (with a warning)."
    )
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
        if not self.owl_lambda >= 0 or not self.owl_m > 0:
            raise ValueError(f"owl_lambda must be ≥ 0 and owl_m > 0, got {self.owl_lambda!r}, {self.owl_m!r}")
        self._validate_structure()
        for name in ("targets", "ignore"):
            v = getattr(self, name)
            if isinstance(v, str):
                setattr(self, name, [v])
            elif v is not None:
                setattr(self, name, list(v))
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")

    def _validate_structure(self) -> None:
        from pts_hf.ops.nm import nm_sparsity, parse_structure

        nm = parse_structure(self.mask_structure)
        if nm is None:
            self.mask_structure = "unstructured"
            return
        self.mask_structure = f"{nm[0]}:{nm[1]}"
        ratio = nm_sparsity(*nm)
        default_sparsity = type(self).__dataclass_fields__["sparsity"].default
        if abs(self.sparsity - ratio) > 1e-12 and self.sparsity != default_sparsity:
            raise ValueError(f"mask_structure {self.mask_structure!r} prunes {ratio:.4g} of every layer; "
                             f"sparsity={self.sparsity} contradicts it (leave sparsity out or pass {ratio:.4g})")
        self.sparsity = ratio
        default_alloc = type(self).__dataclass_fields__["allocation"].default
        if self.allocation not in ("uniform", default_alloc):
            raise ValueError(f"allocation {self.allocation!r} does not apply to N:M masks (every layer is "
                             f"{ratio:.4g} sparse); leave allocation out or pass 'uniform'")
        self.allocation = "uniform"

    @property
    def nm(self) -> tuple[int, int] | None:
        """(N, M) for an N:M mask structure, None when unstructured."""
        from pts_hf.ops.nm import parse_structure

        return parse_structure(self.mask_structure)

    def allocation_options(self) -> dict[str, Any]:
        if self.allocation == "erk":
            return {"power": self.erk_power}
        if self.allocation == "owl":
            return {"lam": self.owl_lambda, "m": self.owl_m}
        return {}

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


_CHOICES = {
    "optimizer": ("sgd", "adamw"),
    "reconstruction": ("auto", "kl", "mse"),
    "teacher_mode": ("eval", "train"),
    "student_bn": ("train", "eval"),
    "mixed_precision": ("no", "fp16", "bf16"),
    "augment": (None, "flip", "crop", "flip_crop"),
}


@dataclass
class DistillationConfig(SparsityConfig):
    """Options of the calibration loop shared by the learned methods (student vs frozen dense teacher)."""

    steps: int = help_field(500, "Optimisation steps (batches) of the calibration loop.")
    lr: float = help_field(0.01, "Learning rate for the model's weights (and BatchNorm / LayerNorm parameters).")
    optimizer: str = help_field("sgd", "Optimizer for the weights: 'sgd' (momentum 0.9) or 'adamw'.")
    weight_decay: float = help_field(0.0, "Weight decay on the weights.")
    warmup_steps: int = help_field(0, "Linear learning-rate warm-up steps before the cosine decay.")
    train_weights: bool = help_field(True, "Fine-tune the weights too (False: only the method's own parameters).")
    temperature: float = help_field(4.0, "Distillation temperature for the KL on logits.")
    reconstruction: str = help_field(
        "auto", "'kl' on logits, 'mse' on features, or 'auto' (KL for logits, MSE for hidden states)."
    )
    loss_fn: Callable[[Any, Any], Any] | None = help_field(
        None, "Optional loss_fn(student_output, teacher_output) replacing the reconstruction loss (not saved)."
    )
    teacher_mode: str = help_field("eval", "Dense teacher in 'eval' mode, or 'train' (BatchNorm batch statistics, "
                                   "as the released FCPTS/UniPTS code).")
    student_bn: str = help_field("train", "Student BatchNorm during the loop: 'train' (batch statistics) or 'eval'.")
    bn_recalibration: bool = help_field(True, "Re-estimate BatchNorm statistics on the calibration data at the end.")
    max_grad_norm: float | None = help_field(None, "Clip the gradient norm of the weights (None = no clipping).")
    mixed_precision: str = help_field("no", "accelerate mixed precision: 'no', 'fp16' or 'bf16'.")
    gradient_accumulation_steps: int = help_field(1, "Batches per optimizer step (through accelerate).")
    augment: str | None = help_field(
        None, "Augment image calibration batches (teacher and student see the same view): 'flip' (horizontal), "
        "'crop' (random crop with 1/16-size reflection padding), 'flip_crop', or None."
    )
    cache_teacher: bool | str = help_field(
        "auto", "Keep the dense teacher's outputs per calibration batch instead of recomputing them every pass: "
        "True, False, or 'auto' (on when the batches repeat unchanged: no augmentation, teacher in eval mode, one "
        "process, data given as tensors or an unshuffled dataset; up to 512 MiB of outputs)."
    )

    def validate(self) -> None:
        super().validate()
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        for name in ("steps", "gradient_accumulation_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be a non-negative integer, got {self.warmup_steps!r}")
        if not self.lr >= 0 or not self.weight_decay >= 0:
            raise ValueError("lr and weight_decay must be ≥ 0")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if self.cache_teacher not in (True, False, "auto"):
            raise ValueError(f"cache_teacher must be True, False or 'auto', got {self.cache_teacher!r}")
        if self.loss_fn is not None and not callable(self.loss_fn):
            raise TypeError("loss_fn must be callable")

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["loss_fn"] = None if self.loss_fn is None else getattr(self.loss_fn, "__qualname__", repr(self.loss_fn))
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SparsityConfig:
        data = dict(data)
        if not callable(data.get("loss_fn")):
            data["loss_fn"] = None  # a saved loss_fn is only its name
        return super().from_dict(data)
