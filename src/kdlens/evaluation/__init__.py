"""Evaluation: the one service between the runs and what shows their results (``kdlens evaluate``,
``kdlens explain``, the report, the demo, the benchmark tables).

- :func:`open_checkpoints` → :class:`EvaluationInputs` (models, dataset, teacher, all checked to fit);
  :func:`evaluate_classification`: accuracy, top-5, group accuracies, agreement and KL per split.
- :func:`plan_explanations` (every name checked, no work) → :func:`run_explanations`: explanation
  metrics per sample and aggregated.
- :func:`collect_report_data` → :class:`ReportData`: everything the HTML report renders.

Shared policies live below it: the device (:func:`kdlens.device.resolve_device`), the explained
class (:func:`kdlens.explain.resolve_target`), the aggregation of repeated values
(:func:`kdlens.aggregate.aggregate`) and eval mode (:func:`kdlens.models.modes.eval_mode`).
"""

from kdlens.aggregate import Aggregate, aggregate, format_aggregate
from kdlens.device import resolve_device
from kdlens.evaluation.measures import (
    AGREEMENT_METRICS,
    ECE_BINS,
    Calibration,
    agreement_scores,
    calibration,
    class_correlation,
    nanmean,
)
from kdlens.evaluation.report_data import (
    ReportData,
    collect_report_data,
    describe_losses,
    distillation_terms,
    distillation_weight,
)
from kdlens.evaluation.service import (
    EvaluationInputs,
    ExplanationPlan,
    ExplanationScores,
    evaluate_checkpoints,
    evaluate_classification,
    open_checkpoints,
    plan_explanations,
    run_explanations,
)
from kdlens.evaluation.store import ModelStore, TestSamples
from kdlens.metrics.evaluate import evaluate_models, predict_splits, split_reports
from kdlens.metrics.explanation_evaluation import aggregate_scores, evaluate_explanations

__all__ = [
    "AGREEMENT_METRICS",
    "ECE_BINS",
    "Aggregate",
    "Calibration",
    "EvaluationInputs",
    "ExplanationPlan",
    "ExplanationScores",
    "ModelStore",
    "ReportData",
    "TestSamples",
    "aggregate",
    "aggregate_scores",
    "agreement_scores",
    "calibration",
    "class_correlation",
    "collect_report_data",
    "describe_losses",
    "distillation_terms",
    "distillation_weight",
    "evaluate_checkpoints",
    "evaluate_classification",
    "evaluate_explanations",
    "evaluate_models",
    "format_aggregate",
    "nanmean",
    "open_checkpoints",
    "plan_explanations",
    "predict_splits",
    "resolve_device",
    "run_explanations",
    "split_reports",
]
