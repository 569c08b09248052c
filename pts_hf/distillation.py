"""The distillation loop: a sparse student against a frozen dense teacher, through ``accelerate``.

The loop owns the teacher (a dense copy of the prepared student, made at its start and freed at its end) and the
accelerator (made from the config's ``mixed_precision`` / ``gradient_accumulation_steps``, or the caller's, checked
against them). It knows nothing about a method's maths: it drives the declared
:class:`~pts_hf.sparsifiers.distilling.DistillingSparsifier` protocol — ``before_training`` (e.g. UniPTS's
search), ``extra_param_groups``, ``compute_loss``, ``step()`` after each optimizer step, ``finalize`` — exactly as
a user's own torch.ao-style loop would.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pts_hf.calibration import CalibrationData, augment_batch, forward_batch, recalibrate_batchnorm
from pts_hf.config import DistillationConfig
from pts_hf.features import FeatureTap, feature_points
from pts_hf.losses import feature_distillation
from pts_hf.progress import progress_bar
from pts_hf.record import MethodOutcome
from pts_hf.resume import Interrupted, RunCheckpoint, stop_requests

if TYPE_CHECKING:
    from pts_hf.sparsifiers.distilling import DistillingSparsifier as PTSSparsifier

__all__ = ["cosine_with_warmup", "dense_copy", "distill", "make_accelerator", "run_distillation",
           "set_student_mode"]

logger = logging.getLogger("pts_hf")


def dense_copy(model: nn.Module) -> nn.Module:
    """A frozen dense copy of a prepared (masked) model: its parametrizations removed, the original weights kept."""
    from torch.nn.utils import parametrize

    teacher = copy.deepcopy(model)
    for m in list(teacher.modules()):
        if parametrize.is_parametrized(m):
            # not parametrize.remove_parametrizations: the copy shares its generated class with the student, from
            # which that would delete the property; the copy gets its plain class back instead
            originals = {name: plist.original for name, plist in m.parametrizations.items()}
            del m._modules["parametrizations"]
            m.__class__ = type(m).__bases__[0]
            for name, original in originals.items():
                m.register_parameter(name, original)
    return teacher.eval().requires_grad_(False)


def make_accelerator(config: DistillationConfig, accelerator: Any = None) -> Any:
    """An ``Accelerator`` with the config's ``mixed_precision`` and ``gradient_accumulation_steps``; a given one is
    checked against them (they are its settings: set them on it, or leave them at their defaults here)."""
    if accelerator is None:
        from accelerate import Accelerator

        # defaults are not passed, so `accelerate launch --mixed_precision ...` (its config) still applies
        kwargs: dict[str, Any] = {}
        if config.mixed_precision != "no":
            kwargs["mixed_precision"] = config.mixed_precision
        if config.gradient_accumulation_steps != 1:
            kwargs["gradient_accumulation_steps"] = config.gradient_accumulation_steps
        return Accelerator(**kwargs)
    theirs = {"mixed_precision": str(getattr(accelerator, "mixed_precision", "no")),
              "gradient_accumulation_steps": int(getattr(accelerator, "gradient_accumulation_steps", 1))}
    defaults = {"mixed_precision": "no", "gradient_accumulation_steps": 1}
    for name, value in theirs.items():
        mine = getattr(config, name)
        if mine != defaults[name] and mine != value:
            raise ValueError(f"{name}={mine!r} contradicts the accelerator passed in ({name}={value!r}): set it on "
                             f"the Accelerator, or leave {name} out of the method options")
    return accelerator


def distill(sparsifier: PTSSparsifier, model: nn.Module, data: CalibrationData, accelerator: Any = None
            ) -> MethodOutcome:
    """The whole data-driven phase of a distilling method on a prepared ``model``: teacher, ``before_training``,
    the loop, ``finalize``, BatchNorm re-estimation. The teacher is freed at the end."""
    config = sparsifier.method_config
    accelerator = make_accelerator(config, accelerator)
    compared_points(sparsifier, model)  # a wrong feature_points name fails here, before the search or the loop
    teacher = dense_copy(model)
    outcome = sparsifier.before_training(model, data, teacher)
    outcome.merge(run_distillation(sparsifier, model, teacher, data, accelerator, config))
    del teacher
    outcome.merge(sparsifier.finalize())
    outcome.extras["bn_batches"] = finish_batchnorm(model, data, accelerator, config)
    outcome.extras.setdefault("calibration_batches", len(data))
    return outcome


def compared_points(sparsifier: PTSSparsifier, model: nn.Module) -> list[str]:
    """The modules whose outputs feature distillation compares (none when ``feature_weight`` is 0)."""
    config = sparsifier.method_config
    if not config.feature_weight > 0:
        return []
    points = feature_points(model, sparsifier.group_targets(), config.feature_points)
    if not points:
        logger.info("pts_hf: %s has no blocks whose outputs feature distillation could compare (feature_points="
                    "'blocks'); only the output is compared. Name modules with feature_points=[...] to compare "
                    "them", type(model).__name__)
    return points


def feature_weight_at(config: DistillationConfig, progress: float) -> float:
    """``feature_weight`` at ``progress`` ∈ [0, 1] of the run under ``feature_schedule``."""
    if config.feature_schedule == "cosine":
        return config.feature_weight * cosine_decay(progress)
    return config.feature_weight


def add_feature_loss(loss: torch.Tensor, logs: dict[str, float], student_feats: list[torch.Tensor],
                     teacher_feats: list[torch.Tensor], weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """The method's loss plus ``weight`` × the block-output comparison, and the logs with its value."""
    feat = feature_distillation(student_feats, teacher_feats)
    return loss + weight * feat.to(loss.device), {**logs, "feature": float(feat.detach())}


