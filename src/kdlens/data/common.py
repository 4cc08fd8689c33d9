"""Helpers every dataset shares: where data lives, the train/val split, dict samples, transforms."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from kdlens.data.base import DataConfigBase
from kdlens.errors import UserError

if TYPE_CHECKING:
    from torchvision.transforms import v2

# torchvision is imported where it is used (transforms, samples), not here: importing a dataset's
# module (e.g. to validate its config) stays free of torchvision's import time.

RawSample = dict[str, Any]
"""A sample before its transform: ``image`` (tv_tensors.Image or PIL image), ``label`` (int) and,
where the dataset has them, ``mask`` (tv_tensors.Mask, 1×H×W uint8: the object), ``decoy_mask`` (the
same, where a decoy cue is drawn) and ``group`` (int)."""
MASK_KEYS = ("mask", "decoy_mask")
"""The sample keys holding binary masks: they move with the image and come out as float 1×H×W."""


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset's files are not where kdlens looked, and could not be fetched."""


class DataError(UserError, ValueError):
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
    decoy_masks: Tensor | None = None
    """Where a decoy (a spurious, class-correlated cue) is drawn, N×1×H×W, for datasets that have one."""

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> RawSample:
        from torchvision import tv_tensors

        sample: RawSample = {"image": tv_tensors.Image(self.images[i]), "label": int(self.labels[i])}
        if self.masks is not None:
            sample["mask"] = tv_tensors.Mask(self.masks[i])
        if self.decoy_masks is not None:
            sample["decoy_mask"] = tv_tensors.Mask(self.decoy_masks[i])
        if self.groups is not None:
            sample["group"] = int(self.groups[i])
        return sample


