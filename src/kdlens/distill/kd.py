"""Cross-entropy and Hinton knowledge distillation (REFERENCE §1)."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdlens.distill.base import DistillBatch, LossConfigBase, LossTerm, register_loss


class CEConfig(LossConfigBase):
    name: Literal["ce"] = "ce"
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)


@register_loss(CEConfig)
class CrossEntropy(LossTerm):
    """Cross-entropy with the ground-truth labels."""

    def forward(self, batch: DistillBatch) -> Tensor:
        return F.cross_entropy(
            batch.student_logits, batch.labels, label_smoothing=self.config.label_smoothing
        )


class KDConfig(LossConfigBase):
    name: Literal["kd"] = "kd"
    temperature: float = Field(4.0, gt=0.0)


def kd_divergence(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """τ²·KL(softmax(t/τ) ‖ softmax(s/τ)), summed over classes and averaged over the batch.

    The τ² factor keeps the gradient scale independent of τ; it applies for every mixing weight
    (one published α-mix script dropped it at α=1)."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


@register_loss(KDConfig)
class KDLoss(LossTerm):
    """Hinton KD; α-mix is ``[{ce, weight: 1-α}, {kd, weight: α}]``."""

    needs_teacher = True

    def forward(self, batch: DistillBatch) -> Tensor:
        return kd_divergence(batch.student_logits, batch.teacher_logits, self.config.temperature)
