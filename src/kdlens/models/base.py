"""The model registry: what every architecture declares about itself, and how models are built."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from kdlens.registry import Registry

ModelBuilder = Callable[..., nn.Module]
"""Called as ``build(num_classes=..., in_channels=...)``."""


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


MODELS: Registry[ModelSpec] = Registry("model")


def register_model(
    name: str,
    build: ModelBuilder,
    *,
    family: str,
    stages: tuple[str, ...],
    classifier: str,
) -> ModelSpec:
    spec = ModelSpec(name=name, build=build, family=family, stages=stages, classifier=classifier)
    return MODELS.register(name)(spec)


def get_model_spec(name: str) -> ModelSpec:
    return MODELS[name]


def list_models() -> list[str]:
    return MODELS.names()


def stage_paths(name: str) -> tuple[str, ...]:
    return MODELS[name].stages


def create_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """A freshly initialised model (never pretrained weights) that returns logits."""
    if num_classes < 1 or in_channels < 1:
        raise ValueError(
            f"num_classes and in_channels must be >= 1, got {num_classes} and {in_channels}"
        )
    return MODELS[name].build(num_classes=num_classes, in_channels=in_channels)


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
