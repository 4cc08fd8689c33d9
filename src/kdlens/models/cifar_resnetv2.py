"""ResNet18 and ResNet50 adapted to CIFAR, as in the distillation benchmarks (mdistiller's
``ResNet18``/``ResNet50``; ResNet50 is one of its published CIFAR-100 teachers).

Unlike torchvision's ``resnet18``/``resnet50`` (registered under those lower-case names) the stem
is a single 3×3 convolution of stride 1 without max pooling, so a 32×32 image keeps its resolution
into the first of four stages (64, 128, 256, 512 channels × the block's expansion; the last three
halve the resolution).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlens.models.base import init_weights, register_model


def _projection(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """1×1 conv + BN where a block changes shape, else the identity."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class BasicBlock(nn.Module):
    """Two 3×3 convolutions (the first strided) plus a residual."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _projection(in_channels, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (strided), 1×1 expand to four times ``planes``, plus a residual."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = _projection(in_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class CifarResNetV2(nn.Module):
    def __init__(
        self,
        *,
        block: type[BasicBlock] | type[Bottleneck],
        blocks_per_stage: tuple[int, int, int, int],
        num_classes: int,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        channels = 64
        stages = []
        for planes, num_blocks, stride in zip((64, 128, 256, 512), blocks_per_stage, (1, 2, 2, 2), strict=True):
            blocks = []
            for block_stride in [stride] + [1] * (num_blocks - 1):
                blocks.append(block(channels, planes, block_stride))
                channels = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


# mdistiller names the classifier ``linear``; everything else (including ``shortcut``) matches.
MDISTILLER_KEYS = ((r"^linear\.", "fc."),)

_VARIANTS = {
    "ResNet18": (BasicBlock, (2, 2, 2, 2)),
    "ResNet50": (Bottleneck, (3, 4, 6, 3)),
}

for _name, (_block, _blocks_per_stage) in _VARIANTS.items():
    register_model(
        _name,
        partial(CifarResNetV2, block=_block, blocks_per_stage=_blocks_per_stage),
        family="cifar_resnetv2",
        stages=("layer1", "layer2", "layer3", "layer4"),
        classifier="fc",
        foreign_keys={"mdistiller": MDISTILLER_KEYS},
    )
