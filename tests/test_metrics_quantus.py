"""Parity with Quantus 0.6: every metric kdlens shares with Quantus gives Quantus's values within
1e-5 on the same model, inputs, attributions and masks (with ``quantus_compat=True`` where kdlens
deliberately differs, and the same seed for the random draws), plus Quantus's known defects that
kdlens documents.

Quantus gets x in float64 so its NumPy arithmetic is exact; the model sees the same float32 values
as kdlens's, and kdlens runs one batch per forward (``max_batch=B``) as Quantus does, so even the
forward passes are bit-identical. Run with ``-s`` to see every metric's largest difference.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from test_metrics import input_x_gradient, make_batch
from torch import Tensor

from kdlens.metrics import (
    AUC,
    MPRT,
    ROAD,
    AttributionLocalisation,
    AvgSensitivity,
    Complexity,
    EffectiveComplexity,
    FaithfulnessCorrelation,
    FaithfulnessEstimate,
    Infidelity,
    LocalLipschitzEstimate,
    MaxSensitivity,
    Monotonicity,
    MonotonicityCorrelation,
    PixelFlipping,
    PointingGame,
    RandomLogit,
    RegionPerturbation,
    RelevanceMassAccuracy,
    RelevanceRankAccuracy,
    Selectivity,
    Sparseness,
    TopKIntersection,
    run_quantus_metric,
)
from kdlens.metrics.base import EvaluationContext

TOLERANCE = 1e-5
SEED = 7
pytestmark = [  # Quantus and scikit-learn warn about the empty and full masks these tests use on purpose
    pytest.mark.filterwarnings("ignore::UserWarning:quantus"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning:quantus"),
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning"),
]


@pytest.fixture(autouse=True)
def numpy_trapz(monkeypatch: pytest.MonkeyPatch) -> None:
    """Quantus 0.6 calls np.trapz, which NumPy 2.4 removed."""
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)


@pytest.fixture(scope="module")
def quantus():
    return pytest.importorskip("quantus")


@pytest.fixture(scope="module")
def batch() -> dict:
    b = make_batch()
    # Faithfulness ranks features of x: a full-channel random attribution has no ties.
    b["a_full"] = torch.randn(b["x"].shape, generator=torch.Generator().manual_seed(1))
    return b


def assert_parity(name: str, ours: Tensor, reference: Tensor) -> None:
    ours, reference = ours.double(), reference.double()
    assert ours.shape == reference.shape, name
    assert torch.equal(ours.isnan(), reference.isnan()), f"{name}: NaN at different samples"
    difference = (ours - reference).abs().nan_to_num().max().item()
    print(f"parity {name}: max |kdlens - quantus| = {difference:.2e}")
    assert difference <= TOLERANCE, name


def quantus_metric(quantus, name: str, **kwargs):
    return getattr(quantus, name)(disable_warnings=True, **kwargs)


def reference(quantus, name: str, b: dict, a: Tensor, explain: bool = False, **kwargs) -> Tensor:
    """Quantus's ``name`` metric built with ``kwargs`` (``softmax`` goes to the call, as in Quantus)."""
    call = {"softmax": kwargs.pop("softmax")} if "softmax" in kwargs else {}
    np.random.seed(SEED)  # Quantus draws from NumPy's global generator
    metric = quantus_metric(quantus, name, **kwargs)
    return run_quantus_metric(
        metric, b["model"], b["x"].double(), b["y"], a, b["s"], input_x_gradient if explain else None, **call
    )  # type: ignore[return-value]


def ours(metric: Callable, b: dict, a: Tensor) -> Tensor:
    return metric(b["model"], b["x"], b["y"], a, b["s"], input_x_gradient, max_batch=len(b["x"]))


# --- localisation and complexity --------------------------------------------------------------

LOCALISATION = [
    ("AttributionLocalisation", AttributionLocalisation(quantus_compat=True), {}),
    ("RelevanceMassAccuracy", RelevanceMassAccuracy(quantus_compat=True), {}),
    ("RelevanceRankAccuracy", RelevanceRankAccuracy(quantus_compat=True), {}),
    ("TopKIntersection", TopKIntersection(k=20, quantus_compat=True), {"k": 20}),
    ("TopKIntersection", TopKIntersection(k=20, concept_influence=True), {"k": 20, "concept_influence": True}),
    ("AUC", AUC(quantus_compat=True), {}),
    ("AUC", AUC(abs=True), {"abs": True}),
]


@pytest.mark.parametrize(("name", "metric", "kwargs"), LOCALISATION, ids=lambda v: v if isinstance(v, str) else "")
def test_localisation_parity(quantus, batch: dict, name: str, metric: Callable, kwargs: dict) -> None:
    assert_parity(name, ours(metric, batch, batch["a"]), reference(quantus, name, batch, batch["a"], **kwargs))


