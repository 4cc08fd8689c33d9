"""The run folder: the one place that names its files. ``kdlens train|distill`` writes

    <run>/config.yaml             the resolved experiment config (written before training starts)
    <run>/checkpoints/best.ckpt   the epoch with the best validation top-1
    <run>/checkpoints/last.ckpt   the last epoch (written atomically every epoch; what --resume reads)
    <run>/results.json            RunResults (written last: its presence means finished)
    <run>/logs/csv/version_N/     metrics.csv of each attempt; logs/tensorboard/ event files
    <run>/launch.json             how a sweep launcher started it (job id, log file; the error if it failed)
    <run>/launch.log              a pool worker's output

and everything else (`kdlens runs`, the report, the sweep, export, the demo, the benchmark tables)
reaches these files through :class:`RunFolder`.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kdlens.config import ConfigError, ExperimentConfig, dump_config, load_yaml, validate_config
from kdlens.errors import OutputError
from kdlens.io import atomic_write_text, read_json, write_json
from kdlens.runs.results import CHECKPOINTS, RunResults

CONFIG_FILE = "config.yaml"
RESULTS_FILE = "results.json"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_SUFFIX = ".ckpt"
BEST, LAST = (f"{which}{CHECKPOINT_SUFFIX}" for which in CHECKPOINTS)
LOGS_DIR = "logs"
CSV_LOGS, TENSORBOARD_LOGS, MLFLOW_LOGS = "csv", "tensorboard", "mlruns"
"""Logger folders under logs/: CSVLogger's version_N folders, TensorBoard's event files, MLflow's
file store (W&B writes logs/wandb/ itself)."""
LOCK_FILE = ".lock"
LAUNCH_FILE, LAUNCH_LOG = "launch.json", "launch.log"

FINISHED, INTERRUPTED, EMPTY = "finished", "interrupted", "empty/failed"
"""A run folder's status: results.json is there; last.ckpt without results.json (resume it with
--resume); config.yaml only (stopped or failed before its first epoch ended)."""

RESUME_IGNORES = ("output_dir", "tags", "slurm")
"""Config keys that may differ on --resume: the folder a run is resumed in (it may have moved),
the trackers' labels and the job's resources."""


class RunFolderError(ConfigError):
    """A run folder that cannot be used as asked; the message names the fix."""


class RunFolderInUse(RunFolderError):
    """Another live process holds the run folder's lock (it is training that run)."""


