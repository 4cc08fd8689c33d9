"""Compact stand-ins for mdistiller's (and CRD's) CIFAR models: the same module names and the same
computation, written for the import tests. Each returns ``(logits, feats)`` as theirs do.

Names follow mdistiller/models/cifar/{resnet,resnetv2,wrn,vgg,mobilenetv2,ShuffleNetv1,ShuffleNetv2}.py;
``BUILDERS`` maps mdistiller's model names to constructors taking ``num_classes``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _shuffle(x: Tensor, groups: int) -> Tensor:
    n, c, h, w = x.size()
    return x.reshape(n, groups, c // groups, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


# ---------------------------------------------------------------- resnet (resnet8 ... resnet32x4)


class ResBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return F.relu(out + residual)


class MdResNet(nn.Module):
    def __init__(self, depth: int, filters: list[int], num_classes: int) -> None:
        super().__init__()
        n = (depth - 2) // 6
        self.inplanes = filters[0]
        self.conv1 = nn.Conv2d(3, filters[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._layer(filters[1], n, 1)
        self.layer2 = self._layer(filters[2], n, 2)
        self.layer3 = self._layer(filters[3], n, 2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(filters[3], num_classes)

    def _layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        layers = [ResBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [ResBlock(planes, planes, 1, None) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor):
        x = self.relu(self.bn1(self.conv1(x)))
        f = [x]
        for layer in (self.layer1, self.layer2, self.layer3):
            x = layer(x)
            f.append(x)
        pooled = self.avgpool(x).reshape(x.size(0), -1)
        return self.fc(pooled), {"feats": f, "pooled_feat": pooled}


# ---------------------------------------------------------------- resnetv2 (ResNet18, ResNet50)


def _v2_shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes))


class V2Basic(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _v2_shortcut(in_planes, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class V2Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.shortcut = _v2_shortcut(in_planes, planes * 4, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class MdResNetV2(nn.Module):
    def __init__(self, block: type, num_blocks: list[int], num_classes: int) -> None:
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._layer(block, 64, num_blocks[0], 1)
        self.layer2 = self._layer(block, 128, num_blocks[1], 2)
        self.layer3 = self._layer(block, 256, num_blocks[2], 2)
        self.layer4 = self._layer(block, 512, num_blocks[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(512 * block.expansion, num_classes)

    def _layer(self, block: type, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: Tensor):
        out = F.relu(self.bn1(self.conv1(x)))
        f = [out]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            out = layer(out)
            f.append(out)
        pooled = self.avgpool(out).reshape(out.size(0), -1)
        return self.linear(pooled), {"feats": f, "pooled_feat": pooled}


# ---------------------------------------------------------------- wrn


class WrnBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.equal = in_planes == out_planes
        self.convShortcut = None if self.equal else nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if not self.equal:
            x = self.relu1(self.bn1(x))
            out = x
        else:
            out = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(out))))
        return (x if self.equal else self.convShortcut(x)) + out


class NetworkBlock(nn.Module):
    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[WrnBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
                                     for i in range(n)])

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class MdWideResNet(nn.Module):
    def __init__(self, depth: int, widen_factor: int, num_classes: int) -> None:
        super().__init__()
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, ch[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(ch[3], num_classes)
        self.channels = ch[3]

    def forward(self, x: Tensor):
        out = self.conv1(x)
        f = [out]
        for block in (self.block1, self.block2, self.block3):
            out = block(out)
            f.append(out)
        out = F.avg_pool2d(self.relu(self.bn1(out)), 8).reshape(-1, self.channels)
        return self.fc(out), {"feats": f, "pooled_feat": out}


# ---------------------------------------------------------------- vgg (vgg*_bn)

VGG_CFG = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
}


class MdVGG(nn.Module):
    def __init__(self, cfg: list[list[int]], num_classes: int) -> None:
        super().__init__()
        ins = [3] + [c[-1] for c in cfg[:-1]]
        for i, (widths, cin) in enumerate(zip(cfg, ins)):
            setattr(self, f"block{i}", self._block(widths, cin))
        for i in range(4):
            setattr(self, f"pool{i}", nn.MaxPool2d(2, 2))
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(512, num_classes)

    @staticmethod
    def _block(widths: list[int], cin: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        for v in widths:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            cin = v
        return nn.Sequential(*layers[:-1])  # the block's last ReLU is applied in forward

    def forward(self, x: Tensor):
        h = x.shape[2]
        f = []
        x = F.relu(self.block0(x))
        f.append(x)
        x = F.relu(self.block1(self.pool0(x)))
        f.append(x)
        x = F.relu(self.block2(self.pool1(x)))
        f.append(x)
        x = F.relu(self.block3(self.pool2(x)))
        f.append(x)
        if h == 64:
            x = self.pool3(x)
        x = F.relu(self.block4(x))
        f.append(x)
        pooled = self.pool4(x).reshape(x.size(0), -1)
        return self.classifier(pooled), {"feats": f, "pooled_feat": pooled}


# ---------------------------------------------------------------- mobile_half


class MdInvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, t: int) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and inp == oup
        hidden = inp * t
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MdMobileNetV2(nn.Module):
    def __init__(self, t: int, width_mult: float, num_classes: int, input_size: int = 32) -> None:
        super().__init__()
        setting = [[1, 16, 1, 1], [t, 24, 2, 1], [t, 32, 3, 2], [t, 64, 4, 2], [t, 96, 3, 1], [t, 160, 3, 2], [t, 320, 1, 1]]
        cin = int(32 * width_mult)
        self.conv1 = nn.Sequential(nn.Conv2d(3, cin, 3, 2, 1, bias=False), nn.BatchNorm2d(cin), nn.ReLU(inplace=True))
        self.blocks = nn.ModuleList()
        for e, c, n, s in setting:
            cout = int(c * width_mult)
            layers = []
            for stride in [s] + [1] * (n - 1):
                layers.append(MdInvertedResidual(cin, cout, stride, e))
                cin = cout
            self.blocks.append(nn.Sequential(*layers))
        last = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = nn.Sequential(nn.Conv2d(cin, last, 1, 1, 0, bias=False), nn.BatchNorm2d(last), nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))
        self.avgpool = nn.AvgPool2d(input_size // 16, ceil_mode=True)

    def forward(self, x: Tensor):
        out = self.conv1(x)
        f = [out]
        for block in self.blocks:
            out = block(out)
            f.append(out)
        out = self.avgpool(self.conv2(out)).reshape(out.size(0), -1)
        return self.classifier(out), {"feats": f, "pooled_feat": out}


# ---------------------------------------------------------------- ShuffleV1


class V1Bottleneck(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid = int(out_planes / 4)
        g = 1 if in_planes == 24 else groups
        self.g = g
        self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential(nn.AvgPool2d(3, 2, 1)) if stride == 2 else nn.Sequential()

    def forward(self, x: Tensor) -> Tensor:
        out = _shuffle(F.relu(self.bn1(self.conv1(x))), self.g)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        return F.relu(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class MdShuffleV1(nn.Module):
    def __init__(self, num_classes: int, out_planes=(240, 480, 960), num_blocks=(4, 8, 4), groups: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_planes = 24
        for i, (planes, n) in enumerate(zip(out_planes, num_blocks), 1):
            layers = []
            for j in range(n):
                cat = self.in_planes if j == 0 else 0
                layers.append(V1Bottleneck(self.in_planes, planes - cat, 2 if j == 0 else 1, groups))
                self.in_planes = planes
            setattr(self, f"layer{i}", nn.Sequential(*layers))
        self.linear = nn.Linear(out_planes[2], num_classes)

    def forward(self, x: Tensor):
        out = F.relu(self.bn1(self.conv1(x)))
        f = [out]
        for layer in (self.layer1, self.layer2, self.layer3):
            out = layer(out)
            f.append(out)
        out = F.avg_pool2d(out, 4).reshape(out.size(0), -1)
        return self.linear(out), {"feats": f, "pooled_feat": out}


# ---------------------------------------------------------------- ShuffleV2


class V2Unit(nn.Module):
    """mdistiller's ShuffleNetV2 BasicBlock."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels // 2
        self.conv1 = nn.Conv2d(c, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x: Tensor) -> Tensor:
        c = int(x.size(1) * 0.5)
        x1, x2 = x[:, :c], x[:, c:]
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return _shuffle(torch.cat([x1, out], 1), 2)


