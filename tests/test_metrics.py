"""Explanation metrics: hand-computed cases, the statistics against scipy/sklearn/skimage, the
documented deviations from Quantus (empty mask -> NaN, a sample's score independent of its
batch-mates), forward-pass sharing between metrics, RISE's reference loop, calibration and
teacher–student agreement. Parity with Quantus itself is in test_metrics_quantus.py."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import Tensor, nn
from torchmetrics.functional.classification import multiclass_calibration_error

from kdlens.metrics import (
    EXPLANATION_METRICS,
    METRIC_PRESETS,
    AttributionLocalisation,
    Complexity,
    Deletion,
    EffectiveComplexity,
    EnergyPointingGame,
    Insertion,
    PointingGame,
    RegionPerturbation,
    SegmentationAccuracy,
    SegmentationAP,
    SegmentationF1,
    SegmentationMIoU,
    Selectivity,
    Sparseness,
    create_metrics,
    evaluate_metrics,
    explanation_agreement,
    predictive_entropy,
    reliability_diagram,
)
from kdlens.metrics.base import EvaluationContext
from kdlens.metrics.calibration import expected_calibration_error
from kdlens.metrics.functional import (
    average_precision,
    pearson,
    roc_auc,
    spearman,
    ssim,
)
from kdlens.metrics.road import linear_imputation
from kdlens.models import create_model

SIZE = 16


def input_x_gradient(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """The explain_fn of these tests: input × gradient of the class logit, summed over channels."""
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).gather(1, y[:, None]).sum(), x)
    return (grad * x).sum(1, keepdim=True).detach()


def make_batch(n: int = 8, channels: int = 3, seed: int = 0) -> dict:
    """A resnet8 at 16 px, inputs, its own predictions as classes, input×gradient attributions and
    masks: rectangles, one covering everything and one empty (the last sample)."""
    torch.manual_seed(seed)
    model = create_model("resnet8", 10, channels).eval()
    x = torch.rand(n, channels, SIZE, SIZE)
    with torch.no_grad():
        y = model(x).argmax(1)
    s = torch.zeros(n, 1, SIZE, SIZE)
    for i in range(n - 2):
        top, left = (3 * i) % 9, (5 * i) % 7
        s[i, :, top : top + 6, left : left + 8] = 1
    s[n - 2] = 1
    return {"model": model, "x": x, "y": y, "a": input_x_gradient(model, x, y), "s": s}


@pytest.fixture(scope="module")
def batch() -> dict:
    return make_batch()


# Cheap settings for every registered metric; RNG-free ones are checked for batch independence.
CHEAP = {
    "top_k_intersection": {"k": 20},
    "pixel_flipping": {"features_in_step": 64},
    "region_perturbation": {"patch_size": 4, "regions_evaluation": 6},
    "selectivity": {"patch_size": 4},
    "faithfulness_estimate": {"features_in_step": 64},
    "faithfulness_correlation": {"nr_runs": 5, "subset_size": 32},
    "monotonicity": {"features_in_step": 128},
    "monotonicity_correlation": {"nr_samples": 2, "features_in_step": 128},
    "road": {"percentages": (10, 50, 90)},
    "infidelity": {"perturb_patch_sizes": (8,)},
    "max_sensitivity": {"nr_samples": 2},
    "avg_sensitivity": {"nr_samples": 2},
    "local_lipschitz_estimate": {"nr_samples": 2},
    "mprt": {"reduction": "last", "layer_order": "independent"},
    "positive_perturbation": {"fractions": (0.0, 0.3, 0.6)},
    "negative_perturbation": {"fractions": (0.0, 0.3, 0.6)},
}
RANDOM = {
    "faithfulness_correlation",
    "monotonicity_correlation",
    "road",
    "max_sensitivity",
    "avg_sensitivity",
    "local_lipschitz_estimate",
    "random_logit",
}
MASK_METRICS = set(METRIC_PRESETS["localisation"])


def cheap(name: str) -> object:
    return EXPLANATION_METRICS[name](**CHEAP.get(name, {}))


def run(metric: object, b: dict, **kwargs: object) -> Tensor:
    return metric(b["model"], b["x"], b["y"], b["a"], b["s"], input_x_gradient, **kwargs)  # type: ignore[operator]


# --- statistics against their reference implementations -------------------------------------


def test_ranks_correlations_auc_and_ap_match_scipy_and_sklearn_with_ties() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (6, 40), generator=g).double()  # many ties
    other = torch.randn(6, 40, generator=g, dtype=torch.float64)
    labels = torch.rand(6, 40, generator=g) < 0.3
    for i in range(6):
        a, b, t = scores[i].numpy(), other[i].numpy(), labels[i].numpy()
        assert spearman(scores, other)[i].item() == pytest.approx(scipy.stats.spearmanr(a, b)[0], abs=1e-12)
        assert pearson(scores, other)[i].item() == pytest.approx(scipy.stats.pearsonr(a, b)[0], abs=1e-12)
        assert roc_auc(scores, labels)[i].item() == pytest.approx(roc_auc_score(t, a), abs=1e-12)
        assert average_precision(scores, labels)[i].item() == pytest.approx(average_precision_score(t, a), abs=1e-12)
    assert torch.isnan(pearson(torch.ones(1, 40), other[:1])).all()
    assert torch.isnan(roc_auc(scores[:1], torch.ones(1, 40, dtype=torch.bool))).all()
    assert torch.isnan(average_precision(scores[:1], torch.zeros(1, 40, dtype=torch.bool))).all()


def test_ssim_matches_skimage_per_channel_and_flattened() -> None:
    g = torch.Generator().manual_seed(1)
    a, b = (
        torch.randn(3, 2, 12, 10, generator=g, dtype=torch.float64),
        torch.randn(3, 2, 12, 10, generator=g, dtype=torch.float64),
    )
    for i in range(3):
        joint = np.concatenate([a[i].numpy().ravel(), b[i].numpy().ravel()])
        data_range = joint.max() - joint.min()
        per_channel = structural_similarity(a[i].numpy(), b[i].numpy(), channel_axis=0, data_range=data_range)
        flat = structural_similarity(a[i].numpy().ravel(), b[i].numpy().ravel(), data_range=data_range)
        assert ssim(a, b)[i].item() == pytest.approx(per_channel, abs=1e-12)
        assert ssim(a, b, flat=True)[i].item() == pytest.approx(flat, abs=1e-12)


# --- hand-computed cases ------------------------------------------------------------------------


def one_map(values: list[list[float]]) -> Tensor:
    return torch.tensor(values, dtype=torch.float32)[None, None]


def test_gini_entropy_and_effective_complexity_of_known_maps() -> None:
    one_hot, uniform = one_map([[0, 0], [0, 1]]), one_map([[1, 1], [1, 1]])
    x = torch.zeros(1, 1, 2, 2)
    # One-hot: Σ(2k − N − 1)·a_(k) / (N Σa) = 3 / 4 (up to the 1e-7 Quantus adds); uniform: 0.
    assert Sparseness()(None, x, None, one_hot).item() == pytest.approx(0.75, abs=1e-6)
    assert Sparseness()(None, x, None, uniform).item() == pytest.approx(0.0, abs=1e-9)
    assert Complexity()(None, x, None, uniform).item() == pytest.approx(np.log(4), abs=1e-9)
    assert Complexity()(None, x, None, one_hot).item() == pytest.approx(0.0, abs=1e-9)
    assert EffectiveComplexity(eps=0.5)(None, x, None, one_map([[0.2, 0.6], [1.0, -0.9]])).item() == 3


def test_pointing_game_tolerance_and_weighting() -> None:
    a = one_map([[9, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    s = one_map([[0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])  # 3 px from the maximum
    x = torch.zeros(1, 1, 4, 4)
    assert PointingGame()(None, x, None, a, s).item() == 0
    assert PointingGame(tolerance=2)(None, x, None, a, s).item() == 0
    assert PointingGame(tolerance=3)(None, x, None, a, s).item() == 1
    assert PointingGame(tolerance=3, weighted=True)(None, x, None, a, s).item() == pytest.approx(15 / 16)


def test_localisation_ratios_and_segmentation_test_by_hand() -> None:
    a = one_map([[1, -1], [3, 0]])
    s = one_map([[1, 0], [0, 0]])
    x = torch.zeros(1, 1, 2, 2)
    assert EnergyPointingGame()(None, x, None, a, s).item() == pytest.approx(1 / 4)
    assert AttributionLocalisation()(None, x, None, a, s).item() == pytest.approx(1 / 5)
    assert AttributionLocalisation(weighted=True)(None, x, None, a, s).item() == pytest.approx(1 / 5 * 1 / 4)
    # Binarised at the mean 0.75: predicted {(0,0), (1,0)}, mask {(0,0)} -> TP 1, FP 1, FN 0, TN 2.
    assert SegmentationAccuracy()(None, x, None, a, s).item() == pytest.approx(3 / 4)
    assert SegmentationF1()(None, x, None, a, s).item() == pytest.approx(2 / 3)
    assert SegmentationMIoU()(None, x, None, a, s).item() == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert SegmentationAP()(None, x, None, a, s).item() == pytest.approx(
        average_precision_score([1, 0, 0, 0], [1, -1, 3, 0])
    )


# --- documented deviations from Quantus ---------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MASK_METRICS))
def test_empty_mask_gives_nan_and_others_do_not(name: str, batch: dict) -> None:
    scores = run(cheap(name), batch)
    assert torch.isnan(scores[-1])
    assert not torch.isnan(scores[:-2]).any()


@pytest.mark.parametrize("name", sorted(set(EXPLANATION_METRICS) - RANDOM))
def test_score_does_not_depend_on_batch_mates(name: str, batch: dict) -> None:
    metric = cheap(name)
    whole = run(metric, batch)
    permutation = torch.tensor([5, 2, 7, 0, 3, 6, 1, 4])
    permuted = run(metric, {k: (v[permutation] if isinstance(v, Tensor) else v) for k, v in batch.items()})
    halves = [
        run(metric, {k: (v[part] if isinstance(v, Tensor) else v) for k, v in batch.items()})
        for part in (slice(0, 3), slice(3, 8))
    ]
    torch.testing.assert_close(permuted, whole[permutation], equal_nan=True, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(halves), whole, equal_nan=True, atol=1e-5, rtol=1e-5)


def test_batch_wide_normalisation_is_only_in_compat_mode(batch: dict) -> None:
    a = batch["a"].clone()
    a[0] *= 1e-3  # a sample far below its batch-mates' scale
    x = batch["x"]
    alone = EffectiveComplexity(eps=1e-3)(None, x[:1], None, a[:1])
    assert EffectiveComplexity(eps=1e-3)(None, x, None, a)[0] == alone
    assert EffectiveComplexity(eps=1e-3, quantus_compat=True)(None, x, None, a)[0] < alone


# --- engine -------------------------------------------------------------------------------------


class CountingModel(nn.Module):
    """Counts the images forwarded."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.images = 0

    def forward(self, x: Tensor) -> Tensor:
        self.images += len(x)
        return self.model(x)


