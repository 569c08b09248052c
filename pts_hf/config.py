"""Versioned, validated dataclass configs shared by every method.

Each method subclasses :class:`SparsityConfig` in its own file and adds its fields (each with help text in
``metadata["help"]``). Configs round-trip through JSON (``to_json`` → ``SparsityConfig.from_json``, which picks the
method's class from the ``"method"`` key and also reads a ``sparsity_config.json`` sidecar or a ``report.json``),
so a saved run replays with ``pts_hf.sparsify(model, data, config=...)``. ``version`` and ``pts_hf_version`` are
stamped by the library, not set by users. A config saved by a newer pts_hf loads with its unknown keys dropped
and a warning, as peft does.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pts_hf.version import CONFIG_VERSION, __version__

__all__ = ["DistillationConfig", "SparsityConfig", "check_count", "check_positive", "help_field"]


def check_count(config: Any, name: str, minimum: int = 1, optional: bool = False) -> None:
    """``config.<name>`` must be an integer ≥ ``minimum`` (or None when ``optional``); else a ValueError naming it."""
    v = getattr(config, name)
    if optional and v is None:
        return
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer ≥ {minimum}"
        raise ValueError(f"{name} must be {what}{' or None' if optional else ''}, got {v!r}")


def check_positive(config: Any, name: str) -> None:
    """``config.<name>`` must be a number > 0; else a ValueError naming it."""
    v = getattr(config, name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise ValueError(f"{name} must be > 0, got {v!r}")


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
        "erk", "Per-layer allocation (initial for learned methods): uniform, erk, lamp, l2norm, global, regrow "
        "(every layer at sparsity + regrow_delta, then the excess regrown in equal numbers per layer: UniPTS's "
        "reducing-regrowing scheme at its neutral point) or owl (outlier-weighted, from calibration activations)."
    )
    erk_power: float = help_field(1.0, "ERK power-scale: density ∝ (Σdims/Πdims)^power; 0 = uniform.")
    regrow_delta: float = help_field(0.05, "regrow allocation: every layer is first reduced to sparsity + δ.")
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
    bn_recalibration: bool = help_field(
        True, "Re-estimate BatchNorm running statistics on the calibration data at the end (models with BatchNorm; "
        "pruning shifts the activations their running statistics were measured on)."
    )
    seed: int = help_field(0, "Seed for every random choice (sampling, initialisation).")
    batch_size: int = help_field(64, "Batch size used when data is a tensor or a dataset of samples.")
    version: int = field(default=CONFIG_VERSION, init=False, metadata={"help": "Config format version (set by the "
                                                                               "library)."})

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
        if not 0.0 <= self.regrow_delta < 1.0:
            raise ValueError(f"regrow_delta must be in [0, 1), got {self.regrow_delta!r}")
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
        if self.allocation == "regrow":
            return {"delta": self.regrow_delta}
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
        """The options a user sets (``version`` is stamped by the library)."""
        return {f.name for f in dataclasses.fields(cls) if f.init}

    @classmethod
    def _class_for(cls, method: str | None) -> type[SparsityConfig]:
        """This class, or (called on the base class) the registered method's config class."""
        if cls.method:
            if method and method != cls.method:
                raise ValueError(f"config is for method {method!r}, not {cls.method!r}")
            return cls
        if not method:
            raise ValueError("config has no 'method': call the method's own config class (e.g. FCPTSConfig)")
        from pts_hf.sparsifiers import get_sparsifier_class

        return get_sparsifier_class(method).config_class

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> SparsityConfig:
        """A config from ``to_dict()`` output, a sidecar / report (its ``"config"``), with ``overrides`` (e.g. a
        ``loss_fn`` that cannot be saved)."""
        data = dict(data)
        if isinstance(data.get("config"), dict) and "layers" in data:  # a sparsity_config.json or report.json
            data = dict(data["config"])
        saved = "pts_hf_version" in data or "version" in data  # written by to_dict(), not typed by a user
        data.pop("pts_hf_version", None)
        target = cls._class_for(data.pop("method", None))
        if target is not cls:
            return target.from_dict(data, **overrides)
        version = data.pop("version", CONFIG_VERSION)
        if saved:  # a config saved before a field existed replays with what the library did then
            for name, then in PREDATING_DEFAULTS.items():
                if name in cls.field_names() and name not in data:
                    data[name] = then
        data.update(overrides)
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
        return cls(**data)

    @classmethod
    def from_json(cls, text: str, **overrides: Any) -> SparsityConfig:
        """From JSON text (``to_json()``, a ``sparsity_config.json`` or a ``report.json``) or a path to such a
        file; on the base class the method's config class is chosen from the ``"method"`` key."""
        stripped = text.lstrip() if isinstance(text, str) else text
        if not isinstance(stripped, str) or not stripped.startswith("{"):
            from pathlib import Path

            text = Path(text).read_text()
        return cls.from_dict(json.loads(text), **overrides)

    @classmethod
    def from_options(cls, **options: Any) -> SparsityConfig:
        """Build from keyword options, naming any that this method does not take. The keys ``to_dict`` stamps
        (``method``, ``version``, ``pts_hf_version``) are accepted and checked, so ``from_options(**to_dict())``
        round-trips."""
        options.pop("pts_hf_version", None)
        cls._class_for(options.pop("method", None))
        version = options.pop("version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            raise ValueError(f"config format version {version!r} is not this pts_hf's ({CONFIG_VERSION}); load it "
                             "with from_dict / from_json, which converts it")
        unknown = sorted(set(options) - cls.field_names())
        if unknown:
            raise TypeError(
                f"method {cls.method!r} got unknown option(s) {unknown}; valid options: {sorted(cls.field_names())}"
            )
        if isinstance(options.get("loss_fn"), str):
            options["loss_fn"] = resolve_callable(options["loss_fn"])
        return cls(**options)


