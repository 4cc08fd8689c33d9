"""DataLoaders over kdlens splits, with the config's workers."""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader, Dataset

from kdlens.data.base import DataConfigBase


def make_loader(dataset: Dataset, batch_size: int, config: DataConfigBase, **kwargs: Any) -> DataLoader:
    workers = config.num_workers
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, persistent_workers=workers > 0, **kwargs)


def eval_loader(dataset: Dataset, config: DataConfigBase) -> DataLoader:
    """In order, un-shuffled, at the evaluation batch size."""
    return make_loader(dataset, config.eval_batch_size, config)
