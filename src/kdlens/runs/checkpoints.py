"""kdlens checkpoint files: written atomically, read with ``weights_only=True`` (no pickled code
runs), rebuilt into models without Lightning. Training, evaluation, export, import, the report and
the CLI all read and write checkpoints through this module."""

from __future__ import annotations

import dataclasses
import pickle
import struct
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlens.errors import ConfigError, UserError
from kdlens.io import atomic_write
from kdlens.runs.layout import BEST, CHECKPOINTS_DIR, LAST

CHECKPOINT_FORMAT = 1
MODEL_PREFIX = "model."
"""Prefix of the trained model's tensors in a checkpoint's ``state_dict`` (Lightning's attribute name)."""
VAL_METRICS = "val_metrics"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used; the message says why and what to do."""


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu") -> Any:
    """The object stored in ``path``, refusing anything beyond tensors and plain containers."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"'{path}' is a folder, not a checkpoint file: give a checkpoint file (a run folder keeps "
            f"{CHECKPOINTS_DIR}/{BEST} and {CHECKPOINTS_DIR}/{LAST})"
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist: check the path (runs write {CHECKPOINTS_DIR}/{BEST} and {LAST})")
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"checkpoint '{path}' is empty (0 bytes): its copy or download did not finish, or the disk was full. "
            "Use another checkpoint of the run (last.ckpt / best.ckpt), fetch it again or re-train."
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except PermissionError as err:
        raise CheckpointError(f"checkpoint '{path}' cannot be read ({err.strerror}): check its permissions") from None
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):  # bytes that are no pickle at all
            raise CheckpointError(
                f"checkpoint '{path}' is truncated or corrupt, not a checkpoint file torch can read ({_reason(err)}). "
                "Use another checkpoint of the run (last.ckpt / best.ckpt) or re-train."
            ) from None
        raise CheckpointError(
            f"checkpoint '{path}' was refused: it holds pickled Python objects beyond tensors and plain "
            f"containers, which could run code when loaded. kdlens never loads those. Re-save the weights "
            f"as a state_dict of tensors. ({_reason(err)})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, IndexError, KeyError, TypeError,
            AttributeError, OverflowError, MemoryError, struct.error) as err:  # a damaged file makes torch.load raise nearly anything
        raise CheckpointError(
            f"checkpoint '{path}' is truncated or corrupt, not a checkpoint file torch can read ({type(err).__name__}: "
            f"{_reason(err)}). Use another checkpoint of the run (last.ckpt / best.ckpt) or re-train."
        ) from None


def _reason(err: BaseException) -> str:
    """The line of an error message that says what went wrong (torch's weights-only errors put
    it after a long preamble); ``no details`` for an empty message."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    specific = [line for line in lines if line.startswith("Unsupported") or "Unpickler error: Unsupported" in line]
    return (specific or lines or ["no details"])[0][:300]


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_sequence(value: Any) -> bool:
    return isinstance(value, (list, tuple))


_INFO_KEYS = ("model", "num_classes", "in_channels", "image_size", "class_names", "mean", "std")
"""The facts a checkpoint must record to be rebuilt and fed (``config`` and ``source`` are optional)."""


@dataclass(frozen=True)
class CheckpointInfo(Mapping):
    """The ``kdlens`` section of a checkpoint: what it takes to rebuild the model and feed it.
    Written by :meth:`to_dict` and read by :meth:`from_dict`, nowhere else. It also reads as the
    mapping it is stored as (``info["num_classes"]``), as :func:`load_model` has always returned."""

    model: str
    """The registered architecture."""
    num_classes: int
    in_channels: int
    image_size: list[int]
    class_names: list[str]
    mean: list[float]
    std: list[float]
    """The normalisation the model's inputs had in training: x = (pixel/255 − mean) / std."""
    config: dict[str, Any] | None = None
    """The experiment config it was trained with (``model_dump(mode="json")``), or for imported
    weights what is known of their data (``{"data": ...}``)."""
    source: dict[str, Any] | None = None
    """Where imported or pretrained weights came from (file, format, sha256 / weights name)."""
    format: int = CHECKPOINT_FORMAT

    def to_dict(self) -> dict[str, Any]:
        info = {
            "format": self.format,
            "model": self.model,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "image_size": list(self.image_size),
            "class_names": list(self.class_names),
            "mean": list(self.mean),
            "std": list(self.std),
            "config": self.config,
        }
        if self.source is not None:
            info["source"] = self.source
        return info

    @classmethod
    def from_dict(cls, info: Any, source: str | Path = "checkpoint") -> CheckpointInfo:
        """The section as stored; a :class:`CheckpointError` naming what is missing or of the
        wrong format."""
        if not isinstance(info, Mapping) or info.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"'{source}' is not a kdlens checkpoint (no 'kdlens' section of format {CHECKPOINT_FORMAT}): "
                "convert a checkpoint of another codebase with `kdlens import`"
            )
        missing = [key for key in _INFO_KEYS if key not in info]
        if missing:
            raise CheckpointError(
                f"'{source}' has a kdlens section without {', '.join(missing)}: it was not written by kdlens "
                "or was edited; re-create it with `kdlens import` or use another checkpoint of the run"
            )
        wrong = [
            key for key, ok in (
                ("model", isinstance(info["model"], str)),
                ("num_classes", _is_count(info["num_classes"])),
                ("in_channels", _is_count(info["in_channels"])),
                ("image_size", _is_sequence(info["image_size"])),
                ("class_names", _is_sequence(info["class_names"])),
                ("mean", _is_sequence(info["mean"])),
                ("std", _is_sequence(info["std"])),
            ) if not ok
        ]
        if wrong:
            raise CheckpointError(
                f"'{source}' has a kdlens section whose {', '.join(wrong)} "
                f"{'is' if len(wrong) == 1 else 'are'} not of the stored kind (a name, counts ≥ 1, lists): it was "
                "edited or damaged; use another checkpoint of the run or re-create it with `kdlens import`"
            )
        return cls(
            model=info["model"],
            num_classes=info["num_classes"],
            in_channels=info["in_channels"],
            image_size=list(info["image_size"]),
            class_names=list(info["class_names"]),
            mean=list(info["mean"]),
            std=list(info["std"]),
            config=info.get("config") if isinstance(info.get("config"), dict) else None,
            source=info.get("source") if isinstance(info.get("source"), dict) else None,
        )

    def replace(self, **changes: Any) -> CheckpointInfo:
        return dataclasses.replace(self, **changes)

    # Read-only mapping view of the stored section.
    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


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
) -> CheckpointInfo:
    """The ``kdlens`` section of a checkpoint: what it takes to rebuild the model and feed it.
    ``source`` says where imported or pretrained weights came from (file, format, weights name)."""
    return CheckpointInfo(
        model=model,
        num_classes=int(num_classes),
        in_channels=int(in_channels),
        image_size=list(image_size),
        class_names=list(class_names),
        mean=list(mean),
        std=list(std),
        config=config,
        source=source,
    )


