"""Mask parametrizations registered on targeted weights while a sparsifier is prepared.

Both keep everything they learn (mask, threshold, scale) in ``extra_state()`` so a sparsifier's
``state_dict()`` holds it; torch's ``FakeSparsity`` deliberately drops its mask from state dicts.
"""

from __future__ import annotations

import torch
from torch import nn

from pts_hf.ops.kde import resolve_bandwidth, threshold_to_sparsity

__all__ = ["DynamicMask", "FixedMask", "PTSParametrization", "ThresholdMask", "mask_from_saved"]


class PTSParametrization(nn.Module):
    """Base of pts_hf parametrizations: ``forward(w) = w ⊙ mask``."""

    def current_mask(self, weight: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            cur = getattr(self, k)
            if cur is None:  # optional buffer that is unset here
                setattr(self, k, v.detach().clone())
            elif isinstance(cur, nn.Parameter):
                with torch.no_grad():
                    cur.copy_(v)
            else:
                if cur.shape != v.shape:
                    raise ValueError(f"{k}: saved shape {tuple(v.shape)} does not match {tuple(cur.shape)}")
                setattr(self, k, v.to(device=cur.device, dtype=cur.dtype))


class FixedMask(PTSParametrization):
    """A stored boolean mask, updated by the sparsifier's ``step()``."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.detach().to(torch.bool).clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask

    def current_mask(self, weight: torch.Tensor) -> torch.Tensor:
        return self.mask

    @staticmethod
    def saved_mask(state: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor | None:
        return state["mask"].bool() if "mask" in state else None

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {"mask": self.mask.clone()}


class _SRSTE(torch.autograd.Function):
    """w ⊙ m forward; backward: the dense gradient plus λ·(1 − m) ⊙ w (SR-STE, as UniPTS's code)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, mask: torch.Tensor, decay: float):
        ctx.save_for_backward(weight, mask)
        ctx.decay = decay
        return weight * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, mask = ctx.saved_tensors
        return grad + ctx.decay * (~mask).to(weight.dtype) * weight, None, None


class DynamicMask(FixedMask):
    """A mask the sparsifier recomputes from |W| during training; pruned weights keep receiving (straight-through)
    gradients so they can grow back, with the SR-STE decay ``decay·(1 − m)·w`` pulling them towards zero."""

    def __init__(self, mask: torch.Tensor, decay: float = 5e-5):
        super().__init__(mask)
        self.decay = float(decay)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and weight.requires_grad:
            return _SRSTE.apply(weight, self.mask, self.decay)
        return weight * self.mask


class ThresholdMask(PTSParametrization):
    """FCPTS mask ``|W| / scale > t`` with one learnable threshold ``t = theta · gain`` in normalised units.

    ``theta`` is the learnable parameter and :meth:`value` the threshold; read and write the threshold only
    through :meth:`value` / :meth:`set_value`.

    ``scale`` is the layer's RMS at preparation, so thresholds of layers whose weights differ by 100× live on
    one scale and share one learning rate and one KDE bandwidth.

    Args:
        weight: the dense weight (used for the scale and the KDE sample positions).
        threshold: initial threshold in normalised units.
        ste: if True, the reconstruction loss reaches ``t`` through a sigmoid straight-through surrogate of the
            hard mask (paper, eq. 14); if False only the control loss moves ``t`` (released code).
        ste_width: width of that sigmoid, in normalised units.
        kde_samples: number of weights the KDE in the bridge uses (all if larger than the layer).
        bandwidth: KDE bandwidth (float, normalised units) or a rule name (``"silverman"``, ``"scott"``).
        generator: RNG for the KDE sample positions.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        threshold: float,
        ste: bool = True,
        ste_width: float = 0.1,
        kde_samples: int = 2048,
        bandwidth: float | str = "silverman",
        generator: torch.Generator | None = None,
        srste_decay: float | None = None,
    ):
        super().__init__()
        self.srste_decay = None if srste_decay is None else float(srste_decay)
        w = weight.detach().float()
        scale = w.pow(2).mean().sqrt().clamp_min(1e-12)
        self.register_buffer("scale", scale.to(weight.dtype))
        # t = threshold · gain: a gain > 1 gives the threshold a larger effective learning rate inside an optimizer
        # shared with the weights (the Trainer callback); 1 everywhere else.
        self.register_buffer("gain", torch.ones((), dtype=torch.float32, device=weight.device))
        self.theta = nn.Parameter(torch.tensor(float(threshold), dtype=torch.float32, device=weight.device))
        n = w.numel()
        idx = torch.randperm(n, generator=generator)[: min(kde_samples, n)] if kde_samples < n else torch.arange(n)
        self.register_buffer("kde_index", idx.to(weight.device))
        self.register_buffer("frozen_mask", None)
        self.ste = bool(ste)
        self.ste_width = float(ste_width)
        self.bandwidth = bandwidth

    def value(self) -> torch.Tensor:
        """The threshold t in normalised units (differentiable)."""
        return self.theta * self.gain

    @torch.no_grad()
    def set_value(self, t: float) -> None:
        self.theta.fill_(float(t) / float(self.gain))

    @torch.no_grad()
    def set_gain(self, gain: float) -> None:
        t = float(self.value())
        self.gain.fill_(float(gain))
        self.set_value(t)

    def normalised(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.detach().float() / self.scale.float()

    def current_mask(self, weight: torch.Tensor) -> torch.Tensor:
        if self.frozen_mask is not None:
            return self.frozen_mask
        return self.normalised(weight).abs() > self.value().detach()

    @staticmethod
    def saved_mask(state: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor | None:
        """:meth:`current_mask` from this parametrization's tensors as a model state dict saved them."""
        if "frozen_mask" in state:
            return state["frozen_mask"].bool()
        if "theta" not in state:
            return None
        t = state["theta"].float() * state.get("gain", torch.ones(())).float()  # value()
        return (weight.detach().float() / state["scale"].float()).abs() > t

    def freeze(self, mask: torch.Tensor | None) -> None:
        """Pin the mask (e.g. after the exact projection); ``None`` goes back to the threshold."""
        self.frozen_mask = None if mask is None else mask.detach().to(torch.bool)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.frozen_mask is not None:
            return weight * self.frozen_mask
        z = self.normalised(weight).abs()
        t = self.value()
        keep = z > t.detach()
        hard = keep.to(weight.dtype)
        if self.srste_decay is not None and torch.is_grad_enabled():  # dense gradients: pruned weights can regrow
            masked = _SRSTE.apply(weight, keep, self.srste_decay)
            if self.ste and self.theta.requires_grad:
                soft = torch.sigmoid((z - t) / self.ste_width).to(weight.dtype)
                return masked + weight.detach() * (soft - soft.detach())
            return masked
        if self.ste and torch.is_grad_enabled() and self.theta.requires_grad:
            soft = torch.sigmoid((z - t) / self.ste_width).to(weight.dtype)
            return weight * (hard + (soft - soft.detach()))
        return weight * hard

    def sparsity(self, weight: torch.Tensor) -> torch.Tensor:
        """Differentiable r(t): exact fraction pruned forward, KDE density backward."""
        z = self.normalised(weight).reshape(-1)
        samples = z[self.kde_index]
        h = resolve_bandwidth(self.bandwidth, samples)
        return threshold_to_sparsity(self.value(), z, samples, h)

    def max_threshold(self, weight: torch.Tensor) -> float:
        """Largest useful threshold: just below the layer's largest normalised magnitude."""
        return float(self.normalised(weight).abs().max()) * (1.0 - 1e-6)

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        if "threshold" in state:  # saved before the parameter was named theta
            state = {("theta" if k == "threshold" else k): v for k, v in state.items()}
        super().load_extra_state(state)

    def extra_state(self) -> dict[str, torch.Tensor]:
        state = {"theta": self.theta.detach().clone(), "gain": self.gain.clone(), "scale": self.scale.clone()}
        if self.frozen_mask is not None:
            state["frozen_mask"] = self.frozen_mask.clone()
        return state


def mask_from_saved(state: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """The keep mask of a pts_hf parametrization from its tensors in a saved state dict (keys without the
    ``....parametrizations.weight.0.`` prefix), e.g. a Trainer checkpoint written while masks were live."""
    for cls in (ThresholdMask, FixedMask):
        mask = cls.saved_mask(state, weight)
        if mask is not None:
            return mask
    raise ValueError(f"no pts_hf mask among the saved parametrization tensors {sorted(state)}")
