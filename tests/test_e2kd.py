import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_experiment
from pytorch_grad_cam import GradCAM as ReferenceGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from kdlens.config import validate_config
from kdlens.distill import DistillLoss, TermContext
from kdlens.distill.e2kd import E2KDConfig, explanation_loss, gradcam_from_forward
from kdlens.explain import explain
from kdlens.models import FeatureTaps, create_model, get_model_spec
from kdlens.training.module import DistillationModule
from kdlens.training.run import run_experiment


def test_explanation_loss_is_one_minus_cosine_by_hand():
    student = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]], [[[1.0, 2.0], [3.0, 4.0]]]])
    teacher = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]], [[[2.0, 4.0], [6.0, 8.0]]]])
    cos_first = 1.0 / (2**0.5 * 2**0.5)  # <(1,0,0,1),(1,1,0,0)> / (|·||·|)
    expected = ((1 - cos_first) + (1 - 1.0)) / 2
    assert explanation_loss(student, teacher).item() == pytest.approx(expected, abs=1e-6)


def test_gradcam_from_the_training_forward_equals_the_explainer_and_pytorch_grad_cam():
    torch.manual_seed(0)
    model = create_model("resnet8", 5, 3).eval()
    x = torch.randn(4, 3, 16, 16)
    target = torch.tensor([0, 3, 1, 4])
    with FeatureTaps(model, ["layer3"]) as taps:
        logits = model(x)
    ours = gradcam_from_forward(logits, taps["layer3"], target, x.shape[-2:], create_graph=False)
    assert torch.allclose(ours, explain(model, x, target, "gradcam", layer="layer3"), atol=1e-6)
    with ReferenceGradCAM(model, [model.layer3]) as reference:
        maps = reference(x, [ClassifierOutputTarget(int(t)) for t in target])
    normalised = ours.flatten(1)
    normalised = (normalised - normalised.amin(1, keepdim=True)) / (normalised.amax(1, keepdim=True) - normalised.amin(1, keepdim=True) + 1e-7)
    assert torch.allclose(normalised.view(4, 16, 16), torch.from_numpy(maps), atol=1e-4)


def _module(student, teacher, config):
    context = TermContext(student, get_model_spec("resnet8"), teacher, get_model_spec("resnet14"))
    losses = DistillLoss([config], context)
    probe = {"image": torch.randn(2, 3, 16, 16), "label": torch.tensor([0, 1])}
    info = {"format": 1}
    from kdlens.config import RecipeConfig

    return DistillationModule(student, losses, RecipeConfig(), 4, info, probe, teacher)


@pytest.mark.parametrize("frozen", [False, True])
def test_the_explanation_term_trains_the_student_second_order_and_never_the_teacher(frozen):
    torch.manual_seed(0)
    student, teacher = create_model("resnet8", 4, 3), create_model("resnet14", 4, 3)
    module = _module(student, teacher, E2KDConfig(frozen_teacher=frozen))
    batch = {"image": torch.randn(6, 3, 16, 16), "label": torch.randint(0, 4, (6,))}
    if frozen:
        batch["teacher_map"] = torch.rand(6, 1, 16, 16)
    distill_batch = module._distill_batch(batch)
    assert (distill_batch.teacher_graph is not None) != frozen
    loss, parts = module.losses(distill_batch)
    loss.backward()
    stem = student.conv1.weight.grad  # before the explained layer: reached only through ∂map/∂θ
    assert stem is not None and stem.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_explanation_gradient_is_second_order():
    """The e²KD gradient differs from the gradient of a loss on detached maps (which is zero)."""
    torch.manual_seed(0)
    model = create_model("resnet8", 4, 3)
    x = torch.randn(3, 3, 16, 16)
    target = torch.tensor([0, 1, 2])
    with FeatureTaps(model, ["layer3"]) as taps:
        logits = model(x)
    maps = gradcam_from_forward(logits, taps["layer3"], target, x.shape[-2:], create_graph=True)
    (grad,) = torch.autograd.grad(F.relu(maps).sum(), model.fc.weight)
    assert grad.abs().sum() > 0  # fc weights enter the map only through ∂logit/∂features


