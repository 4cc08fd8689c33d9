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
from kdlens.data import build_data
from kdlens.io import atomic_write_text, write_json
from kdlens.metrics.evaluate import evaluate_models
from kdlens.report.build import write_report
from kdlens.report.tables import flatten_report, format_table, rows_to_csv
from kdlens.runs.checkpoints import load_model
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
    trainer = {"progress_bar": False, "log_every_n_steps": 10}
    teacher = {"name": "resnet20", "checkpoint": str(out / "teacher" / "checkpoints" / "best.ckpt")}
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


def run_demo(out: Path, epochs: int = 8, teacher_epochs: int = 10, log=print) -> dict[str, Any]:
    """Train (or reuse, when already finished) the three runs, evaluate them, write results.json
    and results.csv under ``out``; returns the results."""
    started = time.perf_counter()
    configs = {name: validate_config(raw) for name, raw in demo_configs(out, epochs, teacher_epochs).items()}
    for name, config in configs.items():
        results_file = config.run_dir / "results.json"
        if results_file.exists():
            log(f"[{name}] already trained: {results_file}")
            continue
        log(f"[{name}] training {config.model.name} for {config.recipe.epochs} epochs ...")
        run = run_experiment(config, resume=(config.run_dir / "checkpoints" / "last.ckpt").exists())
        log(f"[{name}] done in {run.results['train_seconds']:.0f}s, best val top-1 {run.results['best']['val_top1']:.3f}")

    student_config = configs["kd"]
    bundle = build_data(student_config.data)
    models = {name: load_model(config.run_dir / "checkpoints" / "best.ckpt")[0] for name, config in configs.items()}
    reports = evaluate_models(models, bundle, student_config.data, teacher=models["teacher"])
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
    report = write_report([config.run_dir for config in configs.values()], out / "report.html", data_limit=128,
                          explain_n=16, threads=1)
    log(f"report: {report}")
    return results
