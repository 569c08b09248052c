"""FCPTS: learnable per-layer magnitude thresholds with a KDE bridge, a control loss and KL reconstruction.

Paper vs released code, and what we do (switches in :class:`FCPTSConfig`):

* thresholds live in per-layer normalised units |W| / RMS(W) (code: sigmoid of a score in raw units, < 1),
  clamped below the layer's largest magnitude so no layer can be pruned away with zero gradient;
* dr/dt from a Gaussian KDE (paper; ``bandwidth=0.5, kde_samples=100`` is the paper's setting) rather than the
  code's 100-bin histogram; default: Silverman's bandwidth on 2048 samples;
* ``threshold_grad="ste"``: the reconstruction loss also moves the thresholds through a sigmoid straight-through
  mask (paper eq. 14); ``"control"``: only the control loss does (released code, mask under ``no_grad``);
* after the loop the masks are projected onto the exact target by a global ranking of normalised margins
  |W|/scale − t (neither paper nor code enforce it; ``exact=False`` keeps the learned masks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from pts_hf.config import DistillationConfig, help_field
from pts_hf.losses import control_loss, reconstruction_loss
from pts_hf.ops.allocation import exact_counts, exact_projection
from pts_hf.ops.kde import resolve_bandwidth
from pts_hf.ops.masks import topk_mask
from pts_hf.parametrize import DynamicMask, PTSParametrization, ThresholdMask
from pts_hf.record import MethodOutcome
from pts_hf.sparsifiers.base import PTSSparsifier
from pts_hf.sparsifiers.distilling import DistillingSparsifier

__all__ = ["FCPTSConfig", "FCPTSSparsifier"]

NM_SRSTE_DECAY = 5e-5  # SR-STE decay on pruned weights under N:M masks (UniPTS's released value)


@dataclass
class FCPTSConfig(DistillationConfig):
    method: ClassVar[str] = "fcpts"

    threshold_lr: float = help_field(0.01, "Adam learning rate of the thresholds (normalised units).")
    control_weight: float = help_field(1.0, "λ: weight of the control loss |Σ r_i N_i / Σ N_i − r0|.")
    threshold_grad: str = help_field(
        "ste", "'ste': reconstruction loss moves thresholds too (paper); 'control': only the control loss (code)."
    )
    ste_width: float = help_field(0.1, "Width of the straight-through sigmoid mask, in normalised units.")
    kde_samples: int = help_field(2048, "Weights per layer the KDE of the bridge uses (paper: 100).")
    bandwidth: float | str = help_field("silverman", "KDE bandwidth: a float (paper: 0.5) or 'silverman'/'scott'.")
    exact: bool = help_field(True, "Project the learned masks onto the exact global target at the end.")
    fixed_mask_tail: float = help_field(
        0.0, "Fraction of the steps run after an early exact projection, with the masks fixed, so the weights "
        "adapt to the final masks (0 = project after the loop)."
    )
    dense_grad: bool = help_field(
        False, "SR-STE inside FCPTS: pruned weights get the dense (straight-through) gradient plus the decay "
        "srste_decay·w, so they can grow back above the threshold (fixed masks after a projection stay fixed)."
    )
    srste_decay: float = help_field(5e-5, "SR-STE decay λ on pruned weights when dense_grad is on.")
    projection: str = help_field(
        "margin", "How the end projection closes the gap to the target: 'margin' (one global ranking of "
        "|W|/scale − t) or 'proportional' (every layer keeps the same fraction of its learned density)."
    )

    def validate(self) -> None:
        super().validate()
        if self.threshold_grad not in ("ste", "control"):
            raise ValueError(f"threshold_grad must be 'ste' or 'control', got {self.threshold_grad!r}")
        if not self.threshold_lr >= 0 or not self.control_weight >= 0:
            raise ValueError("threshold_lr and control_weight must be ≥ 0")
        if not self.ste_width > 0:
            raise ValueError(f"ste_width must be > 0, got {self.ste_width!r}")
        if not 0.0 <= self.fixed_mask_tail < 1.0:
            raise ValueError(f"fixed_mask_tail must be in [0, 1), got {self.fixed_mask_tail!r}")
        if not self.srste_decay >= 0:
            raise ValueError(f"srste_decay must be ≥ 0, got {self.srste_decay!r}")
        if self.projection not in ("margin", "proportional"):
            raise ValueError(f"projection must be 'margin' or 'proportional', got {self.projection!r}")
        if not isinstance(self.kde_samples, int) or self.kde_samples < 2:
            raise ValueError(f"kde_samples must be an integer ≥ 2, got {self.kde_samples!r}")
        if not self.exact and (self.fixed_mask_tail > 0 or self.projection != "margin"):
            raise ValueError("fixed_mask_tail and projection shape the exact projection, which exact=False turns "
                             "off; leave them at their defaults (0 and 'margin') or set exact=True")
        resolve_bandwidth(self.bandwidth, torch.linspace(-1.0, 1.0, 8))  # checks the rule; no global RNG


def _threshold_for(weight: torch.Tensor, scale: torch.Tensor, sparsity: float) -> float:
    """Normalised threshold pruning ≈ ``sparsity`` of ``weight``: midway between the k-th and (k+1)-th |z|."""
    z, _ = torch.sort((weight.detach().float() / scale.float()).abs().reshape(-1))
    k = round(sparsity * z.numel())
    if k <= 0:
        return float(z[0]) * 0.5
    if k >= z.numel():
        return float(z[-1]) * (1.0 - 1e-6)
    return float(z[k - 1] + z[k]) * 0.5


class FCPTSSparsifier(DistillingSparsifier):
    """FCPTS as a torch.ao-style sparsifier.

    In a user's own loop::

        teacher = copy.deepcopy(model).eval()   # the frozen dense model (yours to keep)
        sp = FCPTSSparsifier(sparsity=0.9)
        sp.prepare(model)                       # thresholds initialised from the allocation (ERK default)
        opt = torch.optim.SGD([*weights], ...); topt = torch.optim.Adam(sp.extra_param_groups())
        for x in data:
            with torch.no_grad():
                t = teacher(x)
            loss, logs = sp.compute_loss(model(x), t)
            loss.backward(); opt.step(); topt.step(); opt.zero_grad(); topt.zero_grad()
            sp.step()                           # keeps thresholds in their valid range
        sp.squash_mask()                        # exact projection onto the target, then plain sparse weights
    """

    method: ClassVar[str] = "fcpts"
    config_class: ClassVar[type[FCPTSConfig]] = FCPTSConfig
    resume_attrs: ClassVar[tuple[str, ...]] = ("_step_count", "projected", "learned_before_projection")

    def __init__(self, config: FCPTSConfig | None = None, **options: Any):
        super().__init__(config, **options)
        self.initial_layer_sparsity: dict[str, float] = {}
        self.projected = False
        self.learned_before_projection: dict[str, float] = {}
        self._step_count = 0

    # --- preparation ------------------------------------------------------------------------------------------
    def _before_parametrize(self, model: nn.Module) -> None:
        super()._before_parametrize(model)
        self.projected = False
        self._step_count = 0

    def make_parametrization(self, group: dict[str, Any], weight: torch.Tensor) -> PTSParametrization:
        o = self.method_config
        self.initial_layer_sparsity[group["tensor_fqn"]] = group["sparsity_level"]
        if o.nm is not None:  # N:M: weights train under |W|-chosen N:M masks recomputed each step (SR-STE)
            return DynamicMask(torch.ones_like(weight, dtype=torch.bool), NM_SRSTE_DECAY)
        p = ThresholdMask(weight, 0.0, ste=o.threshold_grad == "ste", ste_width=o.ste_width,
                          kde_samples=o.kde_samples, bandwidth=o.bandwidth, generator=group["generator"],
                          srste_decay=o.srste_decay if o.dense_grad else None)
        p.set_value(_threshold_for(weight, p.scale, group["sparsity_level"]))
        return p

    def extra_param_groups(self) -> list[dict[str, Any]]:
        """The thresholds, as an optimizer parameter group (Adam, no weight decay)."""
        self._require_prepared()
        if self.method_config.nm is not None:
            return []
        params = [self.parametrization_of(g).theta for g in self.groups]
        return [{"params": params, "lr": self.method_config.threshold_lr, "weight_decay": 0.0}]

    def scale_extra_lr(self, base_lr: float) -> None:
        """Thresholds trained by an optimizer shared with the weights at ``base_lr`` move at ``threshold_lr``
        (Adam-type optimizers) through the parametrization's gain."""
        if base_lr <= 0 or self.method_config.nm is not None:
            return
        for g in self.groups:
            self.parametrization_of(g).set_gain(self.method_config.threshold_lr / base_lr)

    # --- losses -----------------------------------------------------------------------------------------------
    def layer_sparsity_tensors(self) -> list[torch.Tensor]:
        """Differentiable r_l(t_l) per group (exact forward, KDE backward)."""
        return [self.parametrization_of(g).sparsity(self.original_of(g)) for g in self.groups]

    def control_loss(self) -> tuple[torch.Tensor, float]:
        """λ·|Σ r N / Σ N − r0| and the current global sparsity r."""
        rs = self.layer_sparsity_tensors()
        numels = [g["numel"] for g in self.groups]
        loss = control_loss(rs, numels, self.target_sparsity())
        total = sum(numels)
        current = sum(float(r.detach()) * n for r, n in zip(rs, numels)) / total
        return self.method_config.control_weight * loss, current

    def reconstruction_loss(self, student_output: Any, teacher_output: Any) -> torch.Tensor:
        o = self.method_config
        return reconstruction_loss(student_output, teacher_output, kind=o.reconstruction, temperature=o.temperature,
                                   loss_fn=o.loss_fn)

    def compute_loss(self, student_output: Any, teacher_output: Any, epoch: float = 0.0
                     ) -> tuple[torch.Tensor, dict[str, float]]:
        """Reconstruction + control loss, and what to log."""
        rec = self.reconstruction_loss(student_output, teacher_output)
        if self.method_config.nm is not None:  # the N:M pattern fixes the sparsity: no control loss
            return rec, {"rec": float(rec.detach()), "sparsity": self.target_sparsity()}
        ctrl, current = self.control_loss()
        return rec + ctrl.to(rec.device), {"rec": float(rec.detach()), "control": float(ctrl.detach()),
                                           "sparsity": current}

    # --- torch.ao contract ------------------------------------------------------------------------------------
    def step(self) -> None:
        """Clamp thresholds; with ``fixed_mask_tail`` > 0, project onto the exact target once the tail starts."""
        super().step()
        self._step_count += 1
        o = self.method_config
        if o.exact and o.fixed_mask_tail > 0 and not self.projected and \
                self._step_count >= round((1.0 - o.fixed_mask_tail) * o.steps):
            self.project()

    def update_mask(self, module: nn.Module, tensor_name: str, **kwargs: Any) -> None:
        """Keep the threshold inside [0, largest normalised magnitude); N:M: recompute the N:M mask from |W|."""
        if self.method_config.nm is not None:
            mask = self.nm_magnitude_mask({"module": module, "tensor_name": tensor_name, **kwargs})
            for p in module.parametrizations[tensor_name]:
                if isinstance(p, DynamicMask):
                    p.mask.copy_(mask)
            return
        for p in module.parametrizations[tensor_name]:
            if isinstance(p, ThresholdMask):
                t_max = p.max_threshold(module.parametrizations[tensor_name].original)
                p.set_value(min(max(float(p.value()), 0.0), t_max))

    def thresholds(self) -> dict[str, dict[str, float]]:
        """Per tensor: the learned threshold in normalised and in raw weight units."""
        self._require_prepared()
        out: dict[str, dict[str, float]] = {}
        for g in self.groups:
            p = self.parametrization_of(g)
            if not isinstance(p, ThresholdMask):
                continue
            t = float(p.value().detach())
            out[g["tensor_fqn"]] = {"normalised": t, "raw": t * float(p.scale)}
        return out

    @torch.no_grad()
    def project(self, sparsity: float | None = None) -> None:
        """Pin masks that prune exactly ``round(sparsity·N)`` weights, ranked by |W|/scale − t across layers."""
        self._require_prepared()
        self.learned_before_projection = self.layer_sparsity()
        if self.method_config.nm is not None:  # N:M masks are exact by construction: recompute them once more
            self.projected = True
            PTSSparsifier.step(self)  # the masks only, not this class's step counting (which calls project)
            return
        target = self.target_sparsity() if sparsity is None else sparsity
        margins = []
        for g in self.groups:
            p = self.parametrization_of(g)
            margins.append(p.normalised(self.original_of(g)).abs() - p.value().detach().float())
        try:
            if self.method_config.projection == "proportional":
                masks = self._proportional_masks(margins, target)
            else:
                masks = exact_projection(margins, target, min_keep=1)
        except ValueError as e:
            raise ValueError(f"target sparsity {target} cannot be reached by the {len(self.groups)} targeted "
                             f"tensor(s): {e}") from e
        for g, m in zip(self.groups, masks):
            self.parametrization_of(g).freeze(m)
        self.projected = True

    @staticmethod
    def _proportional_masks(margins: list[torch.Tensor], target: float) -> list[torch.Tensor]:
        """Scale every layer's learned density by one factor c so the global count is exact; within a layer the
        largest margins are kept."""
        numels = [m.numel() for m in margins]
        total = sum(numels)
        kept = [max(1, int((m > 0).sum())) for m in margins]
        c = (1.0 - target) * total / sum(kept)
        levels = [min(max(1.0 - c * k / n, 0.0), 1.0 - 1.0 / n) for k, n in zip(kept, numels)]
        counts = exact_counts(levels, numels, round(target * total))
        return [topk_mask(m, n - z) for m, n, z in zip(margins, numels, counts)]

    def squash_mask(self, *args: Any, **kwargs: Any) -> None:
        """Project onto the exact target (unless ``exact=False`` or already projected), then squash."""
        self._require_prepared()
        if self.method_config.exact and not self.projected:
            self.project()
        super().squash_mask(*args, **kwargs)

    # --- distilling protocol --------------------------------------------------------------------------------
    def before_training(self, model: nn.Module, data: Any, teacher: nn.Module) -> MethodOutcome:
        self._check_reachable()
        return MethodOutcome()

    def finalize(self) -> MethodOutcome:
        """Record what was learned, then project onto the exact target (unless ``exact=False``)."""
        out = MethodOutcome()
        out.add_layer_values("initial_sparsity", dict(self.initial_layer_sparsity))
        out.add_layer_values("learned_sparsity", self.learned_before_projection if self.projected else
                             self.layer_sparsity())
        out.add_layer_values("threshold", self.thresholds())
        if self.method_config.exact and not self.projected:
            self.project()
        return out

    def _check_reachable(self) -> None:
        n = sum(g["numel"] for g in self.groups)
        zeros = round(self.target_sparsity() * n)
        if zeros > n - len(self.groups):
            raise ValueError(
                f"target sparsity {self.target_sparsity()} cannot be reached while keeping one weight in each of "
                f"the {len(self.groups)} targeted tensor(s) ({n} weights); target more layers or lower the sparsity"
            )