class IncompatibleCheckpoint(CheckpointError, ConfigError):
    """A checkpoint whose model does not fit the data (or the architecture) it is used with."""


def check_fits(
    info: Any,
    data: Any,
    what: str,
    fix: str,
    *,
    architecture: str | None = None,
) -> None:
    """The one model/data compatibility check: the model that ``info`` describes (a
    :class:`CheckpointInfo` or any mapping or object with ``num_classes`` and optionally
    ``in_channels`` and ``model``) must predict ``data``'s classes from its channels (``data``: a
    DataBundle, DatasetInfo or mapping of the same facts), and be ``architecture`` when given.
    Raises :class:`IncompatibleCheckpoint` (a ConfigError and a CheckpointError) naming ``what``,
    every mismatch and ``fix``."""
    problems = []
    model = _fact(info, "model")
    if architecture is not None and model is not None and model != architecture:
        problems.append(f"it is architecture '{model}', not '{architecture}'")
    predicts, classes = _fact(info, "num_classes"), _fact(data, "num_classes")
    if predicts is not None and classes is not None and predicts != classes:
        problems.append(f"predicts {predicts} classes, the dataset has {classes}")
    takes, channels = _fact(info, "in_channels"), _fact(data, "in_channels")
    if takes is not None and channels is not None and takes != channels:
        problems.append(f"takes {takes}-channel images, the dataset has {channels}-channel ones")
    if problems:
        raise IncompatibleCheckpoint(f"{what} does not fit: {'; '.join(problems)}. {fix}")


def _fact(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)


def write_training_checkpoint(checkpoint: dict[str, Any], info: CheckpointInfo, val_metrics: dict[str, float]) -> None:
    """Add kdlens's entries to a training checkpoint (Lightning's dict, written by the trainer):
    the ``kdlens`` section and the validation metrics of the epoch it was written after."""
    checkpoint["kdlens"] = info.to_dict()
    checkpoint[VAL_METRICS] = dict(val_metrics)


def training_state(checkpoint: Any) -> tuple[int | None, dict[str, float]]:
    """(epochs completed, counting from 1; validation metrics) of a training checkpoint; None and
    {} where it does not record them (e.g. an imported checkpoint)."""
    if not isinstance(checkpoint, Mapping):
        return None, {}
    epoch = checkpoint.get("epoch")  # Lightning stores the 0-based epoch just finished
    metrics = checkpoint.get(VAL_METRICS)
    return (epoch + 1 if isinstance(epoch, int) else None), (dict(metrics) if isinstance(metrics, Mapping) else {})


