"""Contribution maps of B-cos networks (``kdlens.models.bcos``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdlens.explain.base import Explainer, ExplainError, Reduce, reduce_channels, register_explainer, require_autograd


@register_explainer("bcos")
class BcosContributions(Explainer):
    """B-cos contributions (Böhle et al. 2022): inside ``model.explanation_mode()`` (dynamic
    scales detached) the model is linear in its input, logits = W(z)·z; the map is
    Σ_channels W(z) ⊙ z for the target class, W(z) = ∂logit/∂z from one backward of the summed
    target logits. It sums exactly to the target logit (B-cos layers have no bias).

    z is the model's own input encoding where it has one (``encode_input``/``forward_encoded``,
    e.g. [x, 1 − x] of the un-normalised image for kdlens B-cos ResNets, so ``reduce="none"`` gives
    2·C channels), else the input itself. Differentiable: with ``create_graph=True`` W(z) keeps its
    graph, so a loss on the maps trains the model.
    """

    differentiable = True

    def _attribute(self, x: Tensor, target: Tensor, *, create_graph: bool, reduce: Reduce = "sum") -> Tensor:
        explanation_mode = getattr(self.model, "explanation_mode", None)
        if explanation_mode is None:
            raise ExplainError(
                f"'bcos' explains B-cos models, and {type(self.model).__name__} has no explanation_mode(); "
                "use a B-cos model (e.g. create_model('bcos_resnet20', ...)) or another method"
            )
        require_autograd()
        if hasattr(self.model, "encode_input") and hasattr(self.model, "forward_encoded"):
            encode, forward = self.model.encode_input, self.model.forward_encoded
        else:
            encode, forward = nn.Identity(), self.model
        with torch.enable_grad(), explanation_mode():
            encoded = encode(x).detach().requires_grad_()
            score = forward(encoded).gather(1, target[:, None]).sum()
            (weights,) = torch.autograd.grad(score, encoded, create_graph=create_graph)
        contributions = weights * encoded
        return reduce_channels(contributions if create_graph else contributions.detach(), reduce)
