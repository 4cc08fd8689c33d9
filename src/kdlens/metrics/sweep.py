"""Perturbation sweeps: rank units of the input by attribution and replace them step by step.

Pixel-flipping, region perturbation, selectivity, deletion/insertion, positive/negative perturbation,
the decile drop, FaithfulnessEstimate, Monotonicity(Correlation) and Infidelity are each one
:class:`RankedSweep`; they differ only in the unit (one input feature, one pixel with all its
channels, or a square patch), the order of the units, which rank interval is replaced at each step
and by what. :class:`SubsetSweep` replaces random feature subsets (FaithfulnessCorrelation).

The :class:`~kdlens.metrics.base.EvaluationContext` runs a sweep in chunks of ``max_batch`` images
(all on the input's device) and caches each (sweep key, step), so metrics of one suite that need the
same perturbed images (say RegionPerturbation and Selectivity) share the forward passes.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from kdlens.metrics.base import EvaluationContext, ExplanationMetric, Sweep
from kdlens.metrics.functional import flatten

Unit = Literal["feature", "pixel"] | int
"""``"feature"``: one element of x (the attribution broadcast to x's channels, as Quantus does);
``"pixel"``: one spatial position with all its channels, ranked by the attribution summed over its
channels; an int ``p``: a ``p``×``p`` patch of all channels, ranked by its attribution sum."""

Order = Literal["descending", "ascending", "raster"]

Baseline = str | float | tuple[float, ...]
"""What replaces removed units: ``"black"``/``"white"``/``"mean"`` = each sample's min/max/mean over
all its features (Quantus), ``"blur"`` = RISE's blurred image, a number, or one number per channel."""


def patch_padding(size: int, patch: int) -> int:
    """Leading padding of a dimension not divisible by ``patch``; Quantus pads both sides, the extra
    pixel going to the end."""
    return (-size % patch) // 2


def count_units(unit: Unit, shape: torch.Size) -> int:
    """How many units an input of ``shape`` ``(C, H, W)`` has."""
    channels, height, width = shape
    if unit == "feature":
        return channels * height * width
    if unit == "pixel":
        return height * width
    return -(-height // unit) * -(-width // unit)


def unit_layout(unit: Unit, shape: torch.Size, device: torch.device) -> Tensor:
    """The unit id of every position of the perturbation grid: ``(C, H, W)`` for features,
    ``(1, H, W)`` (broadcast over channels) for pixels and patches; ids are 0..n_units-1."""
    channels, height, width = shape
    if unit == "feature":
        return torch.arange(channels * height * width, device=device).view(channels, height, width)
    if unit == "pixel":
        return torch.arange(height * width, device=device).view(1, height, width)
    rows = (torch.arange(height, device=device) + patch_padding(height, unit)) // unit
    cols = (torch.arange(width, device=device) + patch_padding(width, unit)) // unit
    n_cols = -(-width // unit)
    return (rows[:, None] * n_cols + cols[None, :])[None]


def unit_scores(a: Tensor, unit: Unit, x_shape: torch.Size) -> Tensor:
    """``(B, n_units)`` attribution of every unit (see :data:`Unit`)."""
    if unit == "feature":
        return flatten(a.expand(len(a), *x_shape))
    layout = unit_layout(unit, x_shape, a.device)
    spatial = flatten(a.sum(1))
    totals = spatial.new_zeros(len(a), count_units(unit, x_shape))
    return totals.scatter_add_(1, layout.flatten().expand_as(spatial), spatial)


def unit_order(scores: Tensor, order: Order) -> Tensor:
    """``(B, n_units)`` unit ids, first-perturbed first; ties keep the lower id first."""
    if order == "raster":
        return torch.arange(scores.shape[1], device=scores.device).expand_as(scores)
    return scores.argsort(dim=1, descending=order == "descending", stable=True)


def attribution_order(
    context: EvaluationContext, metric: ExplanationMetric, unit: Unit, order: Order
) -> tuple[Tensor, Hashable]:
    """The units of ``metric``'s prepared attributions in ``order``, and a key identifying that order."""
    scores = unit_scores(metric.attributions(context), unit, context.x.shape[1:])
    key = ("attribution", unit, order, metric.abs, metric.normalise, metric.quantus_compat)
    return unit_order(scores, order), key


def rise_blur(x: Tensor, kernel_size: int = 11, sigma: float = 5.0) -> Tensor:
    """RISE's insertion start: every channel convolved (zero padding) with the kernel
    ``scipy.ndimage.gaussian_filter`` makes from a centred impulse (float32, as RISE)."""
    # scipy comes with scikit-image and scikit-learn; only insertion needs it.
    from scipy.ndimage import gaussian_filter

    impulse = np.zeros((kernel_size, kernel_size))
    impulse[kernel_size // 2, kernel_size // 2] = 1
    kernel = torch.from_numpy(gaussian_filter(impulse, sigma).astype(np.float32)).to(x)
    channels = x.shape[1]
    return F.conv2d(x, kernel.expand(channels, 1, -1, -1), padding=kernel_size // 2, groups=channels)


def baseline_values(x: Tensor, baseline: Baseline) -> Tensor:
    """Replacement values ``(B, C or 1, H or 1, W or 1)`` for ``baseline`` (see :data:`Baseline`)."""
    if baseline == "black":
        return x.amin(dim=(1, 2, 3), keepdim=True)
    if baseline == "white":
        return x.amax(dim=(1, 2, 3), keepdim=True)
    if baseline == "mean":
        return x.mean(dim=(1, 2, 3), keepdim=True)
    if baseline == "blur":
        return rise_blur(x)
    if isinstance(baseline, (int, float)):
        return x.new_full((len(x), 1, 1, 1), float(baseline))
    if isinstance(baseline, tuple) and len(baseline) == x.shape[1]:
        return torch.tensor(baseline, dtype=x.dtype, device=x.device).view(1, -1, 1, 1).expand(len(x), -1, 1, 1)
    raise ValueError(f"unknown baseline {baseline!r}: use black, white, mean, blur, a number or one number per channel")


def rank_grid(order: Tensor, layout: Tensor) -> Tensor:
    """``(B, *layout.shape)`` rank of the unit at every grid position (int32: half the memory
    traffic of int64 in every perturbed batch)."""
    ranks = torch.empty_like(order, dtype=torch.int32)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device, dtype=torch.int32).expand_as(order))
    return ranks[:, layout.flatten()].view(len(order), *layout.shape)


@dataclass(frozen=True)
class Fill:
    """Replacement values ``(rows, B, C or 1, H or 1, W or 1)`` (one row per random draw) and a key
    that identifies them on the context."""

    values: Tensor
    key: Hashable

    @staticmethod
    def baseline(x: Tensor, baseline: Baseline) -> Fill:
        """One deterministic baseline (see :data:`Baseline`)."""
        return Fill(baseline_values(x, baseline)[None], ("baseline", baseline))


class RankedSweep(Sweep):
    """Step ``(lo, hi, row)``: the units ranked in ``[lo, hi)`` are replaced by ``fill.values[row]``;
    with ``insert`` the image starts as ``fill.values[row]`` and those units get their original values
    back.

    ``order`` ``(B, n_units)`` lists each sample's units, first-perturbed first; ``order_key`` must
    identify it on the context (with ``fill.key`` it forms the cache key).
    """

    def __init__(
        self,
        x: Tensor,
        *,
        unit: Unit,
        order: Tensor,
        order_key: Hashable,
        steps: Sequence[tuple[int, int, int]],
        fill: Fill,
        insert: bool = False,
    ) -> None:
        self.x = x
        self.n_units = order.shape[1]
        layout = unit_layout(unit, x.shape[1:], x.device)
        self.rank_grid = rank_grid(order, layout)
        self.fill = fill
        self.insert = insert
        self.steps = tuple(steps)
        table = torch.tensor(self.steps, device=x.device).view(-1, 3)
        self.bounds, self.rows = table[:, :2].int(), table[:, 2]
        self.key = ("ranked", unit, order_key, fill.key, insert)

    def is_identity(self, step: Hashable) -> bool:
        lo, hi, _ = cast(tuple[int, int, int], step)
        return (lo <= 0 and hi >= self.n_units) if self.insert else lo >= hi

    def perturb(self, steps: Tensor, samples: Tensor) -> Tensor:
        bounds = self.bounds[steps].view(-1, 2, 1, 1, 1)
        ranks = self.rank_grid[samples]
        chosen = (ranks >= bounds[:, 0]) & (ranks < bounds[:, 1])
        fill = self.fill.values[self.rows[steps], samples].to(self.x.dtype)
        original = self.x[samples]
        return torch.where(chosen, original, fill) if self.insert else torch.where(chosen, fill, original)


def cumulative_steps(n_units: int, per_step: int, first: int = 1) -> list[tuple[int, int, int]]:
    """Steps replacing the first ``k * per_step`` units for k = first, first+1, ... until all are."""
    n_steps = -(-n_units // per_step)
    return [(0, min(k * per_step, n_units), 0) for k in range(first, n_steps + 1)]


def group_steps(n_units: int, per_step: int, draws: int | None = None) -> list[tuple[int, int, int]]:
    """Steps replacing only group k (units ``k*per_step .. (k+1)*per_step - 1``): once with fill row 0,
    or ``draws`` times with fill rows ``k * draws + r``."""
    n_groups = -(-n_units // per_step)
    if draws is None:
        return [(k * per_step, min((k + 1) * per_step, n_units), 0) for k in range(n_groups)]
    return [
        (k * per_step, min((k + 1) * per_step, n_units), k * draws + r) for k in range(n_groups) for r in range(draws)
    ]


def group_sums(values: Tensor, order: Tensor, per_step: int) -> Tensor:
    """``(B, n_groups)`` sums of ``values`` ``(B, n_units)`` over the groups of :func:`group_steps`."""
    ordered = values.gather(1, order)
    n_groups = -(-ordered.shape[1] // per_step)
    return F.pad(ordered, (0, n_groups * per_step - ordered.shape[1])).view(len(values), n_groups, per_step).sum(2)


class SubsetSweep(Sweep):
    """Step r: the features ``subsets[r, b]`` of sample b (flat indices into x's features) are
    replaced by a deterministic ``fill`` (one row)."""

    def __init__(self, x: Tensor, *, subsets: Tensor, subsets_key: Hashable, fill: Fill) -> None:
        self.x = x
        self.subsets = subsets
        self.fill = fill.values[0]
        self.steps = tuple(range(len(subsets)))
        self.key = ("subsets", subsets_key, fill.key)

    def perturb(self, steps: Tensor, samples: Tensor) -> Tensor:
        original = self.x[samples]
        chosen = torch.zeros_like(flatten(original), dtype=torch.bool).scatter_(1, self.subsets[steps, samples], True)
        return torch.where(chosen.view_as(original), self.fill[samples].to(self.x.dtype), original)
