"""Decoupled knowledge distillation (Zhao et al., CVPR 2022), as in mdistiller (REFERENCE §1)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdlens.distill.base import DistillBatch, LossConfigBase, LossTerm, register_loss

TARGET_MASK = 1000.0
"""Subtracted from the target logit (after dividing by τ) before the NCKD softmax, so that the
target's probability underflows to exactly 0 and the softmax runs over the non-target classes."""


class DKDConfig(LossConfigBase):
    """Published values: α=1, β=8, τ=4 on CIFAR-100 (β=2 for resnet56→resnet20 and
    resnet110→resnet32, β=6 for the VGG and WRN pairs); ImageNet β=0.5, τ=1. mdistiller adds CE
    with weight 1 as a separate term."""

    name: Literal["dkd"] = "dkd"
    alpha: float = Field(1.0, ge=0.0)
    """Weight of TCKD, the target-vs-rest part."""
    beta: float = Field(8.0, ge=0.0)
    """Weight of NCKD, the part among the non-target classes."""
    temperature: float = Field(4.0, gt=0.0)
    warmup_epochs: int = Field(20, ge=0)
    """The term ramps up linearly over this many epochs (0: no warm-up)."""


def dkd_parts(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """(TCKD, NCKD), each τ²·KL averaged over the batch.

    TCKD = KL([p_t, 1 − p_t]_teacher ‖ [p_t, 1 − p_t]_student) with p_t the target class's
    probability at temperature τ; NCKD = KL over the non-target classes, renormalised, obtained by
    subtracting :data:`TARGET_MASK` from the target logit. Log-probabilities come from
    log-sum-exps, never from the log of a probability that can underflow to 0."""
    is_target = F.one_hot(labels, student_logits.shape[1]).bool()
    student, teacher = student_logits / temperature, teacher_logits / temperature
    tckd = F.kl_div(_binary_log_probs(student, is_target), _binary_log_probs(teacher, is_target), reduction="batchmean", log_target=True)
    mask = TARGET_MASK * is_target
    nckd = F.kl_div(F.log_softmax(student - mask, dim=1), F.log_softmax(teacher - mask, dim=1), reduction="batchmean", log_target=True)
    return tckd * temperature**2, nckd * temperature**2


def _binary_log_probs(scaled_logits: Tensor, is_target: Tensor) -> Tensor:
    """(B, 2): log p(target) and log p(not target) under softmax(scaled_logits)."""
    log_total = scaled_logits.logsumexp(dim=1)
    log_target = scaled_logits[is_target] - log_total
    log_rest = scaled_logits.masked_fill(is_target, float("-inf")).logsumexp(dim=1) - log_total
    return torch.stack([log_target, log_rest], dim=1)


def dkd_warmup(epoch: int, warmup_epochs: int) -> float:
    """min((epoch + 1) / warmup_epochs, 1) for the 0-based ``epoch``: mdistiller's
    min(epoch / warmup, 1) with its epochs counted from 1."""
    return 1.0 if warmup_epochs == 0 else min((epoch + 1) / warmup_epochs, 1.0)


@register_loss(DKDConfig)
class DKDLoss(LossTerm):
    """warm-up(epoch) · (α·TCKD + β·NCKD)."""

    needs_teacher = True

    def forward(self, batch: DistillBatch) -> Tensor:
        config = self.config
        tckd, nckd = dkd_parts(batch.student_logits, batch.teacher_logits, batch.labels, config.temperature)
        return dkd_warmup(batch.epoch, config.warmup_epochs) * (config.alpha * tckd + config.beta * nckd)
