"""UniPTS: base-decayed distillation, evolutionary reducing-regrowing allocation search, dynamic sparse training.

Released code vs ours (switches in :class:`UniPTSConfig`):

* fitness: top-1 with labels on the search images (code) → label-free −KL to the dense outputs on held-out
  calibration batches (default; ``fitness="top1"`` needs ``(input, label)`` batches);
* the GA keeps its best individual across generations (``elitism``; the code has none);
* ``delta`` (P_e = P + δ) and a wider ``search_space="logit"`` (any layer in [0, max_layer_sparsity]);
* fitness on a subset (``search_samples`` for BatchNorm re-estimation, ``fitness_samples`` scored), cached per
  exact per-layer count vector; released sizes: population 25, generations 25, parents 10, 10240 images;
* the result is exact: per-layer sparsities are rounded with the largest remainder to round(P·N) zeros.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from pts_hf.calibration import CalibrationData, batch_size_of, forward_batch
from pts_hf.config import DistillationConfig, help_field
from pts_hf.losses import base_decayed_kl, extract_output, kl_distillation, reconstruction_loss
from pts_hf.ops.allocation import NEEDS_ACTIVATIONS, allocate
from pts_hf.parametrize import DynamicMask, FixedMask, PTSParametrization
from pts_hf.progress import progress_bar
from pts_hf.record import MethodOutcome
from pts_hf.search import MaskFitness, genes_to_sparsities, logit_genes_for, regrow_genes_for, run_evolution
from pts_hf.sparsifiers.base import PTSSparsifier
from pts_hf.sparsifiers.distilling import DistillingSparsifier
from pts_hf.sparsifiers.magnitude import MagnitudeSparsifier

__all__ = ["UniPTSConfig", "UniPTSSparsifier"]

logger = logging.getLogger("pts_hf")


@dataclass
class UniPTSConfig(DistillationConfig):
    method: ClassVar[str] = "unipts"

    allocation: str = help_field(
        "lamp", "Per-layer allocation the training starts from (and the search is seeded with): 'lamp' (the "
        "default: on ResNet-20 it beat ERK on each of 3 calibration draws, by 0.04–0.17 points at 90% and "
        "0.10–0.25 at 95%, 500 steps; BENCHMARKS.md), or uniform, erk, l2norm, global, regrow, owl."
    )
    search: bool = help_field(False, "Evolutionary allocation search seeded with the `allocation` (True; skipped for "
                                     "N:M masks, which fix every layer's sparsity) or the `allocation` as is "
                                     "(False, the default: on ResNet-20 ERK beat the search after training "
                                     "at 90% in all 3 seeds and tied at 95%, at a third of the cost; the search's "
                                     "fitness ranks allocations only loosely as training does; BENCHMARKS.md).")
    search_space: str = help_field("regrow", "'regrow' (P_e = P+δ, regrow δ·N by softmax of genes: UniPTS) or "
                                             "'logit' (any layer in [0, max_layer_sparsity]).")
    delta: float = help_field(0.05, "δ of the reducing-regrowing scheme: layers are first reduced to P + δ.")
    max_layer_sparsity: float = help_field(0.99, "Upper bound on any layer's sparsity during the search.")
    population: int = help_field(16, "GA population (released code: 25).")
    generations: int = help_field(10, "GA generations (released code: 25).")
    parents: int = help_field(6, "Individuals selected as parents each generation (released code: 10).")
    mutation_prob: float = help_field(0.1, "Per-gene mutation probability (x ← x·(1 + N(0,1))).")
    elitism: bool = help_field(True, "Keep the best individual across generations.")
    fitness: str = help_field("kl", "'kl': −KL to the dense outputs on held-out calibration data (label-free); "
                                    "'top1': accuracy with labels from (input, label) batches (released code).")
    search_samples: int = help_field(512, "Calibration samples used to re-estimate BatchNorm per candidate.")
    fitness_samples: int = help_field(256, "Held-out calibration samples each candidate is scored on.")
    search_noise: float = help_field(1e-6, "Std of the input noise while re-estimating BatchNorm (released: 1e-6).")
    objective: str = help_field("base_decayed", "'base_decayed' (UniPTS) or 'kl' (plain KL at `temperature`).")
    tau0: float = help_field(8.0, "Base-decayed objective: initial τ (τ_e = τ0·γ^e, e = calibration epoch).")
    gamma: float = help_field(0.99, "Base-decayed objective: decay of τ per epoch over the calibration data.")
    dynamic: bool = help_field(True, "Dynamic sparse training: masks recomputed from |W| while training.")
    mask_interval: int = help_field(1, "Recompute dynamic masks every this many optimizer steps.")
    srste_decay: float = help_field(5e-5, "SR-STE decay λ on pruned weights: gradient + λ·(1 − m)·w.")
    feature_weight: float = help_field(
        3.0, "Weight of intermediate-feature distillation (block outputs vs the dense model's; see "
        "DistillationConfig). On for UniPTS: on ResNet-20 at 200 steps +0.8 / +0.5 points at 90 / 95% with weight "
        "1, and weight 3 above 1 at 200 and 500 steps; for 200-step runs 15 is better at 90% (92.67 vs 92.36 over "
        "3 draws) but worse at 500 steps and at 95% (BENCHMARKS.md); 0 = off."
    )

    def validate(self) -> None:
        super().validate()
        if not self.delta >= 0:
            raise ValueError(f"delta must be ≥ 0, got {self.delta!r}")
        if not isinstance(self.population, int) or self.population < 2:
            raise ValueError(f"population must be an integer ≥ 2, got {self.population!r}")
        if not isinstance(self.generations, int) or self.generations < 1:
            raise ValueError(f"generations must be an integer ≥ 1, got {self.generations!r}")
        if not isinstance(self.parents, int) or not 1 <= self.parents <= self.population:
            raise ValueError(f"parents must be in [1, population], got {self.parents!r}")
        if not 0.0 <= self.mutation_prob <= 1.0:
            raise ValueError(f"mutation_prob must be in [0, 1], got {self.mutation_prob!r}")
        if self.search_space not in ("regrow", "logit"):
            raise ValueError(f"search_space must be 'regrow' or 'logit', got {self.search_space!r}")
        if self.fitness not in ("kl", "top1"):
            raise ValueError(f"fitness must be 'kl' or 'top1', got {self.fitness!r}")
        if self.objective not in ("base_decayed", "kl"):
            raise ValueError(f"objective must be 'base_decayed' or 'kl', got {self.objective!r}")
        if not self.sparsity < self.max_layer_sparsity <= 1.0:
            raise ValueError(f"max_layer_sparsity must be in (sparsity, 1], got {self.max_layer_sparsity!r}")
        if self.search_space == "regrow" and self.sparsity + self.delta > 1.0:
            raise ValueError(f"sparsity + delta = {self.sparsity + self.delta} exceeds 1; lower delta")
        for name in ("search_samples", "fitness_samples", "mask_interval"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not self.tau0 > 0 or not 0 < self.gamma <= 1 or self.search_noise < 0 or self.srste_decay < 0:
            raise ValueError("need tau0 > 0, 0 < gamma ≤ 1, search_noise ≥ 0 and srste_decay ≥ 0")


def _take_samples(data: CalibrationData, n: int, skip: int = 0) -> tuple[list[Any], int]:
    """Whole batches after the first ``skip`` samples, until ``n`` samples are collected: (batches, samples)."""
    out, seen, got = [], 0, 0
    for batch in data:
        size = batch_size_of(batch)
        if size is None:
            raise TypeError(f"cannot tell the number of samples in a calibration batch of type {type(batch).__name__}")
        if seen >= skip:
            out.append(batch)
            got += size
            if got >= n:
                break
        seen += size
    return out, got


class UniPTSSparsifier(DistillingSparsifier, MagnitudeSparsifier):
    """UniPTS as a torch.ao-style sparsifier: magnitude masks at searched per-layer levels, recomputed from |W|
    by ``step()`` during dynamic sparse training."""

    method: ClassVar[str] = "unipts"
    config_class: ClassVar[type[UniPTSConfig]] = UniPTSConfig
    resume_attrs: ClassVar[tuple[str, ...]] = ("_steps",)

    def __init__(self, config: UniPTSConfig | None = None, **options: Any):
        super().__init__(config, **options)
        self._steps = 0

    def _before_parametrize(self, model: nn.Module) -> None:
        super()._before_parametrize(model)
        self._steps = 0

    def make_parametrization(self, group: dict[str, Any], weight: torch.Tensor) -> PTSParametrization:
        ones = torch.ones_like(weight, dtype=torch.bool)
        return DynamicMask(ones, self.method_config.srste_decay) if self.method_config.dynamic else FixedMask(ones)

    # --- training ---------------------------------------------------------------------------------------------
    def step(self) -> None:
        """First call: masks at the levels. Then, with ``dynamic``, every ``mask_interval`` calls."""
        self._require_prepared()
        first = self._steps == 0
        self._steps += 1
        if first or (self.method_config.dynamic and (self._steps - 1) % self.method_config.mask_interval == 0):
            super().step()

    def compute_loss(self, student_output: Any, teacher_output: Any, epoch: float = 0.0
                     ) -> tuple[torch.Tensor, dict[str, float]]:
        o = self.method_config
        s, kind = extract_output(student_output)
        if o.loss_fn is None and o.objective == "base_decayed" and kind == "logits" and o.reconstruction != "mse":
            tau = o.tau0 * o.gamma ** math.floor(epoch)
            t, _ = extract_output(teacher_output)
            with torch.no_grad():  # what to show: the objective's raw value is a cross-entropy minus a constant
                kl = float(kl_distillation(s.detach(), t, o.temperature))
            return base_decayed_kl(s, t, o.temperature, tau), {"tau": tau, "kl": kl}
        loss = reconstruction_loss(student_output, teacher_output, kind=o.reconstruction,
                                   temperature=o.temperature, loss_fn=o.loss_fn)
        return loss, {}

    # --- search -----------------------------------------------------------------------------------------------
    def search_allocation(self, model: nn.Module, data: CalibrationData, teacher: nn.Module) -> MethodOutcome:
        """Run the GA, seeded with the configured allocation, and write the best per-layer sparsities into the
        groups' ``sparsity_level``."""
        o = self.method_config
        start = time.perf_counter()
        device = next(model.parameters()).device
        bn_batches, n_bn = _take_samples(data, o.search_samples)
        score_batches, _ = _take_samples(data, o.fitness_samples, skip=n_bn)
        if not score_batches:  # calibration set smaller than search_samples: score on its last batch
            logger.warning("no held-out calibration batches left for the UniPTS fitness; scoring on seen data")
            score_batches = bn_batches[-1:]
        if o.fitness == "top1" and not all(isinstance(b, (list, tuple)) and len(b) > 1 for b in score_batches):
            raise ValueError("fitness='top1' needs (input, label) batches; use fitness='kl' for unlabeled data")
        with torch.no_grad():
            teacher_outputs = [forward_batch(teacher, b, device) for b in score_batches]
        numels = [g["numel"] for g in self.groups]
        fitness = MaskFitness(self.groups, model, bn_batches, score_batches, teacher_outputs, o.sparsity, o.fitness,
                              o.search_noise, o.seed)

        def decode(genes: torch.Tensor) -> list[float]:
            return genes_to_sparsities(genes, numels, o.sparsity, o.search_space, o.delta, o.max_layer_sparsity)

        options = o.allocation_options()
        if o.allocation in NEEDS_ACTIVATIONS:
            options["activation_scores"] = self._activation_scores_for(self.group_targets())
        seed = allocate(o.allocation, [self.original_of(g) for g in self.groups], o.sparsity, **options)
        # seed the population with the configured allocation (as close as the space allows) and the uniform
        # regrowth; with elitism the search then never ends below that allocation
        if o.search_space == "logit":
            initial = [logit_genes_for(seed, o.max_layer_sparsity)]
        else:
            initial = [regrow_genes_for(seed, numels, o.sparsity, o.delta), torch.zeros(len(numels))]
        bar = progress_bar(total=o.generations, desc="unipts search", enabled=self.show_progress, unit="gen")

        def tick(gen: int, best: float) -> None:
            bar.update(1)
            bar.set_postfix(best=f"{best:.4f}")

        result = run_evolution(lambda genes: fitness(decode(genes)), len(numels), o.population, o.generations,
                               o.parents, o.mutation_prob, o.seed, initial=initial, elitism=o.elitism,
                               on_generation=tick)
        bar.close()
        best = decode(result.best_genes)
        counts = fitness.counts(best)
        for g, k in zip(self.groups, counts):
            g["sparsity_level"] = k / g["numel"]
        out = MethodOutcome(extras={"search_seconds": time.perf_counter() - start,
                                    "search_history": result.history, "search_evaluations": fitness.evaluations,
                                    "search_best_fitness": result.best_fitness, "allocation_fitness": fitness(seed)})
        out.add_layer_values("searched_sparsity", {g["tensor_fqn"]: g["sparsity_level"] for g in self.groups})
        out.add_layer_values("allocation_sparsity", {g["tensor_fqn"]: s for g, s in zip(self.groups, seed)})
        return out

    # --- distilling protocol --------------------------------------------------------------------------------
    def before_training(self, model: nn.Module, data: CalibrationData, teacher: nn.Module) -> MethodOutcome:
        """The allocation search (or its result, when resuming), then the first masks."""
        out = MethodOutcome()
        ckpt = self.run_checkpoint
        resumed = (ckpt.resume or {}).get("search") if ckpt is not None else None
        o = self.method_config
        if o.search and resumed is not None:  # resuming: the search was done before the interrupt
            out = MethodOutcome(layers={k: dict(v) for k, v in resumed["layers"].items()},
                                extras=dict(resumed["extras"]))
            for g in self.groups:
                g["sparsity_level"] = float(resumed["levels"][g["tensor_fqn"]])
            ckpt.search = resumed
        elif o.search and o.nm is not None:
            out.extras["search"] = f"skipped: {o.mask_structure} fixes every layer's sparsity"
        elif o.search:
            out = self.search_allocation(model, data, teacher)
            if ckpt is not None:  # the search is the long first phase: keep its result
                ckpt.search = {"layers": {k: dict(v) for k, v in out.layers.items()}, "extras": dict(out.extras),
                               "levels": {g["tensor_fqn"]: g["sparsity_level"] for g in self.groups}}
                ckpt.save({"method": self.method}, 0, o.steps)
        out.add_layer_values("initial_sparsity", {g["tensor_fqn"]: g["sparsity_level"] for g in self.groups})
        self._steps = 0
        self.step()
        return out

    def finalize(self) -> MethodOutcome:
        PTSSparsifier.step(self)  # final masks, whatever mask_interval: exact counts from the trained |W|
        return MethodOutcome()
