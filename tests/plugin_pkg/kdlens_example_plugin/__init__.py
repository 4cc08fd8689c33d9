"""A kdlens plugin in one module: a loss term, a dataset, an explainer and an explanation metric.

Each is registered with ``REGISTRY.register(name, ..., config=...)`` when this module is imported;
the entry points in ``pyproject.toml`` tell kdlens to import it (see docs/extending.md).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from kdlens.data import DATASETS, DataBundle, DataConfigBase, DatasetEntry, DatasetInfo
from kdlens.data.common import TensorSource, make_transforms, train_val_test
from kdlens.distill import LOSSES, DistillBatch, LossConfigBase, LossTerm
from kdlens.explain import Explainer
from kdlens.explain.base import register_explainer
from kdlens.metrics import EXPLANATION_METRICS, EvaluationContext, ExplanationMetric

# ---------------------------------------------------------------- a loss term


class ConfidencePenaltyConfig(LossConfigBase):
    name: Literal["confidence_penalty"] = "confidence_penalty"
    beta: float = Field(0.1, ge=0.0)
    """Strength of the penalty on confident (low-entropy) predictions."""


@LOSSES.register("confidence_penalty", config=ConfidencePenaltyConfig)
class ConfidencePenalty(LossTerm):
    """Pereyra et al. 2017: −β·H(softmax(student logits)), averaged over the batch."""

    def forward(self, batch: DistillBatch) -> Tensor:
        log_p = batch.student_logits.log_softmax(1)
        return self.config.beta * (log_p.exp() * log_p).sum(1).mean()


# ---------------------------------------------------------------- a dataset


class StripesConfig(DataConfigBase):
    name: Literal["stripes"] = "stripes"
    image_size: int = Field(16, ge=4)
    train_size: int = Field(96, ge=4)
    test_size: int = Field(32, ge=1)
    seed: int = 0


def describe_stripes(cfg: StripesConfig) -> DatasetInfo:
    return DatasetInfo(num_classes=2, in_channels=3, image_size=(cfg.image_size, cfg.image_size),
                       class_names=("horizontal", "vertical"), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _stripes(n: int, size: int, seed: int) -> TensorSource:
    """Horizontal (label 0) or vertical (label 1) stripes with a random phase and noise, uint8."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    phase = torch.randint(0, 4, (n, 1), generator=g)
    bands = ((torch.arange(size)[None] + phase) // 2 % 2).float()  # (n, size)
    rows, cols = bands[:, :, None].expand(n, size, size), bands[:, None, :].expand(n, size, size)
    images = torch.where(labels[:, None, None] == 0, rows, cols)[:, None].expand(n, 3, size, size)
    images = (images * 160 + 40 + torch.randint(-30, 31, (n, 3, size, size), generator=g)).clamp(0, 255)
    return TensorSource(images.to(torch.uint8).contiguous(), labels)


def build_stripes(cfg: StripesConfig) -> DataBundle:
    info = describe_stripes(cfg)
    transforms = make_transforms(info.mean, info.std, train_ops=[])
    train, val, test = train_val_test(cfg, _stripes(cfg.train_size, cfg.image_size, cfg.seed),
                                      _stripes(cfg.test_size, cfg.image_size, cfg.seed + 1), transforms)
    return DataBundle(train=train, val=val, test=test, **info.facts())


DATASETS.register("stripes", DatasetEntry(build_stripes, describe_stripes), config=StripesConfig)


# ---------------------------------------------------------------- an explainer


@register_explainer("plain_gradient")  # EXPLAINERS.register("plain_gradient", cls), naming the class
class PlainGradient(Explainer):
    """|∂ logit_target / ∂ x| summed over channels, (B, 1, H, W)."""

    def _attribute(self, x: Tensor, target: Tensor) -> Tensor:
        with torch.enable_grad():
            inputs = x.detach().requires_grad_()
            score = self.model(inputs).gather(1, target[:, None]).sum()
            (grad,) = torch.autograd.grad(score, inputs)
        return grad.abs().sum(1, keepdim=True)


# ---------------------------------------------------------------- an explanation metric


@EXPLANATION_METRICS.register("positive_fraction")
class PositiveFraction(ExplanationMetric):
    """The fraction of pixels with positive attribution; reads the attributions only."""

    requires = frozenset()

    def compute(self, context: EvaluationContext) -> Tensor:
        return (context.a.flatten(1) > 0).double().mean(1)