def test_metrics_of_one_call_share_forward_passes(batch: dict) -> None:
    counting = CountingModel(batch["model"])
    n = len(batch["x"])
    metrics = {"rp": RegionPerturbation(patch_size=4, regions_evaluation=6), "sel": Selectivity(patch_size=4)}
    together = evaluate_metrics(metrics, counting, batch["x"], batch["y"], batch["a"])
    assert counting.images == n + 16 * n  # the clean pass, then 16 patches once for both
    torch.testing.assert_close(together["rp"], metrics["rp"](batch["model"], batch["x"], batch["y"], batch["a"]))

    counting.images = 0
    thesis = create_metrics(
        "thesis",
        {
            "top_k_intersection": {"k": 20},
            "faithfulness_estimate": {"features_in_step": 64},
            "monotonicity_correlation": {"features_in_step": 128, "nr_samples": 3},
        },
    )
    scores = evaluate_metrics(thesis, counting, batch["x"], batch["y"], batch["a"], batch["s"])
    assert counting.images == n + 12 * n + 6 * 3 * n  # clean + FE groups + MC groups × draws
    assert set(scores) == set(METRIC_PRESETS["thesis"]) and all(v.shape == (n,) for v in scores.values())


def test_scores_do_not_depend_on_the_chunk_size(batch: dict) -> None:
    for name in ("pixel_flipping", "monotonicity_correlation", "avg_sensitivity", "road", "insertion"):
        metric = cheap(name)
        torch.testing.assert_close(
            run(metric, batch, max_batch=3), run(metric, batch, max_batch=1000), atol=1e-5, rtol=1e-5
        )


