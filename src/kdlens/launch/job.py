"""One run of a sweep, trained in the process it is called in (a pool worker, a Slurm job)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kdlens.config import validate_config
from kdlens.runs.layout import RunFolder, RunFolderInUse
from kdlens.training.sweep import record_failure
from kdlens.verbosity import set_verbose

FINISHED, ALREADY_FINISHED, IN_USE = "finished", "already finished", "running in another process"
"""What :func:`train_run` did."""


def train_run(config_data: dict[str, Any], log_file: str | None = None) -> str:
    """Train the run ``config_data`` describes, resuming it from its last.ckpt, unless it has
    finished or another process holds its folder. An error is recorded in the run's launch record
    (its first line and ``log_file``), then raised."""
    from kdlens.training.run import run_experiment

    config = validate_config(config_data)
    folder = RunFolder(config.run_dir)
    if folder.finished:
        return ALREADY_FINISHED
    record = folder.read_launch()
    if record.get("error"):  # a new attempt: the last one's error is history
        folder.write_launch(**{key: value for key, value in record.items() if key != "error"})
    try:
        run_experiment(config, resume=folder.resumable)
    except RunFolderInUse:
        return IN_USE
    except Exception as err:  # SystemExit is a Slurm requeue, not a failure
        record_failure(folder, err, log_file)
        raise
    return FINISHED


@dataclass
class RunJob:
    """The function a Slurm job runs (pickled by submitit). When the job is pre-empted or reaches
    its time limit, submitit calls :meth:`checkpoint`, which requeues the same run: it resumes
    from the last.ckpt of its last finished epoch."""

    config_data: dict[str, Any]
    verbose: bool = False

    def __call__(self) -> str:
        from submitit import JobEnvironment

        set_verbose(self.verbose)
        return train_run(self.config_data, str(JobEnvironment().paths.stderr))

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)
