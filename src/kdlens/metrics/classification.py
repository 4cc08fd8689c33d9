"""Accuracy, teacher–student agreement and KL, and per-group accuracy on a whole split."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from kdlens.models.modes import eval_mode


@dataclass
class Predictions:
    """Logits of one model on one split, with the split's labels (and groups where it has them)."""

    logits: Tensor
    labels: Tensor
    groups: Tensor | None = None


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device | str = "cpu") -> Predictions:
    logits, labels, groups = [], [], []
    with eval_mode(model):
        for batch in loader:
            logits.append(model(batch["image"].to(device)).float().cpu())
            labels.append(batch["label"])
            if "group" in batch:
                groups.append(batch["group"])
    return Predictions(torch.cat(logits), torch.cat(labels), torch.cat(groups) if groups else None)


def topk_accuracy(logits: Tensor, labels: Tensor, k: int) -> float:
    topk = logits.topk(k, dim=1).indices
    return (topk == labels[:, None]).any(dim=1).float().mean().item()


def agreement(student_logits: Tensor, teacher_logits: Tensor) -> float:
    """Fraction of samples where the student's top-1 class is the teacher's."""
    return (student_logits.argmax(1) == teacher_logits.argmax(1)).float().mean().item()


def teacher_student_kl(student_logits: Tensor, teacher_logits: Tensor) -> float:
    """KL(teacher ‖ student) at temperature 1, averaged over samples."""
    return F.kl_div(
        F.log_softmax(student_logits, 1), F.log_softmax(teacher_logits, 1), reduction="batchmean", log_target=True
    ).item()


def group_accuracy(logits: Tensor, labels: Tensor, groups: Tensor, group_names: list[str] | None = None) -> dict:
    """Accuracy per group present in the split, their mean, and the worst group (Waterbirds protocol)."""
    correct = (logits.argmax(1) == labels).float()
    per_group = {}
    for g in groups.unique().tolist():
        name = group_names[g] if group_names else str(g)
        per_group[name] = correct[groups == g].mean().item()
    worst = min(per_group, key=per_group.get)
    return {
        "per_group": per_group,
        "mean_group_accuracy": sum(per_group.values()) / len(per_group),
        "worst_group_accuracy": per_group[worst],
        "worst_group": worst,
    }


def classification_report(
    student: Predictions, teacher: Predictions | None = None, group_names: list[str] | None = None
) -> dict:
    """Top-1 (and top-5 when there are more than 5 classes), agreement and KL with the teacher,
    group accuracies where the split has groups."""
    num_classes = student.logits.shape[1]
    labelled = student.labels >= 0  # datasets without class labels (ImageNet-Segmentation) use -1
    logits, labels = student.logits[labelled], student.labels[labelled]
    report = {"n": len(student.labels), "top1": topk_accuracy(logits, labels, 1) if len(labels) else None}
    if num_classes > 5 and len(labels):
        report["top5"] = topk_accuracy(logits, labels, 5)
    if teacher is not None:
        report["agreement"] = agreement(student.logits, teacher.logits)
        report["kl_teacher_student"] = teacher_student_kl(student.logits, teacher.logits)
    if student.groups is not None:
        report.update(group_accuracy(student.logits, student.labels, student.groups, group_names))
    return report