def test_seeded_metrics_are_reproducible_and_leave_global_rng_alone(batch: dict) -> None:
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    first = run(EXPLANATION_METRICS["faithfulness_correlation"](nr_runs=4, subset_size=16, seed=3), batch)
    run(EXPLANATION_METRICS["mprt"](), batch)
    assert torch.rand(1) == expected
    torch.testing.assert_close(
        run(EXPLANATION_METRICS["faithfulness_correlation"](nr_runs=4, subset_size=16, seed=3), batch), first
    )


def test_model_mode_is_restored_and_requirements_are_checked(batch: dict) -> None:
    model = batch["model"].train()
    run(cheap("deletion"), batch)
    assert model.training
    model.eval()
    with pytest.raises(ValueError, match="mask"):
        PointingGame()(None, batch["x"], None, batch["a"])
    with pytest.raises(ValueError, match="explain_fn"):
        EXPLANATION_METRICS["mprt"]()(batch["model"], batch["x"], batch["y"], batch["a"])


def rise_reference(model: nn.Module, image: Tensor, saliency: Tensor, mode: str, step: int) -> list[float]:
    """RISE's CausalMetric.single_run (Petsiuk et al.), transcribed for one image."""
    from kdlens.metrics.sweep import rise_blur

    n = image.shape[2] * image.shape[3]
    with torch.no_grad():
        c = model(image).argmax(1).item()
    if mode == "del":
        start, finish = image.clone(), torch.zeros_like(image)
    else:
        start, finish = rise_blur(image), image.clone()
    n_steps = (n + step - 1) // step
    order = np.flip(np.argsort(saliency.reshape(-1).numpy(), kind="stable")).copy()
    scores = []
    for i in range(n_steps + 1):
        with torch.no_grad():
            scores.append(F.softmax(model(start), 1)[0, c].item())
        if i < n_steps:
            coords = order[step * i : step * (i + 1)]
            start.view(1, 3, n)[0, :, coords] = finish.view(1, 3, n)[0, :, coords]
    return scores


