"""ImageNet architectures from torchvision: randomly initialised, or with torchvision's published
weights by name (``weights: IMAGENET1K_V2`` or ``DEFAULT``).

Weights come through torchvision's own cache, ``$TORCH_HOME/hub/checkpoints/<file>``: a cached
file loads without network; a missing one is downloaded (hash-checked) unless ``KDLENS_OFFLINE=1``.
Files are read with ``weights_only=True``.

They keep their ImageNet stems (32× downsampling), so at CIFAR resolution their last feature map
is 1×1; ``vit_b_16`` takes 224×224 inputs only.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from kdlens.models import canonizers
from kdlens.models.base import WeightsError, adapt_input_conv, register_model, replace_classifier

# The in-place-capable layers the registered torchvision models contain.
_INPLACE_CAPABLE = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Dropout)

# torchvision's published densenet files still use the module names of old releases
# ("norm.1" for what is now "norm1"); torchvision renames them with this rule when it loads them.
_DENSENET_LEGACY_KEYS = ((r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$", r"\1\2"),)


def _tv():
    """``torchvision.models``, imported when a torchvision model is first built or its weights
    listed (registering the names needs no torchvision)."""
    from torchvision import models

    return models


@functools.cache
def densenet_class() -> type[nn.Module]:
    """``DenseNet``: torchvision's DenseNet with its final ReLU as a module: torchvision applies it
    functionally and in place, which overwrites the last feature map that taps and Grad-CAM read."""

    class DenseNet(_tv().DenseNet):
        __doc__ = densenet_class.__doc__
        final_relu: nn.ReLU

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.final_relu(self.features(x))
            return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))

    DenseNet.__module__ = __name__
    DenseNet.__qualname__ = "DenseNet"
    return DenseNet


def __getattr__(name: str):
    if name == "DenseNet":
        return densenet_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _constructor(name: str) -> Callable[..., nn.Module]:
    return getattr(_tv(), name)


def _weights_names(constructor: str) -> list[str]:
    return list(_tv().get_model_weights(_constructor(constructor)).__members__)  # DEFAULT is one of them


def weights_cache_path(url: str) -> Path:
    """Where torchvision (``torch.hub``) caches the file of ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _published_state_dict(url: str) -> dict[str, torch.Tensor]:
    cached = weights_cache_path(url)
    if cached.is_file():
        return torch.load(cached, map_location="cpu", weights_only=True)
    if os.environ.get("KDLENS_OFFLINE"):
        raise WeightsError(
            f"weights file '{cached.name}' is not cached at {cached} and KDLENS_OFFLINE is set: copy the file "
            f"there (download it from {url} on a machine that is online), or unset KDLENS_OFFLINE"
        )
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, check_hash=True, weights_only=True)
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a hash mismatch a RuntimeError
        raise WeightsError(
            f"weights file '{cached.name}' is not cached at {cached} and could not be downloaded from {url} "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}): copy the file there"
        ) from None


def _build_torchvision(
    constructor_name: str,
    input_conv_path: str,
    classifier_path: str,
    legacy_keys: tuple[tuple[str, str], ...] = (),
    *,
    num_classes: int,
    in_channels: int = 3,
    weights: str | None = None,
) -> nn.Module:
    tv = _tv()
    constructor = _constructor(constructor_name)
    if weights is None:
        model = constructor(weights=None, num_classes=num_classes)
        if in_channels != 3:
            _replace_input_conv(model, input_conv_path, in_channels)
    else:
        model = _pretrained(constructor, weights, legacy_keys)
        replace_classifier(model, classifier_path, num_classes)
        adapt_input_conv(model, input_conv_path, in_channels)
    if isinstance(model, tv.DenseNet):
        model.__class__ = densenet_class()
        model.final_relu = nn.ReLU()
    # In-place activations would overwrite the outputs of the modules before them, which
    # FeatureTaps may be holding (e.g. a BatchNorm tapped for pre-activation features).
    for module in model.modules():
        if isinstance(module, _INPLACE_CAPABLE):
            module.inplace = False
    return model