class V2Down(nn.Module):
    """mdistiller's ShuffleNetV2 DownBlock."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cout // 2
        self.conv1 = nn.Conv2d(cin, cin, 3, 2, 1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv2 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return _shuffle(torch.cat([left, right], 1), 2)


class MdShuffleV2(nn.Module):
    def __init__(self, num_classes: int, out_channels=(116, 232, 464, 1024), num_blocks=(3, 7, 3)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        for i, (cout, n) in enumerate(zip(out_channels[:3], num_blocks), 1):
            setattr(self, f"layer{i}", nn.Sequential(V2Down(cin, cout), *[V2Unit(cout) for _ in range(n)]))
            cin = cout
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], 1, 1, 0, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)

    def forward(self, x: Tensor):
        out = F.relu(self.bn1(self.conv1(x)))
        f = [out]
        for layer in (self.layer1, self.layer2, self.layer3):
            out = layer(out)
            f.append(out)
        out = F.relu(self.bn2(self.conv2(out)))
        out = F.avg_pool2d(out, 4).reshape(out.size(0), -1)
        return self.linear(out), {"feats": f, "pooled_feat": out}


# ---------------------------------------------------------------- registry and files

BUILDERS = {
    "resnet8": lambda k: MdResNet(8, [16, 16, 32, 64], k),
    "resnet20": lambda k: MdResNet(20, [16, 16, 32, 64], k),
    "resnet8x4": lambda k: MdResNet(8, [32, 64, 128, 256], k),
    "ResNet18": lambda k: MdResNetV2(V2Basic, [2, 2, 2, 2], k),
    "ResNet50": lambda k: MdResNetV2(V2Bottleneck, [3, 4, 6, 3], k),
    "wrn_16_1": lambda k: MdWideResNet(16, 1, k),
    "wrn_16_2": lambda k: MdWideResNet(16, 2, k),
    "vgg8": lambda k: MdVGG(VGG_CFG["vgg8"], k),
    "MobileNetV2": lambda k: MdMobileNetV2(6, 0.5, k),
    "ShuffleV1": lambda k: MdShuffleV1(k),
    "ShuffleV2": lambda k: MdShuffleV2(k),
}


@torch.no_grad()
def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN running statistics and affine parameters and random biases, so that a wrongly
    mapped BN or a missed bias changes the logits."""
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=g) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=g) + 0.5)
            module.weight.copy_(torch.rand(module.num_features, generator=g) + 0.5)
            module.bias.copy_(torch.randn(module.num_features, generator=g) * 0.1)
            module.num_batches_tracked.fill_(1234)
        elif isinstance(module, (nn.Linear, nn.Conv2d)) and module.bias is not None:
            module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
    return model.eval()


def save_mdistiller(model: nn.Module, folder: Path, arch: str, prefix: str = "") -> Path:
    """The published teacher layout: ``<arch>_vanilla/ckpt_epoch_240.pth`` holding
    ``{"model": state_dict, "epoch", "optimizer", "best_acc"}``."""
    path = folder / f"{arch}_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {prefix + k: v for k, v in model.state_dict().items()}
    optimizer = {"state": {}, "param_groups": [{"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "params": [0, 1]}]}
    torch.save({"model": state, "epoch": 240, "optimizer": optimizer, "best_acc": torch.tensor(72.34)}, path)
    return path
