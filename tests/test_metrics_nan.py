"""Undefined explanation scores: an all-zero map is NaN wherever its score would be meaningless
(a perfect pointing game, a localisation of 0, a top-k picked by index order), every NaN carries
its reason, and a summary row whose samples are all NaN says why. ``quantus_compat=True`` keeps
Quantus 0.6's scores for those maps (and its empty-mask hit in the pointing game)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_metrics import make_batch
from test_metrics_quantus import assert_parity, ours, reference

from kdlens.aggregate import aggregate, describe_missing
from kdlens.config import validate_data_config
from kdlens.data import build_data
from kdlens.metrics import (
    AUC,
    AttributionLocalisation,
    EnergyPointingGame,
    PointingGame,
    RelevanceMassAccuracy,
    RelevanceRankAccuracy,
    SegmentationAccuracy,
    SegmentationAP,
    SegmentationF1,
    SegmentationMIoU,
    TopKIntersection,
)
from kdlens.metrics.base import EvaluationContext, NanReason
from kdlens.metrics.explanation_evaluation import NAN_REASONS, aggregate_scores, evaluate_explanations
from kdlens.models import create_model

ZERO = 0  # the sample whose map is zeroed
EMPTY = -1  # make_batch's last sample has an empty mask, the one before a full one
FULL = -2

MEANINGLESS_FOR_A_ZERO_MAP = [
    PointingGame(),
    PointingGame(tolerance=2, weighted=True),
    EnergyPointingGame(),
    AttributionLocalisation(),
    AttributionLocalisation(positive_attributions=True),
    RelevanceMassAccuracy(),
    RelevanceRankAccuracy(),
    TopKIntersection(k=20),
    TopKIntersection(k=20, concept_influence=True),
]
SCORED_FOR_A_ZERO_MAP = [AUC(), SegmentationAccuracy(), SegmentationMIoU(), SegmentationF1(), SegmentationAP()]


@pytest.fixture(scope="module")
def batch() -> dict:
    b = make_batch()
    b["a"] = b["a"].clone()
    b["a"][ZERO] = 0
    return b


def context(b: dict) -> EvaluationContext:
    return EvaluationContext(b["model"], b["x"], b["y"], b["a"], b["s"])


@pytest.mark.parametrize("metric", MEANINGLESS_FOR_A_ZERO_MAP, ids=repr)
def test_a_zero_map_scores_nan_with_its_reason(batch: dict, metric) -> None:
    scores = ours(metric, batch, batch["a"])
    assert torch.isnan(scores[ZERO]) and torch.isnan(scores[EMPTY])
    assert not torch.isnan(scores[1:FULL]).any()
    reasons = metric.nan_reasons(context(batch), scores)
    assert reasons[ZERO] is NanReason.ZERO_MAP and reasons[EMPTY] is NanReason.EMPTY_MASK
    assert all(r is None for r in reasons[1:FULL])


def test_a_zero_map_no_longer_wins_the_pointing_game(batch: dict) -> None:
    zero = {**batch, "a": torch.zeros_like(batch["a"])}
    assert torch.isnan(ours(PointingGame(), zero, zero["a"])).all()
    # Quantus (and compat) count it as a hit wherever the mask is not empty, and an empty mask too.
    assert ours(PointingGame(quantus_compat=True), zero, zero["a"]).tolist() == [1.0] * len(batch["x"])


@pytest.mark.parametrize("metric", SCORED_FOR_A_ZERO_MAP, ids=repr)
def test_auc_and_the_segmentation_test_score_a_zero_map(batch: dict, metric) -> None:
    scores = ours(metric, batch, batch["a"])
    assert not torch.isnan(scores[ZERO])
    if isinstance(metric, AUC):
        assert scores[ZERO].item() == 0.5
        assert metric.nan_reasons(context(batch), scores)[FULL] is NanReason.FULL_MASK


def test_other_reasons(batch: dict) -> None:
    negative = {**batch, "a": -batch["a"].abs() - 0.1}
    scores = ours(EnergyPointingGame(), negative, negative["a"])
    reasons = EnergyPointingGame().nan_reasons(context(negative), scores)
    assert reasons[:EMPTY] == [NanReason.NO_POSITIVE] * (len(scores) - 1) and reasons[EMPTY] is NanReason.EMPTY_MASK
    metric = AttributionLocalisation(positive_attributions=True, abs=False)
    assert metric.nan_reasons(context(negative), ours(metric, negative, negative["a"]))[0] is NanReason.NO_POSITIVE
    # A NaN no declared condition explains falls back to the zero map, then to "undefined".
    nan = torch.full((len(batch["x"]),), math.nan, dtype=torch.float64)
    reasons = AUC().nan_reasons(context(batch), nan)
    assert reasons[ZERO] is NanReason.ZERO_MAP and reasons[1] is NanReason.UNDEFINED


# --- Quantus parity in compat mode, zero map included -------------------------------------------

COMPAT = [
    ("PointingGame", PointingGame(quantus_compat=True), {}),
    ("AttributionLocalisation", AttributionLocalisation(quantus_compat=True), {}),
    ("RelevanceMassAccuracy", RelevanceMassAccuracy(quantus_compat=True), {}),
    ("RelevanceRankAccuracy", RelevanceRankAccuracy(quantus_compat=True), {}),
    ("TopKIntersection", TopKIntersection(k=20, quantus_compat=True), {"k": 20}),
    ("AUC", AUC(quantus_compat=True), {}),
]


@pytest.fixture(scope="module")
def quantus():
    return pytest.importorskip("quantus")


@pytest.mark.filterwarnings("ignore::UserWarning:quantus", "ignore::RuntimeWarning:quantus")
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
@pytest.mark.parametrize(("name", "metric", "kwargs"), COMPAT, ids=lambda v: v if isinstance(v, str) else "")
def test_compat_mode_keeps_quantus_scores_for_zero_maps_and_empty_masks(quantus, batch, name, metric, kwargs, monkeypatch) -> None:
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)  # Quantus 0.6 calls np.trapz, gone in NumPy 2.4
    assert_parity(name, ours(metric, batch, batch["a"]), reference(quantus, name, batch, batch["a"], **kwargs))


# --- reasons in the per-sample rows and the summary ---------------------------------------------


def test_summary_notes_say_why_a_metric_has_no_score() -> None:
    rows = [
        {"model": "m", "explainer": "e", "pointing_game": math.nan, "auc": 0.5, NAN_REASONS: "pointing_game: all-zero map"},
        {"model": "m", "explainer": "e", "pointing_game": math.nan, "auc": math.nan,
         NAN_REASONS: "pointing_game: all-zero map; auc: empty mask"},
        {"model": "m", "explainer": "f", "pointing_game": math.nan, "auc": 0.7, NAN_REASONS: "pointing_game: empty mask"},
        {"model": "m", "explainer": "f", "pointing_game": 1.0, "auc": 0.6, NAN_REASONS: ""},
    ]
    notes = {(r["explainer"], r["metric"]): r["note"] for r in aggregate_scores(rows, ["pointing_game", "auc"])}
    assert notes == {
        ("e", "pointing_game"): "all maps are zero",
        ("e", "auc"): "empty mask ×1",
        ("f", "pointing_game"): "empty mask ×1",
        ("f", "auc"): "",
    }
    mixed = describe_missing(aggregate([math.nan] * 3), ["empty mask", "all-zero map", "empty mask"])
    assert mixed == "no value: empty mask ×2, all-zero map ×1"
    every = {r.value: r.for_every_sample for r in NanReason}
    assert describe_missing(aggregate([math.nan] * 2), ["empty mask"] * 2, every) == "no sample has a mask (every mask is empty)"


def test_evaluating_a_model_whose_maps_are_all_zero_says_so() -> None:
    config = validate_data_config({"name": "shapes", "num_classes": 3, "image_size": 16, "train_size": 8,
                                   "test_size": 6, "augment": False})
    bundle = build_data(config)
    torch.manual_seed(0)
    model = create_model("resnet8", 3).eval()
    with torch.no_grad():
        model.fc.weight.zero_()  # constant logits: every gradient, so every saliency map, is zero
    metrics = {"pointing_game": PointingGame(), "top_k_intersection": TopKIntersection(k=5), "auc": AUC()}
    results = evaluate_explanations({"zeroed": model}, bundle.test, ["saliency"], metrics)
    assert all(math.isnan(row["pointing_game"]) for row in results.scores)
    assert all("pointing_game: all-zero map" in row[NAN_REASONS] for row in results.scores)
    summary = {row["metric"]: row for row in aggregate_scores(results.scores, list(metrics))}
    assert summary["pointing_game"]["n"] == 0 and summary["pointing_game"]["note"] == "all maps are zero"
    assert summary["top_k_intersection"]["note"] == "all maps are zero"
    assert summary["auc"]["n"] == 6 and summary["auc"]["mean"] == 0.5 and summary["auc"]["note"] == ""
