"""Models × explainers × explanation metrics on a split: per-sample scores and their aggregate."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from kdlens.aggregate import aggregate, describe_missing
from kdlens.explain import (
    EXPLAINERS,
    ExplainError,
    LayerExplainer,
    TargetName,
    check_target,
    explain,
    make_explainer,
    resolve_target,
)
from kdlens.metrics.base import EXPLANATION_METRICS, EvaluationContext, ExplanationMetric, NanReason
from kdlens.metrics.suite import METRIC_PRESETS
from kdlens.models.modes import eval_mode
from kdlens.registry import unknown_name_message

NAN_REASONS = "nan_reasons"
"""The per-sample rows' column saying why a metric has no score there: ``metric: reason`` pairs
joined by ``; `` (e.g. ``pointing_game: all-zero map; auc: all-zero map``), empty when every
metric has a score."""

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


def metrics_from_spec(spec: str, image_shape: tuple[int, int, int]) -> dict[str, ExplanationMetric]:
    """The metrics of a comma-separated list of presets and metric names (e.g.
    ``thesis,decile_prediction_drop``), in order, each metric once with its first mention's settings;
    the ``thesis`` preset is scaled to ``image_shape`` (C, H, W) by :func:`thesis_overrides`.
    Every name is checked before any metric is built (ValueError naming the valid ones)."""
    names = [name.strip() for name in spec.split(",") if name.strip()]
    if not names:
        raise ValueError("no metric given: name a preset or metrics, e.g. --metrics thesis,decile_prediction_drop")
    for name in names:
        if name not in METRIC_PRESETS and name not in EXPLANATION_METRICS:
            valid = [f"{preset} (preset)" for preset in sorted(METRIC_PRESETS)] + EXPLANATION_METRICS.names()
            raise ValueError(unknown_name_message("metric or metric preset", name, valid))
    kwargs: dict[str, dict] = {}
    for name in names:
        if name in METRIC_PRESETS:
            preset = {metric: dict(params) for metric, params in METRIC_PRESETS[name].items()}
            if name == "thesis":  # its constants are for 224-px images: scale them to these
                for metric, params in thesis_overrides(*image_shape).items():
                    preset[metric].update(params)
            for metric, params in preset.items():
                kwargs.setdefault(metric, params)
        else:
            kwargs.setdefault(name, {})
    return {name: EXPLANATION_METRICS[name](**params) for name, params in kwargs.items()}


def explained_layer(method: str, layer: str | None) -> str | None:
    """``layer`` for the CAM family, which explains a layer; None for methods attributing to the input."""
    return layer if issubclass(EXPLAINERS[method], LayerExplainer) else None


def check_explainers(models: dict[str, nn.Module], explainers: list[str], layer: str | None = None) -> None:
    """Fail before any work on an unknown method (ExplainError) or a ``layer`` one of the models
    lacks (UnknownModulePath, with the valid paths), or a ``layer`` no method can use."""
    for method in explainers:
        if method not in EXPLAINERS:
            raise ExplainError(unknown_name_message("explanation method", method, EXPLAINERS.names()))
    if layer is not None and all(explained_layer(method, layer) is None for method in explainers):
        raise ExplainError(
            f"layer '{layer}' is for the CAM family (e.g. gradcam, eigencam), which explains a layer; "
            f"{', '.join(explainers)} attribute to the input"
        )
    for model in models.values():
        for method in explainers:
            make_explainer(model, method, explained_layer(method, layer))


@dataclass
class ExplanationResults:
    """What :func:`evaluate_explanations` computes."""

    scores: list[dict]
    """One row per (model, explainer, sample): ``model``, ``explainer``, ``index``, ``label``,
    ``target``, each metric's score (NaN where undefined for the sample, e.g. an empty mask) and
    :data:`NAN_REASONS`, why the NaN ones are NaN."""
    curves: dict[str, list[dict]] = field(default_factory=dict)
    """Per metric with per-sample points (``point_labels``, e.g. ``decile_prediction_drop``): one
    row per (model, explainer, sample), the same identifying columns, then one column per point."""
    maps: dict[tuple[str, str], Tensor] = field(default_factory=dict)
    """With ``keep_maps``: per (model, explainer) the maps (N, 1, H, W), float32 on the CPU, in the
    split's order."""


