"""The run folders below a folder, one row each, for `kdlens runs`: what was trained, how far it
got, how well it did, and how to resume it. Reads config.yaml, results.json and
checkpoints/last.ckpt only (no Lightning, no data); the layout and the statuses are
:mod:`kdlens.runs.layout`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdlens.runs.checkpoints import CheckpointError, load_checkpoint_file, stored_config, training_state
from kdlens.runs.discovery import find_run_dirs
from kdlens.runs.layout import EMPTY, FINISHED, INTERRUPTED, RunFolder, RunFolderError
from kdlens.runs.results import RunResults

__all__ = ["COLUMNS", "EMPTY", "FINISHED", "INTERRUPTED", "RunInfo", "find_run_dirs", "list_runs", "read_run"]

COLUMNS = [
    ("run", "run"),
    ("model", "model"),
    ("teacher", "teacher"),
    ("epochs", "epochs"),
    ("best top-1", "best_top1"),
    ("last top-1", "last_top1"),
    ("status", "status"),
]
"""(title, key) of the table's columns, for ``kdlens.report.tables.format_table``."""


@dataclass
class RunInfo:
    """One run folder as `kdlens runs` shows it."""

    path: Path
    model: str | None
    teacher: str | None
    epochs_done: int | None
    epochs_planned: int | None
    best_top1: float | None
    last_top1: float | None
    status: str
    note: str | None = None
    """Something that went wrong reading the folder (e.g. an unreadable last.ckpt)."""
    saved_run_dir: str | None = None
    """Where the saved config puts the run (output_dir, or runs/<name>): resuming writes there."""

    @property
    def resume_command(self) -> str | None:
        """The command that continues an interrupted run, from its saved config."""
        folder = RunFolder(self.path)
        if self.status != INTERRUPTED or not folder.config_file.is_file():
            return None
        command = "distill" if self.teacher else "train"
        return f"kdlens {command} {folder.config_file} --resume"

    def row(self) -> dict[str, Any]:
        done = "?" if self.epochs_done is None else str(self.epochs_done)
        planned = "?" if self.epochs_planned is None else str(self.epochs_planned)
        return {
            "run": str(self.path),
            "model": self.model,
            "teacher": self.teacher,
            "epochs": f"{done}/{planned}",
            "best_top1": self.best_top1,
            "last_top1": self.last_top1,
            "status": self.status,
        }


def list_runs(root: Path) -> list[RunInfo]:
    """Every run folder at or below ``root`` (see :func:`find_run_dirs`), read."""
    return [read_run(path) for path in find_run_dirs(root)]


def read_run(path: Path) -> RunInfo:
    folder = RunFolder(path)
    notes: list[str] = []
    config = _read(folder.read_config, notes) if folder.config_file.is_file() else None
    results: RunResults | None = _read(folder.read_results, notes) if folder.finished else None
    status = folder.status

    epochs_done = results.last.epoch if results is not None else None
    if folder.resumable and (epochs_done is None or config is None):
        checkpoint = _read_checkpoint(folder.last, notes)
        if epochs_done is None:
            epochs_done = training_state(checkpoint)[0]
        if config is None:  # the checkpoint keeps the config it was trained with
            config = stored_config(checkpoint)

    if status == EMPTY:
        epochs_done = 0
    model = _lookup(config, "model", "name") or (results.model if results else None)
    teacher = _lookup(config, "teacher", "name") or (results.teacher if results else None)
    planned = _lookup(config, "recipe", "epochs")
    saved_run_dir = None
    if isinstance(config, dict) and (config.get("output_dir") or config.get("name")):
        saved_run_dir = str(config.get("output_dir") or Path("runs") / str(config["name"]))
    return RunInfo(
        path=path,
        model=model,
        teacher=teacher,
        epochs_done=epochs_done if isinstance(epochs_done, int) else None,
        epochs_planned=planned if isinstance(planned, int) else None,
        best_top1=_number(results.metric("best", "test", "top1")) if results else None,
        last_top1=_number(results.metric("last", "test", "top1")) if results else None,
        status=status,
        note="; ".join(notes) or None,
        saved_run_dir=saved_run_dir,
    )


def _read(read, notes: list[str]) -> Any:
    try:
        return read()
    except RunFolderError as err:
        notes.append(str(err))
        return None


def _read_checkpoint(path: Path, notes: list[str]) -> Any:
    try:
        return load_checkpoint_file(path)
    except CheckpointError as err:
        notes.append(f"{path.name} is unreadable ({str(err).split(' (', 1)[0].split(': ', 1)[0]})")
        return None


def _lookup(node: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
