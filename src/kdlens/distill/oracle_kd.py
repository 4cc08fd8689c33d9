"""Oracle KD: distilling from the teacher's predictions on a relevance-reinforced input (REFERENCE §1)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdlens.distill.base import DistillBatch, LossConfigBase, LossTerm, TermContext, register_loss
from kdlens.distill.kd import kd_divergence
from kdlens.explain import explain


class OracleKDConfig(LossConfigBase):
    """The weight is α (published α=1, τ=2–4, γ≈0.2–1 at the per-sample scale); the CE part is a
    separate ``ce`` term."""

    name: Literal["oracle_kd"] = "oracle_kd"
    temperature: float = Field(4.0, gt=0.0)
    gamma: float = Field(0.5, ge=0.0)
    """Step size γ of x* = x − γ·g ⊙ |x|."""
    iterations: int = Field(1, ge=1)
    """Reinforcement steps, each from the previous x* (the published ``rec_num``)."""
    relevance: Literal["gradient", "lrp"] = "gradient"
    """``gradient``: x* = x − γ·g ⊙ |x|. ``lrp``: x* = x + γ·R with R the teacher's LRP relevance
    (zennit, EpsilonPlusFlat) of the true class's logit, per input channel; R takes the place of
    −g ⊙ |x| because the CE falls as the true logit rises."""


def reinforced_inputs(
    teacher: nn.Module, images: Tensor, labels: Tensor, gamma: float, iterations: int, relevance: str = "gradient"
) -> Tensor:
    """x* = x − γ·g ⊙ |x| with g = ∂CE(T(x), y)/∂x of each sample's own CE, repeated
    ``iterations`` times on the detached result.

    The CE is summed over the batch, not averaged: with the teacher in eval mode the samples are
    independent, so each sample's gradient is that of its own CE (the batch mean, as published,
    shrinks γ by 1/B). Only the input gets a gradient, never the teacher's parameters."""
    reinforced = images.detach()
    for _ in range(iterations):
        if relevance == "lrp":
            reinforced = (reinforced + gamma * explain(teacher, reinforced, labels, "lrp", reduce="none")).detach()
            continue
        reinforced = reinforced.requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(teacher(reinforced), labels, reduction="sum")
            (input_gradient,) = torch.autograd.grad(loss, reinforced)
        reinforced = (reinforced - gamma * input_gradient * reinforced.abs()).detach()
    return reinforced


@register_loss(OracleKDConfig)
class OracleKDLoss(LossTerm):
    """τ²·KL(softmax(T(x*)/τ) ‖ softmax(S(x)/τ)): the student, on the clean x, learns the
    teacher's predictions on the reinforced x*. x* needs the labels: training only."""

    needs_teacher = True

    def __init__(self, config: OracleKDConfig, context: TermContext | None = None) -> None:
        super().__init__(config, context)
        if context is None or context.teacher is None:
            raise ValueError("oracle_kd needs the teacher model: it runs the teacher on reinforced inputs")

    def forward(self, batch: DistillBatch) -> Tensor:
        config, teacher = self.config, self.context.teacher
        reinforced = reinforced_inputs(teacher, batch.images, batch.labels, config.gamma, config.iterations, config.relevance)
        with torch.no_grad():
            teacher_logits = teacher(reinforced)
        return kd_divergence(batch.student_logits, teacher_logits, config.temperature)