def test_pointing_game_parity_except_empty_mask(quantus, batch: dict) -> None:
    kdlens = ours(PointingGame(), batch, batch["a"])
    quantus_scores = reference(quantus, "PointingGame", batch, batch["a"])
    assert_parity("PointingGame", kdlens[:-1], quantus_scores[:-1])
    assert torch.isnan(kdlens[-1]) and quantus_scores[-1] == 1  # Quantus: an empty mask is a hit
    with pytest.raises(Exception):  # noqa: B017  (Quantus's weighted variant crashes)
        reference(quantus, "PointingGame", batch, batch["a"], weighted=True)


def test_attribution_localisation_weighted_area(quantus, batch: dict) -> None:
    plain = ours(AttributionLocalisation(), batch, batch["a"])
    mask_share = batch["s"].flatten(1).mean(1).double()
    assert_parity(
        "AttributionLocalisation(weighted)",
        ours(AttributionLocalisation(weighted=True), batch, batch["a"]),
        plain * mask_share,
    )
    # Quantus divides the mask area by x_batch[2:].size: (B - 2)·C·H·W elements.
    x = batch["x"]
    wrong_share = batch["s"].flatten(1).sum(1).double() / x[2:].numel()
    assert_parity(
        "Quantus AttributionLocalisation(weighted)",
        reference(quantus, "AttributionLocalisation", batch, batch["a"], weighted=True),
        plain * wrong_share,
    )


