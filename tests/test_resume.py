"""Interrupt and resume (issue 11 item 4): a run stopped by Ctrl-C (or a KeyboardInterrupt from the data
iterator) writes a checkpoint; resuming from it ends with exactly the weights of an uninterrupted run."""

import signal
import warnings

import pytest
import torch

import pts_hf
import pts_hf.distillation as distillation
import pts_hf.sparsifiers.fcpts as fcpts_module
import pts_hf.sparsifiers.unipts as unipts_module
from pts_hf.resume import Interrupted, read_checkpoint
from tests.tiny_models import small_cnn

X = torch.randn(48, 3, 16, 16, generator=torch.Generator().manual_seed(0))
OPTS = {
    "fcpts": {"steps": 8, "batch_size": 16, "fixed_mask_tail": 0.5, "augment": "flip_crop", "threshold_lr": 0.05},
    "unipts": {"steps": 6, "batch_size": 16, "population": 3, "generations": 2, "parents": 2, "search_samples": 16,
               "fitness_samples": 16, "mask_interval": 2, "search": True},
}


class Flaky:
    """Re-iterable batches of X; once armed, interrupts the k-th batch fetch after arming."""

    def __init__(self, how: str = "raise"):
        self.batches = list(torch.split(X, 16))
        self.count = 0
        self.fire_at: int | None = None
        self.how = how

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for b in self.batches:
            self.count += 1
            if self.fire_at is not None and self.count == self.fire_at:
                self.fire_at = None
                if self.how == "raise":
                    raise KeyboardInterrupt
                signal.raise_signal(signal.SIGINT)  # as Ctrl-C: the loop stops after this step
            yield b


