"""What every dataset gives the rest of kdlens: its config base, its facts (known from the config
alone), its bundle of splits, its samples."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import Dataset

from kdlens.registry import DATASETS


class DataConfigBase(BaseModel):
    """Options shared by every dataset; each dataset subclasses this with ``name: Literal[...]``
    and its own options, so an option a dataset does not read is an unknown key."""

    model_config = ConfigDict(extra="forbid")

    name: str
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(256, ge=1)
    num_workers: int = Field(0, ge=0)
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    """Fraction of the training split held out for validation (model selection); the test split is
    only evaluated at the end."""
    split_seed: int = 0
    augment: bool = True


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and its inputs need to know about a dataset, without reading its images:
    ``kdlens import`` and checkpoints record these facts."""

    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def facts(self) -> dict[str, Any]:
        """The facts as keyword arguments of :class:`DataBundle` and ``checkpoint_info``."""
        return {"num_classes": self.num_classes, "in_channels": self.in_channels, "image_size": self.image_size,
                "class_names": list(self.class_names), "mean": self.mean, "std": self.std}


@dataclass
class DataBundle:
    """The splits of one dataset and the facts models and reports need about it.

    Every split yields dict samples: ``image`` (float C×H×W, normalised), ``label`` (int64 scalar),
    ``index`` (int64 scalar, position in that split), and where the dataset has them ``mask``
    (float 1×H×W, 1 = foreground), ``decoy_mask`` (the same for a decoy cue) and ``group`` (int64 scalar)."""

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    extra_splits: dict[str, Dataset] = field(default_factory=dict)
    """Further evaluation splits, e.g. ``shifted`` for shapes with a shortcut."""
    group_names: list[str] | None = None
    aligned_groups: frozenset[int] | None = None
    """The groups whose shortcut cue agrees with their class (where the dataset has a shortcut)."""

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo(num_classes=self.num_classes, in_channels=self.in_channels,
                           image_size=tuple(self.image_size), class_names=tuple(self.class_names),
                           mean=tuple(self.mean), std=tuple(self.std))


@dataclass(frozen=True)
class DatasetEntry:
    """What ``DATASETS`` holds for a name: ``DATASETS.register(name, DatasetEntry(build, describe),
    config=Config)``; the ``data`` section naming it validates against ``Config``."""

    build: Callable[[DataConfigBase], DataBundle]
    describe: Callable[[DataConfigBase], DatasetInfo] | None = None
    """The dataset's facts from its config alone (no image files needed, at most a folder listing
    for class names); None: only known by building it."""


def register_dataset(config: type[DataConfigBase], describe: Callable[[Any], DatasetInfo] | None = None):
    """Decorator, shorthand for ``DATASETS.register(name, DatasetEntry(build, describe),
    config=config)`` on ``build(config) -> DataBundle`` (``describe(config) -> DatasetInfo``:
    the facts without the files), under the name of ``config``'s ``name`` literal."""

    def add(build: Callable[[DataConfigBase], DataBundle]) -> Callable[[DataConfigBase], DataBundle]:
        name = config.model_fields["name"].default
        DATASETS.register(name, DatasetEntry(build, describe), config=config)
        return build

    return add
