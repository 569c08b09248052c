import json

import pytest
import torch

from pts_hf.targets import discover_targets, measure_sparsity
from tests.tiny_models import TINY_MODELS


def _dataset(name):
    from datasets import Dataset

    g = torch.Generator().manual_seed(0)
    if name == "hf_vit":
        return Dataset.from_dict({"pixel_values": torch.randn(32, 3, 32, 32, generator=g).numpy()}).with_format("torch")
    ids = torch.randint(0, 128, (32, 8), generator=g)
    return Dataset.from_dict({"input_ids": ids.numpy(), "attention_mask": torch.ones_like(ids).numpy()}
                             ).with_format("torch")


@pytest.mark.parametrize("name", ["hf_vit", "hf_bert"])
def test_trainer_run_reaches_exact_target_and_checkpoints_reload_sparse(name, tmp_path):
    import transformers
    from transformers import Trainer, TrainingArguments

    from pts_hf.integrations.trainer import PTSCallback

    model = TINY_MODELS[name][0]()
    n = sum(t.numel for t in discover_targets(model))
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=8, save_steps=3,
                             learning_rate=1e-4, report_to=[], use_cpu=True, remove_unused_columns=False,
                             disable_tqdm=True, logging_strategy="no")
    cb = PTSCallback("fcpts", sparsity=0.8, threshold_lr=0.05)
    trainer = Trainer(model=model, args=args, train_dataset=_dataset(name), callbacks=[cb])
    # thresholds are model parameters before the optimizer exists, so the Trainer's optimizer holds them
    names = [k for k, _ in model.named_parameters() if k.endswith("theta")]
    assert len(names) == len(cb.sparsifier.groups)
    cb_threshold = float(cb.sparsifier.parametrization_of(cb.sparsifier.groups[-1]).value().detach())
    trainer.train()
    zeros, total = 0, 0
    for t in discover_targets(model):
        zeros += int((t.weight == 0).sum())
        total += t.numel
    assert total == n and zeros == round(0.8 * n)
    assert not any("parametrizations" in k for k in model.state_dict())
    assert "forward" not in vars(model) and not model._forward_hooks  # the distillation hook is gone
    assert len(cb.history) == 6 and {"rec", "control", "sparsity"} <= set(cb.history[-1])
    assert cb_threshold > 0

    ckpt = tmp_path / "checkpoint-3"
    loaded = getattr(transformers, type(model).__name__).from_pretrained(ckpt)
    assert not any("parametrizations" in k for k in loaded.state_dict())
    _, s = measure_sparsity(discover_targets(loaded))
    assert 0.7 < s < 0.9  # the checkpoint holds the sparse weights of step 3, not re-initialised dense ones
    assert (ckpt / "sparsity_config.json").is_file()


def test_callback_rejects_methods_without_a_loss():
    from pts_hf.integrations.trainer import PTSCallback

    with pytest.raises(ValueError, match="no training loss"):
        PTSCallback("magnitude", sparsity=0.5)


