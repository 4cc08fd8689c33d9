"""``--launcher pool --workers N``: N runs at a time on this machine, each in a worker process of
its own (``python -m kdlens.launch.worker``), with the CPU threads divided between them and one
GPU each when there are GPUs. A worker that dies takes only its run with it: the run shows as
failed, the others go on, and the next invocation resumes it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from kdlens.launch.worker import IN_USE_STATUS
from kdlens.runs.layout import RunFolder
from kdlens.training.sweep import SweepRun, record_failure

POLL_SECONDS = 0.2


@dataclass
class _Worker:
    label: str
    folder: RunFolder
    process: subprocess.Popen
    output: IO[str]


@dataclass(frozen=True)
class PoolLauncher:
    workers: int
    verbose: bool = False

    def launch(self, runs: list[tuple[str, SweepRun]], log: Callable[[str], Any]) -> None:
        threads = max(1, len(os.sched_getaffinity(0)) // self.workers)
        gpus = visible_gpus()
        waiting = list(runs)
        active: dict[int, _Worker] = {}
        try:
            while waiting or active:
                for slot in range(self.workers):
                    if waiting and slot not in active:
                        gpu = gpus[slot % len(gpus)] if gpus else None
                        active[slot] = self._start(*waiting.pop(0), threads, gpu, log)
                time.sleep(POLL_SECONDS)
                for slot, worker in list(active.items()):
                    if worker.process.poll() is not None:
                        del active[slot]
                        _report(worker, log)
        finally:  # interrupted: stop the workers (their runs resume on the next invocation)
            for worker in active.values():
                worker.process.terminate()
            for worker in active.values():
                worker.process.wait()
                worker.output.close()

    def _start(self, label: str, run: SweepRun, threads: int, gpu: str | None, log: Callable[[str], Any]) -> _Worker:
        folder = RunFolder(run.config.run_dir)
        log(f"{label}: {'resuming' if folder.resumable else 'training'} in a worker (log: {folder.launch_log})")
        folder.write_launch(launcher="pool", log=str(folder.launch_log))
        output = open(folder.launch_log, "a")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        command = [sys.executable, "-m", "kdlens.launch.worker", "--threads", str(threads), "--log", str(folder.launch_log)]
        process = subprocess.Popen(
            [*command, *(["--verbose"] if self.verbose else [])],
            stdin=subprocess.PIPE, stdout=output, stderr=subprocess.STDOUT, env=env, text=True,
        )
        process.stdin.write(json.dumps(run.config.model_dump(mode="json")))
        process.stdin.close()
        return _Worker(label, folder, process, output)


def _report(worker: _Worker, log: Callable[[str], Any]) -> None:
    worker.output.close()
    status = worker.process.returncode
    if status == 0:
        log(f"{worker.label}: finished")
        return
    if status == IN_USE_STATUS:
        log(f"{worker.label}: running in another process, skipped")
        return
    error = worker.folder.read_launch().get("error")
    if not error:  # the worker could not record it: it was killed, or died before training
        error = f"the worker was killed ({signal.Signals(-status).name})" if status < 0 else f"the worker exited with status {status}"
        record_failure(worker.folder, error, worker.folder.launch_log)
    log(f"{worker.label}: failed: {error} (log: {worker.folder.launch_log})")


def visible_gpus() -> list[str]:
    """The GPUs the workers are spread over: CUDA_VISIBLE_DEVICES's, or every CUDA device."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [gpu for gpu in listed.split(",") if gpu.strip()]
    import torch

    return [str(index) for index in range(torch.cuda.device_count())]
