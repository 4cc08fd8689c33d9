"""Callbacks that make runs reproducible across interruptions."""

from __future__ import annotations

import random
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback


class RNGStateCallback(Callback):
    """Stores the torch and Python RNG states in each checkpoint and restores them on resume, so a
    resumed run draws the same augmentations and dropout masks as an uninterrupted one."""

    def state_dict(self) -> dict[str, Any]:
        return {"torch": torch.get_rng_state(), "python": random.getstate()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        random.setstate(state_dict["python"])
