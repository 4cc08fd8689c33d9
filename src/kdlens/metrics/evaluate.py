"""Evaluate trained models on every evaluation split of a dataset, against a teacher if given."""

from __future__ import annotations

import torch
from torch import nn

from kdlens.data import DataBundle, DataConfigBase
from kdlens.data.loaders import eval_loader
from kdlens.metrics.classification import Predictions, classification_report, predict


def evaluation_splits(bundle: DataBundle) -> dict:
    """The test split and the extra ones (e.g. ``shifted``); never train or val."""
    return {"test": bundle.test, **bundle.extra_splits}


def predict_splits(
    model: nn.Module, bundle: DataBundle, config: DataConfigBase, device: str | torch.device = "cpu"
) -> dict[str, Predictions]:
    return {
        name: predict(model, eval_loader(split, config), device) for name, split in evaluation_splits(bundle).items()
    }


def split_reports(
    predictions: dict[str, Predictions],
    teacher: dict[str, Predictions] | None = None,
    group_names: list[str] | None = None,
    aligned_groups: frozenset[int] | None = None,
) -> dict[str, dict]:
    """``{split: classification report}``, against the teacher's predictions of the same splits."""
    teacher = teacher or {}
    return {split: classification_report(p, teacher.get(split), group_names, aligned_groups)
            for split, p in predictions.items()}


def evaluate_models(
    models: dict[str, nn.Module],
    bundle: DataBundle,
    config: DataConfigBase,
    teacher: nn.Module | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, dict[str, dict]]:
    """``{model name: {split: report}}``; the teacher's predictions are computed once and shared."""
    teacher_predictions = predict_splits(teacher, bundle, config, device) if teacher is not None else None
    return {
        name: split_reports(predict_splits(model, bundle, config, device), teacher_predictions, bundle.group_names,
                            bundle.aligned_groups)
        for name, model in models.items()
    }
