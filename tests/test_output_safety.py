"""Output locations (issue 11 items 2 and 3): dangerous folders refused, problems found before the work, a failed
save keeps the previous files and leaves no empty folder, and the result goes somewhere else."""

import json
from pathlib import Path

import pytest
import torch

import pts_hf
from pts_hf.checkpoint.output import OutputLocationError, check_output_location, staged_output
from pts_hf.cli import main
from tests.test_cli import needs_bundle
from tests.tiny_models import small_cnn

X = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(0))
RUN = ["sparsify", "--model", "resnet20-fmnist", "--data", "fashion-mnist", "--method", "magnitude",
       "--calib-samples", "32", "--batch-size", "32", "--no-progress"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if the sparsification starts."""
    def boom(*a, **k):
        raise AssertionError("the work started before the output location was checked")

    monkeypatch.setattr(pts_hf, "sparsify", boom)


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("where", [".", "..", "home", "home-parent"])
def test_dangerous_output_refused_before_work(where, overwrite, tmp_path, monkeypatch, capsys, no_work):
    home = tmp_path / "home" / "user"
    cwd = home / "project"
    cwd.mkdir(parents=True)
    (cwd / "notes.txt").write_text("mine")
    (cwd / "src").mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    output = {".": ".", "..": "..", "home": str(home), "home-parent": str(home.parent)}[where]
    before = _snapshot(tmp_path)
    code = main(["sparsify", "--output", output, *(["--overwrite"] if overwrite else [])])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "--output" in err and ("directory" in err or "home" in err)
    assert _snapshot(tmp_path) == before and (cwd / "src").is_dir()


def test_read_only_output_found_before_work(tmp_path, monkeypatch, capsys, no_work):
    import tempfile

    def read_only(*a, **k):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    code = main(["sparsify", "--output", str(tmp_path / "new" / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "Read-only file system" in err and err.count("\n") == 1
    assert not (tmp_path / "new").exists()


@needs_bundle
def test_full_disk_found_before_work(tmp_path, monkeypatch, capsys, no_work):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 4096, 4096))
    code = main([*RUN, "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "MiB free" in err
    assert not (tmp_path / "run").exists()


def test_output_that_is_a_file_or_under_a_file(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    for p in (f, f / "sub"):
        with pytest.raises(OutputLocationError):
            check_output_location(p)
    assert f.read_text() == "x"


@needs_bundle
@pytest.mark.parametrize("nested", [False, True])
def test_failure_while_saving_keeps_previous_files_and_rescues(tmp_path, monkeypatch, capsys, nested):
    import tempfile

    import pts_hf.cli as cli

    rescue_root = tmp_path / "tmp"
    rescue_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(rescue_root))
    out = tmp_path / "a" / "b" / "run" if nested else tmp_path / "run"
    if not nested:  # a previous pts-hf output with a file of the user's
        out.mkdir()
        (out / "report.json").write_text(json.dumps({"method": "old", "files": ["report.json", "old.bin"]}))
        (out / "old.bin").write_bytes(b"old")
        (out / "mine.txt").write_text("keep me")
    before = _snapshot(tmp_path / "run") if not nested else None
    real_save = cli._save_model
    calls = []

    def failing(loaded, result, folder, fmt):
        calls.append(folder)
        if len(calls) == 1:  # half a file, then the disk is full
            (folder / "model.safetensors").write_bytes(b"\0" * 100)
            raise OSError(28, "No space left on device")
        real_save(loaded, result, folder, fmt)

    monkeypatch.setattr(cli, "_save_model", failing)
    code = main([*RUN, "--output", str(out), *([] if nested else ["--overwrite"])])
    err = capsys.readouterr().err
    assert code == 1
    assert "No space left on device" in err and "left as it was" in err
    rescued = [p for p in rescue_root.iterdir() if p.name.startswith("pts-hf-rescue-")]
    assert len(rescued) == 1 and str(rescued[0]) in err
    assert {"model.safetensors", "report.json", "allocation.png"} <= {p.name for p in rescued[0].iterdir()}
    if nested:
        assert not (tmp_path / "a").exists()  # no empty folders left behind
    else:
        assert _snapshot(out) == before  # nothing lost, nothing half-written
        assert not [p for p in out.iterdir() if p.name.startswith(".pts_hf")]


@needs_bundle
def test_overwrite_replaces_only_pts_hf_files(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    (out / "sub").mkdir()
    assert main([*RUN, "--output", str(out), "--overwrite"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["files"]) == {"allocation.png", "model.safetensors", "pts_model.json", "report.json",
                                    "sparsity_config.json"}
    assert (out / "mine.txt").read_text() == "keep me" and (out / "sub").is_dir()
    capsys.readouterr()


def test_python_save_failure_leaves_no_folder_and_keeps_previous_files(tmp_path, monkeypatch):
    import safetensors.torch

    r = pts_hf.sparsify(small_cnn(), X, method="magnitude", sparsity=0.5, progress=False)

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_model", full)
    with pytest.raises(OSError):
        r.save_pretrained(tmp_path / "x" / "y")
    assert not (tmp_path / "x").exists()
    prev = tmp_path / "prev"
    monkeypatch.undo()
    r.save_pretrained(prev)
    before = _snapshot(prev)
    monkeypatch.setattr(safetensors.torch, "save_model", full)
    with pytest.raises(OSError):
        r.save_pretrained(prev)
    assert _snapshot(prev) == before and sorted(p.name for p in prev.iterdir()) == sorted(before)


def test_staged_output_restores_on_failure_during_the_move(tmp_path, monkeypatch):
    import os

    out = tmp_path / "o"
    out.mkdir()
    (out / "a").write_text("old a")
    (out / "b").write_text("old b")
    real = os.replace
    n = {"k": 0}

    def flaky(src, dst):
        n["k"] += 1
        if Path(dst) == out / "b" and Path(src).parent.name.startswith(".pts_hf-save-"):
            raise OSError(5, "I/O error")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OSError), staged_output(out) as tmp:
        (tmp / "a").write_text("new a")
        (tmp / "b").write_text("new b")
    assert (out / "a").read_text() == "old a" and (out / "b").read_text() == "old b"
    assert sorted(p.name for p in out.iterdir()) == ["a", "b"]


@needs_bundle
def test_failed_save_on_a_terminal_asks_where_else(tmp_path, monkeypatch, capsys):
    """On a terminal the in-memory result goes to the folder the user types (after one more failed try)."""
    import builtins
    import sys

    import pts_hf.cli as cli

    real_save = cli._save_model
    bad = tmp_path / "full"

    def save(loaded, result, folder, fmt):
        if bad in folder.parents:  # anything under the full disk
            raise OSError(28, "No space left on device")
        real_save(loaded, result, folder, fmt)

    class TTY:
        def isatty(self):
            return True

    answers = iter([str(tmp_path / "full" / "x"), str(tmp_path / "elsewhere")])
    monkeypatch.setattr(cli, "_save_model", save)
    monkeypatch.setattr(sys, "stdin", TTY())
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(answers))
    code = main([*RUN, "--output", str(bad)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "No space left on device" in err and "could not write there either" in err
    assert f"wrote {tmp_path / 'elsewhere'}/" in out
    assert (tmp_path / "elsewhere" / "model.safetensors").is_file()
    assert not bad.exists()
