"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017), as in mdistiller (REFERENCE §1)."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdlens.distill.base import DistillBatch, TermContext, register_loss
from kdlens.distill.features import FeaturePairsConfig, FeatureTerm, pool_to_smaller, resolve_pairs


class ATConfig(FeaturePairsConfig):
    """Default: every stage pair (deepest stages paired when the counts differ). Weight 1000 as in
    mdistiller (CE weight 1 separately)."""

    name: Literal["at"] = "at"
    weight: float = 1000.0
    exponent: float = Field(2.0, gt=0.0)
    """p in mean_channels(f^p)."""


def attention_map(features: Tensor, exponent: float) -> Tensor:
    """at(f) = L2-normalise(flatten(mean over channels of f^p)): (B, C, H, W) -> (B, H·W)."""
    return F.normalize(features.pow(exponent).mean(dim=1).flatten(1), dim=1)


def attention_transfer(student: Tensor, teacher: Tensor, exponent: float) -> Tensor:
    """mean((at_s − at_t)²) for one stage pair, the larger map average-pooled to the smaller."""
    student, teacher = pool_to_smaller(student, teacher)
    return (attention_map(student, exponent) - attention_map(teacher, exponent)).pow(2).mean()


@register_loss(ATConfig)
class ATLoss(FeatureTerm):
    """Σ over stage pairs of :func:`attention_transfer`."""

    def __init__(self, config: ATConfig, context: TermContext | None = None) -> None:
        super().__init__(config, context)
        self.pairs = resolve_pairs(config, context, "at", default="all")

    def forward(self, batch: DistillBatch) -> Tensor:
        return sum(attention_transfer(s, t, self.config.exponent) for s, t in self.feature_maps(batch))
