"""Per-layer sparsity allocation and the exact global projection.

Every allocation takes the layers' weights (or their shapes) and a global target sparsity ``s`` (fraction of
zeros over all the given weights) and returns one sparsity per layer. ``exact_counts`` turns any list of
per-layer sparsities into integer zero counts whose sum is exactly ``round(s * N)``; ``exact_projection``
picks masks from arbitrary per-element scores so that the global number of zeros is exactly ``round(s * N)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

__all__ = [
    "ALLOCATIONS",
    "NEEDS_ACTIVATIONS",
    "allocate",
    "erk",
    "exact_counts",
    "exact_projection",
    "global_magnitude",
    "l2norm",
    "lamp",
    "lamp_scores",
    "owl",
    "regrow",
    "regrow_allocation",
    "uniform",
]


def _check_sparsity(sparsity: float) -> float:
    s = float(sparsity)
    if not (0.0 <= s < 1.0) or math.isnan(s):
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    return s


def uniform(shapes: Sequence[torch.Size | tuple[int, ...]], sparsity: float) -> list[float]:
    """The same sparsity in every layer."""
    s = _check_sparsity(sparsity)
    return [s] * len(shapes)


def erk(shapes: Sequence[torch.Size | tuple[int, ...]], sparsity: float, power: float = 1.0) -> list[float]:
    """Erdős–Rényi-Kernel allocation (Evci et al. 2020): density ∝ (Σ dims / Π dims) ** power.

    Layers whose density would exceed 1 are made dense and the budget is re-solved over the rest, until every
    density is ≤ 1. ``power=1`` is the RigL / FCPTS-code setting; ``power=0`` is uniform.
    """
    s = _check_sparsity(sparsity)
    numels = [math.prod(sh) for sh in shapes]
    raw = [(sum(sh) / math.prod(sh)) ** power if math.prod(sh) else 0.0 for sh in shapes]
    budget = (1.0 - s) * sum(numels)  # weights to keep
    dense: set[int] = set()
    while True:
        free = [i for i in range(len(shapes)) if i not in dense]
        left = budget - sum(numels[i] for i in dense)
        denom = sum(raw[i] * numels[i] for i in free)
        eps = left / denom if denom > 0 else 0.0
        over = [i for i in free if eps * raw[i] > 1.0]
        if not over:
            break
        dense.update(over)
    return [0.0 if i in dense else min(1.0, max(0.0, 1.0 - eps * raw[i])) for i in range(len(shapes))]


def round_zeros(x: float) -> int:
    """Nearest integer of a summed zero count, as ``round(s·N)`` of the global target would give it: float noise
    from adding per-layer levels (30000.500000001 for 0.5·60001) must not tip a half-way tie."""
    return round(round(x, 6))


def exact_counts(sparsities: Sequence[float], numels: Sequence[int], total_zeros: int | None = None) -> list[int]:
    """Integer zeros per layer, ``≈ s_l · N_l``, summing exactly to ``total_zeros``
    (default ``round(Σ s_l N_l)``), by the largest-remainder method within ``[0, N_l]``."""
    if len(sparsities) != len(numels):
        raise ValueError(f"{len(sparsities)} sparsities for {len(numels)} layers")
    ideal = [min(max(float(s), 0.0), 1.0) * n for s, n in zip(sparsities, numels)]
    if total_zeros is None:
        total_zeros = round_zeros(sum(ideal))
    if not 0 <= total_zeros <= sum(numels):
        raise ValueError(f"total_zeros={total_zeros} is outside [0, {sum(numels)}]")
    counts = [math.floor(x) for x in ideal]
    diff = total_zeros - sum(counts)
    order = sorted(range(len(ideal)), key=lambda i: ideal[i] - counts[i], reverse=diff > 0)
    step = 1 if diff > 0 else -1
    while diff != 0:
        moved = False
        for i in order:
            if diff == 0:
                break
            if 0 <= counts[i] + step <= numels[i]:
                counts[i] += step
                diff -= step
                moved = True
        if not moved:  # pragma: no cover - guarded by the range check above
            raise RuntimeError("could not distribute zeros")
    return counts


def exact_projection(
    scores: Sequence[torch.Tensor], sparsity: float, min_keep: int = 0
) -> list[torch.Tensor]:
    """Global masks (True = keep) pruning exactly ``round(sparsity · N)`` lowest-scoring elements.

    Scores of different layers must already be comparable (e.g. |W| / RMS(W) − t, or LAMP scores). Ties at the
    cut are broken by position, so the count is exact whatever the scores. ``min_keep`` keeps at least that
    many of each layer's best elements, so no layer is cut off entirely.
    """
    s = _check_sparsity(sparsity)
    numels = [t.numel() for t in scores]
    total = sum(numels)
    n_zero = round(s * total)
    flat = []
    for t in scores:
        f = t.detach().reshape(-1).float().clone()
        if torch.isnan(f).any():
            raise ValueError("exact_projection got NaN scores")
        if min_keep > 0 and f.numel():
            top = torch.topk(f, min(min_keep, f.numel())).indices
            f[top] = float("inf")
        flat.append(f.cpu())
    if min_keep > 0 and n_zero > total - sum(min(min_keep, n) for n in numels):
        raise ValueError(
            f"sparsity {s} cannot be reached while keeping {min_keep} weight(s) in each of {len(scores)} layers"
        )
    allv = torch.cat(flat) if flat else torch.empty(0)
    keep = torch.ones(total, dtype=torch.bool)
    if n_zero > 0:
        kth = torch.kthvalue(allv, n_zero).values
        below = allv < kth
        keep[below] = False
        short = n_zero - int(below.sum())
        if short > 0:
            tie_idx = torch.nonzero(allv == kth).reshape(-1)[:short]
            keep[tie_idx] = False
    out, start = [], 0
    for t, n in zip(scores, numels):
        out.append(keep[start : start + n].view(t.shape).to(t.device))
        start += n
    return out


def _from_global_scores(scores: Sequence[torch.Tensor], sparsity: float) -> list[float]:
    masks = exact_projection(scores, sparsity)
    levels = [1.0 - float(m.float().mean()) if m.numel() else 0.0 for m in masks]
    # The masks prune round(s·N) weights; spread the sub-weight remainder so Σ level·N_l is exactly s·N.
    numels = [m.numel() for m in masks]
    rest = (float(sparsity) * sum(numels) - sum(lv * n for lv, n in zip(levels, numels))) / max(1, sum(numels))
    return [min(1.0, max(0.0, lv + rest)) for lv in levels]


def global_magnitude(weights: Sequence[torch.Tensor], sparsity: float) -> list[float]:
    """One global threshold on raw |W| across layers (sensitive to per-layer weight scale)."""
    return _from_global_scores([w.detach().abs() for w in weights], sparsity)


def l2norm(weights: Sequence[torch.Tensor], sparsity: float) -> list[float]:
    """POT's "L2Norm": one global threshold on |W| / ‖W_l‖₂."""
    return _from_global_scores([w.detach().abs() / w.detach().float().norm().clamp_min(1e-12) for w in weights],
                               sparsity)


