import json

import numpy as np
import onnx
import onnxruntime
import torch
from conftest import tiny_experiment
from typer.testing import CliRunner

from kdlens.cli import app
from kdlens.config import validate_config
from kdlens.data import build_data
from kdlens.runs.checkpoints import load_model
from kdlens.training.run import run_experiment


def test_export_matches_pytorch_on_real_images_and_writes_a_model_card(tmp_path, teacher_checkpoint):
    out = tmp_path / "teacher.onnx"
    result = CliRunner().invoke(app, ["export", str(teacher_checkpoint), "--format", "onnx", "--out", str(out)])
    assert result.exit_code == 0, result.output

    model, info = load_model(teacher_checkpoint)
    bundle = build_data(validate_config({"data": info["config"]["data"], "model": {"name": "resnet8"}}).data)
    images = torch.stack([bundle.test[i]["image"] for i in range(13)])  # another batch size than exported
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        assert np.abs(logits - model(images).numpy()).max() <= 1e-4

    card = json.loads(out.with_suffix(".card.json").read_text())
    assert card["output"]["classes"] == info["class_names"]
    assert card["input"]["normalisation"]["mean"] == info["mean"]
    results = json.loads((teacher_checkpoint.parent.parent / "results.json").read_text())
    assert card["test_accuracy"]["top1"] == results["best"]["test"]["top1"]
    assert "test top-1" in out.with_suffix(".card.md").read_text()


def test_export_never_contains_the_loss_connectors(tmp_path, teacher_checkpoint):
    raw = tiny_experiment(
        tmp_path / "fitnet",
        recipe={"epochs": 1},
        teacher={"name": "resnet8", "checkpoint": str(teacher_checkpoint)},
        losses=[{"name": "ce"}, {"name": "fitnet", "weight": 100.0}],
    )
    run = run_experiment(validate_config(raw))
    assert run.results.connector_parameters > 0
    result = CliRunner().invoke(app, ["export", str(run.best_checkpoint)])
    assert result.exit_code == 0, result.output
    graph = onnx.load(str(run.best_checkpoint.with_suffix(".onnx"))).graph
    exported = sum(int(np.prod(init.dims)) for init in graph.initializer)
    model, _ = load_model(run.best_checkpoint)
    assert exported <= sum(t.numel() for t in model.state_dict().values())


def test_unknown_format_is_refused(teacher_checkpoint):
    result = CliRunner().invoke(app, ["export", str(teacher_checkpoint), "--format", "tflite"])
    assert result.exit_code == 2 and "kdlens exports 'onnx'" in result.output
