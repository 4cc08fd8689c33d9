"""Robustness: how much does the explanation change when the input changes a little?

These metrics recompute attributions on perturbed inputs, so they need ``explain_fn(model, x, y)``.
All ``nr_samples`` draws of all samples are explained in chunks of ``max_batch`` images. Noise comes
from :class:`~kdlens.metrics.base.RandomDraws` (one torch stream per draw, so results do not depend
on the chunking); with ``quantus_compat=True`` it is Quantus's NumPy sequence and the re-explained
attributions are normalised over each draw's batch, as Quantus does.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import Tensor

from kdlens.metrics.base import (
    EXPLANATION_METRICS,
    EvaluationContext,
    RandomDraws,
    Seeded,
)
from kdlens.metrics.functional import flatten, nanmax, prepare_attributions


class PerturbedExplanationMetric(Seeded):
    """Explain ``nr_samples`` noisy copies of every input and reduce a per-draw ``ratio`` over draws."""

    requires = frozenset({"model", "explain_fn"})
    higher_is_better = False

    nr_samples: int = 200

    @abstractmethod
    def noise(self, draws: RandomDraws, shape: torch.Size, stream: int) -> Tensor:
        """One draw of noise for the whole batch (Quantus: draw after draw, in its order)."""

    @abstractmethod
    def ratio(self, a: Tensor, a_perturbed: Tensor, x: Tensor, x_perturbed: Tensor) -> Tensor:
        """Per-pair score of flattened ``(n, N)`` tensors."""

    @abstractmethod
    def reduce(self, ratios: Tensor) -> Tensor:
        """``(B, nr_samples)`` -> ``(B,)``."""

    def compute(self, context: EvaluationContext) -> Tensor:
        assert context.model is not None and context.y is not None
        x, y, n = context.x, context.y, len(context)
        a = flatten(self.attributions(context))
        rng = self.draws(x.device)
        # Whole draws per chunk, so that a draw's batch can be normalised together (Quantus).
        draws_per_chunk = max(1, context.max_batch // n)
        ratios = []
        for first in range(0, self.nr_samples, draws_per_chunk):
            draws = range(first, min(first + draws_per_chunk, self.nr_samples))
            noise = torch.stack([self.noise(rng, x.shape, d) for d in draws])
            # Add in the noise's precision, then round to x's (NumPy adds float64 noise to float32 x).
            x_perturbed = (x.to(noise.dtype) + noise).to(x.dtype).flatten(0, 1)
            a_perturbed = context.explain(context.model, x_perturbed, y.repeat(len(draws)))
            a_perturbed = prepare_attributions(a_perturbed, self.abs, self.normalise, n if self.quantus_compat else 1)
            ratios.append(
                self.ratio(
                    a.repeat(len(draws), 1),
                    flatten(a_perturbed),
                    flatten(x).repeat(len(draws), 1),
                    flatten(x_perturbed),
                ).view(len(draws), n)
            )
        return self.reduce(torch.cat(ratios).T)


class Sensitivity(PerturbedExplanationMetric):
    """Yeh et al. 2019: ``‖a(x + δ) − a(x)‖ / ‖a(x)‖`` with δ ~ U[−lower_bound, lower_bound] per
    feature (U[lower_bound, upper_bound] when ``upper_bound`` is given), over ``nr_samples`` draws."""

    lower_bound: float = 0.2
    upper_bound: float | None = None

    @property
    def bounds(self) -> tuple[float, float]:
        return (
            (-self.lower_bound, self.lower_bound) if self.upper_bound is None else (self.lower_bound, self.upper_bound)
        )

    def noise(self, draws: RandomDraws, shape: torch.Size, stream: int) -> Tensor:
        return draws.uniform(shape, *self.bounds, stream=stream)

    def ratio(self, a: Tensor, a_perturbed: Tensor, x: Tensor, x_perturbed: Tensor) -> Tensor:
        a = a.double()
        return (a_perturbed.double() - a).norm(dim=1) / a.norm(dim=1)


@EXPLANATION_METRICS.register("max_sensitivity")
class MaxSensitivity(Sensitivity):
    """The largest ratio over the draws (NaN draws ignored)."""

    def reduce(self, ratios: Tensor) -> Tensor:
        return nanmax(ratios)


@EXPLANATION_METRICS.register("avg_sensitivity")
class AvgSensitivity(Sensitivity):
    """The mean ratio over the draws (NaN draws ignored)."""

    def reduce(self, ratios: Tensor) -> Tensor:
        return ratios.nanmean(1)


@EXPLANATION_METRICS.register("local_lipschitz_estimate")
class LocalLipschitzEstimate(PerturbedExplanationMetric):
    """Alvarez-Melis & Jaakkola 2018: the largest ``‖a(x') − a(x)‖₂ / (‖x' − x‖₂ + 1e-10)`` over
    ``nr_samples`` draws of ``x' = x + N(perturb_mean, perturb_std²)``; attributions max-normalised
    (per sample; Quantus normalises over the batch)."""

    perturb_mean: float = 0.0
    perturb_std: float = 0.1
    normalise: bool = True

    def noise(self, draws: RandomDraws, shape: torch.Size, stream: int) -> Tensor:
        return draws.normal(shape, self.perturb_mean, self.perturb_std, stream=stream)

    def ratio(self, a: Tensor, a_perturbed: Tensor, x: Tensor, x_perturbed: Tensor) -> Tensor:
        return (a_perturbed.double() - a.double()).norm(dim=1) / (
            (x_perturbed.double() - x.double()).norm(dim=1) + 1e-10
        )

    def reduce(self, ratios: Tensor) -> Tensor:
        return nanmax(ratios)
