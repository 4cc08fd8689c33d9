"""``shapes``: a synthetic, generated-in-memory dataset with pixel-exact foreground masks and an
optional shortcut (Waterbirds style) for studying what students learn from teachers.

Each image holds one flat-coloured shape on a textured background. The class is the shape's
geometry only: position, scale, small rotation and foreground colour are drawn independently of
it. With ``shortcut=p`` a colour agrees with the class with probability p in train/val/test, and a
``shifted`` split with class-independent colours exposes models that learned the colour instead of
the shape. The colour is either

- ``shortcut_kind: background``: the background's palette colour. A global colour reaches every
  receptive field, so a model can rest its evidence on the shape while deciding by the colour: the
  negative control for explanation-aware distillation; or
- ``shortcut_kind: patch``: a small white-framed decoy patch (in the top-left corner, or anywhere)
  on a class-independent background. The decoy is spatially separable from the shape, and every
  image has a ``decoy_mask`` beside its shape ``mask``, so explanation mass on the decoy can be
  measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor
from torch.utils.data import Dataset

from kdlens.data.base import DataBundle, DataConfigBase, DatasetInfo, register_dataset
from kdlens.data.common import DictDataset, TensorSource, make_transforms, train_val_test

Split = Literal["train", "test", "shifted"]
ShortcutKind = Literal["background", "patch"]
PatchPlacement = Literal["corner", "random"]
_SPLIT_STREAMS: dict[Split, int] = {"train": 0, "test": 1, "shifted": 2}

PALETTE: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (190, 40, 40)),
    ("green", (40, 150, 60)),
    ("blue", (40, 60, 190)),
    ("yellow", (200, 180, 40)),
    ("magenta", (180, 50, 170)),
    ("cyan", (40, 170, 180)),
    ("orange", (220, 110, 30)),
    ("grey", (120, 120, 120)),
)
TEXTURE_AMPLITUDE = 24
"""Background pixels stay within ±this (per channel) of their palette colour."""
FOREGROUND_MARGIN = 40
"""Every foreground colour is more than this (per-channel max distance) away from any background
pixel, so the mask is also what the eye sees as the shape."""
SIZE_RANGE = (0.35, 0.70)
"""Shape diameter as a fraction of the image side."""
MAX_ROTATION = math.radians(15)
PATCH_FRAME = (255, 255, 255)
"""The decoy patch's one-pixel frame: it keeps the patch visible on a background of its own colour."""
PATCH_MARGIN = 2
"""Pixels between a corner patch and the image's edges."""
_RENDER_CHUNK = 1024  # images rendered at once: bounds memory at large image sizes
_STATS_SAMPLES = 2000  # images behind the normalisation constants (mean within ~0.01 of the truth)


# Each shape is a predicate on coordinates (u, v) centred on the shape and scaled so the shape
# fits the unit disc (v points down): rotated, it still fits, so it never leaves the image.
def _circle(u: Tensor, v: Tensor) -> Tensor:
    return u**2 + v**2 <= 1


def _square(u: Tensor, v: Tensor) -> Tensor:
    return torch.maximum(u.abs(), v.abs()) <= 0.7


def _triangle(u: Tensor, v: Tensor) -> Tensor:
    # Equilateral, apex up: inside the three edges at distance 0.5 from the centre.
    s = math.sqrt(3) / 2
    return (v <= 0.5) & (s * u - v / 2 <= 0.5) & (-s * u - v / 2 <= 0.5)


def _cross(u: Tensor, v: Tensor) -> Tensor:
    a, b = u.abs(), v.abs()
    return ((a <= 0.3) & (b <= 0.95)) | ((b <= 0.3) & (a <= 0.95))


def _diamond(u: Tensor, v: Tensor) -> Tensor:
    # A tall rhombus rather than a 45° square, so it stays distinct from a rotated square.
    return u.abs() / 0.6 + v.abs() <= 1


def _ring(u: Tensor, v: Tensor) -> Tensor:
    r2 = u**2 + v**2
    return (r2 <= 1) & (r2 >= 0.55**2)


