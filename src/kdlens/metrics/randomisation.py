"""Randomisation (sanity checks): does the explanation change when the model or the class does?

Both metrics recompute attributions, so they need ``explain_fn(model, x, y)``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor, nn

from kdlens.metrics.base import (
    EXPLANATION_METRICS,
    EvaluationContext,
    Seeded,
)
from kdlens.metrics.functional import flatten, prepare_attributions, spearman, ssim


def randomised_models(
    model: nn.Module, order: Literal["top_down", "bottom_up", "independent"], seed: int
) -> Iterator[tuple[str, nn.Module]]:
    """Quantus's layer randomisation: a copy of ``model`` with one more module (every module with
    ``reset_parameters``, deepest first for ``top_down``) re-initialised at each step, cumulatively
    (``independent``: only that module). Each reset runs under ``torch.manual_seed(seed + 1)`` as in
    Quantus, inside ``fork_rng`` so the caller's random state is left untouched."""
    randomised = copy.deepcopy(model)
    modules = [(name, m) for name, m in randomised.named_modules() if hasattr(m, "reset_parameters")]
    if order == "top_down":
        modules.reverse()
    devices = [p.device for p in model.parameters() if p.device.type == "cuda"][:1]
    for name, module in modules:
        if order == "independent":
            randomised.load_state_dict(model.state_dict())
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed + 1)
            module.reset_parameters()
        yield name, randomised


@EXPLANATION_METRICS.register("mprt")
class MPRT(Seeded):
    """Adebayo et al. 2018, model parameter randomisation: the Spearman correlation between the
    given attribution and the attribution of the progressively randomised model (``layer_order``),
    per layer (:meth:`layerwise`); the score is the mean over layers (``reduction="mean"``) or the
    fully randomised model's (``"last"``). Lower is better.

    Quantus 0.6's ``return_average_correlation`` also averages in the unrandomised model's
    correlation (it skips a key ``"orig"`` but stores ``"original"``); kdlens does not.
    """

    requires = frozenset({"model", "explain_fn"})
    higher_is_better = False

    # Spearman correlations do not change under max-normalisation: ``normalise`` changes nothing.
    layer_order: Literal["top_down", "bottom_up", "independent"] = "top_down"
    seed: int = 42
    reduction: Literal["mean", "last"] = "mean"
    abs: bool = True

    def layerwise(self, context: EvaluationContext) -> dict[str, Tensor]:
        """``{module name: (B,) correlations}`` in randomisation order."""
        assert context.model is not None and context.y is not None
        a = flatten(self.attributions(context))
        scores = {}
        for name, randomised in randomised_models(context.model, self.layer_order, self.seed):
            a_random = prepare_attributions(
                context.explain(randomised, context.x, context.y), self.abs, normalise=False
            )
            scores[name] = spearman(a, flatten(a_random))
        return scores

    def compute(self, context: EvaluationContext) -> Tensor:
        per_layer = torch.stack(list(self.layerwise(context).values()), 1)
        return per_layer.mean(1) if self.reduction == "mean" else per_layer[:, -1]


@EXPLANATION_METRICS.register("random_logit")
class RandomLogit(Seeded):
    """Sixt et al. 2020: SSIM between the attribution of the explained class and that of a random
    other class (of ``num_classes``, default: the model's). Lower is better.

    kdlens compares the maps per channel over (H, W); Quantus 0.6 flattens each map to one 1-D signal
    (its 7-wide window then runs along rows and across their ends), and normalises over the batch:
    ``quantus_compat=True`` does both and draws the class from ``RandomState(seed)`` as Quantus.
    """

    requires = frozenset({"model", "explain_fn"})
    higher_is_better = False

    num_classes: int | None = None
    seed: int = 42
    normalise: bool = True

    def other_classes(self, y: Tensor, num_classes: int) -> Tensor:
        """A uniformly drawn class other than ``y`` for every sample."""
        offset = self.draws(y.device).integers(num_classes - 1, y.shape)
        return offset + (offset >= y).long()

    def compute(self, context: EvaluationContext) -> Tensor:
        assert context.model is not None and context.y is not None
        num_classes = self.num_classes or context.num_classes
        a_other = context.explain(context.model, context.x, self.other_classes(context.y, num_classes))
        group = len(context) if self.quantus_compat else 1
        a_other = prepare_attributions(a_other, self.abs, self.normalise, group)
        return ssim(self.attributions(context), a_other, flat=self.quantus_compat)
