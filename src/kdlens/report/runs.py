"""The report's reading of runs, kept for its importers: finding and grouping runs is
:mod:`kdlens.runs`' and aggregating numbers over seeds :mod:`kdlens.aggregate`'s (re-exported
here); describing a run's loss terms and its distillation weight is :mod:`kdlens.evaluation`'s."""

from __future__ import annotations

from pathlib import Path

from kdlens.aggregate import Aggregate, aggregate, format_aggregate
from kdlens.runs.discovery import Run, RunGroup, find_runs, group_runs
from kdlens.runs.layout import RunFolder

__all__ = [
    "Run",
    "RunGroup",
    "find_runs",
    "format_mean_std",
    "group_runs",
    "mean_std",
    "read_curves",
]


def mean_std(values: list[float]) -> Aggregate:
    """:func:`kdlens.aggregate.aggregate` of ``values`` (the one aggregation over seeds)."""
    return aggregate(values)


def format_mean_std(values: list[float], digits: int = 4) -> str:
    """``mean ± std`` (one value: the mean alone; none: ``–``), :func:`kdlens.aggregate.format_aggregate`."""
    return format_aggregate(values, digits)


def read_curves(run_dir: Path) -> dict[str, dict[int, float]]:
    """Per epoch (from 1): ``train_loss`` and ``val_top1`` of a run (see :meth:`RunFolder.read_curves`)."""
    return RunFolder(run_dir).read_curves()
