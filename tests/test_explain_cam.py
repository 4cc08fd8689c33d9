"""The CAM family: agreement with pytorch-grad-cam, differentiability, AblationCAM's prefix skip."""

import pytest
import pytorch_grad_cam as pgc
import torch
import torch.nn.functional as F
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection, get_2d_projection_with_sign_correction

from kdlens.explain import EXPLAINERS, ModelSplit, default_layer, explain
from kdlens.models import create_model, get_model_spec, resolve_module

# One CIFAR ResNet, one pre-activation WRN, one VGG (plain chain): three different last stages.
# VGG's 512 last-stage channels cost pytorch-grad-cam 2048 full forward passes per ScoreCAM or
# AblationCAM of 4 images, so those two are compared on the 64-channel models only.
MODELS = [("resnet8", "layer3", False), ("wrn_16_1", "final_relu", False), ("vgg8", "block4", True)]
PER_CHANNEL_PASSES = {"scorecam", "ablationcam"}
REFERENCE = {
    "gradcam": pgc.GradCAM,
    "gradcampp": pgc.GradCAMPlusPlus,
    "xgradcam": pgc.XGradCAM,
    "hirescam": pgc.HiResCAM,
    "layercam": pgc.LayerCAM,
    "scorecam": pgc.ScoreCAM,
    "ablationcam": pgc.AblationCAM,
    "eigencam": pgc.EigenCAM,
}


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    return torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 5, 9])


def model_named(name):
    torch.manual_seed(1)
    return create_model(name, 10).eval()


def reference_maps(cam_class, model, layer, x, target):
    with cam_class(model, [resolve_module(model, layer)]) as cam:
        cam.batch_size = 64  # ScoreCAM/AblationCAM evaluation batch: speed only
        return torch.from_numpy(cam(x, [ClassifierOutputTarget(int(c)) for c in target]))[:, None]


@pytest.mark.parametrize("name,layer,wide", MODELS)
def test_cams_agree_with_pytorch_grad_cam(name, layer, wide, batch, monkeypatch):
    x, target = batch
    model = model_named(name)
    # An SVD's sign is arbitrary and LAPACK builds disagree on it (NumPy's vs PyTorch's), so the
    # reference EigenCAM gets pytorch-grad-cam's own sign correction, which our default applies.
    monkeypatch.setattr("pytorch_grad_cam.eigen_cam.get_2d_projection", get_2d_projection_with_sign_correction)
    for method, cam_class in REFERENCE.items():
        if wide and method in PER_CHANNEL_PASSES:
            continue
        ours = explain(model, x, target, method, layer=layer, normalize=True)
        expected = reference_maps(cam_class, model, layer, x, target)
        assert ours.shape == expected.shape == (4, 1, 32, 32)
        assert (ours - expected).abs().max() < 1e-4, method


def test_eigencam_projection_is_pytorch_grad_cams_up_to_the_svd_sign(batch):
    x, _ = batch
    model = model_named("resnet8")
    with torch.no_grad():
        activations = model.layer3(model.layer2(model.layer1(F.relu(model.bn1(model.conv1(x))))))
    ours = explain(model, x, 0, "eigencam", layer="layer3", orient=False, relu=False)
    raw = F.interpolate(torch.from_numpy(get_2d_projection(activations.numpy()))[:, None], size=32, mode="bilinear")
    for our_map, reference in zip(ours, raw):
        assert min((our_map - reference).abs().max(), (our_map + reference).abs().max()) < 1e-4


def test_aug_smooth_agrees_with_pytorch_grad_cam(batch):
    x, target = batch
    model = model_named("resnet8")
    ours = explain(model, x, target, "gradcam", tta=True, normalize=True)
    with pgc.GradCAM(model, [model.layer3]) as cam:
        expected = cam(x, [ClassifierOutputTarget(int(c)) for c in target], aug_smooth=True)
    assert (ours[:, 0] - torch.from_numpy(expected)).abs().max() < 1e-4


def test_cam_is_gradcam_times_map_area_and_the_exp_kd_convention_divides_by_channels(batch):
    x, target = batch
    model = model_named("resnet8")
    gradcam = explain(model, x, target, "gradcam")
    plain = explain(model, x, target, "cam", channel_mean=False)
    torch.testing.assert_close(plain, gradcam * 8 * 8, rtol=1e-4, atol=1e-5)  # layer3 is 8×8 at 32 px
    torch.testing.assert_close(explain(model, x, target, "cam"), plain / 64, rtol=1e-5, atol=1e-7)


