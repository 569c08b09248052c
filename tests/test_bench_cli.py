"""``pts-hf bench``: prints the latency table and per-layer choices, writes JSON; bad input exits 2."""

import json

import pytest
import torch

from pts_hf.bench import model_weight_bytes
from pts_hf.cli import main
from pts_hf.kernels import use_sparse_kernels_

from .tiny_models import hf_bert


@pytest.fixture(scope="module")
def sparse_bert_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = hf_bert().eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and "embeddings" not in name:
                p[torch.rand(p.shape, generator=g) < 0.9] = 0
    path = tmp_path_factory.mktemp("bert90")
    model.save_pretrained(path)
    return path


def test_bench_prints_and_writes_json(sparse_bert_dir, tmp_path, capsys):
    out = tmp_path / "sub" / "bench.json"
    code = main(["bench", str(sparse_bert_dir), "--batch-sizes", "1", "3", "--seq-len", "16", "--repeats", "3",
                 "--warmup", "1", "--backend", "csr", "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    assert "1x16" in text and "3x16" in text and "speedup" in text and "per-layer choice" in text
    data = json.loads(out.read_text())
    b = data["batches"]["3x16"]
    assert b["converted"] == b["layers"] == 13  # 2 layers × (q, k, v, attn-out, intermediate, output) + pooler
    assert set(b["choices"].values()) == {"csr"}
    assert b["dense_ms"] > 0 and b["sparse_ms"] > 0
    assert b["speedup"] == pytest.approx(b["dense_ms"] / b["sparse_ms"])
    assert b["targeted_bytes_sparse"] < 0.35 * b["targeted_bytes_dense"]  # 90% zeros, int32 indices
    assert b["weight_bytes_sparse"] < b["weight_bytes_dense"]
    assert data["command"].startswith("pts-hf")


def test_bench_dense_model_converts_nothing(capsys):
    code = main(["bench", "resnet20-fmnist", "--batch-sizes", "2", "--repeats", "2", "--warmup", "0"])
    text = capsys.readouterr().out
    assert code == 0
    assert "nothing was converted" in text
    assert " 0/22" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_bench_semi_structured_on_cpu_exits_2(sparse_bert_dir, capsys):
    code = main(["bench", str(sparse_bert_dir), "--backend", "semi_structured", "--batch-sizes", "1",
                 "--seq-len", "8", "--repeats", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "needs a CUDA GPU" in err and err.count("\n") == 1


def test_bench_text_model_with_missing_text_file_exits_2(sparse_bert_dir, capsys):
    code = main(["bench", str(sparse_bert_dir), "--data", "/no/such/file.txt"])
    err = capsys.readouterr().err
    assert code == 2 and "needs a text file" in err


def test_model_weight_bytes_counts_csr_storage():
    model = torch.nn.Sequential(torch.nn.Linear(64, 64, bias=False)).eval()
    with torch.no_grad():
        model[0].weight[:, 8:] = 0
    dense = model_weight_bytes(model)
    use_sparse_kernels_(model, torch.randn(2, 64), backend="csr")
    # 8 of 64 columns kept: 512 values (4 B) + 512 int32 column indices + 65 int32 row pointers
    assert dense == 64 * 64 * 4
    assert model_weight_bytes(model) == 512 * 4 + 512 * 4 + 65 * 4


def test_inference_benchmark_example_runs(tmp_path):
    import importlib.util
    import sys
    from pathlib import Path

    examples = Path(__file__).resolve().parent.parent / "examples"
    sys.path.insert(0, str(examples))
    try:
        spec = importlib.util.spec_from_file_location("inference_benchmark", examples / "inference_benchmark.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        threads = torch.get_num_threads()
        try:
            rows = module.main(["--models", "resnet20-fmnist", "--allocations", "uniform", "--sparsities", "0.9",
                                "--batch-sizes", "2", "--repeats", "1", "--warmup", "0", "--kernel-repeats", "1",
                                "--no-write"])
        finally:
            torch.set_num_threads(threads)
    finally:
        sys.path.remove(str(examples))
    (row,) = rows
    assert row["model"] == "resnet20-fmnist" and row["achieved"] == pytest.approx(0.9, abs=1e-4)
    assert row["layers"] == 22 and row["converted"] <= 3  # only the 1×1 shortcuts and fc have a CSR kernel
    assert row["dense_ms"] > 0 and row["sparse_ms"] > 0


def test_kernel_layouts_example_runs():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / "kernel_layouts.py"
    spec = importlib.util.spec_from_file_location("kernel_layouts", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        text = module.main(["--shapes", "64x32", "--tokens", "8", "--sparsities", "0.9", "--repeats", "1"])
    finally:
        torch.set_num_threads(threads)
    assert "| 64x32 | 8 | 90% |" in text and "csr W@xT int32" in text
