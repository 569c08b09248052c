"""The distilling protocol: methods whose masks (and weights) are trained against a frozen dense teacher.

A distilling method subclasses :class:`DistillingSparsifier` (config: a
:class:`~pts_hf.config.DistillationConfig`) and implements :meth:`~DistillingSparsifier.compute_loss`; it may add
parameters of its own (:meth:`~DistillingSparsifier.extra_param_groups`), a phase before training
(:meth:`~DistillingSparsifier.before_training`, e.g. UniPTS's allocation search) and one after it
(:meth:`~DistillingSparsifier.finalize`, e.g. FCPTS's exact projection). Whoever runs the loop owns the teacher and
the optimizers: :func:`pts_hf.distillation.distill` for :func:`pts_hf.sparsify`, the Trainer for
:class:`~pts_hf.integrations.trainer.PTSCallback`, the user in a torch.ao-style loop. Nothing is probed with
``hasattr``: every step of the protocol is declared here.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch
from torch import nn

from pts_hf.config import DistillationConfig
from pts_hf.record import MethodOutcome
from pts_hf.sparsifiers.base import PTSSparsifier

__all__ = ["DistillingSparsifier"]


class DistillingSparsifier(PTSSparsifier):
    """Base of the methods trained by the distillation loop (see module docstring)."""

    config_class: ClassVar[type[DistillationConfig]] = DistillationConfig
    method_config: DistillationConfig
    resume_attrs: ClassVar[tuple[str, ...]] = ()  # counters a resumed run restores, besides state_dict()

    def requires_data(self) -> bool:
        return True

    def extra_param_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups of the method's own parameters (e.g. FCPTS's thresholds); none by default."""
        self._require_prepared()
        return []

    def scale_extra_lr(self, base_lr: float) -> None:
        """Inside an optimizer shared with the weights at ``base_lr`` (the Trainer's), make the method's own
        parameters move at their configured rate. Nothing to do by default."""

    @abc.abstractmethod
    def compute_loss(self, student_output: Any, teacher_output: Any, epoch: float = 0.0
                     ) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss of one batch and what to log; ``epoch`` = batches seen / batches per pass."""

    def before_training(self, model: nn.Module, data: Any, teacher: nn.Module) -> MethodOutcome:
        """Runs once before the loop with the dense ``teacher`` (UniPTS: the allocation search)."""
        return MethodOutcome()

    def finalize(self) -> MethodOutcome:
        """Runs once after the loop, before ``squash_mask`` and BatchNorm re-estimation (FCPTS: the exact
        projection); returns the method's numbers for the run record."""
        return MethodOutcome()

    def calibrate(self, model: nn.Module, data: Any, accelerator: Any = None) -> MethodOutcome:
        from pts_hf.distillation import distill

        self._require_prepared()
        return distill(self, model, data, accelerator)