def _readme_block(heading: str) -> str:
    """The first ```python block after ``heading`` in README.md, exactly as printed."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    after = text[text.index(heading):]
    start = after.index("```python\n") + len("```python\n")
    return after[start:after.index("```", start)]


def _calib(kind, name):
    g = torch.Generator().manual_seed(0)
    if name == "hf_vit":
        rows = [{"pixel_values": torch.randn(3, 32, 32, generator=g)} for _ in range(16)]
    else:
        rows = [{"input_ids": torch.randint(0, 128, (8,), generator=g),
                 "attention_mask": torch.ones(8, dtype=torch.long)}
                for _ in range(16)]
    if kind == "list":
        return rows
    from datasets import Dataset

    return Dataset.from_list([{k: v.numpy() for k, v in r.items()} for r in rows]).with_format("torch")


@pytest.mark.parametrize("kind, name", [("list", "hf_bert"), ("dataset", "hf_bert"), ("dataset", "hf_vit")])
def test_readme_trainer_snippet_verbatim_with_default_arguments(kind, name, tmp_path, monkeypatch):
    """README's Trainer snippet, exactly as printed, with default TrainingArguments (remove_unused_columns=True)."""
    import inspect

    import transformers
    from transformers import Trainer, TrainingArguments

    snippet = _readme_block("### Hugging Face Trainer")
    assert "PTSCallback" in snippet and 'trainer.save_model("out")' in snippet
    monkeypatch.chdir(tmp_path)
    model = TINY_MODELS[name][0]()
    signature = inspect.signature(model.forward)
    args = TrainingArguments(output_dir=str(tmp_path / "run"))
    assert args.remove_unused_columns
    ns = {"Trainer": Trainer, "model": model, "args": args, "calib": _calib(kind, name)}
    exec(compile(snippet, "README.md", "exec"), ns)
    trainer = ns["trainer"]
    assert trainer.state.global_step > 0
    assert inspect.signature(model.forward) == signature
    out = tmp_path / "out"
    side = json.loads((out / "sparsity_config.json").read_text())
    assert side["method"] == "fcpts" and side["target_sparsity"] == 0.8
    assert abs(side["global_sparsity"] - 0.8) < 1e-3
    loaded = getattr(transformers, type(model).__name__).from_pretrained(out)
    _, s = measure_sparsity(discover_targets(loaded))
    assert abs(s - 0.8) < 1e-3
    # "AutoModel.from_pretrained("out") loads the sparse weights" (the README comment)
    auto = transformers.AutoModel.from_pretrained(out)
    assert abs(measure_sparsity(discover_targets(auto))[1] - 0.8) < 0.05


def test_callback_hook_keeps_forward_and_adds_the_distillation_loss():
    import inspect

    from pts_hf.integrations.trainer import PTSCallback

    model = TINY_MODELS["hf_bert"][0]()
    before = inspect.signature(model.forward)
    cb = PTSCallback("fcpts", sparsity=0.5)

    class Args:
        learning_rate = 1e-4

    cb.on_init_end(Args(), None, None, model=model)
    assert "forward" not in vars(model) and len(model._forward_hooks) == 1  # a hook, not a patched forward
    assert inspect.signature(model.forward) == before
    # while training, the output's loss is the distillation loss (the model itself returns none without labels)
    ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))
    model.train()
    out = model(input_ids=ids)
    assert out["loss"].requires_grad and len(cb.history) == 1 and {"rec", "control"} <= set(cb.history[0])
    model.eval()
    assert model(input_ids=ids).get("loss") is None and len(cb.history) == 1


def test_callback_refuses_options_the_trainer_decides():
    from pts_hf.integrations.trainer import PTSCallback

    for option in ({"mixed_precision": "bf16"}, {"gradient_accumulation_steps": 2}, {"steps": 10}):
        with pytest.raises(ValueError, match="TrainingArguments"):
            PTSCallback("fcpts", sparsity=0.5, **option)


def test_callback_adds_feature_distillation_of_the_blocks():
    from pts_hf.integrations.trainer import PTSCallback

    model = TINY_MODELS["hf_bert"][0]()
    cb = PTSCallback("fcpts", sparsity=0.8, feature_weight=2.0)

    class Args:
        learning_rate = 1e-4

    cb.on_init_end(Args(), None, None, model=model)
    assert cb._taps is not None and cb._taps[0].names == ["encoder.layer.0", "encoder.layer.1"]
    ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))
    model.train()
    out = model(input_ids=ids)
    logs = cb.history[0]
    assert logs["feature"] > 0  # 80% of the weights are masked: the blocks' outputs differ from the dense ones
    expected = logs["rec"] + logs["control"] + 2.0 * logs["feature"]
    assert abs(float(out["loss"]) - expected) < 1e-4 * max(1.0, expected)
    # feature_schedule="cosine" follows the Trainer's global_step / max_steps: at the half the weight is 1.0
    cb.sparsifier.method_config.feature_schedule = "cosine"

    class State:
        epoch, global_step, max_steps = 0.5, 5, 10

    cb.on_step_end(Args(), State(), None)
    out = model(input_ids=ids)
    logs = cb.history[-1]
    expected = logs["rec"] + logs["control"] + 1.0 * logs["feature"]
    assert abs(float(out["loss"]) - expected) < 1e-4 * max(1.0, expected)
