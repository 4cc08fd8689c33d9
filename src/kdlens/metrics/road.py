"""ROAD (Rong et al. 2022): remove pixels by noisy linear imputation instead of a fixed baseline, so
the removal itself leaks no shape information."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlens.metrics.base import (
    EXPLANATION_METRICS,
    CurveMetric,
    EvaluationContext,
    RandomDraws,
    Seeded,
    Sweep,
)
from kdlens.metrics.sweep import attribution_order, rank_grid, unit_layout

# ROAD's neighbour offsets and weights: 1/6 for the 4 direct neighbours, 1/12 for the diagonals.
NEIGHBOURS = [((dy, dx), 1 / 6 if dy == 0 or dx == 0 else 1 / 12) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
CONVERGENCE_CHECK_EVERY = 8


def neighbour_sum(t: Tensor) -> Tensor:
    """Weighted sum of each position's in-image neighbours (shifted adds: far faster than a
    one-channel convolution on CPU)."""
    height, width = t.shape[-2:]
    padded = F.pad(t, (1, 1, 1, 1))
    total = torch.zeros_like(t)
    for (dy, dx), weight in NEIGHBOURS:
        total += weight * padded[..., 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
    return total


def safe_ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator``, 0 where the denominator is 0 (a system that has converged or has
    no unknowns)."""
    return torch.where(denominator > 0, numerator / denominator.clamp(min=torch.finfo(denominator.dtype).tiny), 0.0)


def linear_imputation(x: Tensor, mask: Tensor, rtol: float = 1e-9) -> Tensor:
    """Replace the ``mask``ed pixels ``(n, 1, H, W)`` of ``x`` ``(n, C, H, W)`` by the solution of ROAD's
    linear system: each is the weighted mean of its in-image neighbours, masked or not.

    The system is symmetric positive (semi)definite, so all ``n·C`` systems are solved at once by
    Jacobi-preconditioned conjugate gradients on the image grid (what Quantus does with one sparse
    direct solve per image), to relative residual ``rtol``.
    """
    height, width = x.shape[-2:]
    known = x.double()
    m = mask.double().expand_as(known)
    degree = neighbour_sum(torch.ones(1, 1, height, width, dtype=torch.float64, device=x.device))

    def system(v: Tensor) -> Tensor:
        return m * (degree * v - neighbour_sum(m * v))

    rhs = m * neighbour_sum((1 - m) * known)
    solution = torch.zeros_like(rhs)
    residual = rhs.clone()
    preconditioned = residual / degree
    direction = preconditioned.clone()
    rz = (residual * preconditioned).sum((2, 3), keepdim=True)
    threshold = rtol * rhs.flatten(2).norm(dim=2)
    for iteration in range(height * width):  # conjugate gradients terminate within n_unknowns steps
        # The test reads the residual on the host (a GPU sync), so it runs every few iterations;
        # the iterations past convergence only refine the solution.
        if iteration % CONVERGENCE_CHECK_EVERY == 0 and (residual.flatten(2).norm(dim=2) <= threshold).all():
            break
        moved = system(direction)
        step = safe_ratio(rz, (direction * moved).sum((2, 3), keepdim=True))
        solution = solution + step * direction
        residual = residual - step * moved
        preconditioned = residual / degree
        rz_next = (residual * preconditioned).sum((2, 3), keepdim=True)
        direction = preconditioned + safe_ratio(rz_next, rz) * direction
        rz = rz_next
    return torch.where(mask, solution.to(x.dtype), x)


class ImputationSweep(Sweep):
    """Step p: the first ``int(H·W·p/100)`` pixels of each sample's ``order`` are imputed, plus
    Gaussian noise of std ``noise`` on the imputed pixels."""

    def __init__(
        self,
        x: Tensor,
        *,
        order: Tensor,
        order_key: Hashable,
        percentages: Sequence[float],
        noise: float,
        draws: RandomDraws,
    ) -> None:
        self.x = x
        n_pixels = order.shape[1]
        self.rank_grid = rank_grid(order, unit_layout("pixel", x.shape[1:], x.device))
        self.steps = tuple(percentages)
        self.counts = torch.tensor([int(n_pixels * p / 100) for p in percentages], device=x.device)
        self.noise = noise
        self.draws = draws
        # Quantus's draws come in one sequence, so all of them are drawn now, in its order.
        self.compat_noise = self.quantus_noise(order) if draws.quantus_compat else None
        self.key = ("imputation", order_key, self.steps, noise, draws.seed, draws.quantus_compat)

    def quantus_noise(self, order: Tensor) -> Tensor:
        """Quantus draws, per percentage and sample, normal(C, k) for the k imputed pixels in rank order."""
        n_samples, channels = self.x.shape[:2]
        noise = torch.zeros(len(self.steps), n_samples, channels, order.shape[1], dtype=torch.float64, device=self.x.device)
        for step, count in enumerate(self.counts.tolist()):
            for sample in range(n_samples):
                noise[step, sample][:, order[sample, :count]] = self.draws.normal((channels, count))
        return noise.view(len(self.steps), *self.x.shape)

    def step_noise(self, steps: Tensor, samples: Tensor) -> Tensor:
        if self.compat_noise is not None:
            return self.compat_noise[steps, samples]
        noise = torch.empty(len(samples), *self.x.shape[1:], device=self.x.device)
        # One stream per step (independent of the chunking); the steps are read once per chunk,
        # and rows are chosen by where, not by a boolean index (which reads the mask on the host).
        for step in steps.unique().tolist():
            rows = (steps == step).view(-1, *[1] * (noise.ndim - 1))
            noise = torch.where(rows, self.draws.normal(self.x.shape, stream=step)[samples], noise)
        return noise

    def perturb(self, steps: Tensor, samples: Tensor) -> Tensor:
        mask = self.rank_grid[samples] < self.counts[steps].view(-1, 1, 1, 1)
        original = self.x[samples]
        imputed = linear_imputation(original, mask).double() + self.noise * self.step_noise(steps, samples)
        return torch.where(mask, imputed.to(self.x.dtype), original)


@EXPLANATION_METRICS.register("road")
class ROAD(CurveMetric, Seeded):
    """Remove (impute) the ``percentages`` of pixels with the highest (``morf``) or lowest (``lerf``)
    attribution, summed over channels, and record whether the model still predicts the explained
    class. The score is the mean of that curve. With MoRF lower is better.

    Quantus 0.6 reports only the batch-mean curve of its first batch (``batch_size`` samples), and
    fails for inputs with more than one channel (its pixel indices run over the channel-broadcast
    attribution); kdlens returns every sample's curve and imputes all channels of a pixel together.
    """

    percentages: Sequence[float] = tuple(range(1, 100, 2))
    noise: float = 0.01
    order: Literal["morf", "lerf"] = "morf"
    normalise: bool = True

    @property  # type: ignore[misc]
    def higher_is_better(self) -> bool:  # type: ignore[override]
        return self.order == "lerf"

    def compute_curve(self, context: EvaluationContext) -> Tensor:
        order, order_key = attribution_order(
            context, self, "pixel", "descending" if self.order == "morf" else "ascending"
        )
        sweep = ImputationSweep(
            context.x,
            order=order,
            order_key=order_key,
            percentages=self.percentages,
            noise=self.noise,
            draws=self.draws(context.device),
        )
        return context.sweep(sweep).correct.double()

    def compute(self, context: EvaluationContext) -> Tensor:
        return self.compute_curve(context).mean(1)
