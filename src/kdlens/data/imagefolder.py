"""``imagefolder``: an ImageNet-style tree ``root/train/<class>/*`` and ``root/val/<class>/*``,
read lazily from disk. ``val/`` is the test split; validation is carved out of ``train/``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image
from pydantic import Field

from kdlens.data.base import DataBundle, DataConfigBase, DatasetInfo, register_dataset
from kdlens.data.common import DataError, DatasetNotFoundError, RawSample, make_transforms, train_val_test

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LAYOUT = "ROOT/train/<class>/<image> and ROOT/val/<class>/<image> (.jpg, .png, ...)"


class ImageFolderConfig(DataConfigBase):
    name: Literal["imagefolder"] = "imagefolder"
    root: str
    image_size: int = Field(224, ge=1)
    resize_size: int = Field(256, ge=1)
    """Eval images are resized (shorter side) to this, then centre-cropped to ``image_size``."""


@dataclass(frozen=True)
class ImageFileSource:
    samples: list[tuple[str, int]]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> RawSample:
        path, label = self.samples[i]
        try:
            with Image.open(path) as image:
                return {"image": image.convert("RGB"), "label": label}
        except OSError as err:  # UnidentifiedImageError and truncated files are OSErrors
            raise DataError(f"cannot read image {path} ({err}): replace or remove the file") from err


def _classes(root: Path) -> list[str]:
    """The class folders of ``train/`` (sorted: label k is the k-th), checked against ``val/``."""
    missing = [d for d in (root / "train", root / "val") if not d.is_dir()]
    if missing:
        raise DatasetNotFoundError(f"image folder dataset: {', '.join(map(str, missing))} not found; "
                                   f"expected layout {LAYOUT} with ROOT={root} (set data.root)")
    classes = _class_folders(root / "train")
    if not classes:
        raise DataError(f"{root / 'train'} has no class folders: put each class's images in a folder of its own, "
                        f"{LAYOUT}")
    extra = sorted(set(_class_folders(root / "val")) - set(classes))
    if extra:
        raise DataError(f"{root / 'val'} has classes that {root / 'train'} lacks: {', '.join(extra)}. Add their training "
                        "images to train/, or remove those folders from val/")
    return classes


def _class_folders(split: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(split) if entry.is_dir())


def _samples(split: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    return make_dataset(str(split), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)


def describe(cfg: ImageFolderConfig) -> DatasetInfo:
    """From the class folders' names alone (no image is read)."""
    classes = _classes(Path(cfg.root))
    return DatasetInfo(num_classes=len(classes), in_channels=3, image_size=(cfg.image_size, cfg.image_size),
                       class_names=tuple(classes), mean=IMAGENET_MEAN, std=IMAGENET_STD)


@register_dataset(ImageFolderConfig, describe=describe)
def build(cfg: ImageFolderConfig) -> DataBundle:
    from torchvision.datasets.folder import IMG_EXTENSIONS
    from torchvision.transforms import v2

    info = describe(cfg)
    root = Path(cfg.root)
    class_to_idx = {name: k for k, name in enumerate(info.class_names)}
    train_samples, test_samples = (_samples(root / split, class_to_idx) for split in ("train", "val"))
    empty = sorted(set(info.class_names) - {info.class_names[label] for _, label in train_samples})
    if empty:
        folders = ", ".join(str(root / "train" / name) for name in empty[:5]) + (" …" if len(empty) > 5 else "")
        raise DataError(f"class folder(s) {folders} hold no images ({' '.join(IMG_EXTENSIONS)}): add that class's "
                        "training images, or remove the folder (every class folder of train/ is a class)")
    if not test_samples:
        raise DataError(f"{root / 'val'} holds no images ({' '.join(IMG_EXTENSIONS)}): it is the test split; put test "
                        f"images in val/<class>/, {LAYOUT}")
    train_source, test_source = ImageFileSource(train_samples), ImageFileSource(test_samples)
    transforms = make_transforms(
        info.mean, info.std,
        train_ops=[v2.RandomResizedCrop(cfg.image_size), v2.RandomHorizontalFlip()],
        eval_ops=[v2.Resize(cfg.resize_size), v2.CenterCrop(cfg.image_size)],
    )
    train, val, test = train_val_test(cfg, train_source, test_source, transforms)
    return DataBundle(train=train, val=val, test=test, **info.facts())