def _star(u: Tensor, v: Tensor, points: int = 5, inner: float = 0.45) -> Tensor:
    # Fold the angle onto the half-sector between a tip (radius 1) and a notch (radius `inner`),
    # then test which side of that edge the point lies on.
    sector = 2 * math.pi / points
    phi = torch.remainder(torch.atan2(u, -v), sector)
    psi = torch.minimum(phi, sector - phi)
    rho = torch.hypot(u, v)
    qx, qy = rho * torch.cos(psi), rho * torch.sin(psi)
    bx, by = inner * math.cos(sector / 2), inner * math.sin(sector / 2)
    return (bx - 1) * qy - by * (qx - 1) >= 0


def _hexagon(u: Tensor, v: Tensor) -> Tensor:
    apothem = math.cos(math.pi / 6)
    return torch.stack([(u * math.cos(a) + v * math.sin(a)).abs() for a in (0, math.pi / 3, 2 * math.pi / 3)]
                       ).amax(0) <= apothem


SHAPES: tuple[tuple[str, Callable[[Tensor, Tensor], Tensor]], ...] = (
    ("circle", _circle), ("square", _square), ("triangle", _triangle), ("cross", _cross),
    ("diamond", _diamond), ("ring", _ring), ("star", _star), ("hexagon", _hexagon),
)


class ShapesConfig(DataConfigBase):
    name: Literal["shapes"] = "shapes"
    num_classes: int = Field(4, ge=2, le=len(SHAPES))
    image_size: int = Field(32, ge=16)
    train_size: int = Field(4000, ge=1)
    test_size: int = Field(1000, ge=1)
    seed: int = Field(0, ge=0)
    shortcut: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    """Probability that a train/val/test image shows its class's own colour (background or patch);
    None: colours independent of the class, and no shifted split."""
    shortcut_kind: ShortcutKind = "background"
    """Where the class-correlated colour is: the whole ``background``, or a decoy ``patch``."""
    patch_size: int = Field(6, ge=3)
    """Side of the decoy patch in pixels, its frame included."""
    patch_placement: PatchPlacement = "corner"
    """``corner``: the top-left corner (moved by the training crop and flip like everything else);
    ``random``: anywhere in the image, drawn per image."""

    @model_validator(mode="after")
    def _patch_fits(self) -> ShapesConfig:
        if self.shortcut_kind == "patch" and self.patch_size + 2 * PATCH_MARGIN > self.image_size // 2:
            raise ValueError(f"patch_size={self.patch_size} is too large for image_size={self.image_size}: the patch "
                             f"and its margins may take at most half the side ({self.image_size // 2} px); lower "
                             "patch_size or raise image_size")
        return self


@dataclass(frozen=True)
class ShapesArrays:
    """One generated split, un-normalised."""

    images: Tensor  # uint8 N×3×S×S
    masks: Tensor  # uint8 N×1×S×S, 1 exactly where the image shows the foreground colour
    labels: Tensor  # int64 N
    backgrounds: Tensor  # int64 N, palette index of the background colour
    colors: Tensor  # uint8 N×3, foreground colour
    num_classes: int
    decoys: Tensor | None = None  # int64 N, palette index of the decoy patch's colour
    decoy_masks: Tensor | None = None  # uint8 N×1×S×S, 1 on the decoy patch (frame included)

    @property
    def shortcut_colors(self) -> Tensor:
        """The palette index of the colour that the shortcut ties to the class."""
        return self.backgrounds if self.decoys is None else self.decoys

    @property
    def groups(self) -> Tensor:
        """(class × shortcut colour), numbered class-major."""
        return self.labels * self.num_classes + self.shortcut_colors