def evaluate_explanations(
    models: dict[str, nn.Module],
    split: Dataset,
    explainers: list[str],
    metrics: dict[str, ExplanationMetric],
    *,
    target: TargetName = "label",
    teacher: nn.Module | None = None,
    n: int | None = None,
    layer: str | None = None,
    tta: bool = False,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    keep_maps: bool = False,
    precision: torch.dtype | None = None,
) -> ExplanationResults:
    """Every model × explainer × metric on the first ``n`` samples of ``split``. ``layer``: the
    module path the CAM-family methods explain (default: each model's own, its last feature stage);
    ``tta``: average each map over horizontal flip × brightness {0.9, 1, 1.1} (the thesis's
    ``aug_smooth``). All metrics of a batch share one context: the clean forward pass and perturbed
    images two metrics have in common (and the per-sample curves) are computed once. The explained
    class comes from :func:`~kdlens.explain.resolve_target` (``teacher``: ``teacher``'s top-1);
    ``keep_maps`` keeps every map in ``results.maps``; ``precision``: the autocast precision of the
    metrics' forward passes (:class:`~kdlens.metrics.base.EvaluationContext`; explanations stay float32)."""
    check_target(target, teacher is not None)
    check_explainers(models, explainers, layer)
    if n is not None:
        split = Subset(split, range(min(n, len(split))))
    results = ExplanationResults([], {name: [] for name, metric in metrics.items() if hasattr(metric, "point_labels")})
    if teacher is not None:
        teacher.eval().to(device)
    for model_name, model in models.items():
        model.eval().to(device)
        for method in explainers:
            def explain_fn(m: nn.Module, x: Tensor, y: Tensor, method: str = method) -> Tensor:
                return explain(m, x, y, method, layer=explained_layer(method, layer), tta=tta)

            kept: list[Tensor] = []
            for batch in DataLoader(split, batch_size=batch_size):
                x = batch["image"].to(device)
                labels = batch["label"].to(device)
                y = resolve_target(model, x, target, labels=labels, teacher=teacher)
                a = explain_fn(model, x, y).detach()
                if keep_maps:
                    kept.append(a.float().cpu())
                # One context per mask the metrics score against: the object's mask, a decoy's ...
                contexts = {key: EvaluationContext(model, x, y, a, batch[key].to(device) if key in batch else None,
                                                   explain_fn, precision=precision)
                            for key in {"mask", *(metric.mask_key for metric in metrics.values())}}
                with eval_mode(model):
                    scores = {name: metric.evaluate(contexts[metric.mask_key]) for name, metric in metrics.items()}
                    points = {name: metrics[name].points(contexts["mask"]) for name in results.curves}
                    reasons = {name: metrics[name].nan_reasons(contexts[metrics[name].mask_key], values)
                               for name, values in scores.items()}
                for i in range(len(x)):
                    ids = {"model": model_name, "explainer": method, "index": int(batch["index"][i]),
                           "label": int(labels[i]), "target": int(y[i])}
                    why = "; ".join(f"{name}: {r[i]}" for name, r in reasons.items() if r[i] is not None)
                    results.scores.append(ids | {name: float(values[i]) for name, values in scores.items()} | {NAN_REASONS: why})
                    for name, values in points.items():
                        point_values = dict(zip(metrics[name].point_labels, values[i].tolist(), strict=True))
                        results.curves[name].append(ids | point_values)
            if keep_maps and kept:
                results.maps[(model_name, method)] = torch.cat(kept)
    return results


def nan_reasons_of(row: dict) -> dict[str, str]:
    """``{metric: reason}`` of one per-sample row's :data:`NAN_REASONS` column (empty without it)."""
    text = row.get(NAN_REASONS) or ""
    pairs = (item.partition(": ") for item in text.split("; ") if item)
    return {metric: reason for metric, _, reason in pairs}


def aggregate_scores(rows: list[dict], metric_names: list[str]) -> list[dict]:
    """Per (model, explainer, metric): :func:`kdlens.aggregate.aggregate` of the samples' scores
    (mean and sample std over the samples with a score, n, how many samples had none) and a
    ``note`` on why those had none (:func:`kdlens.aggregate.describe_missing` of the rows'
    :data:`NAN_REASONS`; empty when every sample has a score), e.g. ``all maps are zero`` when no
    sample has one."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["explainer"]), []).append(row)
    every_sample = {reason.value: reason.for_every_sample for reason in NanReason}
    table = []
    for (model, method), group in groups.items():
        reasons = [nan_reasons_of(row) for row in group]
        for metric in metric_names:
            stats = aggregate(row[metric] for row in group)
            why = [r.get(metric, NanReason.UNDEFINED.value) for row, r in zip(group, reasons, strict=True)
                   if row[metric] is None or row[metric] != row[metric]]
            table.append({"model": model, "explainer": method, "metric": metric, "mean": stats.mean, "std": stats.std,
                          "n": stats.n, "nan": stats.nan, "note": describe_missing(stats, why, every_sample)})
    return table
