"""Sweeps: a grid of config overrides × seeds, each run in its own folder, aggregated as mean ± std.

A grid axis is ``key=v1,v2,...``; several keys that must change together (the α-mix weights
1−α and α) form one axis: ``losses.0.weight,losses.1.weight=1:0,0.5:0.5,0:1``.

A launcher trains the runs that are neither finished nor held by another process: one after
another in this process (:class:`LocalLauncher`), or elsewhere (:mod:`kdlens.launch`: a pool of
worker processes, Slurm jobs). Every way leaves the same run folders, so the summary, ``--status``
and the report read them alike.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kdlens.aggregate import format_aggregate
from kdlens.config import ConfigError, ExperimentConfig, apply_override, check_run_name, validate_config
from kdlens.io import atomic_write_text, markdown_table, read_json, rows_to_csv
from kdlens.errors import UserError
from kdlens.runs.layout import FINISHED, RunFolder, RunFolderInUse
from kdlens.runs.results import RunResults

SUMMARY_FILES = ("summary.csv", "summary.md")
PLAN_FILE = "sweep.json"
"""The sweep folder's list of its runs (grid point, seed, folder): what ``--status`` reads."""


@dataclass(frozen=True)
class GridAxis:
    keys: tuple[str, ...]
    values: tuple[tuple[str, ...], ...]
    """One tuple of raw (YAML) values per point, one value per key."""


def parse_axis(text: str) -> GridAxis:
    keys_text, sep, values_text = text.partition("=")
    keys = tuple(k.strip() for k in keys_text.split(",") if k.strip())
    if not sep or not keys or not values_text:
        raise ConfigError(f"grid '{text}' is not of the form key=v1,v2 or key1,key2=a1:a2,b1:b2")
    values = tuple(tuple(v.split(":")) if len(keys) > 1 else (v,) for v in values_text.split(","))
    for point in values:
        if len(point) != len(keys):
            raise ConfigError(f"grid '{text}': point '{':'.join(point)}' has {len(point)} values for {len(keys)} keys")
    return GridAxis(keys, values)


@dataclass(frozen=True)
class SweepRun:
    point: dict[str, str]
    """Grid key -> raw value of this run."""
    seed: int
    config: ExperimentConfig


def default_sweep_dir(raw: dict[str, Any]) -> Path:
    """``runs/<name>-sweep`` for a config's (unvalidated) ``name``, refused when it is not a plain
    folder name."""
    name = raw.get("name", "experiment")
    try:
        check_run_name(str(name))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return Path("runs") / f"{name}-sweep"


def plan_sweep(raw: dict[str, Any], axes: list[GridAxis], seeds: int, sweep_dir: Path) -> list[SweepRun]:
    """Every grid point × seed as a validated config with its own output folder."""
    base_seed = raw.get("seed", 0)
    runs = []
    for combination in itertools.product(*(axis.values for axis in axes)):
        point = {key: value for axis, values in zip(axes, combination) for key, value in zip(axis.keys, values)}
        slug = "_".join(f"{_slug(k)}={_slug(v)}" for k, v in point.items()) or "base"
        for offset in range(seeds):
            run_raw = json.loads(json.dumps(raw))  # deep copy of plain data
            for key, value in point.items():
                apply_override(run_raw, f"{key}={value}")
            seed = base_seed + offset
            tags = [*run_raw.get("tags", []), *(f"{key}={value}" for key, value in point.items()), f"sweep={sweep_dir.name}"]
            run_raw.update(seed=seed, name=f"{slug}_seed{seed}", output_dir=str(sweep_dir / slug / f"seed{seed}"), tags=tags)
            runs.append(SweepRun(point, seed, validate_config(run_raw)))
    return runs


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-")


PENDING, RUNNING, FAILED = "pending", "running", "failed"
"""Statuses of a sweep's run besides finished: not started or between attempts; held by a live
process; its last attempt raised or its worker died (the launch record says how, and where the
output went)."""


def sweep_status(sweep_dir: Path) -> list[dict]:
    """One row per grid point × seed of the sweep in ``sweep_dir``: its status and what explains it."""
    rows = []
    for entry in read_plan(sweep_dir):
        folder = RunFolder(sweep_dir / entry["folder"])
        record = folder.read_launch()
        holder = None if folder.finished else folder.holder()
        if folder.finished:
            status, detail = FINISHED, ""
        elif holder is not None:
            status, detail = RUNNING, f"PID {holder}" + (f", job {record['job']}" if record.get("job") else "")
        elif record.get("error"):
            status, detail = FAILED, f"{record['error']} (log: {record.get('log') or 'the sweep command output'})"
        else:
            notes = [f"job {record['job']}" if record.get("job") else "", "interrupted: resumes from last.ckpt" if folder.resumable else ""]
            status, detail = PENDING, "; ".join(note for note in notes if note)
        rows.append({"run": entry["name"], **entry["point"], "seed": entry["seed"], "status": status, "detail": detail})
    return rows


SUMMARY_METRICS = {
    # title: (checkpoint, split, metric) of RunResults.metric
    "best top-1": ("best", "test", "top1"),
    "last top-1": ("last", "test", "top1"),
    "agreement": ("best", "test", "agreement"),
    "KL(t‖s)": ("best", "test", "kl_teacher_student"),
    "shifted top-1": ("best", "shifted", "top1"),
    "worst-group": ("best", "shifted", "worst_group_accuracy"),
}


