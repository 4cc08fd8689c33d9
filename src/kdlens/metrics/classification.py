"""Accuracy, teacher–student agreement and KL, and per-group accuracy on a whole split."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from kdlens.engine import inference_forward
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
    forward = inference_forward(model)
    with eval_mode(model):
        for batch in loader:
            logits.append(forward(batch["image"].to(device)).float().cpu())
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


def group_accuracy(logits: Tensor, labels: Tensor, groups: Tensor, group_names: list[str] | None = None,
                   aligned_groups: frozenset[int] | None = None) -> dict:
    """Accuracy per group present in the split, their mean, and the worst group (Waterbirds
    protocol). With ``aligned_groups`` (the groups whose shortcut agrees with the class), also the
    ``shortcut_gap``: top-1 on the images of those groups minus top-1 on the others (None unless
    both are present)."""
    correct = (logits.argmax(1) == labels).float()
    per_group = {}
    for g in groups.unique().tolist():
        name = group_names[g] if group_names else str(g)
        per_group[name] = correct[groups == g].mean().item()
    worst = min(per_group, key=per_group.get)
    report = {
        "per_group": per_group,
        "mean_group_accuracy": sum(per_group.values()) / len(per_group),
        "worst_group_accuracy": per_group[worst],
        "worst_group": worst,
    }
    if aligned_groups is not None:
        aligned = torch.isin(groups, torch.tensor(sorted(aligned_groups), dtype=groups.dtype))
        both = aligned.any() and not aligned.all()
        report["shortcut_gap"] = (correct[aligned].mean() - correct[~aligned].mean()).item() if both else None
    return report


def classification_report(
    student: Predictions, teacher: Predictions | None = None, group_names: list[str] | None = None,
    aligned_groups: frozenset[int] | None = None,
) -> dict:
    """Top-1 (and top-5 when there are more than 5 classes), agreement and KL with the teacher,
    group accuracies where the split has groups (and the shortcut gap, given ``aligned_groups``)."""
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
        report.update(group_accuracy(student.logits, student.labels, student.groups, group_names, aligned_groups))
    return report
