"""Text data and the evaluator shared by the transformer benchmark and the peer runners.

Needs only torch and transformers' tokenizer output (no pts_hf), so the peers' separate environment can import it.
Sentence embedding = mean-pool of ``last_hidden_state`` over the attention mask, then L2-normalise.
"""

from __future__ import annotations

import re
import resource
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(document: str, min_words: int = 4) -> list[str]:
    """Split a news document at ``.``/``!``/``?`` followed by a capitalised word; drop fragments shorter than
    ``min_words`` words."""
    parts = (p.strip() for p in _SENTENCE_END.split(document))
    return [p for p in parts if len(p.split()) >= min_words]


def calibration_split(documents: Sequence[str], n_calib: int, n_heldout: int) -> tuple[list[str], list[str]]:
    """The first ``n_calib`` sentences in document order, and up to ``n_heldout`` sentences of the documents that
    follow (no document contributes to both)."""
    calib: list[str] = []
    doc = 0
    while len(calib) < n_calib and doc < len(documents):
        calib += split_sentences(documents[doc])
        doc += 1
    if len(calib) < n_calib:
        raise ValueError(f"only {len(calib)} calibration sentences in {len(documents)} documents; ask for fewer")
    heldout = [s for d in documents[doc:] for s in split_sentences(d)][:n_heldout]
    return calib[:n_calib], heldout


def tokenize_batches(tokenizer: Any, sentences: Sequence[str], batch_size: int, max_length: int
                     ) -> list[dict[str, torch.Tensor]]:
    """Padded (to the longest in the batch) tokenizer dicts with ``attention_mask``, in sentence order."""
    return [dict(tokenizer(list(sentences[i : i + batch_size]), padding=True, truncation=True,
                           max_length=max_length, return_tensors="pt"))
            for i in range(0, len(sentences), batch_size)]


@torch.no_grad()
def embed(model: nn.Module, batches: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    """L2-normalised mean-pooled sentence embeddings, one row per sentence."""
    was_training = model.training
    model.eval()
    out = []
    for batch in batches:
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out.append(nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp_min(1), dim=-1))
    model.train(was_training)
    return torch.cat(out).float()


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine between matching rows of two L2-normalised embedding matrices."""
    return float((a * b).sum(-1).mean())


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float, iters: int = 100) -> torch.Tensor:
    """Weights (bias last) minimising mean binary cross-entropy + ``l2``/2 · ‖w‖² (bias not penalised): Newton's
    method with step halving, float64 (the objective is strictly convex, so this is the exact optimum)."""
    xb = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    reg = torch.full((xb.shape[1],), l2, dtype=x.dtype)
    reg[-1] = 0.0
    w = torch.zeros(xb.shape[1], dtype=x.dtype)

    def loss(v: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(xb @ v, y) + 0.5 * (reg * v * v).sum()

    current = loss(w)
    for _ in range(iters):
        p = torch.sigmoid(xb @ w)
        grad = xb.T @ (p - y) / len(y) + reg * w
        hess = (xb.T * (p * (1 - p))) @ xb / len(y) + torch.diag(reg) + 1e-12 * torch.eye(len(w), dtype=x.dtype)
        step = torch.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-6 and loss(w - t * step) > current:
            t /= 2
        w = w - t * step
        new = loss(w)
        if current - new < 1e-12:
            break
        current = new
    return w


def probe_accuracy(features: torch.Tensor, labels: torch.Tensor, folds: int = 5, repeats: int = 4,
                   l2: float = 1.0, seed: int = 0) -> float:
    """Mean held-out accuracy (%) of an L2-regularised logistic-regression probe under ``repeats`` × ``folds``-fold
    cross-validation; features are standardised with the training fold's statistics; fixed seeds. ``l2`` (on the
    mean loss) was fixed once on the dense all-MiniLM-L6-v2 embeddings (1.0 of 0.001–30; dense accuracy 68–72%
    for 0.001–10)."""
    x, y = features.double(), labels.double()
    n = len(x)
    if n < folds or set(labels.tolist()) - {0, 1}:
        raise ValueError(f"probe needs ≥ {folds} samples with 0/1 labels, got {n} samples, "
                         f"labels {sorted(set(labels.tolist()))}")
    gen = torch.Generator().manual_seed(seed)
    correct = total = 0
    for _ in range(repeats):
        perm = torch.randperm(n, generator=gen)
        for k in range(folds):
            test = perm[k::folds]
            train = torch.cat([perm[j::folds] for j in range(folds) if j != k])
            mu, sd = x[train].mean(0), x[train].std(0).clamp_min(1e-8)
            w = _fit_logistic((x[train] - mu) / sd, y[train], l2)
            xt = torch.cat([(x[test] - mu) / sd, torch.ones(len(test), 1, dtype=x.dtype)], 1)
            correct += int(((xt @ w > 0).double() == y[test]).sum())
            total += len(test)
    return 100.0 * correct / total


def weight_sparsity(model: nn.Module, pattern: str) -> float:
    """Fraction of exact zeros over the weights of every ``nn.Linear`` whose module name matches ``pattern``
    (a regular expression, ``re.match``), measured the same way for every method and peer."""
    zeros = total = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and re.match(pattern, name):
            zeros += int((module.weight == 0).sum())
            total += module.weight.numel()
    if not total:
        raise ValueError(f"no nn.Linear module name matches {pattern!r}")
    return zeros / total


def _proc_status_mib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def current_rss_mib() -> float:
    """Resident set size now (Linux ``VmRSS``; falls back to the peak where ``/proc`` is missing)."""
    now = _proc_status_mib("VmRSS")
    return peak_rss_mib() if now is None else now


def peak_rss_mib() -> float:
    """Peak resident set size of this process (Linux ``VmHWM``, the memory map's high-water mark, which
    :func:`reset_peak_rss` can reset; ``ru_maxrss`` elsewhere). ``ru_maxrss`` itself is not used on Linux: it also
    keeps the peak of threads that have exited (e.g. a weight-loading thread pool), which no reset clears."""
    peak = _proc_status_mib("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if peak is None else peak


def reset_peak_rss() -> bool:
    """Reset this process's peak-RSS high-water mark (``VmHWM``) to the current RSS (Linux: ``5`` to
    ``/proc/self/clear_refs``), so a later :func:`peak_rss_mib` sees only what happened since. False where the
    kernel does not allow it (the peak then includes everything before)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True
