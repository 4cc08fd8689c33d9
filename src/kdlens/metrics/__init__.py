"""Metrics on predictions and explanations.

Classification: accuracy, teacher–student agreement and KL, group accuracy (:mod:`.classification`).
Explanations: one class per metric (localisation, faithfulness, robustness, complexity,
randomisation), all called as ``metric(model, x, y, a, s=None, explain_fn=None) -> (B,)`` and
registered in :data:`EXPLANATION_METRICS`; presets and shared evaluation in :mod:`.suite`;
teacher–student explanation agreement (:mod:`.agreement`) and calibration (:mod:`.calibration`).
See docs/metrics.md.
"""

from kdlens.metrics.agreement import (
    attribution_cosine,
    attribution_spearman,
    attribution_ssim,
    attribution_topk_iou,
    explanation_agreement,
)
from kdlens.metrics.base import (
    EXPLANATION_METRICS,
    CurveMetric,
    EvaluationContext,
    ExplainFn,
    ExplanationMetric,
    NanReason,
    Readout,
    Sweep,
)
from kdlens.metrics.calibration import (
    ReliabilityDiagram,
    calibration_report,
    expected_calibration_error,
    predictive_entropy,
    reliability_diagram,
)
from kdlens.metrics.classification import (
    Predictions,
    agreement,
    classification_report,
    group_accuracy,
    predict,
    teacher_student_kl,
    topk_accuracy,
)
from kdlens.metrics.complexity import Complexity, EffectiveComplexity, Sparseness
from kdlens.metrics.faithfulness import (
    DecilePredictionDrop,
    Deletion,
    FaithfulnessCorrelation,
    FaithfulnessEstimate,
    Infidelity,
    Insertion,
    Monotonicity,
    MonotonicityCorrelation,
    NegativePerturbation,
    PixelFlipping,
    PositivePerturbation,
    RegionPerturbation,
    Selectivity,
)
from kdlens.metrics.localisation import (
    AUC,
    AttributionLocalisation,
    EnergyPointingGame,
    PointingGame,
    RelevanceMassAccuracy,
    RelevanceRankAccuracy,
    SegmentationAccuracy,
    SegmentationAP,
    SegmentationF1,
    SegmentationMIoU,
    TopKIntersection,
)
from kdlens.metrics.quantus_bridge import run_quantus_metric
from kdlens.metrics.randomisation import MPRT, RandomLogit
from kdlens.metrics.road import ROAD
from kdlens.metrics.robustness import (
    AvgSensitivity,
    LocalLipschitzEstimate,
    MaxSensitivity,
)
from kdlens.metrics.suite import METRIC_PRESETS, create_metrics, evaluate_metrics, forward_only_metric_names

__all__ = [
    "AUC",
    "EXPLANATION_METRICS",
    "METRIC_PRESETS",
    "MPRT",
    "ROAD",
    "AttributionLocalisation",
    "AvgSensitivity",
    "Complexity",
    "CurveMetric",
    "DecilePredictionDrop",
    "Deletion",
    "EffectiveComplexity",
    "EnergyPointingGame",
    "EvaluationContext",
    "ExplainFn",
    "ExplanationMetric",
    "FaithfulnessCorrelation",
    "FaithfulnessEstimate",
    "Infidelity",
    "Insertion",
    "LocalLipschitzEstimate",
    "MaxSensitivity",
    "Monotonicity",
    "MonotonicityCorrelation",
    "NanReason",
    "NegativePerturbation",
    "PixelFlipping",
    "PointingGame",
    "PositivePerturbation",
    "Predictions",
    "RandomLogit",
    "Readout",
    "RegionPerturbation",
    "RelevanceMassAccuracy",
    "RelevanceRankAccuracy",
    "ReliabilityDiagram",
    "SegmentationAP",
    "SegmentationAccuracy",
    "SegmentationF1",
    "SegmentationMIoU",
    "Selectivity",
    "Sparseness",
    "Sweep",
    "TopKIntersection",
    "agreement",
    "attribution_cosine",
    "attribution_spearman",
    "attribution_ssim",
    "attribution_topk_iou",
    "calibration_report",
    "classification_report",
    "create_metrics",
    "evaluate_metrics",
    "expected_calibration_error",
    "explanation_agreement",
    "forward_only_metric_names",
    "group_accuracy",
    "predict",
    "predictive_entropy",
    "reliability_diagram",
    "run_quantus_metric",
    "teacher_student_kl",
    "topk_accuracy",
]
