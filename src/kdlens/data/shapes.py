"""``shapes``: a synthetic, generated-in-memory dataset with pixel-exact foreground masks and an
optional background shortcut (Waterbirds style) for studying what students learn from teachers.

Each image holds one flat-coloured shape on a textured background. The class is the shape's
geometry only: position, scale, small rotation and foreground colour are drawn independently of
it. The background colour is one of ``num_classes`` palette colours; with ``shortcut=p`` it is the
class's own palette colour with probability p in train/val/test, and a ``shifted`` split with
class-independent backgrounds exposes models that learned the background instead of the shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor
from torch.utils.data import Dataset

from kdlens.data.base import DataBundle, DataConfigBase, DatasetInfo, register_dataset
from kdlens.data.common import DictDataset, TensorSource, make_transforms, train_val_test

Split = Literal["train", "test", "shifted"]
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
    """Probability that a train/val/test image shows its class's own background colour."""


@dataclass(frozen=True)
class ShapesArrays:
    """One generated split, un-normalised."""

    images: Tensor  # uint8 N×3×S×S
    masks: Tensor  # uint8 N×1×S×S, 1 exactly where the image shows the foreground colour
    labels: Tensor  # int64 N
    backgrounds: Tensor  # int64 N, palette index of the background colour
    colors: Tensor  # uint8 N×3, foreground colour
    num_classes: int

    @property
    def groups(self) -> Tensor:
        return self.labels * self.num_classes + self.backgrounds


def generate_shapes(n: int, *, num_classes: int, image_size: int, seed: int, split: Split,
                    shortcut: float | None) -> ShapesArrays:
    """Generate ``n`` images; ``split`` picks an independent random stream for the same seed.

    ``shortcut=None`` draws backgrounds uniformly; ``shortcut=p`` gives each image its class's
    palette colour with probability p and otherwise one of the other colours uniformly."""
    g = torch.Generator().manual_seed(seed * len(_SPLIT_STREAMS) + _SPLIT_STREAMS[split])
    labels = torch.randint(num_classes, (n,), generator=g)
    if shortcut is None:
        backgrounds = torch.randint(num_classes, (n,), generator=g)
    else:
        own = torch.rand(n, generator=g) < shortcut
        other = (labels + 1 + torch.randint(num_classes - 1, (n,), generator=g)) % num_classes
        backgrounds = torch.where(own, labels, other)
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
    return ShapesArrays(images, masks, labels, backgrounds, colors, num_classes)


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
        arrays = generate_shapes(n, num_classes=cfg.num_classes, image_size=cfg.image_size,
                                 seed=cfg.seed, split=split, shortcut=shortcut)
        return TensorSource(arrays.images, arrays.labels, arrays.masks, arrays.groups)

    info = describe(cfg)
    pad = cfg.image_size // 8
    transforms = make_transforms(info.mean, info.std, [v2.RandomCrop(cfg.image_size, padding=pad),
                                             v2.RandomHorizontalFlip()])
    train, val, test = train_val_test(cfg, source(cfg.train_size, "train", cfg.shortcut),
                                      source(cfg.test_size, "test", cfg.shortcut), transforms)
    extra: dict[str, Dataset] = {}
    if cfg.shortcut is not None:
        extra["shifted"] = DictDataset(source(cfg.test_size, "shifted", None), transforms.eval)
    bg_names = [name for name, _ in PALETTE[: cfg.num_classes]]
    return DataBundle(
        train=train, val=val, test=test, extra_splits=extra, **info.facts(),
        group_names=[f"{c}/bg-{b}" for c in info.class_names for b in bg_names],
    )
