"""Localisation: does the attribution fall on the object mask?

Every metric here reads ``a`` and ``s`` only (``requires = {"mask"}``). The mask ``(B, 1, H, W)`` is
broadcast over the attribution's channels, so a ``(B, C, H, W)`` attribution counts each channel of a
pixel as one feature (sum it over channels first for pixel-level scores).

Undefined scores are NaN, each with its reason (:class:`~kdlens.metrics.base.NanReason`, from
:meth:`~kdlens.metrics.base.ExplanationMetric.nan_reasons`): a sample whose mask is empty scores NaN
in every metric, and so does an all-zero map wherever it would score something that says nothing
about the map (a perfect pointing game, since every pixel is a maximum; an attribution localisation
of 0; the "top" pixels of a rank or top-k metric picked by index order). AUC and the segmentation
test keep their score for a zero map: chance level (AUC 0.5, AP = mask share) and "no pixel
predicted" are what such a map is worth. ``quantus_compat=True`` scores those maps as Quantus 0.6
does, and its PointingGame counts an empty mask as a hit, as Quantus's.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlens.metrics.base import (
    EXPLANATION_METRICS,
    EvaluationContext,
    ExplanationMetric,
    NanReason,
    zero_maps,
)
from kdlens.metrics.functional import (
    average_precision,
    flatten,
    nan_where,
    roc_auc,
    topk_mask,
)


class LocalisationMetric(ExplanationMetric):
    requires = frozenset({"mask"})
    zero_map_undefined: ClassVar[bool] = True
    """Whether an all-zero map's score would be meaningless, so that it is NaN (ZERO_MAP)."""
    quantus_scores: ClassVar[frozenset[NanReason]] = frozenset({NanReason.ZERO_MAP})
    """Reasons kdlens adds that Quantus does not have: with ``quantus_compat`` those samples keep
    the score Quantus gives them."""

    def undefined_when(self, context: EvaluationContext) -> list[tuple[Tensor, NanReason]]:
        conditions = [(self.empty(context), NanReason.EMPTY_MASK)]
        if self.zero_map_undefined:
            conditions.append((zero_maps(context), NanReason.ZERO_MAP))
        return conditions

    def undefined(self, context: EvaluationContext) -> Tensor:
        """``(B,)``: where the score is NaN (any condition of :meth:`undefined_when`, except the
        :attr:`quantus_scores` ones under ``quantus_compat``)."""
        undefined = torch.zeros(len(context), dtype=torch.bool, device=context.device)
        for condition, reason in self.undefined_when(context):
            if not (self.quantus_compat and reason in self.quantus_scores):
                undefined |= condition
        return undefined

    def flat(self, context: EvaluationContext) -> tuple[Tensor, Tensor]:
        """The prepared attributions and the mask broadcast to them, both ``(B, N)``."""
        a = self.attributions(context)
        assert context.s is not None
        return flatten(a), flatten(context.s.expand_as(a))

    @staticmethod
    def empty(context: EvaluationContext) -> Tensor:
        assert context.s is not None
        return ~flatten(context.s).any(1)


def dilate(mask: Tensor, radius: int) -> Tensor:
    """Grow a boolean ``(B, 1, H, W)`` mask by every position within Euclidean ``radius``."""
    offsets = torch.arange(-radius, radius + 1, device=mask.device)
    disk = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).float()
    return F.conv2d(mask.float(), disk[None, None], padding=radius) > 0


@EXPLANATION_METRICS.register("pointing_game")
class PointingGame(LocalisationMetric):
    """Zhang et al. 2018: 1 if any maximum of ``a`` lies in the mask (grown by ``tolerance`` pixels,
    15 in the paper), else 0; with ``weighted``, a hit scores ``1 - mask area / image area``. NaN
    for an empty mask or an all-zero map (every pixel would be a maximum: a hit whatever the map).

    Quantus 0.6 differs: an empty mask and an all-zero map count as hits (``quantus_compat=True``
    does the same) and ``weighted=True`` crashes.
    """

    quantus_scores = frozenset({NanReason.ZERO_MAP, NanReason.EMPTY_MASK})

    tolerance: int = 0
    weighted: bool = False
    normalise: bool = True

    def compute(self, context: EvaluationContext) -> Tensor:
        assert context.s is not None
        a = self.attributions(context)
        mask = dilate(context.s, self.tolerance) if self.tolerance > 0 else context.s
        a, s = flatten(a), flatten(mask.expand_as(a))
        hit = ((a == a.amax(1, keepdim=True)) & s).any(1).double()
        if self.quantus_compat:
            hit = torch.where(self.empty(context), torch.ones_like(hit), hit)
        if self.weighted:
            hit = hit * (1 - flatten(context.s).double().mean(1))
        return nan_where(self.undefined(context), hit)


