"""``cifar10`` and ``cifar100``: torchvision's datasets, held in memory as uint8 tensors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Literal

import torch

from kdlens.data.base import DataBundle, DataConfigBase, DatasetInfo, register_dataset
from kdlens.data.common import DatasetNotFoundError, TensorSource, data_home, make_transforms, train_val_test

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)

# The label names of the archives' meta files, in label order.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)


class _CIFARConfig(DataConfigBase):
    root: str | None = None
    """Directory holding (or receiving) the extracted archive; unset: ``$KDLENS_DATA/cifar`` or
    ``~/.cache/kdlens/cifar``."""
    download: bool = True


class CIFAR10Config(_CIFARConfig):
    name: Literal["cifar10"] = "cifar10"


class CIFAR100Config(_CIFARConfig):
    name: Literal["cifar100"] = "cifar100"


def _info(classes: tuple[str, ...], mean: tuple[float, ...], std: tuple[float, ...]) -> DatasetInfo:
    return DatasetInfo(num_classes=len(classes), in_channels=3, image_size=(32, 32), class_names=classes, mean=mean, std=std)


def describe_cifar10(cfg: CIFAR10Config) -> DatasetInfo:
    return _info(CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD)


def describe_cifar100(cfg: CIFAR100Config) -> DatasetInfo:
    return _info(CIFAR100_CLASSES, CIFAR100_MEAN, CIFAR100_STD)


def _build(cfg: _CIFARConfig, dataset_name: str, info: DatasetInfo) -> DataBundle:
    import torchvision.datasets
    from torchvision.transforms import v2

    dataset = getattr(torchvision.datasets, dataset_name)
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
    transforms = make_transforms(info.mean, info.std, [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()])
    train, val, test = train_val_test(cfg, train_source, test_source, transforms)
    # The names in the files' meta data (the constants, for the published archives).
    info = replace(info, num_classes=len(splits[0].classes), class_names=tuple(splits[0].classes))
    return DataBundle(train=train, val=val, test=test, **info.facts())


@register_dataset(CIFAR10Config, describe=describe_cifar10)
def build_cifar10(cfg: CIFAR10Config) -> DataBundle:
    return _build(cfg, "CIFAR10", describe_cifar10(cfg))


@register_dataset(CIFAR100Config, describe=describe_cifar100)
def build_cifar100(cfg: CIFAR100Config) -> DataBundle:
    return _build(cfg, "CIFAR100", describe_cifar100(cfg))
