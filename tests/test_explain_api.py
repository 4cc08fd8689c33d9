"""The front: targets, options and errors, test-time augmentation, whole datasets, the cache."""

import inspect

import pytest
import torch

from kdlens.data import build_data
from kdlens.config import validate_data_config
from kdlens.explain import (
    EXPLAINERS,
    ExplainError,
    ExplanationCache,
    data_fingerprint,
    explain,
    explain_dataset,
    file_fingerprint,
    model_fingerprint,
)
from kdlens.models import create_model


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return create_model("resnet8", 5).eval(), create_model("wrn_16_1", 5).eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def test_target_pred_and_another_models_top1(models, x):
    student, teacher = models
    with torch.no_grad():
        own, teachers = student(x).argmax(1), teacher(x).argmax(1)
    torch.testing.assert_close(explain(student, x, "pred"), explain(student, x, own))
    torch.testing.assert_close(explain(student, x, teacher), explain(student, x, teachers))
    torch.testing.assert_close(explain(student, x, 2), explain(student, x, torch.full((4,), 2)))


def test_bad_targets_methods_and_options_are_clear_errors(models, x):
    student, _ = models
    with pytest.raises(ExplainError, match=r"LongTensor of shape \(4,\)"):
        explain(student, x, torch.tensor([0, 1]))
    with pytest.raises(ExplainError, match="'pred' or a model"):
        explain(student, x, "label")
    with pytest.raises(KeyError, match="unknown explanation method 'gradcm'. Did you mean 'gradcam'"):
        explain(student, x, 0, "gradcm")
    with pytest.raises(ExplainError, match="unknown option.*steps.*its options: relu, normalize"):
        explain(student, x, 0, "gradcam", steps=3)
    with pytest.raises(ExplainError, match="not differentiable; create_graph=True works with"):
        explain(student, x, 0, "scorecam", create_graph=True)
    with pytest.raises(ExplainError, match="takes no layer"):
        explain(student, x, 0, "saliency", layer="layer3")
    with pytest.raises(ExplainError, match="torch.inference_mode"), torch.inference_mode():
        explain(student, x, 0, "gradcam")


def test_every_method_documents_its_options_and_none_shadows_a_front_parameter():
    reserved = set(inspect.signature(explain).parameters) | set(inspect.signature(explain_dataset).parameters)
    for name in EXPLAINERS.names():
        explainer = EXPLAINERS[name]
        assert explainer.__doc__ and explainer.name == name
        assert not reserved & set(explainer.option_names()), name


def test_tta_averages_six_views_and_is_symmetric_on_symmetric_images(models, x):
    student, _ = models
    symmetric = torch.cat([x[..., :8], x[..., :8].flip(-1)], -1)
    for method in ["gradcam", "saliency"]:
        maps = explain(student, symmetric, 1, method, tta=True)
        assert maps.shape == (4, 1, 16, 16)
        torch.testing.assert_close(maps, maps.flip(-1), rtol=1e-4, atol=1e-6)
    # Brightness × flip of an image: the average of the six individual maps.
    views = [explain(student, (x.flip(-1) if flip else x) * b, 1, "gradcam") for flip in (0, 1) for b in (0.9, 1.0, 1.1)]
    views = [v.flip(-1) if i >= 3 else v for i, v in enumerate(views)]
    torch.testing.assert_close(explain(student, x, 1, "gradcam", tta=True), torch.stack(views).mean(0))


@pytest.fixture(scope="module")
def shapes():
    config = validate_data_config({"name": "shapes", "num_classes": 3, "image_size": 16, "train_size": 24,
                                   "test_size": 20, "augment": False})
    return config, build_data(config)


def test_explain_dataset_rows_follow_the_sample_index(shapes):
    _, bundle = shapes
    model = create_model("resnet8", 3).eval()
    maps = explain_dataset(model, bundle.test, "gradcam", target="label", batch_size=6)
    assert maps.shape == (20, 1, 16, 16) and maps.dtype == torch.float32
    sample = bundle.test[13]
    expected = explain(model, sample["image"][None], sample["label"][None], "gradcam")
    torch.testing.assert_close(maps[13:14], expected, rtol=1e-4, atol=1e-6)
    assert not model.training


def test_cache_computes_once_and_returns_the_stored_maps(tmp_path, shapes, monkeypatch):
    config, bundle = shapes
    model = create_model("resnet8", 3).eval()
    monkeypatch.setenv("KDLENS_CACHE", str(tmp_path / "cache"))
    cache = ExplanationCache()
    key = {"model": model_fingerprint(model), "data": data_fingerprint(config), "split": "test",
           "method": "gradcam", "options": {"target": "pred"}}
    calls = []

    def compute():
        calls.append(1)
        return explain_dataset(model, bundle.test, "gradcam")

    first = cache.get_or_compute(key, compute)
    second = cache.get_or_compute(key, compute)
    assert len(calls) == 1 and torch.equal(first, second)
    assert cache.path(key).parent == tmp_path / "cache"
    torch.testing.assert_close(first, compute(), rtol=2e-3, atol=1e-6)  # float16 storage

    cache.path(key).write_bytes(b"truncated")  # a corrupt entry is recomputed, not an error
    assert torch.equal(cache.get_or_compute(key, compute), first) and len(calls) == 3
    other = cache.get_or_compute({**key, "split": "train"}, lambda: torch.zeros(2, 1, 4, 4))
    assert other.shape == (2, 1, 4, 4)


def test_fingerprints_identify_content(tmp_path, shapes):
    config, _ = shapes
    model = create_model("resnet8", 3)
    assert model_fingerprint(model) == model_fingerprint(model)
    with torch.no_grad():
        model.fc.bias.add_(1e-3)
    changed = model_fingerprint(model)
    assert changed != model_fingerprint(create_model("resnet8", 3))
    (tmp_path / "a.ckpt").write_bytes(b"weights")
    assert file_fingerprint(tmp_path / "a.ckpt").startswith("sha256:")
    assert data_fingerprint(config) == data_fingerprint(config.model_copy(update={"batch_size": 7}))
    assert data_fingerprint(config) != data_fingerprint(config.model_copy(update={"seed": 1}))
