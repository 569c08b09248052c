"""Calibration data: turning what a user passes into model-ready batches, and BatchNorm re-estimation.

Accepted ``data``:

* a tensor (or a mapping of tensors, e.g. a tokenizer's output) holding the whole calibration set: split
  into batches of ``batch_size`` along dim 0;
* a ``DataLoader`` or any re-iterable of batches; a batch is a tensor, a tuple/list whose first item is the
  input (labels after it are ignored), or a dict of model keyword arguments (label keys are dropped);
* a map-style dataset of samples (``torch.utils.data.Dataset`` or ``datasets.Dataset`` with a transform): wrapped
  in a ``DataLoader`` of ``batch_size``;
* a one-shot iterator or generator: materialised once, so it can be cycled.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "LABEL_KEYS",
    "CalibrationData",
    "floating_dtype",
    "forward_batch",
    "recalibrate_batchnorm",
    "split_batch",
    "to_device",
]

logger = logging.getLogger("pts_hf")

LABEL_KEYS = ("label", "labels", "label_ids", "target", "targets")
_INPUT_KEYS = ("pixel_values", "input", "inputs", "x", "image", "images", "img", "input_ids")


def _is_sample_dataset(data: Any) -> bool:
    if isinstance(data, DataLoader):
        return False
    if isinstance(data, Dataset) and hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return True
    mod = type(data).__module__ or ""
    return mod.startswith("datasets.") and type(data).__name__ == "Dataset"


def _split_along_batch(data: torch.Tensor | Mapping, batch_size: int) -> list[Any]:
    if isinstance(data, torch.Tensor):
        if data.ndim == 0 or data.shape[0] == 0:
            raise ValueError("calibration data is an empty tensor")
        return list(torch.split(data, batch_size))
    n = None
    for k, v in data.items():
        if isinstance(v, torch.Tensor) and v.ndim > 0:
            if n is not None and v.shape[0] != n:
                raise ValueError(f"calibration dict entries disagree on the batch size (key {k!r})")
            n = v.shape[0]
    if not n:
        raise ValueError("calibration data is a mapping with no non-empty tensors")
    return [{k: (v[i : i + batch_size] if isinstance(v, torch.Tensor) and v.ndim > 0 else v) for k, v in data.items()}
            for i in range(0, n, batch_size)]


def batch_size_of(batch: Any) -> int | None:
    """Samples in one batch: the leading dim of its input tensor (first item of a tuple, first batched tensor of
    a dict); None when there is no such tensor."""
    x = batch[0] if isinstance(batch, (list, tuple)) and batch else batch
    if isinstance(x, Mapping):
        x = next((v for v in x.values() if isinstance(v, torch.Tensor) and v.ndim > 0), None)
    return x.shape[0] if isinstance(x, torch.Tensor) and x.ndim > 0 else None


class CalibrationData:
    """A re-iterable, non-empty view of the user's calibration data as batches."""

    def __init__(self, data: Any, batch_size: int = 64):
        if data is None:
            raise ValueError("this method needs calibration data: pass an iterable of input batches as `data`")
        if isinstance(data, (torch.Tensor, Mapping)):
            self._source: Iterable = _split_along_batch(data, batch_size)
        elif _is_sample_dataset(data):
            if len(data) == 0:
                raise ValueError("calibration dataset is empty")
            self._source = DataLoader(data, batch_size=batch_size, shuffle=False)
        elif isinstance(data, Iterator) or iter(data) is data:
            self._source = list(data)
        elif isinstance(data, Iterable):
            self._source = data
        else:
            raise TypeError(f"calibration data of type {type(data).__name__} is not iterable")
        # tensors split here, one-shot iterators kept as a list, lists and tuples of batches: every pass yields the
        # same batches in the same order (a user's DataLoader or dataset may shuffle or augment)
        self.repeats_identically = isinstance(self._source, (list, tuple))
        self._len = self._known_len()
        if self._len == 0 or (self._len is None and next(iter(self._source), None) is None):
            raise ValueError("calibration data is empty: it yielded no batch")

    def _known_len(self) -> int | None:
        try:
            return len(self._source)  # type: ignore[arg-type]
        except TypeError:
            return None

    def __len__(self) -> int:
        if self._len is None:
            self._len = sum(1 for _ in self._source)
        return self._len

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self._source
        except TypeError as e:
            if "default_collate" in str(e) or "collate" in str(e):
                raise TypeError(
                    "could not batch the calibration dataset's samples; give it a transform that returns tensors "
                    f"(e.g. `dataset.set_transform(...)`) or pass a DataLoader ({e})"
                ) from e
            raise

    def num_samples(self) -> int | None:
        """Samples across all batches (None if a batch's size cannot be told)."""
        if isinstance(self._source, DataLoader):
            try:
                return len(self._source.dataset)  # type: ignore[arg-type]
            except TypeError:
                return None
        total = 0
        for batch in self:
            size = batch_size_of(batch)
            if size is None:
                return None
            total += size
        return total


@functools.lru_cache(maxsize=64)
def _forward_params(cls: type) -> tuple[frozenset[str], str | None]:
    try:
        sig = inspect.signature(cls.forward)
    except (TypeError, ValueError):
        return frozenset(), None
    params = [p for p in sig.parameters.values() if p.name != "self"]
    names = frozenset(p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
    first = next((p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)), None)
    return names, first