def test_deletion_and_insertion_follow_rise(batch: dict) -> None:
    model, x, y = batch["model"], batch["x"][:2], batch["y"][:2]
    a = batch["a"][:2] + torch.arange(SIZE * SIZE).view(1, 1, SIZE, SIZE) * 1e-6  # no ties
    for metric, mode in ((Deletion(pixels_per_step=24), "del"), (Insertion(pixels_per_step=24), "ins")):
        curves = metric.curve(model, x, y, a)
        for i in range(2):
            expected = rise_reference(model, x[i : i + 1], a[i], mode, 24)
            np.testing.assert_allclose(curves[i].numpy(), expected, atol=1e-6)
            auc = (sum(expected) - expected[0] / 2 - expected[-1] / 2) / (len(expected) - 1)
            assert metric(model, x[i : i + 1], y[i : i + 1], a[i : i + 1]).item() == pytest.approx(auc, abs=1e-6)


def test_linear_imputation_satisfies_road_equations() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 2, 9, 7, generator=g, dtype=torch.float64)
    mask = torch.rand(2, 1, 9, 7, generator=g) < 0.6
    filled = linear_imputation(x, mask)
    weights = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]], dtype=torch.float64)
    conv = lambda t: F.conv2d(t.reshape(-1, 1, 9, 7), weights[None, None], padding=1).view_as(t)  # noqa: E731
    degree = conv(torch.ones(1, 1, 9, 7, dtype=torch.float64))
    # Every imputed pixel is the weighted mean of its in-image neighbours; known pixels are kept.
    torch.testing.assert_close((filled * degree)[mask.expand_as(x)], conv(filled)[mask.expand_as(x)], atol=1e-7, rtol=0)
    torch.testing.assert_close(filled[~mask.expand_as(x)], x[~mask.expand_as(x)])


# --- calibration and agreement ------------------------------------------------------------------


