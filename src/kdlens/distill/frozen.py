"""Frozen teacher outputs (REFERENCE §1): the teacher's logits and explanation maps computed once
on un-augmented training images, kept in the explanation cache (keyed by the teacher checkpoint's
content, the data and the explanation), and attached to the training samples so that each map
gets the same crop/flip as its image. Training then needs no teacher pass at all.

The teacher sees what evaluation shows it: the eval-transformed image (for native-size datasets,
Resize + CenterCrop). Maps are stored in that fixed eval frame; for each training sample the
dataset puts its map back into the image's native frame (inverting the eval resize and centre
crop) before the training transform's random crop/flip, so a crop's teacher map covers the same
pixels as the crop. Native pixels the eval crop left out get 0 (no teacher evidence); see
:meth:`kdlens.data.common.DictDataset.attach` and :class:`kdlens.data.common.EvalGeometry`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from kdlens.data import DataConfigBase
from kdlens.data.common import DictDataset
from kdlens.engine import inference_forward
from kdlens.explain import explain_dataset
from kdlens.explain.cache import ExplanationCache, data_fingerprint, file_fingerprint

TEACHER_LOGITS, TEACHER_MAP = "teacher_logits", "teacher_map"


@dataclass(frozen=True)
class FrozenTeacherSpec:
    """Which explanation of the teacher (of its own top-1 class) a term wants frozen; ``method=None``:
    only the teacher's logits (offline KD)."""

    method: str | None
    layer: str | None


@torch.no_grad()
def _teacher_logits(teacher: nn.Module, dataset: DictDataset, batch_size: int) -> Tensor:
    forward = inference_forward(teacher)
    rows = [(batch["index"], forward(batch["image"]).float()) for batch in DataLoader(dataset, batch_size=batch_size)]
    logits = torch.empty(len(dataset), rows[0][1].shape[1])
    for index, out in rows:
        logits[index] = out
    return logits


def frozen_teacher_outputs(
    teacher: nn.Module,
    train: DictDataset,
    checkpoint: str | Path,
    data: DataConfigBase,
    spec: FrozenTeacherSpec,
    batch_size: int = 256,
) -> dict[str, Tensor]:
    """``{teacher_logits: (N, K), teacher_map: (N, 1, H, W)}`` for the training split (no map when
    ``spec.method`` is None), computed on its un-augmented images or read from the cache. Maps are
    stored in float16, logits (the KD targets) in float32."""
    images = train.unaugmented()
    teacher.eval()
    key = {"model": file_fingerprint(checkpoint), "data": data_fingerprint(data), "split": "train"}
    logits = ExplanationCache(dtype=torch.float32).get_or_compute(
        {**key, "method": "logits"}, lambda: _teacher_logits(teacher, images, batch_size)
    )
    if spec.method is None:
        return {TEACHER_LOGITS: logits}
    method = spec.method
    maps = ExplanationCache().get_or_compute(
        {**key, "method": method, "options": {"layer": spec.layer, "target": "pred"}},
        lambda: explain_dataset(teacher, images, method, target="pred", layer=spec.layer, batch_size=batch_size),
    )
    return {TEACHER_LOGITS: logits, TEACHER_MAP: maps}


def attach_frozen_teacher(train: DictDataset, outputs: dict[str, Tensor]) -> DictDataset:
    """``train`` whose samples carry their frozen teacher logits and (eval-frame) maps, the maps
    moved with the image's own crop/flip. Raises ``ValueError`` if the dataset's eval transform has
    an op whose geometry cannot be inverted."""
    spatial = {TEACHER_MAP: outputs[TEACHER_MAP]} if TEACHER_MAP in outputs else {}
    return train.attach(spatial=spatial, plain={TEACHER_LOGITS: outputs[TEACHER_LOGITS]})
