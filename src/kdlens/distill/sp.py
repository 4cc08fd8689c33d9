"""Similarity-preserving distillation (Tung & Mori, ICCV 2019), as in mdistiller (REFERENCE §1)."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from kdlens.distill.base import DistillBatch, TermContext, register_loss
from kdlens.distill.features import FeaturePairsConfig, FeatureTerm, resolve_pairs


class SPConfig(FeaturePairsConfig):
    """Default: the deepest stage pair. Weight 3000 as in mdistiller (CE weight 1 separately)."""

    name: Literal["sp"] = "sp"
    weight: float = 3000.0


def batch_similarity(features: Tensor) -> Tensor:
    """G = row-L2-normalise(F Fᵀ) with F the (B, C·H·W) flattened features: (B, B)."""
    flat = features.flatten(1)
    return F.normalize(flat @ flat.T, dim=1)


def similarity_preserving(student: Tensor, teacher: Tensor) -> Tensor:
    """‖G_t − G_s‖²_F / B² for one pair; the maps may differ in every size but the batch."""
    return (batch_similarity(teacher) - batch_similarity(student)).pow(2).sum() / student.shape[0] ** 2


@register_loss(SPConfig)
class SPLoss(FeatureTerm):
    """Σ over the configured pairs of :func:`similarity_preserving`."""

    def __init__(self, config: SPConfig, context: TermContext | None = None) -> None:
        super().__init__(config, context)
        self.pairs = resolve_pairs(config, context, "sp", default="last")

    def forward(self, batch: DistillBatch) -> Tensor:
        return sum(similarity_preserving(s, t) for s, t in self.feature_maps(batch))
