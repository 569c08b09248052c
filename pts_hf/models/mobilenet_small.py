"""A small MobileNetV2-style network (inverted residuals with depthwise 3x3 convolutions) for 28x28 images.

Depthwise layers hold few weights each but carry most of the spatial computation, so pruning them hurts far more
than their share of the parameter count suggests: the held-out test bed for per-layer allocation.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["InvertedResidual", "MobileNetSmall", "mobilenet_fmnist"]


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1x1 expansion (skipped when ``expand == 1``), depthwise 3x3, linear 1x1 projection; identity shortcut when
    the shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(cin, hidden, 1))
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, cout, 1, act=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


class MobileNetSmall(nn.Module):
    """Stem 3x3 conv, inverted-residual stages ``(expand, channels, blocks, stride)``, 1x1 head conv, pool, linear."""

    def __init__(self, stages: tuple[tuple[int, int, int, int], ...] = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2),
                                                                         (4, 64, 2, 1)),
                 in_chans: int = 1, num_classes: int = 10, stem: int = 16, head: int = 128) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(in_chans, stem, 3)]
        cin = stem
        for expand, cout, blocks, stride in stages:
            for i in range(blocks):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        layers.append(_conv_bn(cin, head, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(head, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def mobilenet_fmnist(in_chans: int = 1, num_classes: int = 10) -> nn.Module:
    """MobileNetV2-style net for 28x28 inputs: 16-channel stem, inverted residuals 16/24/32/64 (expansion 4,
    strides to 7x7), 128-channel head; about 0.087M parameters, 7k of them in the depthwise layers."""
    return MobileNetSmall(in_chans=in_chans, num_classes=num_classes)
