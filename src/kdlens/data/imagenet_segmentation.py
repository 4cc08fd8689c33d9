"""``imagenet_segmentation``: ImageNet-Segmentation (Guillaumin et al.), 4,276 ImageNet images with
binary foreground masks, in the MATLAB v7.3 (HDF5) file ``gtsegs_ijcv.mat`` (REFERENCE §3).

In the file, ``value/img[i, 0]`` references image i stored as (3, W, H) uint8, and
``value/gt[i, 0]`` references a cell whose ``[0, 0]`` references its (W, H) mask. The set has no
class labels: labels are -1 (accuracy skips them) and explanations are of the model's own
prediction (``--target pred``). Images and masks are resized to ``image_size`` squared, as in the
segmentation-test protocol; masks with NEAREST. Evaluation only: train and val are empty.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from kdlens.data.base import DataBundle, DataConfigBase, DatasetInfo, register_dataset
from kdlens.data.common import DataError, DatasetNotFoundError, DictDataset, RawSample, make_transforms
from kdlens.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD

UNLABELLED = -1


class ImageNetSegmentationConfig(DataConfigBase):
    name: Literal["imagenet_segmentation"] = "imagenet_segmentation"
    path: str
    """The gtsegs_ijcv.mat file."""
    image_size: int = Field(224, ge=1)


class MatSegmentationSource:
    """Samples read lazily from the .mat file; the HDF5 handle is opened in each process that
    reads (h5py handles cannot be sent to DataLoader workers)."""

    def __init__(self, path: Path) -> None:
        import h5py

        self.path = path
        self._file = None
        try:
            with h5py.File(path, "r") as f:
                self.length = len(f["value/img"])
        except (OSError, KeyError) as err:
            raise DataError(f"{path} is not the ImageNet-Segmentation gtsegs_ijcv.mat file ({err})") from err

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> RawSample:
        import h5py
        from torchvision import tv_tensors

        if self._file is None:
            self._file = h5py.File(self.path, "r")
        f = self._file
        image = np.asarray(f[f["value/img"][i, 0]]).transpose(2, 1, 0)  # (3, W, H) -> (H, W, 3)
        mask = np.asarray(f[f[f["value/gt"][i, 0]][0, 0]]).transpose(1, 0)  # (W, H) -> (H, W)
        if image.shape[:2] != mask.shape:
            raise DataError(f"{self.path}: image {i} is {image.shape[1]}×{image.shape[0]} but its mask is {mask.shape[1]}×{mask.shape[0]}")
        return {
            "image": tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)),
            "label": UNLABELLED,
            "mask": tv_tensors.Mask(torch.from_numpy((mask > 0).astype(np.uint8))[None]),
        }

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None}


def describe(cfg: ImageNetSegmentationConfig) -> DatasetInfo:
    """Unlabelled images explained for ImageNet-1k models: their 1000 classes."""
    return DatasetInfo(num_classes=1000, in_channels=3, image_size=(cfg.image_size, cfg.image_size),
                       class_names=tuple(f"imagenet-{i}" for i in range(1000)), mean=IMAGENET_MEAN, std=IMAGENET_STD)


@register_dataset(ImageNetSegmentationConfig, describe=describe)
def build(cfg: ImageNetSegmentationConfig) -> DataBundle:
    path = Path(cfg.path)
    if not path.is_file():
        raise DatasetNotFoundError(f"ImageNet-Segmentation file {path} not found (data.path): it is gtsegs_ijcv.mat")
    source = MatSegmentationSource(path)
    info = describe(cfg)
    from torchvision.transforms import v2

    transforms = make_transforms(info.mean, info.std, train_ops=[], eval_ops=[v2.Resize(info.image_size)])
    empty = DictDataset(source, transforms.eval, torch.empty(0, dtype=torch.long))
    return DataBundle(train=empty, val=empty, test=DictDataset(source, transforms.eval), **info.facts())
