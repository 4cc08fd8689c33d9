"""Metrics on predictions and explanations."""

from kdlens.metrics.classification import (
    Predictions,
    agreement,
    classification_report,
    group_accuracy,
    predict,
    teacher_student_kl,
    topk_accuracy,
)

__all__ = [
    "Predictions",
    "agreement",
    "classification_report",
    "group_accuracy",
    "predict",
    "teacher_student_kl",
    "topk_accuracy",
]