# Fields added to format 1 whose default (in some method) is not what the library did before they existed; a
# saved config without them is replayed with the earlier behaviour (UniPTS's feature_weight is 3 now).
PREDATING_DEFAULTS: dict[str, Any] = {"feature_weight": 0.0}


def callable_path(fn: Callable[..., Any]) -> str:
    """``"module:qualname"`` of a function (what a saved ``loss_fn`` is). A lambda or local function is saved
    the same way but cannot be imported back: loading it then asks for ``loss_fn=``."""
    module = getattr(fn, "__module__", None) or "?"
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}:{qualname}"


def resolve_callable(path: str) -> Callable[..., Any]:
    """The function a ``"module:qualname"`` names (an error saying what to pass when it cannot be imported)."""
    module, _, qualname = path.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"saved loss_fn {path!r} cannot be imported ({e}); pass loss_fn=<the function> to "
                         "from_dict / from_json") from e
    if not callable(obj):
        raise ValueError(f"saved loss_fn {path!r} is not callable")
    return obj


_CHOICES = {
    "optimizer": ("sgd", "adamw"),
    "reconstruction": ("auto", "kl", "mse"),
    "teacher_mode": ("eval", "train"),
    "student_bn": ("train", "eval"),
    "mixed_precision": ("no", "fp16", "bf16"),
    "augment": (None, "flip", "crop", "flip_crop"),
    "feature_schedule": ("constant", "cosine"),
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
    max_grad_norm: float | None = help_field(None, "Clip the gradient norm of the weights (None = no clipping).")
    mixed_precision: str = help_field("no", "accelerate mixed precision: 'no', 'fp16' or 'bf16'.")
    gradient_accumulation_steps: int = help_field(1, "Batches per optimizer step (through accelerate).")
    augment: str | None = help_field(
        None, "Augment image calibration batches (teacher and student see the same view): 'flip' (horizontal), "
        "'crop' (random crop with 1/16-size reflection padding), 'flip_crop', or None."
    )
    feature_weight: float = help_field(
        0.0, "Weight of intermediate-feature distillation: the normalised MSE between the student's and the dense "
        "teacher's block outputs (feature_points), averaged over the points, added to the output loss (0 = off; "
        "models without blocks compare the output only). Off for FCPTS: at its 500 steps it cost the ViT 0.9 "
        "points at 90% (at 200 steps it gained 1.2 there and 0.9 on MobileNet; BENCHMARKS.md)."
    )
    feature_schedule: str = help_field(
        "constant", "How feature_weight moves over the run: 'constant', or 'cosine' (from feature_weight down to 0 "
        "at the last step, like the learning rate: block outputs pull hard early, the output loss alone decides "
        "the end)."
    )
    feature_points: str | list[str] = help_field(
        "blocks", "Modules whose outputs feature distillation compares: 'blocks' (found from the model's structure: "
        "transformer layers, timm blocks, the children of CNN stages) or a list of module names."
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
        if not isinstance(self.feature_weight, (int, float)) or not self.feature_weight >= 0:
            raise ValueError(f"feature_weight must be a number ≥ 0, got {self.feature_weight!r}")
        points = self.feature_points
        if not (points == "blocks" or (isinstance(points, (list, tuple)) and points
                                       and all(isinstance(n, str) and n for n in points))):
            raise ValueError(f"feature_points must be 'blocks' or a non-empty list of module names, got {points!r}")
        if self.cache_teacher not in (True, False, "auto"):
            raise ValueError(f"cache_teacher must be True, False or 'auto', got {self.cache_teacher!r}")
        if self.loss_fn is not None and not callable(self.loss_fn):
            raise TypeError("loss_fn must be callable")

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["loss_fn"] = None if self.loss_fn is None else callable_path(self.loss_fn)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> SparsityConfig:
        data = dict(data)
        if cls.method and "loss_fn" not in overrides and isinstance(data.get("loss_fn"), str):
            data["loss_fn"] = resolve_callable(data["loss_fn"])  # saved as "module:qualname"
        return super().from_dict(data, **overrides)
