"""One-epoch `kdlens distill` runs of every distillation method on tiny shapes, and a B-cos
`kdlens train` run: the term is logged, connectors are trained but never exported."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_experiment
from typer.testing import CliRunner

from kdlens.cli import app
from kdlens.config import validate_config
from kdlens.models import create_model
from kdlens.runs.checkpoints import load_checkpoint_file, load_model
from kdlens.training.run import run_experiment

runner = CliRunner()


@pytest.fixture(scope="session")
def wrn_teacher_checkpoint(tmp_path_factory) -> Path:
    """A wrn_16_2 teacher trained for one epoch on tiny shapes: another family than resnet8, with
    other module paths and twice its channels at every stage."""
    out = tmp_path_factory.mktemp("wrn_teacher") / "teacher"
    return run_experiment(validate_config(tiny_experiment(out, model={"name": "wrn_16_2"}, recipe={"epochs": 1}))).best_checkpoint


# (term, student, teacher). shufflenetv1's stages are half the teacher's size (8/4/2 against
# 16/8/4 pixels), so AT pools, feature matching resizes its adapter output and Exp-KD resizes the
# teacher CAMs.
CASES = [
    ({"name": "dkd", "warmup_epochs": 5}, "resnet8", "resnet8"),
    ({"name": "oracle_kd", "gamma": 0.5}, "resnet8", "resnet8"),
    ({"name": "oracle_kd", "gamma": 0.5, "relevance": "lrp"}, "resnet8", "resnet8"),
    ({"name": "e2kd", "weight": 1.0}, "resnet8", "wrn_16_2"),
    ({"name": "e2kd", "weight": 1.0, "explainer": "lrp"}, "resnet8", "resnet8"),
    ({"name": "e2kd", "weight": 1.0, "frozen_teacher": True, "every_k_steps": 2}, "resnet8", "wrn_16_2"),
    ({"name": "fitnet"}, "resnet8", "wrn_16_2"),
    ({"name": "sp"}, "resnet8", "wrn_16_2"),
    ({"name": "at"}, "shufflenetv1", "wrn_16_2"),
    ({"name": "feature_matching"}, "shufflenetv1", "wrn_16_2"),
    ({"name": "expkd", "top_k": 2}, "shufflenetv1", "wrn_16_2"),
]
WITH_CONNECTORS = {"fitnet", "feature_matching"}


def logged_columns(run_dir: Path) -> set[str]:
    with open(run_dir / "logs" / "csv" / "version_0" / "metrics.csv", newline="") as f:
        return set(next(csv.reader(f)))


@pytest.mark.parametrize(("term", "student", "teacher"), CASES, ids=[term["name"] for term, _, _ in CASES])
def test_one_epoch_distillation_from_the_command_line(tmp_path, request, term, student, teacher):
    checkpoint = request.getfixturevalue("teacher_checkpoint" if teacher == "resnet8" else "wrn_teacher_checkpoint")
    raw = tiny_experiment(
        tmp_path / "run",
        model={"name": student},
        teacher={"name": teacher, "checkpoint": str(checkpoint)},
        losses=[{"name": "ce"}, term],
    )
    config = tmp_path / "distill.yaml"
    config.write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["distill", str(config), "recipe.epochs=1"])
    assert result.exit_code == 0, result.output

    run_dir = tmp_path / "run"
    assert f"train/{term['name']}_epoch" in logged_columns(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    assert (results["connector_parameters"] > 0) is (term["name"] in WITH_CONNECTORS)

    saved = load_checkpoint_file(run_dir / "checkpoints" / "best.ckpt")["state_dict"]
    model_keys = {key.removeprefix("model.") for key in saved if key.startswith("model.")}
    assert model_keys == set(create_model(student, num_classes=3).state_dict())  # the student only
    connector_keys = {key for key in saved if key.startswith("losses.")}
    assert bool(connector_keys) is (term["name"] in WITH_CONNECTORS)  # kept for resuming, not exported
    load_model(run_dir / "checkpoints" / "best.ckpt")


def test_bcos_model_trains_from_the_command_line(tmp_path):
    raw = tiny_experiment(tmp_path / "bcos", model={"name": "bcos_resnet20"})
    config = tmp_path / "bcos.yaml"
    config.write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["train", str(config), "recipe.epochs=1"])
    assert result.exit_code == 0, result.output
    model, info = load_model(tmp_path / "bcos" / "checkpoints" / "best.ckpt")
    assert info["model"] == "bcos_resnet20"
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.isfinite(model(images)).all()
    encoded = model.encode_input(images).requires_grad_(True)
    with model.explanation_mode():
        logits = model.forward_encoded(encoded)[:, 0]
    (weights,) = torch.autograd.grad(logits.sum(), encoded)
    torch.testing.assert_close((weights * encoded).sum(dim=(1, 2, 3)), logits.detach(), rtol=1e-4, atol=1e-4)
