"""`kdlens runs [DIR]`: run folders built by hand (config.yaml, small checkpoints, results.json)
for each status, listed as a table with the resume command of interrupted runs."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from conftest import tiny_experiment
from typer.testing import CliRunner

from kdlens.cli import app
from kdlens.config import dump_config, validate_config
from kdlens.runs.listing import EMPTY, FINISHED, INTERRUPTED, list_runs

runner = CliRunner()


def make_run(
    root: Path, name: str, *, epochs: int = 10, done: int | None = None, results: dict | None = None, teacher: bool = False
) -> Path:
    """A run folder as `kdlens train|distill` leaves it: config.yaml always, last.ckpt after
    ``done`` epochs, results.json when finished."""
    run_dir = root / name
    sections = {"recipe": {"epochs": epochs}}
    if teacher:
        sections.update(
            teacher={"name": "wrn_16_2", "checkpoint": "teacher.ckpt"},
            losses=[{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9}],
        )
    config = validate_config(tiny_experiment(run_dir, **sections))
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump_config(config))
    if done is not None:
        (run_dir / "checkpoints").mkdir()
        # The fields `kdlens runs` reads; a real last.ckpt also holds state_dict, optimizer states, ...
        checkpoint = {"epoch": done - 1, "global_step": 6 * done, "kdlens": {"config": config.model_dump(mode="json")}}
        torch.save(checkpoint, run_dir / "checkpoints" / "last.ckpt")
    if results is not None:
        (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


def finished_results(best: float, last: float, epochs: int) -> dict:
    return {
        "name": "x",
        "model": "resnet8",
        "teacher": None,
        "best": {"epoch": epochs - 1, "val_top1": 0.5, "test": {"top1": best, "top5": 1.0}},
        "last": {"epoch": epochs, "val_top1": 0.4, "test": {"top1": last, "top5": 1.0}},
    }


def build_runs(root: Path) -> dict[str, Path]:
    return {
        "finished": make_run(root, "finished", epochs=4, done=4, results=finished_results(0.8125, 0.75, 4)),
        "interrupted": make_run(root, "interrupted", epochs=10, done=3),
        "distill": make_run(root / "sweep", "kd-seed10", epochs=5, done=2, teacher=True),
        "empty": make_run(root, "empty", epochs=7),
    }


def table_row(output: str, run_dir: Path) -> list[str]:
    (line,) = [line for line in output.splitlines() if line.startswith(str(run_dir) + " ")]
    return line.split()


def test_runs_lists_every_status_with_epochs_and_accuracy(tmp_path):
    runs = build_runs(tmp_path / "runs")
    result = runner.invoke(app, ["runs", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    header = result.output.splitlines()[0].split()
    assert header[:3] == ["run", "model", "teacher"] and "status" in header

    assert table_row(result.output, runs["finished"]) == [str(runs["finished"]), "resnet8", "-", "4/4", "0.812", "0.750", FINISHED]
    assert table_row(result.output, runs["interrupted"]) == [str(runs["interrupted"]), "resnet8", "-", "3/10", "-", "-", INTERRUPTED]
    assert table_row(result.output, runs["distill"]) == [str(runs["distill"]), "resnet8", "wrn_16_2", "2/5", "-", "-", INTERRUPTED]
    assert table_row(result.output, runs["empty"]) == [str(runs["empty"]), "resnet8", "-", "0/7", "-", "-", EMPTY]

    # Resume commands for the interrupted runs only, train or distill by whether there is a teacher.
    assert f"kdlens train {runs['interrupted'] / 'config.yaml'} --resume" in result.output
    assert f"kdlens distill {runs['distill'] / 'config.yaml'} --resume" in result.output
    assert f"{runs['finished'] / 'config.yaml'} --resume" not in result.output
    assert f"{runs['empty'] / 'config.yaml'} --resume" not in result.output


def test_listing_finds_nested_runs_in_natural_order_and_a_run_folder_itself(tmp_path):
    root = tmp_path / "sweep"
    for seed in (10, 2):
        make_run(root, f"seed{seed}", done=1)
    assert [run.path.name for run in list_runs(root)] == ["seed2", "seed10"]
    (only,) = list_runs(root / "seed2")
    assert only.status == INTERRUPTED and only.epochs_done == 1 and only.epochs_planned == 10


def test_a_checkpoint_without_config_yaml_and_an_unreadable_checkpoint(tmp_path):
    run_dir = make_run(tmp_path, "no-config", epochs=6, done=2)
    (run_dir / "config.yaml").unlink()  # the model and plan come from the checkpoint's saved config
    (info,) = list_runs(tmp_path)
    assert (info.model, info.epochs_done, info.epochs_planned, info.status) == ("resnet8", 2, 6, INTERRUPTED)
    assert info.resume_command is None  # nothing to resume from without the saved config

    broken = make_run(tmp_path, "broken", done=1)
    (broken / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    result = runner.invoke(app, ["runs", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert table_row(result.output, broken)[3] == "?/10"
    assert f"note: {broken}: last.ckpt is unreadable" in result.output


def test_runs_exit_codes(tmp_path, monkeypatch):
    missing = runner.invoke(app, ["runs", str(tmp_path / "missing")])
    assert missing.exit_code == 2
    assert "is not a folder" in missing.output and "Traceback" not in missing.output

    empty = runner.invoke(app, ["runs", str(tmp_path)])
    assert empty.exit_code == 0 and "no runs in" in empty.output

    monkeypatch.chdir(tmp_path)  # DIR defaults to runs/
    make_run(tmp_path / "runs", "default", done=1)
    default = runner.invoke(app, ["runs"])
    assert default.exit_code == 0, default.output
    assert "runs/default " in default.output and "kdlens train runs/default/config.yaml --resume" in default.output
