"""Published torchvision weights by name, offline from torchvision's cache: loading, the head swap
for fine-tuning, input-channel adaptation, the clear errors, and training/distilling from them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_experiment
from PIL import Image
from torchvision import models as tv
from typer.testing import CliRunner

from kdlens.cli import app
from kdlens.config import ConfigError, RecipeConfig, validate_config
from kdlens.models import create_model, get_model_spec
from kdlens.models.base import WeightsError
from kdlens.models.torchvision_models import weights_cache_path
from kdlens.runs.checkpoints import load_model
from kdlens.training.recipes import build_optimizer, parameter_groups
from kdlens.training.run import run_experiment

runner = CliRunner()
RESNET18_V1 = tv.ResNet18_Weights.IMAGENET1K_V1


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torchvision cache, and no download allowed."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("KDLENS_OFFLINE", "1")
    return tmp_path / "torch_home"


@pytest.fixture
def cached_resnet18(torch_home) -> tv.ResNet:
    """A (random) resnet18 saved where torchvision caches IMAGENET1K_V1; the source model returned."""
    torch.manual_seed(0)
    source = tv.resnet18(num_classes=1000).eval()
    for module in source.modules():  # non-trivial BatchNorm statistics, so that they must load too
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = weights_cache_path(RESNET18_V1.url)
    assert path == torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save(source.state_dict(), path)
    return source


def test_cached_weights_load_offline_with_their_normalisation_and_categories(cached_resnet18):
    model = create_model("resnet18", 1000, weights="IMAGENET1K_V1").eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model(x), cached_resnet18(x), rtol=0, atol=0)
    cfg = model.pretrained_cfg
    assert cfg["weights"] == "ResNet18_Weights.IMAGENET1K_V1"
    assert cfg["mean"] == [0.485, 0.456, 0.406] and cfg["std"] == [0.229, 0.224, 0.225]
    assert len(cfg["class_names"]) == 1000 and cfg["class_names"][0] == "tench"
    assert (cfg["resize_size"], cfg["crop_size"]) == (256, 224)
    assert "DEFAULT" in get_model_spec("resnet18").weights()


def test_another_class_count_replaces_only_the_head(cached_resnet18):
    model = create_model("resnet18", 10, weights="DEFAULT")
    assert model.fc.out_features == 10
    source = cached_resnet18.state_dict()
    for key, value in model.state_dict().items():
        if key.startswith("fc."):
            assert value.shape[0] == 10
        else:
            torch.testing.assert_close(value, source[key], rtol=0, atol=0)


def test_one_input_channel_sums_the_rgb_filters(cached_resnet18):
    """A grey image through the adapted conv gives what the RGB conv gives on R = G = B."""
    model = create_model("resnet18", 1000, in_channels=1, weights="IMAGENET1K_V1").eval()
    grey = torch.rand(2, 1, 64, 64)
    torch.testing.assert_close(model(grey), cached_resnet18(grey.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4)


def test_weights_errors_name_the_fix(torch_home):
    with pytest.raises(WeightsError, match=r"not cached at .*resnet18-f37072fd\.pth.*KDLENS_OFFLINE"):
        create_model("resnet18", 1000, weights="IMAGENET1K_V1")
    with pytest.raises(WeightsError, match="IMAGENET1K_V1"):
        create_model("resnet18", 1000, weights="IMAGENET1K_V3")
    with pytest.raises(WeightsError, match="no published weights"):
        create_model("resnet8", 10, weights="DEFAULT")
    with pytest.raises(ConfigError, match="Did you mean 'IMAGENET1K_V2'"):
        validate_config(tiny_experiment(torch_home / "r", model={"name": "resnet50", "weights": "IMAGENET1K_V22"}))
    with pytest.raises(ConfigError, match="either 'checkpoint' or 'weights'"):
        validate_config(tiny_experiment(torch_home / "r", model={"name": "resnet50", "weights": "DEFAULT", "checkpoint": "x.ckpt"}))


def test_densenet_legacy_key_rule():
    """torchvision's published densenet files use old module names; the family's rule renames them."""
    import re

    ((pattern, replacement),) = get_model_spec("densenet169").foreign_keys["torchvision"]
    assert re.sub(pattern, replacement, "features.denseblock1.denselayer1.norm.1.weight") == "features.denseblock1.denselayer1.norm1.weight"
    assert re.sub(pattern, replacement, "features.conv0.weight") == "features.conv0.weight"


def test_backbone_lr_scale_puts_everything_but_the_head_at_a_lower_lr():
    model = create_model("resnet8", 3)
    recipe = RecipeConfig(optimizer={"name": "adam", "lr": 1e-3}, backbone_lr_scale=0.1, no_decay_norm_bias=True)
    optimizer = build_optimizer(parameter_groups([model], recipe, model, "fc"), recipe)
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert {lr_of[id(p)] for p in model.fc.parameters()} == {1e-3}
    assert list({lr_of[id(p)] for name, p in model.named_parameters() if not name.startswith("fc.")}) == pytest.approx([1e-4])
    assert len(lr_of) == len(list(model.parameters()))


def test_fine_tuning_from_published_weights_records_their_source(cached_resnet18, tmp_path):
    raw = tiny_experiment(
        tmp_path / "finetune", model={"name": "resnet18", "weights": "IMAGENET1K_V1"},
        recipe={"epochs": 1, "optimizer": {"name": "adam", "lr": 1e-3}, "schedule": {"name": "constant"}, "backbone_lr_scale": 0.1},
        trainer={"progress_bar": False, "limit_train_batches": 2, "limit_val_batches": 1},
    )
    run = run_experiment(validate_config(raw))
    model, info = load_model(run.best_checkpoint)
    assert model.fc.out_features == 3 and info["model"] == "resnet18"
    assert info["source"]["weights"] == "IMAGENET1K_V1" and len(info["source"]["class_names"]) == 1000
    assert info["source"]["mean"] == [0.485, 0.456, 0.406]
    # the backbone trained at a tenth of the head's learning rate, and it did train
    assert not torch.equal(model.conv1.weight, cached_resnet18.conv1.weight)


def imagenet_like_folder(root, classes: int = 1000, per_class: int = 1):
    """An imagefolder with torchvision's 1000 ImageNet classes, one tiny image each."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for k in range(classes):
            folder = root / split / f"n{k:08d}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def test_distilling_from_a_published_teacher_needs_no_teacher_training(cached_resnet18, tmp_path):
    data = {"name": "imagefolder", "root": str(imagenet_like_folder(tmp_path / "imagenet")), "image_size": 32,
            "resize_size": 32, "batch_size": 64}
    raw = tiny_experiment(
        tmp_path / "distil", data=data, teacher={"name": "resnet18", "weights": "IMAGENET1K_V1"},
        losses=[{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5, "temperature": 1.0}],
        recipe={"epochs": 1}, trainer={"progress_bar": False, "limit_train_batches": 1, "limit_val_batches": 1},
    )
    run = run_experiment(validate_config(raw))
    assert run.results.teacher == "resnet18" and "agreement" in run.results.best.test


