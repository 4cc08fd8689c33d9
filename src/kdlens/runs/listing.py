"""The run folders below a folder, one row each, for `kdlens runs`: what was trained, how far it
got, how well it did, and how to resume it. Reads config.yaml, results.json and
checkpoints/last.ckpt only (no Lightning, no data).

A run folder (written by ``kdlens train|distill``, see :mod:`kdlens.training.run`) holds
config.yaml, checkpoints/{best,last}.ckpt, results.json and logs/. Its status:

* ``finished``: results.json is there (training ended and best/last were evaluated);
* ``interrupted``: checkpoints/last.ckpt without results.json (resume it with ``--resume``);
* ``empty/failed``: config.yaml only (stopped or failed before its first epoch ended).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kdlens.runs.checkpoints import CheckpointError, load_checkpoint_file

FINISHED, INTERRUPTED, EMPTY = "finished", "interrupted", "empty/failed"

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
        if self.status != INTERRUPTED or not (self.path / "config.yaml").is_file():
            return None
        command = "distill" if self.teacher else "train"
        return f"kdlens {command} {self.path / 'config.yaml'} --resume"

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


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() or (path / "checkpoints" / "last.ckpt").is_file()


def find_run_dirs(root: Path) -> list[Path]:
    """``root`` itself if it is a run folder, and every run folder below it (e.g. a sweep's), in
    natural order (seed2 before seed10)."""
    root = Path(root)
    found = {p.parent for p in root.rglob("config.yaml")} | {p.parent.parent for p in root.rglob("checkpoints/last.ckpt")}
    return sorted((p for p in found if is_run_dir(p)), key=_natural_key)


def list_runs(root: Path) -> list[RunInfo]:
    """Every run folder at or below ``root`` (see :func:`find_run_dirs`), read."""
    return [read_run(path) for path in find_run_dirs(root)]


def read_run(path: Path) -> RunInfo:
    notes: list[str] = []
    config = _read_yaml(path / "config.yaml", notes)
    results = _read_json(path / "results.json", notes)
    last_path = path / "checkpoints" / "last.ckpt"
    if results is not None:
        status = FINISHED
    elif last_path.is_file():
        status = INTERRUPTED
    else:
        status = EMPTY

    epochs_done = _lookup(results, "last", "epoch")
    if last_path.is_file() and (epochs_done is None or config is None):
        checkpoint = _read_checkpoint(last_path, notes)
        if isinstance(checkpoint, dict):
            if epochs_done is None and isinstance(checkpoint.get("epoch"), int):
                epochs_done = checkpoint["epoch"] + 1  # Lightning stores the 0-based epoch just finished
            if config is None:  # the checkpoint keeps the config it was trained with
                config = _lookup(checkpoint, "kdlens", "config")

    if status == EMPTY:
        epochs_done = 0
    model = _lookup(config, "model", "name") or _lookup(results, "model")
    teacher = _lookup(config, "teacher", "name") or _lookup(results, "teacher")
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
        best_top1=_number(_lookup(results, "best", "test", "top1")),
        last_top1=_number(_lookup(results, "last", "test", "top1")),
        status=status,
        note="; ".join(notes) or None,
        saved_run_dir=saved_run_dir,
    )


def _read_yaml(path: Path, notes: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        notes.append(f"config.yaml unreadable ({type(err).__name__})")
        return None
    return loaded if isinstance(loaded, dict) else None


def _read_json(path: Path, notes: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        notes.append(f"results.json unreadable ({type(err).__name__})")
        return None
    return loaded if isinstance(loaded, dict) else None


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


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]
