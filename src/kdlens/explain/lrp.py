"""Layer-wise relevance propagation through zennit: one construction, :func:`lrp_relevance`, used
by the ``lrp`` explainer and by explanation losses (e²KD).

LRP rules assume a canonical network: batch norm merged into the layer before it, and residual
additions done by a module (zennit's ``Sum``). Which canonizers do that is a fact of the
architecture, so the model's spec declares it (``ModelSpec.lrp_canonizers``, built in
:mod:`kdlens.models.canonizers`); :func:`lrp_canonizers` asks the spec of a model built by
``create_model`` and gives any other model zennit's ``SequentialMergeBatchNorm``.

Two variants, chosen by ``canonize``:

* ``canonize=True`` (the default): the spec's canonizers. Merging uses the batch norms' running
  statistics, so the model must be in eval mode; every call checks that the canonized model still
  computes the same logits (a wrong merge would not), and zennit restores the model on exit.
* ``canonize=False``, e²KD's definition (REFERENCE §1): no canonizers, so batch norms are not
  merged and pass the plain gradient (and residual additions are not redistributed). zennit's
  canonizers rewrite weights in place, which a second-order gradient cannot go through; without
  them the relevance is differentiable (``create_graph=True``) and reaches every parameter, batch
  norms' included. It works in train mode too (inside a training step).

zennit is imported inside these functions only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlens.explain.base import Explainer, ExplainError, Reduce, reduce_channels, register_explainer, require_autograd
from kdlens.models import canonizers
from kdlens.models.base import spec_of

if TYPE_CHECKING:
    from zennit.canonizers import Canonizer
    from zennit.core import Composite

DEFAULT_COMPOSITE = "epsilon_plus_flat"
"""zennit's EpsilonPlusFlat: flat rule on the first layer, z⁺ on other convolutions, ε on linear layers."""


def lrp_canonizers(model: nn.Module) -> list[Canonizer]:
    """The canonizers that put ``model`` in LRP's canonical form: its spec's
    (``ModelSpec.lrp_canonizers``), else zennit's ``SequentialMergeBatchNorm``."""
    spec = spec_of(model)
    build = spec.lrp_canonizers if spec is not None and spec.lrp_canonizers is not None else canonizers.default
    try:
        return build(model)
    except canonizers.NoLRPRules as err:
        raise ExplainError(str(err)) from None


def lrp_composite(model: nn.Module, composite: str | Composite = DEFAULT_COMPOSITE, *, canonize: bool = True) -> Composite:
    """The zennit composite named ``composite`` (a name in ``zennit.composites.COMPOSITES``), with
    ``model``'s canonizers when ``canonize``; a ``Composite`` instance is used as given (with its
    own canonizers)."""
    from zennit.composites import COMPOSITES
    from zennit.core import Composite

    if isinstance(composite, Composite):
        return composite
    if composite not in COMPOSITES:
        raise ExplainError(f"unknown zennit composite '{composite}'; valid: {', '.join(sorted(COMPOSITES))}")
    try:
        return COMPOSITES[composite](canonizers=lrp_canonizers(model) if canonize else [])
    except TypeError as err:  # e.g. epsilon_gamma_box needs the input range
        raise ExplainError(f"composite '{composite}' needs arguments ({err}); pass a zennit Composite instance") from None


def lrp_relevance(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    *,
    composite: str | Composite = DEFAULT_COMPOSITE,
    canonize: bool = True,
    create_graph: bool = False,
) -> Tensor:
    """LRP relevance (B, C, H, W) of the target logits (the initial relevance is the logit itself)
    with respect to ``x``; ``canonize``: see the module doc. With ``create_graph`` (``canonize=False``
    only) the relevance stays in the graph, so a loss on it trains ``model``."""
    from zennit.attribution import Gradient

    require_autograd()
    if canonize and create_graph:
        raise ExplainError(
            "create_graph=True needs canonize=False: zennit's canonizers rewrite the weights in place, "
            "which a second-order gradient cannot go through"
        )
    if canonize and model.training:
        raise ExplainError("LRP merges batch norms with their running statistics: call model.eval() first")
    composite = lrp_composite(model, composite, canonize=canonize)
    if canonize:
        with torch.no_grad():
            logits = model(x)
    with torch.enable_grad(), Gradient(model, composite, create_graph=create_graph) as attributor:
        output, relevance = attributor(
            x.detach().requires_grad_(), lambda output: F.one_hot(target, output.shape[1]) * output
        )
    if canonize and not torch.allclose(output, logits, rtol=1e-3, atol=1e-4):
        raise ExplainError(
            f"the LRP canonizers changed what {type(model).__name__} computes (largest logit change "
            f"{(output - logits).abs().max():.3g}); pass a zennit Composite with canonizers for this model"
        )
    return relevance if create_graph else relevance.detach()


@register_explainer("lrp")
class LRP(Explainer):
    """LRP relevance of the target logit, by zennit (:func:`lrp_relevance`). ``composite``: a name in
    ``zennit.composites.COMPOSITES`` (default ``epsilon_plus_flat``), built with the model's
    canonizers (:func:`lrp_canonizers`); or a zennit ``Composite`` instance, used as given.
    ``canonize=False``: e²KD's variant, without canonizers; differentiable (``create_graph=True``)
    and usable in train mode. With canonizers it needs ``model.eval()``."""

    differentiable = True
    differentiable_options: ClassVar[dict[str, Any]] = {"canonize": False}

    def _attribute(self, x: Tensor, target: Tensor, *, create_graph: bool, composite: str | Composite = DEFAULT_COMPOSITE,
                   canonize: bool = True, reduce: Reduce = "sum") -> Tensor:
        relevance = lrp_relevance(self.model, x, target, composite=composite, canonize=canonize, create_graph=create_graph)
        return reduce_channels(relevance, reduce)