@EXPLANATION_METRICS.register("energy_pointing_game")
class EnergyPointingGame(LocalisationMetric):
    """Wang et al. 2020 (Score-CAM): the share of the positive attribution inside the mask,
    ``Σ_s a⁺ / Σ a⁺``; NaN when the mask is empty or ``a`` has no positive part (0/0; an all-zero
    map among them)."""

    def undefined_when(self, context: EvaluationContext) -> list[tuple[Tensor, NanReason]]:
        positive = flatten(self.attributions(context)).double().clamp(min=0)
        return [*super().undefined_when(context), (positive.sum(1) == 0, NanReason.NO_POSITIVE)]

    def compute(self, context: EvaluationContext) -> Tensor:
        a, s = self.flat(context)
        positive = a.double().clamp(min=0)
        return nan_where(self.undefined(context), (positive * s).sum(1) / positive.sum(1))


@EXPLANATION_METRICS.register("decoy_energy")
class DecoyEnergy(EnergyPointingGame):
    """The energy pointing game against a dataset's ``decoy_mask`` (a spurious, class-correlated cue,
    e.g. ``shapes`` with ``shortcut_kind: patch``): the share of the positive attribution on the decoy,
    ``Σ_decoy a⁺ / Σ a⁺``. Lower is better: a model that decides by the object puts little there."""

    mask_key = "decoy_mask"
    higher_is_better = False


@EXPLANATION_METRICS.register("attribution_localisation")
class AttributionLocalisation(LocalisationMetric):
    """Kohlbrenner et al. 2020: ``Σ_s a / (Σ a + 1e-9)`` on ``|a|`` (``abs=True``), NaN when the mask
    is empty or the ratio exceeds 1; ``positive_attributions`` clips ``a`` at 0 first; ``weighted``
    multiplies by the mask's share of the image. An all-zero map (or, with
    ``positive_attributions``, one without a positive part) is NaN, not 0/1e-9 = 0.

    Quantus 0.6 scores those maps 0 (``quantus_compat=True`` too), and its ``weighted=True`` divides
    the mask area by the size of the batch minus its first two samples (``x_batch[2:].size``)
    instead of by the image area.
    """

    quantus_scores = frozenset({NanReason.ZERO_MAP, NanReason.NO_POSITIVE})

    weighted: bool = False
    positive_attributions: bool = False
    abs: bool = True
    normalise: bool = True

    def _ratio(self, context: EvaluationContext) -> tuple[Tensor, Tensor]:
        """(the mass ratio, the attributions it was computed from), both per sample."""
        a, s = self.flat(context)
        a = a.double().clamp(min=0) if self.positive_attributions else a.double()
        return (a * s).sum(1) / (a.sum(1) + 1e-9), a

    def undefined_when(self, context: EvaluationContext) -> list[tuple[Tensor, NanReason]]:
        ratio, a = self._ratio(context)
        conditions = super().undefined_when(context)
        if self.positive_attributions:
            conditions.append((~a.any(1), NanReason.NO_POSITIVE))
        return [*conditions, (ratio > 1, NanReason.RATIO_ABOVE_ONE)]

    def compute(self, context: EvaluationContext) -> Tensor:
        ratio, _ = self._ratio(context)
        ratio = nan_where(self.undefined(context), ratio)
        if self.weighted:
            assert context.s is not None
            ratio = ratio * flatten(context.s).double().mean(1)
        return ratio


@EXPLANATION_METRICS.register("relevance_mass_accuracy")
class RelevanceMassAccuracy(LocalisationMetric):
    """Arras et al. 2022: ``Σ_s a / Σ a`` on the signed attribution (NaN for an all-zero map: 0/0)."""

    normalise: bool = True

    def compute(self, context: EvaluationContext) -> Tensor:
        a, s = self.flat(context)
        a = a.double()
        return nan_where(self.undefined(context), (a * s).sum(1) / a.sum(1))


