"""The inference engine: every backend reproduces eager logits on every zoo architecture, weight
changes rebuild the copy, and calls a copy cannot serve run the model itself."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdlens.engine import BACKENDS, InferenceEngine, UnknownBackend, inference_forward
from kdlens.engine.core import PARITY_RTOL, auto_candidates, input_kind, parity_tolerance
from kdlens.models import create_model, get_model_spec, list_models

SKIPPED = {
    "vit_b_16": "fixed 224 px input: too slow for a unit test",
    "resnet152": "the biggest torchvision nets: same blocks as resnet50, too slow for a unit test",
    "resnet101": "the biggest torchvision nets: same blocks as resnet50, too slow for a unit test",
    "wide_resnet50_2": "the biggest torchvision nets: same blocks as resnet50, too slow for a unit test",
    "densenet169": "too slow to trace and export for a unit test",
}


def assert_close_to_eager(model: nn.Module, x: torch.Tensor, forward) -> None:
    with torch.inference_mode():
        expected, actual = model(x), forward(x)
    scale = expected.abs().max()
    assert (actual - expected).abs().max() <= PARITY_RTOL * scale


ZOO = [n for n in list_models() if get_model_spec(n).family != "timm"]
SMALLEST_PER_FAMILY = {
    "cifar_resnet": "resnet8", "cifar_resnetv2": "ResNet18", "bcos": "bcos_resnet8", "torchvision": "mobilenet_v3_small",
    "mobilenetv2": "mobilenetv2", "shufflenetv1": "shufflenetv1", "shufflenetv2": "shufflenetv2", "vgg": "vgg8",
    "wrn": "wrn_16_1",
}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=() if n in SMALLEST_PER_FAMILY.values() else pytest.mark.slow) for n in ZOO]
)
def test_every_candidate_backend_matches_eager_on_the_zoo(name):
    """One architecture per family runs by default; the rest of the registry with the slow tests."""
    if name in SKIPPED:
        pytest.skip(SKIPPED[name])
    torch.manual_seed(0)
    model = create_model(name, 10, 3).eval()
    x = torch.randn(3, 3, 32, 32)
    for backend in auto_candidates(x):
        engine = InferenceEngine(model, backend)
        assert_close_to_eager(model, x, engine)
        if get_model_spec(name).family != "bcos":
            assert engine.chosen[input_kind(x)] == backend


def test_auto_measures_once_and_keeps_a_backend_that_matches_eager():
    model = create_model("resnet8", 10, 3).eval()
    x = torch.randn(8, 3, 32, 32)
    engine = InferenceEngine(model, "auto", select_after=0.0)
    assert_close_to_eager(model, x[:2], engine)
    assert not engine.chosen  # a probe-sized batch decides nothing
    assert_close_to_eager(model, x, engine)
    kind = input_kind(x)
    assert set(engine.measured[kind]) >= {"eager", *auto_candidates(x)}
    assert engine.chosen[kind] in engine.measured[kind]
    assert_close_to_eager(model, torch.randn(5, 3, 32, 32), engine)  # another batch size


@pytest.mark.parametrize("backend", ["jit", "onnxruntime"])
def test_a_weight_change_in_place_rebuilds_the_copy(backend):
    model = create_model("resnet8", 10, 3).eval()
    x = torch.randn(4, 3, 32, 32)
    engine = InferenceEngine(model, backend)
    with torch.inference_mode():
        before = engine(x)
    with torch.no_grad():
        model.fc.weight.mul_(2.0)
        model.layer1[0].conv1.reset_parameters()
    with torch.inference_mode():
        after = engine(x)
    assert not torch.allclose(before, after)
    assert_close_to_eager(model, x, engine)


def test_hooks_training_mode_and_gradients_run_the_model_itself():
    model = create_model("resnet8", 10, 3).eval()
    x = torch.randn(4, 3, 32, 32)
    engine = InferenceEngine(model, "jit")
    seen = []
    handle = model.layer1.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.inference_mode():
        engine(x)
    handle.remove()
    assert seen  # the hook ran: the model itself served the call
    x.requires_grad_(True)
    engine(x).sum().backward()
    assert x.grad is not None
    model.train()
    engine(torch.randn(4, 3, 32, 32))
    assert model.bn1.num_batches_tracked.item() == 1
    assert not engine.chosen  # none of these calls chose a backend


def test_bcos_models_run_eager():
    model = create_model("bcos_resnet8", 10, 3).eval()
    x = torch.rand(2, 3, 32, 32)
    engine = InferenceEngine(model, "jit")
    assert_close_to_eager(model, x, engine)
    assert set(engine.chosen.values()) == {"eager"}


def test_shared_engines_and_unknown_names():
    model = create_model("resnet8", 10, 3).eval()
    assert inference_forward(model, "eager") is model
    assert inference_forward(model, "jit") is inference_forward(model, "jit")
    assert "onnxruntime" in BACKENDS
    with pytest.raises(UnknownBackend, match="choose one of"):
        inference_forward(model, "tensorrt")


def test_the_kd_teacher_forward_runs_on_the_configured_engine():
    from kdlens.config import RecipeConfig, validate_config
    from kdlens.distill import DistillLoss, TermContext
    from kdlens.training.module import DistillationModule

    config = validate_config({
        "data": {"name": "shapes"}, "model": {"name": "resnet8"}, "losses": [{"name": "kd"}],
        "teacher": {"name": "resnet14", "checkpoint": "unused.ckpt"}, "trainer": {"teacher_engine": "jit"},
    })
    student, teacher = create_model("resnet8", 4, 3), create_model("resnet14", 4, 3).eval()
    losses = DistillLoss(config.losses, TermContext(student, get_model_spec("resnet8"), teacher, get_model_spec("resnet14")))
    batch = {"image": torch.randn(4, 3, 32, 32), "label": torch.randint(0, 4, (4,))}
    module = DistillationModule(student, losses, RecipeConfig(), 4, {}, batch, teacher,
                                teacher_engine=config.trainer.teacher_engine)
    logits, features, graph = module._teacher_outputs(batch["image"], None)
    assert set(module.teacher_forward.chosen.values()) == {"jit"} and features == {} and graph is None
    assert_close_to_eager(teacher, batch["image"], lambda x: logits)


def test_an_unknown_teacher_engine_is_a_config_error():
    from kdlens.config import TrainerConfig

    with pytest.raises(ValueError, match="teacher_engine"):
        TrainerConfig(teacher_engine="tensorrt")


def test_the_engine_option_sets_the_default_and_refuses_unknown_names(tmp_path):
    from typer.testing import CliRunner

    from kdlens.cli import app
    from kdlens.engine import default_backend, set_default_backend

    runner = CliRunner()
    result = runner.invoke(app, ["--engine", "tensorrt", "runs", str(tmp_path)])
    assert result.exit_code == 2 and "unknown --engine 'tensorrt'" in result.output
    try:
        assert runner.invoke(app, ["--engine", "jit", "runs", str(tmp_path)]).exit_code == 0
        assert default_backend() == "jit"
    finally:
        set_default_backend("auto")


def test_metric_scores_on_the_engine_match_eager():
    import kdlens.metrics as km
    from kdlens.engine import set_default_backend

    torch.manual_seed(0)
    model = create_model("resnet8", 10, 3).eval()
    x, a = torch.rand(6, 3, 32, 32), torch.rand(6, 1, 32, 32)
    y = model(x).argmax(1)
    metrics = {"pixel_flipping": km.PixelFlipping(features_in_step=64),
               "faithfulness_estimate": km.FaithfulnessEstimate(features_in_step=64)}
    scores = {}
    try:
        for backend in ("eager", "onnxruntime"):
            set_default_backend(backend)
            scores[backend] = km.evaluate_metrics(metrics, model, x, y, a)
    finally:
        set_default_backend("auto")
    for name in metrics:
        torch.testing.assert_close(scores["onnxruntime"][name], scores["eager"][name], rtol=1e-4, atol=1e-5)


def test_models_of_several_inputs_run_on_every_backend():
    """The rest of a model cut inside a residual block takes the layer output and the block's input."""
    from kdlens.explain import ModelSplit

    torch.manual_seed(0)
    model = create_model("resnet8", 10, 3).eval()
    x = torch.rand(6, 3, 32, 32)
    split = ModelSplit.at(model, "layer1.0.conv2", x)
    with torch.no_grad():
        layer_output, carried = split.prefix(x)
        expected = model(x)
    for backend in auto_candidates(x):
        engine = InferenceEngine(split.rest_module, backend)
        with torch.inference_mode():
            actual = engine(layer_output, carried)
        assert engine.chosen[input_kind(layer_output, carried)] == backend
        assert (actual - expected).abs().max() <= PARITY_RTOL * expected.abs().max()


