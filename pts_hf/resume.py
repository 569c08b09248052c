"""Checkpoints of a running sparsification, interrupt handling and resume.

A :class:`RunCheckpoint` lives on the sparsifier (``sparsifier.run_checkpoint``) while ``pts_hf.sparsify`` runs
with ``checkpoint_dir=`` / ``resume_from=``. The distillation loop (:mod:`pts_hf.distillation`) writes one every
``every`` steps, after its last step, and when interrupted; UniPTS also writes one after its allocation search.

What a checkpoint holds (``DIR/state.pt``, read with ``torch.load(weights_only=True)``: nothing is unpickled,
plus ``DIR/meta.json`` for people): the student's state dict (weights, masks, thresholds, BatchNorm
statistics), the sparsifier's state dict and loop counters, optimizer and scheduler states, the step, the loss
history, the torch / augmentation RNG states, the search result, the method's config and a fingerprint of the
dense model. Resuming with the same model, data and options ends with exactly the weights of an uninterrupted
run when the calibration data comes in the same order each pass (tensors, lists, ``DataLoader(shuffle=False)``).

Ctrl-C: the first one asks the loop to stop at the end of the current step, write a checkpoint and raise
:class:`Interrupted` (a ``KeyboardInterrupt``) whose message says how to continue; a second one stops at once.
A ``KeyboardInterrupt`` raised while the next batch is fetched (e.g. inside the user's data iterator) also
writes a checkpoint of the last completed step.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pts_hf.version import __version__

__all__ = ["Interrupted", "RunCheckpoint", "model_fingerprint", "read_checkpoint", "stop_requests"]

STATE_FILE = "state.pt"
META_FILE = "meta.json"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run: ``directory`` holds a checkpoint of ``step`` (None if nothing could be saved)."""

    def __init__(self, message: str, directory: Path | None = None, step: int | None = None):
        super().__init__(message)
        self.message, self.directory, self.step = message, directory, step

    def __str__(self) -> str:
        return self.message


@torch.no_grad()
def model_fingerprint(model: nn.Module) -> list[list[Any]]:
    """Names, shapes, dtypes and two sums of every tensor in the state dict: tells whether a resumed run starts
    from the same dense model without hashing every byte."""
    out = []
    for k, v in model.state_dict().items():
        if isinstance(v, torch.Tensor):
            f = v.detach().abs().double() if v.is_complex() else v.detach().double()
            out.append([k, list(v.shape), str(v.dtype), float(f.sum()), float(f.abs().sum())])
    return out


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_checkpoint(directory: str | Path) -> dict[str, Any]:
    """The saved state of ``directory`` (raises ``ValueError`` naming what is wrong)."""
    d = Path(directory)
    path = d / STATE_FILE
    if not d.is_dir():
        raise ValueError(f"resume_from {str(d)!r} is not a folder")
    if not path.is_file():
        raise ValueError(f"resume_from {str(d)!r} holds no {STATE_FILE}: not a pts_hf checkpoint, or the run was "
                         "stopped before its first checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from e


@dataclass
class RunCheckpoint:
    """Where and how often a run saves itself, and (when resuming) what it continues from."""

    directory: Path | None = None
    every: int | None = None
    resume: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    fingerprint: list[list[Any]] = field(default_factory=list)
    command: str | None = None
    search: dict[str, Any] | None = None  # UniPTS search result, kept for every later checkpoint
    last_saved_step: int | None = None

    def check_matches(self, method: str) -> None:
        """A resume must continue the same job: same method, options and dense model."""
        if self.resume is None:
            return
        saved = self.resume.get("meta", {})
        if saved.get("method") != method:
            raise ValueError(f"the checkpoint is of method {saved.get('method')!r}, not {method!r}")
        old, new = saved.get("config", {}), self.config
        differ = sorted(k for k in set(old) | set(new) if k != "pts_hf_version" and old.get(k) != new.get(k))
        if differ:
            raise ValueError("the checkpoint was written with other options: "
                             + ", ".join(f"{k}={old.get(k)!r} (now {new.get(k)!r})" for k in differ)
                             + "; resume with the same arguments")
        if saved.get("fingerprint") != self.fingerprint:
            raise ValueError("the checkpoint was written for another model (its dense weights differ); resume "
                             "with the model the run started from")

    def due(self, next_step: int) -> bool:
        return self.directory is not None and bool(self.every) and next_step % self.every == 0

    def save(self, payload: dict[str, Any], step: int, steps: int) -> Path | None:
        """Write ``payload`` (+ meta) atomically; returns the folder, or None without a ``directory``."""
        if self.directory is None:
            return None
        d = Path(self.directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = {"pts_hf_version": __version__, "method": payload.get("method"), "config": self.config,
                "step": step, "steps": steps, "fingerprint": self.fingerprint, "command": self.command,
                "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        state = {**payload, "meta": meta, "rng": _rng_state(), "search": self.search}
        tmp = d / f".{STATE_FILE}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, d / STATE_FILE)
        text = json.dumps({k: v for k, v in meta.items() if k != "fingerprint"}, indent=2, default=str) + "\n"
        (d / f".{META_FILE}.tmp").write_text(text)
        os.replace(d / f".{META_FILE}.tmp", d / META_FILE)
        self.last_saved_step = step
        return d

    def how_to_resume(self) -> str:
        d = str(self.directory)
        if self.command:
            return f"continue with: {self.command} --resume {d}"
        return f"continue with pts_hf.sparsify(<same arguments>, resume_from={d!r})"

    def restore_rng(self) -> None:
        if self.resume is not None and "rng" in self.resume:
            _set_rng_state(self.resume["rng"])


class _StopFlag:
    def __init__(self) -> None:
        self.requested = False


@contextlib.contextmanager
def stop_requests(enabled: bool = True) -> Iterator[_StopFlag]:
    """While active (main thread only): the first SIGINT sets ``flag.requested`` and the loop stops cleanly at
    the end of its step; a second one raises ``KeyboardInterrupt`` at once."""
    flag = _StopFlag()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.requested:
            raise KeyboardInterrupt
        flag.requested = True
        print("\npts_hf: stopping after this step and writing a checkpoint (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not allowed here (e.g. an embedded interpreter)
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
