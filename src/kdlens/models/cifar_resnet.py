"""CIFAR ResNets of the distillation benchmarks (CRD, mdistiller): three stages of BasicBlocks.

``resnetD`` has ``(D - 2) / 6`` blocks per stage and widths 16-16-32-64; the ``x4`` variants are
four times as wide (32-64-128-256), the usual teacher/student pair being resnet32x4 -> resnet8x4.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlens.models import canonizers
from kdlens.models.base import init_weights, register_model


class BasicBlock(nn.Module):
    """Two 3×3 convolutions plus a residual, projected by a 1×1 conv where the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _sum_forward(self: BasicBlock, x: Tensor) -> Tensor:
    """``BasicBlock.forward`` with the addition done by zennit's ``Sum`` (LRP's canonical form)."""
    out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    return F.relu(self.canonizer_sum(torch.stack([self.shortcut(x), out], dim=-1)))


def lrp_canonizers(model: nn.Module) -> list:
    """LRP canonizers (:mod:`kdlens.models.canonizers`): each conv merged with the BN that follows
    it (stem, both convs of each block, the projection shortcut), the blocks' additions by ``Sum``."""
    merges = [(("conv1",), "bn1")]
    for name, module in model.named_modules():
        if isinstance(module, BasicBlock):
            merges += [((f"{name}.conv1",), f"{name}.bn1"), ((f"{name}.conv2",), f"{name}.bn2")]
            if isinstance(module.shortcut, nn.Sequential):
                merges.append(((f"{name}.shortcut.0",), f"{name}.shortcut.1"))
    return [canonizers.merge_batch_norms(merges), canonizers.residual_sum(BasicBlock, _sum_forward)]


def cifar_blocks_per_stage(depth: int) -> int:
    """n = (depth − 2) / 6 basic blocks in each of the 3 stages."""
    if (depth - 2) % 6 != 0:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
    return (depth - 2) // 6


class CifarResNet(nn.Module):
    def __init__(
        self,
        *,
        depth: int,
        widths: tuple[int, int, int, int],
        num_classes: int,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        blocks_per_stage = cifar_blocks_per_stage(depth)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = _make_stage(widths[0], widths[1], blocks_per_stage, stride=1)
        self.layer2 = _make_stage(widths[1], widths[2], blocks_per_stage, stride=2)
        self.layer3 = _make_stage(widths[2], widths[3], blocks_per_stage, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _make_stage(in_channels: int, out_channels: int, num_blocks: int, stride: int) -> nn.Sequential:
    blocks = [BasicBlock(in_channels, out_channels, stride)]
    blocks += [BasicBlock(out_channels, out_channels, 1) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


# mdistiller/CRD name the projection shortcut ``downsample``; their AvgPool2d(8) equals our
# adaptive pooling on 32×32 inputs, so their weights give the same logits here.
MDISTILLER_KEYS = ((r"\.downsample\.", ".shortcut."),)

_PLAIN_WIDTHS = (16, 16, 32, 64)
_X4_WIDTHS = (32, 64, 128, 256)
_VARIANTS = {
    "resnet8": (8, _PLAIN_WIDTHS),
    "resnet14": (14, _PLAIN_WIDTHS),
    "resnet20": (20, _PLAIN_WIDTHS),
    "resnet32": (32, _PLAIN_WIDTHS),
    "resnet44": (44, _PLAIN_WIDTHS),
    "resnet56": (56, _PLAIN_WIDTHS),
    "resnet110": (110, _PLAIN_WIDTHS),
    "resnet8x4": (8, _X4_WIDTHS),
    "resnet32x4": (32, _X4_WIDTHS),
}

for _name, (_depth, _widths) in _VARIANTS.items():
    register_model(
        _name,
        partial(CifarResNet, depth=_depth, widths=_widths),
        family="cifar_resnet",
        stages=("layer1", "layer2", "layer3"),
        classifier="fc",
        foreign_keys={"mdistiller": MDISTILLER_KEYS},
        lrp_canonizers=lrp_canonizers,
    )
