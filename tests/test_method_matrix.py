"""Tiny models × every registered method, in one matrix (as peft's): a method added to the registry is covered
here without touching this file."""

from __future__ import annotations

import pytest
import torch

import pts_hf
from pts_hf.losses import extract_output
from pts_hf.sparsifiers import SPARSIFIERS
from pts_hf.targets import discover_targets
from tests.tiny_models import TINY_MODELS, image_batch, small_cnn

# the shortest settings each built-in method runs with; a new method runs with its defaults
FAST: dict[str, dict] = {
    "fcpts": {"steps": 2},
    "unipts": {"steps": 2, "population": 2, "generations": 1, "parents": 1, "search_samples": 2,
               "fitness_samples": 2},
    "pot": {"recon_steps": 2},
}
MODELS = {"small_cnn": (small_cnn, lambda: image_batch(4)),
          **{k: v[:2] for k, v in TINY_MODELS.items() if k.startswith("hf_")}}


def _run(model, batch):
    with torch.no_grad():
        out = model(**batch) if isinstance(batch, dict) else model(batch)
    return extract_output(out)[0]


@pytest.mark.parametrize("method", sorted(SPARSIFIERS))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_method_on_every_tiny_model(name, method):
    builder, make_input = MODELS[name]
    model = builder().eval()
    batches = [make_input(), make_input()]
    dense_out = _run(model, batches[0])
    r = pts_hf.sparsify(model, batches, method=method, sparsity=0.5, progress=False, **FAST.get(method, {}))
    targets = discover_targets(r.model)
    assert set(r.layer_sparsity) == {t.tensor_fqn for t in targets}
    n = sum(t.numel for t in targets)
    zeros = sum(int((t.weight == 0).sum()) for t in targets)
    assert abs(zeros - round(0.5 * n)) <= 1, (zeros, n)
    assert r.global_sparsity == pytest.approx(zeros / n)
    sparse_out = _run(r.model.eval(), batches[0])
    assert sparse_out.shape == dense_out.shape and torch.isfinite(sparse_out).all()
    assert r.record.method == method and r.record.config == r.config.to_dict()