def test_default_layer_is_the_model_specs_last_stage():
    x = torch.randn(1, 3, 32, 32)
    for name in ["resnet8", "wrn_16_1", "vgg8", "mobilenetv2", "shufflenetv2", "resnet18", "bcos_resnet20"]:
        assert default_layer(create_model(name, 10), x) == get_model_spec(name).stages[-1], name
    # torchvision MobileNets: the container whose output is the last stage's.
    assert default_layer(create_model("mobilenet_v2", 10), x) == "features"


@pytest.mark.parametrize("method", ["cam", "gradcam", "gradcampp", "xgradcam", "hirescam", "layercam"])
def test_create_graph_trains_parameters_before_and_after_the_layer(method):
    torch.manual_seed(0)
    model = create_model("resnet8", 10)  # train mode, as a student inside a training step
    x = torch.randn(4, 3, 16, 16)
    target_map = torch.rand(4, 1, 16, 16)
    maps = explain(model, x, torch.tensor([0, 1, 2, 3]), method, create_graph=True)
    loss = (1 - F.cosine_similarity(maps.flatten(1), target_map.flatten(1))).mean()
    loss.backward()
    assert model.conv1.weight.grad.abs().sum() > 0  # before layer3
    assert model.layer3[0].conv1.weight.grad.abs().sum() > 0
    if method == "cam":
        assert model.fc.weight.grad.abs().sum() > 0


def test_without_create_graph_maps_are_detached_and_no_parameter_gets_a_grad(batch):
    x, target = batch
    model = model_named("resnet8")
    for method in ["gradcam", "cam", "scorecam", "ablationcam", "eigencam"]:
        assert not explain(model, x, target, method).requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_frozen_models_and_no_grad_contexts_still_give_gradcam(batch):
    x, target = batch
    model = model_named("resnet8").requires_grad_(False)
    with torch.no_grad():
        maps = explain(model, x, target, "gradcam")
    assert maps.abs().sum() > 0


def count_calls(module):
    calls = []
    module.register_forward_hook(lambda *args: calls.append(1))
    return calls


def test_ablationcam_runs_the_part_before_the_layer_once_per_call(batch):
    x, target = batch
    model = model_named("resnet8")
    explainer = EXPLAINERS["ablationcam"](model, "layer3")
    explainer.attribute(x[:1], target[:1])  # builds (and checks) the split once
    stem, tail = count_calls(model.conv1), count_calls(model.fc)
    split_maps = explainer.attribute(x, target, chunk_size=16)  # 4 × 64 ablations: 16 chunks
    assert len(stem) == 1 and len(tail) == 1 + 16
    stem.clear()
    rerun_maps = explainer.attribute(x, target, chunk_size=16, prefix_skip=False)
    assert len(stem) == 1 + 16
    torch.testing.assert_close(split_maps, rerun_maps, rtol=1e-4, atol=1e-6)


def test_model_split_carries_values_from_before_the_layer():
    model = model_named("resnet8")
    x = torch.randn(3, 3, 16, 16)
    split = ModelSplit.at(model, "layer3.0.conv1", x[:2])  # the block's shortcut reads its input
    assert split is not None
    with torch.no_grad():
        layer_output, *carried = split.prefix(x)
        assert len(carried) == 1
        torch.testing.assert_close(split.rest(layer_output, *carried), model(x))
    maps = explain(model, x, 0, "ablationcam", layer="layer3.0.conv1")
    torch.testing.assert_close(maps, explain(model, x, 0, "ablationcam", layer="layer3.0.conv1", prefix_skip=False))


def test_model_split_declines_a_forward_it_cannot_trace():
    class DataDependent(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            features = self.conv(x)
            if features.mean() > 0:  # control flow on a value: not traceable
                features = features * 2
            return self.fc(features.mean((2, 3)))

    model = DataDependent()
    x = torch.randn(2, 3, 8, 8)
    assert ModelSplit.at(model, "conv", x) is None
    assert explain(model, x, 0, "ablationcam", layer="conv").shape == (2, 1, 8, 8)


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_chunking_does_not_change_the_maps(method, batch):
    x, target = batch
    model = model_named("resnet8")
    whole = explain(model, x, target, method, chunk_size=10_000)
    torch.testing.assert_close(explain(model, x, target, method, chunk_size=7), whole, rtol=1e-4, atol=1e-6)


def test_unknown_layer_lists_the_valid_paths(batch):
    x, target = batch
    model = model_named("resnet8")
    with pytest.raises(ValueError, match="module path 'layer9' not found.*did you mean"):
        explain(model, x, target, "gradcam", layer="layer9")
    with pytest.raises(ValueError, match="CAM methods need a \\(B, C, h, w\\) feature map"):
        explain(model, x, target, "gradcam", layer="fc")
