"""Input-space methods: Captum agreement, perturbation surrogates, LRP conservation, B-cos."""

import captum.attr as captum_attr
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import Ridge
from zennit.composites import LayerMapComposite
from zennit.layer import Sum
from zennit.rules import Epsilon, Norm, Pass
from zennit.types import Activation, AvgPool, BatchNorm, Convolution

from kdlens.explain import EXPLAINERS, ExplainError, explain
from kdlens.explain.lrp import lrp_canonizers
from kdlens.explain.perturbation import weighted_ridge
from kdlens.models import create_model


def model_named(name, num_classes=10):
    torch.manual_seed(1)
    return create_model(name, num_classes).eval()


def smooth_images(n, size=16, seed=0):
    """Images with structure (upsampled noise), so that superpixels are not degenerate."""
    generator = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.randn(n, 3, 4, 4, generator=generator), size=size, mode="bilinear")


@pytest.fixture(scope="module")
def resnet8():
    return model_named("resnet8")


@pytest.fixture(scope="module")
def batch():
    return smooth_images(4), torch.tensor([0, 3, 5, 9])


def test_gradient_methods_agree_with_captum(resnet8, batch):
    x, target = batch
    leaf = x.clone().requires_grad_()
    expected = {
        "saliency": captum_attr.Saliency(resnet8).attribute(leaf, target=target),
        "inputxgradient": captum_attr.InputXGradient(resnet8).attribute(leaf, target=target),
        "integrated_gradients": captum_attr.IntegratedGradients(resnet8).attribute(leaf, target=target, n_steps=20),
    }
    options = {"integrated_gradients": {"steps": 20}}
    for method, attribution in expected.items():
        ours = explain(resnet8, x, target, method, reduce="none", **options.get(method, {}))
        torch.testing.assert_close(ours, attribution.detach(), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(explain(resnet8, x, target, method, **options.get(method, {})),
                                   attribution.detach().sum(1, keepdim=True), rtol=1e-4, atol=1e-5)

    torch.manual_seed(3)
    smoothgrad = captum_attr.NoiseTunnel(captum_attr.Saliency(resnet8)).attribute(
        leaf, target=target, nt_type="smoothgrad", nt_samples=8, stdevs=0.5)
    torch.manual_seed(3)
    torch.testing.assert_close(explain(resnet8, x, target, "smoothgrad", samples=8, reduce="none"), smoothgrad.detach())

    background = smooth_images(3, seed=1)
    torch.manual_seed(4), np.random.seed(4)  # Captum draws GradientSHAP's path points from NumPy
    shap = captum_attr.GradientShap(resnet8).attribute(leaf, background, n_samples=10, target=target)
    torch.manual_seed(4), np.random.seed(4)
    ours = explain(resnet8, x, target, "gradientshap", baselines=background, samples=10, reduce="none")
    torch.testing.assert_close(ours, shap.detach(), rtol=1e-4, atol=1e-6)


def test_reduce_options(resnet8, batch):
    x, target = batch
    raw = explain(resnet8, x, target, "inputxgradient", reduce="none")
    assert raw.shape == (4, 3, 16, 16)
    torch.testing.assert_close(explain(resnet8, x, target, "inputxgradient", reduce="abs_sum"), raw.abs().sum(1, keepdim=True))
    with pytest.raises(ExplainError, match="reduce must be"):
        explain(resnet8, x, target, "inputxgradient", reduce="max")


def test_integrated_gradients_is_complete_and_chunking_does_not_change_it(resnet8, batch):
    x, target = batch
    maps = explain(resnet8, x, target, "integrated_gradients", steps=64)
    with torch.no_grad():
        gain = resnet8(x).gather(1, target[:, None]) - resnet8(torch.zeros_like(x)).gather(1, target[:, None])
    torch.testing.assert_close(maps.sum((1, 2, 3)), gain.squeeze(1), rtol=0.02, atol=0.02)
    torch.testing.assert_close(explain(resnet8, x, target, "integrated_gradients", steps=64, chunk_size=10), maps)


@pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU")
def test_guided_backprop_equals_captums_on_relu_modules_and_also_guides_functional_relus(batch):
    x, target = batch
    vgg = model_named("vgg8")  # nn.ReLU modules only
    expected = captum_attr.GuidedBackprop(vgg).attribute(x.clone().requires_grad_(), target=target)
    torch.testing.assert_close(explain(vgg, x, target, "guided_backprop", reduce="none"), expected.detach())

    resnet = model_named("resnet8")  # F.relu only: Captum's version is the plain gradient here
    guided = explain(resnet, x, target, "guided_backprop", reduce="none")
    plain = explain(resnet, x, target, "saliency", absolute=False, reduce="none")
    assert not torch.allclose(guided, plain)


def test_occlusion_agrees_with_captum(resnet8, batch):
    x, target = batch
    expected = captum_attr.Occlusion(resnet8).attribute(x, target=target, sliding_window_shapes=(3, 2, 2), strides=(3, 1, 1))
    ours = explain(resnet8, x, target, "occlusion", chunk_size=64)  # defaults: window 16/8 = 2, stride 1
    torch.testing.assert_close(ours, expected[:, :1], rtol=1e-4, atol=1e-6)


class LinearScore(torch.nn.Module):
    """logit_c = Σ w_c ⊙ x: every superpixel's effect is additive and known."""

    def __init__(self, channels=3, size=16, classes=2):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(classes, channels, size, size, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        return torch.einsum("bchw,kchw->bk", x, self.weight)


def superpixel_effects(model, x, target, segments, baseline):
    """Exact per-superpixel contributions Σ_{pixels of k} w ⊙ (x − baseline) of a linear model."""
    contribution = (model.weight[target] * (x - baseline)).sum(1)
    return torch.stack([
        torch.stack([contribution[b][segments[b] == k].sum() for k in range(int(segments[b].max()) + 1)])
        for b in range(len(x))
    ])


def test_kernelshap_and_lime_recover_a_linear_models_superpixel_effects():
    model = LinearScore()
    x = smooth_images(3)
    target = torch.tensor([0, 1, 0])
    segments = torch.arange(16).repeat(16, 1).div(4, rounding_mode="floor")  # 4 vertical stripes
    segments = (segments + 4 * (torch.arange(16)[:, None] >= 8)).expand(3, 16, 16)  # 8 regions
    exact = superpixel_effects(model, x, target, segments, 0.0)
    for method, options in [("kernelshap", {}), ("lime", {"alpha": 1e-6, "baseline": 0.0})]:
        maps = explain(model, x, target, method, feature_mask=segments[:, None], samples=200, **options)
        per_region = torch.stack([maps[b, 0][segments[b] == k][0] for b in range(3) for k in range(8)]).view(3, 8)
        torch.testing.assert_close(per_region, exact, rtol=1e-3, atol=1e-3)


def test_superpixel_methods_on_slic_segments_and_chunking(resnet8, batch):
    x, target = batch
    for method in ["lime", "kernelshap"]:
        torch.manual_seed(0)
        whole = explain(resnet8, x, target, method, samples=64, chunk_size=10_000)
        torch.manual_seed(0)
        chunked = explain(resnet8, x, target, method, samples=64, chunk_size=50)
        assert whole.shape == (4, 1, 16, 16) and torch.isfinite(whole).all()
        torch.testing.assert_close(chunked, whole, rtol=1e-4, atol=1e-4)
    assert explain(resnet8, x, target, "lime", samples=32, superpixels="quickshift").shape == (4, 1, 16, 16)


def test_weighted_ridge_matches_scikit_learn():
    generator = torch.Generator().manual_seed(0)
    design = (torch.rand(2, 50, 6, generator=generator) < 0.5).double()
    targets, weights = torch.randn(2, 50, generator=generator, dtype=torch.double), torch.rand(2, 50, generator=generator, dtype=torch.double)
    ours = weighted_ridge(design, targets, weights, alpha=1.0)
    for b in range(2):
        expected = Ridge(alpha=1.0).fit(design[b].numpy(), targets[b].numpy(), sample_weight=weights[b].numpy()).coef_
        torch.testing.assert_close(ours[b], torch.from_numpy(expected))


def epsilon_composite(model):
    """ε everywhere (no z⁺/flat), residual sums and pooling by the conserving norm rule, and
    unmerged BNs (the WRN's pre-activation ones) passing relevance through, as zennit's composites do."""
    layer_map = [(Activation, Pass()), (BatchNorm, Pass()), (Sum, Norm()), (AvgPool, Norm()),
                 (Convolution, Epsilon(1e-9)), (torch.nn.Linear, Epsilon(1e-9))]
    return LayerMapComposite(layer_map=layer_map, canonizers=lrp_canonizers(model))


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "vgg8", "resnet18"])
def test_lrp_conserves_the_target_logit_and_restores_the_model(name, batch):
    x, target = batch
    model = model_named(name)
    with torch.no_grad():
        # Non-trivial BN scales (the merge must fold them into the convolutions), but zero shifts
        # and classifier bias: without biases to absorb relevance, the ε rule conserves it exactly.
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
        model.get_submodule("classifier" if name == "vgg8" else "fc").bias.zero_()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        logits = model(x)

    relevance = explain(model, x, target, "lrp", composite=epsilon_composite(model))
    torch.testing.assert_close(relevance.sum((1, 2, 3)), logits.gather(1, target[:, None]).squeeze(1), rtol=1e-3, atol=1e-4)

    default = explain(model, x, target, "lrp")
    assert default.shape == (4, 1, 16, 16) and torch.isfinite(default).all()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not any("forward" in vars(m) for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(x), logits)


