"""Exp-KD: matching the teacher's class activation maps (REFERENCE §1)."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdlens.distill.base import DistillBatch, TermContext, register_loss
from kdlens.distill.features import FeaturePairConfig, FeatureTerm, resize_bilinear, resolve_pair
from kdlens.models import resolve_module


class ExpKDConfig(FeaturePairConfig):
    """The weight is β. Published β, whose loss scale differs from this one (below): 200
    (resnet32x4→resnet8x4), 0.5 (resnet56→resnet20), 50 (wrn_40_2→wrn_16_2), 200 (vgg13→vgg8),
    2 (ImageNet resnet34→resnet18); the published runs add CE and KD as separate terms.

    Default paths: the last stage of each model, the maps their classifiers pool."""

    name: Literal["expkd"] = "expkd"
    weight: float = 50.0
    top_k: int = Field(40, ge=1)
    """CAMs of the teacher's k most likely classes per sample (capped at the number of classes)."""
    normalize: Literal["softmax", "l2"] = "softmax"
    """Per sample and class over space: softmax(CAM/T) over the h·w positions, or CAM/‖CAM‖₂."""
    temperature: float = Field(1.0, gt=0.0)
    """T of the spatial softmax."""


def class_activation_maps(features: Tensor, fc_weight: Tensor, classes: Tensor) -> Tensor:
    """CAM_c = ReLU((1/C) Σ_ch W[c, ch]·F[ch]) for each sample's own classes.

    ``features`` (B, C, h, w) is the map the classifier pools, ``fc_weight`` its weight (K, C)
    (or (K, C, 1, 1) for a 1×1 conv classifier), ``classes`` (B, k) class indices. Returns
    (B, k, h, w)."""
    class_weights = fc_weight.flatten(1)[classes]
    return (class_weights @ features.flatten(2)).div(features.shape[1]).relu().unflatten(2, features.shape[-2:])


def normalize_over_space(maps: Tensor, method: Literal["softmax", "l2"], temperature: float = 1.0) -> Tensor:
    """Each (sample, class) map of (B, k, h, w) normalised over its h·w positions: softmax(map/T)
    sums to 1, L2 gives unit norm. (The published code took the softmax over the batch axis.)"""
    flat = maps.flatten(2)
    flat = (flat / temperature).softmax(dim=2) if method == "softmax" else F.normalize(flat, dim=2)
    return flat.view_as(maps)


@register_loss(ExpKDConfig)
class ExpKDLoss(FeatureTerm):
    """MSE between the student's and the teacher's spatially normalised CAMs of the teacher's
    top-k classes, each model's CAM from its own last map and classifier weights; the teacher CAM
    is resized (bilinear) to the student map's size before normalising."""

    def __init__(self, config: ExpKDConfig, context: TermContext | None = None) -> None:
        super().__init__(config, context)
        if context is None or context.teacher is None or context.teacher_spec is None:
            raise ValueError("expkd needs the student and the teacher with their specs (their classifier weights)")
        self.pairs = [resolve_pair(config, context, "expkd", default="last")]

    def _classifier_weights(self) -> tuple[Tensor, Tensor]:
        context = self.context
        return (
            resolve_module(context.student, context.student_spec.classifier).weight,
            resolve_module(context.teacher, context.teacher_spec.classifier).weight,
        )

    def build_connectors(self, batch: DistillBatch) -> None:
        """No connectors: checks once that each classifier reads the configured map's channels."""
        [(student, teacher)] = self.feature_maps(batch)
        for role, features, weight in zip(("student", "teacher"), (student, teacher), self._classifier_weights()):
            if weight.flatten(1).shape[1] != features.shape[1]:
                raise ValueError(
                    f"expkd: the {role} classifier reads {weight.flatten(1).shape[1]} channels but the {role} "
                    f"feature map has {features.shape[1]}: CAMs need the map the classifier pools"
                )

    def forward(self, batch: DistillBatch) -> Tensor:
        config = self.config
        [(student, teacher)] = self.feature_maps(batch)
        student_fc, teacher_fc = self._classifier_weights()
        k = min(config.top_k, batch.teacher_logits.shape[1])
        classes = batch.teacher_logits.topk(k, dim=1).indices
        student_cams = class_activation_maps(student, student_fc, classes)
        teacher_cams = resize_bilinear(class_activation_maps(teacher, teacher_fc, classes), student_cams.shape[-2:])
        return F.mse_loss(
            normalize_over_space(student_cams, config.normalize, config.temperature),
            normalize_over_space(teacher_cams, config.normalize, config.temperature).detach(),
        )
