"""Metric presets, and evaluating several explanation metrics on one shared context."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

# Importing the metric modules registers their classes.
from kdlens.metrics import (  # noqa: F401
    complexity,
    faithfulness,
    localisation,
    randomisation,
    road,
    robustness,
)
from kdlens.metrics.base import (
    EXPLANATION_METRICS,
    EvaluationContext,
    ExplainFn,
    ExplanationMetric,
    eval_mode,
)
from kdlens.registry import unknown_name_message

METRIC_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The thesis protocol (224 px ImageNet-S50): 48 feature groups for both faithfulness metrics.
    "thesis": {
        "pointing_game": {},
        "attribution_localisation": {},
        "relevance_rank_accuracy": {},
        "top_k_intersection": {"k": 1000},
        "monotonicity_correlation": {"nr_samples": 10, "features_in_step": 3136},
        "faithfulness_estimate": {"features_in_step": 3136},
    },
    "localisation": {
        name: {}
        for name in (
            "pointing_game",
            "energy_pointing_game",
            "attribution_localisation",
            "relevance_mass_accuracy",
            "relevance_rank_accuracy",
            "top_k_intersection",
            "auc",
            "segmentation_accuracy",
            "segmentation_miou",
            "segmentation_ap",
            "segmentation_f1",
        )
    },
    "complexity": {"sparseness": {}, "complexity": {}, "effective_complexity": {}},
    # The RISE / Chefer et al. curves, cheap enough for every evaluation.
    "perturbation_curves": {
        name: {}
        for name in (
            "deletion",
            "insertion",
            "positive_perturbation",
            "negative_perturbation",
            "decile_prediction_drop",
        )
    },
}
"""``{preset: {metric name: constructor kwargs}}``."""


def create_metrics(
    names: str | Sequence[str], overrides: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, ExplanationMetric]:
    """Metrics of a preset (a string in :data:`METRIC_PRESETS`) or of a list of registered names
    (defaults), with ``overrides`` ``{metric name: kwargs}`` applied on top."""
    if isinstance(names, str):
        if names not in METRIC_PRESETS:
            raise KeyError(unknown_name_message("metric preset", names, sorted(METRIC_PRESETS)))
        kwargs = {name: dict(params) for name, params in METRIC_PRESETS[names].items()}
    else:
        kwargs = {name: {} for name in names}
    for name, params in (overrides or {}).items():
        if name not in kwargs:
            raise KeyError(f"override for '{name}', which is not among the metrics: {', '.join(kwargs)}")
        kwargs[name].update(params)
    return {name: EXPLANATION_METRICS[name](**params) for name, params in kwargs.items()}


def forward_only_metric_names() -> list[str]:
    """The registered metrics that read the model through forward passes only (the perturbation
    sweeps): those whose scores ``evaluate_metrics``'s ``precision`` can change."""
    return [name for name in EXPLANATION_METRICS.names() if EXPLANATION_METRICS[name].requires == frozenset({"model"})]


def evaluate_metrics(
    metrics: Mapping[str, ExplanationMetric],
    model: nn.Module | None,
    x: Tensor,
    y: Tensor | None,
    a: Tensor | None,
    s: Tensor | None = None,
    explain_fn: ExplainFn | None = None,
    *,
    max_batch: int = 256,
    memory_format: torch.memory_format | None = None,
    precision: torch.dtype | None = None,
) -> dict[str, Tensor]:
    """``{name: (B,) scores}``, every metric on one context: the clean forward pass and any perturbed
    images two metrics have in common are computed once. ``precision``: see :class:`EvaluationContext`."""
    context = EvaluationContext(model, x, y, a, s, explain_fn, max_batch=max_batch, memory_format=memory_format,
                                precision=precision)
    with eval_mode(model):
        return {name: metric.evaluate(context) for name, metric in metrics.items()}
