"""A small Vision Transformer for 28x28 Fashion-MNIST, built on timm's ``VisionTransformer``."""

from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer
from torch import nn

__all__ = ["vit_fmnist"]


def vit_fmnist(num_classes: int = 10) -> nn.Module:
    """ViT with 4x4 patches (49 tokens + CLS), width 96, depth 6, 3 heads, MLP ratio 2 (~0.46M parameters)."""
    return VisionTransformer(
        img_size=28,
        patch_size=4,
        in_chans=1,
        num_classes=num_classes,
        embed_dim=96,
        depth=6,
        num_heads=3,
        mlp_ratio=2.0,
        drop_path_rate=0.05,
    )
