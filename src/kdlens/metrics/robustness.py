"""Robustness: how much does the explanation change when the input changes a little?

These metrics recompute attributions on perturbed inputs, so they need ``explain_fn(model, x, y)``.
All ``nr_samples`` draws of all samples are explained in chunks of ``max_batch`` images. Noise comes
from a ``torch.Generator`` (one stream per draw, so results do not depend on the chunking); with
``quantus_compat=True`` it comes from ``numpy.random.RandomState(seed)`` in Quantus's order and the
re-explained attributions are normalised over each draw's batch, as Quantus does.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np
import torch
from torch import Tensor

from kdlens.metrics.base import (
    EXPLANATION_METRICS,
    EvaluationContext,
    ExplanationMetric,
    generator,
)
from kdlens.metrics.functional import flatten, nanmax, prepare_attributions


class PerturbedExplanationMetric(ExplanationMetric):
    """Explain ``nr_samples`` noisy copies of every input and reduce a per-draw ``ratio`` over draws."""

    requires = frozenset({"model", "explain_fn"})
    higher_is_better = False

    def __init__(self, *, nr_samples: int, abs: bool, normalise: bool, seed: int, quantus_compat: bool) -> None:
        super().__init__(abs=abs, normalise=normalise, quantus_compat=quantus_compat)
        self.nr_samples = nr_samples
        self.seed = seed

    @abstractmethod
    def torch_noise(self, shape: torch.Size, g: torch.Generator, device: torch.device) -> Tensor:
        """One draw of noise for the whole batch."""

    @abstractmethod
    def numpy_noise(self, state: np.random.RandomState, shape: tuple[int, ...]) -> np.ndarray:
        """Quantus's draws, in its order."""

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
        state = np.random.RandomState(self.seed) if self.quantus_compat else None
        # Whole draws per chunk, so that a draw's batch can be normalised together (Quantus).
        draws_per_chunk = max(1, context.max_batch // n)
        ratios = []
        for first in range(0, self.nr_samples, draws_per_chunk):
            draws = range(first, min(first + draws_per_chunk, self.nr_samples))
            if state is not None:
                noise = torch.from_numpy(self.numpy_noise(state, (len(draws), *x.shape))).to(x.device)
            else:
                noise = torch.stack(
                    [self.torch_noise(x.shape, generator(self.seed, x.device, d), x.device) for d in draws]
                )
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

    def __init__(
        self,
        *,
        nr_samples: int = 200,
        lower_bound: float = 0.2,
        upper_bound: float | None = None,
        abs: bool = False,
        normalise: bool = False,
        seed: int = 0,
        quantus_compat: bool = False,
    ) -> None:
        super().__init__(nr_samples=nr_samples, abs=abs, normalise=normalise, seed=seed, quantus_compat=quantus_compat)
        self.lower_bound = lower_bound
        self.upper_bound = upper_bound

    @property
    def bounds(self) -> tuple[float, float]:
        return (
            (-self.lower_bound, self.lower_bound) if self.upper_bound is None else (self.lower_bound, self.upper_bound)
        )

    def torch_noise(self, shape: torch.Size, g: torch.Generator, device: torch.device) -> Tensor:
        low, high = self.bounds
        return torch.rand(shape, generator=g, device=device) * (high - low) + low

    def numpy_noise(self, state: np.random.RandomState, shape: tuple[int, ...]) -> np.ndarray:
        low, high = self.bounds
        return state.uniform(low, high, size=shape)

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

    def __init__(
        self,
        *,
        nr_samples: int = 200,
        perturb_mean: float = 0.0,
        perturb_std: float = 0.1,
        abs: bool = False,
        normalise: bool = True,
        seed: int = 0,
        quantus_compat: bool = False,
    ) -> None:
        super().__init__(nr_samples=nr_samples, abs=abs, normalise=normalise, seed=seed, quantus_compat=quantus_compat)
        self.perturb_mean = perturb_mean
        self.perturb_std = perturb_std

    def torch_noise(self, shape: torch.Size, g: torch.Generator, device: torch.device) -> Tensor:
        return torch.randn(shape, generator=g, device=device) * self.perturb_std + self.perturb_mean

    def numpy_noise(self, state: np.random.RandomState, shape: tuple[int, ...]) -> np.ndarray:
        return state.normal(self.perturb_mean, self.perturb_std, size=shape)

    def ratio(self, a: Tensor, a_perturbed: Tensor, x: Tensor, x_perturbed: Tensor) -> Tensor:
        return (a_perturbed.double() - a.double()).norm(dim=1) / (
            (x_perturbed.double() - x.double()).norm(dim=1) + 1e-10
        )

    def reduce(self, ratios: Tensor) -> Tensor:
        return nanmax(ratios)