def generate_shapes(n: int, *, num_classes: int, image_size: int, seed: int, split: Split,
                    shortcut: float | None, kind: ShortcutKind = "background", patch_size: int = 6,
                    patch_placement: PatchPlacement = "corner") -> ShapesArrays:
    """Generate ``n`` images; ``split`` picks an independent random stream for the same seed.

    ``shortcut=None`` draws the shortcut colour (``kind``: the background's, or a decoy patch's)
    uniformly; ``shortcut=p`` gives each image its class's palette colour with probability p and
    otherwise one of the other colours uniformly. With a patch, backgrounds are uniform."""
    g = torch.Generator().manual_seed(seed * len(_SPLIT_STREAMS) + _SPLIT_STREAMS[split])
    labels = torch.randint(num_classes, (n,), generator=g)
    backgrounds = _shortcut_colors(labels, num_classes, shortcut if kind == "background" else None, g)
    choices = _foreground_choices(num_classes)
    colors = choices[torch.randint(len(choices), (n,), generator=g)]
    radius = torch.empty(n).uniform_(*SIZE_RANGE, generator=g) * image_size / 2
    centre = radius[:, None] + torch.rand(n, 2, generator=g) * (image_size - 2 * radius[:, None])
    angle = (torch.rand(n, generator=g) * 2 - 1) * MAX_ROTATION

    images = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
    masks = torch.empty(n, 1, image_size, image_size, dtype=torch.uint8)
    palette = torch.tensor([rgb for _, rgb in PALETTE], dtype=torch.float32)
    for start in range(0, n, _RENDER_CHUNK):
        part = slice(start, start + _RENDER_CHUNK)
        inside = _draw(labels[part], centre[part], radius[part], angle[part], image_size)
        background = palette[backgrounds[part]][:, :, None, None] + _texture(len(inside), image_size, g)
        images[part] = torch.where(inside, colors[part, :, None, None].float(), background.clamp(0, 255))
        masks[part] = inside
    if kind == "background":
        return ShapesArrays(images, masks, labels, backgrounds, colors, num_classes)
    # Drawn after everything else, so that the images under the patches are the same draws as the
    # background kind's with independent backgrounds.
    decoys = _shortcut_colors(labels, num_classes, shortcut, g)
    if patch_placement == "corner":
        corners = torch.full((n, 2), PATCH_MARGIN)
    else:
        corners = torch.randint(image_size - patch_size + 1, (n, 2), generator=g)
    decoy_masks = _squares(corners, patch_size, image_size)
    inner = _squares(corners + 1, patch_size - 2, image_size)  # the patch less its frame
    patch = torch.where(inner, palette[decoys][:, :, None, None], torch.tensor(PATCH_FRAME, dtype=torch.float32)[:, None, None])
    images = torch.where(decoy_masks, patch.to(torch.uint8), images)
    masks &= ~decoy_masks  # the shape mask stays exactly where the shape's colour shows
    return ShapesArrays(images, masks, labels, backgrounds, colors, num_classes, decoys, decoy_masks.to(torch.uint8))


def _shortcut_colors(labels: Tensor, num_classes: int, shortcut: float | None, g: torch.Generator) -> Tensor:
    """Palette indices: uniform (``shortcut=None``), or the class's own with probability ``shortcut``
    and another one uniformly otherwise."""
    n = len(labels)
    if shortcut is None:
        return torch.randint(num_classes, (n,), generator=g)
    own = torch.rand(n, generator=g) < shortcut
    other = (labels + 1 + torch.randint(num_classes - 1, (n,), generator=g)) % num_classes
    return torch.where(own, labels, other)


def _squares(corners: Tensor, side: int, size: int) -> Tensor:
    """Boolean N×1×S×S squares of ``side`` pixels with their top-left pixels at ``corners`` (N×2, row, column)."""
    pos = torch.arange(size)
    rows = (pos >= corners[:, :1]) & (pos < corners[:, :1] + side)
    cols = (pos >= corners[:, 1:]) & (pos < corners[:, 1:] + side)
    return (rows[:, :, None] & cols[:, None, :])[:, None]


