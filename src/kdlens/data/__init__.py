"""Datasets: a registry of configs and builders (:data:`kdlens.registry.DATASETS`); importing this
package registers kdlens's own, and a dataset of another package registers through the
``kdlens.datasets`` entry points (docs/extending.md)."""

from kdlens.data import cifar, fashion_mnist, imagefolder, imagenet_s, imagenet_segmentation, shapes  # noqa: F401  (registration)
from kdlens.data.base import DATASETS, DataBundle, DataConfigBase, DatasetEntry, DatasetInfo, register_dataset
from kdlens.data.common import DataError, DatasetNotFoundError, split_train_val


def build_data(cfg: DataConfigBase) -> DataBundle:
    """The splits and facts of the dataset ``cfg`` describes."""
    return DATASETS[cfg.name].build(cfg)


def describe_data(cfg: DataConfigBase) -> DatasetInfo:
    """The facts of the dataset ``cfg`` describes (classes, channels, size, normalisation), from
    its config alone: no image files are needed."""
    entry = DATASETS[cfg.name]
    return entry.describe(cfg) if entry.describe is not None else entry.build(cfg).info


def dataset_config_types() -> list[type[DataConfigBase]]:
    """Every registered dataset's config class (kdlens's and plugins')."""
    return [DATASETS.config(name) for name in DATASETS.names()]


__all__ = ["DATASETS", "DataBundle", "DataConfigBase", "DataError", "DatasetEntry", "DatasetInfo", "DatasetNotFoundError", "build_data",
           "dataset_config_types", "describe_data", "register_dataset", "split_train_val"]