@EXPLANATION_METRICS.register("relevance_rank_accuracy")
class RelevanceRankAccuracy(LocalisationMetric):
    """Arras et al. 2022: with K = mask size, the share of the K highest attributions inside the mask
    (ties broken towards lower indices). NaN for an all-zero map, whose "highest" attributions would
    be the first K pixels in index order (``quantus_compat=True`` scores it so, as Quantus)."""

    normalise: bool = True

    def compute(self, context: EvaluationContext) -> Tensor:
        a, s = self.flat(context)
        order = a.argsort(dim=1, descending=True, stable=True)
        k = s.sum(1, keepdim=True)
        hits = (s.gather(1, order) & (torch.arange(a.shape[1], device=a.device) < k)).sum(1)
        return nan_where(self.undefined(context), hits / k[:, 0])


@EXPLANATION_METRICS.register("top_k_intersection")
class TopKIntersection(LocalisationMetric):
    """Theiner et al. 2021: the share of the ``k`` highest attributions inside the mask (1000 at
    224 px); ``concept_influence`` divides by the mask's share of the features. NaN for an all-zero
    map, whose top ``k`` would be the first ``k`` pixels in index order (``quantus_compat=True``
    scores it so, as Quantus)."""

    k: int = 1000
    concept_influence: bool = False
    normalise: bool = True

    def compute(self, context: EvaluationContext) -> Tensor:
        a, s = self.flat(context)
        if self.k > a.shape[1]:
            raise ValueError(f"k={self.k} exceeds the {a.shape[1]} attribution features")
        score = (topk_mask(a, self.k) & s).double().sum(1) / self.k
        if self.concept_influence:
            score = score * a.shape[1] / s.sum(1)
        return nan_where(self.undefined(context), score)


@EXPLANATION_METRICS.register("auc")
class AUC(LocalisationMetric):
    """Fawcett 2006: ROC-AUC of the attribution as a score for the mask, ties as in scikit-learn;
    NaN when the mask is empty or covers everything. An all-zero map scores 0.5 (chance)."""

    zero_map_undefined = False
    normalise: bool = True

    def undefined_when(self, context: EvaluationContext) -> list[tuple[Tensor, NanReason]]:
        assert context.s is not None
        return [*super().undefined_when(context), (flatten(context.s).all(1), NanReason.FULL_MASK)]

    def compute(self, context: EvaluationContext) -> Tensor:
        a, s = self.flat(context)
        return roc_auc(a, s)


class SegmentationTest(LocalisationMetric):
    """The segmentation test (ImageNet-Segmentation protocol of Chefer et al. 2021): the attribution
    is binarised at its own mean and compared with the mask (the test's mAP is :class:`SegmentationAP`).
    An all-zero map predicts no pixel, and is scored so."""

    zero_map_undefined = False

    def compute(self, context: EvaluationContext) -> Tensor:
        a, s = self.flat(context)
        return nan_where(self.undefined(context), self.score(a > a.mean(1, keepdim=True), s))

    @abstractmethod
    def score(self, predicted: Tensor, s: Tensor) -> Tensor:
        """``(B,)`` scores of the binarised attributions ``predicted`` against the mask ``s``."""


@EXPLANATION_METRICS.register("segmentation_accuracy")
class SegmentationAccuracy(SegmentationTest):
    """Pixel accuracy of the binarised attribution."""

    def score(self, predicted: Tensor, s: Tensor) -> Tensor:
        return (predicted == s).double().mean(1)


@EXPLANATION_METRICS.register("segmentation_miou")
class SegmentationMIoU(SegmentationTest):
    """Mean of the foreground and background IoU of the binarised attribution (a class whose union
    is empty is left out of the mean)."""

    def score(self, predicted: Tensor, s: Tensor) -> Tensor:
        ious = []
        for p, t in ((predicted, s), (~predicted, ~s)):
            union = (p | t).sum(1)
            ious.append(nan_where(union == 0, (p & t).sum(1) / union.clamp(min=1)))
        return torch.stack(ious, 1).nanmean(1)


@EXPLANATION_METRICS.register("segmentation_ap")
class SegmentationAP(LocalisationMetric):
    """The segmentation test's AP: average precision of the (unbinarised) attribution against the
    mask, as scikit-learn's ``average_precision_score``; averaged over a dataset it is the mAP. An
    all-zero map scores the mask's share (chance)."""

    zero_map_undefined = False

    def compute(self, context: EvaluationContext) -> Tensor:
        a, s = self.flat(context)
        return average_precision(a, s)


@EXPLANATION_METRICS.register("segmentation_f1")
class SegmentationF1(SegmentationTest):
    """F1 of the binarised attribution against the mask."""

    def score(self, predicted: Tensor, s: Tensor) -> Tensor:
        true_positive = (predicted & s).sum(1)
        wrong = (predicted ^ s).sum(1)
        return 2 * true_positive / (2 * true_positive + wrong)
