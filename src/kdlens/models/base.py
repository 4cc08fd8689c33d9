"""The model registry: what every architecture declares about itself, and how models are built."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from kdlens.errors import UserError
from kdlens.registry import MODELS, unknown_name_message

ModelBuilder = Callable[..., nn.Module]
"""Called as ``build(num_classes=..., in_channels=...)``, and with ``weights=NAME`` for families
with published weights."""


class WeightsError(UserError, ValueError):
    """Pretrained weights that cannot be had: an unknown name, or a file neither cached nor
    downloadable. The message names the fix."""


@dataclass(frozen=True)
class ModelSpec:
    """One registered architecture and the module paths that distillation and attribution tap."""

    name: str
    build: ModelBuilder
    family: str
    stages: tuple[str, ...]
    """Module paths (as in ``model.named_modules()``) of each stage's output, shallow to deep; the
    last one is the last convolutional feature map before global pooling."""
    classifier: str
    """Module path of the classification layer: the final ``nn.Linear``, whose input is the
    penultimate feature vector, or for B-cos nets the 1×1 B-cos conv whose spatial mean is the
    logits (its weight is (K, C, 1, 1): ``weight.flatten(1)`` gives the (K, C) matrix)."""
    weights: Callable[[], list[str]] | None = None
    """For families with published weights: the names ``build(weights=...)`` accepts."""
    foreign_keys: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    """Per foreign codebase (e.g. ``mdistiller``): ``(regex, replacement)`` rules that rename its
    state_dict keys to this model's; the first rule that matches a key applies."""
    explain_layer: str | None = None
    """Module path that CAM explanations default to, where probing for the last 4-D feature map
    would pick a wrong one (e.g. vision transformers' token outputs); None: probe. Built models
    carry it as ``model.kdlens_explain_layer``."""
    input_normalization: bool = False
    """The model undoes the dataset's input normalisation itself (B-cos nets read pixels in [0, 1]
    as [x, 1 − x]): once built for a dataset it must be given the dataset's statistics with
    ``model.set_input_normalization(mean, std)`` (they are saved with its weights)."""
    lrp_canonizers: Callable[[nn.Module], list] | None = None
    """For LRP: builds the zennit canonizers that put a built model in LRP's canonical form (batch
    norms merged into the layer before them, residual additions done by zennit's ``Sum``;
    :mod:`kdlens.models.canonizers`, zennit imported only there, inside the builders); may raise
    ``NoLRPRules`` where zennit has no rules for the architecture. None: zennit's
    ``SequentialMergeBatchNorm`` only. Built models name their spec: ``model.kdlens_model``."""


def register_model(
    name: str,
    build: ModelBuilder,
    *,
    family: str,
    stages: tuple[str, ...],
    classifier: str,
    weights: Callable[[], list[str]] | None = None,
    foreign_keys: dict[str, tuple[tuple[str, str], ...]] | None = None,
    input_normalization: bool = False,
    lrp_canonizers: Callable[[nn.Module], list] | None = None,
) -> ModelSpec:
    """Shorthand for ``MODELS.register(name, ModelSpec(name=name, build=build, ...))``."""
    spec = ModelSpec(name=name, build=build, family=family, stages=stages, classifier=classifier,
                     weights=weights, foreign_keys=foreign_keys or {}, input_normalization=input_normalization,
                     lrp_canonizers=lrp_canonizers)
    return MODELS.register(name, spec)


def get_model_spec(name: str) -> ModelSpec:
    return MODELS[name]


def list_models() -> list[str]:
    return MODELS.names()


def stage_paths(name: str) -> tuple[str, ...]:
    return MODELS[name].stages


def create_model(
    name: str, num_classes: int, in_channels: int = 3, weights: str | None = None, weights_file: str | None = None
) -> nn.Module:
    """A model that returns logits: freshly initialised, or with published ``weights`` by name
    (e.g. ``IMAGENET1K_V2`` or ``DEFAULT`` for torchvision, ``pretrained`` for timm). Pretrained
    models carry ``model.pretrained_cfg`` (weights name, mean, std, class names, sizes); with
    another ``num_classes`` the classifier is replaced by a new one, with another ``in_channels``
    the input convolution's weights are adapted (summed for one channel). ``weights_file``: for
    ``weights="pretrained"`` on a timm model, a local file of the weights (offline use)."""
    if num_classes < 1 or in_channels < 1:
        raise ValueError(
            f"num_classes and in_channels must be >= 1, got {num_classes} and {in_channels}"
        )
    spec = MODELS[name]
    if weights_file is not None:
        if spec.family != "timm" or weights != "pretrained":
            raise WeightsError(
                f"weights_file is for timm models with weights='pretrained' (got model '{name}', weights={weights!r}): "
                "start other models from a file with model.checkpoint (`kdlens import` converts other codebases' files)"
            )
        return _built(spec, spec.build(num_classes=num_classes, in_channels=in_channels, weights=weights,
                                       weights_file=weights_file))
    if weights is None:
        return _built(spec, spec.build(num_classes=num_classes, in_channels=in_channels))
    if spec.weights is None:
        raise WeightsError(
            f"model '{name}' has no published weights by name: start it from a checkpoint instead "
            "(model.checkpoint; `kdlens import` converts other codebases' files)"
        )
    if weights not in spec.weights():
        raise WeightsError(unknown_name_message(f"weights for '{name}'", weights, spec.weights()))
    return _built(spec, spec.build(num_classes=num_classes, in_channels=in_channels, weights=weights))


def _built(spec: ModelSpec, model: nn.Module) -> nn.Module:
    """``model`` naming the spec it was built from (``model.kdlens_model``), so that code given only
    the model can ask its spec (e.g. LRP for its canonizers: :func:`spec_of`)."""
    model.kdlens_model = spec.name
    return model


def spec_of(model: nn.Module) -> ModelSpec | None:
    """The spec ``model`` was built from by :func:`create_model`, or None for other models."""
    name = getattr(model, "kdlens_model", None)
    return MODELS.get(name) if isinstance(name, str) else None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convolutions and identity batch norms, as the CIFAR distillation code uses."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def replace_classifier(model: nn.Module, path: str, num_classes: int) -> None:
    """Swap the ``nn.Linear`` at ``path`` for a new one with ``num_classes`` outputs (fine-tuning
    a pretrained model on another label set keeps everything but the head)."""
    old = model.get_submodule(path)
    if not isinstance(old, nn.Linear):
        raise TypeError(f"the classifier '{path}' is a {type(old).__name__}, not an nn.Linear")
    if old.out_features == num_classes:
        return
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    _set_submodule(model, path, new)


def adapt_input_conv(model: nn.Module, path: str, in_channels: int) -> None:
    """Give the ``nn.Conv2d`` at ``path`` ``in_channels`` inputs, keeping what it learnt: for one
    channel the RGB filters are summed (a grey image is R = G = B); otherwise they are tiled and
    rescaled so that the response to a constant image is unchanged."""
    old = model.get_submodule(path)
    if old.in_channels == in_channels:
        return
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                    dilation=old.dilation, groups=old.groups, bias=old.bias is not None)
    with torch.no_grad():
        weight = old.weight
        if in_channels == 1:
            new.weight.copy_(weight.sum(1, keepdim=True))
        else:
            repeats = -(-in_channels // weight.shape[1])
            new.weight.copy_(weight.repeat(1, repeats, 1, 1)[:, :in_channels] * weight.shape[1] / in_channels)
        if old.bias is not None:
            new.bias.copy_(old.bias)
    _set_submodule(model, path, new)


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, attribute = path.rpartition(".")
    setattr(model.get_submodule(parent_path), attribute, module)
