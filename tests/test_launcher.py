"""The sweep launchers: a pool of worker processes and Slurm jobs through submitit's local executor
(real subprocesses, no Slurm); --status; skipping, resuming, never training a run twice."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from kdlens.cli import app
from kdlens.launch.pool import PoolLauncher
from kdlens.launch.slurm import SlurmLauncher, check_slurm_available, jobs_dir
from kdlens.runs.layout import CSV_LOGS, RunFolder
from kdlens.training.sweep import parse_axis, plan_sweep, read_plan, run_sweep, sweep_status, write_plan

THESIS = Path(__file__).parent.parent / "configs" / "published" / "thesis" / "alpha_mix_resnet50_mobilenet_v3_small.yaml"
ALPHA = "losses.0.weight,losses.1.weight=1:0,0:1"


def tiny_thesis_overrides(teacher_checkpoint, epochs=1) -> list[str]:
    """The thesis α-mix config at a budget of seconds: tiny shapes, resnet8 student and teacher."""
    return [
        "data={name: shapes, num_classes: 3, image_size: 16, train_size: 64, test_size: 32, batch_size: 32, shortcut: 0.9}",
        "model.name=resnet8", f"teacher={{name: resnet8, checkpoint: {teacher_checkpoint}}}", f"recipe.epochs={epochs}",
        "trainer={accelerator: cpu, progress_bar: false, log_every_n_steps: 1}",
    ]


def plan(tmp_path, teacher_checkpoint, sweep_dir, epochs=1):
    from kdlens.config import read_raw_config

    raw = read_raw_config(THESIS, tiny_thesis_overrides(teacher_checkpoint, epochs))
    return plan_sweep(raw, [parse_axis(ALPHA)], seeds=1, sweep_dir=sweep_dir)


def csv_attempts(run) -> int:
    return len(list((RunFolder(run.config.run_dir).logs_dir / CSV_LOGS).glob("version_*")))


def wait_for(condition, seconds=120):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.slow
def test_pool_of_two_workers_gives_the_local_launchers_summary(tmp_path, teacher_checkpoint):
    config = tmp_path / "thesis.yaml"
    config.write_text(THESIS.read_text())
    args = ["sweep", str(config), *tiny_thesis_overrides(teacher_checkpoint), "--grid", ALPHA]
    pooled = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "pool"), "--launcher", "pool", "--workers", "2"])
    assert pooled.exit_code == 0, pooled.output
    assert pooled.output.count("in a worker") == 2 and pooled.output.count(": finished") == 2

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // 2))  # the workers' share: the same arithmetic
    try:
        local = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "local")])
    finally:
        torch.set_num_threads(threads)
    assert local.exit_code == 0, local.output
    assert (tmp_path / "pool" / "summary.csv").read_text() == (tmp_path / "local" / "summary.csv").read_text()

    again = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "pool"), "--launcher", "pool", "--workers", "2"])
    assert again.output.count("finished, skipped") == 2 and "in a worker" not in again.output

    report = CliRunner().invoke(
        app, ["report", str(tmp_path / "pool"), "--out", str(tmp_path / "report.html"), "--data-limit", "16", "--explain-n", "2"]
    )
    assert report.exit_code == 0, report.output
    html = (tmp_path / "report.html").read_text()
    assert all(f'"text">{Path(entry["folder"]).parent}</td>' in html for entry in read_plan(tmp_path / "pool"))  # a row per point


@pytest.mark.slow
def test_a_killed_worker_fails_its_run_alone_and_the_next_invocation_resumes_it(tmp_path, teacher_checkpoint):
    sweep_dir = tmp_path / "sweep"
    runs = plan(tmp_path, teacher_checkpoint, sweep_dir, epochs=40)
    victim, other = (RunFolder(run.config.run_dir) for run in runs)
    lines = []
    sweep = threading.Thread(target=run_sweep, args=(runs, sweep_dir, PoolLauncher(2), lines.append))
    sweep.start()
    wait_for(lambda: victim.resumable and victim.holder() is not None)
    os.kill(int(victim.holder()), signal.SIGKILL)
    sweep.join()

    assert other.finished and not victim.finished
    by_run = {row["run"]: row for row in sweep_status(sweep_dir)}
    assert by_run[runs[1].config.name]["status"] == "finished"
    failed = by_run[runs[0].config.name]
    assert failed["status"] == "failed" and "SIGKILL" in failed["detail"] and str(victim.launch_log) in failed["detail"]
    listing = CliRunner().invoke(app, ["sweep", "--status", str(sweep_dir)])
    assert listing.exit_code == 0 and "1 finished, 0 running, 1 failed, 0 pending" in listing.output

    finished_at = other.results_file.stat().st_mtime_ns
    lines.clear()
    run_sweep(runs, sweep_dir, PoolLauncher(2), lines.append)
    assert any("resuming in a worker" in line for line in lines) and any("finished, skipped" in line for line in lines)
    assert victim.finished and csv_attempts(runs[0]) == 2  # resumed from last.ckpt, not started over
    assert other.results_file.stat().st_mtime_ns == finished_at and csv_attempts(runs[1]) == 1  # not trained twice
    assert {row["status"] for row in sweep_status(sweep_dir)} == {"finished"}


@pytest.mark.slow
def test_slurm_jobs_through_submitits_local_executor_requeue_and_resume(tmp_path, teacher_checkpoint):
    import submitit

    sweep_dir = tmp_path / "sweep"
    run, _ = plan(tmp_path, teacher_checkpoint, sweep_dir, epochs=40)
    folder = RunFolder(run.config.run_dir)
    SlurmLauncher(cluster="local").launch([("[1/1] run", run)], print)
    record = folder.read_launch()
    assert record["launcher"] == "slurm" and Path(record["log"]).parent == jobs_dir(run.config)
    job = submitit.local.local.LocalJob(folder=jobs_dir(run.config), job_id=record["job"])

    write_plan([run], sweep_dir)
    wait_for(lambda: folder.resumable and folder.holder() is not None)
    (row,) = sweep_status(sweep_dir)
    assert row["status"] == "running" and f"job {record['job']}" in row["detail"]
    # Slurm's warning before a pre-emption or the time limit, to the job's task: submitit calls
    # RunJob.checkpoint, which requeues the run.
    os.kill(int(folder.holder()), signal.SIGUSR2)
    wait_for(lambda: folder.finished, seconds=300)
    wait_for(lambda: job.state == "FINISHED")
    assert job.result() == "finished"
    assert folder.finished and csv_attempts(run) == 2  # the requeued job resumed from last.ckpt
    assert sweep_status(sweep_dir)[0]["status"] == "finished"


def test_slurm_dry_run_prints_every_jobs_spec_without_slurm(tmp_path):
    documented = "1:0,0.75:0.25,0.5:0.5,0.25:0.75,0:1"
    args = ["sweep", str(THESIS), "--grid", f"losses.0.weight,losses.1.weight={documented}", "--seeds", "10",
            "--out", str(tmp_path), "--launcher", "slurm", "--slurm", "partition=gpu", "--slurm", "time=2-00:00:00", "--dry-run"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 50
    spec = json.loads(lines[0].partition(": job ")[2].rpartition(" in ")[0])
    assert spec == {"name": "losses.0.weight=1_losses.1.weight=0_seed0", "timeout_min": 2880, "nodes": 1,
                    "tasks_per_node": 1, "gpus_per_node": 1, "slurm_partition": "gpu"}

    bad = CliRunner().invoke(app, [*args[:-1], "--slurm", "gpus_per_node=4", "--dry-run"])
    assert bad.exit_code == 2 and "trainer.devices=4" in bad.output
    unknown = CliRunner().invoke(app, [*args[:-1], "--slurm", "partitio=gpu", "--dry-run"])
    assert unknown.exit_code == 2 and "Valid keys here: partition" in unknown.output


def test_slurm_launcher_needs_submitit_and_slurm(monkeypatch, tmp_path):
    import sys

    from kdlens.launch.slurm import SlurmUnavailable

    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    with pytest.raises(SlurmUnavailable, match="no sbatch"):
        check_slurm_available()
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(SlurmUnavailable, match=r"pip install 'kdlens\[cluster\]'"):
        check_slurm_available()
    result = CliRunner().invoke(app, ["sweep", str(THESIS), "--out", str(tmp_path), "--launcher", "slurm"])
    assert result.exit_code == 2 and "kdlens[cluster]" in result.output


def test_pool_needs_workers_and_status_needs_a_sweep_folder(tmp_path):
    assert "--workers N" in CliRunner().invoke(app, ["sweep", str(THESIS), "--launcher", "pool"]).output
    result = CliRunner().invoke(app, ["sweep", "--status", str(tmp_path)])
    assert result.exit_code == 2 and "sweep.json" in result.output
