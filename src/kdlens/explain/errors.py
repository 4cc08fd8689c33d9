"""The explainers' error and their one precondition; below every other explain module, so that
:mod:`kdlens.explain.layers` and :mod:`kdlens.explain.base` import it and not each other."""

from __future__ import annotations

import torch

from kdlens.errors import UserError


class ExplainError(UserError, ValueError):
    """An explanation that cannot be computed as asked; the message says why and what to do."""


def require_autograd() -> None:
    if torch.is_inference_mode_enabled():
        raise ExplainError(
            "gradient-based explanations cannot run under torch.inference_mode(); "
            "use torch.no_grad() (explainers re-enable gradients where they need them) or neither"
        )
