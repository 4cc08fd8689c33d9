"""Checkpoints, test samples and model outputs, each loaded or computed once per evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from kdlens.data import DataBundle, DataConfigBase, build_data
from kdlens.device import resolve_device
from kdlens.models import get_model_spec, resolve_module
from kdlens.runs.checkpoints import CheckpointInfo, load_model


@dataclass
class TestSamples:
    """The first ``n`` test images of a dataset (un-augmented), with masks where it has them."""

    images: Tensor
    labels: Tensor
    masks: Tensor | None
    bundle: DataBundle


@dataclass
class ModelOutputs:
    logits: Tensor
    features: Tensor
    """Penultimate features: the input of the model's classifier, spatially averaged if 4-D."""


def without_augmentation(data: DataConfigBase) -> DataConfigBase:
    return data.model_copy(update={"augment": False})


def data_key(data: DataConfigBase) -> str:
    """The identity of a dataset as evaluated (without augmentation)."""
    return without_augmentation(data).model_dump_json()


class ModelStore:
    """Loads each checkpoint (onto ``device``: the :func:`~kdlens.device.resolve_device` policy)
    and each dataset once, and computes each model's outputs on each dataset's first
    ``data_limit`` test images once."""

    def __init__(self, data_limit: int, device: str | torch.device | None = None) -> None:
        self.data_limit = data_limit
        self.device = resolve_device(device)
        self._models: dict[Path, tuple[nn.Module, CheckpointInfo]] = {}
        self._data: dict[str, TestSamples] = {}
        self._outputs: dict[tuple[Path, str], ModelOutputs] = {}

    def model(self, checkpoint: Path) -> tuple[nn.Module, CheckpointInfo]:
        key = Path(checkpoint).resolve()
        if key not in self._models:
            model, info = load_model(key)
            self._models[key] = (model.to(self.device).eval(), info)
        return self._models[key]

    def data(self, data: DataConfigBase) -> TestSamples:
        key = data_key(data)
        if key not in self._data:
            bundle = build_data(without_augmentation(data))
            samples = [bundle.test[i] for i in range(min(self.data_limit, len(bundle.test)))]
            masks = torch.stack([s["mask"] for s in samples]) > 0.5 if samples and "mask" in samples[0] else None
            self._data[key] = TestSamples(
                torch.stack([s["image"] for s in samples]), torch.stack([s["label"] for s in samples]), masks, bundle
            )
        return self._data[key]

    def outputs(self, checkpoint: Path, data: DataConfigBase) -> ModelOutputs:
        samples = self.data(data)
        key = (Path(checkpoint).resolve(), data_key(data))
        if key not in self._outputs:
            model, info = self.model(checkpoint)
            self._outputs[key] = predict_with_features(model, info.model, samples.images, self.device)
        return self._outputs[key]


@torch.no_grad()
def predict_with_features(model: nn.Module, name: str, images: Tensor, device: torch.device, batch_size: int = 256) -> ModelOutputs:
    """Logits and the classifier's input (a forward pre-hook on ``get_model_spec(name).classifier``)."""
    classifier = resolve_module(model, get_model_spec(name).classifier)
    captured: list[Tensor] = []

    def keep_input(module: nn.Module, inputs: tuple) -> None:
        features = inputs[0]
        captured.append((features.flatten(2).mean(2) if features.dim() > 2 else features).float().cpu())

    handle = classifier.register_forward_pre_hook(keep_input)
    try:
        logits = [model(images[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(images), batch_size)]
    finally:
        handle.remove()
    return ModelOutputs(torch.cat(logits), torch.cat(captured))
