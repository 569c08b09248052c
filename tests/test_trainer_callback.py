import pytest
import torch

from pts_hf.api import measure_sparsity
from pts_hf.targets import discover_targets
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
    names = [k for k, _ in model.named_parameters() if k.endswith("threshold")]
    assert len(names) == len(cb.sparsifier.groups)
    cb_threshold = float(cb.sparsifier.parametrization_of(cb.sparsifier.groups[-1]).value().detach())
    trainer.train()
    zeros, total = 0, 0
    for t in discover_targets(model):
        zeros += int((t.weight == 0).sum())
        total += t.numel
    assert total == n and zeros == round(0.8 * n)
    assert not any("parametrizations" in k for k in model.state_dict())
    assert type(model).forward is not None and "forward" not in vars(model)
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