@pytest.mark.parametrize("precision", [torch.bfloat16, torch.float16])
def test_under_autocast_copies_run_in_its_precision_and_traced_ones_refuse(precision):
    torch.manual_seed(0)
    model = create_model("resnet8", 10, 3).eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.inference_mode(), torch.autocast("cpu", dtype=precision):
        expected = model(x)
        folded, jit = InferenceEngine(model, "folded"), InferenceEngine(model, "jit")
        actual = folded(x)
        jit(x)
        kind = input_kind(x)
    assert kind[2] == precision and actual.dtype == precision
    assert folded.chosen[kind] == "folded" and jit.chosen[kind] == "eager"
    error = (actual.float() - expected.float()).abs().max() / expected.float().abs().max()
    assert 0 < error <= parity_tolerance(precision)
    assert auto_candidates(x) == ["folded", "jit", "onnxruntime"]  # autocast is off again


def test_ablation_cam_runs_its_head_on_the_engine():
    from kdlens.engine import set_default_backend
    from kdlens.explain import make_explainer

    torch.manual_seed(0)
    model = create_model("resnet8", 10, 3).eval()
    x = torch.rand(4, 3, 32, 32)
    y = torch.arange(4)
    maps = {}
    try:
        for backend in ("eager", "jit"):
            set_default_backend(backend)
            explainer = make_explainer(model, "ablationcam", "layer2")
            maps[backend] = explainer.attribute(x, y)
            split = explainer._splits["layer2"]
            assert isinstance(split.rest, InferenceEngine) == (backend == "jit")
    finally:
        set_default_backend("auto")
    assert set(split.rest.chosen.values()) == {"jit"}
    torch.testing.assert_close(maps["jit"], maps["eager"], rtol=1e-4, atol=1e-5)