@dataclass(frozen=True)
class RunFolder:
    """The files of one run, by what they hold."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # ------------------------------------------------------------ paths

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def results_file(self) -> Path:
        return self.path / RESULTS_FILE

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    def checkpoint(self, which: str) -> Path:
        """``best`` or ``last``: the checkpoint file."""
        if which not in CHECKPOINTS:
            raise ValueError(f"a run keeps the checkpoints {', '.join(CHECKPOINTS)}, not '{which}'")
        return self.checkpoint_dir / f"{which}{CHECKPOINT_SUFFIX}"

    @property
    def best(self) -> Path:
        return self.checkpoint("best")

    @property
    def last(self) -> Path:
        return self.checkpoint("last")

    @property
    def logs_dir(self) -> Path:
        return self.path / LOGS_DIR

    @property
    def launch_file(self) -> Path:
        return self.path / LAUNCH_FILE

    @property
    def launch_log(self) -> Path:
        return self.path / LAUNCH_LOG

    @staticmethod
    def of_checkpoint(checkpoint: str | Path) -> tuple[RunFolder, str] | None:
        """The run folder a checkpoint file belongs to and which of its checkpoints it is
        (``runs/x/checkpoints/best.ckpt`` -> (runs/x, "best")); None for a file elsewhere (e.g.
        written by ``kdlens import``)."""
        checkpoint = Path(checkpoint)
        which = checkpoint.name.removesuffix(CHECKPOINT_SUFFIX)
        if checkpoint.parent.name != CHECKPOINTS_DIR or which not in CHECKPOINTS or checkpoint.suffix != CHECKPOINT_SUFFIX:
            return None
        return RunFolder(checkpoint.parent.parent), which

    # ------------------------------------------------------------ state

    def is_run(self) -> bool:
        """Whether the folder holds a run (its config, or a checkpoint to resume)."""
        return self.config_file.is_file() or self.last.is_file()

    @property
    def finished(self) -> bool:
        return self.results_file.is_file()

    @property
    def resumable(self) -> bool:
        """Whether --resume has a last.ckpt to continue from."""
        return self.last.is_file()

    @property
    def status(self) -> str:
        return FINISHED if self.finished else INTERRUPTED if self.resumable else EMPTY

    # ------------------------------------------------------------ files

    def read_config(self) -> dict[str, Any]:
        """The saved config.yaml as plain data (not validated: it may name plugins not installed here)."""
        try:
            loaded = load_yaml(self.config_file.read_text())
        except FileNotFoundError:
            raise RunFolderError(f"'{self.path}' has no {CONFIG_FILE}: it is not a kdlens run folder") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise RunFolderError(f"{self.config_file} is unreadable ({type(err).__name__}): restore it or re-run") from None
        if not isinstance(loaded, dict):
            raise RunFolderError(f"{self.config_file} does not hold a config (a mapping of sections)")
        return loaded

    def write_config(self, config: ExperimentConfig) -> Path:
        return atomic_write_text(self.config_file, dump_config(config))

    def read_results(self) -> RunResults:
        loaded = read_json(
            self.results_file, RunFolderError,
            f"'{self.path}' has no {RESULTS_FILE}: the run has not finished (`kdlens runs` shows its status; "
            "continue it with --resume)",
            "re-run the evaluation",
        )
        if not isinstance(loaded, dict):
            raise RunFolderError(f"{self.results_file} does not hold run results (a mapping)")
        return RunResults.from_dict(loaded)

    def write_results(self, results: RunResults) -> Path:
        return write_json(self.results_file, results.to_dict())

    def read_curves(self) -> dict[str, dict[int, float]]:
        """Per epoch (from 1): ``train_loss`` and ``val_top1`` from every attempt's CSV log
        (``logs/csv/version_N/metrics.csv``, in order of N; a later attempt's value of an epoch wins)."""
        curves: dict[str, dict[int, float]] = {"train_loss": {}, "val_top1": {}}
        columns = {"train_loss": ("train/loss_epoch", "train/loss"), "val_top1": ("val/top1",)}
        versions = sorted((self.logs_dir / CSV_LOGS).glob("version_*/metrics.csv"), key=natural_key)
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

    # ------------------------------------------------------------ starting a run

    def check_start(self, config: ExperimentConfig, resume: bool) -> None:
        """Refuse to start over a run (without --resume) or to resume one with another config."""
        if not resume:
            if self.resumable:
                raise RunFolderError(
                    f"'{self.path}' already holds a run: pass --resume to continue it, or set output_dir to a new folder"
                )
            return
        if self.config_file.exists():
            before = self.read_config()
            try:  # with the defaults of keys added since it was written
                before = validate_config(before).model_dump(mode="json")
            except ConfigError:
                pass
            now = config.model_dump(mode="json")
            changed = sorted(k for k in before.keys() | now.keys() if k not in RESUME_IGNORES and before.get(k) != now.get(k))
            if changed:
                raise RunFolderError(
                    f"cannot resume '{self.path}': its config differs in {changed}. Resume with the saved "
                    f"config ({self.config_file}) or start a new output_dir"
                )

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder for one run: a second process that tries is refused, naming the PID
        that holds it. The lock is the OS's (``flock``): it ends with its process, so a crash
        never leaves a stale one. Only the first process of a distributed run takes it."""
        if not _is_first_process():
            yield
            return
        import fcntl

        try:
            self.path.mkdir(parents=True, exist_ok=True)
            handle = open(self.path / LOCK_FILE, "a+")
        except OSError as err:
            raise OutputError(self.path / LOCK_FILE, err) from None
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                raise RunFolderInUse(
                    f"'{self.path}' is in use by another run (PID {holder}): wait for it to end, or set "
                    "output_dir to another folder"
                ) from None
            try:
                handle.seek(0)
                handle.truncate()
                handle.write(str(os.getpid()))
                handle.flush()
            except OSError as err:
                raise OutputError(self.path / LOCK_FILE, err) from None
            yield


    def holder(self) -> str | None:
        """The PID of the live process that holds the folder's lock (training the run), or None."""
        import fcntl

        try:
            handle = open(self.path / LOCK_FILE)
        except OSError:
            return None
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return handle.read().strip() or "unknown"
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            return None

    def read_launch(self) -> dict[str, Any]:
        """What the launcher recorded (``launch.json``); empty when nothing (readable) was."""
        try:
            loaded = json.loads(self.launch_file.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            return {}
        return loaded if isinstance(loaded, dict) else {}

    def write_launch(self, **record: Any) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        return write_json(self.launch_file, record)


def _is_first_process() -> bool:
    """Whether this is global rank 0 (or not a distributed run): the launchers' environment."""
    return all(os.environ.get(name, "0") == "0" for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def natural_key(path: Path | str) -> list:
    """Sort key putting seed2 before seed10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]
