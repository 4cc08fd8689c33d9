"""The thesis protocol: its configs, and `kdlens evaluate` as the thesis evaluated (CAMs of a chosen
layer for the ground-truth class with test-time augmentation, the thesis metrics, the per-image
decile prediction drop, the teacher's explanations scored beside the students')."""

import csv
import re
import shlex
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from kdlens.cli import app
from kdlens.config import validate_data_config
from kdlens.data import build_data
from kdlens.metrics import DecilePredictionDrop, EvaluationContext
from kdlens.models import create_model
from kdlens.runs.checkpoints import checkpoint_info, load_model, save_model_checkpoint

runner = CliRunner()
THESIS = Path(__file__).parent.parent / "configs" / "published" / "thesis"
CONFIGS = sorted(THESIS.glob("*.yaml"))
DATA = {"name": "shapes", "num_classes": 3, "image_size": 16, "train_size": 32, "test_size": 16}
DECILE_COLUMNS = ["-10%", "0%", "10%", "20%", "30%", "40%", "50%", "60%", "70%", "80%", "90%"]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_thesis_config_dry_runs_without_data_or_weights(path, monkeypatch, tmp_path):
    monkeypatch.setenv("KDLENS_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-weights-here"))
    result = runner.invoke(app, ["distill", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.output.split("resolved config:\n", 1)[1])
    assert resolved["teacher"] == {"name": "resnet50", "checkpoint": None, "weights": "IMAGENET1K_V2", "weights_file": None}
    assert resolved["data"]["name"] == "imagenet_s" and resolved["data"]["labels"] == "imagenet1k"
    assert (resolved["data"]["resize_size"], resolved["data"]["image_size"]) == (256, 224)
    assert [term["name"] for term in resolved["losses"]] == ["ce", "kd"]
    assert resolved["losses"][1]["temperature"] == 50.0
    recipe = resolved["recipe"]
    assert (recipe["epochs"], recipe["optimizer"]["name"], recipe["optimizer"]["lr"]) == (160, "radam", 0.003)
    assert recipe["schedule"]["name"] == "constant" and recipe["grad_clip_norm"] == 1.0
    assert resolved["data"]["batch_size"] == 128


def test_the_documented_alpha_sweep_plans_ten_seeds_per_alpha(tmp_path):
    config = THESIS / "alpha_mix_resnet50_mobilenet_v3_small.yaml"
    documented = " ".join(line.lstrip("# ").rstrip("\\ ") for line in config.read_text().splitlines() if line.startswith("#"))
    command = re.search(r"kdlens sweep (.*?--seeds \d+)", documented).group(1)
    args = shlex.split(command)
    result = runner.invoke(app, ["sweep", str(THESIS.parent.parent.parent / args[0]), *args[1:], "--out", str(tmp_path), "--dry-run"])
    assert result.exit_code == 0, result.output
    planned = [line for line in result.output.splitlines() if " seed " in line]
    assert len(planned) == 5 * 10
    for ce, kd in ((1, 0), (0.75, 0.25), (0.5, 0.5), (0.25, 0.75), (0, 1)):  # [ce: 1-α, kd: α]
        assert sum(f"'losses.0.weight': '{ce:g}', 'losses.1.weight': '{kd:g}'" in line for line in planned) == 10
    assert not any(THESIS.glob("teacher_*.yaml"))  # the teacher is torchvision's, not trained here


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Untrained resnet8 checkpoints on tiny shapes: two students and a teacher."""
    folder = tmp_path_factory.mktemp("thesis_checkpoints")
    bundle = build_data(validate_data_config(DATA))
    paths = {}
    for seed, name in enumerate(("student_a", "student_b", "teacher")):
        torch.manual_seed(seed)
        model = create_model("resnet8", bundle.num_classes, bundle.in_channels)
        info = checkpoint_info("resnet8", num_classes=bundle.num_classes, in_channels=bundle.in_channels,
                               image_size=bundle.image_size, class_names=bundle.class_names, mean=bundle.mean,
                               std=bundle.std, config={"data": DATA})
        paths[name] = save_model_checkpoint(folder / f"{name}.ckpt", model, info)
    return paths, bundle


def test_thesis_evaluation_writes_the_decile_curves_of_students_and_teacher(tmp_path, checkpoints):
    paths, bundle = checkpoints
    out, n = tmp_path / "eval", 4
    students = [str(paths["student_a"]), str(paths["student_b"])]
    result = runner.invoke(app, [
        "evaluate", *students, "--teacher", str(paths["teacher"]), "--explainer", "gradcam,eigencam",
        "--metrics", "thesis,decile_prediction_drop", "--target", "label", "--tta", "--layer", "layer2",
        "--n", str(n), "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    assert (out / "results.json").is_file()

    with open(out / "decile_prediction_drop.csv") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == ["model", "explainer", "index", "label", "target", *DECILE_COLUMNS]
    models = ["teacher", *students]
    assert len(rows) == len(models) * 2 * n
    assert {(r["model"], r["explainer"]) for r in rows} == {(m, e) for m in models for e in ("gradcam", "eigencam")}
    values = torch.tensor([[float(r[c]) for c in DECILE_COLUMNS] for r in rows])
    assert bool(((values >= 0) & (values <= 1)).all())

    # −10 %: the unperturbed image's softmax probability of the target (here the label).
    images = torch.stack([bundle.test[i]["image"] for i in range(n)])
    labels = [int(bundle.test[i]["label"]) for i in range(n)]
    for name, path in [("teacher", paths["teacher"]), *((s, s) for s in students)]:
        model = load_model(path)[0]
        with torch.no_grad():
            probs = model(images).softmax(1)
        for r in (r for r in rows if r["model"] == name):
            i = int(r["index"])
            assert int(r["target"]) == int(r["label"]) == labels[i]
            assert float(r["-10%"]) == pytest.approx(float(probs[i, labels[i]]), abs=1e-6)

    # The per-sample score rows hold the thesis metrics and the decile drop's score (first − last decile).
    with open(out / "explanations.csv") as f:
        scores = list(csv.DictReader(f))
    assert len(scores) == len(rows)
    thesis_metrics = {"pointing_game", "attribution_localisation", "relevance_rank_accuracy", "top_k_intersection",
                      "monotonicity_correlation", "faithfulness_estimate", "decile_prediction_drop"}
    assert thesis_metrics <= set(scores[0])
    for score, curve in zip(scores, rows):
        assert (score["model"], score["explainer"], score["index"]) == (curve["model"], curve["explainer"], curve["index"])
        assert float(score["decile_prediction_drop"]) == pytest.approx(float(curve["0%"]) - float(curve["90%"]), abs=1e-9)


def test_the_decile_points_start_with_the_unperturbed_probability():
    torch.manual_seed(0)
    model = create_model("resnet8", 3, 3).eval()
    x, y, a = torch.randn(3, 3, 16, 16), torch.tensor([0, 1, 2]), torch.rand(3, 1, 16, 16)
    metric = DecilePredictionDrop()
    points = metric.points(EvaluationContext(model, x, y, a))
    with torch.no_grad():
        clean = model(x).softmax(1)[torch.arange(3), y].double()
    assert points.shape == (3, 11) and list(metric.point_labels) == DECILE_COLUMNS
    assert torch.allclose(points[:, 0], clean, atol=1e-6)
    assert torch.allclose(points[:, 1:], metric.curve(model, x, y, a))
    assert torch.allclose(metric(model, x, y, a), points[:, 1] - points[:, -1])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--explainer", "gradcam", "--metrics", "thesis,pointing_gam"], "pointing_game"),
        (["--explainer", "gradcam,eigencamm"], "eigencam"),
        (["--explainer", "gradcam", "--layer", "layer9"], "'layer9' not found"),
        (["--explainer", "gradcam", "--target", "teacher", "--teacher", None], None),
        (["--layer", "layer2"], "--explainer"),
    ],
    ids=["unknown-metric-in-a-list", "unknown-explainer", "unknown-layer", "known-names", "layer-without-explainer"],
)
def test_bad_names_stop_before_any_work(tmp_path, checkpoints, options, message):
    paths, _ = checkpoints
    if message is None:  # the control: the same command with good names runs
        options = [paths["teacher"] if o is None else o for o in options]
        result = runner.invoke(app, ["evaluate", str(paths["student_a"]), *map(str, options), "--n", "2", "--metrics",
                                     "pointing_game", "--out", str(tmp_path)])
        assert result.exit_code == 0, result.output
        assert (tmp_path / "results.json").is_file()
        return
    result = runner.invoke(app, ["evaluate", str(paths["student_a"]), "--teacher", str(paths["teacher"]), *options,
                                 "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert "top1" not in result.output  # no accuracy table: nothing ran
    assert not (tmp_path / "results.json").exists() and not any(tmp_path.iterdir())
