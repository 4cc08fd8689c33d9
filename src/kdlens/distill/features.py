"""What the feature-based terms share: which module paths they read, and spatial resizing.

Default paths come from the model specs: stages are paired deepest-first, so a teacher with more
stages than its student contributes its deepest ones (``stages`` run shallow to deep, the last
being the map that is pooled for the classifier).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from torch import Tensor
from torch.nn import functional as F

from kdlens.distill.base import DistillBatch, LossConfigBase, LossTerm, TermContext


class FeaturePairConfig(LossConfigBase):
    """A term that compares one student feature map with one teacher feature map."""

    student_path: str | None = None
    """Module path of the student feature; default depends on the method."""
    teacher_path: str | None = None
    """Module path of the teacher feature; default depends on the method."""


class FeaturePairsConfig(LossConfigBase):
    """A term that compares several (student, teacher) feature maps, pair by pair."""

    student_paths: list[str] | None = Field(None, min_length=1)
    """Module paths of the student features; default depends on the method."""
    teacher_paths: list[str] | None = Field(None, min_length=1)
    """Module paths of the teacher features, one per student path."""

    @model_validator(mode="after")
    def _given_together(self) -> FeaturePairsConfig:
        given = (self.student_paths is not None, self.teacher_paths is not None)
        if any(given) and not all(given):
            raise ValueError("give student_paths and teacher_paths together (one teacher path per student path), or neither")
        if all(given) and len(self.student_paths) != len(self.teacher_paths):
            raise ValueError(
                f"student_paths has {len(self.student_paths)} paths but teacher_paths has {len(self.teacher_paths)}"
            )
        return self


def paired_stages(context: TermContext | None, method: str) -> list[tuple[str, str]]:
    """(student stage, teacher stage) pairs from the specs, shallow to deep; with unequal stage
    counts the deepest stages are paired."""
    if context is None or context.teacher_spec is None:
        raise ValueError(f"{method}: no default feature paths without the student and teacher specs; set the paths in the config")
    student, teacher = context.student_spec.stages, context.teacher_spec.stages
    count = min(len(student), len(teacher))
    return list(zip(student[len(student) - count :], teacher[len(teacher) - count :]))


def resolve_pair(
    config: FeaturePairConfig, context: TermContext | None, method: str, default: Literal["middle", "last"]
) -> tuple[str, str]:
    """The configured (student, teacher) paths; a path left unset comes from the middle or the
    deepest stage pair."""
    student, teacher = config.student_path, config.teacher_path
    if student is None or teacher is None:
        pairs = paired_stages(context, method)
        default_student, default_teacher = pairs[len(pairs) // 2 if default == "middle" else -1]
        student, teacher = student or default_student, teacher or default_teacher
    return student, teacher


def resolve_pairs(
    config: FeaturePairsConfig, context: TermContext | None, method: str, default: Literal["all", "last"]
) -> list[tuple[str, str]]:
    """The configured (student, teacher) path pairs, else all stage pairs or the deepest one."""
    if config.student_paths is not None:
        return list(zip(config.student_paths, config.teacher_paths))
    pairs = paired_stages(context, method)
    return pairs if default == "all" else pairs[-1:]


def pool_to_smaller(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool whichever of two maps is spatially larger to the other's size (as mdistiller)."""
    if student.shape[-2:] == teacher.shape[-2:]:
        return student, teacher
    if student.shape[-2] * student.shape[-1] > teacher.shape[-2] * teacher.shape[-1]:
        return F.adaptive_avg_pool2d(student, teacher.shape[-2:]), teacher
    return student, F.adaptive_avg_pool2d(teacher, student.shape[-2:])


def resize_bilinear(maps: Tensor, size: tuple[int, int] | list[int]) -> Tensor:
    """Bilinear resize of (B, C, h, w) maps; antialiased so that shrinking averages instead of
    sampling. A no-op at the same size."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)


class FeatureTerm(LossTerm):
    """A term reading (student, teacher) feature pairs; subclasses set ``pairs`` in ``__init__``."""

    needs_teacher = True
    pairs: list[tuple[str, str]]

    def feature_paths(self) -> tuple[list[str], list[str]]:
        return [student for student, _ in self.pairs], [teacher for _, teacher in self.pairs]

    @classmethod
    def reads_features(cls, config: LossConfigBase) -> bool:
        return True

    def feature_maps(self, batch: DistillBatch) -> list[tuple[Tensor, Tensor]]:
        """(student feature, teacher feature) per pair, in the order of ``pairs``."""
        return [(batch.student_features[student], batch.teacher_features[teacher]) for student, teacher in self.pairs]
