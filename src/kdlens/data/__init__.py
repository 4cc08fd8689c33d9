"""Datasets: a registry of configs and builders; importing this package registers all of them."""

from kdlens.data import cifar, fashion_mnist, imagefolder, imagenet_s, imagenet_segmentation, shapes  # noqa: F401  (registration)
from kdlens.data.base import DATASETS, DataBundle, DataConfigBase, register_dataset
from kdlens.data.common import DataError, DatasetNotFoundError, split_train_val


def build_data(cfg: DataConfigBase) -> DataBundle:
    """The splits and facts of the dataset ``cfg`` describes."""
    return DATASETS[cfg.name].build(cfg)


def dataset_config_types() -> list[type[DataConfigBase]]:
    """Every registered dataset's config class, for a discriminated union on ``name``."""
    return [DATASETS[name].config for name in DATASETS.names()]


__all__ = ["DATASETS", "DataBundle", "DataConfigBase", "DataError", "DatasetNotFoundError", "build_data",
           "dataset_config_types", "register_dataset", "split_train_val"]
