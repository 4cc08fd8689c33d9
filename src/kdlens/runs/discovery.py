"""Finding runs: every run folder at or below a folder (a sweep's too), the finished ones read as
:class:`Run`, and runs that differ only by seed grouped as :class:`RunGroup`. Used by `kdlens runs`,
the report, the sweep summary and the benchmark tables."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdlens.config import ConfigError, ExperimentConfig, validate_config
from kdlens.runs.layout import CHECKPOINTS_DIR, CONFIG_FILE, LAST, RESULTS_FILE, RunFolder, natural_key
from kdlens.runs.results import RunResults

SEED_KEYS = ("seed", "name", "output_dir")
"""Config keys in which the seeds of one configuration differ."""


def find_run_dirs(root: str | Path) -> list[Path]:
    """``root`` itself if it is a run folder, and every run folder below it (e.g. a sweep's), in
    natural order (seed2 before seed10)."""
    root = Path(root)
    found = {p.parent for p in root.rglob(CONFIG_FILE)} | {p.parent.parent for p in root.rglob(f"{CHECKPOINTS_DIR}/{LAST}")}
    return sorted((p for p in found if RunFolder(p).is_run()), key=natural_key)


@dataclass
class Run:
    """One finished run: its folder, its saved config (plain data) and its results."""

    folder: RunFolder
    config: dict[str, Any]
    results: RunResults

    @classmethod
    def read(cls, path: str | Path) -> Run:
        folder = RunFolder(path)
        return cls(folder, folder.read_config(), folder.read_results())

    @property
    def path(self) -> Path:
        return self.folder.path

    @property
    def best_checkpoint(self) -> Path:
        return self.folder.best

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def label(self) -> str:
        """The sweep grid point (``<slug>/seed<N>`` folders) or the run's name without its seed."""
        if re.fullmatch(r"seed\d+", self.path.name):
            return self.path.parent.name
        return re.sub(r"[_-]seed\d+$", "", str(self.config.get("name") or self.path.name))

    def experiment(self) -> ExperimentConfig:
        """The saved config, validated (a ConfigError when it no longer validates, e.g. a plugin's
        loss term that is not installed here)."""
        return validate_config(self.config)

    def lookup(self, which: str, *keys: str) -> Any:
        """See :meth:`RunResults.lookup`: ``lookup("best", "test", "top1")``."""
        return self.results.lookup(which, *keys)


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

    def values(self, which: str, *keys: str) -> list[float]:
        """The numbers the runs recorded for ``which`` (best/last) and ``keys`` (see
        :meth:`RunResults.lookup`), one per run that has one."""
        values = (run.lookup(which, *keys) for run in self.runs)
        return [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]


def find_runs(paths: list[str | Path]) -> tuple[list[Run], list[str]]:
    """Every finished run under ``paths`` (run folders, or sweep / other folders holding runs), in
    order, each once; and notes on unfinished runs that were left out."""
    runs: dict[Path, Run] = {}
    notes: list[str] = []
    for path in paths:
        path = Path(path)
        if not path.is_dir():
            raise ConfigError(f"'{path}' is not a folder: pass run folders (with {RESULTS_FILE}) or sweep folders")
        if RunFolder(path).config_file.is_file():
            candidates = [path]
        else:
            candidates = sorted({p.parent for p in path.rglob(CONFIG_FILE)}, key=natural_key)
        if not candidates:
            raise ConfigError(f"'{path}' holds no kdlens runs (no {CONFIG_FILE} in it or below it)")
        for run_dir in candidates:
            if not RunFolder(run_dir).finished:
                notes.append(f"'{run_dir}' has no {RESULTS_FILE} (unfinished run): left out")
                continue
            key = run_dir.resolve()
            if key not in runs:
                runs[key] = Run.read(run_dir)
    if not runs:
        raise ConfigError(f"no finished runs (with {RESULTS_FILE}) in {', '.join(str(p) for p in paths)}")
    return list(runs.values()), notes


def group_runs(runs: list[Run]) -> list[RunGroup]:
    """Runs grouped by their config without seed, name and output folder, in first-seen order;
    labels made unique."""
    groups: dict[str, RunGroup] = {}
    for run in runs:
        identity = json.dumps({k: v for k, v in run.config.items() if k not in SEED_KEYS}, sort_keys=True, default=str)
        groups.setdefault(identity, RunGroup(run.label)).runs.append(run)
    seen: dict[str, int] = {}
    for group in groups.values():
        group.runs.sort(key=lambda r: r.seed)
        count = seen[group.label] = seen.get(group.label, 0) + 1
        if count > 1:
            group.label = f"{group.label} ({count})"
    return list(groups.values())
