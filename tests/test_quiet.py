"""A CLI that prints only what matters: kdlens's own lines and one progress line, no Lightning or
torch chatter, unless `kdlens --verbose`."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import kd_sections, tiny_experiment
from rich.console import Console

from kdlens.config import validate_config
from kdlens.training.progress import RunProgress, format_metrics
from kdlens.training.run import run_experiment
from kdlens.verbosity import set_verbose

CHATTER = [
    "GPU available",
    "TPU available",
    "litlogger",
    "Trainer(limit_train_batches",
    "Loading `train_dataloader`",
    "`Trainer.fit` stopped",
    "LeafSpec",
    "log_every_n_steps",
    "exists and is not empty",
    "Warning",
]


def kdlens(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The real command in a fresh process: Lightning's log handlers write to the process's own
    stderr (which CliRunner cannot capture), and its warnings are issued once per process."""
    env = {**os.environ, "COLUMNS": "100"}
    return subprocess.run([sys.executable, "-m", "kdlens", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


def distill_config(tmp_path: Path, teacher_checkpoint: Path, name: str) -> Path:
    # More steps between logs than an epoch has: Lightning's log_every_n_steps warning would fire.
    raw = tiny_experiment(tmp_path / name, **kd_sections(teacher_checkpoint),
                          trainer={"progress_bar": True, "log_every_n_steps": 50})
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(raw))
    return config


def test_distill_prints_kdlens_lines_and_one_progress_line_only(tmp_path, teacher_checkpoint):
    result = kdlens("distill", str(distill_config(tmp_path, teacher_checkpoint, "quiet")), cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for chatter in CHATTER:
        assert chatter not in output, f"{chatter!r} printed:\n{output}"
    assert "quiet: best epoch" in result.stdout and "wrote " in result.stdout
    # One progress display, ending on the last epoch, its metrics on the same line.
    progress = [line for line in result.stderr.splitlines() if line.startswith("epoch ")]
    assert len(progress) == 1, result.stderr
    assert "epoch 2/2" in progress[0] and "loss" in progress[0] and "val top-1" in progress[0]
    assert result.stderr.strip() == progress[0].strip(), f"stderr holds more than the progress line:\n{result.stderr}"


def test_verbose_brings_the_library_output_back(tmp_path, teacher_checkpoint):
    config = distill_config(tmp_path, teacher_checkpoint, "verbose")
    result = kdlens("--verbose", "distill", str(config), "trainer.progress_bar=false", cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "GPU available" in output and "`Trainer.fit` stopped" in output and "log_every_n_steps" in output
    assert "verbose: best epoch" in result.stdout
    assert not [line for line in output.splitlines() if line.startswith("epoch ")]  # progress_bar: false


def test_the_progress_line_never_wraps(tmp_path):
    """On a non-interactive stream the fit's progress is one line, written when it ends, cut to the
    console's width rather than wrapped."""
    stream = io.StringIO()
    bar = RunProgress(console=Console(file=stream, width=60, force_terminal=False))
    run_experiment(validate_config(tiny_experiment(tmp_path / "run", trainer={"progress_bar": True})), callbacks=[bar])
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("epoch 2/2"), lines
    assert len(lines[0]) <= 60


def test_progress_metrics_read_as_one_line():
    metrics = {"train/loss_step": 0.42311, "train/loss_epoch": 0.5, "val/top1": 0.9125, "train/extra": 1.5}
    assert format_metrics(84, metrics) == "step 84 · loss 0.4231 · val top-1 0.912 · train/extra 1.5000"
    assert format_metrics(0, {}) == "step 0"


def test_onnx_export_steps_are_hidden_unless_verbose(teacher_checkpoint, tmp_path, capfd):
    from kdlens.export import export_onnx

    export_onnx(teacher_checkpoint, tmp_path / "quiet.onnx")
    assert "[torch.onnx]" not in "".join(capfd.readouterr())
    set_verbose(True)
    try:
        export_onnx(teacher_checkpoint, tmp_path / "verbose.onnx")
    finally:
        set_verbose(False)
    assert "[torch.onnx]" in "".join(capfd.readouterr())