def stored_config(checkpoint: Any) -> dict[str, Any] | None:
    """The config a checkpoint was trained with, read leniently (None when absent)."""
    section = checkpoint.get("kdlens") if isinstance(checkpoint, Mapping) else None
    config = section.get("config") if isinstance(section, Mapping) else None
    return config if isinstance(config, dict) else None


def pretrained_source(model: nn.Module, weights: str) -> dict[str, Any]:
    """The ``source`` of a model built with published ``weights``: their name, and the
    normalisation, class names and sizes they were published with (``model.pretrained_cfg``)."""
    published = {k: v for k, v in getattr(model, "pretrained_cfg", {}).items() if k != "weights"}
    return {"weights": weights, **published}


def save_model_checkpoint(path: str | Path, model: nn.Module, info: CheckpointInfo) -> Path:
    """A kdlens checkpoint holding only ``model``'s weights (no optimiser, no training state), as
    ``kdlens import`` writes it; it loads like any run's best.ckpt."""
    info = info if isinstance(info, CheckpointInfo) else CheckpointInfo.from_dict(info, path)
    state = {f"{MODEL_PREFIX}{k}": v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save({"kdlens": info.to_dict(), "state_dict": state}, path)
    return Path(path)


def load_model(path: str | Path, map_location: Any = "cpu") -> tuple[nn.Module, CheckpointInfo]:
    """The model of a kdlens checkpoint file (in eval mode) and the facts stored beside it (a
    :class:`CheckpointInfo`, which also reads as a mapping): ``model`` (name), ``num_classes``,
    ``in_channels``, ``image_size``, ``class_names``, ``mean``, ``std``, ``config`` and, for
    imported weights, ``source``."""
    return model_from_checkpoint(load_checkpoint_file(path, map_location), path)


def is_kdlens_checkpoint(checkpoint: Any) -> bool:
    """Whether a loaded file is a kdlens checkpoint (of any format version)."""
    return isinstance(checkpoint, dict) and isinstance(checkpoint.get("kdlens"), dict)


def read_checkpoint_info(checkpoint: Any, source: str | Path) -> CheckpointInfo:
    """The ``kdlens`` section of a loaded checkpoint (a CheckpointError when there is none)."""
    return CheckpointInfo.from_dict(checkpoint.get("kdlens") if isinstance(checkpoint, dict) else None, source)


def model_from_checkpoint(checkpoint: Any, source: str | Path) -> tuple[nn.Module, CheckpointInfo]:
    """Rebuild the trained model from a loaded checkpoint (see :func:`load_model`)."""
    from kdlens.models import create_model

    info = read_checkpoint_info(checkpoint, source)
    state_dict = checkpoint.get("state_dict")
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"'{source}' holds no weights (no 'state_dict' of tensors): use another checkpoint of the run")
    try:
        model = create_model(info.model, info.num_classes, info.in_channels)
    except (KeyError, ValueError, TypeError, RuntimeError, MemoryError, OverflowError) as err:
        raise CheckpointError(
            f"'{source}' records a model kdlens cannot build ({info.model}, {info.num_classes} classes, "
            f"{info.in_channels} channels: {str(err).strip(chr(39))}): it was edited or written by another kdlens "
            "version; use another checkpoint of the run, or one written by this kdlens"
        ) from None
    state = {k[len(MODEL_PREFIX):]: v for k, v in state_dict.items() if isinstance(k, str) and k.startswith(MODEL_PREFIX)}
    load_state_dict_strictly(
        model, state, info.model, source,
        fix=f"The checkpoint records architecture '{info.model}' with {info.num_classes} classes, which its weights are "
        "not: it was edited or damaged. Use another checkpoint of the run, or re-create it from the weights with "
        "`kdlens import --model <the architecture they were trained with>`.",
    )
    return model.eval(), info


_NAME_THE_ARCHITECTURE = "Name the architecture the weights were trained with (and the number of classes they predict)."


def load_state_dict_strictly(
    model: nn.Module, state: dict[str, Any], architecture: str, source: str | Path, fix: str = _NAME_THE_ARCHITECTURE
) -> None:
    """``model.load_state_dict(state)``, or one error naming the first missing and unexpected keys
    and shape mismatches, so that a checkpoint of another architecture is obvious."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" if isinstance(state[k], torch.Tensor) else f"{k} is a {type(state[k]).__name__}, not a tensor"
        for k, v in expected.items()
        if k in state and (not isinstance(state[k], torch.Tensor) or state[k].shape != v.shape)
    ]
    if missing or unexpected or mismatched:
        parts = [
            f"{label} ({len(keys)}): {', '.join(keys[:5])}{' …' if len(keys) > 5 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatches (file vs model)", mismatched))
            if keys
        ]
        raise CheckpointError(
            f"the tensors in '{source}' do not fit architecture '{architecture}': {'; '.join(parts)}. {fix}"
        )
    model.load_state_dict(state)
