"""``PTSCallback``: turn a plain ``transformers.Trainer`` run on calibration data into post-training sparsity.

    from pts_hf.integrations.trainer import PTSCallback
    trainer = Trainer(model=model, args=args, train_dataset=calib, callbacks=[PTSCallback("fcpts", sparsity=0.8)])
    trainer.train()          # ends with the exact projection and squashed masks
    trainer.save_model(out)  # plain from_pretrained loads the sparse weights

How it hooks in (callbacks cannot change the Trainer's optimizer or loss):

* ``on_init_end`` (before the Trainer builds its optimizer) prepares the sparsifier on the model, so the
  thresholds are ordinary model parameters the optimizer picks up; their ``gain`` is set so that the Trainer's
  learning rate moves them at ``threshold_lr`` (Adam-type optimizers). A frozen dense copy becomes the teacher.
* The model's ``forward`` is wrapped (keeping its signature, so the Trainer's ``remove_unused_columns`` keeps the
  model's inputs): in training mode it also runs the teacher and returns
  ``loss = distillation + control (+ label_loss_weight · the model's own loss when labels are given)``; labels are
  optional.
* ``on_step_end`` calls the sparsifier's ``step()``; ``on_save`` rewrites each checkpoint the Trainer writes so its
  weights are the current sparse ones (no ``parametrizations.*`` keys) and adds ``sparsity_config.json``;
  ``on_train_end`` projects onto the exact target, squashes the masks and unwraps ``forward``; from then on the
  model's ``save_pretrained`` (so ``trainer.save_model``) also writes ``sparsity_config.json``.

Tested with ``gradient_accumulation_steps=1``.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from pts_hf.checkpoint.io import read_safetensors, write_text_atomic
from pts_hf.checkpoint.sidecar import SIDECAR_NAME, make_sidecar
from pts_hf.sparsifiers import get_sparsifier_class

__all__ = ["PTSCallback", "clean_checkpoint"]

_ORIGINAL = re.compile(r"^(?P<prefix>.*)\.parametrizations\.(?P<tensor>[^.]+)\.original$")


def _mask_from_saved(tensors: dict[str, torch.Tensor], prefix: str, tensor: str, weight: torch.Tensor) -> torch.Tensor:
    p = f"{prefix}.parametrizations.{tensor}.0."
    for key in ("frozen_mask", "mask"):
        if p + key in tensors:
            return tensors[p + key].bool()
    scale, threshold, gain = tensors[p + "scale"], tensors[p + "threshold"], tensors.get(p + "gain", torch.ones(()))
    return (weight.float() / scale.float()).abs() > float(threshold) * float(gain)


def clean_checkpoint(folder: str | Path) -> int:
    """Rewrite the safetensors files of a checkpoint saved while masks were live: ``X.parametrizations.weight
    .original`` → ``X.weight`` (masked), other ``parametrizations`` entries dropped. Returns tensors rewritten."""
    from safetensors.torch import save_file

    folder = Path(folder)
    rewritten = 0
    weight_map: dict[str, str] = {}
    for f in sorted(folder.glob("*.safetensors")):
        tensors, meta = read_safetensors(f)
        out = {}
        for name, t in tensors.items():
            m = _ORIGINAL.match(name)
            if m:
                mask = _mask_from_saved(tensors, m["prefix"], m["tensor"], t)
                out[f"{m['prefix']}.{m['tensor']}"] = (t * mask.to(t.dtype)).contiguous()
                rewritten += 1
            elif ".parametrizations." not in name:
                out[name] = t.contiguous()
        if rewritten:
            tmp = f.with_name(f.name + ".tmp")
            save_file(out, str(tmp), metadata=meta or {"format": "pt"})
            tmp.replace(f)
        weight_map.update({k: f.name for k in out})
    index = folder / "model.safetensors.index.json"
    if rewritten and index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = weight_map
        index.write_text(json.dumps(data, indent=2))
    return rewritten


class PTSCallback(TrainerCallback):
    """Post-training sparsity inside ``transformers.Trainer``.

    Args:
        method: a method with a training loss (``"fcpts"`` or ``"unipts"``).
        sparsity: global target.
        label_loss_weight: weight of the model's own loss when batches carry labels (0 = pure distillation).
        **options: the method's options (e.g. ``threshold_lr``, ``temperature``, ``targets``, ``ignore``).
    """

    def __init__(self, method: str = "fcpts", sparsity: float = 0.5, label_loss_weight: float = 0.0,
                 **options: Any):
        cls = get_sparsifier_class(method)
        if not hasattr(cls, "compute_loss"):
            raise ValueError(f"method {method!r} has no training loss; use pts_hf.sparsify(..., method={method!r})")
        self.sparsifier = cls(sparsity=sparsity, **options)
        self.sparsifier.show_progress = False  # the Trainer shows its own
        self.label_loss_weight = float(label_loss_weight)
        self.model: Any = None
        self.teacher: Any = None
        self._state: Any = None
        self.history: list[dict[str, float]] = []

    # --- lifecycle --------------------------------------------------------------------------------------------
    def on_init_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if model is None:
            raise ValueError("PTSCallback needs the Trainer's model")
        self.model, self._state = model, state
        sp = self.sparsifier
        sp.prepare(model)
        self.teacher = sp.teacher if getattr(sp, "teacher", None) is not None else \
            copy.deepcopy(model).eval().requires_grad_(False)
        threshold_lr = getattr(sp.options, "threshold_lr", None)
        if threshold_lr and args.learning_rate > 0:
            for g in sp.groups:
                p = sp.parametrization_of(g)
                if hasattr(p, "set_gain"):
                    p.set_gain(threshold_lr / args.learning_rate)
        sp.step()
        self._wrap_forward(model)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.sparsifier.step()

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not args.should_save:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            clean_checkpoint(folder)
            write_text_atomic(folder / SIDECAR_NAME, json.dumps(self._sidecar(), indent=2) + "\n")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._unwrap_forward()
        sp = self.sparsifier
        if hasattr(sp, "project") and getattr(sp.options, "exact", True):
            sp.project()
        else:
            sp.step()
        sp.squash_mask()
        self.teacher = None
        if hasattr(sp, "teacher"):
            sp.teacher = None
        if self.model is not None:
            self._attach_sidecar(self.model)

    # --- saving -----------------------------------------------------------------------------------------------
    def _sidecar(self) -> dict[str, Any]:
        sp = self.sparsifier
        ls = sp.layer_sparsity()
        numel = {g["tensor_fqn"]: g["numel"] for g in sp.groups}
        n = sum(numel.values())
        global_s = sum(ls[k] * numel[k] for k in numel) / n if n else 0.0
        side = make_sidecar("dense", ls, numel, global_s)
        side.update(method=sp.method, config=sp.options.to_dict(), target_sparsity=sp.options.sparsity)
        return side

    def _attach_sidecar(self, model: Any) -> None:
        """After training, ``model.save_pretrained`` (which ``trainer.save_model`` calls) also writes
        ``sparsity_config.json``, as the intermediate checkpoints do. The sidecar is ``model.pts_sparsity_config``
        (as :func:`pts_hf.load_sparse` sets it)."""
        side = self._sidecar()
        model.pts_sparsity_config = side
        original = getattr(model, "save_pretrained", None)
        if original is None or getattr(original, "_pts_sidecar", False):
            return

        @functools.wraps(original)
        def save_pretrained(save_directory: Any, *args: Any, **kwargs: Any) -> Any:
            out = original(save_directory, *args, **kwargs)
            if kwargs.get("is_main_process", True):
                folder = Path(save_directory)
                folder.mkdir(parents=True, exist_ok=True)
                write_text_atomic(folder / SIDECAR_NAME, json.dumps(model.pts_sparsity_config, indent=2) + "\n")
            return out

        save_pretrained._pts_sidecar = True  # type: ignore[attr-defined]
        model.save_pretrained = save_pretrained

    # --- the loss ---------------------------------------------------------------------------------------------
    def _wrap_forward(self, model: Any) -> None:
        original = model.forward
        callback = self

        @functools.wraps(original)  # keeps the signature: the Trainer keeps the columns the model's forward takes
        def forward(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            if not model.training:
                return out
            teacher_kwargs = {k: v for k, v in kwargs.items() if k not in ("labels", "num_items_in_batch")}
            with torch.no_grad():
                teacher_out = callback.teacher(*args, **teacher_kwargs)
            st = callback._state
            progress = st.global_step / st.max_steps if st is not None and st.max_steps else 0.0
            epoch = float(st.epoch or 0.0) if st is not None else 0.0
            loss, logs = callback.sparsifier.compute_loss(out, teacher_out, progress=progress, epoch=epoch)
            own = out.get("loss") if hasattr(out, "get") else None
            if own is not None and callback.label_loss_weight > 0:
                loss = loss + callback.label_loss_weight * own
            callback.history.append({"loss": float(loss.detach()), **logs})
            out["loss"] = loss
            return out

        model._pts_original_forward = original
        model.forward = forward

    def _unwrap_forward(self) -> None:
        if self.model is not None and hasattr(self.model, "_pts_original_forward"):
            del self.model.forward
            del self.model._pts_original_forward
