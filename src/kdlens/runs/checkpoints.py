"""kdlens checkpoint files: written atomically, read with ``weights_only=True`` (no pickled code
runs), rebuilt into models without Lightning. Training, evaluation, export, import, the report and
the CLI all read and write checkpoints through this module."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlens.io import atomic_write

CHECKPOINT_FORMAT = 1
MODEL_PREFIX = "model."
"""Prefix of the trained model's tensors in a checkpoint's ``state_dict`` (Lightning's attribute name)."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says why and what to do."""


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu") -> Any:
    """The object stored in ``path``, refusing anything beyond tensors and plain containers."""
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


def checkpoint_info(
    model: str,
    *,
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int] | list[int],
    class_names: list[str],
    mean: tuple[float, ...] | list[float],
    std: tuple[float, ...] | list[float],
    config: dict[str, Any] | None = None,
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``kdlens`` section of a checkpoint: what it takes to rebuild the model and feed it.
    ``source`` says where imported or pretrained weights came from (file, format, weights name)."""
    info = {
        "format": CHECKPOINT_FORMAT,
        "model": model,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "image_size": list(image_size),
        "class_names": list(class_names),
        "mean": list(mean),
        "std": list(std),
        "config": config,
    }
    if source is not None:
        info["source"] = source
    return info


def pretrained_source(model: nn.Module, weights: str) -> dict[str, Any]:
    """The ``source`` of a model built with published ``weights``: their name, and the
    normalisation, class names and sizes they were published with (``model.pretrained_cfg``)."""
    published = {k: v for k, v in getattr(model, "pretrained_cfg", {}).items() if k != "weights"}
    return {"weights": weights, **published}


def save_model_checkpoint(path: str | Path, model: nn.Module, info: dict[str, Any]) -> Path:
    """A kdlens checkpoint holding only ``model``'s weights (no optimiser, no training state), as
    ``kdlens import`` writes it; it loads like any run's best.ckpt."""
    state = {f"{MODEL_PREFIX}{k}": v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save({"kdlens": info, "state_dict": state}, path)
    return Path(path)


def load_model(path: str | Path, map_location: Any = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The model of a kdlens checkpoint file (in eval mode) and the facts stored beside it:
    ``model`` (name), ``num_classes``, ``in_channels``, ``image_size``, ``class_names``, ``mean``,
    ``std``, ``config`` and, for imported weights, ``source``."""
    return model_from_checkpoint(load_checkpoint_file(path, map_location), path)


def is_kdlens_checkpoint(checkpoint: Any) -> bool:
    """Whether a loaded file is a kdlens checkpoint (of any format version)."""
    return isinstance(checkpoint, dict) and isinstance(checkpoint.get("kdlens"), dict)


def model_from_checkpoint(checkpoint: Any, source: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the trained model from a loaded checkpoint (see :func:`load_model`)."""
    from kdlens.models import create_model

    info = checkpoint["kdlens"] if is_kdlens_checkpoint(checkpoint) else None
    if info is None or info.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"'{source}' is not a kdlens checkpoint (no 'kdlens' section of format {CHECKPOINT_FORMAT}): "
            "convert a checkpoint of another codebase with `kdlens import`"
        )
    model = create_model(info["model"], info["num_classes"], info["in_channels"])
    state = {k[len(MODEL_PREFIX):]: v for k, v in checkpoint.get("state_dict", {}).items() if k.startswith(MODEL_PREFIX)}
    load_state_dict_strictly(model, state, info["model"], source)
    return model.eval(), info


def load_state_dict_strictly(model: nn.Module, state: dict[str, Any], architecture: str, source: str | Path) -> None:
    """``model.load_state_dict(state)``, or one error naming the first missing and unexpected keys
    and shape mismatches, so that a checkpoint of another architecture is obvious."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        parts = [
            f"{label} ({len(keys)}): {', '.join(keys[:5])}{' …' if len(keys) > 5 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatches (file vs model)", mismatched))
            if keys
        ]
        raise CheckpointError(
            f"the tensors in '{source}' do not fit architecture '{architecture}': {'; '.join(parts)}. "
            "Name the architecture the weights were trained with (and the number of classes they predict)."
        )
    model.load_state_dict(state)
