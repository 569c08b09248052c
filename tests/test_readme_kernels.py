"""README "Running faster: sparse kernels", exactly as printed, on a tiny BERT."""

from pathlib import Path

import torch

from tests.tiny_models import hf_bert, text_batch


def test_readme_kernels_snippet(capsys):
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    after = text[text.index("### Running faster: sparse kernels"):]
    start = after.index("```python\n") + len("```python\n")
    snippet = after[start:after.index("```", start)]
    model = hf_bert()
    ns = {"model": model, "calib": [text_batch(2, 16) for _ in range(2)]}
    exec(compile(snippet, "README.md", "exec"), ns)
    out = capsys.readouterr().out
    assert "layer" in out and ("converted" in out or "nothing was converted" in out)
    sparse = ns["sparse"]
    assert not any(type(m).__name__.endswith("Layer") and hasattr(m, "original") for m in sparse.modules())
    with torch.no_grad():  # restored: plain modules, 90% zeros still there
        w = sparse.encoder.layer[0].intermediate.dense.weight
    assert abs(float((w == 0).float().mean()) - 0.9) < 0.01
