"""Bundled Fashion-MNIST models: architectures plus (optionally) trained safetensors weights.

Weights live in ``pts_hf/models/weights/<name>.safetensors`` and are loaded with
``safetensors.torch.load_file`` (never pickle). ``examples/train_dense.py`` produces them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from .mobilenet_small import mobilenet_fmnist
from .resnet_cifar import resnet20
from .vit_small import vit_fmnist

__all__ = ["BUNDLED_MODELS", "WEIGHTS_DIR", "list_bundled", "load_bundled", "mobilenet_fmnist", "resnet20",
           "vit_fmnist"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

#: name -> (builder, weights file name inside ``WEIGHTS_DIR``)
BUNDLED_MODELS: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "resnet20-fmnist": (resnet20, "resnet20-fmnist.safetensors"),
    "vit-fmnist": (vit_fmnist, "vit-fmnist.safetensors"),
    "mobilenet-fmnist": (mobilenet_fmnist, "mobilenet-fmnist.safetensors"),
}


def list_bundled() -> list[str]:
    """Names accepted by :func:`load_bundled`."""
    return sorted(BUNDLED_MODELS)


def load_bundled(name: str, pretrained: bool = True) -> nn.Module:
    """Build a bundled model and (if ``pretrained``) load its trained weights; returned in eval mode.

    Raises:
        ValueError: unknown ``name``.
        FileNotFoundError: ``pretrained`` and the weights file has not been produced.
    """
    if name not in BUNDLED_MODELS:
        raise ValueError(f"unknown bundled model {name!r}; known models: {', '.join(list_bundled())}")
    builder, filename = BUNDLED_MODELS[name]
    model = builder()
    if pretrained:
        path = WEIGHTS_DIR / filename
        if not path.is_file():
            raise FileNotFoundError(
                f"weights for {name!r} not found at {path}; produce them with "
                f"`python examples/train_dense.py --model {name} --out {path}`"
            )
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(path)))
    return model.eval()
