"""What a finished run's results.json holds, typed: :class:`RunResults`, one
:class:`CheckpointResults` per evaluated checkpoint (``best`` and ``last``). Written by training
and read by `kdlens runs`, the sweep summary, the report, export's model card, the demo and the
benchmark tables, all through :meth:`RunResults.to_dict` / :meth:`RunResults.from_dict` (the run
folder's :meth:`~kdlens.runs.layout.RunFolder.write_results` and ``read_results``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

CHECKPOINTS = ("best", "last")
"""The checkpoints a run evaluates: the one with the best validation top-1, and the last epoch's."""


@dataclass(frozen=True)
class CheckpointResults:
    """One evaluated checkpoint: the epoch it was written after (counting from 1), its validation
    top-1, and a classification report per evaluation split (``test`` and the dataset's extra
    splits, e.g. ``shifted``: ``{metric: value}`` as :func:`kdlens.metrics.evaluate.evaluate_models`
    reports them)."""

    epoch: int | None = None
    val_top1: float | None = None
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def test(self) -> dict[str, Any]:
        """The test split's report (empty when not recorded)."""
        return self.splits.get("test", {})

    def metric(self, split: str = "test", name: str = "top1") -> Any:
        """One value of one split's report (e.g. ``metric("shifted", "worst_group_accuracy")``);
        None when not recorded."""
        report = self.splits.get(split)
        return report.get(name) if isinstance(report, dict) else None

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "val_top1": self.val_top1, **self.splits}

    @classmethod
    def from_dict(cls, data: Any) -> CheckpointResults:
        if not isinstance(data, dict):
            return cls()
        splits = {k: v for k, v in data.items() if k not in ("epoch", "val_top1") and isinstance(v, dict)}
        return cls(epoch=_int(data.get("epoch")), val_top1=_number(data.get("val_top1")), splits=splits)


@dataclass(frozen=True)
class RunHealth:
    """Signs of an exploding-but-finite run (:mod:`kdlens.training.health`): the largest ``|logit|``
    the model produced on a training or validation batch, and the largest growth of its weights'
    global L2 norm over the run (norm after an epoch / norm at the start); each flag says whether
    its value crossed the threshold (``|logit|`` > 1e3, growth > 1e3×), ``exploded_epoch`` after
    which epoch (counting from 1) that was first seen. A non-finite value is written as None."""

    max_abs_logit: float | None = None
    weight_norm_growth: float | None = None
    exploding_logits: bool = False
    exploding_weights: bool = False
    exploded_epoch: int | None = None

    @property
    def exploding(self) -> bool:
        """Whether the run's results are untrustworthy: logits or weights exploded."""
        return self.exploding_logits or self.exploding_weights

    def to_dict(self) -> dict[str, Any]:
        return {
            "exploding": self.exploding,
            "exploding_logits": self.exploding_logits,
            "exploding_weights": self.exploding_weights,
            "exploded_epoch": self.exploded_epoch,
            "max_abs_logit": _finite(self.max_abs_logit),
            "weight_norm_growth": _finite(self.weight_norm_growth),
        }

    @classmethod
    def from_dict(cls, data: Any) -> RunHealth | None:
        if not isinstance(data, dict):
            return None
        return cls(
            max_abs_logit=_number(data.get("max_abs_logit")),
            weight_norm_growth=_number(data.get("weight_norm_growth")),
            exploding_logits=data.get("exploding_logits") is True,
            exploding_weights=data.get("exploding_weights") is True,
            exploded_epoch=_int(data.get("exploded_epoch")),
        )


@dataclass(frozen=True)
class RunResults:
    """results.json of a finished run. Fields a file does not hold (an older or hand-made one)
    read as None; ``extra`` keeps top-level entries this version does not know."""

    name: str | None = None
    model: str | None = None
    teacher: str | None = None
    train_seconds: float | None = None
    parameters: int | None = None
    """Trainable parameters of the model (what is exported)."""
    connector_parameters: int | None = None
    """Parameters of the loss terms' connectors (trained with the model, never exported)."""
    best: CheckpointResults = field(default_factory=CheckpointResults)
    last: CheckpointResults = field(default_factory=CheckpointResults)
    health: RunHealth | None = None
    """Whether the training exploded (None for results written before kdlens recorded it)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def checkpoint(self, which: str) -> CheckpointResults:
        """``best`` or ``last``."""
        if which not in CHECKPOINTS:
            raise KeyError(f"a run evaluates {' and '.join(CHECKPOINTS)}, not '{which}'")
        return self.best if which == "best" else self.last

    def metric(self, which: str = "best", split: str = "test", name: str = "top1") -> Any:
        """One value of a checkpoint's report, e.g. ``metric("last", "test", "top1")``."""
        return self.checkpoint(which).metric(split, name)

    def lookup(self, which: str, *keys: str) -> Any:
        """``lookup("best", "epoch")``, ``lookup("best", "val_top1")`` or
        ``lookup("best", split, metric)``; None when not recorded."""
        if which not in CHECKPOINTS:
            return None
        results = self.checkpoint(which)
        if keys in (("epoch",), ("val_top1",)):
            return getattr(results, keys[0])
        if len(keys) == 2:
            return results.metric(*keys)
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "teacher": self.teacher,
            "train_seconds": self.train_seconds,
            "parameters": self.parameters,
            "connector_parameters": self.connector_parameters,
            "best": self.best.to_dict(),
            "last": self.last.to_dict(),
            **({"health": self.health.to_dict()} if self.health is not None else {}),
            **self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResults:
        known = {"name", "model", "teacher", "train_seconds", "parameters", "connector_parameters", "health", *CHECKPOINTS}
        return cls(
            name=_str(data.get("name")),
            model=_str(data.get("model")),
            teacher=_str(data.get("teacher")),
            train_seconds=_number(data.get("train_seconds")),
            parameters=_int(data.get("parameters")),
            connector_parameters=_int(data.get("connector_parameters")),
            best=CheckpointResults.from_dict(data.get("best")),
            last=CheckpointResults.from_dict(data.get("last")),
            health=RunHealth.from_dict(data.get("health")),
            extra={k: v for k, v in data.items() if k not in known},
        )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
