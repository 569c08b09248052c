"""Block-local reconstruction: the pruned block's parameters learn to reproduce the dense block's outputs.

The block sees the inputs the pipeline gives it (the pruned model's activations when sequential) and is trained
to output what the *dense* block output on the dense model's activations, so it also corrects the error the blocks
before it left. Masks stay fixed (the parametrizations multiply by them, so pruned weights get no gradient); the
loss is the mean squared error over real tokens (padding left out) divided by the dense outputs' mean square.
Under ``torch.distributed`` every process trains on its own batches and gradients are averaged, so all processes
keep identical weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pts_hf.pipeline.sequential import first_tensor
from pts_hf.pipeline.stats import process_count

__all__ = ["BlockReconstruction", "block_error", "micro_batches", "reconstruct_block"]


@dataclass
class BlockReconstruction:
    """What one block's reconstruction did: relative loss on all batches before / after, and per step."""

    before: float
    after: float
    losses: list[float] = field(default_factory=list)


def _masked_sq_sum(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Σ x² over real tokens: ``mask`` ``[B, T]`` selects them in ``[B, T, ...]``."""
    sq = x.float().pow(2)
    if mask is not None and x.ndim >= 2 and tuple(x.shape[:2]) == tuple(mask.shape):
        sq = sq * mask.to(x.device, torch.float32).reshape(*mask.shape, *([1] * (x.ndim - 2)))
    return sq.sum()


def _batch_size(target: torch.Tensor) -> int:
    return int(target.shape[0]) if target.ndim else 1


def _slice(value: Any, rows: slice, size: int) -> Any:
    """``value`` with every tensor whose first dimension is the batch (``size``) cut to ``rows``."""
    if isinstance(value, torch.Tensor):
        return value[rows] if value.ndim and value.shape[0] == size else value
    if isinstance(value, tuple):
        return tuple(_slice(v, rows, size) for v in value)
    if isinstance(value, list):
        return [_slice(v, rows, size) for v in value]
    if isinstance(value, dict):
        return {k: _slice(v, rows, size) for k, v in value.items()}
    return value


def micro_batches(calls: Sequence[Any], targets: Sequence[torch.Tensor], masks: Sequence[torch.Tensor | None],
                  rows: int | None) -> tuple[list[Any], list[torch.Tensor], list[torch.Tensor | None]]:
    """Cut each batch into pieces of at most ``rows`` samples (None: unchanged). Tensors whose first dimension is
    the batch's are cut, others (shared position embeddings, scalars) passed as they are."""
    if rows is None:
        return list(calls), list(targets), list(masks)
    out_c, out_t, out_m = [], [], []
    for call, y, m in zip(calls, targets, masks):
        size = _batch_size(y)
        for start in range(0, size, rows):
            r = slice(start, min(start + rows, size))
            out_c.append(type(call)(_slice(call.args, r, size), _slice(call.kwargs, r, size)))
            out_t.append(y[r])
            out_m.append(None if m is None else m[r])
    return out_c, out_t, out_m


def _all_reduce_grads(params: Sequence[nn.Parameter]) -> None:
    world = process_count()
    if world < 2:
        return
    for p in params:
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        torch.distributed.all_reduce(g)
        p.grad = g / world


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    if process_count() < 2:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def block_error(block: nn.Module, calls: Sequence[Any], targets: Sequence[torch.Tensor],
                masks: Sequence[torch.Tensor | None]) -> float:
    """Relative squared error of ``block``'s outputs against ``targets`` over the given batches (real tokens;
    summed over processes)."""
    device = targets[0].device if targets else torch.device("cpu")
    return _relative_loss(block, calls, targets, masks, device)


def _relative_loss(block: nn.Module, calls: Sequence[Any], targets: Sequence[torch.Tensor],
                   masks: Sequence[torch.Tensor | None], device: torch.device) -> float:
    num = den = 0.0
    with torch.no_grad():
        for call, y, m in zip(calls, targets, masks):
            out = first_tensor(block(*call.args, **call.kwargs))
            num, den = num + float(_masked_sq_sum(out.float() - y.float(), m)), den + float(_masked_sq_sum(y, m))
    num, den = _all_reduce_sum([num, den], device)
    return num / max(den, 1e-30)


def reconstruct_block(
    block: nn.Module,
    calls: Sequence[Any],
    targets: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor | None],
    *,
    steps: int,
    lr: float,
    train: str = "all",
    generator: torch.Generator | None = None,
    eval_batches: int = 2,
) -> BlockReconstruction:
    """Train ``block``'s floating parameters (``train='all'``) or only its pruned layers' weights
    (``train='weights'``, the parametrizations' ``original`` tensors) for ``steps`` Adam steps with a cosine
    learning rate, one calibration batch per step (``calls[b].args / .kwargs`` → ``targets[b]``). The relative
    error before and after is measured on the first ``eval_batches`` batches; when training did not lower it the
    block's parameters are restored."""
    params = _trainable(block, train)
    device = targets[0].device if targets else torch.device("cpu")
    probe = slice(0, eval_batches)  # the before / after check runs on a few batches: it costs forwards
    before = _relative_loss(block, calls[probe], targets[probe], masks[probe], device)
    if steps <= 0 or not params:
        return BlockReconstruction(before, before)
    flags = {p: p.requires_grad for p in block.parameters()}
    for p in block.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    saved = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    ref = [float(_masked_sq_sum(y, m)) for y, m in zip(targets, masks)]
    scale = max(sum(ref) / max(len(ref), 1), 1e-30)
    order = torch.randperm(len(calls), generator=generator).tolist()
    losses = []
    try:
        with torch.enable_grad():
            for s in range(steps):
                b = order[s % len(order)]
                call = calls[b]
                out = first_tensor(block(*call.args, **call.kwargs))
                loss = _masked_sq_sum(out.float() - targets[b].float(), masks[b]) / scale
                opt.zero_grad(set_to_none=True)
                loss.backward()
                _all_reduce_grads(params)
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
            p.grad = None
    after = _relative_loss(block, calls[probe], targets[probe], masks[probe], device)
    if not after < before:  # training did not help (lr too high for this block): keep the one-shot weights
        with torch.no_grad():
            for p, old in zip(params, saved):
                p.copy_(old)
        after = before
    return BlockReconstruction(before, after, losses)


def _trainable(block: nn.Module, train: str) -> list[nn.Parameter]:
    if train == "weights":
        from torch.nn.utils import parametrize

        return [m.parametrizations[name].original for m in block.modules() if parametrize.is_parametrized(m)
                for name in m.parametrizations if m.parametrizations[name].original.is_floating_point()]
    return [p for p in block.parameters() if p.is_floating_point()]
