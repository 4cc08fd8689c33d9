"""Wide ResNets (Zagoruyko & Komodakis) as used in CIFAR distillation: ``wrn_D_K`` has depth D,
widening factor K and ``(D - 4) / 6`` pre-activation blocks in each of three stages."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlens.models import canonizers
from kdlens.models.base import init_weights, register_model


class PreActBlock(nn.Module):
    """BN-ReLU-conv twice; where the shape changes the shortcut is a 1×1 conv of the activated
    input, so that projection and residual branch see the same normalised signal."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.projection: nn.Conv2d | None = None
        if stride != 1 or in_channels != out_channels:
            self.projection = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        activated = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(activated))))
        shortcut = x if self.projection is None else self.projection(activated)
        return out + shortcut


def _sum_forward(self: PreActBlock, x: Tensor) -> Tensor:
    """``PreActBlock.forward`` with the addition done by zennit's ``Sum`` (LRP's canonical form)."""
    activated = F.relu(self.bn1(x))
    out = self.conv2(F.relu(self.bn2(self.conv1(activated))))
    shortcut = x if self.projection is None else self.projection(activated)
    return self.canonizer_sum(torch.stack([shortcut, out], dim=-1))


def lrp_canonizers(model: nn.Module) -> list:
    """LRP canonizers (:mod:`kdlens.models.canonizers`): ``conv1`` merged with ``bn2`` in each block,
    the addition by ``Sum``; the other BNs follow an addition, cannot be merged and pass relevance
    through (zennit's rule)."""
    merges = [((f"{name}.conv1",), f"{name}.bn2") for name, m in model.named_modules() if isinstance(m, PreActBlock)]
    return [canonizers.merge_batch_norms(merges), canonizers.residual_sum(PreActBlock, _sum_forward)]


class WideResNet(nn.Module):
    def __init__(
        self, *, depth: int, widen_factor: int, num_classes: int, in_channels: int = 3
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"Wide ResNet depth must be 6n + 4, got {depth}")
        blocks_per_stage = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.block1 = _make_stage(widths[0], widths[1], blocks_per_stage, stride=1)
        self.block2 = _make_stage(widths[1], widths[2], blocks_per_stage, stride=2)
        self.block3 = _make_stage(widths[2], widths[3], blocks_per_stage, stride=2)
        # Pre-activation blocks end un-normalised; this BN-ReLU gives the map that is pooled.
        self.final_bn = nn.BatchNorm2d(widths[3])
        self.final_relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.final_relu(self.final_bn(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def _make_stage(in_channels: int, out_channels: int, num_blocks: int, stride: int) -> nn.Sequential:
    blocks = [PreActBlock(in_channels, out_channels, stride)]
    blocks += [PreActBlock(out_channels, out_channels, 1) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


# mdistiller/CRD wrap each stage's blocks in ``blockN.layer``, call the projection
# ``convShortcut`` and the final batch norm ``bn1``; the computation is the same.
MDISTILLER_KEYS = (
    (r"^(block\d+)\.layer\.(\d+)\.convShortcut\.", r"\1.\2.projection."),
    (r"^(block\d+)\.layer\.", r"\1."),
    (r"^bn1\.", "final_bn."),
)

for _depth, _widen_factor in [(16, 1), (16, 2), (40, 1), (40, 2)]:
    register_model(
        f"wrn_{_depth}_{_widen_factor}",
        partial(WideResNet, depth=_depth, widen_factor=_widen_factor),
        family="wrn",
        # block3 ends pre-activation; the stage's activated output is final_relu.
        stages=("block1", "block2", "final_relu"),
        classifier="fc",
        foreign_keys={"mdistiller": MDISTILLER_KEYS},
        lrp_canonizers=lrp_canonizers,
    )
