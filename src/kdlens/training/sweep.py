"""Sweeps: a grid of config overrides × seeds, each run in its own folder, aggregated as mean ± std.

A grid axis is ``key=v1,v2,...``; several keys that must change together (the α-mix weights
1−α and α) form one axis: ``losses.0.weight,losses.1.weight=1:0,0.5:0.5,0:1``.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdlens.config import ConfigError, ExperimentConfig, apply_override, validate_config
from kdlens.io import atomic_write_text
from kdlens.report.tables import rows_to_csv


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
    "best top-1": ("best", "test", "top1"),
    "last top-1": ("last", "test", "top1"),
    "agreement": ("best", "test", "agreement"),
    "KL(t‖s)": ("best", "test", "kl_teacher_student"),
    "shifted top-1": ("best", "shifted", "top1"),
    "worst-group": ("best", "shifted", "worst_group_accuracy"),
}


def run_sweep(runs: list[SweepRun], sweep_dir: Path, train: Callable[[ExperimentConfig, bool], dict], log=print) -> list[dict]:
    """Train each run not finished yet (resuming an interrupted one), then aggregate all of them
    into ``summary.csv`` and ``summary.md`` in ``sweep_dir``."""
    for index, run in enumerate(runs, 1):
        results_file = run.config.run_dir / "results.json"
        if results_file.exists():
            log(f"[{index}/{len(runs)}] {run.config.name}: finished, skipped")
            continue
        resume = (run.config.run_dir / "checkpoints" / "last.ckpt").exists()
        log(f"[{index}/{len(runs)}] {run.config.name}: {'resuming' if resume else 'training'}")
        train(run.config, resume)
    rows = summarise(runs)
    atomic_write_text(sweep_dir / "summary.csv", rows_to_csv(rows))
    atomic_write_text(sweep_dir / "summary.md", markdown_table(rows) + "\n")
    return rows


def summarise(runs: list[SweepRun]) -> list[dict]:
    """One row per grid point: mean ± std over its seeds of each metric the runs report."""
    points: dict[tuple, list[dict]] = {}
    for run in runs:
        results = json.loads((run.config.run_dir / "results.json").read_text())
        points.setdefault(tuple(run.point.items()), []).append(results)
    rows = []
    for point, results in points.items():
        row: dict[str, Any] = dict(point)
        row["seeds"] = len(results)
        for title, path in SUMMARY_METRICS.items():
            values = [_lookup(r, path) for r in results]
            values = [v for v in values if v is not None]
            if values:
                row[title] = mean_std(values)
        rows.append(row)
    return rows


def _lookup(results: dict, path: tuple[str, ...]) -> float | None:
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def mean_std(values: list[float]) -> str:
    """``mean ± std`` with the sample standard deviation (n−1); 0 for a single seed."""
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return f"{mean:.4f} ± {std:.4f}"


def markdown_table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