def test_e2kd_run_on_shapes(tmp_path, teacher_checkpoint):
    raw = tiny_experiment(
        tmp_path / "e2kd",
        recipe={"epochs": 1},
        teacher={"name": "resnet8", "checkpoint": str(teacher_checkpoint)},
        losses=[{"name": "kd", "temperature": 4.0}, {"name": "e2kd", "weight": 5.0, "every_k_steps": 2}],
    )
    run = run_experiment(validate_config(raw))
    metrics = (run.run_dir / "logs" / "csv" / "version_0" / "metrics.csv").read_text()
    assert "train/e2kd_epoch" in metrics.splitlines()[0]


def test_e2kd_and_oracle_kd_share_a_teacher_in_one_run():
    """e²KD's grad leaves on the teacher are limited to the module's own teacher pass: oracle KD's
    input gradient through the whole teacher still exists in the same step."""
    from kdlens.distill.oracle_kd import OracleKDConfig

    torch.manual_seed(0)
    student, teacher = create_model("resnet8", 4, 3), create_model("resnet14", 4, 3)
    context = TermContext(student, get_model_spec("resnet8"), teacher, get_model_spec("resnet14"))
    losses = DistillLoss([E2KDConfig(), OracleKDConfig()], context)
    from kdlens.config import RecipeConfig

    probe = {"image": torch.randn(2, 3, 16, 16), "label": torch.tensor([0, 1])}
    module = DistillationModule(student, losses, RecipeConfig(), 4, {"format": 1}, probe, teacher)
    loss, parts = module.losses(module._distill_batch({"image": torch.randn(4, 3, 16, 16), "label": torch.tensor([0, 1, 2, 3])}))
    assert set(parts) == {"e2kd", "oracle_kd"} and torch.isfinite(loss)


def test_lrp_explanation_term_trains_the_student_and_not_the_teacher():
    torch.manual_seed(0)
    student, teacher = create_model("resnet8", 4, 3), create_model("resnet14", 4, 3)
    module = _module(student, teacher, E2KDConfig(explainer="lrp"))
    loss, parts = module.losses(module._distill_batch({"image": torch.randn(4, 3, 16, 16), "label": torch.tensor([0, 1, 2, 3])}))
    loss.backward()
    assert student.conv1.weight.grad is not None and student.conv1.weight.grad.abs().sum() > 0
    assert student.bn1.weight.grad is not None  # no BatchNorm merging: its parameters are reached too
    assert all(p.grad is None for p in teacher.parameters())


def test_lrp_maps_equal_the_lrp_explainer_where_there_is_no_batchnorm_to_merge():
    from kdlens.distill.e2kd import explanation_maps

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 3),
    ).eval()
    x, target = torch.randn(2, 3, 8, 8), torch.tensor([0, 2])
    maps = explanation_maps("lrp", model, x, target, create_graph=False)  # e²KD's LRP: no canonizers
    assert torch.allclose(maps, explain(model, x, target, "lrp"), atol=1e-6)


def test_frozen_lrp_teacher_is_refused():
    from kdlens.config import ConfigError

    raw = {"data": {"name": "shapes"}, "model": {"name": "resnet8"}, "teacher": {"name": "resnet8", "checkpoint": "t.ckpt"},
           "losses": [{"name": "e2kd", "explainer": "lrp", "frozen_teacher": True}]}
    with pytest.raises(ConfigError, match="computed live"):
        validate_config(raw)


@pytest.mark.parametrize("explainer", ["gradcampp", "layercam"])
def test_any_differentiable_explainer_trains_the_student_and_not_the_teacher(explainer):
    torch.manual_seed(0)
    student, teacher = create_model("resnet8", 4, 3), create_model("resnet14", 4, 3)
    module = _module(student, teacher, E2KDConfig(explainer=explainer))
    loss, parts = module.losses(module._distill_batch({"image": torch.randn(4, 3, 16, 16), "label": torch.tensor([0, 1, 2, 3])}))
    loss.backward()
    assert student.conv1.weight.grad is not None and student.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_a_non_differentiable_explainer_is_a_config_error_naming_those_that_work():
    from kdlens.config import ConfigError

    raw = {"data": {"name": "shapes"}, "model": {"name": "resnet8"}, "teacher": {"name": "resnet8", "checkpoint": "t.ckpt"},
           "losses": [{"name": "e2kd", "explainer": "saliency"}]}
    with pytest.raises(ConfigError, match=r"'saliency' is not differentiable; use one of: .*gradcam.*lrp"):
        validate_config(raw)
