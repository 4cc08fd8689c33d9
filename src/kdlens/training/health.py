"""Exploding-but-finite runs: a loss that stays finite while the logits or the weights blow up
trains nothing useful (a one-hot softmax, KL(t‖s) in the hundreds of thousands), yet it would end
with exit 0. :class:`HealthMonitor` watches two cheap signals and the run warns once and records
them in results.json (:class:`kdlens.runs.results.RunHealth`):

* the largest ``|logit|`` the model produced on any training or validation batch (a running max
  kept on the device, read once per epoch);
* the growth of the weights' global L2 norm since the run started (computed once per epoch).

Thresholds (see :data:`MAX_ABS_LOGIT` and :data:`MAX_WEIGHT_NORM_GROWTH`) are far beyond what a
healthy run reaches, so they flag real explosions only. On several processes each rank watches its
own batches and rank 0 (which writes the results) reports.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from kdlens.runs.results import RunHealth

logger = logging.getLogger("kdlens.training")

MAX_ABS_LOGIT = 1e3
"""A logit this large in magnitude is ten times beyond what healthy classifiers reach (tens; about
100 for a heavily over-fitted one without weight decay: cross-entropy grows margins only
logarithmically), and it makes the softmax one-hot where kdlens uses it: float32 ``exp`` underflows
to 0 below about −104, so logit gaps of this order give probabilities of exactly 0 and 1 at T = 1
and at KD's usual temperatures (T ≤ 8), i.e. zero entropy, a KL(t‖s) in the hundreds or more and
vanishing gradients. (On the tiny shapes run, lr 0.05 peaks at |logit| ≈ 9; lr 0.5, the issue's
case, at ≈ 2·10³ with test top-1 falling from 0.92 to 0.59.)"""

MAX_WEIGHT_NORM_GROWTH = 1e3
"""The weights' global L2 norm growing more than this factor over the run means they diverge.
Normal training stays within a few times the starting norm (the tiny shapes run: 1.003×); the
threshold is generous because BatchNorm makes most weights scale-free, so without weight decay
their norm may drift by tens of times harmlessly. Diverging runs pass it within an epoch (lr 50 on
the tiny run: 10⁵× after one epoch), and the logit check catches most explosions earlier."""

STATE_KEY = "kdlens_health"
"""Where a training checkpoint keeps the monitor's state, so that a resumed run compares with the
norm at the run's real start and keeps its maxima."""


def global_norm(parameters: Iterable[Tensor]) -> float:
    """The L2 norm of all ``parameters`` together, in float64 (no overflow for huge weights)."""
    norms = [p.detach().double().norm() for p in parameters]
    return float(torch.stack(norms).norm()) if norms else 0.0


class HealthMonitor:
    """Running maxima of ``|logit|`` and of the weight-norm growth, and whether (and from which
    epoch) either crossed its threshold."""

    def __init__(self, max_abs_logit: float = MAX_ABS_LOGIT, max_weight_norm_growth: float = MAX_WEIGHT_NORM_GROWTH) -> None:
        self.logit_threshold = max_abs_logit
        self.growth_threshold = max_weight_norm_growth
        self.start_norm: float | None = None
        self.max_abs_logit = 0.0
        self.weight_norm_growth = 1.0
        self.exploded_epoch: int | None = None
        self._pending: Tensor | None = None  # this epoch's running max |logit|, on the model's device

    def start(self, model: nn.Module) -> None:
        """Record the starting norm (a resumed run keeps the one restored from its checkpoint)."""
        if self.start_norm is None:
            self.start_norm = global_norm(model.parameters())

    def observe(self, logits: Tensor) -> None:
        """Fold a batch's logits into the running max (no device synchronisation)."""
        peak = logits.detach().abs().amax()
        self._pending = peak if self._pending is None else torch.maximum(self._pending, peak)

    def end_epoch(self, model: nn.Module, epoch: int) -> str | None:
        """Update the maxima after ``epoch`` (counting from 1); the warning to print the first time
        a threshold is crossed, else None."""
        self._fold()
        norm = global_norm(model.parameters())
        start = self.start_norm or 0.0
        growth = norm / start if start > 0 else (math.inf if norm > 0 else 1.0)
        self.weight_norm_growth = max(self.weight_norm_growth, growth)
        if self.exploded_epoch is not None or not (self.exploding_logits or self.exploding_weights):
            return None
        self.exploded_epoch = epoch
        signs = []
        if self.exploding_logits:
            signs.append(f"|logit| reached {self.max_abs_logit:.2g} (above {self.logit_threshold:g}: the softmax is one-hot)")
        if self.exploding_weights:
            signs.append(f"the weights' norm grew {self.weight_norm_growth:.2g}× since the start (above {self.growth_threshold:g}×)")
        return (
            f"warning: the run is exploding after epoch {epoch}: {' and '.join(signs)}. The loss is still finite, so "
            "training goes on, but its results will be meaningless; results.json marks them (health). Lower "
            "recipe.optimizer.lr or set recipe.grad_clip_norm."
        )

    def _fold(self) -> None:
        """Move the running max of the batches seen so far into :attr:`max_abs_logit`."""
        if self._pending is not None:
            self.max_abs_logit = max(self.max_abs_logit, float(self._pending))
            self._pending = None

    @property
    def exploding_logits(self) -> bool:
        return self.max_abs_logit > self.logit_threshold

    @property
    def exploding_weights(self) -> bool:
        return self.weight_norm_growth > self.growth_threshold

    def results(self) -> RunHealth:
        self._fold()
        return RunHealth(
            max_abs_logit=self.max_abs_logit,
            weight_norm_growth=self.weight_norm_growth,
            exploding_logits=self.exploding_logits,
            exploding_weights=self.exploding_weights,
            exploded_epoch=self.exploded_epoch,
        )

    def state_dict(self) -> dict[str, Any]:
        self._fold()  # a checkpoint is written after validation, before the epoch's end_epoch
        return {
            "start_norm": self.start_norm,
            "max_abs_logit": self.max_abs_logit,
            "weight_norm_growth": self.weight_norm_growth,
            "exploded_epoch": self.exploded_epoch,
        }

    def load_state_dict(self, state: Any) -> None:
        if not isinstance(state, dict):  # a checkpoint from before the monitor: start afresh
            return
        for name in ("start_norm", "max_abs_logit", "weight_norm_growth"):
            if isinstance(state.get(name), (int, float)):
                setattr(self, name, float(state[name]))
        if isinstance(state.get("exploded_epoch"), int):
            self.exploded_epoch = state["exploded_epoch"]
