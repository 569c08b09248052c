"""README "Layer-wise methods, N:M and OWL", exactly as printed, on a tiny BERT."""

from pathlib import Path

import torch

from tests.tiny_models import hf_bert, text_batch


def test_readme_layerwise_snippet(capsys):
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    after = text[text.index("### Layer-wise methods, N:M and OWL"):]
    start = after.index("```python\n") + len("```python\n")
    snippet = after[start:after.index("```", start)]
    calib = [text_batch(4, 16) for _ in range(3)]
    calib[1]["attention_mask"][:, 12:] = 0  # padded batch
    ns = {"model": hf_bert(), "calib": calib}
    exec(compile(snippet, "README.md", "exec"), ns)
    out = capsys.readouterr().out
    assert "[['encoder.layer.0', 'encoder.layer.1'], ['pooler.dense']]" in out
    r = ns["result"]
    assert r.method == "fcpts-block" and abs(r.global_sparsity - 0.7) < 1e-4
    levels = r.record.layer_values("budget_level")
    assert str(levels) in out and len(levels) == 13 and len(set(levels.values())) > 1
    assert all(torch.isfinite(p).all() for p in r.model.parameters())
