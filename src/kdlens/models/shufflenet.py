"""ShuffleNetV1 (g=3) and ShuffleNetV2 (1×) for CIFAR, as in the distillation benchmarks (CRD,
mdistiller): a 1×1 stem convolution without downsampling, three stages that each halve the
resolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlens.models.base import init_weights, register_model


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of ``groups`` groups so the next grouped conv mixes all of them."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleV1Unit(nn.Module):
    """Grouped 1×1, shuffle, 3×3 depthwise, grouped 1×1. A strided unit concatenates an
    average-pooled copy of its input, so its branch only produces the channels that are new."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, groups: int, first_groups: int
    ) -> None:
        super().__init__()
        self.stride = stride
        branch_channels = out_channels - in_channels if stride == 2 else out_channels
        mid_channels = branch_channels // 4
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.conv2 = nn.Conv2d(
            mid_channels, mid_channels, 3, stride, 1, groups=mid_channels, bias=False
        )
        self.bn2 = nn.BatchNorm2d(mid_channels)
        self.conv3 = nn.Conv2d(mid_channels, branch_channels, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch_channels)
        self.shortcut: nn.Module = nn.AvgPool2d(3, 2, 1) if stride == 2 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.conv1.groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return F.relu(torch.cat([out, self.shortcut(x)], 1))
        return F.relu(out + self.shortcut(x))


class ShuffleNetV1(nn.Module):
    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int = 3,
        stage_widths: tuple[int, int, int] = (240, 480, 960),
        stage_blocks: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
    ) -> None:
        super().__init__()
        stem_width = 24
        self.conv1 = nn.Conv2d(in_channels, stem_width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        stages: list[nn.Sequential] = []
        channels = stem_width
        for width, num_blocks in zip(stage_widths, stage_blocks, strict=True):
            # The stem is too narrow to split into groups, so the network's first 1×1 conv is dense.
            first_groups = groups if stages else 1
            units = [ShuffleV1Unit(channels, width, 2, groups, first_groups)]
            units += [ShuffleV1Unit(width, width, 1, groups, groups) for _ in range(num_blocks - 1)]
            stages.append(nn.Sequential(*units))
            channels = width
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class ShuffleV2Unit(nn.Module):
    """A unit of stride 1 passes half its channels through and transforms the other half; a unit of
    stride 2 transforms the whole input twice (branch1, branch2), each branch giving half the
    output channels. Either way the halves are shuffled together."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        branch_channels = out_channels // 2
        self.branch1: nn.Sequential | None = None
        if stride == 2:
            self.branch1 = nn.Sequential(
                nn.Conv2d(in_channels, in_channels, 3, 2, 1, groups=in_channels, bias=False),
                nn.BatchNorm2d(in_channels),
                nn.Conv2d(in_channels, branch_channels, 1, bias=False),
                nn.BatchNorm2d(branch_channels),
                nn.ReLU(),
            )
        branch2_in = in_channels if stride == 2 else branch_channels
        self.branch2 = nn.Sequential(
            nn.Conv2d(branch2_in, branch_channels, 1, bias=False),
            nn.BatchNorm2d(branch_channels),
            nn.ReLU(),
            nn.Conv2d(
                branch_channels, branch_channels, 3, stride, 1, groups=branch_channels, bias=False
            ),
            nn.BatchNorm2d(branch_channels),
            nn.Conv2d(branch_channels, branch_channels, 1, bias=False),
            nn.BatchNorm2d(branch_channels),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.branch1 is None:
            kept, transformed = x.chunk(2, dim=1)
            out = torch.cat([kept, self.branch2(transformed)], 1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], 1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int = 3,
        stage_widths: tuple[int, int, int] = (116, 232, 464),
        stage_blocks: tuple[int, int, int] = (4, 8, 4),
        head_width: int = 1024,
    ) -> None:
        super().__init__()
        stem_width = 24
        # A 1×1 stem as in the benchmark code (CRD, mdistiller), whose published results and
        # checkpoints are of this architecture.
        self.conv1 = nn.Conv2d(in_channels, stem_width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        stages: list[nn.Sequential] = []
        channels = stem_width
        for width, num_blocks in zip(stage_widths, stage_blocks, strict=True):
            units = [ShuffleV2Unit(channels, width, 2)]
            units += [ShuffleV2Unit(width, width, 1) for _ in range(num_blocks - 1)]
            stages.append(nn.Sequential(*units))
            channels = width
        self.layer1, self.layer2, self.layer3 = stages
        self.final_conv = nn.Sequential(
            nn.Conv2d(channels, head_width, 1, bias=False), nn.BatchNorm2d(head_width), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(head_width, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.final_conv(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


# mdistiller/CRD's ShuffleV1 names its classifier ``linear``.
SHUFFLEV1_MDISTILLER_KEYS = ((r"^linear\.", "fc."),)

# mdistiller/CRD's ShuffleV2 names the layers of each unit: unit 0 of a stage (DownBlock) has
# conv1..bn2 (our branch1) and conv3..bn5 (our branch2), later units (BasicBlock) conv1..bn3 (our
# branch2); indices skip our ReLUs. The head is conv2/bn2, the classifier ``linear``.
SHUFFLEV2_MDISTILLER_KEYS = (
    (r"^(layer\d+\.0)\.conv1\.", r"\1.branch1.0."),
    (r"^(layer\d+\.0)\.bn1\.", r"\1.branch1.1."),
    (r"^(layer\d+\.0)\.conv2\.", r"\1.branch1.2."),
    (r"^(layer\d+\.0)\.bn2\.", r"\1.branch1.3."),
    (r"^(layer\d+\.0)\.conv3\.", r"\1.branch2.0."),
    (r"^(layer\d+\.0)\.bn3\.", r"\1.branch2.1."),
    (r"^(layer\d+\.0)\.conv4\.", r"\1.branch2.3."),
    (r"^(layer\d+\.0)\.bn4\.", r"\1.branch2.4."),
    (r"^(layer\d+\.0)\.conv5\.", r"\1.branch2.5."),
    (r"^(layer\d+\.0)\.bn5\.", r"\1.branch2.6."),
    (r"^(layer\d+\.\d+)\.conv1\.", r"\1.branch2.0."),
    (r"^(layer\d+\.\d+)\.bn1\.", r"\1.branch2.1."),
    (r"^(layer\d+\.\d+)\.conv2\.", r"\1.branch2.3."),
    (r"^(layer\d+\.\d+)\.bn2\.", r"\1.branch2.4."),
    (r"^(layer\d+\.\d+)\.conv3\.", r"\1.branch2.5."),
    (r"^(layer\d+\.\d+)\.bn3\.", r"\1.branch2.6."),
    (r"^conv2\.", "final_conv.0."),
    (r"^bn2\.", "final_conv.1."),
    (r"^linear\.", "fc."),
)

register_model(
    "shufflenetv1",
    ShuffleNetV1,
    family="shufflenetv1",
    stages=("layer1", "layer2", "layer3"),
    classifier="fc",
    foreign_keys={"mdistiller": SHUFFLEV1_MDISTILLER_KEYS},
)
register_model(
    "shufflenetv2",
    ShuffleNetV2,
    family="shufflenetv2",
    # layer3 and final_conv share the last resolution; final_conv is the map that is pooled.
    stages=("layer1", "layer2", "final_conv"),
    classifier="fc",
    foreign_keys={"mdistiller": SHUFFLEV2_MDISTILLER_KEYS},
)
