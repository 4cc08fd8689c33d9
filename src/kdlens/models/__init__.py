"""Model registry: CIFAR distillation architectures and torchvision models, with feature taps.

Importing this package registers every family, so ``create_model(name, ...)`` works for all names
in ``list_models()``.
"""

from kdlens.models import (  # noqa: F401  (each module registers its models)
    bcos,
    cifar_resnet,
    mobilenetv2,
    shufflenet,
    torchvision_models,
    vgg,
    wrn,
)
from kdlens.models.base import (
    MODELS,
    ModelSpec,
    count_parameters,
    create_model,
    get_model_spec,
    list_models,
    stage_paths,
)
from kdlens.models.taps import FeatureTaps, UnknownModulePath, resolve_module

__all__ = [
    "MODELS",
    "FeatureTaps",
    "UnknownModulePath",
    "ModelSpec",
    "count_parameters",
    "create_model",
    "get_model_spec",
    "list_models",
    "resolve_module",
    "stage_paths",
]
