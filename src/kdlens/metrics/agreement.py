"""Teacher–student explanation agreement: how alike are two attributions of the same class?

Each function takes the teacher's and the student's attributions of the same inputs and classes,
with equal shapes ``(B, C, H, W)``, and returns one value per sample (float64, NaN where undefined).
"""

from __future__ import annotations

from torch import Tensor

from kdlens.metrics.functional import cosine, flatten, spearman, ssim, topk_mask


def _check(a_teacher: Tensor, a_student: Tensor) -> None:
    if a_teacher.shape != a_student.shape:
        raise ValueError(f"attributions differ in shape: {tuple(a_teacher.shape)} vs {tuple(a_student.shape)}")


def attribution_cosine(a_teacher: Tensor, a_student: Tensor) -> Tensor:
    """Cosine similarity of the flattened maps."""
    _check(a_teacher, a_student)
    return cosine(a_teacher, a_student)


def attribution_spearman(a_teacher: Tensor, a_student: Tensor) -> Tensor:
    """Spearman rank correlation of the flattened maps."""
    _check(a_teacher, a_student)
    return spearman(flatten(a_teacher), flatten(a_student))


def attribution_topk_iou(a_teacher: Tensor, a_student: Tensor, k: int | float = 0.1) -> Tensor:
    """IoU of the two maps' ``k`` highest features (a float: that share of the features)."""
    _check(a_teacher, a_student)
    n = flatten(a_teacher).shape[1]
    count = max(1, round(k * n)) if isinstance(k, float) else k
    top_teacher, top_student = topk_mask(a_teacher, count), topk_mask(a_student, count)
    return (top_teacher & top_student).sum(1).double() / (top_teacher | top_student).sum(1)


def attribution_ssim(a_teacher: Tensor, a_student: Tensor) -> Tensor:
    """Structural similarity of the maps over (H, W), channels averaged (see :func:`functional.ssim`)."""
    _check(a_teacher, a_student)
    return ssim(a_teacher, a_student)


def explanation_agreement(a_teacher: Tensor, a_student: Tensor, k: int | float = 0.1) -> dict[str, Tensor]:
    """All four agreements, ``{name: (B,)}``."""
    return {
        "cosine": attribution_cosine(a_teacher, a_student),
        "spearman": attribution_spearman(a_teacher, a_student),
        "topk_iou": attribution_topk_iou(a_teacher, a_student, k),
        "ssim": attribution_ssim(a_teacher, a_student),
    }
