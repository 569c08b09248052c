"""Train a bundled architecture densely on Fashion-MNIST and save safetensors weights plus a JSON record.

Example (about 1-3 minutes per ResNet-20 epoch on one CPU thread)::

    python examples/train_dense.py --model resnet20-fmnist --epochs 10 --threads 1 \
        --out pts_hf/models/weights/resnet20-fmnist.safetensors

ResNet-20 uses SGD (momentum 0.9, Nesterov, weight decay 5e-4); the ViT uses AdamW. Both use a per-step
cosine learning-rate schedule with a short linear warm-up and light augmentation (random 28x28 crop of the
2-pixel zero-padded image, horizontal flip). The full 10k test split is evaluated after every epoch.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

try:
    import pts_hf.data  # noqa: F401  (installed, or run from a directory that has pts_hf on the path)
except ImportError:  # running `python examples/train_dense.py` from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pts_hf.data import FMNIST_MEAN, FMNIST_STD, evaluate_top1, load_fashion_mnist
from pts_hf.models import BUNDLED_MODELS

DEFAULTS = {  # model -> (optimizer, lr, weight decay)
    "resnet20-fmnist": ("sgd", 0.1, 5e-4),
    "vit-fmnist": ("adamw", 1e-3, 0.05),
    "mobilenet-fmnist": ("sgd", 0.1, 1e-4),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=sorted(BUNDLED_MODELS), default="resnet20-fmnist")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 0.1 SGD, 1e-3 AdamW)")
    p.add_argument("--weight-decay", type=float, default=None, help="default: 5e-4 SGD, 0.05 AdamW")
    p.add_argument("--warmup-epochs", type=float, default=0.5)
    p.add_argument("--no-augment", action="store_true", help="disable random crop + flip")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=None, help="directory with the Fashion-MNIST IDX files")
    p.add_argument("--max-steps", type=int, default=None, help="cap steps per epoch (debug)")
    p.add_argument("--out", type=Path, required=True, help="output .safetensors path")
    return p.parse_args(argv)


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop of the zero-padded image (padding in normalised units) plus random horizontal flip."""
    n, _, h, w = x.shape
    background = (0.0 - FMNIST_MEAN) / FMNIST_STD
    padded = F.pad(x, (pad, pad, pad, pad), value=background)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, x.shape[1], h, w + 2 * pad)
    cropped = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, x.shape[1], h, w)
    out = cropped.gather(3, cols)
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    train, test = load_fashion_mnist("train", args.data_root), load_fashion_mnist("test", args.data_root)
    x_train, y_train = train.tensors
    builder, _ = BUNDLED_MODELS[args.model]
    model = builder()
    n_params = sum(p.numel() for p in model.parameters())

    opt_name, default_lr, default_wd = DEFAULTS[args.model]
    lr = args.lr if args.lr is not None else default_lr
    wd = args.weight_decay if args.weight_decay is not None else default_wd
    if opt_name == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=wd
        )
    else:
        decay = [p for p in model.parameters() if p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=lr)

    steps_per_epoch = math.ceil(len(y_train) / args.batch_size)
    if args.max_steps is not None:
        steps_per_epoch = min(steps_per_epoch, args.max_steps)
    total = steps_per_epoch * args.epochs
    warmup = int(args.warmup_epochs * steps_per_epoch)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    print(f"{args.model}: {n_params / 1e6:.3f}M params, {opt_name} lr={lr} wd={wd}, "
          f"{args.epochs} epochs x {steps_per_epoch} steps, {args.threads} thread(s)", flush=True)

    history = []
    t_start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(len(y_train), generator=gen)
        loss_sum, seen = 0.0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{args.epochs}", mininterval=20,
                   file=sys.stdout, dynamic_ncols=False, ncols=100)
        for step in bar:
            idx = perm[step * args.batch_size:(step + 1) * args.batch_size]
            x, y = x_train[idx], y_train[idx]
            if not args.no_augment:
                x = augment(x, gen)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(y)
            seen += len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", refresh=False)
        bar.close()
        train_s = time.perf_counter() - t0
        acc = evaluate_top1(model, test)
        epoch_s = time.perf_counter() - t0
        history.append({"epoch": epoch, "train_loss": round(loss_sum / seen, 5), "test_top1": round(acc, 2),
                        "train_seconds": round(train_s, 1), "epoch_seconds": round(epoch_s, 1)})
        tqdm.write(f"epoch {epoch}: loss {loss_sum / seen:.4f}  test top-1 {acc:.2f}%  "
                   f"train {train_s:.1f}s  total {epoch_s:.1f}s", file=sys.stdout)
        sys.stdout.flush()
    seconds = time.perf_counter() - t_start

    args.out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"model": args.model, "test_top1": str(history[-1]["test_top1"])}
    save_file(state, str(args.out), metadata=meta)
    record = {
        "model": args.model,
        "test_top1": history[-1]["test_top1"],
        "epochs": args.epochs,
        "seconds": round(seconds, 1),
        "params": n_params,
        "optimizer": opt_name,
        "lr": lr,
        "weight_decay": wd,
        "batch_size": args.batch_size,
        "augment": not args.no_augment,
        "seed": args.seed,
        "threads": args.threads,
        "history": history,
        "command": shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "machine": "2-core CPU",
    }
    json_path = args.out.with_suffix(".json")
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"saved {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) and {json_path}; "
          f"test top-1 {record['test_top1']:.2f}% in {seconds:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