def _pretrained(constructor: Callable[..., nn.Module], name: str, legacy_keys: tuple[tuple[str, str], ...]) -> nn.Module:
    enum = _tv().get_model_weights(constructor)
    weights = enum[name]
    categories = weights.meta["categories"]
    # torchvision's ViT builders size their positional embedding from the weights' image size.
    extra = {"image_size": weights.meta["min_size"][0]} if "vit" in constructor.__name__ else {}
    model = constructor(weights=None, num_classes=len(categories), **extra)
    state = _published_state_dict(weights.url)
    for pattern, replacement in legacy_keys:
        state = {re.sub(pattern, replacement, key): value for key, value in state.items()}
    model.load_state_dict(state)
    transform = weights.transforms()
    model.pretrained_cfg = {
        "weights": f"{enum.__name__}.{weights.name}",
        "mean": list(transform.mean),
        "std": list(transform.std),
        "crop_size": transform.crop_size[0],
        "resize_size": transform.resize_size[0],
        "class_names": list(categories),
    }
    return model


def _replace_input_conv(model: nn.Module, path: str, in_channels: int) -> None:
    parent_path, _, attribute = path.rpartition(".")
    parent = model.get_submodule(parent_path)
    old = getattr(parent, attribute)
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        old.kernel_size,
        old.stride,
        old.padding,
        dilation=old.dilation,
        groups=old.groups,
        bias=old.bias is not None,
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    setattr(parent, attribute, new)


def _register(
    name: str,
    constructor: str,
    input_conv_path: str,
    stages: tuple[str, ...],
    classifier: str,
    legacy_keys: tuple[tuple[str, str], ...] = (),
    lrp_canonizers: Callable[[nn.Module], list] | None = None,
) -> None:
    register_model(
        name,
        partial(_build_torchvision, constructor, input_conv_path, classifier, legacy_keys),
        family="torchvision",
        stages=stages,
        classifier=classifier,
        weights=partial(_weights_names, constructor),
        foreign_keys={"torchvision": legacy_keys} if legacy_keys else None,
        lrp_canonizers=lrp_canonizers,
    )


_RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")
for _name in ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2"]:
    _register(_name, _name, "conv1", _RESNET_STAGES, "fc", lrp_canonizers=canonizers.torchvision_resnet)

# Last block at each resolution (1/2 ... 1/32), the final one being the 1×1 conv to 1280.
_register("mobilenet_v2", "mobilenet_v2", "features.0.0", ("features.1", "features.3", "features.6", "features.13", "features.18"), "classifier.1")
# Last block at each resolution (1/4 ... 1/32), the final one being the 1×1 conv to 576.
_register("mobilenet_v3_small", "mobilenet_v3_small", "features.0.0", ("features.1", "features.3", "features.8", "features.12"), "classifier.3")
# Last block at each resolution (1/2 ... 1/32), the final one being the 1×1 conv to 1280.
_register("efficientnet_b0", "efficientnet_b0", "features.0.0", ("features.1", "features.2", "features.3", "features.5", "features.8"), "classifier.1")
# Each dense block, then the activated map that is pooled.
_register(
    "densenet169", "densenet169", "features.conv0",
    ("features.denseblock1", "features.denseblock2", "features.denseblock3", "final_relu"), "classifier",
    legacy_keys=_DENSENET_LEGACY_KEYS,
)
# Token sequences, not maps: stages are encoder blocks (B, 1 + 196, 768); the last is the final LayerNorm.
_register(
    "vit_b_16", "vit_b_16", "conv_proj",
    ("encoder.layers.encoder_layer_3", "encoder.layers.encoder_layer_7", "encoder.layers.encoder_layer_11", "encoder.ln"),
    "heads.head",
)
