"""Losses: picking the comparable tensor out of a model's output, distillation, feature reconstruction, and the
FCPTS control loss. Pure functions over tensors."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "OutputKind",
    "base_decayed_kl",
    "control_loss",
    "extract_output",
    "feature_distillation",
    "feature_mse",
    "kl_distillation",
    "reconstruction_loss",
]

OutputKind = str  # "logits" | "features"


def _first_tensor(obj: Any) -> torch.Tensor | None:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, Mapping):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        for v in obj:
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def extract_output(output: Any) -> tuple[torch.Tensor, OutputKind]:
    """The tensor to compare and whether it holds class logits.

    A tensor is used as is (logits if 2-D ``[batch, classes]``); a HF ``ModelOutput`` or dict gives ``logits``,
    else ``last_hidden_state`` (features), else its first tensor; a tuple/list gives its first tensor.
    """
    if isinstance(output, torch.Tensor):
        return output, ("logits" if output.ndim == 2 else "features")
    for key, kind in (("logits", "logits"), ("last_hidden_state", "features")):
        value = output.get(key) if isinstance(output, Mapping) else getattr(output, key, None)
        if isinstance(value, torch.Tensor):
            return value, kind
    t = _first_tensor(output)
    if t is None:
        raise TypeError(
            f"cannot compare model outputs of type {type(output).__name__}: no tensor found in it; return a tensor, "
            "a dict / ModelOutput with 'logits' or 'last_hidden_state', or pass loss_fn="
        )
    return t, ("logits" if t.ndim == 2 else "features")


def kl_distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(softmax(teacher/T) ‖ softmax(student/T)) · T², averaged over every position but the class dim."""
    check_same_shape(student, teacher)
    t = teacher.detach().float() / temperature
    s = student.float() / temperature
    log_p_t = F.log_softmax(t, dim=-1)
    log_p_s = F.log_softmax(s, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)
    return kl.mean() * temperature**2


def check_same_shape(student: torch.Tensor, teacher: torch.Tensor) -> None:
    """Student and teacher outputs must match: a mismatch means the teacher is not the student's dense model."""
    if student.shape != teacher.shape:
        raise ValueError(f"student output shape {tuple(student.shape)} differs from the teacher's "
                         f"{tuple(teacher.shape)}: the teacher must be the dense model of the same architecture "
                         "(a copy of the model made before prepare) run on the same batch")


def base_decayed_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 4.0, tau: float = 8.0
                    ) -> torch.Tensor:
    """UniPTS's "base-decayed" objective, exactly as its released code computes it:

    T² · mean_positions Σ_c p_t,c · (log p_t,c − log q_s,c / τ),  p_t = softmax(teacher / T), q_s = softmax(student)

    i.e. the student at temperature 1 (not T) and its log-probabilities divided by τ (a change of logarithm base,
    log_b x = ln x / ln b with ln b = τ). With τ decaying over training (τ_e = τ0·γ^e) the gradient
    T²/τ · (softmax(student) − p_t) grows, sustaining the teacher's signal late in training. It is not a KL: it
    is the cross-entropy of the student against the softened teacher, scaled by T²/τ, plus the teacher's
    negative entropy (a constant); its minimum is reached at softmax(student) = p_t, which is the teacher at
    temperature T. Plain KL (``kl_distillation``) compares both at temperature T.
    """
    check_same_shape(student, teacher)
    p_t = F.softmax(teacher.detach().float() / temperature, dim=-1)
    log_q = F.log_softmax(student.float(), dim=-1)
    terms = (p_t * (torch.log(p_t.clamp_min(1e-30)) - log_q / tau)).sum(dim=-1)
    return terms.mean() * temperature**2


def feature_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error, normalised by the teacher's mean square so its scale is model-independent."""
    t = teacher.detach().float()
    return F.mse_loss(student.float(), t) / t.pow(2).mean().clamp_min(1e-12)


def feature_distillation(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over the compared points of the normalised MSE between the student's and the teacher's features."""
    if len(student) != len(teacher) or not student:
        raise ValueError(f"feature distillation compares {len(student)} student and {len(teacher)} teacher "
                         "features; both must record the same non-empty list of points")
    for s, t in zip(student, teacher):
        check_same_shape(s, t)
    return sum(feature_mse(s, t) for s, t in zip(student, teacher)) / len(student)


def reconstruction_loss(
    student_output: Any,
    teacher_output: Any,
    kind: str = "auto",
    temperature: float = 1.0,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Compare a sparse model's output with the dense one's: KL on logits, normalised MSE on features, or a
    user ``loss_fn(student_output, teacher_output)`` on the raw outputs."""
    if loss_fn is not None:
        return loss_fn(student_output, teacher_output)
    s, s_kind = extract_output(student_output)
    t, _ = extract_output(teacher_output)
    check_same_shape(s, t)
    use = s_kind if kind == "auto" else kind
    if use == "kl":
        use = "logits"
    if use == "mse":
        use = "features"
    if use == "logits":
        return kl_distillation(s, t, temperature)
    if use == "features":
        return feature_mse(s, t)
    raise ValueError(f"unknown reconstruction kind {kind!r}; use 'auto', 'kl' or 'mse'")


def control_loss(sparsities: Sequence[torch.Tensor], numels: Sequence[int], target: float) -> torch.Tensor:
    """FCPTS eq. 3: | Σ r_i N_i / Σ N_i − r0 |."""
    total = float(sum(numels))
    global_r = sum(r * (n / total) for r, n in zip(sparsities, numels))
    return (global_r - target).abs()
