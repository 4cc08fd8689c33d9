"""Model registry: CIFAR distillation architectures and torchvision models, with feature taps.

Importing this package registers every family, so ``create_model(name, ...)`` works for all names
in ``list_models()``, and for ``timm:<name>`` with any timm model (resolved on first use; timm is
imported only then).
"""

from kdlens.models import (  # noqa: F401  (each module registers its models)
    bcos,
    cifar_resnet,
    cifar_resnetv2,
    mobilenetv2,
    shufflenet,
    timm_models,
    torchvision_models,
    vgg,
    wrn,
)
from kdlens.models.base import (
    MODELS,
    ModelSpec,
    WeightsError,
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
    "WeightsError",
    "count_parameters",
    "create_model",
    "get_model_spec",
    "list_models",
    "resolve_module",
    "stage_paths",
]
