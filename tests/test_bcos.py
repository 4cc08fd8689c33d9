"""B-cos layers against hand-computed outputs, the [x, 1 − x] input, exact explanations in
explanation mode, and the B-cos ResNets' shapes, parameter counts and trainability."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from kdlens.config import validate_data_config
from kdlens.data import build_data
from kdlens.models import FeatureTaps, count_parameters, create_model, get_model_spec
from kdlens.models.bcos import AddInverse, BcosConv2d, BcosLinear, BcosResNet


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("b", [1.0, 2.0, 3.0])
def test_linear_unit_by_hand(b):
    layer = BcosLinear(2, 1, b=b)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 4.0]]))  # ŵ = (0.6, 0.8)
    projection, norm = 0.6 * 1 + 0.8 * 2, math.sqrt(1**2 + 2**2)
    expected = projection * abs(projection / norm) ** (b - 1)
    out = layer(torch.tensor([[1.0, 2.0], [-1.0, -2.0]]))
    torch.testing.assert_close(out, torch.tensor([[expected], [-expected]]), rtol=1e-5, atol=1e-6)


def test_conv_unit_by_hand_on_every_patch():
    layer = BcosConv2d(1, 1, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]]))  # ŵ = (1, 0, 0, 1) / √2
    image = torch.tensor([[[[1.0, 2.0, 0.0], [0.0, 1.0, 3.0], [2.0, 0.0, 1.0]]]])
    patches = [[1, 2, 0, 1], [2, 0, 1, 3], [0, 1, 2, 0], [1, 3, 0, 1]]  # row-major 2×2 windows
    expected = []
    for patch in patches:
        projection = (patch[0] + patch[3]) / math.sqrt(2)
        expected.append(projection * abs(projection) / math.sqrt(sum(v * v for v in patch)))
    torch.testing.assert_close(layer(image).flatten(), torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_conv_patch_norms_include_zero_padding_and_stride():
    """Against the explicit unfold: (ŵᵀp)·|ŵᵀp| / ‖p‖ for every padded, strided patch."""
    layer = BcosConv2d(3, 4, 3, stride=2, padding=1)
    x = torch.randn(2, 3, 7, 7)
    patches = F.unfold(x, 3, padding=1, stride=2)  # (B, 27, L)
    unit = F.normalize(layer.weight.flatten(1), dim=1)
    projection = unit @ patches
    expected = projection * projection.abs() / patches.norm(dim=1, keepdim=True)
    torch.testing.assert_close(layer(x).flatten(2), expected, rtol=1e-4, atol=1e-5)


def test_add_inverse_stacks_x_and_one_minus_x():
    x = torch.tensor([[[[0.0, 0.25]], [[1.0, 0.5]]]])
    out = AddInverse()(x)
    assert out.shape == (1, 4, 1, 2)
    torch.testing.assert_close(out, torch.tensor([[[[0.0, 0.25]], [[1.0, 0.5]], [[1.0, 0.75]], [[0.0, 0.5]]]]))


def test_model_undoes_the_dataset_normalisation_before_add_inverse():
    model = create_model("bcos_resnet20", num_classes=3)
    assert isinstance(model, BcosResNet)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.5]
    model.set_input_normalization(mean, std)
    pixels = torch.rand(2, 3, 4, 4)
    normalised = (pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    torch.testing.assert_close(model.encode_input(normalised), torch.cat([pixels, 1 - pixels], dim=1))
    assert {"denormalize.mean", "denormalize.std"} <= set(model.state_dict())  # restored from checkpoints


def contributions(model: BcosResNet, images: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ over the encoded input of ∂y_c/∂z ⊙ z, y_c) per sample, one batched backward."""
    encoded = model.encode_input(images).detach().requires_grad_(True)
    logits = model.forward_encoded(encoded).gather(1, classes[:, None]).squeeze(1)
    (weights,) = torch.autograd.grad(logits.sum(), encoded)
    return (weights * encoded).sum(dim=(1, 2, 3)), logits.detach()


@pytest.mark.parametrize("name", ["bcos_resnet8", "bcos_resnet20", "bcos_resnet8x4", "bcos_v2_resnet8"])
def test_explanation_mode_contributions_sum_to_the_logit(name):
    model = create_model(name, num_classes=5).eval()
    model.set_input_normalization([0.5, 0.4, 0.3], [0.2, 0.25, 0.5])
    images, classes = torch.randn(3, 3, 16, 16), torch.tensor([0, 3, 4])
    with model.explanation_mode():
        summed, logits = contributions(model, images, classes)
    torch.testing.assert_close(summed, logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits, model(images).gather(1, classes[:, None]).squeeze(1))  # same function
    # Outside explanation mode the gradient is not W(x): the position norms make the logits
    # scale-invariant in z, so Euler's theorem sends the sum to 0.
    summed_plain, _ = contributions(model, images, classes)
    assert summed_plain.abs().max() < 1e-2 * logits.abs().max()


