"""Faithfulness: does removing what the attribution calls important change the model's output?

Every metric here is one or two perturbation sweeps (:mod:`kdlens.metrics.sweep`) plus a little
arithmetic on the readouts. "Features" are the elements of x with the attribution broadcast to x's
channels (Quantus's convention); "pixels" are spatial positions with all their channels.

Parameters keep Quantus's names and defaults (``features_in_step``, ``softmax``, ``nr_samples``, ...)
and are declared once, in the class that introduces them (:class:`Perturbing`: ``baseline``;
:class:`ScoredPerturbation`: ``softmax``; :class:`FeatureSteps`: ``features_in_step``;
:class:`~kdlens.metrics.base.Seeded`: ``seed``). What replaces removed features is ``baseline``
everywhere; Quantus's name for it, ``perturb_baseline``, is accepted too. ``softmax`` picks the
class probability or the logit as the model's score.

Random draws come from :class:`~kdlens.metrics.base.RandomDraws`: torch streams of ``seed``, or
with ``quantus_compat=True`` ``numpy.random.RandomState(seed)`` in Quantus's order, so that seeding
NumPy's global generator with the same seed before a Quantus call reproduces its values.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import InitVar
from typing import ClassVar, Literal

import torch
from torch import Tensor

from kdlens.metrics.base import (
    EXPLANATION_METRICS,
    CurveMetric,
    EvaluationContext,
    ExplanationMetric,
    Seeded,
)
from kdlens.metrics.functional import flatten, pearson, spearman
from kdlens.metrics.sweep import (
    Baseline,
    Fill,
    RankedSweep,
    SubsetSweep,
    Unit,
    attribution_order,
    count_units,
    cumulative_steps,
    group_steps,
    group_sums,
    unit_order,
    unit_scores,
)

TENTHS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def normalised_auc(curve: Tensor) -> Tensor:
    """RISE's area under a curve of evenly spaced points, with the x-axis scaled to [0, 1]."""
    return torch.trapezoid(curve.double(), dim=1) / (curve.shape[1] - 1)


def n_features(context: EvaluationContext) -> int:
    return context.x[0].numel()


def ranked_attribution_sweep(
    context: EvaluationContext,
    metric: ExplanationMetric,
    unit: Unit,
    direction: Literal["descending", "ascending"],
    steps: Sequence[tuple[int, int, int]],
    fill: Fill | Baseline,
    insert: bool = False,
) -> tuple[RankedSweep, Tensor]:
    """A sweep over ``unit``s ranked by ``metric``'s attributions in ``direction``, and that ranking;
    ``fill`` is a :class:`Fill` or a deterministic baseline."""
    order, order_key = attribution_order(context, metric, unit, direction)
    if not isinstance(fill, Fill):
        fill = Fill.baseline(context.x, fill)
    sweep = RankedSweep(
        context.x, unit=unit, order=order, order_key=order_key, steps=steps, insert=insert, fill=fill
    )
    return sweep, order


def score_drops(context: EvaluationContext, sweep: RankedSweep | SubsetSweep, softmax: bool) -> Tensor:
    """``(B, steps)``: the clean score minus the score at each step of ``sweep``."""
    return context.clean().score(softmax)[:, None] - context.sweep(sweep).score(softmax)


def feature_attributions(metric: ExplanationMetric, context: EvaluationContext) -> Tensor:
    """``(B, n_features)`` the metric's attributions, broadcast to x's channels and flattened."""
    return unit_scores(metric.attributions(context), "feature", context.x.shape[1:])


class Perturbing(ExplanationMetric):
    """A metric that removes features: ``baseline`` is what replaces them."""

    baseline: Baseline = "black"
    """See :data:`~kdlens.metrics.sweep.Baseline`."""
    perturb_baseline: InitVar[Baseline | None] = None
    """Quantus's name for ``baseline``; when given it is the baseline (the one place the two meet)."""

    def __post_init__(self, perturb_baseline: Baseline | None) -> None:
        if perturb_baseline is not None:
            self.baseline = perturb_baseline


class ScoredPerturbation(Perturbing):
    """Quantus's faithfulness metrics: max-normalised attributions, and the explained class's
    softmax probability (``softmax``) or logit as the score."""

    softmax: bool = True
    normalise: bool = True


