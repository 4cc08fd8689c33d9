"""Feature matching through a learnable adapter, compared by cosine (REFERENCE §1)."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from kdlens.distill.base import DistillBatch, TermContext, register_loss
from kdlens.distill.features import FeaturePairConfig, FeatureTerm, resize_bilinear, resolve_pair


class FeatureMatchingConfig(FeaturePairConfig):
    """Default: the last stage of each model (the maps that are pooled for the classifiers)."""

    name: Literal["feature_matching"] = "feature_matching"


@register_loss(FeatureMatchingConfig)
class FeatureMatchingLoss(FeatureTerm):
    """mean over the batch of 1 − cos(vec adapter(F_s), vec F_t), with adapter a bias-free 1×1
    Conv2d(C_s → C_t) trained jointly with the student; its output is resized (bilinear) to the
    teacher map's size when they differ. The cosine is that of the L2-normalised vectors."""

    def __init__(self, config: FeatureMatchingConfig, context: TermContext | None = None) -> None:
        super().__init__(config, context)
        self.pairs = [resolve_pair(config, context, "feature_matching", default="last")]
        self.adapter: nn.Conv2d | None = None

    def build_connectors(self, batch: DistillBatch) -> None:
        [(student, teacher)] = self.feature_maps(batch)
        self.adapter = nn.Conv2d(student.shape[1], teacher.shape[1], 1, bias=False).to(student.device)

    def forward(self, batch: DistillBatch) -> Tensor:
        [(student, teacher)] = self.feature_maps(batch)
        adapted = resize_bilinear(self.adapter(student), teacher.shape[-2:])
        return (1 - F.cosine_similarity(adapted.flatten(1), teacher.flatten(1), dim=1)).mean()
