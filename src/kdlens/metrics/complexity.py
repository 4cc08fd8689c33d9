"""Complexity: how concentrated is the attribution? These read ``a`` only (``requires`` is empty)."""

from __future__ import annotations

import torch
from torch import Tensor

from kdlens.metrics.base import (
    EXPLANATION_METRICS,
    EvaluationContext,
    ExplanationMetric,
)
from kdlens.metrics.functional import flatten


class ComplexityMetric(ExplanationMetric):
    requires = frozenset()

    abs: bool = True
    normalise: bool = True


@EXPLANATION_METRICS.register("sparseness")
class Sparseness(ComplexityMetric):
    """Chalasani et al. 2020: the Gini index of ``|a| + 1e-7`` sorted ascending,
    ``Σ_k (2k − N − 1) a_(k) / (N Σ a)``. Higher is sparser.

    The 1e-7 is added after max-normalisation; per sample (kdlens) and over the batch (Quantus) then
    differ slightly for samples whose maximum is far below the batch's.
    """

    def compute(self, context: EvaluationContext) -> Tensor:
        a = flatten(self.attributions(context)).double() + 1e-7
        n = a.shape[1]
        weights = 2 * torch.arange(1, n + 1, device=a.device, dtype=torch.float64) - n - 1
        return (weights * a.sort(dim=1).values).sum(1) / (n * a.sum(1))


@EXPLANATION_METRICS.register("complexity")
class Complexity(ComplexityMetric):
    """Bhatt et al. 2020: the entropy of ``|a| / Σ|a|`` (with Quantus's 1e-12 inside the log). Lower
    is simpler."""

    higher_is_better = False

    def compute(self, context: EvaluationContext) -> Tensor:
        a = flatten(self.attributions(context)).double()
        p = a / a.abs().sum(1, keepdim=True)
        return -(p * (p + 1e-12).log()).sum(1)


@EXPLANATION_METRICS.register("effective_complexity")
class EffectiveComplexity(ComplexityMetric):
    """Nguyen & Martínez 2020: the number of features with ``|a| > eps`` after max-normalisation
    (per sample; Quantus normalises over the batch, which makes a sample's count depend on its
    batch-mates: ``quantus_compat=True``). Lower is simpler."""

    higher_is_better = False

    eps: float = 1e-5

    def compute(self, context: EvaluationContext) -> Tensor:
        return (flatten(self.attributions(context)) > self.eps).sum(1).double()