def cosine_decay(progress: float) -> float:
    """½(1 + cos(π·p)) for ``progress`` p clamped to [0, 1]: 1 at the start, 0 at the end."""
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def cosine_with_warmup(steps: int, warmup: int):
    """LR multiplier: linear warm-up, then cosine decay to 0 at ``steps``."""

    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return cosine_decay((step - warmup) / max(1, steps - warmup))

    return fn


def set_student_mode(model: nn.Module, bn_mode: str) -> None:
    """Everything in eval (no dropout: the comparison with the teacher stays deterministic) except, with
    ``bn_mode='train'``, BatchNorm layers, which then normalise with batch statistics."""
    model.eval()
    if bn_mode == "train":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()


def _make_optimizer(name: str, params: list[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


def _sharded(data: CalibrationData, index: int, count: int):
    """Cycle over the batches, each process taking every ``count``-th one."""
    while True:
        for i, batch in enumerate(data):
            if i % count == index:
                yield batch


def _postfix(sparsifier: PTSSparsifier, logs: dict[str, float]) -> dict[str, str]:
    """What the progress bar shows: the KL part when the method reports one (UniPTS's base-decayed objective
    is not a KL and is negative), else the loss; and the current global sparsity of the masks."""
    shown = {"kl": f"{logs['kl']:.4f}"} if "kl" in logs else {"loss": f"{logs['loss']:.4f}"}
    current = logs.get("sparsity")
    if current is None:
        with torch.no_grad():
            current = sparsifier.global_sparsity()
    shown["sparsity"] = f"{current:.4f}"
    return shown


def run_distillation(
    sparsifier: PTSSparsifier,
    model: nn.Module,
    teacher: nn.Module,
    data: CalibrationData,
    accelerator: Any,
    config: DistillationConfig,
) -> MethodOutcome:
    """Optimise ``model`` (prepared by ``sparsifier``) to match ``teacher`` on ``data`` for ``config.steps``."""
    n_batches = len(data)
    samples = data.num_samples() if n_batches == 1 else None
    batch_size = getattr(config, "batch_size", None)
    if samples is not None and batch_size is not None and samples < batch_size:
        warnings.warn(
            f"calibration data holds {samples} samples, fewer than batch_size={batch_size}: every step uses the "
            f"same {samples} samples, repeated {config.steps} times over the {config.steps} steps; more calibration "
            "data would generalise better",
            stacklevel=4,  # the user's pts_hf.sparsify(...) call
        )
    elif n_batches * 10 < config.steps:
        warnings.warn(
            f"calibration data holds {n_batches} batches for {config.steps} steps: each batch is seen "
            f"{config.steps / n_batches:.0f} times; more calibration data would generalise better",
            stacklevel=5,  # the user's pts_hf.sparsify(...) call (sparsify → calibrate → distill → here)
        )
    extra_groups = sparsifier.extra_param_groups()
    extra_ids = {id(p) for g in extra_groups for p in g["params"]}
    weight_params = [p for p in model.parameters() if p.requires_grad and id(p) not in extra_ids]
    if not config.train_weights:
        for p in weight_params:
            p.requires_grad_(False)
        weight_params = []
    optimizers, schedulers = [], []
    lr_fn = cosine_with_warmup(config.steps, config.warmup_steps)
    if weight_params:
        optimizers.append(_make_optimizer(config.optimizer, weight_params, config.lr, config.weight_decay))
    if extra_groups:
        optimizers.append(torch.optim.Adam(extra_groups))
    for opt in optimizers:
        schedulers.append(torch.optim.lr_scheduler.LambdaLR(opt, lr_fn))

    points = compared_points(sparsifier, model)
    taps = (FeatureTap(model, points), FeatureTap(teacher, points)) if points else None
    teacher.requires_grad_(False)
    teacher = accelerator.prepare_model(teacher, evaluation_mode=True)
    prepared = accelerator.prepare(model, *optimizers)
    wrapped, optimizers = prepared[0], list(prepared[1:])
    device = accelerator.device
    if config.teacher_mode == "train":
        set_student_mode(teacher, "train")
    else:
        teacher.eval()
    set_student_mode(wrapped, config.student_bn)

    history: list[dict[str, float]] = []
    teacher_cache = _teacher_cache(config, data, accelerator)
    batches = _sharded(data, accelerator.process_index, accelerator.num_processes)
    aug_gen = torch.Generator().manual_seed(config.seed + 1 + accelerator.process_index)
    ckpt: RunCheckpoint | None = sparsifier.run_checkpoint
    start = 0
    loop = (ckpt.resume or {}).get("loop") if ckpt is not None else None
    if loop is not None:  # continue where the checkpoint stopped
        start = int(loop["step"])
        _load_loop_state(sparsifier, model, optimizers, schedulers, loop)
        history = list(loop["history"])
        aug_gen.set_state(loop["aug_rng"])
        for _ in range(start):  # the data position: the batches the first run had taken
            next(batches)
        ckpt.restore_rng()

    def save(next_step: int) -> Any:
        if ckpt is None or ckpt.directory is None or not accelerator.is_main_process:
            return None
        payload = _loop_state(sparsifier, accelerator.unwrap_model(wrapped), optimizers, schedulers, next_step,
                              history, aug_gen)
        return ckpt.save({"method": sparsifier.method, "loop": payload}, next_step, config.steps)

    bar = progress_bar(range(start, config.steps), desc=f"{sparsifier.method} {config.sparsity:.0%}",
                       enabled=sparsifier.show_progress and accelerator.is_main_process, unit="step")
    with stop_requests(ckpt is not None and ckpt.directory is not None) as stop, _removing(taps):
        for step in bar:
            try:
                raw = next(batches)
            except KeyboardInterrupt:  # e.g. from the user's data iterator: the state is that of `step`
                _interrupted(ckpt, save(step), step, config.steps, bar)
            try:
                _train_step(sparsifier, wrapped, teacher, raw, step, n_batches, accelerator, config, optimizers,
                            schedulers, weight_params, device, aug_gen, history, bar, teacher_cache, taps)
            except KeyboardInterrupt:  # mid-update: the state is half-way; the last checkpoint is the one to use
                _interrupted(ckpt, None, step, config.steps, bar)
            if stop.requested:
                _interrupted(ckpt, save(step + 1), step + 1, config.steps, bar)
            if ckpt is not None and ckpt.due(step + 1) and step + 1 < config.steps:
                save(step + 1)
    bar.close()
    save(config.steps)  # an interrupt in the finishing stages resumes after the loop
    model = accelerator.unwrap_model(wrapped)
    model.eval()
    extras: dict[str, Any] = {"steps": config.steps, "calibration_batches": n_batches,
                              "teacher_cached": teacher_cache is not None and not teacher_cache.full}
    if config.feature_weight > 0:
        extras["feature_points"] = points
    return MethodOutcome(extras=extras, history=history)


@contextlib.contextmanager
def _removing(taps: tuple[FeatureTap, FeatureTap] | None) -> Iterator[None]:
    """The feature taps stay on the models only for the loop (not for BatchNorm re-estimation or the user)."""
    try:
        yield
    finally:
        for tap in taps or ():
            tap.remove()


def _interrupted(ckpt: RunCheckpoint | None, saved: Any, step: int, steps: int, bar: Any) -> None:
    bar.close()
    if saved is not None:
        raise Interrupted(f"interrupted at step {step}/{steps}; checkpoint written to {saved}/; "
                          f"{ckpt.how_to_resume()}", Path(saved), step)
    if ckpt is not None and ckpt.last_saved_step is not None:
        raise Interrupted(f"interrupted at step {step}/{steps}; the checkpoint of step {ckpt.last_saved_step} in "
                          f"{ckpt.directory}/ is the latest; {ckpt.how_to_resume()}", ckpt.directory,
                          ckpt.last_saved_step)
    raise Interrupted(f"interrupted at step {step}/{steps}; nothing was saved (pass checkpoint_dir= to be able "
                      "to resume)")


def _loop_state(sparsifier: PTSSparsifier, model: nn.Module, optimizers: list, schedulers: list, step: int,
                history: list, aug_gen: torch.Generator) -> dict[str, Any]:
    counters = {k: getattr(sparsifier, k) for k in sparsifier.resume_attrs}
    return {"step": step, "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "sparsifier": sparsifier.state_dict(), "counters": counters,
            "optimizers": [o.state_dict() for o in optimizers], "schedulers": [s.state_dict() for s in schedulers],
            "history": list(history), "aug_rng": aug_gen.get_state()}


def _load_loop_state(sparsifier: PTSSparsifier, model: nn.Module, optimizers: list, schedulers: list,
                     loop: dict[str, Any]) -> None:
    sparsifier.load_state_dict(loop["sparsifier"])  # masks, thresholds, frozen masks, levels
    for k, v in loop["counters"].items():
        setattr(sparsifier, k, v)
    model.load_state_dict(loop["model"])
    for o, st in zip(optimizers, loop["optimizers"]):
        o.load_state_dict(st)
    for sch, st in zip(schedulers, loop["schedulers"]):
        sch.load_state_dict(st)


class _TeacherCache:
    """The teacher's outputs per calibration batch index, up to ``limit`` bytes (then no new entries)."""

    def __init__(self, limit: int) -> None:
        self.outputs: dict[int, Any] = {}
        self.bytes = 0
        self.limit = limit
        self.full = False

    def get(self, key: int, compute: Any) -> Any:
        if key in self.outputs:
            return self.outputs[key]
        out = compute()
        if not self.full:
            size = _nbytes(out)
            if self.bytes + size > self.limit:
                self.full = True
            else:
                self.outputs[key] = out
                self.bytes += size
        return out


def _nbytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


TEACHER_CACHE_BYTES = 512 * 2**20


def _teacher_cache(config: DistillationConfig, data: CalibrationData, accelerator: Any) -> _TeacherCache | None:
    """A cache when the same batch index always holds the same teacher input (see ``cache_teacher``)."""
    mode = config.cache_teacher
    if mode is False or accelerator.num_processes != 1:
        return None
    if mode == "auto" and (config.augment or config.teacher_mode != "eval" or not data.repeats_identically):
        return None
    return _TeacherCache(TEACHER_CACHE_BYTES)


def _train_step(sparsifier: PTSSparsifier, wrapped: nn.Module, teacher: nn.Module, raw: Any, step: int,
                n_batches: int, accelerator: Any, config: DistillationConfig, optimizers: list, schedulers: list,
                weight_params: list, device: Any, aug_gen: torch.Generator, history: list, bar: Any,
                teacher_cache: _TeacherCache | None = None,
                taps: tuple[FeatureTap, FeatureTap] | None = None) -> None:
    """One optimisation step of the distillation loop."""
    batch = augment_batch(raw, config.augment, aug_gen)

    def run_teacher() -> Any:
        out = forward_batch(teacher, batch, device)
        return out if taps is None else (out, taps[1].take())

    with accelerator.accumulate(wrapped):
        with accelerator.autocast():
            with torch.no_grad():
                if teacher_cache is None:
                    teacher_out = run_teacher()
                else:
                    teacher_out = teacher_cache.get(step % n_batches, run_teacher)
            student_out = forward_batch(wrapped, batch, device)
            if taps is not None:
                teacher_out, teacher_feats = teacher_out
            loss, logs = sparsifier.compute_loss(student_out, teacher_out, epoch=step / n_batches)
            if taps is not None:
                loss, logs = add_feature_loss(loss, logs, taps[0].take(), teacher_feats,
                                              feature_weight_at(config, step / config.steps))
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(
                f"{sparsifier.method}: the loss became {float(loss.detach())} at step {step} (training diverged); "
                f"lower lr (now {config.lr}) or keep student_bn='train'"
            )
        accelerator.backward(loss)
        if config.max_grad_norm is not None and weight_params and accelerator.sync_gradients:
            accelerator.clip_grad_norm_(weight_params, config.max_grad_norm)
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        if accelerator.sync_gradients:
            for sch in schedulers:
                sch.step()
            sparsifier.step()
    logs = {"step": step, "loss": float(loss.detach()), **logs}
    history.append(logs)
    if step % 10 == 0 or step == config.steps - 1:
        bar.set_postfix(_postfix(sparsifier, logs))


def finish_batchnorm(model: nn.Module, data: CalibrationData, accelerator: Any, config: DistillationConfig) -> int:
    """Final BatchNorm re-estimation on the calibration data (when configured)."""
    if not config.bn_recalibration:
        return 0
    device = next(model.parameters()).device
    return recalibrate_batchnorm(model, data, device=device, seed=config.seed, accelerator=accelerator)
