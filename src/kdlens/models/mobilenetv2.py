"""MobileNetV2 for CIFAR as in the distillation benchmarks (CRD's ``mobile_half``): half width,
expansion 6, a strided stem and ReLU activations."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from kdlens.models.base import init_weights, register_model


def _conv_bn_relu(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class InvertedResidual(nn.Module):
    """1×1 expand, 3×3 depthwise, linear 1×1 project; residual when the shape is kept. The expand
    conv is present even at expansion 1, as in the benchmark code (it counts in the parameters)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class CifarMobileNetV2(nn.Module):
    def __init__(
        self, *, expansion: int, width_mult: float, num_classes: int, in_channels: int = 3
    ) -> None:
        super().__init__()
        # (expansion, output channels at full width, number of blocks, stride of the first block)
        settings = [
            (1, 16, 1, 1),
            (expansion, 24, 2, 1),
            (expansion, 32, 3, 2),
            (expansion, 64, 4, 2),
            (expansion, 96, 3, 1),
            (expansion, 160, 3, 2),
            (expansion, 320, 1, 1),
        ]
        channels = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(in_channels, channels, 3, stride=2)
        stages = []
        for block_expansion, full_width, num_blocks, first_stride in settings:
            out_channels = int(full_width * width_mult)
            blocks = []
            for stride in [first_stride] + [1] * (num_blocks - 1):
                blocks.append(InvertedResidual(channels, out_channels, stride, block_expansion))
                channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        # The head stays 1280 wide for narrowed networks, as in the MobileNetV2 paper.
        self.final_conv = _conv_bn_relu(channels, 1280, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(1280, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.final_conv(self.blocks(self.conv1(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


register_model(
    "mobilenetv2",
    partial(CifarMobileNetV2, expansion=6, width_mult=0.5),
    family="mobilenetv2",
    # Ends of the 16×16, 8×8 and 4×4 groups (for 32×32 inputs), then the 2×2 map that is pooled.
    stages=("blocks.1", "blocks.2", "blocks.4", "final_conv"),
    classifier="classifier",
    # mdistiller/CRD's mobile_half: head conv ``conv2``, classifier wrapped in a Sequential.
    foreign_keys={"mdistiller": ((r"^conv2\.", "final_conv."), (r"^classifier\.0\.", "classifier."))},
)
