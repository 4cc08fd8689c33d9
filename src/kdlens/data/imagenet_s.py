"""``imagenet_s``: ImageNet-S50, the 50-class ImageNet subset with segmentation masks (REFERENCE §3).

Layout (as the ImageNet-S tools write it)::

    ROOT/train/<wnid>/*.JPEG                       optional: the 50 classes' training images
    ROOT/validation/<wnid>/*.JPEG                  752 images, the test split
    ROOT/validation-segmentation/<wnid>/<name>.png one mask per validation image

A mask pixel's class id is R + 256·G: 0 is background, 1000 is "ignore", and id k (1…50) is the
k-th class in sorted-wnid order. ImageNet-1k numbers its classes in sorted-wnid order too, so the
k-th folder is ImageNet-1k class ``IMAGENET_S50_INDICES[k-1]``: with ``labels: imagenet1k`` (the
default, for 1000-way models) labels are those indices, with ``labels: subset`` they are 0…49.
A sample's mask is the foreground of its own class; "ignore" pixels count as background. Masks
are resized with NEAREST (v2 does so for Mask), never bilinearly, which would invent class ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from pydantic import Field

from kdlens.data.base import DataBundle, DataConfigBase, DatasetInfo, register_dataset
from kdlens.data.common import DataError, DatasetNotFoundError, RawSample, make_transforms, train_val_test
from kdlens.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD, ImageFileSource

IMAGENET_S50_INDICES = (
    1, 3, 11, 31, 222, 277, 284, 295, 301, 325, 330, 333, 342, 368, 386, 388, 404, 412, 418, 436,
    449, 466, 487, 492, 502, 510, 531, 532, 574, 579, 606, 617, 659, 670, 695, 703, 748, 829, 846, 851,
    861, 879, 883, 898, 900, 914, 919, 951, 959, 992,
)
IGNORE_ID = 1000
LAYOUT = "ROOT/validation/<wnid>/*.JPEG with ROOT/validation-segmentation/<wnid>/<name>.png (and optionally ROOT/train/<wnid>/)"


class ImageNetSConfig(DataConfigBase):
    name: Literal["imagenet_s"] = "imagenet_s"
    root: str
    labels: Literal["imagenet1k", "subset"] = "imagenet1k"
    image_size: int = Field(224, ge=1)
    resize_size: int = Field(256, ge=1)


def decode_class_ids(png: Path) -> np.ndarray:
    """The H×W class-id map of an ImageNet-S mask PNG (id = R + 256·G)."""
    with Image.open(png) as mask:
        rgb = np.asarray(mask.convert("RGB"), dtype=np.int32)
    return rgb[..., 0] + 256 * rgb[..., 1]


@dataclass(frozen=True)
class SegmentedImageSource:
    """Validation images, each with the mask of its own class (``mask_ids[i]``, 1…50)."""

    images: ImageFileSource
    masks: list[Path]
    mask_ids: list[int]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> RawSample:
        sample = self.images[i]
        ids = decode_class_ids(self.masks[i])
        if ids.shape != (sample["image"].height, sample["image"].width):
            raise DataError(
                f"mask {self.masks[i]} is {ids.shape[1]}×{ids.shape[0]} but its image {self.images.samples[i][0]} is "
                f"{sample['image'].width}×{sample['image'].height}: the masks must be the validation-segmentation "
                "files of this validation set (re-extract both from the same ImageNet-S50 release)"
            )
        from torchvision import tv_tensors

        foreground = torch.from_numpy(ids == self.mask_ids[i]).to(torch.uint8)[None]
        return {**sample, "mask": tv_tensors.Mask(foreground)}


def _class_folders(folder: Path) -> list[str]:
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if len(classes) != len(IMAGENET_S50_INDICES):
        raise DataError(
            f"{folder} has {len(classes)} class folders; ImageNet-S50 has {len(IMAGENET_S50_INDICES)} "
            "(one per wnid). Point data.root at the ImageNet-S50 folder"
        )
    return classes


def _validation_source(root: Path, class_to_label: dict[str, int]) -> SegmentedImageSource:
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    samples = make_dataset(str(root / "validation"), class_to_label, extensions=IMG_EXTENSIONS, allow_empty=True)
    masks, mask_ids = [], []
    order = {wnid: k + 1 for k, wnid in enumerate(sorted(class_to_label))}
    for path, _ in samples:
        image = Path(path)
        mask = root / "validation-segmentation" / image.parent.name / f"{image.stem}.png"
        if not mask.is_file():
            raise DataError(f"image {image} has no mask {mask}: the validation-segmentation folder is incomplete")
        masks.append(mask)
        mask_ids.append(order[image.parent.name])
    return SegmentedImageSource(ImageFileSource(samples), masks, mask_ids)


def describe(cfg: ImageNetSConfig) -> DatasetInfo:
    """The classes are ImageNet-1k's 1000 (``labels: imagenet1k``) or the subset's 50, named by the
    wnids of the validation folders where they exist, else ``imagenet-<ImageNet-1k index>``."""
    validation = Path(cfg.root) / "validation"
    if validation.is_dir():
        wnids = _class_folders(validation)
    else:
        wnids = [f"imagenet-{i}" for i in IMAGENET_S50_INDICES]
    if cfg.labels == "imagenet1k":
        names = dict(zip(IMAGENET_S50_INDICES, wnids))
        class_names = tuple(names.get(i, f"imagenet-{i}") for i in range(1000))
    else:
        class_names = tuple(wnids)
    return DatasetInfo(num_classes=len(class_names), in_channels=3, image_size=(cfg.image_size, cfg.image_size),
                       class_names=class_names, mean=IMAGENET_MEAN, std=IMAGENET_STD)


@register_dataset(ImageNetSConfig, describe=describe)
def build(cfg: ImageNetSConfig) -> DataBundle:
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset
    from torchvision.transforms import v2

    root = Path(cfg.root)
    if not (root / "validation").is_dir() or not (root / "validation-segmentation").is_dir():
        raise DatasetNotFoundError(f"ImageNet-S50 not found at {root} (data.root): expected {LAYOUT}")
    info = describe(cfg)
    classes = _class_folders(root / "validation")
    labels = IMAGENET_S50_INDICES if cfg.labels == "imagenet1k" else range(len(classes))
    class_to_label = dict(zip(classes, labels))
    train_files = make_dataset(str(root / "train"), class_to_label, extensions=IMG_EXTENSIONS, allow_empty=True) if (root / "train").is_dir() else []
    transforms = make_transforms(
        info.mean, info.std,
        train_ops=[v2.RandomResizedCrop(cfg.image_size), v2.RandomHorizontalFlip()],
        eval_ops=[v2.Resize(cfg.resize_size), v2.CenterCrop(cfg.image_size)],
    )
    train, val, test = train_val_test(cfg, ImageFileSource(train_files), _validation_source(root, class_to_label), transforms)
    return DataBundle(train=train, val=val, test=test, **info.facts())
