"""ImageNet architectures from torchvision, always randomly initialised (``weights=None``).

They keep their ImageNet stems (32× downsampling), so at CIFAR resolution their last feature map
is 1×1; they are here as familiar reference teachers and students, not as CIFAR-tuned models.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn
from torchvision import models as tv

from kdlens.models.base import register_model

# The in-place-capable layers the registered torchvision models contain.
_INPLACE_CAPABLE = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.Dropout)


def _build_torchvision(
    constructor: Callable[..., nn.Module],
    input_conv_path: str,
    *,
    num_classes: int,
    in_channels: int = 3,
) -> nn.Module:
    model = constructor(weights=None, num_classes=num_classes)
    if in_channels != 3:
        _replace_input_conv(model, input_conv_path, in_channels)
    # In-place activations would overwrite the outputs of the modules before them, which
    # FeatureTaps may be holding (e.g. a BatchNorm tapped for pre-activation features).
    for module in model.modules():
        if isinstance(module, _INPLACE_CAPABLE):
            module.inplace = False
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


_RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")
for _name, _constructor in [
    ("resnet18", tv.resnet18),
    ("resnet34", tv.resnet34),
    ("resnet50", tv.resnet50),
]:
    register_model(
        _name,
        partial(_build_torchvision, _constructor, "conv1"),
        family="torchvision",
        stages=_RESNET_STAGES,
        classifier="fc",
    )

register_model(
    "mobilenet_v2",
    partial(_build_torchvision, tv.mobilenet_v2, "features.0.0"),
    family="torchvision",
    # Last block at each resolution (1/2 ... 1/32), the final one being the 1×1 conv to 1280.
    stages=("features.1", "features.3", "features.6", "features.13", "features.18"),
    classifier="classifier.1",
)
register_model(
    "mobilenet_v3_small",
    partial(_build_torchvision, tv.mobilenet_v3_small, "features.0.0"),
    family="torchvision",
    # Last block at each resolution (1/4 ... 1/32), the final one being the 1×1 conv to 576.
    stages=("features.1", "features.3", "features.8", "features.12"),
    classifier="classifier.3",
)
