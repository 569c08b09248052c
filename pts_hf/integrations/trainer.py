"""``PTSCallback``: turn a plain ``transformers.Trainer`` run on calibration data into post-training sparsity.

    from pts_hf.integrations.trainer import PTSCallback
    trainer = Trainer(model=model, args=args, train_dataset=calib, callbacks=[PTSCallback("fcpts", sparsity=0.8)])
    trainer.train()          # ends with the method's finalize (FCPTS: exact projection) and squashed masks
    trainer.save_model(out)  # plain from_pretrained loads the sparse weights

The callback is a thin caller of the distilling protocol (:class:`~pts_hf.sparsifiers.distilling.
DistillingSparsifier`); the Trainer is the loop, so the callback owns the teacher:

* ``on_init_end`` (before the Trainer builds its optimizer): a frozen dense copy becomes the teacher, then
  ``prepare`` attaches the masks, so the method's own parameters (thresholds) are model parameters the Trainer's
  optimizer picks up; ``scale_extra_lr(learning_rate)`` makes them move at their configured rate.
* A forward hook on the model (the model's ``forward`` itself is untouched, so ``remove_unused_columns`` keeps its
  inputs) runs the teacher on the same inputs while training and puts ``compute_loss`` (``+ label_loss_weight ·``
  the model's own loss when labels are given) into the output's ``loss``; it is removed at the end.
* ``on_step_end`` calls ``step()``; ``on_save`` makes each ``checkpoint-N`` the Trainer writes a pts_hf checkpoint
  (:func:`pts_hf.checkpoint.io.finish_checkpoint`: current sparse weights, ``format``, sidecar);
  ``on_train_end`` calls ``finalize()`` and ``squash_mask()``; from then on the model's ``save_pretrained`` (so
  ``trainer.save_model``) writes the same way.

Options the Trainer owns are set on ``TrainingArguments`` (``learning_rate``, ``fp16``/``bf16``,
``gradient_accumulation_steps``, ``max_steps``, …): the method options that would duplicate them are refused.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from pts_hf.checkpoint.io import RECORD_ATTR, finish_checkpoint, record_of
from pts_hf.distillation import add_feature_loss, compared_points, dense_copy, feature_weight_at
from pts_hf.features import FeatureTap
from pts_hf.sparsifiers import get_sparsifier_class
from pts_hf.sparsifiers.distilling import DistillingSparsifier

__all__ = ["PTSCallback"]

# DistillationConfig fields the Trainer decides (or the callback cannot do); setting them here would do nothing
_TRAINER_OWNED = {"steps": "set TrainingArguments(max_steps=...)", "lr": "set TrainingArguments(learning_rate=...)",
                  "optimizer": "set TrainingArguments(optim=...)", "weight_decay": "set TrainingArguments("
                  "weight_decay=...)", "warmup_steps": "set TrainingArguments(warmup_steps=...)",
                  "max_grad_norm": "set TrainingArguments(max_grad_norm=...)",
                  "mixed_precision": "set TrainingArguments(fp16=True / bf16=True)",
                  "gradient_accumulation_steps": "set TrainingArguments(gradient_accumulation_steps=...)",
                  "augment": "augment in your dataset's transform",
                  "train_weights": "freeze weights with requires_grad_(False) before building the Trainer",
                  "student_bn": "the Trainer trains in train mode", "teacher_mode": "the teacher runs in eval mode",
                  "bn_recalibration": "call pts_hf.calibration.recalibrate_batchnorm(model, data) after training"}


class PTSCallback(TrainerCallback):
    """Post-training sparsity inside ``transformers.Trainer``.

    Args:
        method: a distilling method (``"fcpts"`` or ``"unipts"``).
        sparsity: global target.
        label_loss_weight: weight of the model's own loss when batches carry labels (0 = pure distillation).
        format: on-disk format of the checkpoints (a name in ``pts_hf.checkpoint.FORMATS``).
        **options: the method's options (e.g. ``threshold_lr``, ``temperature``, ``targets``, ``ignore``).
    """

    def __init__(self, method: str = "fcpts", sparsity: float = 0.5, label_loss_weight: float = 0.0,
                 format: str = "dense", **options: Any):
        from pts_hf.checkpoint.formats import get_format

        cls = get_sparsifier_class(method)
        if not issubclass(cls, DistillingSparsifier):
            raise ValueError(f"method {method!r} has no training loss; use pts_hf.sparsify(..., method={method!r})")
        owned = sorted(set(options) & set(_TRAINER_OWNED))
        if owned:
            raise ValueError(f"PTSCallback does not take {owned}: " + "; ".join(f"{k}: {_TRAINER_OWNED[k]}"
                                                                               for k in owned))
        get_format(format)
        self.sparsifier: DistillingSparsifier = cls(sparsity=sparsity, bn_recalibration=False, **options)
        self.sparsifier.show_progress = False  # the Trainer shows its own
        self.label_loss_weight = float(label_loss_weight)
        self.format = format
        self.model: Any = None
        self.teacher: Any = None
        self.history: list[dict[str, float]] = []
        self._epoch = 0.0
        self._progress = 0.0  # fraction of the Trainer's max_steps done (feature_schedule)
        self._hook: Any = None
        self._taps: tuple[FeatureTap, FeatureTap] | None = None

    # --- lifecycle --------------------------------------------------------------------------------------------
    def on_init_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if model is None:
            raise ValueError("PTSCallback needs the Trainer's model")
        self.model = model
        self.teacher = dense_copy(model)
        sp = self.sparsifier
        sp.prepare(model)
        points = compared_points(sp, model)
        if points:  # feature distillation: block outputs of student and teacher, compared in the hook
            self._taps = (FeatureTap(model, points), FeatureTap(self.teacher, points))
        sp.scale_extra_lr(args.learning_rate)
        sp.step()
        self._hook = model.register_forward_hook(self._distillation_hook, with_kwargs=True)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._epoch = float(state.epoch or 0.0)
        self._progress = state.global_step / state.max_steps if state.max_steps else 0.0
        self.sparsifier.step()

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if args.should_save and folder.is_dir():
            sp = self.sparsifier
            finish_checkpoint(folder, sp.run_record(history=list(self.history)), self.format)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        for tap in self._taps or ():
            tap.remove()
        self._taps = None
        sp = self.sparsifier
        outcome = sp.finalize()
        outcome.history = list(self.history)
        sp.squash_mask()
        self.teacher = None
        setattr(self.model, RECORD_ATTR, sp.run_record(outcome))
        self._save_as_pts_checkpoint(self.model)

    # --- saving -----------------------------------------------------------------------------------------------
    def _save_as_pts_checkpoint(self, model: Any) -> None:
        """After training, ``model.save_pretrained`` (which ``trainer.save_model`` calls) writes what the
        intermediate checkpoints hold: ``format`` and ``sparsity_config.json`` from the record."""
        original = getattr(model, "save_pretrained", None)
        if original is None or getattr(original, "_pts_checkpoint", False):
            return
        fmt = self.format

        @functools.wraps(original)
        def save_pretrained(save_directory: Any, *args: Any, **kwargs: Any) -> Any:
            out = original(save_directory, *args, **kwargs)
            if kwargs.get("is_main_process", True):
                finish_checkpoint(Path(save_directory), record_of(model), fmt)
            return out

        save_pretrained._pts_checkpoint = True  # type: ignore[attr-defined]
        model.save_pretrained = save_pretrained

    # --- the loss ---------------------------------------------------------------------------------------------
    def _distillation_hook(self, module: Any, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        if not module.training:
            return output
        teacher_kwargs = {k: v for k, v in kwargs.items() if k not in ("labels", "num_items_in_batch")}
        with torch.no_grad():
            teacher_out = self.teacher(*args, **teacher_kwargs)
        loss, logs = self.sparsifier.compute_loss(output, teacher_out, epoch=self._epoch)
        if self._taps is not None:
            loss, logs = add_feature_loss(loss, logs, self._taps[0].take(), self._taps[1].take(),
                                          feature_weight_at(self.sparsifier.method_config, self._progress))
        own = output.get("loss") if hasattr(output, "get") else None
        if own is not None and self.label_loss_weight > 0:
            loss = loss + self.label_loss_weight * own
        self.history.append({"loss": float(loss.detach()), **logs})
        output["loss"] = loss
        return output
