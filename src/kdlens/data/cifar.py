"""``cifar10`` and ``cifar100``: torchvision's datasets, held in memory as uint8 tensors."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.transforms import v2

from kdlens.data.base import DataBundle, DataConfigBase, register_dataset
from kdlens.data.common import DatasetNotFoundError, TensorSource, data_home, make_transforms, train_val_test

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)


class _CIFARConfig(DataConfigBase):
    root: str | None = None
    """Directory holding (or receiving) the extracted archive; unset: ``$KDLENS_DATA/cifar`` or
    ``~/.cache/kdlens/cifar``."""
    download: bool = True


class CIFAR10Config(_CIFARConfig):
    name: Literal["cifar10"] = "cifar10"


class CIFAR100Config(_CIFARConfig):
    name: Literal["cifar100"] = "cifar100"


def _build(cfg: _CIFARConfig, dataset: type[CIFAR10], mean: tuple[float, ...], std: tuple[float, ...]) -> DataBundle:
    root = Path(cfg.root) if cfg.root else data_home() / "cifar"
    try:
        splits = [dataset(str(root), train=train, download=cfg.download) for train in (True, False)]
    except (OSError, RuntimeError) as err:  # URLError is an OSError; torchvision raises RuntimeError
        how = ("the download failed (offline?): fetch and extract " + dataset.url + " into it"
               if cfg.download else "set data.download=true to fetch it")
        raise DatasetNotFoundError(
            f"{dataset.__name__} not found in {root} (expected {root / dataset.base_folder}/): {err}\n"
            f"Fix: {how}, or set data.root (or KDLENS_DATA) to a directory that holds it."
        ) from err
    train_source, test_source = (
        TensorSource(torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets))
        for ds in splits
    )
    transforms = make_transforms(mean, std, [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()])
    train, val, test = train_val_test(cfg, train_source, test_source, transforms)
    return DataBundle(train=train, val=val, test=test, num_classes=len(splits[0].classes), in_channels=3,
                      image_size=(32, 32), class_names=list(splits[0].classes), mean=mean, std=std)


@register_dataset(CIFAR10Config)
def build_cifar10(cfg: CIFAR10Config) -> DataBundle:
    return _build(cfg, CIFAR10, CIFAR10_MEAN, CIFAR10_STD)


@register_dataset(CIFAR100Config)
def build_cifar100(cfg: CIFAR100Config) -> DataBundle:
    return _build(cfg, CIFAR100, CIFAR100_MEAN, CIFAR100_STD)