class Launcher(Protocol):
    def launch(self, runs: list[tuple[str, SweepRun]], log: Callable[[str], Any]) -> None:
        """Train ``runs`` (each with its label for ``log``), resuming those with a last.ckpt."""


@dataclass(frozen=True)
class LocalLauncher:
    """One run after another in this process; an error stops the sweep (the run shows as failed)."""

    train: Callable[[ExperimentConfig, bool], Any]
    """``train(config, resume)``, e.g. ``run_experiment``."""

    def launch(self, runs: list[tuple[str, SweepRun]], log: Callable[[str], Any]) -> None:
        for label, run in runs:
            folder = RunFolder(run.config.run_dir)
            # Checked again now: another process over the same runs may have finished or taken it since.
            if folder.finished or (holder := folder.holder()) is not None:
                log(f"{label}: {'finished' if folder.finished else f'running in another process (PID {holder})'}, skipped")
                continue
            log(f"{label}: {'resuming' if folder.resumable else 'training'}")
            folder.write_launch(launcher="local")
            try:
                self.train(run.config, folder.resumable)
            except RunFolderInUse as err:  # taken between the check and the lock
                log(f"{label}: {err}, skipped")
            except BaseException as err:
                record_failure(folder, err)
                raise


def record_failure(folder: RunFolder, err: BaseException | str, log_file: str | Path | None = None) -> None:
    """Mark the run failed in its launch record: the error's first line and where its output went."""
    if isinstance(err, BaseException):
        first = (str(err).strip().splitlines() or [""])[0]
        err = first if isinstance(err, UserError) else f"{type(err).__name__}: {first}".rstrip(": ")
    record = folder.read_launch()
    folder.write_launch(**{**record, "error": err, "log": str(log_file) if log_file else record.get("log")})


def run_sweep(
    runs: list[SweepRun],
    sweep_dir: Path,
    launcher: Launcher | Callable[[ExperimentConfig, bool], Any],
    log: Callable[[str], Any] = print,
) -> list[dict]:
    """Launch each run not finished yet and not being trained by another process (resuming an
    interrupted one), then aggregate the finished ones into ``summary.csv`` and ``summary.md`` in
    ``sweep_dir``. ``launcher`` is a :class:`Launcher` or a ``train(config, resume)`` function
    for :class:`LocalLauncher`."""
    if not hasattr(launcher, "launch"):
        launcher = LocalLauncher(launcher)
    write_plan(runs, sweep_dir)
    pending = []
    for index, run in enumerate(runs, 1):
        folder, label = RunFolder(run.config.run_dir), f"[{index}/{len(runs)}] {run.config.name}"
        holder = None if folder.finished else folder.holder()
        if folder.finished:
            log(f"{label}: finished, skipped")
        elif holder is not None:
            log(f"{label}: running in another process (PID {holder}), skipped")
        else:
            pending.append((label, run))
    if pending:
        launcher.launch(pending, log)
    rows = summarise(runs)
    finished = sum(RunFolder(run.config.run_dir).finished for run in runs)
    if finished < len(runs):
        log(f"summary of the {finished} finished runs of {len(runs)}: `kdlens sweep --status {sweep_dir}` shows the others")
    csv_file, markdown_file = (sweep_dir / name for name in SUMMARY_FILES)
    atomic_write_text(csv_file, rows_to_csv(rows))
    atomic_write_text(markdown_file, markdown_table(rows) + "\n")
    return rows


def write_plan(runs: list[SweepRun], sweep_dir: Path) -> Path:
    plan = [
        {"name": r.config.name, "point": r.point, "seed": r.seed, "folder": str(r.config.run_dir.relative_to(sweep_dir))}
        for r in runs
    ]
    sweep_dir.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(sweep_dir / PLAN_FILE, json.dumps(plan, indent=2) + "\n")


def read_plan(sweep_dir: Path) -> list[dict]:
    """The runs of a sweep folder (name, point, seed, and their folder relative to it)."""
    return read_json(
        sweep_dir / PLAN_FILE, ConfigError,
        f"'{sweep_dir}' holds no {PLAN_FILE}: it is not a sweep folder, or its sweep never started. "
        "Give the folder `kdlens sweep --out` wrote to (default runs/<name>-sweep)",
        "re-run the sweep to rewrite it",
    )


def summarise(runs: list[SweepRun]) -> list[dict]:
    """One row per grid point with a finished run: mean ± std over its finished seeds of each
    metric the runs report."""
    points: dict[tuple, list[RunResults]] = {}
    for run in runs:
        folder = RunFolder(run.config.run_dir)
        if folder.finished:
            points.setdefault(tuple(run.point.items()), []).append(folder.read_results())
    rows = []
    for point, results in points.items():
        row: dict[str, Any] = dict(point)
        row["seeds"] = len(results)
        for title, path in SUMMARY_METRICS.items():
            values = [r.metric(*path) for r in results]
            values = [v for v in values if v is not None]
            if values:
                row[title] = format_aggregate(values)
        rows.append(row)
    return rows


mean_std = format_aggregate
"""``mean ± std`` over seeds (:func:`kdlens.aggregate.format_aggregate`; one seed: the mean alone)."""