@functools.cache
def spatial_map_type() -> type[Tensor]:
    """``SpatialMap``: a per-pixel quantity (e.g. a frozen teacher explanation map) that travels
    with its image through a v2 transform. It is a :class:`~torchvision.tv_tensors.Mask` for every
    op (exact crops, flips and pads, zero fill), except that resizes (``Resize``,
    ``RandomResizedCrop``) resample it as the image is resampled (bilinear and antialiased by
    default) instead of with a label mask's nearest neighbour, which would alias a continuous map
    on a strong downscale. Created (and its kernels registered with torchvision) on first use."""
    from torchvision import tv_tensors
    from torchvision.transforms.v2 import functional as TF

    class SpatialMap(tv_tensors.Mask):
        __doc__ = spatial_map_type.__doc__

    def resample_like_an_image(image_kernel: Callable[..., Tensor]) -> Callable[..., Tensor]:
        def kernel(inpt: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            values = inpt.as_subclass(Tensor)
            out = image_kernel(values.float(), *args, **kwargs)
            return tv_tensors.wrap(out.to(values.dtype) if values.is_floating_point() else out, like=inpt)

        return kernel

    TF.register_kernel(TF.resize, SpatialMap)(resample_like_an_image(TF.resize_image))
    TF.register_kernel(TF.resized_crop, SpatialMap)(resample_like_an_image(TF.resized_crop_image))
    return SpatialMap


def _value_ops() -> tuple[type, ...]:
    """Eval ops that change pixel values only, never where a pixel is."""
    from torchvision.transforms import v2

    return (v2.ToImage, v2.ToDtype, v2.ConvertImageDtype, v2.Normalize, v2.ToPureTensor)


def _flat_ops(transform: Callable[..., Any]) -> list[Callable[..., Any]]:
    from torchvision.transforms import v2

    if isinstance(transform, v2.Compose):
        return [op for inner in transform.transforms for op in _flat_ops(inner)]
    return [transform]


def _resized_size(size: tuple[int, int], op: v2.Resize) -> tuple[int, int]:
    """The output (h, w) of ``op`` for an input of ``size``, by torchvision's rules."""
    h, w = size
    if op.size is not None and len(op.size) == 2:
        return int(op.size[0]), int(op.size[1])
    short, long = (w, h) if w <= h else (h, w)
    if op.size is None:  # only max_size: the longer side
        new_short, new_long = int(op.max_size * short / long), op.max_size
    else:
        new_short, new_long = op.size[0], int(op.size[0] * long / short)
        if op.max_size is not None and new_long > op.max_size:
            new_short, new_long = int(op.max_size * new_short / new_long), op.max_size
    return (new_long, new_short) if w <= h else (new_short, new_long)


def _crop_offset(size: int, crop: int) -> int:
    """Where torchvision's centre crop starts along one axis; negative where it pads."""
    return -((crop - size) // 2) if crop > size else int(round((size - crop) / 2.0))


@dataclass(frozen=True)
class EvalGeometry:
    """The resizes and centre crops of an eval transform (in order), read from the transform
    itself, which carry maps computed on eval images back into their images' native frames.

    ``Resize`` (shorter side, ``(h, w)`` or ``max_size``) and ``CenterCrop`` (padding where the
    crop is larger than the image) are supported, as are the value-only ops of
    :func:`make_transforms`' tail; any other op raises ``ValueError`` naming it."""

    ops: tuple[v2.Resize | v2.CenterCrop, ...]

    @classmethod
    def of(cls, transform: Callable[..., Any]) -> EvalGeometry:
        from torchvision.transforms import v2

        ops = []
        for op in _flat_ops(transform):
            if isinstance(op, (v2.Resize, v2.CenterCrop)):
                ops.append(op)
            elif not isinstance(op, _value_ops()):
                raise ValueError(
                    f"cannot attach spatial rows: the eval transform has {type(op).__name__} ({op!r}), whose "
                    "geometry kdlens cannot invert; only Resize and CenterCrop (plus ToImage/ToDtype/Normalize) "
                    "are supported in eval_ops"
                )
        return cls(tuple(ops))

    @property
    def identity(self) -> bool:
        return not self.ops

    def frame(self, native: tuple[int, int]) -> tuple[tuple[float, float], tuple[float, float], tuple[int, int]]:
        """``(scale_y, offset_y), (scale_x, offset_x), (h, w)``: an eval image of ``(h, w)``, made
        from a native image of ``native`` (h, w), has its continuous coordinate e at the native
        coordinate ``scale·e + offset`` along each axis (pixel edges: pixel k spans [k, k+1))."""
        from torchvision.transforms import v2

        size = (int(native[0]), int(native[1]))
        scale, offset = [1.0, 1.0], [0.0, 0.0]
        for op in self.ops:
            if isinstance(op, v2.Resize):
                new = _resized_size(size, op)
                scale = [scale[a] * size[a] / new[a] for a in (0, 1)]
            else:
                new = (int(op.size[0]), int(op.size[1]))
                offset = [offset[a] + scale[a] * _crop_offset(size[a], new[a]) for a in (0, 1)]
            size = new
        return (scale[0], offset[0]), (scale[1], offset[1]), size

    def to_native(self, row: Tensor, native: tuple[int, int]) -> Tensor:
        """``row`` (C×h×w, any resolution covering the eval image) resampled bilinearly onto the
        native pixel grid of ``native`` (h, w), float32. Native pixels outside the eval crop get
        0: the teacher never saw them, and 0 is "no evidence" for Grad-CAM (non-negative) and
        B-cos contributions (signed) alike, where any other fill would invent evidence. In e²KD's
        cosine a zero teacher value adds nothing to the dot product; the student's map there still
        counts in its norm, so the term does pull it mildly towards 0 outside the centre (a crop
        entirely outside gets an all-zero map, whose term has no gradient). Masking those pixels
        out of the loss would avoid that pull, at the cost of a validity map per sample."""
        axes = self.frame(native)
        coords, inside = [], []
        for (scale, offset), n, extent, m in zip(axes[:2], native, axes[2], row.shape[-2:]):
            e = (torch.arange(n, dtype=torch.float64) + 0.5 - offset) / scale  # native pixel centres, eval units
            inside.append(((e >= 0) & (e <= extent)).float())
            # Sample only between the centres of the row's pixels that show the image: never blend
            # in the zero padding of a centre crop larger than the resized image.
            lo, hi = max(0.0, -offset / scale) * m / extent, min(float(extent), (n - offset) / scale) * m / extent
            at = (e * m / extent).clamp(min(lo + 0.5, (lo + hi) / 2), max(hi - 0.5, (lo + hi) / 2))
            coords.append((2 * at / m - 1).float())
        gy, gx = torch.broadcast_tensors(coords[0][:, None], coords[1][None, :])
        grid = torch.stack([gx, gy], dim=-1)[None]
        out = F.grid_sample(row[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
        return out * (inside[0][:, None] * inside[1][None, :])


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
        self._geometry = EvalGeometry.of(self.eval_transform) if self.spatial else EvalGeometry(())

    def __len__(self) -> int:
        return len(self.source) if self.indices is None else len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for a split of {len(self)} samples")
        raw = self.source[i if self.indices is None else int(self.indices[i])]
        maps = {key: rows[i] for key, rows in self.spatial.items()}
        # Without augmentation the training transform is the eval transform: the rows are already
        # in its output frame, so they join after it instead of making a round trip.
        after = bool(maps) and not self._geometry.identity and self.transform is self.eval_transform
        if maps and not after:
            if not self._geometry.identity:
                from torchvision.transforms.v2 import functional as TF

                native = tuple(TF.get_size(raw["image"]))
                maps = {key: self._geometry.to_native(row, native) for key, row in maps.items()}
            spatial_map = spatial_map_type()
            raw.update({key: spatial_map(row) for key, row in maps.items()})
        raw.update({key: rows[i] for key, rows in self.plain.items()})
        raw = self.transform(raw)
        if after:
            raw.update(maps)
        sample = {"image": raw["image"].as_subclass(Tensor), "index": torch.tensor(i)}
        for key in ("label", "group"):
            if key in raw:
                sample[key] = torch.tensor(raw[key], dtype=torch.int64)
        for key in MASK_KEYS:
            if key in raw:
                sample[key] = raw[key].as_subclass(Tensor).float()
        sample.update({key: raw[key].as_subclass(Tensor) for key in (*self.spatial, *self.plain)})
        return sample

    def unaugmented(self) -> DictDataset:
        """The same samples in the same order, without augmentation (e.g. to precompute a frozen
        teacher's outputs once)."""
        return DictDataset(self.source, self.eval_transform, self.indices)

    def attach(self, spatial: dict[str, Tensor] | None = None, plain: dict[str, Tensor] | None = None) -> DictDataset:
        """A copy whose sample i also carries row i of each tensor: ``spatial`` rows (C×H×W, e.g.
        frozen teacher explanation maps) get the same crop/flip as the image; ``plain`` rows (e.g.
        frozen teacher logits) pass through unchanged.

        ``spatial`` rows live in the frame of :meth:`unaugmented`'s images (what the eval transform
        outputs). Where the eval transform resizes or centre-crops (datasets of native-size
        images), each row is first put back into its image's native frame (see
        :class:`EvalGeometry`), so that the training transform's random crop/flip moves it with the
        image; the parts of the native image that the eval crop left out have no row values and get
        zeros. Raises ``ValueError`` when the eval transform has an op whose geometry is not known."""
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
    and mask together, so one random crop/flip applies to both. Composed by
    :class:`~kdlens.data.fast_compose.FastCompose`: v2's results without most of its per-sample
    overhead."""
    from torchvision.transforms import v2

    from kdlens.data.fast_compose import FastCompose

    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return Transforms(train=FastCompose([*train_ops, *tail]), eval=FastCompose([*eval_ops, *tail]))


def train_val_test(cfg: DataConfigBase, train_source: SampleSource, test_source: SampleSource,
                   transforms: Transforms) -> tuple[DictDataset, DictDataset, DictDataset]:
    """Carve validation out of the training source; only the training subset augments."""
    train_idx, val_idx = split_train_val(len(train_source), cfg.val_fraction, cfg.split_seed)
    train_tf = transforms.train if cfg.augment else transforms.eval
    return (DictDataset(train_source, train_tf, train_idx, eval_transform=transforms.eval),
            DictDataset(train_source, transforms.eval, val_idx),
            DictDataset(test_source, transforms.eval))
