"""Tiny random models built from configs (no downloads), shared by the tests."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def timm_model(name: str, **kw) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False, num_classes=10, **kw)


def torchvision_resnet18() -> nn.Module:
    import torchvision

    return torchvision.models.resnet18(num_classes=10)


def hf_bert() -> nn.Module:
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=64))


def hf_vit() -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    return ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=32,
                                               num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                               num_labels=10))


def hf_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=128, n_positions=64, n_embd=32, n_layer=2, n_head=2))


def hf_llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                        tie_word_embeddings=False))


def image_batch(n: int = 4, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def text_batch(n: int = 2, length: int = 8) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 128, (n, length), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


# name -> (builder, input maker, modules that must NOT be targets)
TINY_MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[], object], tuple[str, ...]]] = {
    "timm_resnet18": (lambda: timm_model("resnet18"), image_batch, ()),
    "timm_mobilenetv2_100": (lambda: timm_model("mobilenetv2_100"), image_batch, ()),
    "timm_vit_tiny": (lambda: timm_model("vit_tiny_patch16_224", img_size=32), image_batch, ()),
    "torchvision_resnet18": (torchvision_resnet18, image_batch, ()),
    "hf_bert": (hf_bert, text_batch, ("embeddings.word_embeddings",)),
    "hf_vit": (hf_vit, lambda: {"pixel_values": image_batch()}, ("vit.embeddings.patch_embeddings.projection",)),
    "hf_gpt2": (hf_gpt2, text_batch, ("lm_head", "transformer.wte")),
    "hf_llama": (hf_llama, text_batch, ("lm_head", "model.embed_tokens")),
}


def small_cnn(bn: bool = True) -> nn.Module:
    torch.manual_seed(0)
    norm = nn.BatchNorm2d if bn else (lambda c: nn.Identity())
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), norm(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), norm(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), norm(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )
