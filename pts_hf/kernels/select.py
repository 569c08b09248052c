"""Choosing a kernel per layer: a pure choice function over measured timings, and the timing loop that feeds it.

The choice is kept apart from the measurement so that a test can inject timings and check the one rule that
matters: a sparse kernel is chosen only when it measured faster than dense (by ``margin``), never when slower.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

import torch

__all__ = ["DENSE", "choose_kernel", "time_candidates"]

DENSE = "dense"


def choose_kernel(timings: Mapping[str, float], margin: float = 0.05) -> str:
    """The fastest kernel in ``timings`` (name -> median seconds), or ``"dense"`` unless one beats it.

    A non-dense kernel is chosen only if its time is below ``(1 - margin) ×`` the dense time, so noise of a few
    per cent never turns a layer slower than dense. Kernels whose timing is missing, NaN or infinite (failed to
    run) are never chosen.

    Raises:
        ValueError: ``timings`` has no ``"dense"`` entry, or ``margin`` is outside [0, 1).
    """
    if DENSE not in timings:
        raise ValueError(f"timings must include {DENSE!r} (the baseline every kernel is compared with); "
                         f"got {sorted(timings)}")
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must be in [0, 1), got {margin}")
    dense = float(timings[DENSE])
    best, best_t = DENSE, dense
    for name, t in timings.items():
        t = float(t)
        if name == DENSE or t != t or t == float("inf") or t <= 0.0:
            continue
        if t < dense * (1.0 - margin) and t < best_t:
            best, best_t = name, t
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_candidates(
    candidates: Mapping[str, Callable[[], object]],
    repeats: int = 7,
    warmup: int = 2,
    device: torch.device | str = "cpu",
    stat: str = "min",
) -> dict[str, float]:
    """Wall time (seconds) of each callable, interleaved (the order reversed every round) so that load changes
    and cache warmth hit every candidate alike.

    ``stat="min"`` (default) reports the fastest run: on a shared machine other processes only ever add time, so
    the minimum estimates the kernel's own cost best; ``"median"`` the median. ``warmup`` untimed rounds come
    first. A candidate that raises gets ``inf`` (never chosen).
    """
    if stat not in ("min", "median"):
        raise ValueError(f"stat must be 'min' or 'median', got {stat!r}")
    device = torch.device(device)
    runs: dict[str, list[float]] = {k: [] for k in candidates}
    alive = dict(candidates)
    with torch.inference_mode():
        for i in range(warmup + repeats):
            order = list(alive.items())
            for name, fn in order if i % 2 == 0 else order[::-1]:
                try:
                    _sync(device)
                    start = time.perf_counter()
                    fn()
                    _sync(device)
                    elapsed = time.perf_counter() - start
                except (RuntimeError, NotImplementedError, TypeError, ValueError):
                    alive.pop(name)
                    runs[name] = [float("inf")]
                    continue
                if i >= warmup:
                    runs[name].append(elapsed)
    reduce = min if stat == "min" else statistics.median
    return {k: (reduce(v) if v else float("inf")) for k, v in runs.items()}