def _draw(labels: Tensor, centre: Tensor, radius: Tensor, angle: Tensor, size: int) -> Tensor:
    """Boolean N×1×S×S foreground, tested at pixel centres (no anti-aliasing: masks are exact)."""
    pos = torch.arange(size, dtype=torch.float32) + 0.5
    dx = pos[None, None, :] - centre[:, 0, None, None]
    dy = pos[None, :, None] - centre[:, 1, None, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    r = radius[:, None, None]
    u, v = (dx * cos + dy * sin) / r, (dy * cos - dx * sin) / r
    inside = torch.zeros(len(labels), size, size, dtype=torch.bool)
    for k, (_, shape) in enumerate(SHAPES):
        chosen = labels == k
        if chosen.any():
            inside[chosen] = shape(u[chosen], v[chosen])
    return inside[:, None]


def _texture(n: int, size: int, g: torch.Generator) -> Tensor:
    """Integer brightness offsets in [-TEXTURE_AMPLITUDE, TEXTURE_AMPLITUDE]: smooth blobs plus
    pixel noise, the same on all channels so the background keeps its hue."""
    smooth = F.interpolate(torch.rand(n, 1, 4, 4, generator=g) * 2 - 1, size=(size, size),
                           mode="bilinear", align_corners=True)
    noise = torch.rand(n, 1, size, size, generator=g) * 2 - 1
    return (TEXTURE_AMPLITUDE * (0.7 * smooth + 0.3 * noise)).round()


@lru_cache
def _foreground_choices(num_classes: int) -> Tensor:
    """All colours on a 16-level grid far enough from the first ``num_classes`` palette colours.
    The grid avoids 0, so no foreground is the black that crop padding adds."""
    levels = torch.arange(8, 256, 16)
    grid = torch.cartesian_prod(levels, levels, levels)
    palette = torch.tensor([rgb for _, rgb in PALETTE[:num_classes]])
    dist = (grid[:, None, :] - palette[None]).abs().amax(-1)
    return grid[(dist > TEXTURE_AMPLITUDE + FOREGROUND_MARGIN).all(1)].to(torch.uint8)


@lru_cache
def normalisation(num_classes: int, image_size: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (in [0, 1] units) of the generator's distribution, estimated once
    from a fixed draw: every config with these two options normalises alike, whatever its seed,
    sizes or shortcut (backgrounds stay uniform on average), so a teacher trained without the
    shortcut sees the same inputs on a student's shortcut data."""
    images = generate_shapes(_STATS_SAMPLES, num_classes=num_classes, image_size=image_size, seed=0,
                             split="train", shortcut=None).images
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(images), _RENDER_CHUNK):  # in chunks: no float copy of every image
        x = images[start:start + _RENDER_CHUNK].to(torch.float64) / 255
        total += x.sum((0, 2, 3))
        squares += (x**2).sum((0, 2, 3))
    count = images.numel() / 3
    mean = total / count
    std = (squares / count - mean**2).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def describe(cfg: ShapesConfig) -> DatasetInfo:
    mean, std = normalisation(cfg.num_classes, cfg.image_size)
    return DatasetInfo(num_classes=cfg.num_classes, in_channels=3, image_size=(cfg.image_size, cfg.image_size),
                       class_names=tuple(name for name, _ in SHAPES[: cfg.num_classes]), mean=mean, std=std)


@register_dataset(ShapesConfig, describe=describe)
def build(cfg: ShapesConfig) -> DataBundle:
    from torchvision.transforms import v2

    def source(n: int, split: Split, shortcut: float | None) -> TensorSource:
        arrays = generate_shapes(n, num_classes=cfg.num_classes, image_size=cfg.image_size, seed=cfg.seed,
                                 split=split, shortcut=shortcut, kind=cfg.shortcut_kind, patch_size=cfg.patch_size,
                                 patch_placement=cfg.patch_placement)
        return TensorSource(arrays.images, arrays.labels, arrays.masks, arrays.groups, arrays.decoy_masks)

    info = describe(cfg)
    pad = cfg.image_size // 8
    transforms = make_transforms(info.mean, info.std, [v2.RandomCrop(cfg.image_size, padding=pad),
                                             v2.RandomHorizontalFlip()])
    train, val, test = train_val_test(cfg, source(cfg.train_size, "train", cfg.shortcut),
                                      source(cfg.test_size, "test", cfg.shortcut), transforms)
    extra: dict[str, Dataset] = {}
    if cfg.shortcut is not None:
        extra["shifted"] = DictDataset(source(cfg.test_size, "shifted", None), transforms.eval)
    colour_names = [name for name, _ in PALETTE[: cfg.num_classes]]
    prefix = "bg" if cfg.shortcut_kind == "background" else "patch"
    return DataBundle(
        train=train, val=val, test=test, extra_splits=extra, **info.facts(),
        group_names=[f"{c}/{prefix}-{colour}" for c in info.class_names for colour in colour_names],
        aligned_groups=frozenset(k * cfg.num_classes + k for k in range(cfg.num_classes)),
    )
