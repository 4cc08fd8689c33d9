"""`kdlens demo`: the shortcut experiment on the embedded `shapes` dataset, end to end on a CPU.

A teacher is trained on unbiased shapes; three students — from scratch, with Hinton KD, and with
e²KD (KD plus matching the teacher's Grad-CAM explanations) — are trained on shapes whose
background colour agrees with the class most of the time (a shortcut). The shifted split, where
background and class are independent, shows which student learned the shape and which learned the
colour.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kdlens.config import validate_config
from kdlens.evaluation import collect_report_data, evaluate_checkpoints
from kdlens.io import atomic_write_text, rows_to_csv, write_json
from kdlens.report.build import write_report
from kdlens.report.tables import flatten_report, format_table
from kdlens.runs.layout import RunFolder
from kdlens.training.run import run_experiment

SHORTCUT = 0.95
E2KD_WEIGHT = 5.0


def demo_configs(out: Path, epochs: int, teacher_epochs: int) -> dict[str, dict[str, Any]]:
    """The three experiments of the demo, as plain config dicts (what a YAML file would hold)."""
    data = {"name": "shapes", "num_classes": 4, "train_size": 2000, "test_size": 1000, "batch_size": 64}
    recipe = {
        "optimizer": {"name": "adam", "lr": 3e-3},
        "schedule": {"name": "cosine", "warmup_epochs": 1},
    }
    trainer = {"progress_bar": True, "log_every_n_steps": 10}  # one progress line per run, nothing else
    teacher = {"name": "resnet20", "checkpoint": str(RunFolder(out / "teacher").best)}
    student_data = {**data, "shortcut": SHORTCUT}
    kd = [{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9, "temperature": 4.0}]
    # The teacher's explanations are computed once on un-augmented images (frozen): the e²KD
    # student then costs about what the KD student does.
    e2kd = [*kd, {"name": "e2kd", "weight": E2KD_WEIGHT, "frozen_teacher": True}]
    return {
        "teacher": {
            "name": "teacher", "output_dir": str(out / "teacher"), "data": data, "model": {"name": "resnet20"},
            "recipe": {**recipe, "epochs": teacher_epochs}, "trainer": trainer,
        },
        "scratch": {
            "name": "scratch", "output_dir": str(out / "scratch"), "data": student_data, "model": {"name": "resnet8"},
            "recipe": {**recipe, "epochs": epochs}, "trainer": trainer,
        },
        "kd": {
            "name": "kd", "output_dir": str(out / "kd"), "data": student_data, "model": {"name": "resnet8"},
            "teacher": teacher, "losses": kd, "recipe": {**recipe, "epochs": epochs}, "trainer": trainer,
        },
        "e2kd": {
            "name": "e2kd", "output_dir": str(out / "e2kd"), "data": student_data, "model": {"name": "resnet8"},
            "teacher": teacher, "losses": e2kd, "recipe": {**recipe, "epochs": epochs}, "trainer": trainer,
        },
    }


COLUMNS = [
    ("model", "model"),
    ("in-distribution top-1", "test.top1"),
    ("shifted top-1", "shifted.top1"),
    ("shifted worst-group", "shifted.worst_group_accuracy"),
    ("agreement (shifted)", "shifted.agreement"),
]


def run_demo(out: Path, epochs: int = 8, teacher_epochs: int = 10, log=print, device: Any = None) -> dict[str, Any]:
    """Train (or reuse, when already finished) the three runs, evaluate them (on ``device``,
    default: CUDA when present), write results.json and results.csv under ``out``; returns the results."""
    started = time.perf_counter()
    configs = {name: validate_config(raw) for name, raw in demo_configs(out, epochs, teacher_epochs).items()}
    folders = {name: RunFolder(config.run_dir) for name, config in configs.items()}
    for name, config in configs.items():
        if folders[name].finished:
            log(f"[{name}] already trained: {folders[name].results_file}")
            continue
        log(f"[{name}] training {config.model.name} for {config.recipe.epochs} epochs ...")
        run = run_experiment(config, resume=folders[name].resumable)
        log(f"[{name}] done in {run.results.train_seconds:.0f}s, best val top-1 {run.results.best.val_top1:.3f}")

    student_config = configs["kd"]
    reports = evaluate_checkpoints({name: folder.best for name, folder in folders.items()}, student_config.data,
                                   teacher=folders["teacher"].best, device=device)
    rows = [{"model": name, **flatten_report(report)} for name, report in reports.items()]
    results = {
        "shortcut": SHORTCUT,
        "seconds": round(time.perf_counter() - started, 1),
        "runs": {name: str(config.run_dir) for name, config in configs.items()},
        "results": reports,
    }
    write_json(out / "results.json", results)
    atomic_write_text(out / "results.csv", rows_to_csv(rows))
    log(format_table(rows, COLUMNS))
    log(f"results: {out / 'results.json'}, {out / 'results.csv'} ({results['seconds']:.0f}s)")
    # Small limits and one thread keep the report to a few seconds on a busy laptop CPU.
    report_data = collect_report_data([config.run_dir for config in configs.values()], data_limit=128, explain_n=16,
                                      threads=1, device=device)
    report = write_report(report_data, out / "report.html")
    log(f"report: {report}")
    return results
