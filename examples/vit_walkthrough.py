"""HF ViTForImageClassification (tiny, from config) on Fashion-MNIST: a short dense fine-tune, then FCPTS inside a
plain ``transformers.Trainer`` through ``PTSCallback``, then ``save_model`` → plain ``from_pretrained``.

    python examples/vit_walkthrough.py --train-steps 600 --pts-steps 300 --sparsity 0.8 --out runs/vit-80

Images go through the model's own image processor (``ViTImageProcessor``) via ``datasets.Dataset.set_transform``;
the calibration set holds no labels.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def fmnist_dataset(split: str, n: int, processor, seed: int = 0, labels: bool = True):
    from datasets import Dataset, Features, Image, Value
    from PIL import Image as PILImage

    from pts_hf.data import FMNIST_MEAN, FMNIST_STD, load_fashion_mnist

    x, y = load_fashion_mnist(split).tensors
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n]
    raw = ((x[idx, 0] * FMNIST_STD + FMNIST_MEAN) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    data = {"image": [PILImage.fromarray(np.asarray(a)) for a in raw]}
    features = {"image": Image()}
    if labels:
        data["label"] = y[idx].tolist()
        features["label"] = Value("int64")
    ds = Dataset.from_dict(data, features=Features(features))

    def transform(batch):
        out = {"pixel_values": processor(batch["image"], return_tensors="pt")["pixel_values"]}
        if "label" in batch:
            out["labels"] = torch.tensor(batch["label"])
        return out

    ds.set_transform(transform)
    return ds


@torch.no_grad()
def accuracy(model, ds, batch_size: int = 256) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(ds), batch_size):
        b = ds[i : i + batch_size]
        correct += int((model(pixel_values=b["pixel_values"]).logits.argmax(-1) == b["labels"]).sum())
    return 100.0 * correct / len(ds)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-steps", type=int, default=600, help="dense fine-tuning steps (batch 64)")
    p.add_argument("--pts-steps", type=int, default=300)
    p.add_argument("--sparsity", type=float, default=0.8)
    p.add_argument("--calib", type=int, default=1024)
    p.add_argument("--eval", type=int, default=2000)
    p.add_argument("--out", default="runs/vit-sparse")
    args = p.parse_args(argv)

    from transformers import Trainer, TrainingArguments, ViTConfig, ViTForImageClassification, ViTImageProcessor

    from pts_hf.integrations.trainer import PTSCallback

    torch.manual_seed(0)
    config = ViTConfig(image_size=28, patch_size=4, num_channels=1, hidden_size=64, num_hidden_layers=4,
                       num_attention_heads=4, intermediate_size=128, num_labels=10)
    processor = ViTImageProcessor(do_resize=False, image_mean=[0.2860], image_std=[0.3530])
    model = ViTForImageClassification(config)
    test = fmnist_dataset("test", args.eval, processor, seed=1)
    common = {"report_to": [], "use_cpu": True, "remove_unused_columns": False, "disable_tqdm": True,
              "logging_strategy": "no", "save_strategy": "no", "per_device_train_batch_size": 64}
    start = time.time()
    if args.train_steps:
        train = fmnist_dataset("train", min(60000, args.train_steps * 64), processor, seed=0)
        Trainer(model=model, args=TrainingArguments(output_dir=f"{args.out}-dense", max_steps=args.train_steps,
                                                    learning_rate=2e-3, warmup_steps=50, **common),
                train_dataset=train).train()
    dense_acc = accuracy(model, test)

    calib = fmnist_dataset("train", args.calib, processor, seed=2, labels=False)
    callback = PTSCallback("fcpts", sparsity=args.sparsity, threshold_lr=0.02)
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=args.out, max_steps=args.pts_steps,
                                                          learning_rate=1e-4, **common),
                      train_dataset=calib, callbacks=[callback])
    trainer.train()
    trainer.save_model(args.out)
    processor.save_pretrained(args.out)
    reloaded = ViTForImageClassification.from_pretrained(args.out)
    sparse_acc = accuracy(reloaded, test)
    zeros = sum(int((m.weight == 0).sum()) for m in reloaded.modules() if isinstance(m, torch.nn.Linear))
    total = sum(m.weight.numel() for m in reloaded.modules() if isinstance(m, torch.nn.Linear))
    print(f"ViT dense top-1 {dense_acc:.2f}% -> FCPTS {args.sparsity:.0%} top-1 {sparse_acc:.2f}% "
          f"(Linear sparsity {zeros / total:.4f}) on {len(test)} test images, {time.time() - start:.0f}s")
    return {"dense_top1": dense_acc, "sparse_top1": sparse_acc, "history": callback.history}


if __name__ == "__main__":
    main()