def test_explanation_mode_is_restored_on_exit_and_on_error():
    model = create_model("bcos_resnet20", num_classes=3)
    with pytest.raises(RuntimeError, match="inside"):
        with model.explanation_mode():
            assert model.conv1.detach_dynamic_scale and model.layer3[0].norm1.detach_dynamic_scale
            raise RuntimeError("inside")
    assert not any(getattr(m, "detach_dynamic_scale", False) for m in model.modules())


def test_shapes_stages_and_parameter_count():
    model = create_model("bcos_resnet20", num_classes=10, in_channels=1)
    spec = get_model_spec("bcos_resnet20")
    assert spec.family == "bcos" and spec.stages == ("layer1", "layer2", "layer3") and spec.classifier == "fc"
    assert model.conv1.in_channels == 2  # [x, 1 − x] of one channel
    with FeatureTaps(model, [*spec.stages, spec.classifier]) as taps:
        logits = model(torch.randn(2, 1, 16, 16))
    assert logits.shape == (2, 10)
    assert [tuple(taps[p].shape[1:]) for p in spec.stages] == [(16, 16, 16), (32, 8, 8), (64, 4, 4)]
    torch.testing.assert_close(taps["fc"].mean(dim=(2, 3)), logits)  # logits = pooled per-position scores
    convs = (
        16 * 2 * 9  # conv1
        + 3 * 2 * 16 * 16 * 9  # layer1
        + 32 * 16 * 9 + 32 * 32 * 9 + 32 * 16 + 2 * 2 * 32 * 32 * 9  # layer2 (first block projects)
        + 64 * 32 * 9 + 64 * 64 * 9 + 64 * 32 + 2 * 2 * 64 * 64 * 9  # layer3
        + 10 * 64  # fc, no bias
    )
    norms = 16 + 3 * 2 * 16 + (3 * 2 + 1) * 32 + (3 * 2 + 1) * 64  # one weight per channel
    assert count_parameters(model) == convs + norms == 271_536


def test_a_few_sgd_steps_on_shapes_lower_the_loss():
    """SGD with momentum 0.9 at lr 0.01, the recipes' rate for small students, on one batch."""
    bundle = build_data(validate_data_config({"name": "shapes", "num_classes": 3, "image_size": 16, "train_size": 64, "test_size": 8}))
    batch = next(iter(DataLoader(bundle.train, batch_size=32, shuffle=False)))
    model = create_model("bcos_resnet20", bundle.num_classes, bundle.in_channels)
    model.set_input_normalization(bundle.mean, bundle.std)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    losses = []
    for _ in range(10):
        loss = F.cross_entropy(model(batch["image"]), batch["label"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


def test_max_out_keeps_the_larger_of_each_outputs_rows():
    from kdlens.models.bcos import BcosConv2d, BcosLinear

    conv = BcosConv2d(3, 2, 1, max_out=2, b=1.0)  # B = 1: the unit is linear, so the max is visible directly
    assert conv.weight.shape == (4, 3, 1, 1)
    x = torch.randn(2, 3, 4, 4)
    rows = torch.nn.functional.conv2d(x, torch.nn.functional.normalize(conv.weight.flatten(1), dim=1)[:, :, None, None])
    expected = torch.maximum(rows[:, 0::2], rows[:, 1::2])  # rows 2k and 2k+1 belong to output k
    torch.testing.assert_close(conv(x), expected, rtol=1e-4, atol=1e-5)
    linear = BcosLinear(3, 2, max_out=3, b=1.0)
    v = torch.randn(5, 3)
    rows = v @ torch.nn.functional.normalize(linear.weight, dim=1).T
    torch.testing.assert_close(linear(v), rows.unflatten(1, (2, 3)).amax(2), rtol=1e-4, atol=1e-5)


def test_bce_term_with_logit_bias_and_temperature_by_hand():
    import math

    from kdlens.distill.base import DistillBatch
    from kdlens.distill.kd import BCEConfig, BinaryCrossEntropy

    logits, labels = torch.tensor([[0.5, -1.0, 2.0], [0.0, 1.0, -0.5]]), torch.tensor([2, 0])
    batch = DistillBatch(torch.zeros(2, 3, 4, 4), labels, logits, None)
    z = logits / 2.0 - math.log(2)  # temperature 2, bias −log(C − 1) for C = 3
    targets = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    by_hand = -(targets * torch.log(torch.sigmoid(z)) + (1 - targets) * torch.log(1 - torch.sigmoid(z))).mean()
    term = BinaryCrossEntropy(BCEConfig(logit_temperature=2.0))
    torch.testing.assert_close(term(batch), by_hand)
    no_bias = BinaryCrossEntropy(BCEConfig(logit_bias=None))(batch)
    torch.testing.assert_close(no_bias, torch.nn.functional.binary_cross_entropy_with_logits(logits, targets))
