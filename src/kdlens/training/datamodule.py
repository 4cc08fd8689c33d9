"""Loaders for a :class:`DataBundle`, with a shuffle order that is a function of (seed, epoch)."""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader, DistributedSampler

from kdlens.data import DataBundle, DataConfigBase
from kdlens.data.loaders import eval_loader, make_loader


class BundleDataModule(L.LightningDataModule):
    def __init__(self, bundle: DataBundle, config: DataConfigBase, seed: int) -> None:
        super().__init__()
        self.bundle = bundle
        self.config = config
        self.seed = seed

    def train_dataloader(self) -> DataLoader:
        # DistributedSampler (also with one replica) draws each epoch's order from (seed, epoch)
        # rather than from the global RNG, so a resumed run sees the same batches as an
        # uninterrupted one, and ranks of a DDP run see disjoint shards.
        sampler = DistributedSampler(
            self.bundle.train,
            num_replicas=self.trainer.world_size,
            rank=self.trainer.global_rank,
            shuffle=True,
            seed=self.seed,
            drop_last=True,
        )
        return make_loader(self.bundle.train, self.config.batch_size, self.config, sampler=sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return eval_loader(self.bundle.val, self.config)
