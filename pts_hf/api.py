"""The one-call API: ``pts_hf.sparsify(model, data, method=..., sparsity=...)``."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from pts_hf.calibration import CalibrationData
from pts_hf.checkpoint.io import RECORD_ATTR
from pts_hf.checkpoint.output import check_writable
from pts_hf.config import SparsityConfig
from pts_hf.ops.allocation import NEEDS_ACTIVATIONS
from pts_hf.record import CalibrationInfo, RunRecord
from pts_hf.resume import Interrupted, RunCheckpoint, model_fingerprint, read_checkpoint
from pts_hf.sparsifiers import get_sparsifier_class
from pts_hf.sparsifiers.base import check_finite_weights
from pts_hf.targets import discover_targets

__all__ = ["SparsifyResult", "sparsify"]

DEFAULT_CHECKPOINT_EVERY = 50


@dataclass
class SparsifyResult:
    """What :func:`sparsify` returns: the sparse model, the config it was made with, and the run record."""

    model: nn.Module
    config: SparsityConfig
    record: RunRecord

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def target_sparsity(self) -> float:
        return self.config.sparsity

    @property
    def global_sparsity(self) -> float:
        return self.record.global_sparsity

    @property
    def layer_sparsity(self) -> dict[str, float]:
        return self.record.layer_sparsity

    @property
    def layer_numel(self) -> dict[str, int]:
        return self.record.layer_numel

    @property
    def seconds(self) -> float:
        return float(self.record.seconds or 0.0)

    def summary(self, max_rows: int | None = None) -> str:
        """A per-layer table as text."""
        rows = list(self.layer_sparsity.items())
        width = max([len("tensor"), *(len(k) for k, _ in rows)])
        lines = [f"{'tensor':<{width}}  {'numel':>10}  {'sparsity':>8}"]
        shown = rows if max_rows is None else rows[:max_rows]
        lines += [f"{k:<{width}}  {self.layer_numel[k]:>10}  {v:>8.4f}" for k, v in shown]
        if len(shown) < len(rows):
            lines.append(f"... {len(rows) - len(shown)} more")
        lines.append(f"global {self.global_sparsity:.6f} (target {self.target_sparsity}) "
                     f"method={self.method} in {self.seconds:.1f}s")
        return "\n".join(lines)

    def save_pretrained(self, save_directory: str | Path, format: str = "dense",
                        metrics: dict[str, float] | None = None) -> Path:
        """Save the sparse model in ``format`` (a name in ``pts_hf.checkpoint.FORMATS``: ``"dense"``, plain
        ``from_pretrained`` loads it; ``"bitmask"``: compressed) with a ``sparsity_config.json`` sidecar (the
        run record)."""
        from pts_hf.checkpoint import save_sparse

        return save_sparse(self.model, save_directory, format=format, record=self.record, metrics=metrics)

    def push_to_hub(self, repo_id: str, format: str = "dense", *, token: str | None = None,
                    private: bool | None = None, metrics: dict[str, float] | None = None, api: Any = None) -> str:
        """Save to a temporary folder and upload it to ``repo_id`` with a generated model card."""
        import tempfile

        from pts_hf.hub import push_to_hub

        with tempfile.TemporaryDirectory(prefix="pts_hf-push-") as tmp:
            self.save_pretrained(tmp, format=format, metrics=metrics)
            return push_to_hub(tmp, repo_id, token=token, private=private, api=api)

    def __repr__(self) -> str:
        return (f"SparsifyResult(method={self.method!r}, target={self.target_sparsity}, "
                f"global_sparsity={self.global_sparsity:.6f}, layers={len(self.layer_sparsity)}, "
                f"seconds={self.seconds:.2f})")


def _training_modes(model: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


def _restore_training_modes(model: nn.Module, modes: dict[str, bool]) -> None:
    """Put every submodule back in the train/eval mode it had (matched by name: the work copy's names are the
    input's, parametrization containers aside)."""
    for name, m in model.named_modules():
        if name in modes:
            m.training = modes[name]


def _run_checkpoint(model: nn.Module, config: SparsityConfig, method: str, checkpoint_dir: str | Path | None,
                    every: int | None, resume_from: str | Path | None) -> RunCheckpoint | None:
    """Checked before any work: the checkpoint options, and that a resumed checkpoint is of this very job."""
    if every is not None and (not isinstance(every, int) or isinstance(every, bool) or every < 1):
        raise ValueError(f"checkpoint_every must be a positive integer, got {every!r}")
    if checkpoint_dir is None and resume_from is None:
        if every is not None:
            raise ValueError("checkpoint_every needs checkpoint_dir (the folder to write checkpoints to)")
        return None
    resume = read_checkpoint(resume_from) if resume_from is not None else None
    directory = Path(checkpoint_dir if checkpoint_dir is not None else resume_from)  # type: ignore[arg-type]
    check_writable(directory, "checkpoint_dir")  # an OutputLocationError (a ValueError) before any work
    ckpt = RunCheckpoint(directory, every or DEFAULT_CHECKPOINT_EVERY, resume, config.to_dict(),
                         model_fingerprint(model))
    ckpt.check_matches(method)
    return ckpt


def _resolve_config(config: SparsityConfig | None, method: str | None, sparsity: float | None,
                    allocation: str | None, seed: int | None, targets: list[str] | None, ignore: list[str] | None,
                    options: dict[str, Any]) -> SparsityConfig:
    """The run's config: ``config`` as given (then nothing else may set options), or built from the keywords."""
    if config is not None:
        if not isinstance(config, SparsityConfig) or not config.method:
            raise TypeError(f"config must be a method's config (e.g. pts_hf.FCPTSConfig(...)), got "
                            f"{type(config).__name__}")
        given = {k: v for k, v in {"sparsity": sparsity, "allocation": allocation, "seed": seed, "targets": targets,
                                   "ignore": ignore, **options}.items() if v is not None}
        if given:
            raise TypeError(f"pass the options in config= or as keywords, not both (got {sorted(given)} too)")
        if method is not None and method.lower() != config.method:
            raise ValueError(f"method {method!r} contradicts config, a {type(config).__name__} ({config.method!r})")
        get_sparsifier_class(config.method)
        return config
    cls = get_sparsifier_class("magnitude" if method is None else method)
    if allocation is not None:
        options["allocation"] = allocation
    return cls.config_class.from_options(sparsity=0.5 if sparsity is None else sparsity,
                                         seed=0 if seed is None else seed, targets=targets, ignore=ignore, **options)


def sparsify(
    model: nn.Module,
    data: Any = None,
    method: str | None = None,
    sparsity: float | None = None,
    allocation: str | None = None,
    seed: int | None = None,
    *,
    config: SparsityConfig | None = None,
    inplace: bool = False,
    targets: list[str] | None = None,
    ignore: list[str] | None = None,
    accelerator: Any = None,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume_from: str | Path | None = None,
    **options: Any,
) -> SparsifyResult:
    """Sparsify ``model`` to exactly ``sparsity`` zeros over its targeted weights.

    Args:
        model: a trained dense model (CNN, ViT, HF transformer, …).
        data: calibration inputs (see :mod:`pts_hf.calibration` for the accepted forms); labels are never used.
        method: a registered method (``pts_hf.SPARSIFIERS``); default ``"magnitude"``.
        sparsity: global target in [0, 1); default 0.5.
        allocation: per-layer allocation (initial allocation for learned methods); None = the method's default
            (``erk`` for magnitude / FCPTS / UniPTS, ``uniform`` for Wanda / SparseGPT, ``l2norm`` for POT).
        seed: seed for every random choice (default 0); the global torch RNG is neither read nor reset.
        config: a method's config object instead of ``method`` and the option keywords, e.g.
            ``FCPTSConfig(sparsity=0.9, steps=300)`` or ``SparsityConfig.from_json(open(sidecar).read())`` (replays
            a saved run).
        inplace: modify ``model`` itself instead of a deep copy.
        targets / ignore: layer patterns (see :mod:`pts_hf.targets`).
        accelerator: an ``accelerate.Accelerator`` to use (the distilling methods create one from
            ``mixed_precision`` / ``gradient_accumulation_steps`` otherwise, and refuse one that contradicts them;
            the one-shot and layer-wise methods use ``torch.distributed`` directly when it is initialised).
        progress: show progress (a bar on a terminal, a line every 30 s otherwise); a UI setting, valid for
            every method.
        checkpoint_dir: a folder where the learned methods save their state (see :mod:`pts_hf.resume`) every
            ``checkpoint_every`` steps (default 50), after the loop, and on Ctrl-C.
        resume_from: a checkpoint folder of an interrupted run with the same model, data and options: the run
            continues from it and ends with the weights an uninterrupted run gives. New checkpoints go to
            ``checkpoint_dir`` or, without one, to ``resume_from``.
        **options: the method's own options (its config dataclass fields).

    Every argument is checked before any work starts; on bad input the model is left untouched.
    """
    config = _resolve_config(config, method, sparsity, allocation, seed, targets, ignore, options)
    cls = get_sparsifier_class(config.method)
    found = discover_targets(model, config.targets, config.ignore)
    check_finite_weights(found)
    sparsifier = cls(config)
    sparsifier.show_progress = bool(progress)
    run_ckpt = _run_checkpoint(model, config, cls.method, checkpoint_dir, checkpoint_every, resume_from)
    if run_ckpt is not None:
        sparsifier.run_checkpoint = run_ckpt
    calib = CalibrationData(data, config.batch_size) if (data is not None or sparsifier.requires_data()) else None

    start = time.perf_counter()
    modes = _training_modes(model)
    work = model if inplace else copy.deepcopy(model)
    if config.allocation in NEEDS_ACTIVATIONS:  # e.g. OWL: scores from the dense model's activations first
        if calib is None:
            calib = CalibrationData(data, config.batch_size)
        from pts_hf.pipeline import activation_scores

        work_targets = discover_targets(work, config.targets, config.ignore)
        sparsifier.activation_scores = activation_scores(work, work_targets, calib,
                                                         device=getattr(config, "device", None))
    sparsifier.prepare(work)
    try:
        outcome = sparsifier.calibrate(work, calib, accelerator)
    except BaseException as e:
        sparsifier.remove()
        _restore_training_modes(work, modes)
        if isinstance(e, KeyboardInterrupt) and not isinstance(e, Interrupted) and run_ckpt is not None \
                and run_ckpt.last_saved_step is not None:  # outside the loop (search, BatchNorm re-estimation)
            raise Interrupted(f"interrupted; the checkpoint of step {run_ckpt.last_saved_step} in "
                              f"{run_ckpt.directory}/ is the latest; {run_ckpt.how_to_resume()}",
                              run_ckpt.directory, run_ckpt.last_saved_step) from e
        raise
    sparsifier.squash_mask()
    _restore_training_modes(work, modes)  # every method returns the model in the mode(s) it came in
    seconds = time.perf_counter() - start
    calibration = CalibrationInfo(seed=config.seed)
    if calib is not None:
        calibration.batches, calibration.samples = len(calib), calib.num_samples()
    record = sparsifier.run_record(outcome, seconds=seconds, calibration=calibration)
    setattr(work, RECORD_ATTR, record)  # save_sparse(result.model, ...) describes this very run
    return SparsifyResult(model=work, config=config, record=record)