def test_calibration_matches_torchmetrics() -> None:
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(500, 7, generator=g) * 2, torch.randint(0, 7, (500,), generator=g)
    for bins in (10, 20):
        expected = multiclass_calibration_error(logits.softmax(1), labels, num_classes=7, n_bins=bins).item()
        assert expected_calibration_error(logits, labels, bins) == pytest.approx(expected, abs=1e-6)
        assert reliability_diagram(logits, labels, bins).expected_calibration_error() == pytest.approx(
            expected, abs=1e-6
        )
    assert reliability_diagram(logits, labels).count.sum() == 500
    assert predictive_entropy(torch.zeros(2, 7)).tolist() == pytest.approx([np.log(7)] * 2)


def test_identical_explanations_agree_fully(batch: dict) -> None:
    a = batch["a"]
    for name, value in explanation_agreement(a, a).items():
        torch.testing.assert_close(value, torch.ones(len(a), dtype=torch.float64), msg=name)
    opposite = explanation_agreement(a, -a)
    assert (opposite["cosine"] < -0.99).all() and (opposite["spearman"] < -0.99).all()


def test_thesis_constants_scale_to_the_image_size():
    from kdlens.metrics.explanation_evaluation import thesis_overrides

    at_224 = thesis_overrides(3, 224, 224)
    assert at_224["faithfulness_estimate"]["features_in_step"] == 3136 and at_224["top_k_intersection"]["k"] == 1000
    at_32 = thesis_overrides(3, 32, 32)
    assert at_32["monotonicity_correlation"]["features_in_step"] * 48 == 3 * 32 * 32
    assert at_32["top_k_intersection"]["k"] == 20


def test_metric_parameters_are_keyword_only_fields_with_one_baseline_name() -> None:
    import dataclasses

    from kdlens.metrics import DecilePredictionDrop, FaithfulnessEstimate, MonotonicityCorrelation

    defaults = {f.name: f.default for f in dataclasses.fields(FaithfulnessEstimate)}
    assert defaults["baseline"] == "black" and defaults["softmax"] is False and defaults["normalise"] is True
    assert MonotonicityCorrelation().baseline == "uniform" and DecilePredictionDrop().baseline == 0.0
    assert FaithfulnessEstimate(perturb_baseline="white").baseline == "white"  # Quantus's name, mapped once
    with pytest.raises(TypeError):
        FaithfulnessEstimate(32)  # type: ignore[misc]


def test_random_draws_are_torch_streams_or_quantus_numpy_sequence() -> None:
    from kdlens.metrics.base import RandomDraws

    cpu = torch.device("cpu")
    draws = RandomDraws(3, cpu)
    assert torch.equal(draws.uniform((4,), stream=1), RandomDraws(3, cpu).uniform((4,), stream=1))
    assert not torch.equal(draws.uniform((4,), stream=0), draws.uniform((4,), stream=1))
    compat, state = RandomDraws(3, cpu, quantus_compat=True), np.random.RandomState(3)
    assert torch.equal(compat.uniform((2, 3), stream=5), torch.from_numpy(state.uniform(size=(2, 3))))
    assert torch.equal(compat.permutations(2, 5), torch.from_numpy(np.stack([state.permutation(5) for _ in range(2)])))
    assert torch.equal(compat.normal((3,), 0.5, 2.0), torch.from_numpy(state.normal(0.5, 2.0, size=3)))


def test_precision_sensitive_metrics_run_in_float32_in_a_reduced_precision_context() -> None:
    torch.manual_seed(0)
    model = create_model("resnet8", 10, 3).eval()
    x, a = torch.rand(4, 3, 32, 32), torch.rand(4, 1, 32, 32)
    y = model(x).argmax(1)
    metrics = {"monotonicity": EXPLANATION_METRICS["monotonicity"](features_in_step=384),
               "pixel_flipping": EXPLANATION_METRICS["pixel_flipping"](features_in_step=384)}
    assert metrics["monotonicity"].precision_sensitive and not metrics["pixel_flipping"].precision_sensitive
    full = evaluate_metrics(metrics, model, x, y, a)
    reduced = evaluate_metrics(metrics, model, x, y, a, precision=torch.bfloat16)
    assert torch.equal(reduced["monotonicity"], full["monotonicity"])
    assert not torch.equal(reduced["pixel_flipping"], full["pixel_flipping"])
    context = EvaluationContext(model, x, y, a, precision=torch.bfloat16)
    assert context.in_float32().precision is None and context.in_float32() is context.in_float32()
    assert EvaluationContext(model, x, y, a).in_float32().precision is None
