"""What the report computes from checkpoints: predictions and penultimate features on a test split,
calibration, Grad-CAM localisation and teacher–student explanation agreement, t-SNE and
class-correlation matrices. Every metric comes from :mod:`kdlens.metrics`."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdlens.config import validate_data_config
from kdlens.data import DataBundle, build_data
from kdlens.explain import explain
from kdlens.metrics import (
    AttributionLocalisation,
    EnergyPointingGame,
    PointingGame,
    expected_calibration_error,
    explanation_agreement,
    predictive_entropy,
    reliability_diagram,
)
from kdlens.models import get_model_spec, resolve_module
from kdlens.runs.checkpoints import load_model

ECE_BINS = (10, 15, 20)
LOCALISATION_METRICS = {
    "pointing game": PointingGame,
    "energy pointing game": EnergyPointingGame,
    "attribution localisation": AttributionLocalisation,
}
AGREEMENT_METRICS = ("cosine", "spearman", "ssim", "topk_iou")


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


class Workspace:
    """Loads each checkpoint and dataset once, and each model's outputs on each dataset once."""

    def __init__(self, data_limit: int, device: torch.device | str = "cpu") -> None:
        self.data_limit = data_limit
        self.device = torch.device(device)
        self._models: dict[Path, tuple[nn.Module, dict]] = {}
        self._data: dict[str, TestSamples] = {}
        self._outputs: dict[tuple[Path, str], ModelOutputs] = {}

    def model(self, checkpoint: Path) -> tuple[nn.Module, dict]:
        key = Path(checkpoint).resolve()
        if key not in self._models:
            model, info = load_model(key)
            self._models[key] = (model.to(self.device).eval(), info)
        return self._models[key]

    def data(self, data_config: dict[str, Any]) -> tuple[str, TestSamples]:
        raw = {**data_config, "augment": False}
        key = json.dumps(raw, sort_keys=True, default=str)
        if key not in self._data:
            bundle = build_data(validate_data_config(raw))
            samples = [bundle.test[i] for i in range(min(self.data_limit, len(bundle.test)))]
            masks = torch.stack([s["mask"] for s in samples]) > 0.5 if samples and "mask" in samples[0] else None
            self._data[key] = TestSamples(
                torch.stack([s["image"] for s in samples]), torch.stack([s["label"] for s in samples]), masks, bundle
            )
        return key, self._data[key]

    def outputs(self, checkpoint: Path, data_config: dict[str, Any]) -> ModelOutputs:
        data_key, samples = self.data(data_config)
        key = (Path(checkpoint).resolve(), data_key)
        if key not in self._outputs:
            model, info = self.model(checkpoint)
            self._outputs[key] = predict_with_features(model, info["model"], samples.images, self.device)
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


def calibration(logits: Tensor, labels: Tensor) -> dict[str, Any]:
    """ECE with 10, 15 and 20 bins, mean predictive entropy, the 10-bin reliability diagram."""
    diagram = reliability_diagram(logits, labels, 10)
    return {
        **{f"ece_{bins}": expected_calibration_error(logits, labels, bins) for bins in ECE_BINS},
        "entropy": predictive_entropy(logits).mean().item(),
        "diagram": {k: getattr(diagram, k).cpu().numpy() for k in ("edges", "confidence", "accuracy", "count")},
    }


def gradcam_maps(model: nn.Module, images: Tensor, targets: Tensor, device: torch.device) -> Tensor:
    """Grad-CAM maps (N, 1, H, W) of ``targets`` on ``images``."""
    return explain(model, images.to(device), targets.to(device), "gradcam").detach().cpu()


def localisation_scores(model: nn.Module, images: Tensor, targets: Tensor, maps: Tensor, masks: Tensor) -> dict[str, float]:
    """Mean (over samples where defined) of each localisation metric."""
    scores = {}
    for name, metric in LOCALISATION_METRICS.items():
        values = metric()(model, images, targets, maps, masks.bool())
        scores[name] = nanmean(values)
    return scores


def agreement_scores(teacher_maps: Tensor, student_maps: Tensor) -> dict[str, float]:
    return {name: nanmean(values) for name, values in explanation_agreement(teacher_maps, student_maps).items()}


def nanmean(values: Tensor) -> float:
    """Mean over the values that are not NaN (NaN if there are none), as a float."""
    values = values.double()
    finite = values[~values.isnan()]
    return finite.mean().item() if len(finite) else math.nan


def tsne_embedding(features: Tensor, seed: int = 0) -> np.ndarray:
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    n = len(features)
    perplexity = float(min(30, max(2, (n - 1) // 3)))
    # One thread: on busy cores sklearn's OpenMP threads spin-wait and a 50-point t-SNE takes 15 s.
    with threadpool_limits(1):
        return TSNE(2, perplexity=perplexity, init="pca", random_state=seed, max_iter=300).fit_transform(features.numpy())


def silhouette(points: np.ndarray, labels: Tensor) -> float:
    from sklearn.metrics import silhouette_score
    from threadpoolctl import threadpool_limits

    labels = labels.numpy()
    if len(np.unique(labels)) < 2 or len(np.unique(labels)) >= len(labels):
        return math.nan
    with threadpool_limits(1):
        return float(silhouette_score(points, labels))


def class_correlation(logits: Tensor) -> np.ndarray:
    """Correlation (K, K) of the logit columns over the samples; 0 where a column is constant."""
    with np.errstate(invalid="ignore", divide="ignore"):
        matrix = np.corrcoef(logits.double().numpy().T)
    return np.nan_to_num(matrix)
