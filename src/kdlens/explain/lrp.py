"""Layer-wise relevance propagation through zennit, with canonizers for the models here.

LRP rules assume a canonical network: batch norm merged into the layer before it, and residual
additions done by a module (zennit's ``Sum``) so that a rule redistributes relevance over the
summands instead of the gradient copying it to both. :func:`lrp_canonizers` picks:

* torchvision ResNets: zennit's ``ResNetCanonizer`` (merge BN + ``Sum`` in BasicBlock/Bottleneck);
* CIFAR ResNets (``kdlens.models.cifar_resnet``): each conv merged with the BN that follows it
  (stem, both convs of each block, the projection shortcut), and the block's addition by ``Sum``;
* WRNs (pre-activation): ``conv1`` merged with ``bn2`` in each block, the addition by ``Sum``; the
  other BNs follow an addition, cannot be merged and pass relevance through (zennit's rule);
* timm ResNets (``timm:resnet18``, ``timm:resnet50.a1_in1k``, ...): each BN merged into the conv
  before it, and the blocks' additions by ``Sum`` (timm is not imported: blocks are recognised by
  their class); timm vision transformers are refused (zennit has no rules for attention);
* anything else: zennit's ``SequentialMergeBatchNorm`` (a BN right after a linear layer in module
  order, e.g. VGG and MobileNet ``Sequential`` blocks); residual additions elsewhere are not
  canonized, which breaks conservation there.

Every call checks that the canonized model still computes the same logits (a wrong merge would
not), and zennit restores the model on exit.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import ResNet as TorchvisionResNet
from zennit.attribution import Gradient
from zennit.canonizers import AttributeCanonizer, Canonizer, NamedMergeBatchNorm, SequentialMergeBatchNorm
from zennit.composites import COMPOSITES
from zennit.core import Composite
from zennit.layer import Sum
from zennit.torchvision import ResNetCanonizer

from kdlens.explain.base import Explainer, ExplainError, Reduce, reduce_channels, register_explainer, require_autograd
from kdlens.models.cifar_resnet import BasicBlock, CifarResNet
from kdlens.models.wrn import PreActBlock, WideResNet


@register_explainer("lrp")
class LRP(Explainer):
    """LRP relevance of the target logit (the initial relevance is the logit itself), by zennit.
    ``composite``: a name in ``zennit.composites.COMPOSITES`` (default ``epsilon_plus_flat``: flat
    rule on the first layer, z⁺ on other convolutions, ε on linear layers), built with
    :func:`lrp_canonizers`; or a zennit ``Composite`` instance, used as given (with its own
    canonizers). Needs ``model.eval()``: merging BN uses its running statistics."""

    def _attribute(self, x: Tensor, target: Tensor, *, composite: str | Composite = "epsilon_plus_flat",
                   reduce: Reduce = "sum") -> Tensor:
        if self.model.training:
            raise ExplainError("LRP merges batch norms with their running statistics: call model.eval() first")
        require_autograd()
        composite = _composite(composite, self.model)
        with torch.no_grad():
            logits = self.model(x)
        with torch.enable_grad(), Gradient(self.model, composite) as attributor:
            canonized_logits, relevance = attributor(
                x.detach().requires_grad_(), lambda output: F.one_hot(target, output.shape[1]) * output
            )
        if not torch.allclose(canonized_logits, logits, rtol=1e-3, atol=1e-4):
            raise ExplainError(
                f"the LRP canonizers changed what {type(self.model).__name__} computes (largest logit change "
                f"{(canonized_logits - logits).abs().max():.3g}); pass a zennit Composite with canonizers for this model"
            )
        return reduce_channels(relevance.detach(), reduce)


def _composite(composite: str | Composite, model: nn.Module) -> Composite:
    if isinstance(composite, Composite):
        return composite
    if composite not in COMPOSITES:
        raise ExplainError(f"unknown zennit composite '{composite}'; valid: {', '.join(sorted(COMPOSITES))}")
    try:
        return COMPOSITES[composite](canonizers=lrp_canonizers(model))
    except TypeError as err:  # e.g. epsilon_gamma_box needs the input range
        raise ExplainError(f"composite '{composite}' needs arguments ({err}); pass a zennit Composite instance") from None


def lrp_canonizers(model: nn.Module) -> list[Canonizer]:
    """The canonizers that put ``model`` in LRP's canonical form (see the module doc)."""
    if isinstance(model, TorchvisionResNet):
        return [ResNetCanonizer()]
    if isinstance(model, CifarResNet):
        return [NamedMergeBatchNorm(_cifar_resnet_merges(model)), _residual_sum(BasicBlock, _basic_block_forward)]
    if isinstance(model, WideResNet):
        merges = [((f"{name}.conv1",), f"{name}.bn2") for name, m in model.named_modules() if isinstance(m, PreActBlock)]
        return [NamedMergeBatchNorm(merges), _residual_sum(PreActBlock, _preact_block_forward)]
    if _timm_class(model) == ("resnet", "ResNet"):
        return [SequentialMergeBatchNorm(), AttributeCanonizer(_timm_resnet_block_attributes)]
    if _timm_class(model) is not None and any(type(m).__name__.endswith("Attention") for m in model.modules()):
        raise ExplainError(
            f"LRP does not support {type(model).__name__} (timm): zennit has no rules for attention layers, so the "
            "relevance would not be LRP's; explain it with gradcam (at a block's norm1) or an input-gradient method"
        )
    return [SequentialMergeBatchNorm()]


