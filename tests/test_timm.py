"""timm models as `timm:<name>`: spec resolution, building, local weights files, config
validation, CAMs (CNN feature maps and ViT patch tokens), LRP and kdlens checkpoints. Offline:
nothing is downloaded."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

timm = pytest.importorskip("timm")

from kdlens.config import ModelConfig  # noqa: E402
from kdlens.explain import ExplainError, default_layer, explain  # noqa: E402
from kdlens.models import MODELS, FeatureTaps, WeightsError, create_model, get_model_spec  # noqa: E402
from kdlens.runs.checkpoints import checkpoint_info, load_model, save_model_checkpoint  # noqa: E402


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def randomise_batch_norms(model: torch.nn.Module) -> None:
    """Non-trivial BN statistics and affine parameters (timm zero-inits each block's last BN gamma,
    which would make every residual branch vanish)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)


def test_timm_names_resolve_to_cached_specs():
    spec = get_model_spec("timm:resnet18")
    assert spec.family == "timm" and spec.name == "timm:resnet18"
    assert spec.stages == ("act1", "layer1", "layer2", "layer3", "layer4")
    assert spec.classifier == "fc" and spec.explain_layer == "layer4"
    assert spec.weights() == ["pretrained"]
    assert MODELS["timm:resnet18"] is spec  # created once, then cached
    assert "timm:resnet18" in MODELS and "timm:resnet18" not in MODELS.names()

    tagged = get_model_spec("timm:resnet10t.c3_in1k")
    assert tagged.stages[-1] == "layer4" and tagged.classifier == "fc"

    vit = get_model_spec("timm:vit_tiny_patch16_224")
    assert vit.stages == tuple(f"blocks.{i}" for i in range(12))
    assert vit.classifier == "head"
    assert vit.explain_layer == "blocks.11.norm1"  # its last block's output tokens get no gradient from the class token


def test_unknown_timm_names_are_unknown_models_with_close_matches():
    assert "timm:nonexistent" not in MODELS
    assert "timm:resnet50.no_such_tag" not in MODELS
    with pytest.raises(KeyError, match=r"unknown model 'timm:resnet5O'\. Did you mean 'timm:resnet50'"):
        MODELS["timm:resnet5O"]
    with pytest.raises(KeyError, match=r"Did you mean 'timm:resnet50d'\?"):  # a timm name without the prefix
        MODELS["resnet50d"]
    with pytest.raises(ValidationError, match=r"unknown model 'timm:nonexistent'\. Did you mean 'timm:"):
        ModelConfig(name="timm:nonexistent")
    with pytest.raises(ValidationError, match=r"unknown model 'timm:resnet18x'\. Did you mean 'timm:resnet18'"):
        ModelConfig(name="timm:resnet18x")


def test_importing_kdlens_models_does_not_import_timm():
    code = "import sys, kdlens.models, kdlens.config; print(sorted(m for m in sys.modules if m.split('.')[0] == 'timm'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_create_model_builds_through_timm():
    model = create_model("timm:resnet10t", 7, in_channels=1)
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 7)
    assert not any(getattr(m, "inplace", False) for m in model.modules())
    assert model.pretrained_cfg["mean"] == [0.485, 0.456, 0.406] and len(model.pretrained_cfg["std"]) == 3
    assert "class_names" not in model.pretrained_cfg  # random weights: no label set
    assert model.kdlens_explain_layer == "layer4"


def test_pretrained_from_a_local_file_loads_exactly_and_swaps_the_head(tmp_path):
    source = timm.create_model("resnet10t", num_classes=5).eval()
    randomise_batch_norms(source)
    path = tmp_path / "resnet10t.pth"
    torch.save(source.state_dict(), path)
    x = torch.randn(2, 3, 64, 64)

    model = create_model("timm:resnet10t", 5, weights="pretrained", weights_file=str(path)).eval()
    assert torch.equal(model(x), source(x))  # the file's own 5-class head is kept
    assert model.pretrained_cfg["file"] == str(path) and model.pretrained_cfg["weights"] == "timm:resnet10t"

    swapped = create_model("timm:resnet10t", 3, weights="pretrained", weights_file=str(path)).eval()
    assert swapped.fc.out_features == 3
    state = swapped.state_dict()
    backbone = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(state[k], v) for k, v in backbone.items())
    with FeatureTaps(swapped, ["layer4"]) as new, FeatureTaps(model, ["layer4"]) as old:
        swapped(x), model(x)
        assert torch.equal(new["layer4"], old["layer4"])

    grey = create_model("timm:resnet10t", 3, in_channels=1, weights="pretrained", weights_file=str(path))
    assert torch.allclose(grey.conv1[0].weight, source.conv1[0].weight.sum(1, keepdim=True))  # timm sums RGB filters


def test_imagenet_weights_carry_class_names(tmp_path):
    path = tmp_path / "resnet10t_in1k.pth"
    torch.save(timm.create_model("resnet10t").state_dict(), path)
    model = create_model("timm:resnet10t", 10, weights="pretrained", weights_file=str(path))
    names = model.pretrained_cfg["class_names"]  # the weights' label set, even under a new head
    assert len(names) == 1000 and names[0].startswith("tench")


def test_weights_errors_name_the_fix(tmp_path):
    with pytest.raises(WeightsError, match="timm publishes no weights for 'resnetblur18'.*weights_file"):
        create_model("timm:resnetblur18", 3, weights="pretrained")
    with pytest.raises(WeightsError, match="does not exist"):
        create_model("timm:resnet10t", 3, weights="pretrained", weights_file=str(tmp_path / "missing.pth"))
    with pytest.raises(WeightsError, match="weights_file is for timm models"):
        create_model("resnet18", 3, weights="IMAGENET1K_V1", weights_file=str(tmp_path / "x.pth"))
    with pytest.raises(WeightsError, match="weights_file is for timm models"):
        create_model("timm:resnet10t", 3, weights_file=str(tmp_path / "x.pth"))