class FeatureSteps(ScoredPerturbation):
    """Features are removed (or put back) ``features_in_step`` at a time."""

    features_in_step: int = 1


@EXPLANATION_METRICS.register("pixel_flipping")
class PixelFlipping(FeatureSteps, CurveMetric):
    """Bach et al. 2015: remove features in order of decreasing attribution, ``features_in_step`` more
    at each step (cumulative), and follow the score of the explained class. The curve has
    ``ceil(N / features_in_step)`` points; the score is its area (trapezoid, unit spacing, Quantus's
    ``return_auc_per_sample``). Lower is better."""

    higher_is_better = False

    def compute_curve(self, context: EvaluationContext) -> Tensor:
        steps = cumulative_steps(n_features(context), self.features_in_step)
        sweep, _ = ranked_attribution_sweep(context, self, "feature", "descending", steps, self.baseline)
        return context.sweep(sweep).score(self.softmax).double()

    def compute(self, context: EvaluationContext) -> Tensor:
        return torch.trapezoid(self.compute_curve(context), dim=1)


class PatchMetric(ScoredPerturbation, CurveMetric):
    """Shared by RegionPerturbation and Selectivity: remove ``patch_size``² patches (all channels,
    the image padded as Quantus pads it when the size is not a multiple), cumulatively, in the
    order of :meth:`patch_order` (most relevant first)."""

    patch_size: int = 8
    higher_is_better = False

    def patch_order(self, context: EvaluationContext) -> tuple[Tensor, Hashable]:
        """Each sample's patches, first removed first, and a key identifying that order."""
        return attribution_order(context, self, self.patch_size, "descending")

    def patch_scores(self, context: EvaluationContext, n_steps: int | None) -> Tensor:
        """``(B, steps)`` scores after removing the first 1, 2, ... patches (all, or ``n_steps``)."""
        order, order_key = self.patch_order(context)
        n_patches = order.shape[1]
        sweep = RankedSweep(
            context.x,
            unit=self.patch_size,
            order=order,
            order_key=order_key,
            steps=cumulative_steps(min(n_patches, n_steps or n_patches), 1),
            fill=Fill.baseline(context.x, self.baseline),
        )
        return context.sweep(sweep).score(self.softmax).double()


@EXPLANATION_METRICS.register("region_perturbation")
class RegionPerturbation(PatchMetric, Seeded):
    """Samek et al. 2015: curve = score on x minus score after removing the first 1..``regions_evaluation``
    patches (``order`` morf: most relevant first; lerf; random). The score is the AOPC, the mean of
    that curve: higher is better for morf, lower for lerf."""

    order: Literal["morf", "lerf", "random"] = "morf"
    regions_evaluation: int = 100

    def __post_init__(self, perturb_baseline: Baseline | None) -> None:
        super().__post_init__(perturb_baseline)
        if self.order not in ("morf", "lerf", "random"):
            raise ValueError(f"order must be morf, lerf or random, got {self.order!r}")

    @property  # type: ignore[misc]
    def higher_is_better(self) -> bool:  # type: ignore[override]
        return self.order != "lerf"

    def patch_order(self, context: EvaluationContext) -> tuple[Tensor, Hashable]:
        if self.order == "random":
            n_patches = count_units(self.patch_size, context.x.shape[1:])
            order = self.draws(context.device).permutations(len(context), n_patches)
            return order, ("random", self.seed, self.quantus_compat)
        return attribution_order(context, self, self.patch_size, "descending" if self.order == "morf" else "ascending")

    def compute_curve(self, context: EvaluationContext) -> Tensor:
        clean = context.clean().score(self.softmax).double()
        return clean[:, None] - self.patch_scores(context, self.regions_evaluation)

    def compute(self, context: EvaluationContext) -> Tensor:
        return self.compute_curve(context).mean(1)


@EXPLANATION_METRICS.register("selectivity")
class Selectivity(PatchMetric):
    """Montavon et al. 2018: curve = score after removing the first 1, 2, ... patches, most relevant
    first, until all are gone; the score is its area (trapezoid, unit spacing). Lower is better."""

    def compute_curve(self, context: EvaluationContext) -> Tensor:
        return self.patch_scores(context, None)

    def compute(self, context: EvaluationContext) -> Tensor:
        return torch.trapezoid(self.compute_curve(context), dim=1)


