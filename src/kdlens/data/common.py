"""Helpers every dataset shares: where data lives, the train/val split, dict samples, transforms."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from kdlens.data.base import DataConfigBase

RawSample = dict[str, Any]
"""A sample before its transform: ``image`` (tv_tensors.Image or PIL image), ``label`` (int) and,
where the dataset has them, ``mask`` (tv_tensors.Mask, 1×H×W uint8) and ``group`` (int)."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where kdlens looked, and could not be fetched."""


class DataError(ValueError):
    """A dataset's files exist but cannot be used (corrupt image, mask of the wrong size, ...);
    the message names the file and the fix."""


def data_home() -> Path:
    """``$KDLENS_DATA`` when set, else ``~/.cache/kdlens``: the default place for downloads."""
    env = os.environ.get("KDLENS_DATA")
    return Path(env) if env else Path.home() / ".cache" / "kdlens"


def split_train_val(n: int, val_fraction: float, split_seed: int) -> tuple[Tensor, Tensor]:
    """Deterministically hold out ``round(n * val_fraction)`` of ``range(n)`` for validation.

    Both index tensors are sorted, so a split's order follows the source order."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = round(n * val_fraction)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


class SampleSource(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> RawSample: ...


@dataclass(frozen=True)
class TensorSource:
    """In-memory uint8 images (N×C×H×W) with labels and optional masks (N×1×H×W) and groups."""

    images: Tensor
    labels: Tensor
    masks: Tensor | None = None
    groups: Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> RawSample:
        sample: RawSample = {"image": tv_tensors.Image(self.images[i]), "label": int(self.labels[i])}
        if self.masks is not None:
            sample["mask"] = tv_tensors.Mask(self.masks[i])
        if self.groups is not None:
            sample["group"] = int(self.groups[i])
        return sample


class DictDataset(Dataset):
    """One split: ``source`` samples (optionally a subset ``indices``) passed through ``transform``,
    returned as the dict samples described in :class:`kdlens.data.base.DataBundle`.

    ``eval_transform`` is the same pipeline without augmentation (see :meth:`unaugmented`)."""

    def __init__(self, source: SampleSource, transform: Callable[[RawSample], RawSample],
                 indices: Tensor | None = None, eval_transform: Callable[[RawSample], RawSample] | None = None,
                 attached: tuple[dict[str, Tensor], dict[str, Tensor]] = ({}, {})) -> None:
        self.source = source
        self.transform = transform
        self.indices = indices
        self.eval_transform = eval_transform or transform
        self.spatial, self.plain = attached

    def __len__(self) -> int:
        return len(self.source) if self.indices is None else len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for a split of {len(self)} samples")
        raw = self.source[i if self.indices is None else int(self.indices[i])]
        raw.update({key: tv_tensors.Mask(rows[i]) for key, rows in self.spatial.items()})
        raw.update({key: rows[i] for key, rows in self.plain.items()})
        raw = self.transform(raw)
        sample = {"image": raw["image"].as_subclass(Tensor), "index": torch.tensor(i)}
        for key in ("label", "group"):
            if key in raw:
                sample[key] = torch.tensor(raw[key], dtype=torch.int64)
        if "mask" in raw:
            sample["mask"] = raw["mask"].as_subclass(Tensor).float()
        sample.update({key: raw[key].as_subclass(Tensor) for key in (*self.spatial, *self.plain)})
        return sample

    def unaugmented(self) -> DictDataset:
        """The same samples in the same order, without augmentation (e.g. to precompute a frozen
        teacher's outputs once)."""
        return DictDataset(self.source, self.eval_transform, self.indices)

    def attach(self, spatial: dict[str, Tensor] | None = None, plain: dict[str, Tensor] | None = None) -> DictDataset:
        """A copy whose sample i also carries row i of each tensor: ``spatial`` rows (C×H×W at the
        image's size, e.g. frozen teacher explanation maps) get the same crop/flip as the image;
        ``plain`` rows (e.g. frozen teacher logits) pass through unchanged."""
        for key, rows in {**(spatial or {}), **(plain or {})}.items():
            if len(rows) != len(self):
                raise ValueError(f"'{key}' has {len(rows)} rows for a split of {len(self)} samples")
        return DictDataset(self.source, self.transform, self.indices, self.eval_transform, (spatial or {}, plain or {}))


@dataclass(frozen=True)
class Transforms:
    train: v2.Transform
    eval: v2.Transform


def make_transforms(mean: Sequence[float], std: Sequence[float], train_ops: Sequence[v2.Transform],
                    eval_ops: Sequence[v2.Transform] = ()) -> Transforms:
    """Geometric ops, then to float in [0, 1] and normalise. v2 transforms move a sample's image
    and mask together, so one random crop/flip applies to both."""
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return Transforms(train=v2.Compose([*train_ops, *tail]), eval=v2.Compose([*eval_ops, *tail]))


def train_val_test(cfg: DataConfigBase, train_source: SampleSource, test_source: SampleSource,
                   transforms: Transforms) -> tuple[DictDataset, DictDataset, DictDataset]:
    """Carve validation out of the training source; only the training subset augments."""
    train_idx, val_idx = split_train_val(len(train_source), cfg.val_fraction, cfg.split_seed)
    train_tf = transforms.train if cfg.augment else transforms.eval
    return (DictDataset(train_source, train_tf, train_idx, eval_transform=transforms.eval),
            DictDataset(train_source, transforms.eval, val_idx),
            DictDataset(test_source, transforms.eval))
