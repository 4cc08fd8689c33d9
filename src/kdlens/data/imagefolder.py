"""``imagefolder``: an ImageNet-style tree ``root/train/<class>/*`` and ``root/val/<class>/*``,
read lazily from disk. ``val/`` is the test split; validation is carved out of ``train/``."""

from __future__ import annotations

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
    from torchvision.datasets.folder import find_classes

    classes, _ = find_classes(str(root / "train"))
    extra = sorted(set(find_classes(str(root / "val"))[0]) - set(classes))
    if extra:
        raise DataError(f"{root / 'val'} has classes that {root / 'train'} lacks: {', '.join(extra)}")
    return classes


def describe(cfg: ImageFolderConfig) -> DatasetInfo:
    """From the class folders' names alone (no image is read)."""
    classes = _classes(Path(cfg.root))
    return DatasetInfo(num_classes=len(classes), in_channels=3, image_size=(cfg.image_size, cfg.image_size),
                       class_names=tuple(classes), mean=IMAGENET_MEAN, std=IMAGENET_STD)


@register_dataset(ImageFolderConfig, describe=describe)
def build(cfg: ImageFolderConfig) -> DataBundle:
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset
    from torchvision.transforms import v2

    info = describe(cfg)
    root = Path(cfg.root)
    class_to_idx = {name: k for k, name in enumerate(info.class_names)}
    train_source, test_source = (
        ImageFileSource(make_dataset(str(root / split), class_to_idx, extensions=IMG_EXTENSIONS)) for split in ("train", "val")
    )
    transforms = make_transforms(
        info.mean, info.std,
        train_ops=[v2.RandomResizedCrop(cfg.image_size), v2.RandomHorizontalFlip()],
        eval_ops=[v2.Resize(cfg.resize_size), v2.CenterCrop(cfg.image_size)],
    )
    train, val, test = train_val_test(cfg, train_source, test_source, transforms)
    return DataBundle(train=train, val=val, test=test, **info.facts())