class PixelCurve(Perturbing, CurveMetric):
    """Shared by the pixel-ranked curves (deletion, insertion, positive/negative perturbation, decile
    drop): pixels ranked by the attribution summed over channels, replaced by ``baseline``."""

    def pixel_sweep(
        self,
        context: EvaluationContext,
        order: Literal["descending", "ascending"],
        steps: Sequence[tuple[int, int, int]],
        insert: bool = False,
    ) -> RankedSweep:
        return ranked_attribution_sweep(context, self, "pixel", order, steps, self.baseline, insert=insert)[0]


def n_pixels(context: EvaluationContext) -> int:
    return context.x.shape[2] * context.x.shape[3]


class RiseCurve(PixelCurve):
    """RISE (Petsiuk et al. 2018) causal metrics: ``pixels_per_step`` pixels (default: the image width,
    RISE's 224 at 224 px) change per step, most salient first, and the curve follows the softmax
    probability of the class the model predicts on x, from step 0 (nothing changed) to the end. The
    score is the curve's area with both axes in [0, 1]."""

    pixels_per_step: int | None = None

    def steps(self, context: EvaluationContext) -> list[tuple[int, int, int]]:
        return cumulative_steps(n_pixels(context), self.pixels_per_step or context.x.shape[3], first=0)

    def compute(self, context: EvaluationContext) -> Tensor:
        return normalised_auc(self.compute_curve(context))


@EXPLANATION_METRICS.register("deletion")
class Deletion(RiseCurve):
    """RISE deletion: pixels are set to ``baseline`` (0). Lower is better."""

    baseline: Baseline = 0.0
    higher_is_better = False

    def compute_curve(self, context: EvaluationContext) -> Tensor:
        sweep = self.pixel_sweep(context, "descending", self.steps(context))
        return context.sweep(sweep).prob_predicted.double()


@EXPLANATION_METRICS.register("insertion")
class Insertion(RiseCurve):
    """RISE insertion: start from ``baseline``, the blurred image (Gaussian kernel 11, σ 5), and put
    pixels back."""

    baseline: Baseline = "blur"

    def compute_curve(self, context: EvaluationContext) -> Tensor:
        sweep = self.pixel_sweep(context, "descending", self.steps(context), insert=True)
        return context.sweep(sweep).prob_predicted.double()


class PerturbationAccuracy(PixelCurve):
    """Chefer et al. 2021 positive/negative perturbation: set the ``fractions`` of pixels with the
    highest (positive) or lowest (negative) attribution to ``baseline`` (0 by default) and record
    whether the model still predicts the explained class. The score is the area under that accuracy
    curve over the fractions, divided by their range (so in [0, 1]); averaged over samples it is the
    paper's AUC up to its scale."""

    order: ClassVar[Literal["descending", "ascending"]]
    fractions: Sequence[float] = TENTHS
    baseline: Baseline = 0.0

    def compute_curve(self, context: EvaluationContext) -> Tensor:
        steps = [(0, int(n_pixels(context) * f), 0) for f in self.fractions]
        return context.sweep(self.pixel_sweep(context, self.order, steps)).correct.double()

    def compute(self, context: EvaluationContext) -> Tensor:
        x = torch.tensor(self.fractions, dtype=torch.float64, device=context.device)
        return torch.trapezoid(self.compute_curve(context), x, dim=1) / (x[-1] - x[0])


@EXPLANATION_METRICS.register("positive_perturbation")
class PositivePerturbation(PerturbationAccuracy):
    """Most relevant pixels first. Lower is better."""

    order = "descending"
    higher_is_better = False


@EXPLANATION_METRICS.register("negative_perturbation")
class NegativePerturbation(PerturbationAccuracy):
    """Least relevant pixels first. Higher is better."""

    order = "ascending"


