"""The sequential calibration pipeline: one unit (block) at a time, statistics → method → propagation.

1. A dense forward of the first batch records which units run, in which order, and whether each unit's output is
   the next one's input with the same extra arguments (attention masks, position embeddings): consecutive
   such units form a *chained run*. Caches are off (``use_cache=False``).
2. Per run, the inputs of its first unit are captured once per batch (a forward that stops there: through the
   already-pruned model when ``sequential=True``, from the dense model when ``sequential=False``).
3. Per unit: its layers' statistics are collected while it runs on the captured inputs, summed across
   processes, handed to ``process`` (which prunes), and the unit's outputs (pruned when sequential, dense
   otherwise) become the next unit's inputs. Only the current unit and its activations need be on ``device``.

Units that run more than once per forward, or not in a chain, are calibrated with full forwards instead.
Every hook is removed on exit, also after an error.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pts_hf.calibration import _forward_params, floating_dtype, model_device, split_batch, to_device
from pts_hf.layers import gemm_layout
from pts_hf.pipeline.blocks import Unit, find_units
from pts_hf.pipeline.hooks import HookOwner, StopForward
from pts_hf.pipeline.stats import LayerStats, process_count
from pts_hf.targets import Target

__all__ = ["PipelineReport", "run_pipeline"]

logger = logging.getLogger("pts_hf")

ProcessFn = Callable[[list[Target], dict[str, LayerStats]], None]
# (unit, its inputs per batch, the dense block's outputs per batch, token masks per batch) → trains the unit
ReconstructFn = Callable[["Unit", list["_Call"], list[torch.Tensor], list["torch.Tensor | None"]], None]


@dataclass
class PipelineReport:
    block_source: str
    units: list[str]
    runs: list[list[str]]
    unused: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    batches: int = 0


@dataclass
class _Call:
    args: tuple
    kwargs: dict[str, Any]
    output: Any = None


def first_tensor(out: Any) -> Any:
    """A module output's main tensor: itself, the first item of a tuple / list, the first value of a mapping."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out:
        return out[0]
    if isinstance(out, Mapping) and out:
        return next(iter(out.values()))
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and (
            a is b or (a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except Exception:  # objects without a usable ==
        return a is b


def _chains(prev: _Call, cur: _Call, first: _Call) -> bool:
    """``cur`` takes ``prev``'s output as its first input and the same other arguments as the run's first unit."""
    if not cur.args or not _same(first_tensor(prev.output), cur.args[0]):
        return False
    if len(cur.args) != len(first.args) or set(cur.kwargs) != set(first.kwargs):
        return False
    return all(_same(x, y) for x, y in zip(cur.args[1:], first.args[1:])) and \
        all(_same(cur.kwargs[k], first.kwargs[k]) for k in cur.kwargs)


def _model_inputs(model: nn.Module, batch: Any, device: torch.device | None) -> tuple[tuple, dict]:
    args, kwargs = split_batch(batch, model)  # label keys are dropped there
    if "use_cache" in _forward_params(type(model))[0]:
        kwargs["use_cache"] = False
    dtype = floating_dtype(model)  # fp32 data feeds a bf16 / fp16 model
    return to_device(args, device, dtype), to_device(kwargs, device, dtype)


def _token_mask(model: nn.Module, batch: Any) -> torch.Tensor | None:
    """The batch's ``[B, T]`` attention mask (padding tokens are left out of the statistics), if it has one."""
    mask = split_batch(batch, model)[1].get("attention_mask")
    return mask if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None


def _forward(model: nn.Module, batch: Any) -> None:
    args, kwargs = _model_inputs(model, batch, model_device(model))
    with contextlib.suppress(StopForward):
        model(*args, **kwargs)


class _Pipeline:
    def __init__(self, model: nn.Module, targets: list[Target], batches: list[Any], statistics: frozenset[str],
                 process: ProcessFn, sequential: bool, device: torch.device | None, stats_dtype: torch.dtype,
                 progress: bool, on_unused: Callable[[list[Target]], None] | None,
                 reconstruct: ReconstructFn | None = None, reconstruct_to: str = "dense"):
        self.model, self.targets, self.batches = model, targets, batches
        self.reconstruct, self.reconstruct_to = reconstruct, reconstruct_to
        self.statistics, self.process, self.sequential = statistics, process, sequential
        self.device, self.stats_dtype, self.progress, self.on_unused = device, stats_dtype, progress, on_unused
        self.units, source = find_units(model, targets)
        self.report = PipelineReport(source, [u.name for u in self.units], [], batches=len(batches))
        self.token_masks = [_token_mask(model, b) for b in batches]

    # --- planning -------------------------------------------------------------------------------------------
    def plan(self) -> list[tuple[str, list[Unit]]]:
        """Runs of units: ("chain", [u0, u1, ...]) or ("full", [u]) in execution order."""
        calls: dict[int, list[_Call]] = {id(u): [] for u in self.units}
        used: set[int] = set()
        order: list[Unit] = []
        with HookOwner() as hooks:
            for u in self.units:
                def pre(mod, args, kwargs, u=u):
                    if not calls[id(u)]:
                        order.append(u)
                    calls[id(u)].append(_Call(args, kwargs))

                def post(mod, args, kwargs, out, u=u):
                    calls[id(u)][-1].output = out

                hooks.pre(u.module, pre)
                hooks.post(u.module, post)
            for t in self.targets:
                hooks.pre(t.module, lambda mod, a, k, t=t: used.add(id(t.module)))
            with torch.no_grad():
                _forward(self.model, self.batches[0])
        unused = [t for t in self.targets if id(t.module) not in used]
        if unused:
            names = [t.tensor_fqn for t in unused]
            self.report.unused = names
            warnings.warn(f"no calibration activations reach {names}: left dense; the other layers carry the "
                          "global target", stacklevel=4)
            if self.on_unused is not None:
                self.on_unused(unused)
            for u in self.units:
                u.targets = [t for t in u.targets if id(t.module) in used]
        runs: list[tuple[str, list[Unit]]] = []
        for u in order:
            cs = calls[id(u)]
            if len(cs) != 1:
                runs.append(("full", [u]))
                continue
            if runs and runs[-1][0] == "chain":
                run = runs[-1][1]
                if _chains(calls[id(run[-1])][0], cs[0], calls[id(run[0])][0]):
                    run.append(u)
                    continue
            runs.append(("chain", [u]))
        # a unit that never ran itself (e.g. a ModuleList whose items the parent calls) but whose layers did:
        # calibrate its layers from full forwards
        runs += [("full", [u]) for u in self.units if not calls[id(u)] and u.targets]
        # drop runs (and trailing units) that hold no targets: nothing to calibrate there
        cleaned = []
        for kind, run in runs:
            last = max((i for i, u in enumerate(run) if u.targets), default=-1)
            if last >= 0:
                cleaned.append((kind, run[: last + 1]))
        self.report.runs = [[u.name for u in run] for _, run in cleaned]
        if self.reconstruct is not None:
            self._check_comparable(cleaned, calls)
        return cleaned

    @staticmethod
    def _check_comparable(runs: list[tuple[str, list[Unit]]], calls: dict[int, list[_Call]]) -> None:
        """Block reconstruction compares a unit's output with the dense unit's: it must be a tensor (or a
        tuple / dict whose first entry is one), not e.g. a cache object."""
        for kind, run in runs:
            for u in run:
                if kind != "chain" or not u.targets:
                    continue
                out = first_tensor(calls[id(u)][0].output)
                if not isinstance(out, torch.Tensor):
                    raise TypeError(
                        f"block {u.name or type(u.module).__name__!r} returns {type(out).__name__} as its output, "
                        "which cannot be compared with the dense block's: block reconstruction needs a tensor (or "
                        "a tuple / dict starting with one); pass the block's tensor output or turn reconstruction "
                        "off (recon_steps=0)")

    # --- stages ---------------------------------------------------------------------------------------------
    def _new_stats(self, targets: list[Target]) -> dict[str, LayerStats]:
        return {t.tensor_fqn: LayerStats(t.module, gemm_layout(t.module, t.weight), self.statistics,
                                         self.stats_dtype) for t in targets}

    def _stat_hooks(self, hooks: HookOwner, targets: list[Target], stats: dict[str, LayerStats],
                    mask_ref: list[Any]) -> None:
        for t in targets:
            st = stats[t.tensor_fqn]

            def pre(mod, args, kwargs, st=st):
                x = args[0] if args else next(iter(kwargs.values()))
                st.add(x, mask_ref[0])

            hooks.pre(t.module, pre)

    def capture(self, unit: Unit) -> list[_Call]:
        """The first unit's inputs for every batch, from a forward that stops at it."""
        captured: list[_Call] = []

        def pre(mod, args, kwargs):
            captured.append(_Call(to_device(args, self.device), to_device(kwargs, self.device)))
            raise StopForward

        with HookOwner() as hooks:
            hooks.pre(unit.module, pre)
            with torch.no_grad():
                for b in self.batches:
                    _forward(self.model, b)
        if len(captured) != len(self.batches):
            raise RuntimeError(f"the forward pass did not reach {unit.name or type(unit.module).__name__} "
                               "for every calibration batch")
        return captured

    def full(self, units: list[Unit]) -> None:
        """Statistics of ``units``' layers from full forwards of the model, then each unit is processed."""
        targets = [t for u in units for t in u.targets]
        stats = self._new_stats(targets)
        mask_ref: list[Any] = [None]
        with HookOwner() as hooks, torch.no_grad():
            self._stat_hooks(hooks, targets, stats, mask_ref)
            for b, mask in zip(self.batches, self.token_masks):
                mask_ref[0] = mask
                _forward(self.model, b)
        for u in units:
            self._process(u, {t.tensor_fqn: stats[t.tensor_fqn] for t in u.targets})

    @staticmethod
    def _advance(inputs: list[_Call], b: int, out: Any) -> None:
        """Batch ``b``'s input becomes the unit's output (same other arguments); the old activation is freed at
        once, so a block's inputs and outputs never both sit in memory in full."""
        call = inputs[b]
        inputs[b] = _Call((first_tensor(out), *call.args[1:]), call.kwargs)

    def chain(self, run: list[Unit], inputs: list[_Call], dense: list[_Call] | None = None) -> None:
        """Calibrate a chained run. With ``reconstruct``, ``dense`` carries the dense model's activations beside
        the (pruned) ``inputs``: each unit's dense outputs are its reconstruction targets and the next dense
        inputs."""
        inputs = list(inputs)
        dense = list(dense) if dense is not None else None
        for i, unit in enumerate(run):
            start = time.perf_counter()
            moved = self._to_device(unit)
            stats = self._new_stats(unit.targets)
            mask_ref: list[Any] = [None]
            last = i + 1 == len(run)
            recon = self.reconstruct is not None and bool(unit.targets)
            rerun = self.sequential and bool(unit.targets) and not last  # outputs come from the pruned unit
            wanted: list[torch.Tensor] = []  # reconstruction targets: the dense unit's outputs on dense inputs
            if dense is not None:  # the unit is still dense: its outputs on dense inputs are the targets
                with torch.no_grad():
                    for b in range(len(dense)):
                        out = first_tensor(unit.module(*dense[b].args, **dense[b].kwargs))
                        wanted.append(out)
                        self._advance(dense, b, out)
            with HookOwner() as hooks, torch.no_grad():
                self._stat_hooks(hooks, unit.targets, stats, mask_ref)
                for b, mask in enumerate(self.token_masks):
                    mask_ref[0] = mask
                    out = unit.module(*inputs[b].args, **inputs[b].kwargs)
                    if recon and dense is None:  # independent mode: the inputs are the dense activations
                        wanted.append(first_tensor(out))
                    if not (rerun or last or recon):  # these (dense or target-free) outputs are the next inputs
                        self._advance(inputs, b, out)
                    del out
            if unit.targets:
                self._process(unit, stats)
            del stats
            if recon:
                self.reconstruct(unit, inputs, wanted, self.token_masks)
                if not (rerun or last):  # independent mode: the next inputs are the dense outputs
                    for b, out in enumerate(wanted):
                        self._advance(inputs, b, out)
            del wanted
            if rerun:
                with torch.no_grad():
                    for b in range(len(inputs)):
                        self._advance(inputs, b, unit.module(*inputs[b].args, **inputs[b].kwargs))
            if moved is not None:
                unit.module.to(moved)
            self.report.seconds[unit.name] = time.perf_counter() - start

    def _process(self, unit: Unit, stats: dict[str, LayerStats]) -> None:
        for st in stats.values():
            st.all_reduce()
            st.finalize()
        self.process(unit.targets, stats)

    def _to_device(self, unit: Unit) -> torch.device | None:
        here = model_device(unit.module)
        if self.device is None or here is None or here == self.device:
            return None
        unit.module.to(self.device)
        return here

    def run(self) -> PipelineReport:
        runs = self.plan()
        bar = _progress(sum(len(r) for _, r in runs), self.progress)
        dense_inputs: dict[int, list[_Call]] = {}
        teacher_inputs: dict[int, list[_Call]] = {}
        if self.reconstruct is not None and self.sequential and self.reconstruct_to == "dense":
            # the dense model's inputs of every chain, up front
            for kind, run in runs:
                if kind == "chain":
                    teacher_inputs[id(run[0])] = self.capture(run[0])
            first = runs[0] if runs else None
            if first is not None and first[0] == "chain":  # nothing is pruned before it: same activations
                dense_inputs[id(first[1][0])] = teacher_inputs[id(first[1][0])]
        if not self.sequential:  # every unit sees the dense model: capture and collect before pruning anything
            for kind, run in runs:
                if kind == "chain":
                    dense_inputs[id(run[0])] = self.capture(run[0])
            full = [run[0] for kind, run in runs if kind == "full"]
            if full:
                self.full(full)
                bar.update(len(full))
            runs = [(kind, run) for kind, run in runs if kind == "chain"]
        for kind, run in runs:
            if kind == "full":
                self.full(run)
            else:
                inputs = dense_inputs.pop(id(run[0]), None) or self.capture(run[0])
                self.chain(run, inputs, teacher_inputs.pop(id(run[0]), None))
            bar.update(len(run))
        bar.close()
        return self.report


def _progress(total: int, enabled: bool) -> Any:
    from pts_hf.progress import progress_bar

    return progress_bar(total=total, desc="blocks", enabled=enabled, unit="block")


def _shard(batches: list[Any]) -> list[Any]:
    world = process_count()
    if world > 1:
        rank = torch.distributed.get_rank()
        mine = batches[rank::world]
        if not mine:
            raise ValueError(f"{len(batches)} calibration batch(es) for {world} processes: each needs at least one")
        return mine
    return batches


def run_pipeline(
    model: nn.Module,
    targets: list[Target],
    data: Any,
    statistics: frozenset[str],
    process: ProcessFn,
    *,
    sequential: bool = True,
    device: torch.device | str | None = None,
    stats_dtype: torch.dtype = torch.float32,
    progress: bool = True,
    on_unused: Callable[[list[Target]], None] | None = None,
    reconstruct: ReconstructFn | None = None,
    reconstruct_to: str = "dense",
) -> PipelineReport:
    """Calibrate ``targets`` of ``model`` unit by unit on ``data`` (an iterable of batches).

    ``process(targets, stats)`` is called once per unit with the unit's targets and their finished
    :class:`~pts_hf.pipeline.stats.LayerStats`; it prunes them (in place, e.g. through their masks). With
    ``sequential=True`` later units see the pruned earlier ones; with False every unit sees dense activations.
    Under ``torch.distributed`` each process takes every world-size-th batch and the statistics are summed, so all
    processes make the same decisions. The model runs in eval mode and is returned in the mode it came in.

    ``reconstruct(unit, inputs, dense_outputs, token_masks)``, when given, is called after ``process`` for every
    unit of a chained run: the dense model's activations are carried beside the pruned ones, and
    ``dense_outputs`` are what the unit output, still dense, on them (block-local reconstruction targets).
    ``reconstruct_to='local'`` uses the unit's dense outputs on its own (pruned-model) inputs instead: no dense
    activations are carried, at the price of not correcting the earlier blocks' error.
    """
    if reconstruct_to not in ("dense", "local"):
        raise ValueError(f"reconstruct_to must be 'dense' or 'local', got {reconstruct_to!r}")
    batches = _shard(list(data))
    if not batches:
        raise ValueError("calibration data is empty")
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        pipe = _Pipeline(model, targets, batches, frozenset(statistics), process, sequential,
                         None if device is None else torch.device(device), stats_dtype, progress, on_unused,
                         reconstruct, reconstruct_to)
        report = pipe.run()
    finally:
        for m, mode in modes.items():
            m.train(mode)
    logger.info("pts_hf pipeline: %d unit(s) in %d run(s) (%s)", len(report.units), len(report.runs),
                report.block_source)
    return report