def test_a_teacher_whose_weights_predict_other_classes_is_refused(cached_resnet18, tmp_path):
    config = tmp_path / "c.yaml"
    raw = tiny_experiment(tmp_path / "r", teacher={"name": "resnet18", "weights": "IMAGENET1K_V1"},
                          losses=[{"name": "kd"}])
    import yaml

    config.write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["distill", str(config)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "predicts 1000 classes" in result.output and "Fine-tune it first" in result.output


def test_import_writes_published_weights_as_a_teacher_checkpoint(cached_resnet18, tmp_path):
    """`kdlens import --weights` gives `evaluate --teacher` a checkpoint of the published model;
    the ImageNet-S facts come from its config alone (no folders needed)."""
    out = tmp_path / "resnet18.ckpt"
    args = ["import", "--model", "resnet18", "--weights", "IMAGENET1K_V1", "--data", "imagenet_s",
            "--set", f"root={tmp_path / 'absent'}", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "weights IMAGENET1K_V1" in result.output and "1000 classes" in result.output
    model, info = load_model(out)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model(x), cached_resnet18(x), rtol=0, atol=0)
    assert info["source"]["weights"] == "IMAGENET1K_V1" and info["source"]["class_names"][0] == "tench"
    wrong = runner.invoke(app, [*args[:5], "--data", "cifar10", "--out", str(out)])
    assert wrong.exit_code == 2 and "predicts 1000 classes, the dataset has 10" in wrong.output
    both = runner.invoke(app, ["import", str(out), "--model", "resnet18", "--weights", "DEFAULT", "--data", "cifar10", "--out", str(out)])
    assert both.exit_code == 2 and "either SOURCE" in both.output
