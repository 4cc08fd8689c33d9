"""``fashion_mnist``: the four IDX .gz files, found locally or fetched once through torchvision."""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from kdlens.data.base import DataBundle, DataConfigBase, DatasetInfo, register_dataset
from kdlens.data.common import DataError, DatasetNotFoundError, TensorSource, make_transforms, train_val_test

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MEAN, STD = (0.2860,), (0.3530,)
_IDX_UBYTE = 0x08  # the IDX type code for unsigned bytes, the only type Fashion-MNIST uses
_REFETCH = ("Replace the four Fashion-MNIST files with intact copies (delete them and let torchvision download "
            "them again, or `apt-get install --reinstall dataset-fashion-mnist`)")


class FashionMNISTConfig(DataConfigBase):
    name: Literal["fashion_mnist"] = "fashion_mnist"
    root: str | None = None
    """Directory holding the four .gz files; unset: ``$KDLENS_DATA``, the Debian package, download."""


def read_idx(path: Path, ndim: int) -> Tensor:
    """Decode a gzipped IDX file of unsigned bytes with ``ndim`` dimensions into a uint8 tensor;
    a :class:`DataError` naming the file and the fix for a damaged one."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: not a readable gzip file ({err}). {_REFETCH}") from None
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes). {_REFETCH}")
    zero, dtype, file_ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != _IDX_UBYTE or file_ndim != ndim:
        raise DataError(f"{path}: bad IDX magic number 0x{raw[:4].hex()}, expected 0x0000{_IDX_UBYTE:02x}{ndim:02x} "
                        f"(not an IDX file of {ndim}-dimensional unsigned bytes). {_REFETCH}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != math.prod(shape):
        raise DataError(f"{path}: {len(raw) - header} data bytes, but the header {shape} needs "
                        f"{math.prod(shape)} (truncated or corrupt file). {_REFETCH}")
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(shape)


def _has_files(directory: Path) -> bool:
    return all((directory / name).is_file() for name in FILES.values())


def _download_dir() -> Path:
    return Path.home() / ".cache" / "kdlens" / "fashion-mnist"


def _download(root: Path) -> Path:
    """Fetch with torchvision (which keeps the .gz files) and return the directory holding them."""
    from torchvision.datasets import FashionMNIST

    return Path(FashionMNIST(str(root), download=True).raw_folder)


def locate(root: str | None) -> Path:
    """The directory with the four files: ``root`` if given (and nothing else), else
    ``$KDLENS_DATA/fashion-mnist``, ``$KDLENS_DATA``, the Debian package's directory, an earlier
    download, and last a torchvision download into ``~/.cache/kdlens/fashion-mnist``."""
    if root is not None:
        candidates = [Path(root)]
    else:
        env = os.environ.get("KDLENS_DATA")
        candidates = [Path(env) / "fashion-mnist", Path(env)] if env else []
        candidates += [DEBIAN_DIR, _download_dir() / "FashionMNIST" / "raw"]
    for directory in candidates:
        if _has_files(directory):
            return directory
    tried = [f"  {d}" for d in candidates]
    if root is None:
        try:
            return _download(_download_dir())
        except (OSError, RuntimeError) as err:
            reason = " ".join(str(err).split())[:300]  # torchvision's message spans several lines
            tried.append(f"  torchvision download into {_download_dir()}: {reason}")
    raise DatasetNotFoundError(
        "Fashion-MNIST not found: need " + ", ".join(FILES.values()) + ". Tried:\n" + "\n".join(tried)
        + "\nFix one of: set data.root=DIR or the KDLENS_DATA environment variable to a directory holding"
        " them; `apt-get install dataset-fashion-mnist` (installs them in " + str(DEBIAN_DIR) + ");"
        " or go online (without data.root) so torchvision can download them."
    )


def _load(directory: Path, split: Literal["train", "test"]) -> TensorSource:
    images = read_idx(directory / FILES[f"{split}_images"], ndim=3)
    labels = read_idx(directory / FILES[f"{split}_labels"], ndim=1)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise DataError(f"{directory}: {split} images {tuple(images.shape)} do not match "
                        f"{len(labels)} labels of 28×28 images (mis-sized or mismatched files). {_REFETCH}")
    if len(images) == 0:
        raise DataError(f"{directory}: the {split} files hold no images. {_REFETCH}")
    if (labels >= len(CLASS_NAMES)).any():
        bad = sorted({int(label) for label in labels[labels >= len(CLASS_NAMES)]})[:5]
        raise DataError(f"{directory}: {split} labels {bad} outside 0..{len(CLASS_NAMES) - 1} "
                        f"(not Fashion-MNIST's labels file). {_REFETCH}")
    return TensorSource(images[:, None], labels.long())


def describe(cfg: FashionMNISTConfig) -> DatasetInfo:
    return DatasetInfo(num_classes=len(CLASS_NAMES), in_channels=1, image_size=(28, 28),
                       class_names=tuple(CLASS_NAMES), mean=MEAN, std=STD)


@register_dataset(FashionMNISTConfig, describe=describe)
def build(cfg: FashionMNISTConfig) -> DataBundle:
    info = describe(cfg)
    directory = locate(cfg.root)
    from torchvision.transforms import v2

    transforms = make_transforms(info.mean, info.std, [v2.RandomCrop(28, padding=2), v2.RandomHorizontalFlip()])
    train, val, test = train_val_test(cfg, _load(directory, "train"), _load(directory, "test"), transforms)
    return DataBundle(train=train, val=val, test=test, **info.facts())
