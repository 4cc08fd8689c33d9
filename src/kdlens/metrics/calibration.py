"""Calibration of a classifier's confidence: ECE, reliability-diagram data and predictive entropy.

All functions take logits ``(N, K)`` (and labels ``(N,)``) of a whole split.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def expected_calibration_error(logits: Tensor, labels: Tensor, n_bins: int = 10) -> float:
    """Top-label ECE with ``n_bins`` equal-width confidence bins (torchmetrics'
    ``MulticlassCalibrationError``, L1 norm)."""
    # Probabilities, not logits: torchmetrics only applies softmax when values leave [0, 1].
    probs = logits.float().softmax(1)
    # torchmetrics imports torchvision, scipy and matplotlib: only here, where it is used.
    from torchmetrics.functional.classification import multiclass_calibration_error

    return multiclass_calibration_error(probs, labels, num_classes=logits.shape[1], n_bins=n_bins, norm="l1").item()


@dataclass(frozen=True)
class ReliabilityDiagram:
    """Per confidence bin ``[i/n, (i+1)/n)`` (the last one closed): mean confidence and accuracy of the
    top-1 predictions that fall in it (0 for an empty bin) and their count."""

    edges: Tensor
    confidence: Tensor
    accuracy: Tensor
    count: Tensor

    def expected_calibration_error(self) -> float:
        """``Σ count/N · |accuracy − confidence|``; torchmetrics' ECE gives confidence exactly 1 a bin
        of its own, which changes nothing unless such a confidence is also misclassified."""
        weights = self.count / self.count.sum()
        return (weights * (self.accuracy - self.confidence).abs()).sum().item()


def reliability_diagram(logits: Tensor, labels: Tensor, n_bins: int = 10) -> ReliabilityDiagram:
    confidence, predicted = logits.float().softmax(1).max(1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, n_bins + 1, device=logits.device)
    # The same bucketing as torchmetrics, with its extra bin for confidence == 1 folded into the last.
    bins = (torch.bucketize(confidence, edges, right=True) - 1).clamp(max=n_bins - 1)
    count = torch.zeros(n_bins, device=logits.device).index_add_(0, bins, torch.ones_like(confidence))

    def bin_mean(values: Tensor) -> Tensor:
        return torch.zeros(n_bins, device=logits.device).index_add_(0, bins, values) / count.clamp(min=1)

    return ReliabilityDiagram(edges=edges, confidence=bin_mean(confidence), accuracy=bin_mean(correct), count=count)


def predictive_entropy(logits: Tensor) -> Tensor:
    """Entropy (nats) of each softmax prediction, ``(N,)``."""
    log_probs = logits.double().log_softmax(1)
    return -(log_probs.exp() * log_probs).sum(1)


def calibration_report(logits: Tensor, labels: Tensor) -> dict:
    """ECE with 10 and 20 bins, mean predictive entropy and the 10-bin reliability diagram."""
    diagram = reliability_diagram(logits, labels, 10)
    return {
        "ece_10": expected_calibration_error(logits, labels, 10),
        "ece_20": expected_calibration_error(logits, labels, 20),
        "mean_predictive_entropy": predictive_entropy(logits).mean().item(),
        "reliability": {k: getattr(diagram, k).tolist() for k in ("edges", "confidence", "accuracy", "count")},
    }