def lamp_scores(weight: torch.Tensor) -> torch.Tensor:
    """LAMP score (Lee et al. 2021): w_u² / Σ_{v ≥ u} w_v² with weights sorted by magnitude ascending."""
    sq = weight.detach().float().reshape(-1) ** 2
    sorted_sq, idx = torch.sort(sq)
    tail = torch.flip(torch.cumsum(torch.flip(sorted_sq, [0]), 0), [0])
    scores = torch.empty_like(sq)
    scores[idx] = sorted_sq / tail.clamp_min(1e-30)
    return scores.view(weight.shape)


def lamp(weights: Sequence[torch.Tensor], sparsity: float) -> list[float]:
    """Layer-adaptive magnitude pruning: one global threshold on LAMP scores."""
    return _from_global_scores([lamp_scores(w) for w in weights], sparsity)


def owl(weights: Sequence[torch.Tensor], sparsity: float, activation_scores: Sequence[torch.Tensor] | None = None,
        lam: float = 0.08, m: float = 5.0) -> list[float]:
    """OWL (Yin et al. 2024): layers with more activation outliers keep more weights.

    ``activation_scores`` are per-layer activation-aware scores of the weights' shape (Wanda's |W|·‖X‖). A layer's
    outlier ratio is the fraction of its scores above ``m``× their mean; ratios are mapped linearly onto
    densities spanning ``2·lam`` around ``1 − sparsity``, shifted so the weighted total is exactly the target.
    """
    s = _check_sparsity(sparsity)
    if activation_scores is None:
        raise ValueError("allocation 'owl' needs activation statistics (calibration data): run it through "
                         "pts_hf.sparsify(model, data, allocation='owl', ...)")
    if len(activation_scores) != len(weights):
        raise ValueError(f"{len(activation_scores)} activation score tensors for {len(weights)} layers")
    ratios = []
    for sc in activation_scores:
        f = sc.detach().float().reshape(-1)
        ratios.append(float((f > m * f.mean()).float().mean()) if f.numel() else 0.0)
    lo, hi = min(ratios), max(ratios)
    if hi - lo <= 0:
        return uniform([w.shape for w in weights], s)
    raw = [(r - lo) / (hi - lo) * 2 * lam for r in ratios]
    numels = [w.numel() for w in weights]
    budget = (1.0 - s) * sum(numels)

    def kept(shift: float) -> float:
        return sum(min(1.0, max(0.0, r + shift)) * n for r, n in zip(raw, numels))

    lo_shift, hi_shift = -2.0 * lam - 1.0, 1.0
    for _ in range(100):  # bisection: clipping to [0, 1] keeps the total exact
        mid = 0.5 * (lo_shift + hi_shift)
        if kept(mid) < budget:
            lo_shift = mid
        else:
            hi_shift = mid
    shift = 0.5 * (lo_shift + hi_shift)
    return [1.0 - min(1.0, max(0.0, r + shift)) for r in raw]


