"""The one aggregation of repeated measurements (seeds of a run, samples of a metric): mean, sample
standard deviation, how many values there were and how many were missing (None or NaN).

Used by the sweep summary, the report, ``kdlens evaluate`` and the benchmark tables. The standard
deviation of one value is NaN (undefined, not 0), and it prints as no spread: ``0.9000``; no value
at all prints as ``–``."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

MISSING = "–"


@dataclass(frozen=True)
class Aggregate:
    mean: float
    """Mean of the values that are not missing (NaN when there are none)."""
    std: float
    """Sample standard deviation (n − 1) of those values (NaN for fewer than two)."""
    n: int
    """Values that are not missing."""
    nan: int
    """Missing values (None or NaN)."""

    def format(self, digits: int = 4) -> str:
        """``mean ± std``; ``mean`` alone for one value; ``–`` for none."""
        if self.n == 0:
            return MISSING
        if math.isnan(self.std):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"

    def __str__(self) -> str:
        return self.format()


def aggregate(values: Iterable[float | None]) -> Aggregate:
    """Mean, sample std, n and the count of missing values of ``values``."""
    present, missing = [], 0
    for value in values:
        if value is None or math.isnan(value):
            missing += 1
        else:
            present.append(float(value))
    n = len(present)
    mean = sum(present) / n if n else math.nan
    std = math.sqrt(sum((v - mean) ** 2 for v in present) / (n - 1)) if n > 1 else math.nan
    return Aggregate(mean, std, n, missing)


def describe_missing(stats: Aggregate, reasons: Iterable[str], every_sample: Mapping[str, str] | None = None) -> str:
    """Why the missing values of ``stats`` are missing, from one reason per missing value: ``""``
    when none is missing; ``reason ×count`` per reason, most frequent first (``empty mask ×3,
    all-zero map ×1``); when every value is missing, ``no value: `` before them, or, with a single
    reason, its phrase for every sample from ``every_sample`` (e.g. ``all maps are zero``)."""
    if stats.nan == 0:
        return ""
    counts = Counter(reasons).most_common()
    if stats.n == 0 and len(counts) == 1 and every_sample and counts[0][0] in every_sample:
        return every_sample[counts[0][0]]
    listed = ", ".join(f"{reason} ×{count}" for reason, count in counts)
    return f"no value: {listed}" if stats.n == 0 else listed


def format_aggregate(values: Iterable[float | None] | Aggregate, digits: int = 4) -> str:
    """:meth:`Aggregate.format` of ``values`` (or of an aggregate)."""
    stats = values if isinstance(values, Aggregate) else aggregate(values)
    return stats.format(digits)