@pytest.mark.parametrize(
    ("name", "metric"),
    [
        ("Sparseness", Sparseness(quantus_compat=True)),
        ("Complexity", Complexity()),
        ("Complexity", Complexity(quantus_compat=True)),
        ("EffectiveComplexity", EffectiveComplexity(quantus_compat=True)),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_complexity_parity(quantus, batch: dict, name: str, metric: Callable) -> None:
    assert_parity(name, ours(metric, batch, batch["a"]), reference(quantus, name, batch, batch["a"]))


# --- faithfulness -------------------------------------------------------------------------------

FAITHFULNESS = [
    (
        "PixelFlipping",
        PixelFlipping(features_in_step=64, quantus_compat=True),
        {"features_in_step": 64, "return_auc_per_sample": True},
    ),
    (
        "RegionPerturbation",
        RegionPerturbation(patch_size=4, regions_evaluation=10),
        {"patch_size": 4, "regions_evaluation": 10},
    ),
    ("RegionPerturbation", RegionPerturbation(patch_size=5, order="lerf"), {"patch_size": 5, "order": "lerf"}),
    (
        "RegionPerturbation",
        RegionPerturbation(patch_size=4, order="random", seed=SEED, quantus_compat=True),
        {"patch_size": 4, "order": "random"},
    ),
    ("Selectivity", Selectivity(patch_size=4), {"patch_size": 4}),
    ("FaithfulnessEstimate", FaithfulnessEstimate(features_in_step=32), {"features_in_step": 32}),
    (
        "FaithfulnessEstimate",
        FaithfulnessEstimate(features_in_step=64, softmax=True, perturb_baseline="white"),
        {"features_in_step": 64, "perturb_baseline": "white", "softmax": True},
    ),
    (
        "FaithfulnessCorrelation",
        FaithfulnessCorrelation(nr_runs=20, subset_size=64, seed=SEED, quantus_compat=True),
        {"nr_runs": 20, "subset_size": 64, "return_aggregate": False},
    ),
    (
        "MonotonicityCorrelation",
        MonotonicityCorrelation(nr_samples=3, features_in_step=128, seed=SEED, quantus_compat=True),
        {"nr_samples": 3, "features_in_step": 128},
    ),
    (
        "MonotonicityCorrelation",
        MonotonicityCorrelation(nr_samples=2, features_in_step=64, perturb_baseline="black"),
        {"nr_samples": 2, "features_in_step": 64, "perturb_baseline": "black"},
    ),
    ("Infidelity", Infidelity(perturb_patch_sizes=(4, 8)), {"perturb_patch_sizes": [4, 8], "n_perturb_samples": 2}),
]


@pytest.mark.parametrize(("name", "metric", "kwargs"), FAITHFULNESS, ids=lambda v: v if isinstance(v, str) else "")
def test_faithfulness_parity(quantus, batch: dict, name: str, metric: Callable, kwargs: dict) -> None:
    expected = reference(quantus, name, batch, batch["a_full"], **kwargs)
    if expected.ndim == 2:  # Quantus returns the curves
        kdlens = metric.curve(batch["model"], batch["x"], batch["y"], batch["a_full"], max_batch=len(batch["x"]))  # type: ignore[attr-defined]
    else:
        kdlens = ours(metric, batch, batch["a_full"])
    assert_parity(name, kdlens, expected)


def test_pixel_flipping_curve_parity(quantus, batch: dict) -> None:
    curve = PixelFlipping(features_in_step=64).curve(
        batch["model"], batch["x"], batch["y"], batch["a_full"], max_batch=8
    )
    assert_parity(
        "PixelFlipping curve", curve, reference(quantus, "PixelFlipping", batch, batch["a_full"], features_in_step=64)
    )


def test_quantus_monotonicity_never_changes_its_images(quantus, batch: dict) -> None:
    """Quantus replaces the baseline by the baseline, so it scores 1 whatever the attribution;
    kdlens puts the input's features back and tells monotone from non-monotone curves."""
    assert (reference(quantus, "Monotonicity", batch, batch["a_full"], features_in_step=128) == 1).all()
    kdlens = ours(Monotonicity(features_in_step=128), batch, batch["a_full"])
    assert set(kdlens.tolist()) <= {0.0, 1.0} and kdlens.min() == 0


def test_road_parity_on_single_channel_images(quantus) -> None:
    b = make_batch(channels=1)
    percentages = [5, 30, 60, 95]
    np.random.seed(SEED)
    expected = run_quantus_metric(
        quantus_metric(quantus, "ROAD", percentages=percentages), b["model"], b["x"].double(), b["y"], b["a"]
    )
    curve = ROAD(percentages=percentages, seed=SEED, quantus_compat=True).curve(
        b["model"], b["x"], b["y"], b["a"], max_batch=8
    )
    assert_parity("ROAD", curve.mean(0), torch.stack(list(expected.values())))  # type: ignore[union-attr]
    # Quantus keeps only its first batch; with 3-channel images its pixel indices overflow.
    np.random.seed(SEED)
    first_batch = run_quantus_metric(
        quantus_metric(quantus, "ROAD", percentages=percentages),
        b["model"],
        b["x"].double(),
        b["y"],
        b["a"],
        batch_size=4,
    )
    assert_parity("ROAD first batch", curve[:4].mean(0), torch.stack(list(first_batch.values())))  # type: ignore[union-attr]
    rgb = make_batch()
    with pytest.raises(IndexError):
        run_quantus_metric(
            quantus_metric(quantus, "ROAD", percentages=percentages), rgb["model"], rgb["x"], rgb["y"], rgb["a"]
        )


# --- robustness and randomisation --------------------------------------------------------------

ROBUSTNESS = [
    (
        "MaxSensitivity",
        MaxSensitivity(nr_samples=4, lower_bound=0.1, seed=SEED, quantus_compat=True),
        {"nr_samples": 4, "lower_bound": 0.1},
    ),
    (
        "AvgSensitivity",
        AvgSensitivity(nr_samples=4, lower_bound=0.1, seed=SEED, quantus_compat=True),
        {"nr_samples": 4, "lower_bound": 0.1},
    ),
    ("LocalLipschitzEstimate", LocalLipschitzEstimate(nr_samples=4, seed=SEED, quantus_compat=True), {"nr_samples": 4}),
    ("RandomLogit", RandomLogit(seed=SEED, quantus_compat=True), {"num_classes": 10, "seed": SEED}),
]


@pytest.mark.parametrize(("name", "metric", "kwargs"), ROBUSTNESS, ids=lambda v: v if isinstance(v, str) else "")
def test_robustness_and_random_logit_parity(quantus, batch: dict, name: str, metric: Callable, kwargs: dict) -> None:
    # Three draws per forward: kdlens's chunks of whole draws must not change Quantus's order.
    kdlens = metric(batch["model"], batch["x"], batch["y"], batch["a"], explain_fn=input_x_gradient, max_batch=24)
    assert_parity(name, kdlens, reference(quantus, name, batch, batch["a"], explain=True, **kwargs))


def test_mprt_parity_per_layer(quantus, batch: dict) -> None:
    context = EvaluationContext(batch["model"], batch["x"], batch["y"], batch["a"], explain_fn=input_x_gradient)
    kdlens = MPRT().layerwise(context)
    expected = reference(quantus, "MPRT", batch, batch["a"], explain=True)
    original = expected.pop("original")  # type: ignore[union-attr]
    assert list(kdlens) == list(expected)  # type: ignore[arg-type]
    for layer, scores in kdlens.items():
        assert_parity(f"MPRT {layer}", scores, expected[layer])  # type: ignore[index]
    # Quantus's "average" also counts the unrandomised model's correlation; kdlens's does not.
    average = reference(quantus, "MPRT", batch, batch["a"], explain=True, return_average_correlation=True)
    assert_parity("MPRT Quantus average", average, torch.stack([original, *expected.values()]).mean(0))  # type: ignore[union-attr]
    assert_parity("MPRT mean", MPRT().evaluate(context), torch.stack(list(expected.values())).mean(0))  # type: ignore[union-attr]