def split_batch(batch: Any, model: nn.Module) -> tuple[tuple, dict[str, Any]]:
    """(args, kwargs) for ``model`` from one batch."""
    if isinstance(batch, (list, tuple)):
        if not batch:
            raise ValueError("calibration batch is an empty list/tuple")
        batch = batch[0]
    if isinstance(batch, Mapping):
        items = {k: v for k, v in batch.items() if k not in LABEL_KEYS}
        names, _ = _forward_params(type(model))
        named = {k: v for k, v in items.items() if k in names}
        if named:
            return (), named
        for key in _INPUT_KEYS:
            if key in items:
                return (items[key],), {}
        raise TypeError(
            f"cannot feed a batch with keys {sorted(batch)} to {type(model).__name__}.forward "
            f"(parameters: {sorted(names)}); rename the input key or pass tensors"
        )
    return (batch,), {}


def to_device(obj: Any, device: torch.device | str | None, dtype: torch.dtype | None = None) -> Any:
    """``obj`` (tensors, mappings, lists, tuples of them) moved to ``device``; with ``dtype``, floating tensors
    are also cast to it (integer ids and boolean masks keep theirs)."""
    if device is None and dtype is None:
        return obj
    if isinstance(obj, torch.Tensor):
        if dtype is not None and obj.is_floating_point() and obj.dtype != dtype:
            return obj.to(device=device, dtype=dtype)
        return obj.to(device) if device is not None else obj
    if isinstance(obj, Mapping):
        return {k: to_device(v, device, dtype) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device, dtype) for v in obj)
    return obj


def model_device(model: nn.Module) -> torch.device | None:
    """The device of the model's first parameter (None for a model without parameters)."""
    p = next(model.parameters(), None)
    return None if p is None else p.device


def floating_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of the model's first floating parameter (None for a model without one)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


def _add_noise(args: tuple, std: float, generator: torch.Generator | None) -> tuple:
    out = []
    for a in args:
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            noise = torch.randn(a.shape, generator=generator, dtype=a.dtype).to(a.device)
            a = a + std * noise
        out.append(a)
    return tuple(out)


def forward_batch(model: nn.Module, batch: Any, device: torch.device | str | None = None,
                  noise_std: float = 0.0, generator: torch.Generator | None = None) -> Any:
    """Run ``model`` on one calibration batch (moved to ``device``; floating inputs cast to the model's floating
    dtype, so fp32 data feeds a bf16 / fp16 model)."""
    args, kwargs = split_batch(batch, model)
    dtype = floating_dtype(model)
    args, kwargs = to_device(args, device, dtype), to_device(kwargs, device, dtype)
    if noise_std > 0:
        args = _add_noise(args, noise_std, generator)
    return model(*args, **kwargs)


def _augment_images(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    if "flip" in kind:
        flip = torch.rand(x.shape[0], generator=generator) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1).to(x.device), x.flip(-1), x)
    if "crop" in kind:
        h, w = x.shape[-2:]
        pad = max(1, h // 16)
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
        dy, dx = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=generator))
        x = padded[..., dy : dy + h, dx : dx + w]
    return x


def augment_batch(batch: Any, kind: str | None, generator: torch.Generator) -> Any:
    """The same batch with its image input (a float ``[B, C, H, W]`` tensor, first item of a tuple, or
    ``pixel_values``) randomly flipped / cropped; anything else passes through unchanged."""
    if not kind:
        return batch
    if isinstance(batch, torch.Tensor):
        return _augment_images(batch, kind, generator) if batch.ndim == 4 and batch.is_floating_point() else batch
    if isinstance(batch, (list, tuple)) and batch:
        return type(batch)([augment_batch(batch[0], kind, generator), *batch[1:]])
    if isinstance(batch, Mapping) and "pixel_values" in batch:
        return {**batch, "pixel_values": augment_batch(batch["pixel_values"], kind, generator)}
    return batch


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    data: Iterable,
    device: torch.device | str | None = None,
    max_batches: int | None = None,
    noise_std: float = 0.0,
    seed: int = 0,
    accelerator: Any = None,
) -> int:
    """Re-estimate BatchNorm running statistics on ``data`` (cumulative average over batches).

    Running stats are reset; only the BatchNorm layers run in train mode (dropout etc. stay in eval); gradients
    are off. With several processes, the statistics are averaged across them. Returns the number of batches
    used (0 when the model has no BatchNorm, which is logged, not an error).
    """
    bns = _batchnorms(model)
    if not bns:
        logger.info("no BatchNorm layers: skipping BatchNorm re-estimation")
        return 0
    was_training = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in bns}
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    gen = torch.Generator().manual_seed(seed) if noise_std > 0 else None
    used = 0
    try:
        for batch in data:
            if max_batches is not None and used >= max_batches:
                break
            forward_batch(model, batch, device, noise_std=noise_std, generator=gen)
            used += 1
    finally:
        for m, mom in momenta.items():
            m.momentum = mom
        for m, t in was_training.items():
            m.train(t)
    if accelerator is not None and getattr(accelerator, "num_processes", 1) > 1:
        for m in bns:
            m.running_mean.copy_(accelerator.reduce(m.running_mean, "mean"))
            m.running_var.copy_(accelerator.reduce(m.running_var, "mean"))
    elif accelerator is None and torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        world = torch.distributed.get_world_size()
        for m in bns:
            for buf in (m.running_mean, m.running_var):
                torch.distributed.all_reduce(buf)
                buf.div_(world)
    return used
