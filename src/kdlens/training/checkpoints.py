"""Checkpoint files: written atomically, read with ``weights_only=True`` (no pickled code runs)."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from kdlens.io import atomic_write
from kdlens.models import create_model

CHECKPOINT_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says why and what to do."""


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist: check the path (runs write checkpoints/best.ckpt and last.ckpt)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"checkpoint '{path}' was refused: it holds pickled Python objects beyond tensors and plain "
            f"containers, which could run code when loaded. kdlens never loads those. Re-save the weights "
            f"as a state_dict of tensors. ({str(err).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(
            f"checkpoint '{path}' is truncated or corrupt ({type(err).__name__}: {str(err).splitlines()[0]}). "
            "Use another checkpoint of the run (last.ckpt / best.ckpt) or re-train."
        ) from None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O with atomic writes and weights-only reads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint_file(path, map_location or "cpu")


def load_model(path: str | Path, map_location: Any = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The trained model of a kdlens checkpoint file (in eval mode) and the facts stored beside it."""
    return model_from_checkpoint(load_checkpoint_file(path, map_location), path)


def model_from_checkpoint(checkpoint: dict[str, Any], source: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the trained model from a loaded checkpoint. The facts returned: ``model`` (name),
    ``num_classes``, ``in_channels``, ``image_size``, ``class_names``, ``mean``, ``std``, ``config``."""
    info = checkpoint.get("kdlens")
    if not isinstance(info, dict) or info.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"'{source}' is not a kdlens checkpoint (no 'kdlens' section of format {CHECKPOINT_FORMAT})")
    model = create_model(info["model"], info["num_classes"], info["in_channels"])
    prefix = "model."
    model.load_state_dict({k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)})
    return model.eval(), info