def _arm(monkeypatch, data: Flaky, after: int):
    """Interrupt ``after`` fetches into the distillation loop (whatever the search read before it)."""
    real = distillation.run_distillation

    def armed(*a, **k):
        data.fire_at = data.count + after + 1
        return real(*a, **k)

    monkeypatch.setattr(distillation, "run_distillation", armed)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _run(method, data, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pts_hf.sparsify(small_cnn(), data, method=method, sparsity=0.7, progress=False, **OPTS[method], **kw)


@pytest.mark.parametrize("method, at", [("fcpts", 3), ("fcpts", 6), ("unipts", 2)])
@pytest.mark.parametrize("how", ["raise", "signal"])
def test_interrupt_then_resume_is_bit_exact(method, at, how, tmp_path, monkeypatch):
    ref = _run(method, Flaky())
    data = Flaky(how)
    _arm(monkeypatch, data, at)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(Interrupted) as e:
        _run(method, data, checkpoint_dir=ckpt)
    expected_step = at if how == "raise" else at + 1  # a signal lets the current step finish
    assert e.value.step == expected_step and e.value.directory == ckpt
    assert "resume_from=" in str(e.value) and str(ckpt) in str(e.value)
    assert read_checkpoint(ckpt)["meta"]["step"] == expected_step
    monkeypatch.undo()
    cls = fcpts_module.FCPTSSparsifier if method == "fcpts" else unipts_module.UniPTSSparsifier
    real, calls = cls.compute_loss, []
    monkeypatch.setattr(cls, "compute_loss", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    resumed = _run(method, Flaky(), resume_from=ckpt)
    assert len(calls) == OPTS[method]["steps"] - expected_step  # it continued, it did not start again
    _same_weights(ref.model, resumed.model)
    assert len(resumed.record.history) == OPTS[method]["steps"]
    assert resumed.record.history == ref.record.history


def test_interrupt_mid_update_falls_back_to_the_periodic_checkpoint(tmp_path, monkeypatch):
    ref = _run("fcpts", Flaky())
    real = fcpts_module.FCPTSSparsifier.compute_loss
    calls = {"n": 0}

    def boom(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 6:  # step 5, after the checkpoint of step 4
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(fcpts_module.FCPTSSparsifier, "compute_loss", boom)
    with pytest.raises(Interrupted, match="the checkpoint of step 4") as e:
        _run("fcpts", Flaky(), checkpoint_dir=tmp_path, checkpoint_every=4)
    assert e.value.step == 4
    assert read_checkpoint(tmp_path)["meta"]["step"] == 4
    monkeypatch.undo()
    _same_weights(ref.model, _run("fcpts", Flaky(), resume_from=tmp_path).model)


def test_resume_refuses_another_job(tmp_path, monkeypatch):
    data = Flaky()
    _arm(monkeypatch, data, 2)
    with pytest.raises(Interrupted):
        _run("fcpts", data, checkpoint_dir=tmp_path)
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"other options: sparsity=0\.7"):
        pts_hf.sparsify(small_cnn(), X, method="fcpts", sparsity=0.8, resume_from=tmp_path, **OPTS["fcpts"])
    other = small_cnn()
    with torch.no_grad():
        other[0].weight.add_(1.0)
    with pytest.raises(ValueError, match="another model"):
        pts_hf.sparsify(other, X, method="fcpts", sparsity=0.7, resume_from=tmp_path, **OPTS["fcpts"])
    with pytest.raises(ValueError, match="method 'fcpts', not 'unipts'"):
        _run("unipts", X, resume_from=tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"holds no state\.pt"):
        _run("fcpts", X, resume_from=empty)


def test_checkpoint_options_checked_before_work():
    with pytest.raises(ValueError, match="positive integer"):
        pts_hf.sparsify(small_cnn(), X, method="fcpts", checkpoint_dir="x", checkpoint_every=0)
    with pytest.raises(ValueError, match="needs checkpoint_dir"):
        pts_hf.sparsify(small_cnn(), X, method="fcpts", checkpoint_every=5)
    with pytest.raises(ValueError, match="is not a folder"):
        pts_hf.sparsify(small_cnn(), X, method="fcpts", resume_from="/no/such/dir")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        pts_hf.sparsify(small_cnn(), X, method="fcpts", checkpoint_dir=__file__)


def test_interrupt_without_checkpoint_dir_says_nothing_was_saved(monkeypatch):
    data = Flaky()
    _arm(monkeypatch, data, 1)
    with pytest.raises(Interrupted, match="nothing was saved"):
        _run("fcpts", data)


def test_cli_ctrl_c_says_how_to_resume_and_resume_is_bit_exact(tmp_path, monkeypatch, capsys):
    import shlex

    from safetensors.torch import load_file

    from pts_hf.cli import main
    from tests.test_cli import needs_bundle

    if needs_bundle.args[0]:
        pytest.skip(needs_bundle.kwargs["reason"])
    monkeypatch.chdir(tmp_path)
    base = ["sparsify", "--model", "resnet20-fmnist", "--data", "fashion-mnist", "--method", "fcpts", "--steps", "5",
            "--calib-samples", "64", "--batch-size", "32", "--no-progress", "--checkpoint-every", "2"]
    assert main([*base, "--output", "ref"]) == 0
    assert not (tmp_path / "ref.checkpoint").exists()  # the work folder is removed after success
    capsys.readouterr()

    real = fcpts_module.FCPTSSparsifier.compute_loss
    calls = {"n": 0}

    def ctrl_c(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(fcpts_module.FCPTSSparsifier, "compute_loss", ctrl_c)
    assert main([*base, "--output", "run"]) == 130
    err = capsys.readouterr().err
    assert "checkpoint in run.checkpoint/" in err and "--resume run.checkpoint" in err
    assert not (tmp_path / "run").exists()
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    command = shlex.split(err.split("continue with: ")[1].strip())
    assert command[0] == "pts-hf"
    assert main(command[1:]) == 0, capsys.readouterr().err
    a, b = load_file("ref/model.safetensors"), load_file("run/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "run.checkpoint").exists()


def test_cli_refuses_a_stale_checkpoint_without_resume(tmp_path, capsys):
    from pts_hf.cli import main

    (tmp_path / "run.checkpoint").mkdir()
    (tmp_path / "run.checkpoint" / "state.pt").write_bytes(b"x")
    assert main(["sparsify", "--output", str(tmp_path / "run")]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["sparsify", "--resume", str(tmp_path / "nope")]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err


def test_interrupt_after_the_loop_points_at_its_last_checkpoint(tmp_path, monkeypatch):
    """Ctrl-C during the final BatchNorm re-estimation: the end-of-loop checkpoint continues the run."""
    ref = _run("fcpts", Flaky())

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(distillation, "finish_batchnorm", ctrl_c)
    with pytest.raises(Interrupted, match="the checkpoint of step 8") as e:
        _run("fcpts", Flaky(), checkpoint_dir=tmp_path)
    assert e.value.step == 8
    monkeypatch.undo()
    _same_weights(ref.model, _run("fcpts", Flaky(), resume_from=tmp_path).model)


def test_readme_when_things_go_wrong_snippet(tmp_path, monkeypatch):
    """README "When things go wrong", exactly as printed: Ctrl-C (simulated at step 130 of the default 500),
    then the resume in the except branch gives the weights of an uninterrupted run."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    after = text[text.index("## When things go wrong"):]
    start = after.index("```python\n") + len("```python\n")
    snippet = after[start:after.index("```", start)]
    monkeypatch.chdir(tmp_path)
    calib = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = pts_hf.sparsify(small_cnn(), calib, method="fcpts", sparsity=0.9, progress=False)
    real = fcpts_module.FCPTSSparsifier.compute_loss
    calls = {"n": 0}

    def ctrl_c_once(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 131:
            signal.raise_signal(signal.SIGINT)
        return real(self, *a, **k)

    monkeypatch.setattr(fcpts_module.FCPTSSparsifier, "compute_loss", ctrl_c_once)
    ns = {"pts_hf": pts_hf, "model": small_cnn(), "calib": calib}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(snippet, "README.md", "exec"), ns)
    assert calls["n"] == 500  # 131 steps, then the remaining 369 after the resume
    assert (tmp_path / "ckpt" / "state.pt").is_file()
    _same_weights(ref.model, ns["result"].model)
