"""The pts-hf command line: argument errors (exit 2, nothing written) and one short real run."""

import json

import pytest

from pts_hf.cli import main
from pts_hf.data import find_fashion_mnist_dir
from pts_hf.models import WEIGHTS_DIR

needs_bundle = pytest.mark.skipif(
    not (WEIGHTS_DIR / "resnet20-fmnist.safetensors").is_file() or find_fashion_mnist_dir() is None,
    reason="bundled ResNet-20 weights or Fashion-MNIST files missing",
)


def _run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("argv, message", [
    (["sparsify", "--model", "no-such-model", "--data", "fashion-mnist"], "unknown model 'no-such-model'"),
    (["sparsify", "--model", "resnet20-fmnist"], "give both --model and --data"),
    (["sparsify", "--option", "not_an_option=3"], "unknown option"),
    (["sparsify", "--allocation", "erx"], "unknown allocation"),
    (["sparsify", "--model", "resnet20-fmnist", "--data", "/no/such/folder"], "does not exist"),
    (["inspect", "/no/such/dir"], "is not a folder"),
])
def test_bad_input_exits_2_with_one_line(argv, message, capsys, tmp_path):
    code, _, err = _run([*argv], capsys)
    assert code == 2
    assert message in err
    assert err.count("\n") == 1


def test_argparse_errors_exit_2(capsys):
    for argv in (["sparsify", "--sparsity", "1.5"], ["sparsify", "--steps", "0"], ["frobnicate"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2


def test_help_explains_every_option(capsys):
    for cmd in ("sparsify", "evaluate", "inspect"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        text = capsys.readouterr().out
        assert "usage" in text
    with pytest.raises(SystemExit):
        main(["sparsify", "--help"])
    text = capsys.readouterr().out
    for opt in ("--model", "--data", "--method", "--sparsity", "--calib-samples", "--steps", "--batch-size",
                "--seed", "--eval", "--output", "--overwrite"):
        assert opt in text


def test_refuses_non_empty_output(capsys, tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    code, _, err = _run(["sparsify", "--output", str(tmp_path)], capsys)
    assert code == 2 and "--overwrite" in err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_input_shape_mismatch_is_a_clear_error():
    import torch

    from pts_hf.cli import CLIError, _check_fits

    with pytest.raises(CLIError, match=r"does not fit the data \(input shape \(1, 28, 28\)\)"):
        _check_fits(torch.nn.Linear(10, 2), torch.zeros(4, 1, 28, 28))


@needs_bundle
def test_short_end_to_end_run_and_inspect_and_evaluate(capsys, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = _run(["sparsify", "--model", "resnet20-fmnist", "--data", "fashion-mnist", "--method",
                              "fcpts", "--sparsity", "0.8", "--steps", "3", "--calib-samples", "64",
                              "--batch-size", "32", "--eval", "--eval-samples", "256", "--output", str(out),
                              "--no-progress"], capsys)
    assert code == 0, err
    assert "dense top-1" in stdout and "sparse top-1" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["allocation.png", "model.safetensors", "pts_model.json",
                                                     "report.json", "sparsity_config.json"]
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "fcpts" and report["target_sparsity"] == 0.8
    assert abs(report["global_sparsity"] - 0.8) <= 1e-4
    assert {"dense_top1", "sparse_top1", "seconds", "layers"} <= set(report)
    code, stdout, _ = _run(["inspect", str(out)], capsys)
    assert code == 0 and "global" in stdout and "conv1.weight" in stdout
    code, stdout, _ = _run(["evaluate", "--model", str(out), "--data", "fashion-mnist", "--eval-samples", "256"],
                           capsys)
    assert code == 0 and f"{report['sparse_top1']:.2f}%" in stdout and "0.8000" in stdout
    # existing output is refused without --overwrite, replaced with it
    code, _, err = _run(["sparsify", "--model", "resnet20-fmnist", "--data", "fashion-mnist", "--method",
                         "magnitude", "--output", str(out), "--calib-samples", "32"], capsys)
    assert code == 2
    code, _, _ = _run(["sparsify", "--model", "resnet20-fmnist", "--data", "fashion-mnist", "--method", "magnitude",
                       "--output", str(out), "--calib-samples", "32", "--overwrite"], capsys)
    assert code == 0 and json.loads((out / "report.json").read_text())["method"] == "magnitude"


@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
def test_layerwise_method_with_mask_structure_and_method_default_allocation(method, capsys, tmp_path):
    out = tmp_path / "nm"
    code, _, err = _run(["sparsify", "--model", "resnet20-fmnist", "--data", "fashion-mnist", "--method", method,
                              "--mask-structure", "2:4", "--calib-samples", "64", "--batch-size", "32",
                              "--output", str(out), "--no-progress"], capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["target_sparsity"] == 0.5 and report["config"]["mask_structure"] == "2:4"
    assert report["config"]["allocation"] == "uniform"
    code, _, err = _run(["sparsify", "--model", "resnet20-fmnist", "--data", "fashion-mnist", "--method", method,
                         "--mask-structure", "2:4",
                         "--sparsity", "0.9", "--output", str(tmp_path / "bad")], capsys)
    assert code == 2 and "contradicts" in err and not (tmp_path / "bad").exists()
