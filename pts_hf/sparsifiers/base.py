"""``PTSSparsifier``: a ``torch.ao.pruning.BaseSparsifier`` that keeps its contract and fixes its traps.

Lifecycle (as torch.ao): ``prepare(model, config=None)`` → training / calibration with ``step()`` → ``squash_mask()``.
What differs from torch.ao's base:

* ``config=None`` discovers Linear / Conv / HF Conv1D weights (see :mod:`pts_hf.targets`), not only ``nn.Linear``.
* A global target ``sparsity`` is spread over the groups by an allocation into per-tensor ``sparsity_level``
  (which torch.ao schedulers such as ``LambdaSL`` scale); ``step()`` rounds the levels so the global count of
  zeros is exact.
* ``prepare`` twice replaces the masks instead of stacking them.
* ``state_dict()`` carries masks and learned parameters (thresholds); ``load_state_dict`` restores them.
* ``squash_mask()`` leaves a :class:`~pts_hf.record.RunRecord` of the squashed layers on the model
  (``model.pts_sparsity_record``), so a later ``save_sparse`` describes what was sparsified.

The method's options are ``sparsifier.method_config`` (a :class:`~pts_hf.config.SparsityConfig`); torch.ao's own
``sparsifier.config`` stays what torch.ao makes it, the list of ``{"tensor_fqn": ...}`` entries. Two protocols
build on this class: :class:`~pts_hf.sparsifiers.distilling.DistillingSparsifier` (trained against a dense
teacher by :mod:`pts_hf.distillation`) and :class:`~pts_hf.sparsifiers.layerwise.LayerwiseSparsifier` (one-shot,
block by block); one-shot methods such as magnitude derive from this class directly.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn
from torch.ao.pruning import BaseSparsifier
from torch.nn.utils import parametrize

from pts_hf.config import SparsityConfig
from pts_hf.layers import GemmLayout, gemm_layout
from pts_hf.ops.allocation import NEEDS_ACTIVATIONS, allocate, exact_counts, round_zeros
from pts_hf.ops.nm import nm_mask
from pts_hf.parametrize import PTSParametrization
from pts_hf.record import MethodOutcome, RunRecord
from pts_hf.targets import Target, discover_targets
from pts_hf.version import CONFIG_VERSION

__all__ = ["PTSSparsifier", "check_finite_weights"]


def check_finite_weights(targets: Sequence[Target]) -> None:
    for t in targets:
        w = t.weight
        if not torch.isfinite(w).all():
            raise ValueError(
                f"weight {t.tensor_fqn} contains NaN or Inf; fix or exclude it (ignore=[{t.module_name!r}])"
            )


def _resolve_tensor(model: nn.Module, tensor_fqn: str) -> Target:
    module_name, _, tensor_name = tensor_fqn.rpartition(".")
    try:
        module = model.get_submodule(module_name) if module_name else model
    except AttributeError as e:
        raise ValueError(f"config names {tensor_fqn!r}, but the model has no module {module_name!r}") from e
    t = Target(module_name, module, tensor_name)
    try:
        w = t.weight
    except AttributeError:
        w = None
    if not isinstance(w, torch.Tensor):
        raise ValueError(f"config names {tensor_fqn!r}, but {module_name or 'the model'} has no tensor {tensor_name!r}")
    return t


class PTSSparsifier(BaseSparsifier):
    """Base of every pts_hf sparsifier.

    Subclasses set ``method`` and ``config_class``, implement :meth:`make_parametrization` and
    :meth:`update_mask`, and may override :meth:`requires_data` and :meth:`calibrate` (the one-call API's
    data-driven phase).
    """

    method: ClassVar[str] = ""
    config_class: ClassVar[type[SparsityConfig]] = SparsityConfig

    def __init__(self, config: SparsityConfig | None = None, **options: Any):
        if config is None:
            config = self.config_class.from_options(**options)
        elif options:
            raise TypeError("pass either a config object or keyword options, not both")
        elif not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(config).__name__}")
        self.method_config: SparsityConfig = config
        super().__init__(defaults={"sparsity_level": config.sparsity})
        self.model: nn.Module | None = None
        self.run_checkpoint: Any = None  # a pts_hf.resume.RunCheckpoint when the run saves / resumes its state
        self._squashed = False
        self.final_layer_sparsity: dict[str, float] = {}
        self.show_progress: bool = True  # a UI setting, not a method option: pts_hf.sparsify(progress=...) sets it
        # Per-tensor activation-aware weight scores (|W|·‖X‖) for allocations that need activations (OWL); set by
        # pts_hf.sparsify from a calibration pass, or by the user before prepare().
        self.activation_scores: dict[str, torch.Tensor] | None = None

    @property
    def options(self) -> SparsityConfig:
        """Deprecated name of :attr:`method_config`."""
        warnings.warn("sparsifier.options is deprecated; use sparsifier.method_config (torch.ao's "
                      "sparsifier.config is the tensor list)", DeprecationWarning, stacklevel=2)
        return self.method_config

    # --- preparation ------------------------------------------------------------------------------------------
    def make_parametrization(self, group: dict[str, Any], weight: torch.Tensor) -> PTSParametrization:
        raise NotImplementedError

    def _targets_from_config(self, model: nn.Module, config: list[Any] | None) -> list[tuple[Target, dict]]:
        if config is None:
            targets = discover_targets(model, self.method_config.targets, self.method_config.ignore)
            return [(t, {}) for t in targets]
        if not isinstance(config, (list, tuple)) or not config:
            raise ValueError("config must be a non-empty list of {'tensor_fqn': ...} dicts (or None to discover)")
        out = []
        for entry in config:
            entry = {"tensor_fqn": entry} if isinstance(entry, str) else dict(entry)
            if "tensor_fqn" not in entry:
                raise ValueError(f"config entry {entry!r} has no 'tensor_fqn'")
            out.append((_resolve_tensor(model, entry.pop("tensor_fqn")), entry))
        return out

    def prepare(self, model: nn.Module, config: list[Any] | None = None) -> None:
        """Attach mask parametrizations to the targeted weights (in place). Calling it again, on the same or
        another model, first removes this sparsifier's masks and restores the dense weights."""
        if self.model is not None and not self._squashed:
            self.remove()
        self.groups, self.state = [], type(self.state)()
        self._squashed = False
        self._param_order: dict[int, list[str]] = {}
        pairs = self._targets_from_config(model, config)
        targets = [t for t, _ in pairs]
        check_finite_weights(targets)
        for t in targets:
            self._drop_existing(t)
        self._before_parametrize(model)  # the model is dense again here, just before the masks go on
        levels = self._allocate(targets, [extra.get("sparsity_level") for _, extra in pairs])
        self.model = model
        self.config = [{"tensor_fqn": t.tensor_fqn, **extra} for t, extra in pairs]
        gen = torch.Generator().manual_seed(self.method_config.seed)
        for (t, extra), level in zip(pairs, levels):
            group = {**self.defaults, **extra, "tensor_fqn": t.tensor_fqn, "module": t.module,
                     "module_fqn": t.module_name, "tensor_name": t.tensor_name, "sparsity_level": float(level),
                     "numel": t.numel}
            group["generator"] = gen
            self._param_order[id(t.module)] = list(t.module._parameters)
            p = self.make_parametrization(group, t.weight)
            del group["generator"]
            parametrize.register_parametrization(t.module, t.tensor_name, p)
            self.groups.append(group)

    def _before_parametrize(self, model: nn.Module) -> None:
        """Hook: reset per-run state before the masks go on."""

    @staticmethod
    def _drop_existing(t: Target) -> None:
        if not parametrize.is_parametrized(t.module, t.tensor_name):
            return
        plist = t.module.parametrizations[t.tensor_name]
        if not all(isinstance(p, PTSParametrization) for p in plist):
            raise ValueError(
                f"{t.tensor_fqn} already carries a parametrization that is not pts_hf's "
                f"({[type(p).__name__ for p in plist]}); remove it before preparing"
            )
        parametrize.remove_parametrizations(t.module, t.tensor_name, leave_parametrized=False)

    def _allocate(self, targets: list[Target], explicit: list[float | None]) -> list[float]:
        free = [i for i, lv in enumerate(explicit) if lv is None]
        levels = [float(lv) if lv is not None else 0.0 for lv in explicit]
        for i, lv in enumerate(explicit):
            if lv is not None and not 0.0 <= float(lv) <= 1.0:
                raise ValueError(f"sparsity_level {lv!r} for {targets[i].tensor_fqn} is outside [0, 1]")
        if not free:
            return levels
        if self.method_config.nm is not None:
            return self._allocate_nm(targets, levels, free)
        numels = [t.numel for t in targets]
        fixed_zeros = sum(levels[i] * numels[i] for i in range(len(targets)) if i not in free)
        free_n = sum(numels[i] for i in free)
        rest = (self.method_config.sparsity * sum(numels) - fixed_zeros) / free_n
        if not 0.0 <= rest < 1.0:
            raise ValueError(
                f"global sparsity {self.method_config.sparsity} cannot be reached: the layers without an explicit "
                f"sparsity_level would need {rest:.4f}"
            )
        options = self.method_config.allocation_options()
        if self.method_config.allocation in NEEDS_ACTIVATIONS:
            options["activation_scores"] = self._activation_scores_for([targets[i] for i in free])
        sub = allocate(self.method_config.allocation, [targets[i].weight for i in free], rest, **options)
        for i, s in zip(free, sub):
            levels[i] = s
        return levels

    def _allocate_nm(self, targets: list[Target], levels: list[float], free: list[int]) -> list[float]:
        n, m = self.method_config.nm
        dense = []
        for i in free:
            layout = gemm_layout(targets[i].module, targets[i].weight)
            if layout.columns % m:
                dense.append(f"{targets[i].tensor_fqn} ({layout.columns} inputs)")
            else:
                levels[i] = (m - n) / m
        if dense:
            warnings.warn(f"{n}:{m} masks need an input dimension that is a multiple of {m}; left dense: "
                          f"{', '.join(dense)}", stacklevel=3)
        return levels

    def _activation_scores_for(self, targets: list[Target]) -> list[torch.Tensor]:
        scores = self.activation_scores or {}
        missing = [t.tensor_fqn for t in targets if t.tensor_fqn not in scores]
        if missing:
            raise ValueError(
                f"allocation {self.method_config.allocation!r} needs activation statistics, missing for {missing[:3]}: "
                "use pts_hf.sparsify(model, data, ...) or set sparsifier.activation_scores = "
                "pts_hf.pipeline.activation_scores(model, targets, data) before prepare()"
            )
        return [scores[t.tensor_fqn] for t in targets]

    # --- helpers ----------------------------------------------------------------------------------------------
    def _require_prepared(self) -> None:
        if self.model is None:
            raise RuntimeError(f"{type(self).__name__} is not prepared: call prepare(model) first")
        if self._squashed:
            raise RuntimeError(f"{type(self).__name__}: masks were already squashed; call prepare() again")

    @staticmethod
    def parametrization_of(group: dict[str, Any]) -> PTSParametrization:
        for p in group["module"].parametrizations[group["tensor_name"]]:
            if isinstance(p, PTSParametrization):
                return p
        raise RuntimeError(f"{group['tensor_fqn']} has lost its pts_hf parametrization")

    @staticmethod
    def original_of(group: dict[str, Any]) -> torch.Tensor:
        return group["module"].parametrizations[group["tensor_name"]].original

    def group_targets(self) -> list[Target]:
        """The prepared groups as :class:`~pts_hf.targets.Target` s, in order."""
        return [Target(g["module_fqn"], g["module"], g["tensor_name"]) for g in self.groups]

    def layout_of(self, group: dict[str, Any]) -> GemmLayout:
        """The GEMM view ``[groups, rows, columns]`` of a group's weight (N:M groups run along the columns)."""
        return gemm_layout(group["module"], self.original_of(group))

    @torch.no_grad()
    def nm_magnitude_mask(self, group: dict[str, Any]) -> torch.Tensor:
        """Keep mask with the N:M pattern chosen by |W| (all ones for a layer left dense)."""
        w = self.original_of(group)
        nm = self.nm_for(group)
        if nm is None:
            return torch.ones_like(w, dtype=torch.bool)
        layout = self.layout_of(group)
        return layout.from_gemm(nm_mask(layout.to_gemm(w.detach().abs()), *nm))

    def nm_for(self, group: dict[str, Any]) -> tuple[int, int] | None:
        """(N, M) when this group gets an N:M mask (structure set and the layer is eligible), else None."""
        nm = self.method_config.nm
        if nm is None or group["sparsity_level"] == 0.0 or self.layout_of(group).columns % nm[1]:
            return None
        return nm

    def target_sparsity(self) -> float:
        """Σ sparsity_level·N / Σ N over the groups (follows schedulers that rescale the levels)."""
        n = sum(g["numel"] for g in self.groups)
        return sum(g["sparsity_level"] * g["numel"] for g in self.groups) / n if n else 0.0

    def exact_zero_counts(self) -> list[int]:
        levels = [min(max(g["sparsity_level"], 0.0), 1.0) for g in self.groups]
        numels = [g["numel"] for g in self.groups]
        return exact_counts(levels, numels, round_zeros(sum(lv * n for lv, n in zip(levels, numels))))

    @torch.no_grad()
    def layer_sparsity(self) -> dict[str, float]:
        """Current fraction of zeros per targeted tensor (from masks while prepared)."""
        if self._squashed:
            return dict(self.final_layer_sparsity)
        self._require_prepared()
        out = {}
        for g in self.groups:
            mask = self.parametrization_of(g).current_mask(self.original_of(g))
            out[g["tensor_fqn"]] = 1.0 - int(mask.sum()) / mask.numel()
        return out

    @torch.no_grad()
    def current_masks(self) -> dict[str, torch.Tensor]:
        """The keep mask of every prepared tensor, as it is now."""
        self._require_prepared()
        return {g["tensor_fqn"]: self.parametrization_of(g).current_mask(self.original_of(g)).detach().clone()
                for g in self.groups}

    def global_sparsity(self) -> float:
        ls = self.layer_sparsity()
        n = sum(g["numel"] for g in self.groups)
        return sum(ls[g["tensor_fqn"]] * g["numel"] for g in self.groups) / n if n else 0.0

    # --- torch.ao contract ------------------------------------------------------------------------------------
    def step(self) -> None:  # type: ignore[override]  # torch.ao's unused `use_path` dropped
        """Recompute masks; the global number of zeros is exactly round(Σ sparsity_level·N)."""
        self._require_prepared()
        if not self.enable_mask_update:
            return
        with torch.no_grad():
            for g, n_zero in zip(self.groups, self.exact_zero_counts()):
                self.update_mask(n_zero=n_zero, **g)

    def update_mask(self, module: nn.Module, tensor_name: str, **kwargs: Any) -> None:  # pragma: no cover
        raise NotImplementedError

    @torch.no_grad()
    def squash_mask(self, params_to_keep: tuple[str, ...] | None = None,
                    params_to_keep_per_layer: dict[str, tuple[str, ...]] | None = None,
                    *args: Any, **kwargs: Any) -> None:
        """Fold the masks into the weights (plain tensors with zeros) and remove the parametrizations."""
        self._require_prepared()
        self.final_layer_sparsity = self.layer_sparsity()
        super().squash_mask(params_to_keep, params_to_keep_per_layer, *args, **kwargs)
        self._restore_param_order()
        self._squashed = True
        if self.model is not None:
            from pts_hf.checkpoint.io import RECORD_ATTR

            setattr(self.model, RECORD_ATTR, self.run_record())

    def run_record(self, outcome: MethodOutcome | None = None, **kwargs: Any) -> RunRecord:
        """The groups' weights as they are now, with this method and config, and ``outcome``'s numbers."""
        if self._squashed:
            weights = {g["tensor_fqn"]: getattr(g["module"], g["tensor_name"]) for g in self.groups}
        else:
            masks = self.current_masks()
            weights = {g["tensor_fqn"]: self.original_of(g).detach() * masks[g["tensor_fqn"]] for g in self.groups}
        record = RunRecord.measure(weights, method=self.method, config=self.method_config,
                                   target_sparsity=self.method_config.sparsity, **kwargs)
        return record.with_outcome(outcome) if outcome is not None else record

    def _restore_param_order(self) -> None:
        """Removing a parametrization re-registers the weight last; put parameters back in their original order
        so state dicts (and saved files) list tensors as the dense model did."""
        for g in self.groups:
            module, order = g["module"], self._param_order.get(id(g["module"]))
            if order:
                params = module._parameters
                module._parameters = {**{k: params[k] for k in order if k in params},
                                      **{k: v for k, v in params.items() if k not in order}}

    @torch.no_grad()
    def remove(self) -> None:
        """Undo ``prepare``: drop the masks and restore the dense weights (like peft's ``unload``)."""
        self._require_prepared()
        for g in self.groups:
            if parametrize.is_parametrized(g["module"], g["tensor_name"]):
                parametrize.remove_parametrizations(g["module"], g["tensor_name"], leave_parametrized=False)
        self._restore_param_order()
        self.groups, self.state, self.model = [], type(self.state)(), None

    def state_dict(self) -> dict[str, Any]:
        """Groups (without module references), every tensor's masks and learned parameters, and the options."""
        self._require_prepared()
        groups = [{k: v for k, v in g.items() if k not in ("module", "module_fqn", "tensor_name")}
                  for g in self.groups]
        state = {g["tensor_fqn"]: self.parametrization_of(g).extra_state() for g in self.groups}
        return {"state": state, "groups": groups, "options": self.method_config.to_dict(), "method": self.method,
                "version": CONFIG_VERSION}

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> None:
        """Restore masks, learned parameters and sparsity levels into the prepared model."""
        self._require_prepared()
        if state_dict.get("method", self.method) != self.method:
            raise ValueError(f"state_dict is from method {state_dict.get('method')!r}, not {self.method!r}")
        by_fqn = {g["tensor_fqn"]: g for g in self.groups}
        missing = set(by_fqn) - set(state_dict["state"])
        unexpected = set(state_dict["state"]) - set(by_fqn)
        if strict and (missing or unexpected):
            raise RuntimeError(
                f"state_dict does not match the prepared model: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}"
            )
        for fqn, st in state_dict["state"].items():
            if fqn in by_fqn:
                try:
                    self.parametrization_of(by_fqn[fqn]).load_extra_state(st)
                except ValueError as e:
                    raise ValueError(f"{fqn}: {e}") from e
        for saved in state_dict.get("groups", []):
            g = by_fqn.get(saved.get("tensor_fqn"))
            if g is not None and "sparsity_level" in saved:
                g["sparsity_level"] = float(saved["sparsity_level"])

    # --- one-call API hook ------------------------------------------------------------------------------------
    def requires_data(self) -> bool:
        """Whether :meth:`calibrate` needs calibration data with these options."""
        return False

    def calibrate(self, model: nn.Module, data: Any, accelerator: Any = None) -> MethodOutcome:
        """The method's data-driven phase, between ``prepare`` and ``squash_mask``; returns the method's numbers
        for the run record. Default: one ``step()``."""
        self.step()
        return MethodOutcome()

    def __repr__(self) -> str:
        n = sum(g["numel"] for g in self.groups)
        target = f"{self.target_sparsity():.4f}" if self.groups else "-"
        return f"{type(self).__name__}(method={self.method!r}, tensors={len(self.groups)}, numel={n}, " \
               f"target={target}, squashed={self._squashed})"
