"""Model registry: every model builds, runs at CIFAR and Fashion-MNIST shapes, declares tap paths
that exist, matches published parameter counts; FeatureTaps behaves like a hand-written hook."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from kdlens.models import (
    FeatureTaps,
    count_parameters,
    create_model,
    get_model_spec,
    list_models,
    resolve_module,
)

EXPECTED_MODELS = {
    *(f"resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110)),
    "resnet8x4",
    "resnet32x4",
    "wrn_16_1",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
    *(f"vgg{d}" for d in (8, 11, 13, 16, 19)),
    "mobilenetv2",
    "shufflenetv1",
    "shufflenetv2",
    "ResNet18",  # mdistiller's CIFAR ResNets (3×3 stem, four stages), not torchvision's resnet18/50
    "ResNet50",
    *(f"resnet{d}" for d in (18, 34, 50, 101, 152)),
    "wide_resnet50_2",
    "densenet169",
    "efficientnet_b0",
    "vit_b_16",
    "mobilenet_v2",
    "mobilenet_v3_small",
    *(f"bcos_{base}" for base in ("resnet8", "resnet20", "resnet56", "resnet8x4", "resnet32x4")),
    "bcos_v2_resnet8",  # MaxOut; the other bcos_v2_ depths and widths are the bcos_ ones above
}

# Millions of parameters with a 100-class head, as published for the CIFAR-100 benchmarks.
PUBLISHED_CIFAR100_PARAMS = {
    "resnet20": "0.28",
    "resnet32": "0.47",
    "resnet56": "0.86",
    "resnet110": "1.74",  # the often quoted 1.73M is the 10-class count
    "resnet8x4": "1.23",
    "resnet32x4": "7.43",
    "wrn_16_2": "0.70",
    "wrn_40_1": "0.57",
    "wrn_40_2": "2.26",
    "vgg8": "3.97",
    "vgg13": "9.46",
    "mobilenetv2": "0.81",
    "shufflenetv1": "0.95",
    "shufflenetv2": "1.36",  # with the benchmark code's 1×1 stem (a 3×3 one adds 576 weights: still 1.36)
    "ResNet18": "11.22",
    "ResNet50": "23.71",
}

# Models whose classifier reads a hidden layer, not the pooled last stage directly.
HIDDEN_LAYER_HEADS = {"mobilenet_v3_small"}
# Vision transformers take their training resolution only; their stages are token sequences.
TOKEN_MODELS = {"vit_b_16"}
MAP_MODELS = EXPECTED_MODELS - TOKEN_MODELS
# densenet169's transitions pool 2×2 down to 1×1 at 32 px: smaller inputs vanish.
AT_28_PX = MAP_MODELS - {"densenet169"}
# Models whose classifier is a 1×1 conv on the last stage map, pooled afterwards (B-cos v2 head).
PER_POSITION_HEADS = {name for name in EXPECTED_MODELS if name.startswith("bcos_")}


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    """Batches of two gain nothing from threads, and threads stall when other jobs share the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@functools.cache
def eval_model(name: str, num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """Built once per test session; only used without gradients, in eval mode."""
    return create_model(name, num_classes, in_channels).eval()


def test_registry_holds_every_model() -> None:
    v2 = {f"bcos_v2_{base}" for base in ("resnet20", "resnet56", "resnet8x4", "resnet32x4")}
    assert set(list_models()) == EXPECTED_MODELS | v2


@pytest.mark.parametrize("name", sorted(MAP_MODELS))
def test_cifar_batch_gives_logits(name: str) -> None:
    with torch.no_grad():
        logits = eval_model(name)(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 100)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", sorted(AT_28_PX))
def test_single_channel_28px_batch_gives_logits(name: str) -> None:
    with torch.no_grad():
        logits = eval_model(name, num_classes=10, in_channels=1)(torch.randn(2, 1, 28, 28))
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", sorted(MAP_MODELS))
def test_spec_paths_resolve_and_last_stage_feeds_classifier(name: str) -> None:
    spec = get_model_spec(name)
    model = eval_model(name)
    classifier = resolve_module(model, spec.classifier)
    assert isinstance(classifier, nn.Conv2d if name in PER_POSITION_HEADS else nn.Linear)
    classifier_input: list[torch.Tensor] = []
    hook = classifier.register_forward_pre_hook(
        lambda _, inputs: classifier_input.append(inputs[0])
    )
    try:
        with torch.no_grad(), FeatureTaps(model, spec.stages) as taps:
            model(torch.randn(2, 3, 32, 32))
            stage_outputs = [taps[path] for path in spec.stages]
    finally:
        hook.remove()

    assert all(output.dim() == 4 for output in stage_outputs)
    if name in PER_POSITION_HEADS:
        assert classifier_input[0] is stage_outputs[-1]
        return
    assert classifier_input[0].shape == (2, classifier.in_features)
    if name not in HIDDEN_LAYER_HEADS:
        pooled = stage_outputs[-1].mean(dim=(2, 3))
        torch.testing.assert_close(classifier_input[0], pooled)


def test_vit_takes_224_px_and_its_class_token_feeds_the_head() -> None:
    spec = get_model_spec("vit_b_16")
    model = eval_model("vit_b_16", num_classes=10)
    head_input: list[torch.Tensor] = []
    hook = resolve_module(model, spec.classifier).register_forward_pre_hook(lambda _, inputs: head_input.append(inputs[0]))
    try:
        with torch.no_grad(), FeatureTaps(model, spec.stages) as taps:
            logits = model(torch.randn(1, 3, 224, 224))
            tokens = [taps[path] for path in spec.stages]
    finally:
        hook.remove()
    assert logits.shape == (1, 10) and all(t.shape == (1, 197, 768) for t in tokens)
    torch.testing.assert_close(head_input[0], tokens[-1][:, 0])


@pytest.mark.parametrize("name", sorted(PUBLISHED_CIFAR100_PARAMS))
def test_parameter_count_matches_published(name: str) -> None:
    millions = count_parameters(eval_model(name)) / 1e6
    assert f"{millions:.2f}" == PUBLISHED_CIFAR100_PARAMS[name]


def test_create_model_rejects_unknown_name_and_bad_sizes() -> None:
    with pytest.raises(KeyError, match="resnet56"):
        create_model("resnet65", num_classes=10)
    with pytest.raises(ValueError, match="num_classes"):
        create_model("resnet8", num_classes=0)


def test_taps_return_what_a_manual_hook_sees() -> None:
    model = create_model("resnet8", num_classes=10).eval()
    paths = ["layer2.0.conv2", "layer3"]
    manual: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(path).register_forward_hook(
            lambda _, __, output, path=path: manual.__setitem__(path, output)
        )
        for path in paths
    ]
    with torch.no_grad(), FeatureTaps(model, paths) as taps:
        model(torch.randn(2, 3, 32, 32))
        for path in paths:
            assert taps[path] is manual[path]
        assert list(taps.as_dict()) == paths
    for handle in handles:
        handle.remove()


