"""README "## Python" (one call) and "### torch.ao.pruning style" snippets, exactly as printed, on a tiny CNN."""

from pathlib import Path

import pytest
import torch

from tests.test_checkpoint import _fake_hub
from tests.tiny_models import small_cnn

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _block(heading: str) -> str:
    after = README[README.index(heading):]
    start = after.index("```python\n") + len("```python\n")
    return after[start:after.index("```", start)]


def test_readme_one_call_snippet(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    _fake_hub(monkeypatch, tmp_path / "hub")
    calib = torch.randn(128, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ns = {"model": small_cnn(), "calib": calib}
    exec(compile(_block("## Python"), "README.md", "exec"), ns)
    r = ns["result"]
    n = sum(r.layer_numel.values())
    assert round(r.global_sparsity * n) == round(0.9 * n)
    assert (tmp_path / "out" / "sparsity_config.json").exists()
    assert (tmp_path / "out-bm" / "sparsity_config.json").exists()
    assert (tmp_path / "hub" / "models--me--model-sparse-90" / "refs" / "main").exists()


def test_readme_torch_ao_snippet():
    model = small_cnn()
    calib = [torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    ns = {"model": model, "calib": calib, "torch": torch}
    exec(compile(_block("### torch.ao.pruning style"), "README.md", "exec"), ns)
    n = sum(g["numel"] for g in ns["sp"].groups)
    zeros = sum(int((g["module"].weight == 0).sum()) for g in ns["sp"].groups)
    assert zeros == pytest.approx(0.9 * n, abs=1)
    assert ns["state"]["method"] == "fcpts" and ns["state"]["state"]