@EXPLANATION_METRICS.register("decile_prediction_drop")
class DecilePredictionDrop(PixelCurve):
    """For each decile of pixels by ascending attribution, set only that decile to ``baseline`` (the
    dataset mean: 0 for mean/std-normalised inputs, or one value per channel) and record the
    probability of the explained class: a 10-point curve, least salient decile first. The score is
    the first point minus the last: how much better the prediction survives losing its least
    salient tenth than its most salient one. Higher is better.

    :meth:`points` is the curve as the thesis tabulates it per image: the unperturbed image's
    probability first (its "−10 %" column), then the deciles starting at 0 %, 10 %, …, 90 % of
    ascending attribution (:attr:`point_labels`)."""

    point_labels: ClassVar[tuple[str, ...]] = ("-10%", *(f"{10 * d}%" for d in range(10)))
    """Column names of :meth:`points`: ``-10%`` (nothing removed), then each decile's first percentile."""
    baseline: Baseline = 0.0

    def compute_curve(self, context: EvaluationContext) -> Tensor:
        n = n_pixels(context)
        steps = [(d * n // 10, (d + 1) * n // 10, 0) for d in range(10)]
        return context.sweep(self.pixel_sweep(context, "ascending", steps)).prob.double()

    def points(self, context: EvaluationContext) -> Tensor:
        """``(B, 11)``: the probability of the explained class on the unperturbed image, then the
        10-point curve; on a shared context this costs no forward pass beyond the metric's own."""
        return torch.cat([context.clean().prob.double()[:, None], self.compute_curve(context)], dim=1)

    def compute(self, context: EvaluationContext) -> Tensor:
        curve = self.compute_curve(context)
        return curve[:, 0] - curve[:, -1]


@EXPLANATION_METRICS.register("faithfulness_estimate")
class FaithfulnessEstimate(FeatureSteps):
    """Alvarez-Melis & Jaakkola 2018: Pearson correlation, over groups of ``features_in_step``
    features in order of decreasing attribution, between the group's attribution sum and the drop
    of the score when only that group is removed."""

    softmax: bool = False

    def compute(self, context: EvaluationContext) -> Tensor:
        steps = group_steps(n_features(context), self.features_in_step)
        sweep, order = ranked_attribution_sweep(context, self, "feature", "descending", steps, self.baseline)
        drops = score_drops(context, sweep, self.softmax)
        return pearson(group_sums(feature_attributions(self, context), order, self.features_in_step), drops)


@EXPLANATION_METRICS.register("faithfulness_correlation")
class FaithfulnessCorrelation(ScoredPerturbation, Seeded):
    """Bhatt et al. 2020: over ``nr_runs`` random subsets of ``subset_size`` features, the Pearson
    correlation between the subset's attribution sum and the drop of the score when it is removed."""

    nr_runs: int = 100
    subset_size: int = 224
    softmax: bool = False

    def subsets(self, n_samples: int, n: int, device: torch.device) -> Tensor:
        """``(nr_runs, B, subset_size)`` feature indices, one stream per run."""
        draws = self.draws(device)
        runs = []
        for run in range(self.nr_runs):
            runs.append(draws.subsets(n_samples, n, self.subset_size, stream=run))
            if isinstance(self.baseline, str):
                draws.skip_unused(n_samples)  # Quantus draws a (then unused) uniform baseline per call
        return torch.stack(runs)

    def compute(self, context: EvaluationContext) -> Tensor:
        n = n_features(context)
        if self.subset_size > n:
            raise ValueError(f"subset_size={self.subset_size} exceeds the {n} input features")
        subsets = self.subsets(len(context), n, context.device)
        sweep = SubsetSweep(
            context.x,
            subsets=subsets,
            subsets_key=(self.nr_runs, self.subset_size, self.seed, self.quantus_compat),
            fill=Fill.baseline(context.x, self.baseline),
        )
        drops = score_drops(context, sweep, self.softmax)
        a = feature_attributions(self, context)
        sums = a.gather(1, flatten(subsets.transpose(0, 1))).view(len(context), self.nr_runs, -1).sum(2)
        return pearson(sums, drops)


@EXPLANATION_METRICS.register("monotonicity")
class Monotonicity(FeatureSteps):
    """Arya et al. 2019: start from the baseline image and put features back in order of increasing
    ``|a|``, ``features_in_step`` at a time; 1 if the score never decreases, else 0.

    Quantus 0.6 replaces the baseline by the baseline instead of by the input's values, so its images
    never change and it returns 1 for every sample; there is no compat mode for that.

    A strict order test of consecutive scores: in bfloat16 it flipped on 1 image of 24 (a trained
    resnet20, 8 steps), hence ``precision_sensitive``: its passes always run in float32.
    """

    precision_sensitive = True
    abs: bool = True

    def compute(self, context: EvaluationContext) -> Tensor:
        steps = cumulative_steps(n_features(context), self.features_in_step)
        sweep, _ = ranked_attribution_sweep(context, self, "feature", "ascending", steps, self.baseline, insert=True)
        scores = context.sweep(sweep).score(self.softmax)
        return (scores.diff(dim=1) >= 0).all(1).double()


@EXPLANATION_METRICS.register("monotonicity_correlation")
class MonotonicityCorrelation(FeatureSteps, Seeded):
    """Nguyen & Martínez 2020: Spearman correlation, over groups of ``features_in_step`` features in
    order of increasing ``|a|``, between the group's attribution sum and the mean squared change of
    the score over ``nr_samples`` replacements of only that group by a uniform draw in [0, 1) (one
    value per sample and draw, as Quantus's ``"uniform"`` baseline).

    The paper divides the squared change by f(x)²; that is a per-sample constant, which a Spearman
    correlation ignores, so it is left out (and so is Quantus's ``eps`` that guards it).
    """

    nr_samples: int = 100
    baseline: Baseline = "uniform"
    abs: bool = True

    def compute(self, context: EvaluationContext) -> Tensor:
        n = n_features(context)
        n_groups = -(-n // self.features_in_step)
        if self.baseline == "uniform":
            draws = self.nr_samples
            steps = group_steps(n, self.features_in_step, draws)
            # Quantus draws one value per sample at each (group, draw), in that order.
            values = self.draws(context.device).uniform((n_groups * draws, len(context)))
            fill = Fill(values.view(n_groups * draws, len(context), 1, 1, 1),
                        ("uniform", n_groups * draws, self.seed, self.quantus_compat))
        else:  # a deterministic baseline gives the same image at every draw: one is enough
            draws = 1
            steps = group_steps(n, self.features_in_step)
            fill = Fill.baseline(context.x, self.baseline)
        sweep, order = ranked_attribution_sweep(context, self, "feature", "ascending", steps, fill)
        scores = context.sweep(sweep).score(self.softmax).view(len(context), n_groups, draws)
        clean = context.clean().score(self.softmax)
        variation = (scores - clean[:, None, None]).double().square().mean(2)
        return spearman(group_sums(feature_attributions(self, context), order, self.features_in_step), variation)


@EXPLANATION_METRICS.register("infidelity")
class Infidelity(ScoredPerturbation):
    """Yeh et al. 2019 as Quantus 0.6 implements it: for each patch size, remove the patches one after
    another in raster order (cumulatively); at each step compare the drop of the score with the
    attribution-weighted change of the input, ``Σ a·(x − x')``; the score is the mean squared
    difference, averaged over patch sizes. Lower is better.

    Quantus repeats this ``n_perturb_samples`` times; with a deterministic baseline every repeat is
    identical, so kdlens runs it once. Quantus also fails for images not divisible by the patch size
    (it perturbs padded indices of the unpadded image); kdlens pads as RegionPerturbation does.
    """

    perturb_patch_sizes: Sequence[int] = (4,)
    softmax: bool = False
    normalise: bool = False
    higher_is_better = False

    def compute(self, context: EvaluationContext) -> Tensor:
        x = context.x
        fill = Fill.baseline(x, self.baseline)
        # Per-pixel contribution Σ_c a·(x − fill) of removing that pixel.
        contribution = (self.attributions(context).double() * (x.double() - fill.values[0].double())).sum(
            1, keepdim=True
        )
        clean = context.clean().score(self.softmax).double()
        losses = []
        for patch in self.perturb_patch_sizes:
            per_patch = unit_scores(contribution, patch, x.shape[1:])
            order = unit_order(per_patch, "raster")
            sweep = RankedSweep(
                x,
                unit=patch,
                order=order,
                order_key="raster",
                steps=cumulative_steps(per_patch.shape[1], 1),
                fill=fill,
            )
            drops = clean[:, None] - context.sweep(sweep).score(self.softmax).double()
            losses.append((drops - per_patch.cumsum(1)).square().mean(1))
        return torch.stack(losses, 1).mean(1)
