"""`kdlens demo`: the shortcut experiment on the embedded `shapes` dataset, end to end on a CPU.

A teacher is trained on shapes that carry a small coloured decoy patch whose colour says nothing
about the class. Three students — from scratch, with Hinton KD, and with e²KD (KD plus matching
the teacher's Grad-CAM explanations) — are trained on shapes whose patch colour agrees with the
class most of the time (a shortcut). The shifted split, where patch colour and class are
independent, shows which student learned the shape and which the patch; the share of each
student's Grad-CAM on the patch (decoy energy) and on the shape shows where it looks.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from kdlens.config import ConfigError, ExperimentConfig, validate_config
from kdlens.data import DataBundle, DataConfigBase, build_data
from kdlens.evaluation import collect_report_data, predict_splits, resolve_device, split_reports
from kdlens.io import atomic_write_text, rows_to_csv, write_json
from kdlens.metrics import create_metrics
from kdlens.metrics.explanation_evaluation import aggregate_scores, evaluate_explanations
from kdlens.report.build import write_report
from kdlens.report.tables import flatten_report, format_table
from kdlens.runs.checkpoints import load_model
from kdlens.runs.layout import RunFolder, RunFolderError
from kdlens.training.run import run_experiment

SHORTCUT = 0.95
E2KD_WEIGHT = 5.0
DEMO_EPOCHS = 8
DEMO_TEACHER_EPOCHS = 4
DEMO_TRAIN_SIZE = 2000


def demo_configs(out: Path, epochs: int, teacher_epochs: int, train_size: int = DEMO_TRAIN_SIZE) -> dict[str, dict[str, Any]]:
    """The four runs of the demo, as plain config dicts (what a YAML file would hold); test and
    shifted splits have half as many images as the training split."""
    # Backgrounds are random; a 6×6 framed patch in the top-left corner has a palette colour: uniform
    # for the teacher, the class's own with p = SHORTCUT for the students.
    # Batches of 32: twice the optimiser steps of 64 at about the same cost per epoch, which the e²KD
    # student needs to converge within the demo's epochs (at 64 it is still at 0.56 after 8).
    data = {"name": "shapes", "num_classes": 4, "train_size": train_size, "test_size": max(1, train_size // 2),
            "batch_size": 32, "shortcut_kind": "patch"}
    recipe = {
        "optimizer": {"name": "adam", "lr": 3e-3},
        "schedule": {"name": "cosine", "warmup_epochs": 1},
    }
    # One progress line per run. Channels-last convolutions: the same training, ~10% faster on a CPU.
    trainer = {"progress_bar": True, "log_every_n_steps": 10, "channels_last": True}
    teacher = {"name": "resnet20", "checkpoint": str(RunFolder(out / "teacher").best)}
    student_data = {**data, "shortcut": SHORTCUT}
    # The teacher's logits (and for e²KD its Grad-CAM maps) are computed once on un-augmented images
    # (frozen, offline KD): no teacher pass while the students train, the same for both students.
    kd = [{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9, "temperature": 4.0, "frozen_teacher": True}]
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
    ("worst-group", "shifted.worst_group_accuracy"),
    ("shortcut gap", "shifted.shortcut_gap"),
    ("decoy energy", "shifted.decoy_energy"),
    ("shape energy", "shifted.energy_pointing_game"),
]
EXPLAINED = 256
"""Shifted images whose Grad-CAM (of each model's own top-1 class) the energies average over."""
EXPLANATION_METRICS = ["decoy_energy", "energy_pointing_game"]


def run_demo(out: Path, epochs: int = DEMO_EPOCHS, teacher_epochs: int = DEMO_TEACHER_EPOCHS, log=print,
             device: Any = None, train_size: int = DEMO_TRAIN_SIZE) -> dict[str, Any]:
    """Train (or reuse, when already finished) the four runs, evaluate them (on ``device``,
    default: CUDA when present), write results.json and results.csv under ``out``; returns the results."""
    started = time.perf_counter()
    configs = {name: validate_config(raw)
               for name, raw in demo_configs(out, epochs, teacher_epochs, train_size).items()}
    folders = {name: RunFolder(config.run_dir) for name, config in configs.items()}
    for name, config in configs.items():
        if folders[name].finished:
            log(f"[{name}] already trained: {folders[name].results_file}")
            continue
        log(f"[{name}] training {config.model.name} for {config.recipe.epochs} epochs ...")
        run = run_experiment(config, resume=folders[name].resumable)
        log(f"[{name}] done in {run.results.train_seconds:.0f}s, best val top-1 {run.results.best.val_top1:.3f}")

    data = configs["kd"].data
    bundle = build_data(data)
    reports = evaluate_demo(configs, folders, data, bundle, device)
    log(f"explaining {EXPLAINED} shifted images per model (Grad-CAM) ...")
    for name, energies in explanation_energies(folders, bundle.extra_splits["shifted"], device).items():
        reports[name]["shifted"].update(energies)
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
    # Small limits and one thread keep the report to a few seconds on a busy laptop CPU; t-SNE, its
    # slowest part, is left out (`kdlens report runs/demo/*` draws it).
    report_data = collect_report_data([config.run_dir for config in configs.values()], data_limit=128, explain_n=16,
                                      tsne=False, threads=1, device=device)
    report = write_report(report_data, out / "report.html")
    log(f"report: {report}")
    return results


def evaluate_demo(configs: dict[str, ExperimentConfig], folders: dict[str, RunFolder], data: DataConfigBase,
                  bundle: DataBundle, device: Any = None) -> dict[str, dict[str, dict]]:
    """``{run: {split: report}}`` of every run's best checkpoint on the students' data, against the
    teacher: what :func:`kdlens.evaluation.evaluate_checkpoints` gives, with the teacher's
    predictions computed once (the teacher's own row agrees with itself), and each distilled
    student's report read from its run, which evaluated exactly this (the same data and teacher
    checkpoint) when it ended, unless the teacher has been retrained since."""
    device = resolve_device(device)
    teacher_folder = folders["teacher"]
    teacher, _ = load_model(teacher_folder.best)
    teacher_predictions = predict_splits(teacher.to(device), bundle, data, device)
    reports = {"teacher": split_reports(teacher_predictions, teacher_predictions, bundle.group_names, bundle.aligned_groups)}
    for name, folder in folders.items():
        if name == "teacher":
            continue
        stored = _stored_report(configs[name], folder, data, teacher_folder, ["test", *bundle.extra_splits])
        if stored is None:
            model, _ = load_model(folder.best)
            stored = split_reports(predict_splits(model.to(device), bundle, data, device), teacher_predictions,
                                   bundle.group_names, bundle.aligned_groups)
        reports[name] = stored
    return reports


def _stored_report(config: ExperimentConfig, folder: RunFolder, data: DataConfigBase, teacher: RunFolder,
                   splits: list[str]) -> dict[str, dict] | None:
    """The best checkpoint's report (on ``splits``) from the run's results.json, when the run was
    evaluated on ``data`` against ``teacher``'s current best checkpoint; else None."""
    if config.teacher is None or config.data != data or config.teacher.checkpoint != str(teacher.best):
        return None
    try:
        saved = validate_config(folder.read_config())
        if saved.data != data or saved.teacher is None or saved.teacher.checkpoint != str(teacher.best):
            return None
        if folder.results_file.stat().st_mtime < teacher.best.stat().st_mtime:  # the teacher was retrained since
            return None
        stored = folder.read_results().best.splits
    except (ConfigError, RunFolderError, OSError):
        return None
    return {split: stored[split] for split in splits} if set(splits) <= set(stored) else None


def explanation_energies(folders: dict[str, RunFolder], shifted: Dataset, device: Any = None) -> dict[str, dict]:
    """Per run: the mean share of its Grad-CAM (of its own top-1 class) on the decoy patch and on
    the shape, over the first :data:`EXPLAINED` images of the (un-augmented) ``shifted`` split."""
    device = resolve_device(device)
    metrics = create_metrics(EXPLANATION_METRICS)
    models = {name: load_model(folder.best)[0] for name, folder in folders.items()}
    scores = evaluate_explanations(models, shifted, ["gradcam"], metrics, target="pred", n=EXPLAINED,
                                   batch_size=EXPLAINED, device=device).scores
    energies: dict[str, dict] = {name: {} for name in models}
    for row in aggregate_scores(scores, EXPLANATION_METRICS):
        energies[row["model"]][row["metric"]] = row["mean"]
    return energies
