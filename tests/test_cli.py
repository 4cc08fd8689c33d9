import json

import yaml
from conftest import kd_sections, tiny_experiment
from typer.testing import CliRunner

from kdlens.cli import app

runner = CliRunner()


def write_config(path, raw):
    path.write_text(yaml.safe_dump(raw))
    return path


def test_train_then_evaluate_from_the_command_line(tmp_path):
    config = write_config(tmp_path / "teacher.yaml", tiny_experiment(tmp_path / "run"))
    result = runner.invoke(app, ["train", str(config), "recipe.epochs=1"])
    assert result.exit_code == 0, result.output
    assert "best epoch 1" in result.output and "results.json" in result.output
    checkpoint = tmp_path / "run" / "checkpoints" / "best.ckpt"

    result = runner.invoke(app, ["evaluate", str(checkpoint), "--set", "shortcut=0.5", "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    assert "shifted.worst_group_accuracy" in result.output
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(saved[str(checkpoint)]) == {"test", "shifted"}


def test_distill_from_the_command_line(tmp_path, teacher_checkpoint):
    config = write_config(tmp_path / "kd.yaml", tiny_experiment(tmp_path / "kd", **kd_sections(teacher_checkpoint)))
    result = runner.invoke(app, ["distill", str(config), "recipe.epochs=1"])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "kd" / "results.json").read_text())
    assert results["teacher"] == "resnet8" and "agreement" in results["best"]["test"]


def test_input_errors_exit_2_with_a_message_and_no_traceback(tmp_path):
    config = write_config(tmp_path / "bad.yaml", {**tiny_experiment(tmp_path / "run"), "epochs": 3})
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 2
    assert "epochs: unknown key" in result.output and "Traceback" not in result.output

    good = write_config(tmp_path / "good.yaml", tiny_experiment(tmp_path / "run"))
    result = runner.invoke(app, ["distill", str(good)])
    assert result.exit_code == 2 and "use `kdlens train`" in result.output

    result = runner.invoke(app, ["evaluate", str(tmp_path / "missing.ckpt")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_hostile_data_inputs_are_clear_errors(tmp_path):
    missing = write_config(tmp_path / "fm.yaml", {**tiny_experiment(tmp_path / "fm"), "data": {"name": "fashion_mnist", "root": str(tmp_path / "nowhere")}})
    result = runner.invoke(app, ["train", str(missing)])
    assert result.exit_code == 2 and "nowhere" in result.output and "Traceback" not in result.output

    (tmp_path / "tree" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "tree" / "val" / "cat").mkdir(parents=True)
    (tmp_path / "tree" / "train" / "cat" / "broken.png").write_bytes(b"not an image")
    (tmp_path / "tree" / "val" / "cat" / "broken.png").write_bytes(b"not an image")
    corrupt = write_config(tmp_path / "if.yaml", {**tiny_experiment(tmp_path / "if"), "data": {"name": "imagefolder", "root": str(tmp_path / "tree"), "image_size": 16, "resize_size": 16, "val_fraction": 0.5}})
    result = runner.invoke(app, ["train", str(corrupt)])
    assert result.exit_code == 2 and "broken.png" in result.output and "replace or remove" in result.output


def test_evaluate_explanations_writes_per_sample_scores_and_an_aggregate(tmp_path, teacher_checkpoint):
    import csv
    import math

    out = tmp_path / "eval"
    args = ["evaluate", str(teacher_checkpoint), "--explainer", "gradcam,saliency",
            "--metrics", "pointing_game,attribution_localisation,sparseness", "--n", "8", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    with open(out / "explanations.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 8 and {r["explainer"] for r in rows} == {"gradcam", "saliency"}
    with open(out / "explanations_summary.csv") as f:
        summary = {(r["explainer"], r["metric"]): r for r in csv.DictReader(f)}
    pointing = [float(r["pointing_game"]) for r in rows if r["explainer"] == "gradcam" and not math.isnan(float(r["pointing_game"]))]
    cell = summary[("gradcam", "pointing_game")]
    assert float(cell["mean"]) == sum(pointing) / len(pointing) and int(cell["n"]) + int(cell["nan"]) == 8

    bad = runner.invoke(app, ["evaluate", str(teacher_checkpoint), "--explainer", "gradcamm"])
    assert bad.exit_code == 2 and "gradcam" in bad.output
    bad = runner.invoke(app, ["evaluate", str(teacher_checkpoint), "--explainer", "gradcam", "--metrics", "pointing_gam"])
    assert bad.exit_code == 2 and "pointing_game" in bad.output


def test_the_metrics_forward_passes_run_in_a_chosen_precision(tmp_path, teacher_checkpoint):
    import csv

    scores = {}
    for precision in ("float32", "bfloat16"):
        out = tmp_path / precision
        args = ["evaluate", str(teacher_checkpoint), "--explainer", "gradcam", "--metrics", "pixel_flipping",
                "--n", "4", "--sweep-precision", precision, "--out", str(out)]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        with open(out / "explanations.csv") as f:
            scores[precision] = [float(r["pixel_flipping"]) for r in csv.DictReader(f)]
    assert scores["bfloat16"] != scores["float32"]  # the sweeps ran under bfloat16 autocast ...
    assert all(abs(a - b) < 0.01 * abs(b) for a, b in zip(scores["bfloat16"], scores["float32"], strict=True))  # ... closely

    noted = runner.invoke(app, ["evaluate", str(teacher_checkpoint), "--explainer", "gradcam", "--n", "1",
                                "--metrics", "pixel_flipping,monotonicity", "--sweep-precision", "float16"])
    assert noted.exit_code == 0 and "note: monotonicity run in float32: float16 changes" in noted.output
    assert "pixel_flipping" not in noted.output.split("note:")[1].split("\n")[0]
    bad = runner.invoke(app, ["evaluate", str(teacher_checkpoint), "--explainer", "gradcam", "--sweep-precision", "float64"])
    assert bad.exit_code == 2 and "unknown sweep precision 'float64'" in bad.output and "bfloat16" in bad.output
    bad = runner.invoke(app, ["evaluate", str(teacher_checkpoint), "--sweep-precision", "bfloat16"])
    assert bad.exit_code == 2 and "add --explainer" in bad.output


def test_a_layer_name_that_does_not_exist_is_a_clear_error(tmp_path, teacher_checkpoint):
    raw = tiny_experiment(tmp_path / "e2kd", teacher={"name": "resnet8", "checkpoint": str(teacher_checkpoint)},
                          losses=[{"name": "kd"}, {"name": "e2kd", "student_layer": "layer4"}])
    result = runner.invoke(app, ["distill", str(write_config(tmp_path / "e2kd.yaml", raw))])
    assert result.exit_code == 2 and "'layer4' not found" in result.output and "layer3" in result.output
