"""Run folders for the HTML report: finding them (also inside sweep folders), grouping the seeds of
one configuration, aggregating their numbers and reading their training curves."""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kdlens.config import ConfigError

_IGNORED_KEYS = ("seed", "name", "output_dir")


@dataclass
class Run:
    """One finished run folder: its config.yaml and results.json."""

    path: Path
    config: dict[str, Any]
    results: dict[str, Any]

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def best_checkpoint(self) -> Path:
        return self.path / "checkpoints" / "best.ckpt"

    @property
    def label(self) -> str:
        """The sweep grid point (``<slug>/seed<N>`` folders) or the run's name without its seed."""
        if re.fullmatch(r"seed\d+", self.path.name):
            return self.path.parent.name
        return re.sub(r"[_-]seed\d+$", "", str(self.config.get("name") or self.path.name))

    def lookup(self, *keys: str) -> Any:
        node: Any = self.results
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return node


@dataclass
class RunGroup:
    """Runs whose configs differ only by seed (and name / output folder)."""

    label: str
    runs: list[Run] = field(default_factory=list)

    @property
    def first(self) -> Run:
        return self.runs[0]

    @property
    def config(self) -> dict[str, Any]:
        return self.first.config

    def values(self, *keys: str) -> list[float]:
        return [v for v in (run.lookup(*keys) for run in self.runs) if isinstance(v, (int, float))]


def find_runs(paths: list[Path]) -> tuple[list[Run], list[str]]:
    """Every finished run under ``paths`` (run folders, or sweep / other folders holding runs), in
    order, each once; and notes on unfinished runs that were left out."""
    runs: dict[Path, Run] = {}
    notes: list[str] = []
    for path in paths:
        path = Path(path)
        if not path.is_dir():
            raise ConfigError(f"'{path}' is not a folder: pass run folders (with results.json) or sweep folders")
        if (path / "config.yaml").is_file():
            candidates = [path]
        else:
            candidates = sorted({p.parent for p in path.rglob("config.yaml")}, key=_natural_key)
        if not candidates:
            raise ConfigError(f"'{path}' holds no kdlens runs (no config.yaml in it or below it)")
        for run_dir in candidates:
            if not (run_dir / "results.json").is_file():
                notes.append(f"'{run_dir}' has no results.json (unfinished run): left out")
                continue
            key = run_dir.resolve()
            if key not in runs:
                config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
                runs[key] = Run(run_dir, config, json.loads((run_dir / "results.json").read_text()))
    if not runs:
        raise ConfigError(f"no finished runs (with results.json) in {', '.join(str(p) for p in paths)}")
    return list(runs.values()), notes


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def group_runs(runs: list[Run]) -> list[RunGroup]:
    """Runs grouped by their config without seed, name and output folder, in first-seen order;
    labels made unique."""
    groups: dict[str, RunGroup] = {}
    for run in runs:
        identity = json.dumps({k: v for k, v in run.config.items() if k not in _IGNORED_KEYS}, sort_keys=True, default=str)
        groups.setdefault(identity, RunGroup(run.label)).runs.append(run)
    seen: dict[str, int] = {}
    for group in groups.values():
        group.runs.sort(key=lambda r: r.seed)
        count = seen[group.label] = seen.get(group.label, 0) + 1
        if count > 1:
            group.label = f"{group.label} ({count})"
    return list(groups.values())


def loss_terms(config: dict[str, Any]) -> list[dict[str, Any]]:
    return list(config.get("losses") or [{"name": "ce", "weight": 1.0}])


def describe_losses(config: dict[str, Any]) -> str:
    """``ce×0.1 + kd×0.9 (T=4)``."""
    parts = []
    for term in loss_terms(config):
        text = f"{term['name']}×{term.get('weight', 1.0):g}"
        if term.get("temperature") is not None:
            text += f" (T={term['temperature']:g})"
        parts.append(text)
    return " + ".join(parts)


def alpha(config: dict[str, Any]) -> float | None:
    """The kd term's weight / (ce + kd weights); None when the run has neither or both are 0."""
    weights = {"ce": 0.0, "kd": 0.0}
    for term in loss_terms(config):
        if term["name"] in weights:
            weights[term["name"]] += float(term.get("weight", 1.0))
    total = weights["ce"] + weights["kd"]
    return weights["kd"] / total if total > 0 else None


def other_terms(config: dict[str, Any]) -> str:
    """The loss terms besides ce and kd (series of the accuracy-vs-α plot)."""
    return " + ".join(f"{t['name']}×{t.get('weight', 1.0):g}" for t in loss_terms(config) if t["name"] not in ("ce", "kd"))


def mean_std(values: list[float]) -> tuple[float, float] | None:
    """Mean and sample standard deviation (0 for one value); None for no values."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def format_mean_std(values: list[float], digits: int = 4) -> str:
    stats = mean_std(values)
    if stats is None:
        return "–"
    mean, std = stats
    return f"{mean:.{digits}f}" if len(values) == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def read_curves(run_dir: Path) -> dict[str, dict[int, float]]:
    """Per epoch (from 1): ``train_loss`` and ``val_top1`` from every attempt's CSV log
    (``logs/csv/version_N/metrics.csv``, in order of N; a later attempt's value of an epoch wins)."""
    curves: dict[str, dict[int, float]] = {"train_loss": {}, "val_top1": {}}
    columns = {"train_loss": ("train/loss_epoch", "train/loss"), "val_top1": ("val/top1",)}
    versions = sorted((run_dir / "logs" / "csv").glob("version_*/metrics.csv"), key=_natural_key)
    for file in versions:
        with file.open(newline="") as handle:
            for row in csv.DictReader(handle):
                if not row.get("epoch"):
                    continue
                epoch = int(float(row["epoch"])) + 1
                for name, keys in columns.items():
                    value = next((row[k] for k in keys if row.get(k)), None)
                    if value:
                        curves[name][epoch] = float(value)
    return curves
