"""kdlens.runs, the run artifact layer: typed results.json and checkpoint facts written and read in
one place, the run-folder layout, its lock, and the one model/data compatibility check; and the
static checks that are config validation (so that `--dry-run` makes them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_experiment
from typer.testing import CliRunner

from kdlens.cli import app
from kdlens.config import ConfigError, validate_config
from kdlens.models import create_model
from kdlens.runs import (
    CheckpointError,
    CheckpointInfo,
    CheckpointResults,
    IncompatibleCheckpoint,
    RunFolder,
    RunFolderError,
    RunResults,
    check_fits,
    checkpoint_info,
    find_runs,
    load_model,
    save_model_checkpoint,
)

runner = CliRunner()


def results() -> RunResults:
    report = {"top1": 0.75, "top5": 1.0, "agreement": 0.5, "per_group": {"a": 0.5}}
    return RunResults(
        name="kd", model="resnet8", teacher="resnet20", train_seconds=12.5, parameters=78_000, connector_parameters=0,
        best=CheckpointResults(epoch=3, val_top1=0.8, splits={"test": report, "shifted": {"top1": 0.4}}),
        last=CheckpointResults(epoch=4, val_top1=0.7, splits={"test": {**report, "top1": 0.7}}),
    )


def test_run_results_round_trip_through_the_run_folder(tmp_path):
    folder = RunFolder(tmp_path / "run")
    written = results()
    folder.write_results(written)
    assert folder.finished and folder.results_file == tmp_path / "run" / "results.json"
    read = folder.read_results()
    assert read == written
    assert read.metric("best", "shifted", "top1") == 0.4 and read.metric("last", "test", "top1") == 0.7
    assert read.metric("best", "shifted", "agreement") is None
    assert read.lookup("best", "epoch") == 3 and read.lookup("last", "test", "top1") == 0.7
    # The JSON keeps the layout it always had.
    stored = json.loads(folder.results_file.read_text())
    assert list(stored) == ["name", "model", "teacher", "train_seconds", "parameters", "connector_parameters", "best", "last"]
    assert stored["best"] == {"epoch": 3, "val_top1": 0.8, "test": written.best.test, "shifted": {"top1": 0.4}}


def test_partial_and_unknown_results_are_kept_or_read_as_none(tmp_path):
    read = RunResults.from_dict({"best": {"test": {"top1": 0.5}}, "warnings": ["exploding logits"]})
    assert read.best.epoch is None and read.name is None and read.metric("last", "test", "top1") is None
    assert read.extra == {"warnings": ["exploding logits"]} and read.to_dict()["warnings"] == ["exploding logits"]
    assert RunResults.from_dict(read.to_dict()) == read

    folder = RunFolder(tmp_path)
    with pytest.raises(RunFolderError, match="has not finished"):
        folder.read_results()
    folder.results_file.write_text("{not json")
    with pytest.raises(RunFolderError, match="unreadable"):
        folder.read_results()


def test_checkpoint_info_round_trip_and_mapping_view(tmp_path):
    info = checkpoint_info("resnet8", num_classes=3, in_channels=3, image_size=(16, 16), class_names=["a", "b", "c"],
                           mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), config={"data": {"name": "shapes"}})
    assert CheckpointInfo.from_dict(info.to_dict()) == info
    path = save_model_checkpoint(tmp_path / "m.ckpt", create_model("resnet8", 3, 3), info)
    model, loaded = load_model(path)
    assert isinstance(loaded, CheckpointInfo) and loaded == info
    assert loaded.image_size == [16, 16] and loaded["num_classes"] == 3 and loaded.get("source") is None
    assert dict(loaded) == info.to_dict() and "source" not in loaded
    assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 3)

    with_source = info.replace(source={"weights": "X"})
    assert CheckpointInfo.from_dict(with_source.to_dict()).source == {"weights": "X"}


def test_malformed_checkpoints_are_one_clear_error(tmp_path):
    info = checkpoint_info("resnet8", num_classes=3, in_channels=3, image_size=(16, 16), class_names=["a", "b", "c"],
                           mean=(0.5,) * 3, std=(0.25,) * 3).to_dict()
    del info["class_names"]
    torch.save({"kdlens": info, "state_dict": {}}, tmp_path / "nokeys.ckpt")
    with pytest.raises(CheckpointError, match="without class_names"):
        load_model(tmp_path / "nokeys.ckpt")
    (tmp_path / "empty.ckpt").touch()
    with pytest.raises(CheckpointError, match="empty"):
        load_model(tmp_path / "empty.ckpt")
    (tmp_path / "random.ckpt").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CheckpointError, match="truncated or corrupt") as refused:
        load_model(tmp_path / "random.ckpt")
    assert "could run code" not in str(refused.value)
    with pytest.raises(CheckpointError, match="is a folder"):
        load_model(tmp_path)


def test_the_layout_is_named_in_one_place(tmp_path):
    folder = RunFolder(tmp_path / "run")
    assert folder.best == tmp_path / "run" / "checkpoints" / "best.ckpt"
    assert folder.last == tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert RunFolder.of_checkpoint(folder.best) == (folder, "best")
    assert RunFolder.of_checkpoint(tmp_path / "imported.ckpt") is None
    assert folder.status == "empty/failed" and not folder.is_run()
    folder.last.parent.mkdir(parents=True)
    folder.last.touch()
    assert folder.status == "interrupted" and folder.resumable


def test_find_runs_reads_finished_runs_typed(tmp_path):
    for seed in (0, 1):
        folder = RunFolder(tmp_path / "sweep" / "point" / f"seed{seed}")
        folder.write_config(validate_config(tiny_experiment(folder.path, seed=seed)))
        folder.write_results(results())
    unfinished = RunFolder(tmp_path / "sweep" / "other" / "seed0")
    unfinished.write_config(validate_config(tiny_experiment(unfinished.path)))
    runs, notes = find_runs([tmp_path / "sweep"])
    assert [run.seed for run in runs] == [0, 1] and runs[0].label == "point"
    assert runs[0].results.metric("best", "test", "top1") == 0.75 and runs[0].experiment().model.name == "resnet8"
    assert len(notes) == 1 and "unfinished" in notes[0]


def test_the_compatibility_check_names_every_mismatch():
    info = {"model": "resnet8", "num_classes": 10, "in_channels": 1}
    data = {"num_classes": 4, "in_channels": 3}
    with pytest.raises(IncompatibleCheckpoint) as err:
        check_fits(info, data, "'t.ckpt'", "Use another dataset.", architecture="resnet20")
    message = str(err.value)
    assert "it is architecture 'resnet8', not 'resnet20'" in message and "predicts 10 classes, the dataset has 4" in message
    assert "takes 1-channel images" in message and message.endswith("Use another dataset.")
    assert isinstance(err.value, ConfigError) and isinstance(err.value, CheckpointError)  # exit 2 on every path
    check_fits(info, {"num_classes": 10, "in_channels": 1}, "x", "y")


HOLDER = """
import sys, time
from kdlens.runs import RunFolder
with RunFolder(sys.argv[1]).lock():
    print("holding", flush=True)
    time.sleep(60)