def regrow_allocation(genes: torch.Tensor, numels: Sequence[int], sparsity: float, delta: float,
                      max_sparsity: float = 0.999) -> list[float]:
    """UniPTS reducing-regrowing: exact global ``sparsity`` with per-layer values in [0, min(P+δ, max)].

    Every layer is reduced to P + δ (at most ``max_sparsity``), then the excess over the target is regrown across
    layers in proportion to softmax(genes); layers that would go below 0 are capped and hand their share to the
    others (water-filling). ``genes = 0`` regrows the same number of weights in every layer. Empty layers (no
    weights) take no share of the regrowth and get sparsity 0."""
    n = torch.tensor([float(x) for x in numels], dtype=torch.float64)
    total = float(n.sum())
    weights = torch.softmax(genes.double(), 0)
    base = torch.full_like(n, sparsity + delta).clamp(max=max_sparsity)
    # zeros to remove = what the base has in excess of the target (δ·N unless clipped at max_sparsity)
    budget = float((base * n).sum()) - sparsity * total
    regrow = torch.zeros_like(n)
    free = torch.ones_like(n, dtype=torch.bool)
    left = budget
    for _ in range(len(numels) + 1):  # water-filling: layers that would go below 0 are capped
        share = weights * free
        if left <= 1e-9 or share.sum() <= 0:
            break
        share = share / share.sum() * left
        cap = base * n - regrow
        over = free & (share > cap)
        if not over.any():
            regrow = regrow + share
            left = 0.0
            break
        regrow[over] = base[over] * n[over]
        left = budget - float(regrow.sum())
        free &= ~over
    levels = torch.where(n > 0, base - regrow / n.clamp_min(1.0), torch.zeros_like(n))
    return [float(x) for x in levels.clamp(0.0, max_sparsity)]


def regrow(weights: Sequence[torch.Tensor], sparsity: float, delta: float = 0.05) -> list[float]:
    """UniPTS's reducing-regrowing scheme at its neutral point (the search's starting allocation): every layer
    reduced to P + δ, then δ·N weights regrown in equal numbers per layer, so small layers end denser."""
    s = _check_sparsity(sparsity)
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"regrow delta must be in [0, 1), got {delta!r}")
    numels = [w.numel() for w in weights]
    return regrow_allocation(torch.zeros(len(numels)), numels, s, delta, max_sparsity=max(0.99, s))


def _uniform_w(weights: Sequence[torch.Tensor], sparsity: float) -> list[float]:
    return uniform([w.shape for w in weights], sparsity)


def _erk_w(weights: Sequence[torch.Tensor], sparsity: float, power: float = 1.0) -> list[float]:
    return erk([tuple(w.shape) for w in weights], sparsity, power=power)


ALLOCATIONS: dict[str, Callable[..., list[float]]] = {
    "uniform": _uniform_w,
    "erk": _erk_w,
    "lamp": lamp,
    "l2norm": l2norm,
    "global": global_magnitude,
    "owl": owl,
    "regrow": regrow,
}

# Allocations that need calibration activations (passed as ``activation_scores``).
NEEDS_ACTIVATIONS = frozenset({"owl"})


def allocate(name: str, weights: Sequence[torch.Tensor], sparsity: float, **options) -> list[float]:
    """Per-layer sparsities by the named allocation (``uniform``, ``erk``, ``lamp``, ``l2norm``, ``global``,
    ``regrow``, ``owl`` with ``activation_scores=``)."""
    key = name.lower()
    if key not in ALLOCATIONS:
        raise ValueError(f"unknown allocation {name!r}; choose one of {sorted(ALLOCATIONS)}")
    _check_sparsity(sparsity)
    return ALLOCATIONS[key](weights, sparsity, **options)