def test_lrp_needs_eval_mode(batch):
    x, target = batch
    with pytest.raises(ExplainError, match="model.eval"):
        explain(create_model("resnet8", 10), x, target, "lrp")


def test_bcos_contributions_sum_to_the_logit_and_train_the_model():
    torch.manual_seed(0)
    model = create_model("bcos_resnet20", 10).eval()
    x = torch.rand(2, 3, 16, 16)
    target = torch.tensor([1, 7])
    maps = explain(model, x, target, "bcos")
    with torch.no_grad():
        logits = model(x).gather(1, target[:, None]).squeeze(1)
    torch.testing.assert_close(maps.sum((1, 2, 3)), logits, rtol=1e-4, atol=1e-5)
    assert explain(model, x, target, "bcos", reduce="none").shape == (2, 6, 16, 16)  # [x, 1 − x]

    loss = explain(model, x, target, "bcos", create_graph=True).pow(2).mean()
    loss.backward()
    assert model.conv1.weight.grad.abs().sum() > 0


def test_bcos_on_a_model_without_explanation_mode_names_the_fix(resnet8, batch):
    x, target = batch
    with pytest.raises(ExplainError, match="use a B-cos model"):
        explain(resnet8, x, target, "bcos")


def test_every_method_gives_finite_maps_of_the_input_size(resnet8, batch):
    x, target = batch
    small = {"lime": {"samples": 32}, "kernelshap": {"samples": 32}, "integrated_gradients": {"steps": 8},
             "smoothgrad": {"samples": 4}, "gradientshap": {"samples": 4}}
    for method in EXPLAINERS.names():
        if method == "bcos":
            continue
        maps = explain(resnet8, x, target, method, **small.get(method, {}))
        assert maps.shape == (4, 1, 16, 16) and torch.isfinite(maps).all(), method


def test_lrp_canonizers_come_from_the_model_spec():
    from zennit.canonizers import AttributeCanonizer, NamedMergeBatchNorm, SequentialMergeBatchNorm

    from kdlens.models import get_model_spec

    model = create_model("resnet8", 10)
    assert model.kdlens_model == "resnet8" and get_model_spec("resnet8").lrp_canonizers is not None
    assert [type(c) for c in lrp_canonizers(model)] == [NamedMergeBatchNorm, AttributeCanonizer]
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))  # no spec: the default
    assert [type(c) for c in lrp_canonizers(plain)] == [SequentialMergeBatchNorm]