def test_config_validates_timm_weights_options():
    config = ModelConfig(name="timm:resnet10t", weights="pretrained", weights_file="resnet10t.pth")
    assert config.weights_file == "resnet10t.pth"
    assert ModelConfig(name="timm:vit_tiny_patch16_224", weights="pretrained").weights == "pretrained"
    with pytest.raises(ValidationError, match="unknown weights for 'timm:resnet10t'"):
        ModelConfig(name="timm:resnet10t", weights="IMAGENET1K_V1")
    with pytest.raises(ValidationError, match="'weights_file' goes with 'weights: pretrained' on a timm model"):
        ModelConfig(name="resnet18", weights="IMAGENET1K_V1", weights_file="resnet18.pth")
    with pytest.raises(ValidationError, match="'weights_file' goes with 'weights: pretrained' on a timm model"):
        ModelConfig(name="timm:resnet10t", weights_file="resnet10t.pth")


def manual_gradcam(model, layer, x, target, to_map=lambda a: a):
    """Grad-CAM by hand: the layer's output A (as a map), ∂logit/∂A, channel weights = spatial mean."""
    with FeatureTaps(model, [layer]) as taps, taps.grad_leaves():
        logits = model(x)
        tokens = taps[layer]
        (grads,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), tokens)
    activations, grads = to_map(tokens.detach()), to_map(grads)
    cam = (grads.mean((2, 3), keepdim=True) * activations).sum(1, keepdim=True)
    return F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)


def test_gradcam_on_a_timm_cnn_at_its_last_stage():
    model = create_model("timm:resnet10t", 4).eval()
    randomise_batch_norms(model)
    x = torch.randn(2, 3, 64, 64)
    target = torch.tensor([1, 3])
    assert default_layer(model, x) == "layer4" == get_model_spec("timm:resnet10t").stages[-1]
    maps = explain(model, x, target, "gradcam", relu=False)
    assert maps.shape == (2, 1, 64, 64) and maps.abs().sum() > 0
    torch.testing.assert_close(maps, manual_gradcam(model, "layer4", x, target))
    for method in ("gradcampp", "layercam", "cam", "eigencam", "ablationcam"):
        assert explain(model, x, target, method).shape == (2, 1, 64, 64)


def test_gradcam_on_vit_patch_tokens():
    model = create_model("timm:vit_tiny_patch16_224", 3).eval()
    x = torch.randn(2, 3, 224, 224)
    target = torch.tensor([0, 2])
    assert default_layer(model, x) == "blocks.11.norm1"
    maps = explain(model, x, target, "gradcam", relu=False)
    assert maps.shape == (2, 1, 224, 224) and maps.abs().sum() > 0

    def patch_grid(tokens):  # drop the class token, (B, 196, C) -> (B, C, 14, 14)
        return tokens[:, 1:].transpose(1, 2).reshape(len(tokens), -1, 14, 14)

    torch.testing.assert_close(maps, manual_gradcam(model, "blocks.11.norm1", x, target, patch_grid))

    # Differentiable: an explanation loss reaches the parameters before the layer.
    trained = explain(model, x, target, "gradcam", create_graph=True).sum()
    (grad,) = torch.autograd.grad(trained, model.patch_embed.proj.weight)
    assert grad.abs().sum() > 0
    # Methods that re-run the model on edited maps, and an explicit layer.
    assert explain(model, x[:1], "pred", "ablationcam", chunk_size=64).shape == (1, 1, 224, 224)
    assert explain(model, x[:1], "pred", "layercam", layer="blocks.5").shape == (1, 1, 224, 224)


def test_lrp_on_a_timm_resnet_equals_lrp_on_torchvision_with_its_weights():
    timm_model = create_model("timm:resnet18", 4).eval()
    randomise_batch_norms(timm_model)
    torchvision_model = create_model("resnet18", 4).eval()
    torchvision_model.load_state_dict(timm_model.state_dict())  # the two share their module names
    x = torch.randn(2, 3, 64, 64)
    relevance = explain(timm_model, x, 1, "lrp")
    assert relevance.shape == (2, 1, 64, 64) and relevance.abs().sum() > 0
    torch.testing.assert_close(relevance, explain(torchvision_model, x, 1, "lrp"), rtol=1e-4, atol=1e-6)


def test_lrp_refuses_vision_transformers():
    model = create_model("timm:vit_tiny_patch16_224", 3).eval()
    with pytest.raises(ExplainError, match="zennit has no rules for attention"):
        explain(model, torch.randn(1, 3, 224, 224), 0, "lrp")


def test_kdlens_checkpoint_of_a_timm_model_round_trips(tmp_path):
    model = create_model("timm:resnet10t", 3).eval()
    randomise_batch_norms(model)
    info = checkpoint_info(
        "timm:resnet10t", num_classes=3, in_channels=3, image_size=(64, 64), class_names=["a", "b", "c"],
        mean=model.pretrained_cfg["mean"], std=model.pretrained_cfg["std"],
    )
    path = save_model_checkpoint(tmp_path / "model.ckpt", model, info)
    loaded, loaded_info = load_model(path)
    assert loaded_info["model"] == "timm:resnet10t"
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(loaded(x), model(x))