"""


def test_a_run_folder_in_use_is_refused_naming_the_pid(tmp_path):
    folder = RunFolder(tmp_path / "run")
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder.path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "holding"
        with pytest.raises(RunFolderError, match=rf"in use by another run \(PID {child.pid}\)"):
            with folder.lock():
                pass
    finally:
        child.kill()
        child.wait()
    with folder.lock():  # the lock died with its process
        pass


def dry_run(tmp_path: Path, command: str = "train", **sections) -> str:
    config = tmp_path / "c.yaml"
    raw = tiny_experiment(tmp_path / "run", **sections)
    raw.pop("output_dir")  # runs/<name>
    config.write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, [command, str(config), "--dry-run"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return result.output


@pytest.mark.parametrize(
    ("sections", "fix"),
    [
        ({"data": {"name": "shapes", "batch_size": 0}}, "data.shapes.batch_size: Input should be greater than or equal to 1"),
        ({"recipe": {"optimizer": {"name": "sgd", "lr": float("nan")}}}, "lr: Input should be a finite number"),
        ({"recipe": {"optimizer": {"name": "adam", "lr": -0.1}}}, "lr: Input should be greater than 0"),
        ({"losses": []}, "give at least one, e.g. losses: [{name: ce}]"),
        ({"name": "../../escaped"}, "must be a plain folder name"),
        ({"name": "a/b"}, "must be a plain folder name"),
        ({"trainer": {"sync_batchnorm": True, "accelerator": "cpu"}}, "set trainer.sync_batchnorm=false on CPU"),
    ],
)
def test_static_checks_fail_the_dry_run(tmp_path, sections, fix):
    assert fix in dry_run(tmp_path, **sections)


def test_compile_with_feature_terms_fails_the_dry_run(tmp_path):
    sections = {
        "teacher": {"name": "resnet8", "checkpoint": "teacher.ckpt"},
        "losses": [{"name": "kd"}, {"name": "at"}],
        "trainer": {"compile": True},
    }
    output = dry_run(tmp_path, "distill", **sections)
    assert "logit-based loss terms only" in output and "trainer.compile=false" in output
    sections["losses"] = [{"name": "kd"}, {"name": "e2kd", "explainer": "gradcam"}]
    assert "['e2kd']" in dry_run(tmp_path, "distill", **sections)


def test_a_sweep_name_with_a_separator_is_refused(tmp_path):
    config = tmp_path / "c.yaml"
    raw = tiny_experiment(tmp_path / "run")
    raw["name"] = "../escaped"
    del raw["output_dir"]
    config.write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["sweep", str(config), "--dry-run"])
    assert result.exit_code == 2 and "must be a plain folder name" in result.output, result.output
    assert not (tmp_path.parent / "escaped-sweep").exists()


def test_the_trainer_arguments_come_from_the_config_in_one_mapping():
    from kdlens.training.run import trainer_arguments

    config = validate_config(tiny_experiment(Path("unused"), trainer={"progress_bar": False, "channels_last": True,
                                                                      "precision": "bf16-mixed", "limit_val_batches": 2}))
    arguments = trainer_arguments(config.trainer, config.recipe)
    assert arguments["enable_progress_bar"] is False and arguments["precision"] == "bf16-mixed"
    assert arguments["limit_val_batches"] == 2 and arguments["max_epochs"] == 2 and arguments["gradient_clip_val"] is None
    assert "channels_last" not in arguments and "compile" not in arguments and "progress_bar" not in arguments
