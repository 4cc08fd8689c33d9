"""VGG with batch norm, CIFAR variant of the distillation benchmarks (CRD, mdistiller): five blocks
of 3×3 conv-BN-ReLU, max-pooled after the first three, then global pooling and one linear layer."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from kdlens.models.base import init_weights, register_model

_BLOCK_WIDTHS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256] * 3, [512] * 3, [512] * 3],
    "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


class CifarVGG(nn.Module):
    def __init__(
        self, *, block_widths: list[list[int]], num_classes: int, in_channels: int = 3
    ) -> None:
        super().__init__()
        self.block0 = _make_block(in_channels, block_widths[0])
        self.block1 = _make_block(block_widths[0][-1], block_widths[1])
        self.block2 = _make_block(block_widths[1][-1], block_widths[2])
        self.block3 = _make_block(block_widths[2][-1], block_widths[3])
        self.block4 = _make_block(block_widths[3][-1], block_widths[4])
        # No pool after block3: at CIFAR resolution block3 and block4 share the 4×4 map.
        self.pool0 = nn.MaxPool2d(2)
        self.pool1 = nn.MaxPool2d(2)
        self.pool2 = nn.MaxPool2d(2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(block_widths[-1][-1], num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool0(self.block0(x))
        x = self.pool1(self.block1(x))
        x = self.pool2(self.block2(x))
        x = self.block4(self.block3(x))
        return self.classifier(torch.flatten(self.pool(x), 1))


def _make_block(in_channels: int, widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        # Biased convolutions before BN are redundant but part of the published parameter counts.
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        in_channels = width
    return nn.Sequential(*layers)


for _name, _block_widths in _BLOCK_WIDTHS.items():
    register_model(
        _name,
        partial(CifarVGG, block_widths=_block_widths),
        family="vgg",
        stages=("block0", "block1", "block2", "block3", "block4"),
        classifier="classifier",
        # mdistiller's vgg*_bn: the same names (its last ReLU of a block is functional, no weights).
        foreign_keys={"mdistiller": ()},
    )
