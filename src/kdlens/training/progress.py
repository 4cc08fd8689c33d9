"""The one progress display of a training run: a single rich line per fit, on stderr.

``epoch 3/8 ━━━━━━━━━━━━━━━━━━━━━━━━ 0:00:12 • 0:00:20 step 84 · loss 0.4231 · val top-1 0.912``

The bar covers the whole fit (every epoch's training batches), so the time left is the run's.
The metrics never wrap: on a narrow terminal they are cut short with an ellipsis. On a
non-interactive stream (a log file, a pipe) nothing is drawn while training and the final line
is written once, when the fit ends. ``trainer.progress_bar: false`` means no display at all."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column

METRIC_LABELS = {"train/loss_step": "loss", "val/top1": "val top-1"}
"""Progress-bar metrics (``self.log(..., prog_bar=True)``) shown under a short label, in this
order; any other is shown under its own name (its ``_epoch`` twin is left out when the ``_step``
value is shown)."""


class RunProgress(ProgressBar):
    """Lightning's progress-bar slot filled with one rich line for the whole fit (rank 0 only)."""

    def __init__(self, console: Console | None = None, refresh_per_second: float = 4) -> None:
        super().__init__()
        self._enabled = True
        self._console = console
        self._refresh_per_second = refresh_per_second
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    # ProgressBar's interface
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self._progress is not None:
            self._progress.console.print(*args, **kwargs)
        else:
            super().print(*args, **kwargs)

    # the display
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._enabled:
            return
        per_epoch = trainer.num_training_batches
        epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else None
        known = epochs is not None and math.isfinite(per_epoch)
        self._progress = Progress(
            TextColumn("{task.description}", table_column=Column(no_wrap=True)),
            BarColumn(bar_width=24),
            TimeElapsedColumn(),
            "•",
            TimeRemainingColumn(),
            TextColumn("{task.fields[metrics]}", table_column=Column(no_wrap=True, overflow="ellipsis")),
            console=self._console or Console(stderr=True),
            refresh_per_second=self._refresh_per_second,
        )
        self._progress.start()
        self._task = self._progress.add_task(
            self._description(trainer),
            total=per_epoch * epochs if known else None,
            completed=trainer.current_epoch * per_epoch if known else 0,
            metrics=self._metrics(trainer),
        )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._update(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._update(trainer, advance=1)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._update(trainer, phase="validating")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._update(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._update(trainer)
        self._stop()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._stop()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._stop()

    def _update(self, trainer: L.Trainer, advance: int = 0, phase: str | None = None) -> None:
        if self._progress is None or self._task is None:
            return
        self._progress.update(self._task, advance=advance, description=self._description(trainer, phase),
                              metrics=self._metrics(trainer))

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress, self._task = None, None

    @staticmethod
    def _description(trainer: L.Trainer, phase: str | None = None) -> str:
        epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else "?"
        epoch = min(trainer.current_epoch + 1, epochs) if isinstance(epochs, int) else trainer.current_epoch + 1
        return f"epoch {epoch}/{epochs}" + (f" {phase}" if phase else "")

    def _metrics(self, trainer: L.Trainer) -> str:
        return format_metrics(trainer.global_step, trainer.progress_bar_metrics)


def format_metrics(step: int, metrics: dict[str, Any]) -> str:
    """``step 84 · loss 0.4231 · val top-1 0.912``: one line, whatever the metrics."""
    parts = [f"step {step}"]
    shown = {name: value for name, value in metrics.items() if not _is_epoch_twin(name, metrics)}
    for name, label in METRIC_LABELS.items():
        if name in shown:
            parts.append(f"{label} {_number(shown.pop(name), 3 if 'top' in name else 4)}")
    parts += [f"{name} {_number(value, 4)}" for name, value in shown.items()]
    return " · ".join(parts)


def _is_epoch_twin(name: str, metrics: dict[str, Any]) -> bool:
    return name.endswith("_epoch") and name[: -len("_epoch")] + "_step" in metrics


def _number(value: Any, digits: int) -> str:
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return str(value)
