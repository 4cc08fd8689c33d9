"""Callbacks that make runs reproducible across interruptions and processes."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class RNGStateCallback(Callback):
    """Reproducible randomness (augmentations, dropout) across resumes and DDP ranks.

    The torch and Python RNG states go into each checkpoint (Lightning saves rank 0's) and are
    restored on resume, so a resumed run draws what an uninterrupted one would. Each rank r > 0
    then derives its own stream from that state and r: ranks augment their shards independently,
    and deterministically, also after a resume."""

    def state_dict(self) -> dict[str, Any]:
        return {"torch": torch.get_rng_state(), "python": random.getstate()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        random.setstate(state_dict["python"])

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank > 0:
            digest = hashlib.sha256(torch.get_rng_state().numpy().tobytes()).digest()
            seed = int.from_bytes(digest[:8], "little") + trainer.global_rank
            torch.manual_seed(seed)
            random.seed(seed)