def test_taps_keep_the_graph_for_feature_losses() -> None:
    model = create_model("resnet8", num_classes=10)
    with FeatureTaps(model, ["layer2"]) as taps:
        model(torch.randn(2, 3, 32, 32))
        feature = taps["layer2"]
    assert feature.requires_grad
    feature.pow(2).mean().backward()
    assert model.conv1.weight.grad is not None
    assert model.conv1.weight.grad.abs().sum() > 0
    assert model.layer3[0].conv1.weight.grad is None  # deeper than the tap: untouched


def test_taps_remove_their_hooks() -> None:
    model = create_model("resnet8", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        with FeatureTaps(model, ["layer1", "layer3"]) as taps:
            model(x)
            kept = taps["layer3"]
        assert all(not module._forward_hooks for module in model.modules())
        model(x)
    assert taps["layer3"] is kept  # readable after exit, not overwritten by later passes


def test_long_lived_taps_follow_each_forward_until_closed() -> None:
    model = create_model("resnet8", num_classes=10).eval()
    taps = FeatureTaps(model, ["layer3"])
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
        first = taps["layer3"]
        model(torch.randn(2, 3, 32, 32))
        second = taps["layer3"]
        taps.close()
        model(torch.randn(2, 3, 32, 32))
    assert second is not first
    assert taps["layer3"] is second
    assert all(not module._forward_hooks for module in model.modules())


def test_taps_work_under_inference_mode() -> None:
    model = create_model("resnet8", num_classes=10).eval()
    with torch.inference_mode(), FeatureTaps(model, ["layer3"]) as taps:
        model(torch.randn(2, 3, 32, 32))
        assert taps["layer3"].shape == (2, 64, 8, 8)


def test_unknown_path_names_model_and_closest_paths() -> None:
    model = create_model("resnet8", num_classes=10)
    with pytest.raises(ValueError) as error:
        FeatureTaps(model, ["layer3", "layer5"])
    message = str(error.value)
    assert "'layer5'" in message and "CifarResNet" in message and "'layer3'" in message
    assert all(not module._forward_hooks for module in model.modules())

    with pytest.raises(ValueError, match=re.escape("did you mean 'layer2.0.conv2'")):
        resolve_module(model, "layer2.0.cnv2")


def test_reading_an_output_overwritten_in_place_is_an_error() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
    with FeatureTaps(model, ["1"]) as taps:
        model(torch.randn(2, 3, 8, 8))
        with pytest.raises(RuntimeError, match="modified in place"):
            taps["1"]


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "mobilenet_v3_small"])
def test_torchvision_models_have_no_inplace_layers(name: str) -> None:
    assert not any(getattr(module, "inplace", False) for module in eval_model(name).modules())


def test_torchvision_batch_norm_outputs_are_not_overwritten() -> None:
    """torchvision activations are made out-of-place so pre-activation features can be tapped."""
    model = eval_model("resnet18")
    with torch.no_grad(), FeatureTaps(model, ["layer1.0.bn1"]) as taps:
        model(torch.randn(2, 3, 32, 32))
        assert (taps["layer1.0.bn1"] < 0).any()
