"""benchmarks/tables.py: the committed table specs resolve to valid runs, and a tiny table trains,
evaluates, aggregates over seeds and, run again, reuses everything it already has."""

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from kdlens.config import validate_config

ROOT = Path(__file__).parent.parent
SPECS = sorted((ROOT / "configs" / "benchmarks").glob("*.yaml"))


def _load_tables():
    spec = importlib.util.spec_from_file_location("benchmark_tables", ROOT / "benchmarks" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tables = _load_tables()


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_committed_table_spec_resolves_to_valid_configs(path, tmp_path):
    spec = tables.read_spec(path, None)
    assert spec["seeds"] >= 3
    teachers = {name: tmp_path / name / "best.ckpt" for name in spec["teachers"]}
    for name, raw in spec["teachers"].items():
        validate_config({**raw, "name": name, "output_dir": str(tmp_path / name)})
    for row in spec["rows"]:
        config = validate_config({**tables.row_config(spec, row, teachers), "output_dir": str(tmp_path)})
        assert (config.teacher is None) == ("teacher" not in row), row["row"]


def test_the_fashion_mnist_table_has_every_method():
    spec = tables.read_spec(ROOT / "configs" / "benchmarks" / "fashion_mnist.yaml", None)
    methods = {term["name"] for row in spec["rows"] for term in row["losses"]}
    assert {"kd", "dkd", "fitnet", "at", "sp", "feature_matching", "expkd", "e2kd", "oracle_kd"} <= methods
    assert spec["student"]["data"]["name"] == "fashion_mnist"


def test_an_unknown_column_or_key_is_refused_with_the_choices(tmp_path):
    spec = yaml.safe_load(tiny_spec(tmp_path).read_text())
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**spec, "columns": ["best top-1", "accuracy"]}))
    with pytest.raises(SystemExit, match=r"unknown columns \['accuracy'\].*best top-1"):
        tables.read_spec(path, None)
    path.write_text(yaml.safe_dump({**spec, "epochs": 3}))
    with pytest.raises(SystemExit, match=r"unknown keys \['epochs'\]; a table spec has"):
        tables.read_spec(path, None)


def tiny_spec(tmp_path: Path) -> Path:
    data = {"name": "shapes", "num_classes": 3, "image_size": 16, "train_size": 96, "test_size": 48, "batch_size": 32,
            "shortcut_kind": "patch", "patch_size": 4}
    recipe = {"epochs": 1, "optimizer": {"name": "adam", "lr": 0.003}, "schedule": {"name": "cosine", "warmup_epochs": 0}}
    trainer = {"progress_bar": False, "log_every_n_steps": 1}
    student_data = {**data, "shortcut": 0.9}
    colour = {**student_data, "shortcut_kind": "background"}
    spec = {
        "title": "Tiny table", "description": "A test.", "output_dir": str(tmp_path / "runs"), "part": "tiny.md",
        "seeds": 2, "explain_n": 16, "explain_split": "shifted", "explainer": "gradcam",
        "metrics": ["energy_pointing_game", "decoy_energy"],
        "columns": ["in-distribution top-1", "shifted top-1", "shortcut gap", "agreement", "explanation cosine",
                    "energy_pointing_game", "decoy_energy"],
        "teachers": {"resnet8": {"data": data, "model": {"name": "resnet8"}, "recipe": recipe, "trainer": trainer}},
        "student": {"data": student_data, "model": {"name": "resnet8"}, "recipe": recipe, "trainer": trainer},
        "rows": [
            {"row": "scratch", "losses": [{"name": "ce"}]},
            {"row": "KD", "teacher": "resnet8", "losses": [{"name": "kd", "temperature": 4.0}]},
            {"row": "ceiling", "data": data, "evaluation_data": student_data, "losses": [{"name": "ce"}]},
            {"row": "colour scratch", "data": colour, "losses": [{"name": "ce"}]},
        ],
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_tiny_table_is_trained_evaluated_and_then_reused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec_path = tiny_spec(tmp_path)
    tables.main([str(spec_path)])

    part = (tmp_path / "docs" / "benchmarks" / "tiny.md").read_text()
    lines = {line.split(" | ")[0].strip("| "): line for line in part.splitlines() if line.startswith("| ")}
    assert set(lines) >= {"teacher (resnet8)", "scratch", "KD", "ceiling", "colour scratch"}
    assert lines["KD"].count("±") == 7  # every column aggregated over the two seeds
    assert lines["ceiling"].count("±") == 5  # evaluated on the biased data: no teacher columns
    assert lines["colour scratch"].count("±") == 4  # no decoy on colour data: no decoy_energy either
    assert " | 2 | " in lines["scratch"] and " | 1 | " in lines["teacher (resnet8)"]
    assert "–" in lines["scratch"]  # no agreement or explanation cosine without a teacher
    assert "chance level of the energy metrics" in part and "The decoy masks cover" in part and "min of training" in part
    runs = tmp_path / "runs"
    timings = json.loads((runs / "timings.json").read_text())
    assert len(timings) == 1 + 4 * 2  # the teacher and four rows × two seeds, each trained once
    ceiling = json.loads((runs / "ceiling" / "base" / "seed0" / tables.EVALUATION_FILE).read_text())["result"]
    assert ceiling["shifted top-1"] is not None and ceiling["decoy_energy"] is not None  # the biased data's shifted split
    teacher_top1 = json.loads((runs / "teachers" / "resnet8" / tables.EVALUATION_FILE).read_text())["result"]["best top-1"]
    assert ("Teacher resnet8 did not learn" in part) == (teacher_top1 < 1.5 / 3)
    kd_seed0 = json.loads((runs / "kd" / "base" / "seed0" / tables.EVALUATION_FILE).read_text())["result"]
    assert 0.0 <= kd_seed0["agreement"] <= 1.0 and -1.0 <= kd_seed0["explanation cosine"] <= 1.0

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished run or evaluation was repeated")

    monkeypatch.setattr(tables, "run_experiment", must_not_run)
    monkeypatch.setattr(tables.Evaluator, "evaluate", must_not_run)
    tables.main([str(spec_path)])
    assert (tmp_path / "docs" / "benchmarks" / "tiny.md").read_text().split("Measured")[0] == part.split("Measured")[0]


def test_comparisons_need_more_than_a_seed_std_and_the_baselines_training_data():
    def seeds(*values):
        return [{"worst-group": v} for v in values]

    decoy, colour = {"name": "shapes", "shortcut_kind": "patch"}, {"name": "shapes", "shortcut_kind": "background"}
    results = {"KD": seeds(0.1, 0.2, 0.15), "e2KD": seeds(0.6, 0.7, 0.65), "close": seeds(0.1, 0.3, 0.2),
               "colour": seeds(0.9, 0.9, 0.9)}
    data = {"KD": decoy, "e2KD": decoy, "close": decoy, "colour": colour}
    (text,) = tables.comparisons({"baseline": "KD", "column": "worst-group"}, results, data)
    assert "e2KD − KD: +0.5000" in text and "higher is established" in text
    assert "close − KD: +0.0500" in text and "not established" in text
    assert "colour" not in text  # trained on other data: not compared


def test_a_comparison_must_name_a_row_and_a_column(tmp_path):
    raw = yaml.safe_load((ROOT / "configs" / "benchmarks" / "shortcut.yaml").read_text())
    raw["compare"] = [{"baseline": "no such row", "column": "worst-group"}]
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    with pytest.raises(SystemExit, match="no such row"):
        tables.read_spec(path, None)
