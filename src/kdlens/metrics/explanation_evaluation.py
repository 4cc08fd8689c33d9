"""Models × explainers × explanation metrics on a split: per-sample scores and their aggregate."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from kdlens.explain import explain
from kdlens.metrics.base import ExplanationMetric
from kdlens.metrics.suite import evaluate_metrics

Target = Literal["label", "pred", "teacher"]

THESIS_IMAGE = (3, 224, 224)
"""The thesis suite's constants are for this input: 48 feature groups, top-k of 1000 pixels."""


def thesis_overrides(channels: int, height: int, width: int) -> dict[str, dict[str, int]]:
    """The thesis preset scaled to another input size: the same 48 feature groups (so groups of
    C·H·W/48 features) and the same fraction of pixels for top-k (1000 of 224², ~2%)."""
    c, h, w = THESIS_IMAGE
    groups = c * h * w // 3136
    features_in_step = max(1, channels * height * width // groups)
    k = max(1, round(1000 * height * width / (h * w)))
    return {
        "monotonicity_correlation": {"features_in_step": features_in_step},
        "faithfulness_estimate": {"features_in_step": features_in_step},
        "top_k_intersection": {"k": k},
    }


def explanation_targets(target: Target, labels: Tensor, model: nn.Module, teacher: nn.Module | None, x: Tensor) -> Tensor:
    """The class explained per sample: the true label, the model's own top-1, or the teacher's."""
    if target == "label":
        if (labels < 0).any():
            raise ValueError("this split has unlabelled samples: explain --target pred or teacher")
        return labels
    explained_by = teacher if target == "teacher" else model
    if explained_by is None:
        raise ValueError("--target teacher needs --teacher")
    with torch.no_grad():
        return explained_by(x).argmax(1)


def evaluate_explanations(
    models: dict[str, nn.Module],
    split: Dataset,
    explainers: list[str],
    metrics: dict[str, ExplanationMetric],
    *,
    target: Target = "label",
    teacher: nn.Module | None = None,
    n: int | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> list[dict]:
    """One row per (model, explainer, sample): ``model``, ``explainer``, ``index``, ``target`` and
    each metric's score (NaN where the metric is undefined for the sample, e.g. an empty mask).
    Metrics that share perturbed forward passes compute them once per batch."""
    if n is not None:
        split = Subset(split, range(min(n, len(split))))
    rows = []
    for model_name, model in models.items():
        model.eval().to(device)
        for method in explainers:
            def explain_fn(m: nn.Module, x: Tensor, y: Tensor, method: str = method) -> Tensor:
                return explain(m, x, y, method)

            for batch in DataLoader(split, batch_size=batch_size):
                x = batch["image"].to(device)
                y = explanation_targets(target, batch["label"].to(device), model, teacher, x)
                mask = batch.get("mask")
                scores = evaluate_metrics(
                    metrics, model, x, y, explain_fn(model, x, y).detach(), None if mask is None else mask.to(device), explain_fn
                )
                for i in range(len(x)):
                    row = {"model": model_name, "explainer": method, "index": int(batch["index"][i]), "target": int(y[i])}
                    rows.append(row | {name: float(values[i]) for name, values in scores.items()})
    return rows


def aggregate_scores(rows: list[dict], metric_names: list[str]) -> list[dict]:
    """Per (model, explainer, metric): mean and sample std over the samples with a score, n, and
    how many samples had none (NaN)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["explainer"]), []).append(row)
    table = []
    for (model, method), group in groups.items():
        for metric in metric_names:
            values = [row[metric] for row in group if not math.isnan(row[metric])]
            mean = sum(values) / len(values) if values else math.nan
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else math.nan
            table.append({"model": model, "explainer": method, "metric": metric, "mean": mean, "std": std,
                          "n": len(values), "nan": len(group) - len(values)})
    return table
