"""LRP canonizers of the model families: what each family's spec declares as ``lrp_canonizers``.

LRP rules assume a canonical network: batch norm merged into the layer before it, and residual
additions done by a module (zennit's ``Sum``) so that a rule redistributes relevance over the
summands instead of the gradient copying it to both. Each builder takes a built model and returns
the zennit canonizers that put it in that form; zennit is imported inside the builders only.

* torchvision ResNets: zennit's ``ResNetCanonizer`` (merge BN + ``Sum`` in BasicBlock/Bottleneck);
* CIFAR ResNets and WRNs: their own builders (``lrp_canonizers`` in :mod:`kdlens.models.cifar_resnet`
  and :mod:`kdlens.models.wrn`, from :func:`merge_batch_norms` and :func:`residual_sum`);
* timm ResNets: each BN merged into the conv before it, and the blocks' additions by ``Sum``;
  timm models with attention have no LRP rules (:class:`NoLRPRules`);
* every other model (a spec without ``lrp_canonizers``): :func:`default`, zennit's
  ``SequentialMergeBatchNorm`` (a BN right after a linear layer in module order, e.g. VGG and
  MobileNet ``Sequential`` blocks); residual additions elsewhere are not canonized, which breaks
  conservation there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from kdlens.errors import UserError


class NoLRPRules(UserError, ValueError):
    """An architecture for which zennit has no LRP rules (e.g. attention layers)."""


def default(model: nn.Module) -> list[Any]:
    """zennit's ``SequentialMergeBatchNorm``: for models whose spec declares no canonizers."""
    from zennit.canonizers import SequentialMergeBatchNorm

    return [SequentialMergeBatchNorm()]


def torchvision_resnet(model: nn.Module) -> list[Any]:
    from zennit.torchvision import ResNetCanonizer

    return [ResNetCanonizer()]


def timm_resnet(model: nn.Module) -> list[Any]:
    """timm's ResNets (``timm:resnet18``, ``timm:resnet50.a1_in1k``, ...); timm is not imported:
    its blocks are recognised by their module and class name."""
    from zennit.canonizers import AttributeCanonizer, SequentialMergeBatchNorm
    from zennit.layer import Sum

    forwards = {("resnet", "BasicBlock"): _timm_basic_block_forward, ("resnet", "Bottleneck"): _timm_bottleneck_forward}

    def attributes(name: str, module: nn.Module) -> dict | None:
        forward = forwards.get(timm_class(module))  # type: ignore[arg-type]
        return None if forward is None else {"forward": forward.__get__(module), "canonizer_sum": Sum()}

    return [SequentialMergeBatchNorm(), AttributeCanonizer(attributes)]


def timm_attention(model: nn.Module) -> list[Any]:
    raise NoLRPRules(
        f"LRP does not support {type(model).__name__} (timm): zennit has no rules for attention layers, so the "
        "relevance would not be LRP's; explain it with gradcam (at a block's norm1) or an input-gradient method"
    )


def timm_class(module: nn.Module) -> tuple[str, str] | None:
    """(timm module, class name) of a timm model or layer, e.g. ("resnet", "BasicBlock"); None otherwise."""
    package, _, name = type(module).__module__.rpartition(".")
    return (name, type(module).__name__) if package == "timm.models" else None


def merge_batch_norms(merges: list[tuple[tuple[str, ...], str]]) -> Any:
    """zennit's ``NamedMergeBatchNorm``: each ``((linear layer paths), batch norm path)`` merged."""
    from zennit.canonizers import NamedMergeBatchNorm

    return NamedMergeBatchNorm(merges)


def residual_sum(block_type: type[nn.Module], forward: Callable[..., Tensor]) -> Any:
    """A zennit ``AttributeCanonizer`` giving every ``block_type`` module a ``Sum``
    (``canonizer_sum``) and ``forward``, the block's forward with its addition done by that ``Sum``:
    ``self.canonizer_sum(torch.stack([shortcut, out], dim=-1))``."""
    from zennit.canonizers import AttributeCanonizer
    from zennit.layer import Sum

    def attributes(name: str, module: nn.Module) -> dict | None:
        return {"forward": forward.__get__(module), "canonizer_sum": Sum()} if isinstance(module, block_type) else None

    return AttributeCanonizer(attributes)


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
