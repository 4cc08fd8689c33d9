"""Frozen teacher outputs (REFERENCE §1): the teacher's logits and explanation maps computed once
on un-augmented training images, cached on disk, and attached to the training samples so that each
map gets the same crop/flip as its image. Training then needs no teacher pass at all."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from kdlens.data.common import DictDataset
from kdlens.explain import explain_dataset
from kdlens.io import atomic_write

TEACHER_LOGITS, TEACHER_MAP = "teacher_logits", "teacher_map"


@dataclass(frozen=True)
class FrozenTeacherSpec:
    """Which explanation of the teacher (of its own top-1 class) a term wants frozen."""

    method: str
    layer: str | None


def cache_dir() -> Path:
    return Path(os.environ.get("KDLENS_CACHE", Path.home() / ".cache" / "kdlens")) / "teacher-outputs"


def cache_key(checkpoint: str | Path, data_identity: dict, spec: FrozenTeacherSpec) -> str:
    """Changes when the teacher's weights, the data or the explanation change."""
    digest = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()
    identity = json.dumps({"teacher": digest, "data": data_identity, "method": spec.method, "layer": spec.layer}, sort_keys=True)
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


@torch.no_grad()
def _teacher_logits(teacher: nn.Module, dataset: DictDataset, batch_size: int) -> Tensor:
    logits = torch.empty(0)
    for batch in DataLoader(dataset, batch_size=batch_size):
        out = teacher(batch["image"]).float()
        if logits.numel() == 0:
            logits = torch.empty(len(dataset), out.shape[1])
        logits[batch["index"]] = out
    return logits


def frozen_teacher_outputs(
    teacher: nn.Module, train: DictDataset, checkpoint: str | Path, data_identity: dict, spec: FrozenTeacherSpec, batch_size: int = 256
) -> dict[str, Tensor]:
    """``{teacher_logits: (N, K), teacher_map: (N, 1, H, W)}`` for the training split, from the
    cache when the same teacher, data and explanation were computed before."""
    path = cache_dir() / f"{cache_key(checkpoint, data_identity, spec)}.pt"
    try:
        cached = torch.load(path, weights_only=True)
        if len(cached[TEACHER_LOGITS]) == len(cached[TEACHER_MAP]) == len(train):
            return cached
    except (OSError, RuntimeError, KeyError, EOFError):
        pass  # absent or unreadable: compute it again
    images = train.unaugmented()
    teacher.eval()
    outputs = {
        TEACHER_LOGITS: _teacher_logits(teacher, images, batch_size),
        TEACHER_MAP: explain_dataset(teacher, images, spec.method, target="pred", layer=spec.layer, batch_size=batch_size),
    }
    atomic_write(path, lambda f: torch.save(outputs, f))
    return outputs


def attach_frozen_teacher(train: DictDataset, outputs: dict[str, Tensor]) -> DictDataset:
    return train.attach(spatial={TEACHER_MAP: outputs[TEACHER_MAP]}, plain={TEACHER_LOGITS: outputs[TEACHER_LOGITS]})
