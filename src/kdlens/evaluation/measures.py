"""Per-model measures beyond the classification report: calibration, teacher–student explanation
agreement, penultimate-feature embeddings and class-correlation matrices. Every metric comes from
:mod:`kdlens.metrics`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from kdlens.aggregate import aggregate
from kdlens.metrics import expected_calibration_error, explanation_agreement, predictive_entropy, reliability_diagram

ECE_BINS = (10, 15, 20)
AGREEMENT_METRICS = {"cosine": "cosine", "spearman": "Spearman", "ssim": "SSIM", "topk_iou": "top-10 % IoU"}
"""Teacher–student similarity of two maps (:func:`kdlens.metrics.explanation_agreement`) → display name."""


@dataclass(frozen=True)
class Diagram:
    """A reliability diagram as arrays: bin ``edges`` (n + 1), per bin the mean ``confidence``,
    ``accuracy`` and ``count`` of the top-1 predictions in it."""

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray


@dataclass(frozen=True)
class Calibration:
    """ECE per number of equal-width bins (:data:`ECE_BINS`), mean predictive entropy (nats) and
    the 10-bin reliability diagram."""

    ece: dict[int, float]
    entropy: float
    diagram: Diagram


def calibration(logits: Tensor, labels: Tensor) -> Calibration:
    diagram = reliability_diagram(logits, labels, 10)
    return Calibration(
        ece={bins: expected_calibration_error(logits, labels, bins) for bins in ECE_BINS},
        entropy=predictive_entropy(logits).mean().item(),
        diagram=Diagram(**{k: getattr(diagram, k).cpu().numpy() for k in ("edges", "confidence", "accuracy", "count")}),
    )


def nanmean(values: Tensor | list[float]) -> float:
    """Mean over the values that are not NaN (NaN if there are none), as a float."""
    values = values.double().flatten().tolist() if isinstance(values, Tensor) else values
    return aggregate(values).mean


def agreement_scores(teacher_maps: Tensor, student_maps: Tensor) -> dict[str, float]:
    """Mean over samples of each teacher–student similarity of the maps (keys of :data:`AGREEMENT_METRICS`)."""
    return {name: nanmean(values) for name, values in explanation_agreement(teacher_maps, student_maps).items()}


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
