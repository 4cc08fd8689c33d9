"""Sweeps: a grid of config overrides × seeds, each run in its own folder, aggregated as mean ± std.

A grid axis is ``key=v1,v2,...``; several keys that must change together (the α-mix weights
1−α and α) form one axis: ``losses.0.weight,losses.1.weight=1:0,0.5:0.5,0:1``.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdlens.aggregate import format_aggregate
from kdlens.config import ConfigError, ExperimentConfig, apply_override, check_run_name, validate_config
from kdlens.io import atomic_write_text, markdown_table, rows_to_csv
from kdlens.runs.layout import RunFolder
from kdlens.runs.results import RunResults

SUMMARY_FILES = ("summary.csv", "summary.md")


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
            run_raw.update(seed=seed, name=f"{slug}_seed{seed}", output_dir=str(sweep_dir / slug / f"seed{seed}"))
            runs.append(SweepRun(point, seed, validate_config(run_raw)))
    return runs


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-")


SUMMARY_METRICS = {
    # title: (checkpoint, split, metric) of RunResults.metric
    "best top-1": ("best", "test", "top1"),
    "last top-1": ("last", "test", "top1"),
    "agreement": ("best", "test", "agreement"),
    "KL(t‖s)": ("best", "test", "kl_teacher_student"),
    "shifted top-1": ("best", "shifted", "top1"),
    "worst-group": ("best", "shifted", "worst_group_accuracy"),
}


def run_sweep(runs: list[SweepRun], sweep_dir: Path, train: Callable[[ExperimentConfig, bool], Any], log=print) -> list[dict]:
    """Train each run not finished yet (resuming an interrupted one), then aggregate all of them
    into ``summary.csv`` and ``summary.md`` in ``sweep_dir``."""
    for index, run in enumerate(runs, 1):
        folder = RunFolder(run.config.run_dir)
        if folder.finished:
            log(f"[{index}/{len(runs)}] {run.config.name}: finished, skipped")
            continue
        log(f"[{index}/{len(runs)}] {run.config.name}: {'resuming' if folder.resumable else 'training'}")
        train(run.config, folder.resumable)
    rows = summarise(runs)
    csv_file, markdown_file = (sweep_dir / name for name in SUMMARY_FILES)
    atomic_write_text(csv_file, rows_to_csv(rows))
    atomic_write_text(markdown_file, markdown_table(rows) + "\n")
    return rows


def summarise(runs: list[SweepRun]) -> list[dict]:
    """One row per grid point: mean ± std over its seeds of each metric the runs report."""
    points: dict[tuple, list[RunResults]] = {}
    for run in runs:
        points.setdefault(tuple(run.point.items()), []).append(RunFolder(run.config.run_dir).read_results())
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
