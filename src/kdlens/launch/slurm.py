"""``--launcher slurm``: one Slurm job per run, submitted through submitit
(``pip install 'kdlens[cluster]'``). A job runs one process per device of its run (Lightning DDP
across them, reading Slurm's environment); one that is pre-empted or reaches its time limit is
requeued and resumes from last.ckpt (:class:`kdlens.launch.job.RunJob`)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdlens.config import ConfigError, ExperimentConfig, SlurmConfig, slurm_gigabytes, slurm_minutes
from kdlens.errors import UserError
from kdlens.launch.job import RunJob
from kdlens.runs.layout import RunFolder
from kdlens.training.sweep import SweepRun, record_failure

JOBS_DIR = "slurm"
"""Under each run folder: submitit's job files and the job's output (``<job id>_0_log.err``)."""
QUEUED_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"})


class SlurmUnavailable(UserError):
    """submitit is not installed, or there is no Slurm to submit to."""


def job_spec(config: ExperimentConfig) -> dict[str, Any]:
    """The submitit executor parameters of the job that trains ``config``: its ``slurm`` section,
    with the tasks, GPUs and nodes of its trainer (one task per device)."""
    slurm = config.slurm or SlurmConfig()
    trainer = config.trainer
    devices = trainer.devices if isinstance(trainer.devices, int) else None
    gpus = slurm.gpus_per_node
    if gpus is None:
        gpus = 0 if trainer.accelerator == "cpu" else devices or 1
    tasks = devices or max(gpus, 1)
    nodes = slurm.nodes or trainer.num_nodes
    if gpus and gpus != tasks:
        raise ConfigError(
            f"slurm.gpus_per_node={gpus} but trainer.devices={trainer.devices}: a job runs one process per GPU. "
            f"Set trainer.devices={gpus} (Lightning DDP inside the job), or slurm.gpus_per_node={tasks}"
        )
    if nodes != trainer.num_nodes:
        raise ConfigError(f"slurm.nodes={nodes} but trainer.num_nodes={trainer.num_nodes}: set both to the same number")
    parameters = {
        "name": config.name,
        "timeout_min": slurm_minutes(slurm.time),
        "nodes": nodes,
        "tasks_per_node": tasks,
        "gpus_per_node": gpus,
        "cpus_per_task": slurm.cpus_per_task,
        "mem_gb": slurm_gigabytes(slurm.mem) if slurm.mem is not None else None,
        "slurm_partition": slurm.partition,
        "slurm_account": slurm.account,
        "slurm_qos": slurm.qos,
    }
    return {key: value for key, value in parameters.items() if value is not None}


def jobs_dir(config: ExperimentConfig) -> Path:
    return config.run_dir / JOBS_DIR


def check_slurm_available(cluster: str = "slurm") -> None:
    """submitit is importable and, for Slurm, ``sbatch`` is on PATH; else the fix."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise SlurmUnavailable("--launcher slurm needs submitit: pip install 'kdlens[cluster]'") from None
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise SlurmUnavailable(
            "--launcher slurm found no Slurm here (no sbatch on PATH): run it on a Slurm login node, print the "
            "job specs with --dry-run, or use --launcher pool on this machine"
        )


@dataclass(frozen=True)
class SlurmLauncher:
    cluster: str = "slurm"
    """submitit's executor: ``slurm``, or ``local`` (its local executor: real subprocesses, no Slurm)."""
    wait: bool = False
    """Wait for the jobs to end (else submit and return: re-invoke the sweep for the summary)."""
    verbose: bool = False

    def launch(self, runs: list[tuple[str, SweepRun]], log: Callable[[str], Any]) -> None:
        check_slurm_available(self.cluster)
        import submitit

        submitted = []
        for label, run in runs:
            folder = RunFolder(run.config.run_dir)
            queued = self._queued_job(folder)
            if queued is not None:
                log(f"{label}: queued as job {queued}, skipped")
                continue
            executor = submitit.AutoExecutor(
                folder=jobs_dir(run.config), cluster=self.cluster, slurm_max_num_timeout=(run.config.slurm or SlurmConfig()).requeues
            )
            executor.update_parameters(**job_spec(run.config))
            job = executor.submit(RunJob(run.config.model_dump(mode="json"), self.verbose))
            folder.write_launch(launcher="slurm", job=str(job.job_id), log=str(job.paths.stderr))
            log(f"{label}: {'resuming' if folder.resumable else 'training'} in job {job.job_id} (log: {job.paths.stderr})")
            submitted.append((label, folder, job))
        if not self.wait:
            return
        for label, folder, job in submitted:
            error = job.exception()
            if error is None:
                log(f"{label}: finished")
                continue
            if not folder.read_launch().get("error"):
                record_failure(folder, error)
            log(f"{label}: failed: {folder.read_launch()['error']} (log: {job.paths.stderr})")

    def _queued_job(self, folder: RunFolder) -> str | None:
        """The id of the Slurm job already queued or running for this run, if any."""
        record = folder.read_launch()
        if self.cluster != "slurm" or record.get("launcher") != "slurm" or not record.get("job"):
            return None
        import submitit

        state = submitit.SlurmJob(folder=folder.path / JOBS_DIR, job_id=record["job"]).state
        return record["job"] if state.split()[0] in QUEUED_STATES else None