def _timm_class(module: nn.Module) -> tuple[str, str] | None:
    """(timm module, class name) of a timm model or layer, e.g. ("resnet", "BasicBlock"); None otherwise."""
    package, _, name = type(module).__module__.rpartition(".")
    return (name, type(module).__name__) if package == "timm.models" else None


def _timm_resnet_block_attributes(name: str, module: nn.Module) -> dict | None:
    forward = {("resnet", "BasicBlock"): _timm_basic_block_forward, ("resnet", "Bottleneck"): _timm_bottleneck_forward}
    block_forward = forward.get(_timm_class(module))
    if block_forward is None:
        return None
    return {"forward": block_forward.__get__(module), "canonizer_sum": Sum()}


def _timm_residual_out(self: nn.Module, out: Tensor, x: Tensor) -> Tensor:
    if self.se is not None:
        out = self.se(out)
    if self.drop_path is not None:
        out = self.drop_path(out)
    shortcut = x if self.downsample is None else self.downsample(x)
    return self.canonizer_sum(torch.stack([shortcut, out], dim=-1))


def _timm_basic_block_forward(self: nn.Module, x: Tensor) -> Tensor:
    """timm's ``resnet.BasicBlock.forward`` with the addition done by ``Sum``."""
    out = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
    out = self.bn2(self.conv2(out))
    return self.act2(_timm_residual_out(self, out, x))


def _timm_bottleneck_forward(self: nn.Module, x: Tensor) -> Tensor:
    """timm's ``resnet.Bottleneck.forward`` with the addition done by ``Sum``."""
    out = self.act1(self.bn1(self.conv1(x)))
    out = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(out)))))
    out = self.bn3(self.conv3(out))
    return self.act3(_timm_residual_out(self, out, x))


def _cifar_resnet_merges(model: CifarResNet) -> list[tuple[tuple[str, ...], str]]:
    merges = [(("conv1",), "bn1")]
    for name, module in model.named_modules():
        if isinstance(module, BasicBlock):
            merges += [((f"{name}.conv1",), f"{name}.bn1"), ((f"{name}.conv2",), f"{name}.bn2")]
            if isinstance(module.shortcut, nn.Sequential):
                merges.append(((f"{name}.shortcut.0",), f"{name}.shortcut.1"))
    return merges


def _residual_sum(block_type: type[nn.Module], forward: Callable[..., Tensor]) -> AttributeCanonizer:
    """Gives every ``block_type`` module a ``Sum`` and a ``forward`` that adds through it."""

    def attributes(name: str, module: nn.Module) -> dict | None:
        if isinstance(module, block_type):
            return {"forward": forward.__get__(module), "canonizer_sum": Sum()}
        return None

    return AttributeCanonizer(attributes)


def _basic_block_forward(self: BasicBlock, x: Tensor) -> Tensor:
    out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    return F.relu(self.canonizer_sum(torch.stack([self.shortcut(x), out], dim=-1)))


def _preact_block_forward(self: PreActBlock, x: Tensor) -> Tensor:
    activated = F.relu(self.bn1(x))
    out = self.conv2(F.relu(self.bn2(self.conv1(activated))))
    shortcut = x if self.projection is None else self.projection(activated)
    return self.canonizer_sum(torch.stack([shortcut, out], dim=-1))
