"""Cross-entropy and Hinton knowledge distillation (REFERENCE §1)."""

from __future__ import annotations

import math
from typing import Literal

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdlens.distill.base import DistillBatch, LossConfigBase, LossTerm, register_loss
from kdlens.distill.frozen import FrozenTeacherSpec


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


class BCEConfig(LossConfigBase):
    name: Literal["bce"] = "bce"
    logit_bias: float | Literal["auto"] | None = "auto"
    """Added to every logit before the loss; ``auto``: −log(C − 1), which makes the initial
    sigmoid outputs ≈ 1/C (B-cos v2's training setting: the B-cos logits start near 0)."""
    logit_temperature: float = Field(1.0, gt=0.0)
    """Logits are divided by it before the bias is added."""


@register_loss(BCEConfig)
class BinaryCrossEntropy(LossTerm):
    """Binary cross-entropy of every class's logit against the one-hot labels (B-cos v2's loss:
    each logit says "this class" on its own, unlike a softmax). A constant bias and a temperature
    change what is optimised, not the argmax of the model's logits."""

    def forward(self, batch: DistillBatch) -> Tensor:
        logits = batch.student_logits / self.config.logit_temperature
        num_classes = logits.shape[1]
        bias = self.config.logit_bias
        if bias == "auto":
            bias = -math.log(num_classes - 1) if num_classes > 2 else 0.0
        targets = F.one_hot(batch.labels, num_classes).to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits + (bias or 0.0), targets)


class KDConfig(LossConfigBase):
    name: Literal["kd"] = "kd"
    temperature: float = Field(4.0, gt=0.0)
    frozen_teacher: bool = False
    """Offline KD: the teacher's logits computed once on the un-augmented training images and reused
    every epoch, so training runs no teacher forward (the student still sees augmented images)."""


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

    def frozen_teacher_spec(self) -> FrozenTeacherSpec | None:
        return FrozenTeacherSpec(method=None, layer=None) if self.config.frozen_teacher else None

    def forward(self, batch: DistillBatch) -> Tensor:
        return kd_divergence(batch.student_logits, batch.teacher_logits, self.config.temperature)
